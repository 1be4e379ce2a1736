"""The Python API of the product: enroll, offers, pause / resume / cancel, status and events.

Every function validates its input, opens its own transaction and leaves the rules to the
lifecycle (`followups.lifecycle`). Owner checks: pass `owner_id` and another user's enrollment
is reported as not found (never "forbidden"), checked before any lock is taken, so ids reveal
nothing.

Pause, resume and cancel lock the enrollment row. A step in flight holds the same lock, so they
wait for it to finish: a message is never cut in half, and the flow stops at the next step
boundary. They call Prefect only outside the transaction: the run is read before, and suspended,
resumed or cancelled after the commit (`lifecycle.effects`). Reading never writes:
`list_events` never calls Prefect; `get_enrollment` reads the pending run, outside any
transaction, to show what Prefect holds right now.
"""

from __future__ import annotations

import dataclasses
import uuid
from dataclasses import asdict, dataclass
from decimal import Decimal
from typing import Any

from sqlalchemy import select, text
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import Session

from followups.bulk import ItemResult, enroll_deals  # noqa: F401 - the batch API, re-exported
from followups.bulk_controls import BulkControlResult, ControlAnswer, control_many  # noqa: F401 - re-exported
from followups.db.models import Deal, Enrollment, EnrollmentStatus, FollowUpEvent, Offer, Sequence
from followups.db.session import session_scope
from followups.deals import deal_id_by_external, upsert_deal
from followups.errors import AlreadyEnrolledError, InvalidInputError, InvalidStateError, NotFoundError
from followups.inputs import DealInput, EnrollRequest, OfferInput, check_external_id, check_id, check_start_at, require_owner, validate
from followups.lifecycle import effects, enroll_rule, store
from followups.lifecycle.listing import EnrollmentPage, EnrollmentSummary, list_enrollments  # noqa: F401 - re-exported
from followups.lifecycle.plan import EnrollmentPlan, load_plan
from followups.lifecycle.reconcile import Sight, in_prefect, reconcile, under_lock
from followups.lifecycle.timeline import EnrollmentDetails, TimelineStep, details
from followups.lifecycle.transitions import Actor
from followups.sequences import latest_version_id

__all__ = [
    "EnrollmentDetails",
    "EnrollmentRef",
    "OfferResult",
    "TimelineStep",
    "cancel_enrollment",
    "create_enrollment",
    "enroll_deal",
    "get_enrollment",
    "list_enrollments",
    "list_events",
    "pause_enrollment",
    "record_offer_sent",
    "resume_enrollment",
]


@dataclass(frozen=True)
class EnrollmentRef:
    id: int
    deal_id: int
    deal_external_id: str
    sequence_id: int
    sequence_version: int
    status: str
    flow_run_id: uuid.UUID | None


@dataclass(frozen=True)
class OfferResult:
    offer_id: str
    deal_external_id: str
    enrollment_id: int | None
    created: bool  # False when this offer had been recorded before
    enrolled: bool  # False when the deal was already enrolled in that sequence (or the offer was known)
    reason: str = ""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


# -- enrolling ------------------------------------------------------------------------------


def _enabled_sequence(session: Session, owner_id: int, sequence_id: int) -> Sequence:
    sequence = session.scalars(
        select(Sequence).where(Sequence.id == sequence_id, Sequence.owner_id == owner_id, Sequence.archived_at.is_(None))
    ).first()
    if sequence is None:
        raise NotFoundError("sequence", sequence_id)
    if not sequence.enabled:
        raise InvalidStateError(f"sequence {sequence_id} is disabled")
    return sequence


def create_enrollment(
    session: Session, owner_id: int, deal: DealInput, sequence_id: int, *, again: bool = False
) -> Enrollment:
    """Upsert the deal, pin the sequence's current version and write ENROLLED (no Prefect yet).

    The re-enrollment rule (`lifecycle.enroll_rule`) is applied under the advisory
    lock of (owner, sequence, deal) that the bulk import takes too, and before the deal's fields
    are touched: a deal that was ever enrolled in the sequence raises AlreadyEnrolledError
    unless `again`, and one with an open enrollment always does."""
    _enabled_sequence(session, owner_id, sequence_id)
    enroll_rule.enroll_lock(session, owner_id, sequence_id, deal.external_id)
    known = deal_id_by_external(session, owner_id, deal.external_id)
    if known is not None:
        enroll_rule.check_enrollable(session, known, sequence_id, again=again, deal_ref=deal.external_id)
    deal_id = upsert_deal(session, owner_id, deal)
    version_id, version = latest_version_id(session, sequence_id)
    return store.create(
        session,
        deal_id=deal_id,
        sequence_id=sequence_id,
        sequence_version_id=version_id,
        content={"sequence_id": sequence_id, "sequence_version": version, "deal": deal.external_id},
        again=again,
    )


