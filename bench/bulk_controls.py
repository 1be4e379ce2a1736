"""Bulk pause / resume / cancel: enrollments per second, against single controls in the same run.

    python bench/bulk_controls.py [--n 1000] [--repeats 3] [--single 200]

N enrollments of one sequence (bulk-enrolled, starting an hour from now, so their first runs
wait Scheduled in Prefect and nothing else runs) are paused, resumed and cancelled with one
`control_many` call each (`followups bulk`, `POST /api/enrollments/bulk/{action}`), `--repeats`
times on fresh enrollments. For comparison, `--single` other enrollments are paused, resumed and
cancelled one call at a time from one thread (`pause_enrollment`, ...). After each repetition
every run is read back: it must be Cancelled, like its enrollment. Prints the median
enrollments/s per action and the ratio to single calls; writes bench/results/bulk-controls-*.json.
"""

from __future__ import annotations

import argparse
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from statistics import median

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _harness as h  # noqa: E402
from controls import PHASES, WAITING, disagreements, enroll  # noqa: E402


def bulk_round(n: int, tag: str, start: datetime) -> dict:
    from followups.control import control_many

    owner, sequence_id = h.new_owner_and_sequence(WAITING)
    ids = enroll(owner, sequence_id, n, tag, start)
    rates = {}
    for action in PHASES:
        began = time.perf_counter()
        result = control_many(action, owner, sequence_id=sequence_id)
        seconds = time.perf_counter() - began
        counts = result.counts()
        if counts["done"] != n:
            raise SystemExit(f"bulk {action}: {counts}")
        rates[action] = n / seconds
        h.log(f"  bulk {action}: {n} in {seconds:.1f} s, {rates[action]:.0f}/s")
    rates["runs_disagreeing"] = disagreements(ids, start)
    return rates


def single_round(owner: int, sequence_id: int, n: int, tag: str, start: datetime) -> dict:
    from followups import control

    ids = enroll(owner, sequence_id, n, tag, start)
    calls = {"pause": control.pause_enrollment, "resume": control.resume_enrollment, "cancel": control.cancel_enrollment}
    rates = {}
    for action in PHASES:
        began = time.perf_counter()
        for enrollment_id in ids:
            calls[action](enrollment_id, owner_id=owner)
        rates[action] = n / (time.perf_counter() - began)
        h.log(f"  single {action}: {rates[action]:.0f}/s")
    return rates


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=1000, help="enrollments per bulk call")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--single", type=int, default=200, help="enrollments controlled one call at a time")
    args = parser.parse_args(argv)
    results: dict = {"command": "python bench/bulk_controls.py " + " ".join(argv if argv is not None else sys.argv[1:]),
                     "machine": h.machine_info()}
    with h.BenchWorld("bulkctl") as world:
        h.register_deployment()
        owner, sequence_id = h.new_owner_and_sequence(WAITING)
        start = (datetime.now(UTC) + timedelta(hours=1)).replace(microsecond=0)
        h.log(f"single calls on {args.single} enrollments")
        results["single"] = single_round(owner, sequence_id, args.single, f"bc-one-{world.tag}", start)
        results["bulk"] = []
        for rep in range(args.repeats):
            h.log(f"bulk, repetition {rep + 1} of {args.repeats}: {args.n} enrollments")
            results["bulk"].append(bulk_round(args.n, f"bc-{rep}-{world.tag}", start))

    print(f"\n== bulk controls: {args.n} enrollments per call, {args.repeats} repetitions ==")
    for action in PHASES:
        rates = [r[action] for r in results["bulk"]]
        single = results["single"][action]
        print(f"  {action:<7} median {median(rates):6.0f}/s  (min {min(rates):.0f}, max {max(rates):.0f})"
              f"   single calls {single:5.1f}/s   ratio {median(rates) / single:5.1f}x")
    print(f"  runs disagreeing with their enrollment afterwards: {sum(r['runs_disagreeing'] for r in results['bulk'])}")
    path = h.write_results("bulk-controls", results)
    print(f"results: {path}")
    return results


if __name__ == "__main__":
    main()
