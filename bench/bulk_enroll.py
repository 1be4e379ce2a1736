"""Bulk enrollment: enrollments per second into ACTIVE with their first flow run scheduled.

    python bench/bulk_enroll.py [--n 1000] [--repeats 3] [--no-worker] [--servers single,scaled]

Builds its own world (followups + Prefect databases on the local PostgreSQL, `prefect server
start` on PostgreSQL, the fake providers) and starts the fast worker, which executes the runs as
they are made (so the server serves both, as in production). Each repetition enrolls `--n` new
deals of one CSV-like list through `followups.bulk.enroll_batch` (what `followups import`, the
HTTP batch and `control.enroll_deals` call) and times it until every one is ACTIVE (or already
further) with its first run stored. Prints the median over the repetitions, the time split
(database vs Prefect calls, summed over the bulk threads), and the CPU of the Prefect server,
PostgreSQL and the worker; writes bench/results/bulk_enroll-<time>.json.

`--servers single,scaled` measures on the single-process server, then switches to the scaled
server (bench/scaled_server.py's: `followups prefect-server`, N API processes + services +
Redis, on a new Prefect database) with a new fast worker, and prints the scaled/single ratio of
the medians: both in one run.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _harness as h  # noqa: E402


def _stored_with_run(ids: list[int]) -> int:
    from sqlalchemy import text

    from followups.db.session import session_scope

    with session_scope() as session:
        return session.scalar(
            text("SELECT count(*) FROM enrollments WHERE id = ANY(:ids) AND prefect_flow_run_id IS NOT NULL"), {"ids": ids}
        )


def one_repetition(world, ex, owner: int, sequence_id: int, n: int, rep: int) -> dict:
    from followups.bulk import enroll_batch

    items = [h.deal(i, f"bulk-{rep}-{time.time_ns()}") for i in range(n)]
    before = world.cpu_snapshot(ex)
    started = time.perf_counter()
    outcome = enroll_batch(owner, items, sequence_id)
    elapsed = time.perf_counter() - started
    after = world.cpu_snapshot(ex)
    ids = [r.enrollment_id for r in outcome.results if r.enrollment_id]
    with_run = _stored_with_run(ids)
    result = {
        "n": n,
        "seconds": elapsed,
        "enrollments_per_second": with_run / elapsed,
        "counts": outcome.counts,
        "with_first_run": with_run,
        "db_seconds": outcome.db_seconds,
        "prefect_seconds": outcome.prefect_seconds,
        "cpu_seconds": {k: after[k] - before[k] for k in ("prefect_server", "postgresql", "executor", "bench_driver", "machine_busy")},
    }
    cpu = result["cpu_seconds"]
    h.log(
        f"  rep {rep}: {with_run}/{n} ACTIVE with first run in {elapsed:.2f} s = {result['enrollments_per_second']:.1f}/s; "
        f"DB {outcome.db_seconds:.2f} s, Prefect calls {outcome.prefect_seconds:.2f} s (thread-seconds); CPU server "
        f"{cpu['prefect_server']:.2f} s, PostgreSQL {cpu['postgresql']:.2f} s, worker {cpu['executor']:.2f} s, "
        f"this process {cpu['bench_driver']:.2f} s"
    )
    return result


def run_server(world, args, owner: int, sequence_id: int) -> dict:
    runner = contextlib.nullcontext() if args.no_worker else h.executor("fast", world)
    with runner as ex:
        label = "no executor" if ex is None else ex.label
        h.log(f"bulk enrollment, {args.n} deals x {args.repeats}, with {label}")
        reps = [one_repetition(world, ex, owner, sequence_id, args.n, rep) for rep in range(args.repeats)]
    return {
        "executor": label,
        "repetitions": reps,
        "enrollments_per_second": h.summary([r["enrollments_per_second"] for r in reps]),
        "db_seconds": h.summary([r["db_seconds"] for r in reps]),
        "prefect_seconds": h.summary([r["prefect_seconds"] for r in reps]),
        "server_cpu_per_enrollment_ms": h.summary([1000 * r["cpu_seconds"]["prefect_server"] / r["n"] for r in reps]),
        "postgresql_cpu_per_enrollment_ms": h.summary([1000 * r["cpu_seconds"]["postgresql"] / r["n"] for r in reps]),
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=1000, help="deals per repetition")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-worker", action="store_true", help="measure with no executor running")
    parser.add_argument("--servers", default="single", help="single, scaled or single,scaled (in that order)")
    parser.add_argument("--api-workers", type=int, default=2, help="API processes of the scaled server")
    args = parser.parse_args(argv)
    servers = [s.strip() for s in args.servers.split(",") if s.strip()]
    if servers not in (["single"], ["scaled"], ["single", "scaled"]):
        raise SystemExit("--servers: single, scaled or single,scaled")

    import scaled_server as ss  # the scaled server's start-up, shared with its own benchmark

    results: dict = {"command": "python bench/bulk_enroll.py " + " ".join(argv if argv is not None else sys.argv[1:])}
    by_server: dict[str, dict] = {}
    try:
        with ss.World("bulk") as world:
            world.redis_pid = ss.redis_server_pid()
            h.register_deployment()
            for server in servers:
                if server == "scaled":
                    ss.switch_to_scaled(world, args.api_workers)
                owner, sequence_id = h.new_owner_and_sequence()
                by_server[server] = run_server(world, args, owner, sequence_id)
    finally:
        if "scaled" in servers:
            ss.flush_redis()
    results.update(servers=by_server, machine=h.machine_info())
    print("\n== bulk enrollment ==")
    for server, r in by_server.items():
        name = f"scaled server ({args.api_workers} API processes + services + Redis)" if server == "scaled" else "single-process server"
        print(f"{name}, with {r['executor']}, {args.n} deals per repetition, {args.repeats} repetitions")
        print(f"  enrollments/s into ACTIVE with first run scheduled: {h.fmt(r['enrollments_per_second'], '', 1)}")
        print(f"  database time per repetition (thread-s):            {h.fmt(r['db_seconds'], 's', 2)}")
        print(f"  Prefect calls per repetition (thread-s):            {h.fmt(r['prefect_seconds'], 's', 2)}")
        print(f"  Prefect server CPU per enrollment:                  {h.fmt(r['server_cpu_per_enrollment_ms'], 'ms', 2)}")
        print(f"  PostgreSQL CPU per enrollment:                      {h.fmt(r['postgresql_cpu_per_enrollment_ms'], 'ms', 2)}")
    if len(by_server) == 2:
        rate = h.ratio(by_server["scaled"]["enrollments_per_second"]["median"], by_server["single"]["enrollments_per_second"]["median"])
        results["ratio_scaled_over_single"] = rate
        print(f"ratio scaled / single (medians): enrollments/s {rate:.2f}x")
    path = h.write_results("bulk_enroll", results)
    print(f"results: {path}")
    return results


if __name__ == "__main__":
    main()
