"""Throughput of the fast workers on the single-process Prefect server and on the scaled-out one
(`followups prefect-server`: N API processes + a services process, PostgreSQL + Redis), in one run.

    python bench/scaled_server.py [--n 120] [--repeats 3] [--configs single:1,single:2,scaled:2] [--api-workers 2]

Each config is SERVER:FAST_WORKERS. The single-process configs run first on `prefect server
start` (as bench/throughput.py), then that server is stopped and the scaled server is started
on a new Prefect database through the product's command. Every repetition
is bench/throughput.py's: stop the fast workers (SIGSTOP), enroll N one-EMAIL enrollments due
now, let the workers go at T (SIGCONT), wait until every EMAIL_SENT is committed.

- steps/s = N / (last EMAIL_SENT committed - T)
- CPU-seconds per step = (every process of the Prefect server + redis-server + PostgreSQL
  backends of the two databases + the fast workers) CPU between T and the end, / N

The scaled server uses Redis databases 14 and 15 on 127.0.0.1:6379 (flushed before and after;
nothing else may use them). Prints the medians and the scaled/single ratios; writes
bench/results/scaled_server-<time>.json.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _harness as h  # noqa: E402
import throughput as tp  # noqa: E402

REDIS_DB, DOCKET_DB = 14, 15


class FastWorkers:
    """Several fast workers, paused, resumed and measured as one executor."""

    kind = "fast"

    def __init__(self, executors: list[h.Executor]) -> None:
        self.executors = executors

    @property
    def label(self) -> str:
        return f"{len(self.executors)} x {self.executors[0].label}"

    def pause(self) -> None:
        for executor in self.executors:
            executor.pause()

    def resume(self) -> None:
        for executor in self.executors:
            executor.resume()

    def cpu(self) -> float:
        return sum(executor.cpu() for executor in self.executors)


def redis_server_pid() -> int | None:
    """The redis-server serving 127.0.0.1:6379 (the only one on these machines)."""
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                # redis-server retitles itself: "redis-server 127.0.0.1:6379"
                title = (entry / "cmdline").read_bytes().replace(b"\0", b" ")
                if title.startswith(b"redis-server") and b":6379" in title:
                    return int(entry.name)
    return None


class World(h.BenchWorld):
    """The harness's world, with Redis's CPU counted as part of the server (the scaled server's
    messaging runs through it; for the single-process server it stays idle)."""

    redis_pid: int | None = None
    # the scaled server's two parts (both also in "prefect_server"): the API processes, the services
    parts: dict[str, h.TreeCpuSampler] | None = None

    def cpu_snapshot(self, executor=None) -> dict[str, float]:
        snap = super().cpu_snapshot(executor)
        snap["redis"] = h.process_cpu_seconds(self.redis_pid, with_children=False) if self.redis_pid else 0.0
        snap["total"] += snap["redis"]
        for name, sampler in (self.parts or {}).items():
            snap[f"server_{name}"] = sampler.total()
        return snap


def flush_redis() -> None:
    import redis

    for db in (REDIS_DB, DOCKET_DB):
        client = redis.Redis(host="127.0.0.1", port=6379, db=db)
        try:
            client.flushdb()
        finally:
            client.close()


def switch_to_scaled(world: h.BenchWorld, api_workers: int) -> None:
    """Stop the world's single-process server; start `followups prefect-server` in its place
    (same environment, a new port and Prefect database) and measure its whole process tree."""
    for sampler in (world.server_cpu, world.pg_cpu):
        sampler.stop()
    h.log("stopping the single-process Prefect server")
    h.stop_process(world.server, timeout=60, sig=signal.SIGINT)
    h.drop_database(world.prefect_db)
    world.prefect_db = f"bench_prefect_scaled_{world.tag}"  # dropped by the world's exit
    flush_redis()
    # Another port: the product caches clients and deployment ids per API URL.
    port = h.free_port()
    world.api_url = f"http://127.0.0.1:{port}/api"
    world.env["PREFECT_API_URL"] = os.environ["PREFECT_API_URL"] = world.api_url  # the world restores it
    database_url = h.with_database(h.PG_ADMIN_URL.replace("+psycopg", "+asyncpg"), world.prefect_db)
    command = [
        sys.executable, "-m", "followups.cli", "prefect-server", "--workers", str(api_workers), "--port", str(port),
        "--redis-url", f"redis://127.0.0.1:6379/{REDIS_DB}", "--docket-url", f"redis://127.0.0.1:6379/{DOCKET_DB}",
        "--database-url", database_url, "--no-ui", "--log-dir", str(world.tmp / "scaled-server"),
    ]
    env = {**os.environ, **world.env, "PYTHONSAFEPATH": "1"}
    h.log(f"starting the scaled Prefect server: {api_workers} API processes + services (database {world.prefect_db})")
    with open(world.tmp / "scaled-supervisor.log", "wb") as out:
        world.server = subprocess.Popen(
            command, env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True
        )
    h.wait_healthy(world.api_url, timeout=180, process=world.server)
    # The supervisor's tree: the API processes (uvicorn's and its workers) and the services.
    world.server_cpu = h.TreeCpuSampler(world.server.pid).start()
    world.parts = {}
    for pid in h.children_of(world.server.pid):
        title = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
        world.parts["services" if b"services start" in title else "api"] = h.TreeCpuSampler(pid).start()
    world.pg_cpu = h.PgBackendCpu([world.followups_db, world.prefect_db]).start()
    world._reset_clients()
    h.register_deployment()


def run_config(world: h.BenchWorld, server: str, fast_workers: int, args) -> dict:
    owner, sequence_id = h.new_owner_and_sequence()
    with contextlib.ExitStack() as stack:
        executors = [
            stack.enter_context(h.executor("fast", world, concurrency=args.concurrency, poll=args.poll))
            for _ in range(fast_workers)
        ]
        group = FastWorkers(executors)
        h.log(f"{server} server, {group.label}: {args.repeats} x {args.n} steps")
        reps = [tp.one_repetition(world, group, owner, sequence_id, args.n, r, timeout=args.timeout) for r in range(args.repeats)]
    return {
        "server": server,
        "fast_workers": fast_workers,
        "executor": group.label,
        "n_per_repetition": args.n,
        "repetitions": reps,
        "steps_per_second": h.summary([r["steps_per_second"] for r in reps]),
        "cpu_seconds_per_step": h.summary([r["cpu_seconds_per_step"]["total"] for r in reps]),
        "cpu_seconds_per_step_by_process": {
            k: h.summary([r["cpu_seconds_per_step"][k] for r in reps])
            for k in ("prefect_server", "server_api", "server_services", "redis", "postgresql", "executor", "bench_driver")
            if k in reps[0]["cpu_seconds_per_step"]
        },
        "latency_p95_seconds": h.summary([r["latency_seconds"]["p95"] for r in reps]),
        "other_load_cores": h.summary([r["other_load_cores"] for r in reps]),
        "duplicate_sends": sum(r["duplicate_sends"] for r in reps),
    }


def parse_configs(text: str) -> list[tuple[str, int]]:
    configs = []
    for item in text.split(","):
        server, _, workers = item.strip().partition(":")
        if server not in ("single", "scaled") or not workers.isdigit() or int(workers) < 1:
            raise SystemExit(f"bad config {item!r}: use single:N or scaled:N")
        configs.append((server, int(workers)))
    # The single-process server runs first: the switch to the scaled one is one-way.
    return sorted(configs, key=lambda c: c[0] == "scaled")


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=120, help="steps per repetition")
    parser.add_argument("--repeats", type=int, default=3, help="repetitions per config")
    parser.add_argument("--configs", default="single:1,single:2,scaled:2", help="SERVER:FAST_WORKERS, comma-separated")
    parser.add_argument("--api-workers", type=int, default=2, help="API processes of the scaled server")
    parser.add_argument("--concurrency", type=int, default=h.FAST_CONCURRENCY, help="threads per fast worker")
    parser.add_argument("--poll", type=float, default=h.FAST_POLL_SECONDS)
    parser.add_argument("--timeout", type=float, default=300, help="max seconds to drain one repetition")
    args = parser.parse_args(argv)
    configs = parse_configs(args.configs)

    results: dict = {"command": "python bench/scaled_server.py " + " ".join(argv if argv is not None else sys.argv[1:])}
    runs: list[dict] = []
    started = time.monotonic()
    try:
        with World("scaled") as world:
            world.redis_pid = redis_server_pid()
            if world.redis_pid is None:
                h.log("no redis-server process found for 127.0.0.1:6379: Redis CPU is not counted")
            h.register_deployment()
            scaled = False
            for server, fast_workers in configs:
                if server == "scaled" and not scaled:
                    switch_to_scaled(world, args.api_workers)
                    scaled = True
                runs.append(run_config(world, server, fast_workers, args))
    finally:
        flush_redis()
    results["configs"] = runs
    results["wall_seconds"] = time.monotonic() - started

    print("\n== fast workers on the single-process and the scaled Prefect server (due -> EMAIL_SENT committed) ==")
    for r in runs:
        name = f"{r['server']} server ({args.api_workers} API processes + services + Redis), " if r["server"] == "scaled" else "single-process server, "
        print(f"{name}{r['executor']}:")
        print(f"  steps/s        {h.fmt(r['steps_per_second'])}")
        print(f"  CPU-s/step     {h.fmt(r['cpu_seconds_per_step'])}")
        for k, v in r["cpu_seconds_per_step_by_process"].items():
            print(f"    {k:<14} {h.fmt(v)}")
        print(f"  latency p95    {h.fmt(r['latency_p95_seconds'], 's')}")
        print(f"  duplicate sends {r['duplicate_sends']}")
        print(f"  other load on the machine (cores) {h.fmt(r['other_load_cores'], digits=2)}")
    results["ratios"] = {}
    for s in (r for r in runs if r["server"] == "scaled"):
        for b in (r for r in runs if r["server"] == "single"):
            key = f"scaled:{s['fast_workers']} / single:{b['fast_workers']}"
            steps = h.ratio(s["steps_per_second"]["median"], b["steps_per_second"]["median"])
            cpu = h.ratio(s["cpu_seconds_per_step"]["median"], b["cpu_seconds_per_step"]["median"])
            results["ratios"][key] = {"steps_per_second": steps, "cpu_seconds_per_step": cpu}
            print(f"ratio {key} (medians): steps/s {steps:.2f}x, CPU-s per step {cpu:.2f}x")
    path = h.write_results("scaled_server", results)
    print(f"results: {path} ({results['wall_seconds']:.0f} s)")
    return results


if __name__ == "__main__":
    main()
