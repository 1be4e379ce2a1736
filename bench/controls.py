"""Concurrent pause / resume / cancel: errors and latency, from the Python API and over HTTP.

    python bench/controls.py [--n 1000] [--threads 200] [--clients 64]

N enrollments (bulk-enrolled, starting an hour from now, so their first runs wait Scheduled in
Prefect and nothing else runs) are paused, then resumed, then cancelled: each phase is N calls
on N distinct enrollments at once, from `--threads` threads of the Python API in this process
(the product's default pool: 5 connections + 20 overflow). Then the same on N other enrollments
over HTTP: `followups api` (uvicorn, one process) and `--clients` concurrent HTTP clients.

An error is any call that did not answer with the new status: an exception in Python, or a
non-2xx answer over HTTP (a typed BusyError would count as one too). After the phases, every
run is read back in Prefect and must agree with its enrollment (Suspended, Scheduled at its
start time, Cancelled). Prints p50/p95/max per phase and writes bench/results/controls-*.json.
"""

from __future__ import annotations

import argparse
import contextvars
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _harness as h  # noqa: E402

WAITING = [
    {"type": "EMAIL", "subject": "Offer", "text": "Hi"},
    {"type": "WAIT", "days": 3},
    {"type": "EMAIL", "subject": "Following up", "text": "Any news?"},
]
PHASES = ("pause", "resume", "cancel")
EXPECTED = {"pause": "PAUSED", "resume": "ACTIVE", "cancel": "CANCELLED"}


def enroll(owner: int, sequence_id: int, n: int, prefix: str, start: datetime) -> list[int]:
    from followups.bulk import enroll_batch

    outcome = enroll_batch(owner, [h.deal(i, prefix) for i in range(n)], sequence_id, start_at=start)
    ids = [item.enrollment_id for item in outcome.results if item.status == "ok"]
    if len(ids) != n:
        raise SystemExit(f"bulk enrollment made {len(ids)} of {n}")
    return ids


def timed(call) -> tuple[float, str | None]:
    began = time.perf_counter()
    try:
        error = call()
    except Exception as exc:  # noqa: BLE001 - counted and reported
        error = f"{type(exc).__module__}.{type(exc).__name__}: {str(exc)[:120]}"
    return time.perf_counter() - began, error


def run_phase(label: str, calls: list, workers: int) -> dict:
    began = time.perf_counter()
    with ThreadPoolExecutor(max_workers=workers) as pool:
        futures = [pool.submit(contextvars.copy_context().run, timed, call) for call in calls]
        results = [future.result(timeout=900) for future in futures]
    wall = time.perf_counter() - began
    latencies = [seconds for seconds, _ in results]
    errors = [error for _, error in results if error]
    kinds: dict[str, int] = {}
    for error in errors:
        kinds[error.split(":")[0]] = kinds.get(error.split(":")[0], 0) + 1
    stats = h.summary(latencies)
    h.log(f"  {label}: {len(calls)} calls, {len(errors)} errors {kinds or ''}; {len(calls) / wall:.0f}/s; {h.fmt(stats, 's', 3)}")
    return {"calls": len(calls), "errors": len(errors), "error_kinds": kinds, "error_examples": errors[:5],
            "wall_seconds": wall, "calls_per_second": len(calls) / wall, "latency_seconds": stats}


def python_calls(action: str, ids: list[int], owner: int) -> list:
    from followups import control

    function = {"pause": control.pause_enrollment, "resume": control.resume_enrollment, "cancel": control.cancel_enrollment}[action]

    def call(enrollment_id: int):
        status = function(enrollment_id, owner_id=owner).status
        return None if status == EXPECTED[action] else f"status {status}"

    return [lambda e=e: call(e) for e in ids]


def http_calls(action: str, ids: list[int], base: str, token: str, clients: list[httpx.Client]) -> list:
    def call(index: int, enrollment_id: int):
        answer = clients[index % len(clients)].post(
            f"{base}/api/enrollments/{enrollment_id}/{action}", headers={"Authorization": f"Bearer {token}"}
        )
        if answer.status_code != 200:
            return f"HTTP {answer.status_code}: {answer.text[:100]}"
        return None if answer.json()["status"] == EXPECTED[action] else f"status {answer.json()['status']}"

    return [lambda i=i, e=e: call(i, e) for i, e in enumerate(ids)]


