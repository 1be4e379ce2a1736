"""The Python API of the product: enroll, offers, pause / resume / cancel, status and events.

Every function opens its own transaction. Owner checks: pass `owner_id` and another user's
enrollment is reported as not found (never "forbidden"), so ids reveal nothing.

Pause, resume and cancel lock the enrollment row first. A step in flight holds the same lock,
so they wait for it to finish: a message is never cut in half, and the flow stops at the next
step boundary.
"""

from __future__ import annotations

import uuid
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from prefect.client.schemas.objects import StateType
from sqlalchemy import select, text, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import Session

from followups.db.events import first_event, record_event
from followups.db.models import Deal, Enrollment, EnrollmentStatus, EventType, FollowUpEvent, Offer, Sequence
from followups.db.session import session_scope
from followups.deals import DealInput, deal_id_by_external
from followups.enrollment import as_deal_input, create_enrollment, enroll_deal, start_enrollment
from followups.errors import InvalidInputError, InvalidStateError, NotFoundError
from followups.plan import EnrollmentPlan, load_plan
from followups.prefect_runs import cancel_run, is_live, is_suspended, read_run, resume_run, suspend_run
from followups.scheduling import schedule_sequence_run
from followups.steps import WaitStep

__all__ = [
    "EnrollmentDetails",
    "OfferResult",
    "cancel_enrollment",
    "enroll_deal",
    "get_enrollment",
    "list_events",
    "pause_enrollment",
    "record_offer_sent",
    "resume_enrollment",
    "stop_enrollment",
]

FINISHED = {EnrollmentStatus.COMPLETED, EnrollmentStatus.FAILED, EnrollmentStatus.CANCELLED, EnrollmentStatus.STOPPED}


@dataclass(frozen=True)
class TimelineStep:
    index: int
    type: str
    state: str  # done | skipped | failed | unknown | waiting | pending
    at: datetime | None  # when it happened, or when it is planned


@dataclass(frozen=True)
class EnrollmentDetails:
    id: int
    deal_id: int
    deal_external_id: str
    sequence_id: int
    sequence_version: int
    status: str
    current_step: int
    next_due_at: datetime | None
    flow_run_id: uuid.UUID | None
    timeline: list[TimelineStep] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["flow_run_id"] = str(self.flow_run_id) if self.flow_run_id else None
        data["next_due_at"] = self.next_due_at.isoformat() if self.next_due_at else None
        for step in data["timeline"]:
            step["at"] = step["at"].isoformat() if step["at"] else None
        return data


@dataclass(frozen=True)
class OfferResult:
    offer_id: str
    deal_external_id: str
    enrollment_id: int | None
    created: bool  # False when this offer had been recorded before
    enrolled: bool  # False when the deal already runs that sequence (or the offer was known)
    reason: str = ""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


# -- reading ------------------------------------------------------------------------------


def _owned_plan(session: Session, enrollment_id: int, owner_id: int | None, *, lock: bool) -> EnrollmentPlan:
    plan = load_plan(session, enrollment_id, lock=lock)
    if owner_id is not None and plan.owner_id != owner_id:
        raise NotFoundError("enrollment", enrollment_id)
    return plan


def _timeline(session: Session, plan: EnrollmentPlan) -> list[TimelineStep]:
    events = session.scalars(
        select(FollowUpEvent).where(FollowUpEvent.enrollment_id == plan.enrollment_id).order_by(FollowUpEvent.id)
    ).all()
    by_step: dict[int, list[FollowUpEvent]] = {}
    for event in events:
        if event.step_index is not None:
            by_step.setdefault(event.step_index, []).append(event)
    outcome_state = {
        "EMAIL_SENT": "done", "SMS_SENT": "done", "WAIT_COMPLETED": "done",
        "STEP_SKIPPED": "skipped", "STEP_FAILED": "failed", "STEP_OUTCOME_UNKNOWN": "unknown",
    }
    timeline: list[TimelineStep] = []
    now = datetime.now(UTC)
    clock = max(plan.next_due_at, now) if plan.next_due_at else now
    for index, step in enumerate(plan.steps):
        step_events = by_step.get(index, [])
        finished = next((e for e in reversed(step_events) if e.event_type in outcome_state), None)
        if finished is not None:
            timeline.append(TimelineStep(index, step.type, outcome_state[finished.event_type], finished.occurred_at))
            continue
        open_status = plan.status in (EnrollmentStatus.ACTIVE, EnrollmentStatus.PAUSED)
        if isinstance(step, WaitStep):
            started = next((e for e in step_events if e.event_type == EventType.WAIT_STARTED), None)
            if started is not None:
                due = datetime.fromisoformat(started.content["due_at"])
                clock = max(due, now)
                timeline.append(TimelineStep(index, step.type, "waiting" if open_status else "pending", due))
            else:
                clock = clock + step.duration
                timeline.append(TimelineStep(index, step.type, "pending", clock if open_status else None))
        else:
            timeline.append(TimelineStep(index, step.type, "pending", clock if open_status else None))
    return timeline


