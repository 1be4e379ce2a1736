"""Latency: due time -> provider call, at low load and under load.

    python bench/latency.py [--rate 1] [--duration 30] [--load-rate 6] [--load-duration 20]
                            [--stock-load-duration 5]

Due time = the flow run's scheduled time. For each path (stock runner, then fast worker) in one
Prefect server, two phases:

- low load: one EMAIL step due every 1/rate s for `duration` s (the issue's target: p95 <= 2 s
  at 1 step/s);
- under load: `load-rate` steps/s for `load-duration` s (the stock path gets a shorter phase,
  `--stock-load-duration`, because it cannot keep up and its backlog would take minutes).

All runs are created ahead of their due times (with the product's create_enrollment +
schedule_sequence_run, i.e. what enroll_deal and a WAIT do), then the script waits until every
step was sent. Latency per step = the fake provider's received_at - the run's scheduled time.
Prints p50/p95/max (plus min) per phase and the stock/fast ratio of the p95s; writes
bench/results/latency-<time>.json.
"""

from __future__ import annotations

import argparse
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _harness as h  # noqa: E402


def phase(world: h.BenchWorld, ex: h.Executor, owner: int, sequence_id: int, rate: float, duration: float, label: str) -> dict:
    n = max(1, int(round(rate * duration)))
    lead = 3 + n / 15  # creation runs ~15-60 runs/s here; every run must exist before it is due
    t0 = datetime.now(UTC) + timedelta(seconds=lead)
    dues = [t0 + timedelta(seconds=i / rate) for i in range(n)]
    prefix = f"lat-{ex.kind}-{label}-{time.time_ns()}"
    created = h.parallel(lambda i: h.enroll_scheduled(owner, sequence_id, h.deal(i, prefix), dues[i]), n, threads=4)
    late = (datetime.now(UTC) - t0).total_seconds()
    if late > 0:
        h.log(f"  warning: creation ended {late:.1f}s after the first due time")
    enrollment_ids = [c[0] for c in created]
    due_by_enrollment = {e: dues[i] for i, e in enumerate(enrollment_ids)}
    cpu0 = world.cpu_snapshot(ex)
    budget = lead + duration + 30 + n / 0.5
    ok = h.wait_until(lambda: h.count_sent(enrollment_ids) >= n, timeout=budget, interval=0.5)
    cpu1 = world.cpu_snapshot(ex)
    requests = h.request_enrollment_ids(world.fake)
    latencies = [min(requests[e]) - due_by_enrollment[e].timestamp() for e in enrollment_ids if e in requests]
    stats = h.summary(latencies)
    elapsed = max(1e-9, time.time() - t0.timestamp())
    other = (cpu1["machine_busy"] - cpu0["machine_busy"] - (cpu1["total"] - cpu0["total"]) - (cpu1["bench_driver"] - cpu0["bench_driver"])) / elapsed
    h.log(
        f"  {label}: {rate:g} steps/s for {duration:g}s ({n} steps, {len(latencies)} sent{'' if ok else ', TIMED OUT'}): "
        f"p50 {stats['median']:.2f}s p95 {stats['p95']:.2f}s max {stats['max']:.2f}s; other load {other:.2f} cores"
    )
    return {"rate": rate, "duration": duration, "n": n, "sent": len(latencies), "latency_seconds": stats, "other_load_cores": other}


def run_path(world, kind: str, args) -> dict:
    owner, sequence_id = h.new_owner_and_sequence()
    load_duration = args.load_duration if kind == "fast" else args.stock_load_duration
    with h.executor(kind, world, concurrency=args.concurrency, poll=args.poll) as ex:
        h.log(ex.label)
        low = [phase(world, ex, owner, sequence_id, args.rate, args.duration, f"low load #{r}") for r in range(args.repeats)]
        load = phase(world, ex, owner, sequence_id, args.load_rate, load_duration, "under load")
    return {
        "executor": ex.label,
        "low_load": low,
        "low_load_p95_seconds": h.summary([p["latency_seconds"]["p95"] for p in low]),
        "low_load_p50_seconds": h.summary([p["latency_seconds"]["median"] for p in low]),
        "under_load": load,
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rate", type=float, default=1.0, help="low-load steps per second")
    parser.add_argument("--duration", type=float, default=30, help="low-load phase seconds")
    parser.add_argument("--repeats", type=int, default=1, help="low-load phases per path")
    parser.add_argument("--load-rate", type=float, default=6.0, help="steps per second under load")
    parser.add_argument("--load-duration", type=float, default=20, help="seconds under load (fast path)")
    parser.add_argument("--stock-load-duration", type=float, default=5, help="seconds under load (stock path)")
    parser.add_argument("--concurrency", type=int, default=h.FAST_CONCURRENCY)
    parser.add_argument("--poll", type=float, default=h.FAST_POLL_SECONDS)
    parser.add_argument("--only", choices=["stock", "fast"])
    args = parser.parse_args(argv)

    results: dict = {"command": "python bench/latency.py " + " ".join(argv if argv is not None else sys.argv[1:])}
    with h.BenchWorld("latency") as world:
        h.register_deployment()
        for kind in ("stock", "fast"):
            if args.only in (None, kind):
                results[kind] = run_path(world, kind, args)

    print("\n== latency: due (scheduled time) -> provider call ==")
    for kind in ("stock", "fast"):
        if kind in results:
            r = results[kind]
            print(f"{r['executor']}:")
            for p in r["low_load"]:
                print(f"  {p['rate']:g} steps/s   {h.fmt(p['latency_seconds'], 's', 2)}")
            p = r["under_load"]
            print(f"  {p['rate']:g} steps/s   {h.fmt(p['latency_seconds'], 's', 2)}  ({p['duration']:g}s of load)")
    if "stock" in results and "fast" in results:
        results["ratio_low_load_p95"] = h.ratio(
            results["stock"]["low_load_p95_seconds"]["median"], results["fast"]["low_load_p95_seconds"]["median"]
        )
        results["ratio_under_load_p95"] = h.ratio(
            results["stock"]["under_load"]["latency_seconds"]["p95"], results["fast"]["under_load"]["latency_seconds"]["p95"]
        )
        print(f"ratio stock/fast p95 at {args.rate:g} steps/s: {results['ratio_low_load_p95']:.1f}x")
        print(f"ratio stock/fast p95 under load: {results['ratio_under_load_p95']:.1f}x")
    path = h.write_results("latency", results)
    print(f"results: {path}")
    return results


if __name__ == "__main__":
    main()
