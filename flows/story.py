"""What a follow-up run tells an operator in the Prefect UI: its final state's name and message,
its log lines, and one artifact: the enrollment's timeline, with what each step said (one table
per enrollment rather than one more artifact per message: each artifact is an API call and two
Prefect events on every run).

Seller addresses and message bodies stay out of Prefect unless `FOLLOWUPS_PREFECT_SHOW_PII`
allows them: a subject or first line and the provider's id are enough to follow a sequence.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from prefect import get_run_logger
from prefect.artifacts import create_table_artifact
from prefect.states import Completed, State

from followups.db.session import session_scope
from followups.identity import database_id
from followups.lifecycle.plan import load_plan
from followups.lifecycle.timeline import details
from followups.settings import get_settings


def artifact_key(enrollment_id: int) -> str:
    """Stable per enrollment (and database), so Prefect keeps the timeline's history across runs."""
    return f"enrollment-{database_id().hex[:8]}-{enrollment_id}"


def _when(at: datetime | None) -> str:
    # A deferral's time comes in the recipient's zone: shown as it is, the "UTC" would be wrong.
    return f"{at.astimezone(UTC):%Y-%m-%d %H:%M:%S} UTC" if at else ""


def publish_timeline(enrollment_id: int, *, in_a_run: bool = True) -> None:
    """The enrollment's timeline table; `in_a_run=False` when no flow run is executing (the
    artifact then belongs to no run, as Prefect's own helper would make it)."""
    with session_scope(read_only=True) as session:
        enrollment = details(session, load_plan(session, enrollment_id))
    rows: list[dict[str, Any]] = [
        {
            "step": step.index,
            "type": step.type,
            "state": step.state,
            "at": _when(step.at),
            "message": shown(step.type.lower(), step.message or "") if step.type != "WAIT" else "",
            "provider message id": step.provider_message_id or "",
        }
        for step in enrollment.timeline
    ]
    description = f"Enrollment {enrollment_id} (deal {enrollment.deal_external_id}), {enrollment.status} at step {enrollment.current_step}"
    if in_a_run:
        create_table_artifact(key=artifact_key(enrollment_id), table=rows, description=description)
    else:
        from followups import prefect_runs

        prefect_runs.post_table_artifact(artifact_key(enrollment_id), rows, description)


def shown(channel: str, summary: str) -> str:
    """A subject is shown; an SMS only by its first words, unless PII may go to Prefect."""
    return summary if channel == "email" or get_settings().prefect_show_pii else _first_words(summary)


def _first_words(text: str, words: int = 4) -> str:
    parts = text.split()
    return " ".join(parts[:words]) + (" …" if len(parts) > words else "")


def waiting(due: datetime | None, detail: str) -> State:
    """The state of a run that ends because its enrollment now waits: not the same as done."""
    return Completed(name="Waiting", message=f"next step at {_when(due)}; {detail}", data="WAITING")


def ended(status: str, message: str) -> State:
    names = {"COMPLETED": "Completed", "PAUSED": "Paused", "STOPPED": "Stopped", "CANCELLED": "Enrollment cancelled",
             "FAILED": "Enrollment failed"}
    return Completed(name=names.get(status, status.title()), message=message, data=status)


def superseded(message: str) -> State:
    return Completed(name="Superseded", message=message)


def announce_failure(enrollment_id: int, step_index: int) -> None:
    """A step raised: if its enrollment is now FAILED, emit the event the automations alert on."""
    from followups.alerts import announce_if_failed

    try:
        if announce_if_failed(enrollment_id, step_index):
            get_run_logger().error("Enrollment %s failed at step %s; it sends nothing more", enrollment_id, step_index)
    except Exception as exc:  # the alert must never hide the step's own error
        get_run_logger().warning("could not announce the failure: %s", exc)