def enroll_deal(
    owner_id: int, deal: DealInput | dict[str, Any], sequence_id: int, *, start_at: Any = None, again: bool = False
) -> EnrollmentRef:
    """Enroll the deal's seller in `sequence_id` and start the sequence on Prefect, now or at
    `start_at` (an aware datetime or ISO 8601 text with its offset, up to a year ahead).

    A deal that was ever enrolled in this sequence is not enrolled again: AlreadyEnrolledError
    (an InvalidStateError) names its enrollment and status. `again=True` enrolls it anew when
    its earlier enrollments have all finished (COMPLETED, CANCELLED, STOPPED or FAILED); an open
    (ACTIVE or PAUSED) one is never duplicated, `again` or not.

    Raises NotFoundError (no such owner, or no such sequence for this owner), InvalidStateError
    (disabled sequence; AlreadyEnrolledError as above) or InvalidInputError (bad deal fields, or
    a `start_at` in the past, without an offset or too far ahead).
    """
    request = validate(EnrollRequest, {"deal": deal, "sequence_id": sequence_id, "again": again})
    start = check_start_at(start_at)
    with session_scope() as session:
        require_owner(session, owner_id)
        enrollment = create_enrollment(session, owner_id, request.deal, request.sequence_id, again=request.again)
        # The run is created before the commit: if Prefect is unreachable nothing is stored;
        # if the commit failed instead, the orphan run finds no enrollment and ends at once.
        flow_run_id = store.start(session, enrollment, due=start)
        return EnrollmentRef(
            id=enrollment.id,
            deal_id=enrollment.deal_id,
            deal_external_id=request.deal.external_id,
            sequence_id=request.sequence_id,
            sequence_version=enrollment.sequence_version.version,
            status=enrollment.status,
            flow_run_id=flow_run_id,
        )


# -- reading --------------------------------------------------------------------------------


def get_enrollment(enrollment_id: int, *, owner_id: int | None = None) -> EnrollmentDetails:
    """Status, current step, next due time and the timeline of steps (done and planned), with
    the pending run's state in Prefect and what Prefect shows that is not recorded yet (an
    operator's suspend, say). Never writes."""
    check_id(enrollment_id, "enrollment_id")
    with session_scope(read_only=True) as session:
        plan = load_plan(session, enrollment_id, owner_id=owner_id)
        effect_marker = effects.marker(session, enrollment_id)
        found = details(session, plan)
    run_state, unrecorded = in_prefect(plan, effect_marker)
    return dataclasses.replace(found, run_state=run_state, in_prefect=unrecorded)


def list_events(
    *, enrollment_id: int | None = None, deal_external_id: str | None = None, owner_id: int | None = None
) -> list[dict[str, Any]]:
    """The event log of one enrollment, or of every enrollment of one deal, oldest first."""
    if (enrollment_id is None) == (deal_external_id is None):
        raise InvalidInputError("give exactly one of enrollment_id or deal", field="enrollment_id")
    with session_scope(read_only=True) as session:
        statement = select(FollowUpEvent, Deal.external_id).join(Enrollment, FollowUpEvent.enrollment_id == Enrollment.id).join(
            Deal, Enrollment.deal_id == Deal.id
        )
        if enrollment_id is not None:
            load_plan(session, check_id(enrollment_id, "enrollment_id"), owner_id=owner_id)
            statement = statement.where(FollowUpEvent.enrollment_id == enrollment_id)
        else:
            deal_filter = [Deal.external_id == check_external_id(deal_external_id, "deal")]
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


# -- controls -------------------------------------------------------------------------------


def _control(enrollment_id: int, owner_id: int | None, to: EnrollmentStatus) -> EnrollmentDetails:
    """The run is read before the row lock is taken, so no call to Prefect is made under it;
    what the control means for the run is an effect carried out after the commit. If the
    enrollment's status, pending run or epoch changed between that read and the lock, or an
    effect on its run was written or delivered meanwhile, the read is stale: it reads again
    (`reconcile.under_lock`)."""
    check_id(enrollment_id, "enrollment_id")

    def act(session: Session, plan: EnrollmentPlan, sight: Sight) -> EnrollmentDetails:
        # First take in whatever an operator did in Prefect, then act on the result. If that
        # was already this control (an operator's suspend before a pause), it is done: status
        # showed it as not recorded yet, so refusing it would contradict what status said.
        before = plan.status
        plan = reconcile(session, plan, sight)
        if not (plan.status == to.value != before):
            plan = store.move(session, plan, to, actor=Actor.API, run=sight.run)
        return details(session, plan)

    return under_lock(enrollment_id, act, owner_id=owner_id, doing={EnrollmentStatus.PAUSED: "pause", EnrollmentStatus.ACTIVE: "resume"}.get(to, "cancel"))