def disagreements(ids: list[int], start: datetime) -> int:
    """Runs that do not show what their (cancelled) enrollment last asked: Cancelled."""
    from followups import prefect_runs
    from followups.db.models import Enrollment
    from followups.db.session import session_scope

    with session_scope(read_only=True) as session:
        rows = session.query(Enrollment.id, Enrollment.status, Enrollment.prefect_flow_run_id).filter(Enrollment.id.in_(ids)).all()
    runs = prefect_runs.read_runs([row.prefect_flow_run_id for row in rows])
    bad = 0
    for row in rows:
        run = runs.get(row.prefect_flow_run_id)
        if row.status != "CANCELLED" or run is None or not run.state.is_cancelled():
            bad += 1
    return bad


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=1000, help="enrollments (calls) per phase")
    parser.add_argument("--threads", type=int, default=200, help="threads of the Python API")
    parser.add_argument("--clients", type=int, default=64, help="concurrent HTTP clients")
    args = parser.parse_args(argv)
    results: dict = {"command": "python bench/controls.py " + " ".join(argv if argv is not None else sys.argv[1:]),
                     "machine": h.machine_info()}
    with h.BenchWorld("controls") as world:
        from followups.api_tokens import create_token

        h.register_deployment()
        owner, sequence_id = h.new_owner_and_sequence(WAITING)
        start = (datetime.now(UTC) + timedelta(hours=1)).replace(microsecond=0)
        h.log(f"enrolling 2 x {args.n} (start {start:%H:%M} UTC)")
        python_ids = enroll(owner, sequence_id, args.n, f"ctl-py-{world.tag}", start)
        http_ids = enroll(owner, sequence_id, args.n, f"ctl-http-{world.tag}", start)

        h.log(f"Python API, {args.threads} threads")
        results["python"] = {action: run_phase(action, python_calls(action, python_ids, owner), args.threads) for action in PHASES}
        results["python"]["runs_disagreeing"] = disagreements(python_ids, start)

        from followups.db.models import User
        from followups.db.session import session_scope

        with session_scope() as session:
            name = session.get(User, owner).name
        token = create_token(name, label="bench")
        port = h.free_port()
        base = f"http://127.0.0.1:{port}"
        api_log = world.tmp / "api.log"
        with open(api_log, "wb") as out:
            api = subprocess.Popen(
                [sys.executable, "-m", "followups.cli", "api", "--port", str(port)],
                env={**os.environ, **world.env, "PYTHONSAFEPATH": "1"},
                stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
            )
        try:
            if not h.wait_until(lambda: _up(base), timeout=60):
                raise SystemExit(f"followups api did not start:\n{api_log.read_text(errors='replace')[-2000:]}")
            h.log(f"HTTP, {args.clients} clients")
            # Idle connections are dropped before uvicorn's 5 s keep-alive would close them under a request.
            clients = [httpx.Client(timeout=120, limits=httpx.Limits(keepalive_expiry=2)) for _ in range(args.clients)]
            try:
                results["http"] = {
                    action: run_phase(action, http_calls(action, http_ids, base, token, clients), args.clients) for action in PHASES
                }
            finally:
                for client in clients:
                    client.close()
            results["http"]["runs_disagreeing"] = disagreements(http_ids, start)
        finally:
            h.stop_process(api)

    print(f"\n== controls: {args.n} calls per phase on distinct enrollments ==")
    for interface, label in (("python", f"Python API, {args.threads} threads"), ("http", f"HTTP, {args.clients} clients")):
        print(f"{label}:")
        for action in PHASES:
            phase = results[interface][action]
            print(f"  {action:<7} errors {phase['errors']:>4}  {phase['calls_per_second']:6.0f}/s  {h.fmt(phase['latency_seconds'], 's', 3)}")
        print(f"  runs disagreeing with their enrollment afterwards: {results[interface]['runs_disagreeing']}")
    path = h.write_results("controls", results)
    print(f"results: {path}")
    return results


def _up(base: str) -> bool:
    try:
        return httpx.get(f"{base}/healthz", timeout=2).status_code in (200, 503)
    except httpx.HTTPError:
        return False


if __name__ == "__main__":
    main()