def _details(session: Session, plan: EnrollmentPlan) -> EnrollmentDetails:
    return EnrollmentDetails(
        id=plan.enrollment_id,
        deal_id=plan.deal_id,
        deal_external_id=plan.deal_ref,
        sequence_id=plan.sequence_id,
        sequence_version=plan.sequence_version,
        status=plan.status,
        current_step=plan.current_step,
        next_due_at=plan.next_due_at,
        flow_run_id=plan.prefect_flow_run_id,
        timeline=_timeline(session, plan),
    )


def _set_status(session: Session, plan: EnrollmentPlan, status: EnrollmentStatus, event: EventType, **content: Any) -> None:
    session.execute(update(Enrollment).where(Enrollment.id == plan.enrollment_id).values(status=status.value))
    record_event(
        session,
        enrollment_id=plan.enrollment_id,
        event_type=event,
        step_index=plan.current_step if plan.current_step < len(plan.steps) else None,
        content=content,
        flow_run_id=plan.prefect_flow_run_id,
    )


def _sync_with_prefect(session: Session, plan: EnrollmentPlan) -> EnrollmentPlan:
    """Honour a suspend or resume done to the pending run in the Prefect UI or CLI."""
    if plan.status not in (EnrollmentStatus.ACTIVE, EnrollmentStatus.PAUSED) or plan.prefect_flow_run_id is None:
        return plan
    run = read_run(plan.prefect_flow_run_id)
    if run is None:
        return plan
    if plan.status == EnrollmentStatus.ACTIVE and is_suspended(run):
        _set_status(session, plan, EnrollmentStatus.PAUSED, EventType.PAUSED, source="prefect")
    elif plan.status == EnrollmentStatus.PAUSED and is_live(run) and not is_suspended(run) and _resumed_in_prefect(run):
        _set_status(session, plan, EnrollmentStatus.ACTIVE, EventType.RESUMED, source="prefect")
    else:
        return plan
    return load_plan(session, plan.enrollment_id, lock=True)


def _resumed_in_prefect(run) -> bool:
    """A paused enrollment's run that is live and not suspended was resumed in Prefect, unless
    it is still running the step that was in flight when our pause came (it stops by itself)."""
    return run.state is not None and run.state.type != StateType.RUNNING


def get_enrollment(enrollment_id: int, *, owner_id: int | None = None) -> EnrollmentDetails:
    """Status, current step, next due time and the timeline of steps (done and planned)."""
    with session_scope() as session:
        plan = _owned_plan(session, enrollment_id, owner_id, lock=True)
        plan = _sync_with_prefect(session, plan)
        return _details(session, plan)


def list_events(
    *, enrollment_id: int | None = None, deal_external_id: str | None = None, owner_id: int | None = None
) -> list[dict[str, Any]]:
    """The event log of one enrollment, or of every enrollment of one deal, oldest first."""
    if (enrollment_id is None) == (deal_external_id is None):
        raise InvalidInputError("give exactly one of enrollment_id or deal", field="enrollment_id")
    with session_scope() as session:
        statement = select(FollowUpEvent, Deal.external_id).join(Enrollment, FollowUpEvent.enrollment_id == Enrollment.id).join(
            Deal, Enrollment.deal_id == Deal.id
        )
        if enrollment_id is not None:
            _owned_plan(session, enrollment_id, owner_id, lock=False)
            statement = statement.where(FollowUpEvent.enrollment_id == enrollment_id)
        else:
            deal_filter = [Deal.external_id == deal_external_id]
            if owner_id is not None:
                deal_filter.append(Deal.owner_id == owner_id)
            if session.scalar(select(Deal.id).where(*deal_filter).limit(1)) is None:
                raise NotFoundError("deal", deal_external_id)
            statement = statement.where(*deal_filter)
        rows = session.execute(statement.order_by(FollowUpEvent.id)).all()
        return [_event_dict(event, deal_ref) for event, deal_ref in rows]


