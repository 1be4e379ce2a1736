"""The event log as a rich table (CLI `events`, the demo)."""

from __future__ import annotations

from rich.table import Table

from followups.db.events import enrollment_events
from followups.db.session import session_scope


def _summary(event) -> str:
    content = event.content or {}
    if event.failure_reason:
        return event.failure_reason
    if "subject" in content:
        return f"to {content.get('to')}: {content['subject']}"
    if "body" in content:
        return f"to {content.get('to')}: {content['body'][:60]}"
    if "due_at" in content:
        return f"due {content['due_at']}"
    if "source" in content:
        return f"via {content['source']}"
    return ""


def events_table(enrollment_id: int, title: str | None = None) -> Table:
    with session_scope() as session:
        events = enrollment_events(session, enrollment_id)
    table = Table(title=title or f"Events of enrollment {enrollment_id}")
    for column in ("#", "at", "step", "event", "status", "attempt", "message id", "details"):
        table.add_column(column)
    for event in events:
        table.add_row(
            str(event.id),
            event.occurred_at.strftime("%H:%M:%S.%f")[:-3],
            "" if event.step_index is None else str(event.step_index),
            event.event_type,
            event.status,
            "" if event.attempt is None else str(event.attempt),
            event.provider_message_id or "",
            _summary(event),
        )
    return table
