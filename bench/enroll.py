"""Enroll: `enroll_deal` latency (p50/p95) and enrollments per second.

    python bench/enroll.py [--n 100] [--stock-n 20] [--repeats 2] [--threads 4]

For each path (stock runner, then fast worker) serving the deployment:

1. the call itself: the executor is paused (SIGSTOP), `--n` sequential `enroll_deal` calls on
   an otherwise idle server: latency p50/p95 and the part spent creating the Prefect flow run
   (`run_deployment(..., timeout=0)` in schedule_sequence_run). Measured twice: as the product
   calls it (a new Prefect API client per call), and inside one reused client
   (`prefect.context.SyncClientContext`), which is what closing the 50 ms target needs;
2. while the executor works: the executor runs, `--n` (stock path: `--stock-n`) enrollments
   are made from `--threads` threads while it executes their first steps (EMAIL due now):
   enroll_deal latency under that load, enrollments/s, and enrollments fully processed
   (first email sent) per second.

The product's HTTP endpoint (POST /api/enrollments) adds FastAPI + auth on top of the same call;
it is not measured here. Prints median/p95/min/max over the repetitions and the ratios; writes
bench/results/enroll-<time>.json.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _harness as h  # noqa: E402


class _Timed:
    """Times followups.prefect_runs.schedule_sequence_run (the Prefect part of enroll_deal)."""

    def __init__(self) -> None:
        import followups.prefect_runs as prefect_runs

        self.module = prefect_runs
        self.original = prefect_runs.schedule_sequence_run
        self.local = threading.local()

    def __enter__(self) -> _Timed:
        original, local = self.original, self.local

        def timed(*args, **kwargs):
            started = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                local.last = time.perf_counter() - started

        self.module.schedule_sequence_run = timed
        return self

    def __exit__(self, *exc) -> None:
        self.module.schedule_sequence_run = self.original


def _sequential(owner: int, sequence_id: int, n: int, label: str, timer: _Timed, reuse_client: bool) -> dict:
    from prefect.context import SyncClientContext

    from followups.control import enroll_deal

    latencies, prefect_part, ids = [], [], []
    context = SyncClientContext() if reuse_client else contextlib.nullcontext()
    with context:
        started = time.perf_counter()
        for i in range(n):
            t = time.perf_counter()
            ref = enroll_deal(owner, h.deal(i, f"{label}-{time.time_ns()}"), sequence_id)
            latencies.append(time.perf_counter() - t)
            prefect_part.append(timer.local.last)
            ids.append(ref.id)
        rate = n / (time.perf_counter() - started)
    return {
        "latency_seconds": h.summary(latencies),
        "prefect_run_creation_seconds": h.summary(prefect_part),
        "enrollments_per_second": rate,
        "ids": ids,
    }


def run_path(world, kind: str, args) -> dict:
    from followups.control import cancel_enrollment
    from followups.control import enroll_deal

    owner, sequence_id = h.new_owner_and_sequence()
    n_load = args.n if kind == "fast" else args.stock_n
    reps = []
    all_ids: list[int] = []
    with h.executor(kind, world, concurrency=args.concurrency, poll=args.poll) as ex, _Timed() as timer:
        h.log(ex.label)
        for rep in range(args.repeats):
            ex.pause()
            try:
                as_is = _sequential(owner, sequence_id, args.n, f"en-{kind}-{rep}", timer, reuse_client=False)
                reused = _sequential(owner, sequence_id, args.n, f"er-{kind}-{rep}", timer, reuse_client=True)
                # not part of the under-load phase: cancel them (and so their runs) before the
                # executor goes on
                for enrollment_id in as_is.pop("ids") + reused.pop("ids"):
                    cancel_enrollment(enrollment_id)
            finally:
                ex.resume()

            prefix = f"enc-{kind}-{rep}-{time.time_ns()}"
            latencies: list[float] = []

            def one(i: int) -> int:
                t = time.perf_counter()
                ref = enroll_deal(owner, h.deal(i, prefix), sequence_id)
                latencies.append(time.perf_counter() - t)
                return ref.id

            started = time.perf_counter()
            ids = h.parallel(one, n_load, threads=args.threads)
            enroll_rate = n_load / (time.perf_counter() - started)
            done = h.wait_until(lambda: h.count_sent(ids) >= n_load, timeout=args.drain_timeout, interval=0.25)
            processed_rate = n_load / (time.perf_counter() - started)
            all_ids += ids
            rep_result = {
                "idle_as_is": as_is,
                "idle_reused_client": reused,
                "under_load": {
                    "n": n_load,
                    "latency_seconds": h.summary(latencies),
                    "enrollments_per_second": enroll_rate,
                    "processed_per_second": processed_rate if done else None,
                },
            }
            reps.append(rep_result)
            h.log(
                f"  rep {rep}: idle enroll_deal p50 {as_is['latency_seconds']['median'] * 1000:.1f} ms p95 "
                f"{as_is['latency_seconds']['p95'] * 1000:.1f} ms (Prefect part p50 "
                f"{as_is['prefect_run_creation_seconds']['median'] * 1000:.1f} ms); reused client p50 "
                f"{reused['latency_seconds']['median'] * 1000:.1f} ms p95 {reused['latency_seconds']['p95'] * 1000:.1f} ms; "
                f"under load ({args.threads} threads, {n_load}): p95 {rep_result['under_load']['latency_seconds']['p95'] * 1000:.0f} ms, "
                f"{enroll_rate:.1f} enrolled/s, {processed_rate:.2f} first emails sent/s{'' if done else ' (TIMED OUT)'}"
            )
    pick = lambda key, sub: h.summary([r[key][sub] if not isinstance(r[key][sub], dict) else r[key][sub]["median"] for r in reps])  # noqa: E731
    return {
        "executor": ex.label,
        "repetitions": reps,
        "idle_latency_p50_seconds": h.summary([r["idle_as_is"]["latency_seconds"]["median"] for r in reps]),
        "idle_latency_p95_seconds": h.summary([r["idle_as_is"]["latency_seconds"]["p95"] for r in reps]),
        "idle_prefect_part_p50_seconds": h.summary([r["idle_as_is"]["prefect_run_creation_seconds"]["median"] for r in reps]),
        "idle_reused_client_p50_seconds": h.summary([r["idle_reused_client"]["latency_seconds"]["median"] for r in reps]),
        "idle_reused_client_p95_seconds": h.summary([r["idle_reused_client"]["latency_seconds"]["p95"] for r in reps]),
        "idle_enrollments_per_second": pick("idle_as_is", "enrollments_per_second"),
        "under_load_latency_p95_seconds": h.summary([r["under_load"]["latency_seconds"]["p95"] for r in reps]),
        "under_load_enrollments_per_second": h.summary([r["under_load"]["enrollments_per_second"] for r in reps]),
        "under_load_processed_per_second": h.summary(
            [r["under_load"]["processed_per_second"] for r in reps if r["under_load"]["processed_per_second"]]
        ),
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=100, help="enrollments per phase")
    parser.add_argument("--stock-n", type=int, default=20, help="enrollments in the under-load phase, stock path")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--concurrency", type=int, default=h.FAST_CONCURRENCY)
    parser.add_argument("--poll", type=float, default=h.FAST_POLL_SECONDS)
    parser.add_argument("--drain-timeout", type=float, default=120)
    parser.add_argument("--only", choices=["stock", "fast"])
    args = parser.parse_args(argv)

    results: dict = {"command": "python bench/enroll.py " + " ".join(argv if argv is not None else sys.argv[1:])}
    with h.BenchWorld("enroll") as world:
        h.register_deployment()
        for kind in ("stock", "fast"):
            if args.only in (None, kind):
                results[kind] = run_path(world, kind, args)

    print("\n== enroll_deal ==")
    for kind in ("stock", "fast"):
        if kind in results:
            r = results[kind]
            print(f"with {r['executor']}:")
            print(f"  idle, as is:           p50 {h.fmt(r['idle_latency_p50_seconds'], 's')}")
            print(f"                         p95 {h.fmt(r['idle_latency_p95_seconds'], 's')}")
            print(f"    Prefect run creation p50 {h.fmt(r['idle_prefect_part_p50_seconds'], 's')}")
            print(f"  idle, reused client:   p50 {h.fmt(r['idle_reused_client_p50_seconds'], 's')}")
            print(f"                         p95 {h.fmt(r['idle_reused_client_p95_seconds'], 's')}")
            print(f"  idle enrollments/s     {h.fmt(r['idle_enrollments_per_second'], '', 1)}")
            print(f"  under load p95         {h.fmt(r['under_load_latency_p95_seconds'], 's')}")
            print(f"  under load enrolled/s  {h.fmt(r['under_load_enrollments_per_second'], '', 1)}")
            print(f"  first emails sent/s    {h.fmt(r['under_load_processed_per_second'], '', 2)}")
    if "stock" in results and "fast" in results:
        results["ratio_processed_per_second_fast_over_stock"] = h.ratio(
            results["fast"]["under_load_processed_per_second"]["median"],
            results["stock"]["under_load_processed_per_second"]["median"],
        )
        results["ratio_under_load_p95_stock_over_fast"] = h.ratio(
            results["stock"]["under_load_latency_p95_seconds"]["median"],
            results["fast"]["under_load_latency_p95_seconds"]["median"],
        )
        print(f"ratio fast/stock enrollments processed (enrolled + first email sent) per second: "
              f"{results['ratio_processed_per_second_fast_over_stock']:.1f}x")
        print(f"ratio stock/fast enroll_deal p95 while the executor works: {results['ratio_under_load_p95_stock_over_fast']:.2f}x")
    path = h.write_results("enroll", results)
    print(f"results: {path}")
    return results


if __name__ == "__main__":
    main()
