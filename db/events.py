"""Appending to the event log, and the few reads the flow makes of it."""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import Session

from followups.db.models import EventType, FollowUpEvent


def record_event(
    session: Session,
    *,
    enrollment_id: int | None,
    event_type: EventType,
    step_index: int | None = None,
    status: str = "ok",
    content: dict[str, Any] | None = None,
    failure_reason: str | None = None,
    provider_message_id: str | None = None,
    attempt: int | None = None,
    flow_run_id: uuid.UUID | None = None,
    task_run_id: uuid.UUID | None = None,
    dedupe_key: str | None = None,
) -> int | None:
    """Append one event. Returns its id, or None when an event with the same key already exists."""
    statement = (
        insert(FollowUpEvent)
        .values(
            enrollment_id=enrollment_id,
            event_type=event_type.value,
            step_index=step_index,
            status=status,
            content=content or {},
            failure_reason=failure_reason,
            provider_message_id=provider_message_id,
            attempt=attempt,
            flow_run_id=flow_run_id,
            task_run_id=task_run_id,
            dedupe_key=dedupe_key,
        )
        # Any unique index (the dedupe key, or one-sent-event-per-step) turns a repeat into a no-op.
        .on_conflict_do_nothing()
        .returning(FollowUpEvent.id)
    )
    return session.execute(statement).scalar_one_or_none()


def step_events(session: Session, enrollment_id: int, step_index: int) -> list[FollowUpEvent]:
    return list(
        session.scalars(
            select(FollowUpEvent)
            .where(FollowUpEvent.enrollment_id == enrollment_id, FollowUpEvent.step_index == step_index)
            .order_by(FollowUpEvent.id)
        )
    )


def first_event(
    session: Session, enrollment_id: int, step_index: int, event_type: EventType
) -> FollowUpEvent | None:
    return session.scalars(
        select(FollowUpEvent)
        .where(
            FollowUpEvent.enrollment_id == enrollment_id,
            FollowUpEvent.step_index == step_index,
            FollowUpEvent.event_type == event_type.value,
        )
        .order_by(FollowUpEvent.id)
        .limit(1)
    ).first()


def enrollment_events(session: Session, enrollment_id: int) -> list[FollowUpEvent]:
    return list(
        session.scalars(
            select(FollowUpEvent).where(FollowUpEvent.enrollment_id == enrollment_id).order_by(FollowUpEvent.id)
        )
    )