def pause_enrollment(enrollment_id: int, *, owner_id: int | None = None) -> EnrollmentDetails:
    """Pause: the pending flow run is suspended in Prefect; nothing is sent until resumed."""
    return _control(enrollment_id, owner_id, EnrollmentStatus.PAUSED)


def resume_enrollment(enrollment_id: int, *, owner_id: int | None = None) -> EnrollmentDetails:
    """Resume: the suspended run is resumed, keeping what is left of its wait."""
    return _control(enrollment_id, owner_id, EnrollmentStatus.ACTIVE)


def cancel_enrollment(enrollment_id: int, *, owner_id: int | None = None) -> EnrollmentDetails:
    """Cancel for good: the pending run is cancelled in Prefect and nothing more is sent."""
    return _control(enrollment_id, owner_id, EnrollmentStatus.CANCELLED)


# -- offers ---------------------------------------------------------------------------------


def _default_sequence_id(session: Session, owner_id: int) -> int:
    sequence_id = session.scalar(
        select(Sequence.id).where(Sequence.owner_id == owner_id, Sequence.is_default.is_(True), Sequence.archived_at.is_(None))
    )
    if sequence_id is None:
        raise InvalidInputError("no sequence given and the owner has no default sequence", field="sequence_id")
    return sequence_id


def _record_offer(session: Session, owner_id: int, offer: OfferInput, deal_id: int, enrollment_id: int) -> None:
    session.execute(
        insert(Offer).values(
            owner_id=owner_id, external_id=offer.offer_id, deal_id=deal_id,
            amount=offer.deal.offer_amount, enrollment_id=enrollment_id,
        )
    )


def record_offer_sent(
    owner_id: int,
    offer_id: str,
    deal: DealInput | dict[str, Any],
    *,
    sequence_id: int | None = None,
    amount: Decimal | str | float | None = None,
    again: bool = False,
) -> OfferResult:
    """An offer went out: enroll the deal's seller in the chosen (or default) sequence.

    Idempotent on `offer_id`: the same offer recorded twice (a retried request, a duplicated
    event) enrolls once, `again` or not. The re-enrollment rule is `enroll_deal`'s: a deal that
    was ever enrolled in that sequence is not enrolled again (the offer is recorded against its
    enrollment, and `reason` names it and its status), unless `again=True` and its earlier
    enrollments have all finished; an open one is never duplicated.
    """
    offer = validate(
        OfferInput, {"offer_id": offer_id, "deal": deal, "sequence_id": sequence_id, "amount": amount, "again": again}
    )
    with session_scope() as session:
        require_owner(session, owner_id)
        # Serialise concurrent deliveries of the same offer (e.g. an event and an API call).
        session.execute(text("SELECT pg_advisory_xact_lock(hashtext(:k))"), {"k": f"offer:{owner_id}:{offer.offer_id}"})
        known = session.scalars(select(Offer).where(Offer.owner_id == owner_id, Offer.external_id == offer.offer_id)).first()
        if known is not None:
            ref = session.scalar(select(Deal.external_id).where(Deal.id == known.deal_id))
            return OfferResult(offer.offer_id, ref or offer.deal.external_id, known.enrollment_id, False, False, "offer already recorded")
        chosen = offer.sequence_id if offer.sequence_id is not None else _default_sequence_id(session, owner_id)
        try:
            # A savepoint: a deal that is not enrolled keeps its fields as they were.
            with session.begin_nested():
                enrollment = create_enrollment(session, owner_id, offer.deal, chosen, again=offer.again)
        except AlreadyEnrolledError as exc:
            existing_deal = deal_id_by_external(session, owner_id, offer.deal.external_id)
            _record_offer(session, owner_id, offer, existing_deal, exc.enrollment_id)
            return OfferResult(offer.offer_id, offer.deal.external_id, exc.enrollment_id, True, False, str(exc))
        _record_offer(session, owner_id, offer, enrollment.deal_id, enrollment.id)
        store.start(session, enrollment)
        return OfferResult(offer.offer_id, offer.deal.external_id, enrollment.id, True, True)