def _event_dict(event: FollowUpEvent, deal_ref: str) -> dict[str, Any]:
    return {
        "id": event.id,
        "enrollment_id": event.enrollment_id,
        "deal": deal_ref,
        "step_index": event.step_index,
        "event_type": event.event_type,
        "status": event.status,
        "content": event.content,
        "failure_reason": event.failure_reason,
        "provider_message_id": event.provider_message_id,
        "attempt": event.attempt,
        "flow_run_id": str(event.flow_run_id) if event.flow_run_id else None,
        "task_run_id": str(event.task_run_id) if event.task_run_id else None,
        "occurred_at": event.occurred_at.isoformat(),
    }


# -- controls -----------------------------------------------------------------------------


def pause_enrollment(enrollment_id: int, *, owner_id: int | None = None) -> EnrollmentDetails:
    """Pause: the pending flow run is suspended in Prefect; nothing is sent until resumed."""
    with session_scope() as session:
        plan = _sync_with_prefect(session, _owned_plan(session, enrollment_id, owner_id, lock=True))
        if plan.status != EnrollmentStatus.ACTIVE:
            raise InvalidStateError(f"enrollment {enrollment_id} is {plan.status}; only an ACTIVE enrollment can be paused")
        _set_status(session, plan, EnrollmentStatus.PAUSED, EventType.PAUSED, source="api")
        run = read_run(plan.prefect_flow_run_id)
        if is_live(run) and not is_suspended(run):
            suspend_run(run)  # inside the transaction: if Prefect refuses, nothing changes here
        return _details(session, load_plan(session, enrollment_id))


def _pending_due(session: Session, plan: EnrollmentPlan) -> datetime | None:
    if plan.finished_steps or not isinstance(plan.steps[plan.current_step], WaitStep):
        return None
    started = first_event(session, plan.enrollment_id, plan.current_step, EventType.WAIT_STARTED)
    return datetime.fromisoformat(started.content["due_at"]) if started else None


def resume_enrollment(enrollment_id: int, *, owner_id: int | None = None) -> EnrollmentDetails:
    """Resume: the suspended run is resumed, keeping what is left of its wait."""
    with session_scope() as session:
        plan = _sync_with_prefect(session, _owned_plan(session, enrollment_id, owner_id, lock=True))
        if plan.status != EnrollmentStatus.PAUSED:
            raise InvalidStateError(f"enrollment {enrollment_id} is {plan.status}; only a PAUSED enrollment can be resumed")
        _set_status(session, plan, EnrollmentStatus.ACTIVE, EventType.RESUMED, source="api")
        due = _pending_due(session, plan)
        run = read_run(plan.prefect_flow_run_id)
        if is_suspended(run):
            resume_run(run, due)
        elif not is_live(run):
            # The run ended while paused (e.g. it was cancelled in the UI): continue in a new one.
            scheduled = due if due and due > datetime.now(UTC) else None
            new_run = schedule_sequence_run(
                enrollment_id, plan.deal_ref, plan.current_step, scheduled_time=scheduled, key_suffix=f":resume:{uuid.uuid4().hex[:8]}"
            )
            session.execute(update(Enrollment).where(Enrollment.id == enrollment_id).values(prefect_flow_run_id=new_run))
        return _details(session, load_plan(session, enrollment_id))


def cancel_enrollment(enrollment_id: int, *, owner_id: int | None = None) -> EnrollmentDetails:
    """Cancel for good: the pending run is cancelled in Prefect and nothing more is sent."""
    with session_scope() as session:
        plan = _sync_with_prefect(session, _owned_plan(session, enrollment_id, owner_id, lock=True))
        if EnrollmentStatus(plan.status) in FINISHED:
            raise InvalidStateError(f"enrollment {enrollment_id} is {plan.status}; it cannot be cancelled")
        _set_status(session, plan, EnrollmentStatus.CANCELLED, EventType.CANCELLED, source="api")
        session.execute(update(Enrollment).where(Enrollment.id == enrollment_id).values(next_due_at=None))
        run = read_run(plan.prefect_flow_run_id)
        if is_live(run):
            cancel_run(run)
        return _details(session, load_plan(session, enrollment_id))


