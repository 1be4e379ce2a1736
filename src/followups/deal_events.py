"""Deal events: an offer accepted or rejected, or the deal closed, stops the deal's follow-ups.

One entry point for every way they arrive (Python, CLI, HTTP, the Prefect events
`deal.offer.accepted`, `deal.offer.rejected`, `deal.closed`): `record_deal_event`. Each of the
deal's open enrollments whose sequence stops on that event (`stop_rules`) moves to STOPPED with
the event as its reason, and its pending Prefect run is cancelled (`lifecycle.store`); the
others are reported as kept. Each enrollment is stopped in its own transaction under its row
lock, so the same event delivered many times at once stops each enrollment once.

The Prefect events carry ids only (owner, deal external id, database), like `deal.offer.sent`.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

from sqlalchemy import select

from followups.db.models import OPEN_STATUSES, Enrollment, EnrollmentStatus
from followups.db.session import session_scope
from followups.deals import deal_id_by_external
from followups.errors import InvalidInputError, NotFoundError
from followups.identity import database_id
from followups.inputs import check_external_id, require_owner
from followups.lifecycle import store
from followups.lifecycle.plan import load_plan
from followups.lifecycle.transitions import Actor
from followups.stop_rules import DealEvent, rules_from_options

__all__ = ["DealEvent", "DealEventResult", "EVENT_NAMES", "emit_deal_event", "parse_deal_event", "record_deal_event"]

EVENT_NAMES = {
    DealEvent.OFFER_ACCEPTED: "deal.offer.accepted",
    DealEvent.OFFER_REJECTED: "deal.offer.rejected",
    DealEvent.DEAL_CLOSED: "deal.closed",
}
# Short names for the CLI and people: `followups deal-event D-17 accepted`.
_ALIASES = {"accepted": DealEvent.OFFER_ACCEPTED, "rejected": DealEvent.OFFER_REJECTED, "closed": DealEvent.DEAL_CLOSED}
_BY_NAME = {name: event for event, name in EVENT_NAMES.items()}


@dataclass(frozen=True)
class DealEventResult:
    deal_external_id: str
    event: str
    stopped: list[int] = field(default_factory=list)  # stopped by this delivery
    kept: list[int] = field(default_factory=list)  # open, but their sequence does not stop on this event

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def deal_event_type(value: Any, field: str = "type") -> DealEvent:
    """offer_accepted | offer_rejected | deal_closed (also accepted | rejected | closed, or the
    Prefect event name)."""
    if isinstance(value, DealEvent):
        return value
    if isinstance(value, str):
        text = value.strip().lower()
        found = _ALIASES.get(text) or _BY_NAME.get(text)
        if found is not None:
            return found
        if text in set(DealEvent):
            return DealEvent(text)
    raise InvalidInputError("must be offer_accepted, offer_rejected or deal_closed", field=field)


def _stop_one(enrollment_id: int, owner_id: int, event: DealEvent) -> str:
    """'stopped', 'kept' (the sequence ignores this event) or 'finished' (ended meanwhile)."""
    with session_scope() as session:
        try:
            plan = load_plan(session, enrollment_id, lock=True, owner_id=owner_id)
        except NotFoundError:
            return "finished"
        if not plan.is_open:
            return "finished"
        if event not in rules_from_options(plan.options).stop_on:
            return "kept"
        store.move(
            session, plan, EnrollmentStatus.STOPPED, actor=Actor.API,
            # reason_code, like every other stop: analytics count stops by it.
            content={"reason": event.value, "reason_code": event.value, "deal_event": event.value},
            dedupe_key=f"enrollment:{enrollment_id}:stopped",
        )
        return "stopped"


def record_deal_event(owner_id: int, deal_external_id: str, event: DealEvent | str) -> DealEventResult:
    """Stop the deal's open enrollments whose sequence stops on `event`.

    Raises NotFoundError for an unknown owner or a deal this owner does not have (another
    owner's deal included), InvalidInputError for a bad id or event. Idempotent: an enrollment
    already stopped is left as it is.
    """
    kind = deal_event_type(event)
    external_id = check_external_id(deal_external_id, "deal")
    with session_scope(read_only=True) as session:
        owner_id = require_owner(session, owner_id)
        deal_id = deal_id_by_external(session, owner_id, external_id)
        if deal_id is None:
            raise NotFoundError("deal", external_id)
        open_ids = list(
            session.scalars(
                select(Enrollment.id)
                .where(Enrollment.deal_id == deal_id, Enrollment.status.in_(sorted(OPEN_STATUSES)))
                .order_by(Enrollment.id)
            )
        )
    result = DealEventResult(external_id, kind.value)
    for enrollment_id in open_ids:
        outcome = _stop_one(enrollment_id, owner_id, kind)
        if outcome == "stopped":
            result.stopped.append(enrollment_id)
        elif outcome == "kept":
            result.kept.append(enrollment_id)
    return result


# -- the Prefect events ---------------------------------------------------------------------


def emit_deal_event(owner_id: int, deal_external_id: str, event: DealEvent | str):
    """Announce a deal event to Prefect; the `stop-on-deal-event` deployment's trigger acts on
    it. Checked first (owner, deal), so a bad event fails where it is sent."""
    from prefect.events import emit_event

    kind = deal_event_type(event)
    external_id = check_external_id(deal_external_id, "deal")
    with session_scope(read_only=True) as session:
        owner_id = require_owner(session, owner_id)
        if deal_id_by_external(session, owner_id, external_id) is None:
            raise NotFoundError("deal", external_id)
    database = str(database_id())
    return emit_event(
        event=EVENT_NAMES[kind],
        resource={"prefect.resource.id": f"deal.{external_id}", "followups.database": database},
        payload={"deal_event": {"database": database, "owner_id": owner_id, "deal": external_id}},
    )


def parse_deal_event(payload: dict[str, Any] | str, event_name: str) -> dict[str, Any]:
    """The trigger's parameters as {owner_id, deal, type, database}; the type is the event's name."""
    if isinstance(payload, str):
        try:
            payload = json.loads(payload)
        except ValueError as exc:
            raise InvalidInputError("the event's deal_event is not JSON", field="deal_event") from exc
    if not isinstance(payload, dict) or not {"owner_id", "deal"} <= payload.keys():
        raise InvalidInputError("the event's deal_event needs owner_id and deal", field="deal_event")
    return {**payload, "type": deal_event_type(event_name, "event").value}
