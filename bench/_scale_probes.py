"""What `bench/scale.py --import N` measures once N enrollments wait: memory of every process,
the latency of the calls users and workers make, the Prefect server's idle CPU, and a burst of
runs falling due in the same minute."""

from __future__ import annotations

import os
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import _harness as h


def pss_bytes(pid: int) -> int:
    """Proportional set size: a process's own memory plus its share of what it shares (for
    PostgreSQL, whose backends all map the same shared buffers, RSS would count them N times)."""
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def postgres_pids() -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if (entry / "comm").read_text().strip() == "postgres":
                    pids.append(int(entry.name))
            except OSError:
                continue
    return pids


def memory(world: h.BenchWorld, ex: h.Executor | None) -> dict[str, float]:
    """MiB (PSS) per process group. PostgreSQL is the whole cluster (other databases included)."""
    groups: dict[str, list[int]] = {
        "prefect_server": [world.server.pid, *h.descendants(world.server.pid)] if world.server else [],
        "postgresql_cluster": postgres_pids(),
        "bench_driver (API client, importer)": [os.getpid()],
    }
    if ex is not None and ex.process is not None:
        groups[f"executor ({ex.label})"] = [ex.process.pid, *h.descendants(ex.process.pid)]
    return {name: round(sum(pss_bytes(pid) for pid in pids) / 2**20, 1) for name, pids in groups.items()}


def call_latency(deployment_id: Any, enrollment_ids: list[int], owner_token: str, samples: int) -> dict[str, dict[str, float]]:
    """The calls a user, the UI and a worker make, each `samples` times, with everything parked."""
    import httpx
    from fastapi.testclient import TestClient
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL

    from followups.api.app import create_app
    from followups.control import get_enrollment

    api = PREFECT_API_URL.value()
    timings: dict[str, list[float]] = {}

    def timed(name: str, call) -> None:
        t = time.perf_counter()
        call()
        timings.setdefault(name, []).append(time.perf_counter() - t)

    # What the Prefect UI asks for on the deployment's Runs tab (newest first, a page of 10).
    ui_body = {"sort": "EXPECTED_START_TIME_DESC", "limit": 10, "page": 1, "deployments": {"id": {"any_": [str(deployment_id)]}}}
    headers = {"Authorization": f"Bearer {owner_token}"}
    with get_client(sync_client=True) as client, httpx.Client(timeout=60) as http, TestClient(create_app()) as app:
        for i in range(samples):
            some = enrollment_ids[(i * 7919) % len(enrollment_ids)]
            timed(
                "worker poll (get_scheduled_flow_runs_for_deployments, due now)",
                lambda: client.get_scheduled_flow_runs_for_deployments(
                    deployment_ids=[deployment_id], scheduled_before=datetime.now(UTC), limit=8
                ),
            )
            timed("Prefect UI: the deployment's flow-run list (POST /flow_runs/paginate)",
                  lambda: http.post(f"{api}/flow_runs/paginate", json=ui_body).raise_for_status())
            timed("followups status <id> (control.get_enrollment)", lambda: get_enrollment(some))
            timed("GET /api/enrollments (first page)", lambda: app.get("/api/enrollments", headers=headers).raise_for_status())
            timed("GET /api/enrollments?status=ACTIVE&limit=100",
                  lambda: app.get("/api/enrollments?status=ACTIVE&limit=100", headers=headers).raise_for_status())
    return {name: h.summary(values) for name, values in timings.items()}


def idle_server_cpu(world: h.BenchWorld, seconds: float) -> dict[str, float]:
    """CPU the Prefect server and PostgreSQL burn per minute with everything waiting and the
    worker polling: the late-runs, scheduler and other services scanning what is parked."""
    before = world.cpu_snapshot()
    time.sleep(seconds)
    after = world.cpu_snapshot()
    per_minute = 60 / seconds
    return {
        "prefect_server_cpu_s_per_min": round((after["prefect_server"] - before["prefect_server"]) * per_minute, 2),
        "postgresql_cpu_s_per_min": round((after["postgresql"] - before["postgresql"]) * per_minute, 2),
        "seconds_observed": seconds,
    }


def late_runs(deployment_id: Any) -> int:
    """Runs of the deployment the late-runs service has marked Late."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId, FlowRunFilter, FlowRunFilterState, FlowRunFilterStateName

    with get_client(sync_client=True) as client:
        return client.count_flow_runs(
            flow_run_filter=FlowRunFilter(state=FlowRunFilterState(name=FlowRunFilterStateName(any_=["Late"]))),
            deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment_id])),
        )


def events_since(prefect_url: str, since: datetime) -> dict[str, Any]:
    """Prefect's events since `since`, by name, and the automations each one is evaluated
    against (every enabled automation's trigger sees every event)."""
    from sqlalchemy import create_engine, text

    engine = create_engine(prefect_url)
    with engine.connect() as conn:
        by_name = dict(conn.execute(
            text("SELECT event, count(*) FROM events WHERE occurred >= :since GROUP BY event ORDER BY count(*) DESC"),
            {"since": since},
        ).all())
        automations = conn.scalar(text("SELECT count(*) FROM automation WHERE enabled"))
    engine.dispose()
    return {"by_name": by_name, "total": sum(by_name.values()), "enabled_automations": automations}


def burst(owner: int, sequence_id: int, n: int, lead_seconds: float, timeout: float, prefect_url: str) -> dict[str, Any]:
    """`n` enrollments imported through the bulk path, all starting in the same minute, with the
    worker serving: when the first and the last are sent, and how many were sent per second;
    then the Prefect events those runs emitted, per run."""
    from followups.bulk import enroll_batch

    due = datetime.now(UTC) + timedelta(seconds=lead_seconds)
    prefix = f"burst-{time.time_ns()}"
    ids: list[int] = []
    started = time.perf_counter()
    for first in range(0, n, 1000):
        items = [h.deal(i, prefix) for i in range(first, min(n, first + 1000))]
        ids += [r.enrollment_id for r in enroll_batch(owner, items, sequence_id, start_at=due).results if r.status == "ok"]
    imported = time.perf_counter() - started
    h.log(f"  burst: {len(ids)} imported in {imported:.1f}s, all due at {due:%H:%M:%S}")
    wait = (due - datetime.now(UTC)).total_seconds()
    if wait < 0:
        h.log(f"  burst: the import ended {-wait:.0f}s after the due time; raise --burst-lead")
    time.sleep(max(0.0, wait))
    t0 = time.perf_counter()
    progress: list[tuple[float, int]] = []
    sent = 0
    while sent < len(ids) and time.perf_counter() - t0 < timeout:
        sent = h.count_sent(ids)
        progress.append((round(time.perf_counter() - t0, 1), sent))
        time.sleep(2)
    time.sleep(5)  # the last runs' final states and events land
    events = events_since(prefect_url, due - timedelta(seconds=1))
    first_sent = next((t for t, count in progress if count > 0), None)
    last_sent = progress[-1][0] if sent >= len(ids) else None
    return {
        "n": len(ids),
        "import_seconds": round(imported, 1),
        "seconds_from_due_to_first_send": first_sent,
        "seconds_from_due_to_last_send": last_sent,
        "sent": sent,
        "sends_per_second": round(sent / progress[-1][0], 2) if progress and progress[-1][0] else None,
        "progress": progress[:: max(1, len(progress) // 40)],
        "prefect_events_per_run": {name: round(count / max(1, len(ids)), 2) for name, count in events["by_name"].items()},
        "prefect_events_per_run_total": round(events["total"] / max(1, len(ids)), 2),
        "enabled_automations_each_event_is_checked_against": events["enabled_automations"],
    }
