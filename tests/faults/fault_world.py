"""The world the process-level fault scenarios run in: a Prefect server of the module's own (on
PostgreSQL), the session's followups database and fake providers, and executors started and
killed as real processes: the fast worker (`python -m followups.worker`) or the stock runner
(`followups serve`), one at a time."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

from sqlalchemy import text

from executor_process import DEPLOYMENT, ExecutorProcess, fast_worker_command, stock_runner_command
from followups.db.session import session_scope

# Sends are quick, waits short: the scenario is about the faults, not the calendar.
SEQUENCE = [
    {"type": "EMAIL", "subject": "Offer on {{ deal.property_address }}", "text": "Hi {{ seller.first_name }}"},
    {"type": "WAIT", "seconds": 1},
    {"type": "EMAIL", "subject": "Following up", "text": "Still interested?"},
    {"type": "WAIT", "seconds": 1},
    {"type": "SMS", "body": "Hi {{ seller.first_name }}, any thoughts on our offer?"},
]


@contextlib.contextmanager
def module_prefect(tmp_path_factory, name: str, **server_options) -> Iterator[str]:
    """A Prefect server only this module's executors poll; this process's client points at it
    (and `followups reconcile` subprocesses, through PREFECT_API_URL). `server_options` go to
    `prefect_server` (e.g. `admin_url`: another PostgreSQL cluster for its database)."""
    from prefect_servers import pointed_at, prefect_server

    with prefect_server(tmp_path_factory.mktemp(name), name=name, **server_options) as url, pointed_at(url):
        yield url


class Executor(ExecutorProcess):
    """One executor process: kind "fast" (python -m followups.worker) or "stock" (followups serve)."""

    def __init__(self, kind: str, prefect_api: str, log_path: Path, deployment: str = DEPLOYMENT) -> None:
        command = fast_worker_command(poll=0.3) if kind == "fast" else stock_runner_command()
        super().__init__(command, prefect_api, log_path, label=f"{kind} executor", deployment=deployment)
        self.kind = kind


def reconcile_cli() -> int:
    """`followups reconcile` as an operator runs it; returns how many enrollments it repaired."""
    env = {**os.environ, "PYTHONSAFEPATH": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "followups.cli", "reconcile"], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, f"followups reconcile failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout.count("reschedule") + done.stdout.count("RECONCILED")


def reconciled_count(enrollment_ids) -> int:
    """Enrollments that needed the reconciler (they have a RECONCILED event)."""
    with session_scope() as session:
        return session.scalar(
            text("SELECT count(DISTINCT enrollment_id) FROM follow_up_events WHERE event_type = 'RECONCILED' "
                 "AND enrollment_id = ANY(:ids)"),
            {"ids": list(enrollment_ids)},
        ) or 0


def event_total(enrollment_ids) -> int:
    """How many events these enrollments have logged: the progress a wait's bound follows."""
    with session_scope() as session:
        return session.execute(
            text("SELECT count(*) FROM follow_up_events WHERE enrollment_id = ANY(:ids)"), {"ids": list(enrollment_ids)}
        ).scalar_one()


def step_state(enrollment_ids) -> dict[tuple[int, int], set[str]]:
    """Event types recorded so far per (enrollment, step)."""
    with session_scope() as session:
        rows = session.execute(
            text("SELECT enrollment_id, step_index, event_type FROM follow_up_events "
                 "WHERE enrollment_id = ANY(:ids) AND step_index IS NOT NULL"),
            {"ids": list(enrollment_ids)},
        ).all()
    state: dict[tuple[int, int], set[str]] = {}
    for row in rows:
        state.setdefault((row.enrollment_id, row.step_index), set()).add(row.event_type)
    return state


OUTCOMES = {"EMAIL_SENT", "SMS_SENT", "STEP_FAILED", "STEP_SKIPPED", "STEP_OUTCOME_UNKNOWN"}


def _steps_with(enrollment_ids, event_type: str, *, since: datetime | None = None, before: datetime | None = None) -> set[tuple[int, int]]:
    """(enrollment, step) pairs with an `event_type` row recorded since / before then (database clock)."""
    bound, at = ("occurred_at >= :at", since) if since is not None else ("occurred_at < :at", before)
    with session_scope() as session:
        rows = session.execute(
            text("SELECT DISTINCT enrollment_id, step_index FROM follow_up_events WHERE enrollment_id = ANY(:ids) "
                 f"AND event_type = :type AND {bound}"),
            {"ids": list(enrollment_ids), "type": event_type, "at": at},
        ).all()
    return {(row.enrollment_id, row.step_index) for row in rows}


def attempts_in_flight(
    enrollment_ids, *, attempted_before: datetime | None = None, unknown_since: datetime | None = None
) -> set[tuple[int, int]]:
    """Steps with a committed STEP_ATTEMPT and no outcome: after a kill, exactly the steps the
    product must (conservatively) record as outcome-unknown, since the call may have gone out.
    `attempted_before`: only attempts recorded before then (by the database's clock).
    `unknown_since`: also steps already recorded STEP_OUTCOME_UNKNOWN since then, since the
    product may have recovered them before this looks."""
    in_flight = {k for k, types in step_state(enrollment_ids).items() if "STEP_ATTEMPT" in types and not types & OUTCOMES}
    if unknown_since is not None:
        in_flight |= _steps_with(enrollment_ids, "STEP_OUTCOME_UNKNOWN", since=unknown_since)
    if attempted_before is None or not in_flight:
        return in_flight
    return in_flight & _steps_with(enrollment_ids, "STEP_ATTEMPT", before=attempted_before)


class ProviderTap:
    """Wraps the fake provider's handler: calls `on_arrival(body)` when a request arrives
    (before its latency; a true result drops it unrecorded) and `on_answered(body)` once the
    answer was written."""

    def __init__(self, fake) -> None:
        self.fake = fake
        self.original = fake._handle
        self.on_arrival = None
        self.on_answered = None
        self.lock = threading.Lock()

    def __enter__(self) -> ProviderTap:
        def tapped(handler, body):
            hook = self.on_arrival
            if hook is not None and hook(body):
                handler.close_connection = True  # dropped unanswered: never delivered
                return None
            result = self.original(handler, body)
            with contextlib.suppress(Exception):
                handler.wfile.flush()
            hook = self.on_answered
            if hook is not None:
                hook(body)
            return result

        self.fake._handle = tapped
        return self

    def __exit__(self, *exc) -> None:
        self.fake._handle = self.original