def stop_enrollment(
    enrollment_id: int,
    *,
    reason: str,
    event_type: EventType,
    content: dict[str, Any] | None = None,
    dedupe_key: str | None = None,
    step_index: int | None = None,
    provider_message_id: str | None = None,
) -> bool:
    """Stop an open enrollment because the seller replied or opted out.

    Returns False, recording nothing, when it is not open or this very fact (same
    `dedupe_key`) was recorded before.
    """
    with session_scope() as session:
        plan = load_plan(session, enrollment_id, lock=True)
        if plan.status not in (EnrollmentStatus.ACTIVE, EnrollmentStatus.PAUSED):
            return False
        fact = record_event(
            session,
            enrollment_id=enrollment_id,
            event_type=event_type,
            step_index=step_index,
            status="received",
            content=content or {},
            provider_message_id=provider_message_id,
            dedupe_key=dedupe_key,
        )
        if fact is None:
            return False
        _set_status(session, plan, EnrollmentStatus.STOPPED, EventType.STOPPED, reason=reason)
        session.execute(update(Enrollment).where(Enrollment.id == enrollment_id).values(next_due_at=None))
        run = read_run(plan.prefect_flow_run_id)
        if is_live(run):
            cancel_run(run)
        return True


# -- offers -------------------------------------------------------------------------------


def _default_sequence_id(session: Session, owner_id: int) -> int:
    sequence_id = session.scalar(
        select(Sequence.id).where(
            Sequence.owner_id == owner_id, Sequence.is_default.is_(True), Sequence.archived_at.is_(None)
        )
    )
    if sequence_id is None:
        raise InvalidInputError("no sequence given and the owner has no default sequence", field="sequence_id")
    return sequence_id


def record_offer_sent(
    owner_id: int,
    offer_id: str,
    deal: DealInput | dict[str, Any],
    *,
    sequence_id: int | None = None,
    amount: Decimal | str | float | None = None,
) -> OfferResult:
    """An offer went out: enroll the deal's seller in the chosen (or default) sequence.

    Idempotent on `offer_id`: the same offer recorded twice enrolls once. A deal that already
    runs that sequence (ACTIVE or PAUSED) is not enrolled again.
    """
    offer_id = (offer_id or "").strip()
    if not offer_id or len(offer_id) > 200:
        raise InvalidInputError("must be 1 to 200 characters", field="offer_id")
    deal_input = as_deal_input(deal)
    if amount is not None:
        try:
            deal_input = deal_input.model_copy(update={"offer_amount": Decimal(str(amount))})
        except Exception as exc:
            raise InvalidInputError("must be a number", field="amount") from exc
    with session_scope() as session:
        # Serialise concurrent deliveries of the same offer (e.g. an event and an API call).
        session.execute(text("SELECT pg_advisory_xact_lock(hashtext(:k))"), {"k": f"offer:{owner_id}:{offer_id}"})
        known = session.scalars(select(Offer).where(Offer.owner_id == owner_id, Offer.external_id == offer_id)).first()
        if known is not None:
            ref = session.scalar(select(Deal.external_id).where(Deal.id == known.deal_id))
            return OfferResult(offer_id, ref or deal_input.external_id, known.enrollment_id, False, False, "offer already recorded")
        chosen = sequence_id if sequence_id is not None else _default_sequence_id(session, owner_id)
        existing_deal = deal_id_by_external(session, owner_id, deal_input.external_id)
        open_enrollment = None
        if existing_deal is not None:
            open_enrollment = session.scalar(
                select(Enrollment.id).where(
                    Enrollment.deal_id == existing_deal,
                    Enrollment.sequence_id == chosen,
                    Enrollment.status.in_([EnrollmentStatus.ACTIVE.value, EnrollmentStatus.PAUSED.value]),
                )
            )
        if open_enrollment is not None:
            session.execute(
                insert(Offer).values(
                    owner_id=owner_id, external_id=offer_id, deal_id=existing_deal,
                    amount=deal_input.offer_amount, enrollment_id=open_enrollment,
                )
            )
            return OfferResult(offer_id, deal_input.external_id, open_enrollment, True, False, "deal already runs this sequence")
        enrollment = create_enrollment(session, owner_id, deal_input, chosen)
        session.execute(
            insert(Offer).values(
                owner_id=owner_id, external_id=offer_id, deal_id=enrollment.deal_id,
                amount=deal_input.offer_amount, enrollment_id=enrollment.id,
            )
        )
        start_enrollment(session, enrollment, deal_input.external_id)
        return OfferResult(offer_id, deal_input.external_id, enrollment.id, True, True)
