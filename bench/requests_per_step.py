"""Prefect API requests and CPU per sent step, against Prefect's floor on the same worker.

    python bench/requests_per_step.py [--n 200] [--repeats 2]

One Prefect server with its access log on, one fast worker (8 threads) serving the product's
deployments and a trivial one (one task that returns; bench/_trivial_worker.py). Per repetition,
in turn: N enrollments of a one-EMAIL sequence, and N runs of the trivial deployment, each
backlog built while the worker is stopped and released at once, then drained. For each side:

- requests per run at the server, by endpoint (ids folded to {id}), from its access log, less
  this script's own polling;
- CPU-seconds per run: Prefect server + PostgreSQL backends + the worker.

Prints both per endpoint and the ratios; writes bench/results/requests-per-step-<time>.json.
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from collections import Counter
from pathlib import Path
from statistics import median

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _harness as h  # noqa: E402

ACCESS = re.compile(r'"(GET|POST|PATCH|PUT|DELETE) (/api)?(/[^ ?"]*)')
ID = re.compile(r"/[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}|/\d+(?=/|$)")


class TrivialWorker(h.Executor):
    def command(self) -> list[str]:
        script = str(Path(__file__).resolve().parent / "_trivial_worker.py")
        return [sys.executable, script, "--concurrency", str(self.concurrency), "--poll", str(self.poll)]


def requests_between(log: Path, start: int, end: int) -> Counter:
    with open(log, "rb") as source:
        source.seek(start)
        text = source.read(end - start).decode(errors="replace")
    found: Counter = Counter()
    for method, _, path in ACCESS.findall(text):
        found[f"{method} {ID.sub('/{id}', path)}"] += 1
    return found


def trivial_runs(n: int) -> list:
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        deployment = client.read_deployment_by_name("trivial/bench")
        return [client.create_flow_run_from_deployment(deployment.id).id for _ in range(n)]


DRIVER_POLLS = Counter()  # this script's own requests while it waits, taken out of the counts


def completed(run_ids: list) -> int:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId, FlowRunFilterState, FlowRunFilterStateType
    from prefect.client.schemas.objects import StateType

    DRIVER_POLLS["GET /csrf-token"] += 1  # a new client each time
    DRIVER_POLLS["POST /flow_runs/count"] += (len(run_ids) + 199) // 200
    with get_client(sync_client=True) as client:
        return sum(
            client.count_flow_runs(flow_run_filter=FlowRunFilter(
                id=FlowRunFilterId(any_=run_ids[i : i + 200]),
                state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.COMPLETED])),
            ))
            for i in range(0, len(run_ids), 200)
        )


def one_side(world: h.BenchWorld, worker: TrivialWorker, kind: str, n: int, owner: int, sequence_id: int, timeout: float) -> dict:
    server_log = world.tmp / "prefect-server.log"
    worker.pause()
    try:
        if kind == "product":
            prefix = f"rps-{time.time_ns()}"
            made = h.parallel(lambda i: h.enroll_scheduled(owner, sequence_id, h.deal(i, prefix), None), n, threads=4)
            run_ids = [run_id for _, run_id in made]
        else:
            run_ids = trivial_runs(n)
        time.sleep(1.0)  # let the server's log catch up with the set-up's requests
        start = server_log.stat().st_size
        DRIVER_POLLS.clear()
        cpu0 = world.cpu_snapshot(worker)
    finally:
        worker.resume()
    # Bounded by progress: fail only when nothing completed for `timeout` s.
    done, last_change, seen = 0, time.monotonic(), -1
    while done < n:
        done = completed(run_ids)
        if done != seen:
            seen, last_change = done, time.monotonic()
        if time.monotonic() - last_change > timeout:
            raise SystemExit(f"{kind}: {done}/{n} runs completed, none for {timeout} s; see {worker.log_path}")
        time.sleep(0.5)
    time.sleep(3.0)  # the runs' last events and log lines reach the server after Completed
    cpu1 = world.cpu_snapshot(worker)
    end = server_log.stat().st_size
    counts = requests_between(server_log, start, end) - DRIVER_POLLS
    cpu = {key: (cpu1[key] - cpu0[key]) / n for key in ("prefect_server", "postgresql", "executor", "total")}
    per_run = {endpoint: count / n for endpoint, count in counts.most_common()}
    h.log(f"  {kind}: {sum(counts.values()) / n:.2f} requests per run, {cpu['total']:.3f} CPU-s per run")
    return {"requests_per_run": sum(counts.values()) / n, "by_endpoint": per_run, "cpu_per_run": cpu}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--timeout", type=float, default=120, help="fail when no run completed for this long (s)")
    args = parser.parse_args(argv)
    results: dict = {"n": args.n, "repetitions": []}
    with h.BenchWorld("rps", server_env={"PREFECT_SERVER_LOGGING_LEVEL": "INFO"}) as world:
        h.register_deployment()
        owner, sequence_id = h.new_owner_and_sequence()
        worker = TrivialWorker("fast", world)
        try:
            worker.start()
            for rep in range(args.repeats):
                h.log(f"repetition {rep + 1}/{args.repeats}")
                results["repetitions"].append({
                    side: one_side(world, worker, side, args.n, owner, sequence_id, args.timeout) for side in ("product", "trivial")
                })
        finally:
            worker.stop()
    reps = results["repetitions"]
    summary = {
        side: {
            "requests_per_run": median(r[side]["requests_per_run"] for r in reps),
            "cpu_per_run": median(r[side]["cpu_per_run"]["total"] for r in reps),
        }
        for side in ("product", "trivial")
    }
    summary["ratio"] = {key: h.ratio(summary["product"][key], summary["trivial"][key]) for key in ("requests_per_run", "cpu_per_run")}
    results["summary"] = summary
    endpoints = sorted({e for r in reps for side in ("product", "trivial") for e in r[side]["by_endpoint"]})
    print(f"\nper run, median of {len(reps)} repetitions of {args.n} runs each:")
    print(f"{'endpoint':<60} {'product':>8} {'trivial':>8}")
    for endpoint in endpoints:
        values = [median(r[side]["by_endpoint"].get(endpoint, 0.0) for r in reps) for side in ("product", "trivial")]
        print(f"{endpoint:<60} {values[0]:>8.2f} {values[1]:>8.2f}")
    for key, label in (("requests_per_run", "requests"), ("cpu_per_run", "CPU-s")):
        print(f"{label + ' per run':<60} {summary['product'][key]:>8.3f} {summary['trivial'][key]:>8.3f}   ratio {summary['ratio'][key]:.2f}×")
    print(f"results: {h.write_results('requests-per-step', results)}")
    return results


if __name__ == "__main__":
    main()
