"""Throughput: N enrollments whose EMAIL step is due at the same instant, drained end to end.

    python bench/throughput.py [--n-fast 300] [--n-stock 40] [--repeats 3] [--stock-repeats 2] [--with-pool]

For each path (the stock runner, then the fast worker, then with --with-pool the same threads as a
Prefect worker type, `prefect worker start --pool` on a pool of type followups) in one Prefect server: stop the executor
(SIGSTOP), create N enrollments of a one-EMAIL sequence (their first flow runs are due now, as
`enroll_deal` makes them), let the executor go on at T (SIGCONT) so the N due runs are all
available to it at that instant, then wait until every EMAIL_SENT event is committed and every
flow run is Completed. Per repetition:

- steps/s = N / (last EMAIL_SENT committed - T)   (also: until the last flow run Completed)
- CPU-seconds per step = (Prefect server + PostgreSQL backends of the two databases + executor
  process tree) CPU between T and the end, / N
- latency under load = provider request received_at - the run's scheduled time (p50/p95/max)

Prints median/p95/min/max over the repetitions and the fast/stock ratio; writes
bench/results/throughput-<time>.json.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _harness as h  # noqa: E402


def completed_runs(flow_run_ids: list) -> int:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId, FlowRunFilterState, FlowRunFilterStateType
    from prefect.client.schemas.objects import StateType

    with get_client(sync_client=True) as client:
        total = 0
        for i in range(0, len(flow_run_ids), 200):
            total += client.count_flow_runs(
                flow_run_filter=FlowRunFilter(
                    id=FlowRunFilterId(any_=flow_run_ids[i : i + 200]),
                    state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.COMPLETED])),
                )
            )
        return total


def one_repetition(world: h.BenchWorld, ex: h.Executor, owner: int, sequence_id: int, n: int, rep: int, timeout: float) -> dict:
    # Build the backlog while the executor is stopped (SIGSTOP), so that all N runs become
    # available to it at one instant T (SIGCONT): "due" is T for every run.
    prefix = f"tp-{ex.kind}-{rep}-{time.time_ns()}"
    ex.pause()
    try:
        created = h.parallel(lambda i: h.enroll_scheduled(owner, sequence_id, h.deal(i, prefix), None), n, threads=4)
    finally:
        cpu0 = world.cpu_snapshot(ex)
        t_due = time.time()
        ex.resume()
    enrollment_ids = [c[0] for c in created]
    run_ids = [c[1] for c in created]
    ok = h.wait_until(lambda: h.count_sent(enrollment_ids) >= n, timeout=timeout, interval=0.5)
    sent_at = h.sent_events(enrollment_ids)
    all_completed = h.wait_until(lambda: completed_runs(run_ids) >= n, timeout=60, interval=0.5)
    t_completed = time.time()
    cpu1 = world.cpu_snapshot(ex)
    if not ok:
        h.log(f"  only {len(sent_at)}/{n} sent within {timeout}s")
    last_sent = max(v.timestamp() for v in sent_at.values()) if sent_at else time.time()
    requests = h.request_enrollment_ids(world.fake)
    latencies = [min(requests[e]) - t_due for e in enrollment_ids if e in requests]
    duplicates = sum(1 for e in enrollment_ids if len(requests.get(e, [])) > 1)
    cpu = {k: cpu1[k] - cpu0[k] for k in cpu0}
    elapsed = t_completed - t_due
    # everything else that ran on the (shared) machine meanwhile, in cores
    other_cores = (cpu["machine_busy"] - cpu["total"] - cpu["bench_driver"]) / max(elapsed, 1e-9)
    result = {
        "n": n,
        "sent": len(sent_at),
        "all_runs_completed": all_completed,
        "duplicate_sends": duplicates,
        "seconds_to_last_sent": last_sent - t_due,
        "steps_per_second": len(sent_at) / max(last_sent - t_due, 1e-9),
        "steps_per_second_to_completed": n / max(t_completed - t_due, 1e-9) if all_completed else None,
        "cpu_seconds": cpu,
        "cpu_seconds_per_step": {k: v / max(len(sent_at), 1) for k, v in cpu.items()},
        "latency_seconds": h.summary(latencies),
        "other_load_cores": other_cores,
        "loadavg": h.loadavg(),
    }
    h.log(
        f"  rep {rep}: {result['steps_per_second']:.2f} steps/s ({len(sent_at)}/{n} in "
        f"{result['seconds_to_last_sent']:.1f}s), CPU/step {result['cpu_seconds_per_step']['total']:.3f}s "
        f"(server {result['cpu_seconds_per_step']['prefect_server']:.3f}, pg {result['cpu_seconds_per_step']['postgresql']:.3f}, "
        f"executor {result['cpu_seconds_per_step']['executor']:.3f}), latency p95 {result['latency_seconds']['p95']:.2f}s, "
        f"duplicates {duplicates}; other load on the machine {other_cores:.2f} cores"
    )
    return result


def run_path(world, kind: str, n: int, repeats: int, args) -> dict:
    owner, sequence_id = h.new_owner_and_sequence()
    extra_env = dict(item.split("=", 1) for item in args.executor_env)
    with h.executor(kind, world, concurrency=args.concurrency, poll=args.poll, extra_env=extra_env, nice=args.nice) as ex:
        h.log(f"{ex.label}: {repeats} x {n} steps")
        reps = [one_repetition(world, ex, owner, sequence_id, n, r, timeout=args.timeout) for r in range(repeats)]
    return {
        "executor": ex.label,
        "n_per_repetition": n,
        "repetitions": reps,
        "steps_per_second": h.summary([r["steps_per_second"] for r in reps]),
        "cpu_seconds_per_step": h.summary([r["cpu_seconds_per_step"]["total"] for r in reps]),
        "cpu_seconds_per_step_by_process": {
            k: h.summary([r["cpu_seconds_per_step"][k] for r in reps])
            for k in ("prefect_server", "postgresql", "executor", "bench_driver")
        },
        "other_load_cores": h.summary([r["other_load_cores"] for r in reps]),
        "latency_p95_seconds": h.summary([r["latency_seconds"]["p95"] for r in reps]),
        "latency_p50_seconds": h.summary([r["latency_seconds"]["median"] for r in reps]),
        "latency_max_seconds": h.summary([r["latency_seconds"]["max"] for r in reps]),
        "duplicate_sends": sum(r["duplicate_sends"] for r in reps),
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n-fast", type=int, default=300, help="steps per repetition, fast path")
    parser.add_argument("--n-stock", type=int, default=40, help="steps per repetition, stock path")
    parser.add_argument("--repeats", type=int, default=3, help="repetitions, fast path")
    parser.add_argument("--stock-repeats", type=int, default=2, help="repetitions, stock path")
    parser.add_argument("--concurrency", type=int, default=h.FAST_CONCURRENCY)
    parser.add_argument("--poll", type=float, default=h.FAST_POLL_SECONDS)
    parser.add_argument("--timeout", type=float, default=300, help="max seconds to drain one repetition")
    parser.add_argument("--only", choices=["stock", "fast", "pool"], action="append",
                        help="run this path only (repeat the option for several)")
    parser.add_argument("--with-pool", action="store_true",
                        help="also the followups work-pool worker (`prefect worker start`), after the fast worker")
    parser.add_argument("--executor-env", action="append", default=[], metavar="KEY=VALUE",
                        help="extra environment for the executor process (sensitivity runs)")
    parser.add_argument("--nice", type=int, default=0, help="run the executor under `nice -n N`")
    args = parser.parse_args(argv)

    results: dict = {"command": "python bench/throughput.py " + " ".join(argv if argv is not None else sys.argv[1:])}
    with h.BenchWorld("throughput") as world:
        h.register_deployment()
        paths = set(args.only or ["stock", "fast", *(["pool"] if args.with_pool else [])])
        if "stock" in paths:
            results["stock"] = run_path(world, "stock", args.n_stock, args.stock_repeats, args)
        if "fast" in paths:
            results["fast"] = run_path(world, "fast", args.n_fast, args.repeats, args)
        if "pool" in paths:
            results["pool"] = run_path(world, "pool", args.n_fast, args.repeats, args)

    print("\n== throughput (steps/s, end to end: due -> provider -> EMAIL_SENT committed) ==")
    for kind in ("stock", "fast", "pool"):
        if kind in results:
            r = results[kind]
            print(f"{r['executor']}:")
            print(f"  steps/s        {h.fmt(r['steps_per_second'])}")
            print(f"  CPU-s/step     {h.fmt(r['cpu_seconds_per_step'])}")
            for k, v in r["cpu_seconds_per_step_by_process"].items():
                print(f"    {k:<14} {h.fmt(v)}")
            print(f"  latency p50    {h.fmt(r['latency_p50_seconds'], 's')}")
            print(f"  latency p95    {h.fmt(r['latency_p95_seconds'], 's')}")
            print(f"  duplicate sends {r['duplicate_sends']}")
            print(f"  other load on the machine (cores) {h.fmt(r['other_load_cores'], digits=2)}")
    # (key suffix, numerator path, denominator path): steps/s of the first over the second, and
    # CPU per step of the stock path over the fast one but of the pool worker over the fast one
    for suffix, a, b in (("", "fast", "stock"), ("_pool_fast", "pool", "fast")):
        if a in results and b in results:
            cpu_over = (b, a) if a == "fast" else (a, b)
            results[f"ratio{suffix}_steps_per_second"] = h.ratio(
                results[a]["steps_per_second"]["median"], results[b]["steps_per_second"]["median"]
            )
            results[f"ratio{suffix}_cpu_per_step"] = h.ratio(
                results[cpu_over[0]]["cpu_seconds_per_step"]["median"], results[cpu_over[1]]["cpu_seconds_per_step"]["median"]
            )
            print(f"ratio {a}/{b} steps/s (medians): {results[f'ratio{suffix}_steps_per_second']:.2f}x")
            print(f"ratio {cpu_over[0]}/{cpu_over[1]} CPU-s per step (medians): {results[f'ratio{suffix}_cpu_per_step']:.2f}x")
    path = h.write_results("throughput", results)
    print(f"results: {path}")
    return results


if __name__ == "__main__":
    main()
