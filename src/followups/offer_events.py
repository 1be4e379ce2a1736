"""The `deal.offer.sent` Prefect event: what the investor's systems emit when an offer goes out.

A deployment trigger on this event runs the `enroll-on-offer` flow, which calls
`record_offer_sent` with the offer carried in the event's payload. The offer is validated
before it is emitted, so a bad offer fails where it is sent, not later in a flow run.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

from followups.db.models import OfferInbox
from followups.db.session import session_scope
from followups.errors import InvalidInputError, NotFoundError
from followups.identity import database_id
from followups.inputs import DealInput, OfferInput, require_owner, validate

EVENT_NAME = "deal.offer.sent"


def offer_payload(
    owner_id: int, offer_id: str, deal: DealInput | dict[str, Any], sequence_id: int | None = None, *, again: bool = False
) -> dict[str, Any]:
    offer = validate(OfferInput, {"offer_id": offer_id, "deal": deal, "sequence_id": sequence_id, "again": again})
    return {
        "database": str(database_id()),
        "owner_id": owner_id,
        "offer_id": offer.offer_id,
        "sequence_id": offer.sequence_id,
        "deal": offer.deal.model_dump(mode="json"),
        "again": offer.again,
    }


def emit_offer_sent(
    owner_id: int, offer_id: str, deal: DealInput | dict[str, Any], sequence_id: int | None = None, *, again: bool = False
):
    """Announce an offer to Prefect. The offer waits in the database; the event (and so the
    enroll-on-offer run's parameters) carries only ids, never the seller's details.

    The enroll-on-offer flow records it with `record_offer_sent`: once per `offer_id` however
    many times the event is delivered, and under the one re-enrollment rule: a deal that was
    ever enrolled in the sequence is enrolled anew only with `again=True` (kept with the offer;
    an event made by hand carries it as the offer's `"again": true`), once its earlier
    enrollments have all finished."""
    from prefect.events import emit_event

    offer = offer_payload(owner_id, offer_id, deal, sequence_id, again=again)
    with session_scope() as session:
        require_owner(session, owner_id)
        row = OfferInbox(owner_id=owner_id, payload=offer)
        session.add(row)
        session.flush()
        inbox_id = str(row.id)
    reference = {key: offer[key] for key in ("database", "owner_id", "offer_id")} | {"inbox_id": inbox_id}
    return emit_event(
        event=EVENT_NAME,
        resource={"prefect.resource.id": f"deal.{offer['deal']['external_id']}", "followups.database": offer["database"]},
        payload={"offer": reference},
    )


def resolve_offer(offer: dict[str, Any]) -> dict[str, Any]:
    """The whole offer: as the event carried it, or from the inbox row the event names."""
    if "inbox_id" not in offer:
        return offer
    try:
        inbox_id = uuid.UUID(str(offer["inbox_id"]))
    except ValueError as exc:
        raise InvalidInputError("not an inbox id", field="offer.inbox_id") from exc
    with session_scope(read_only=True) as session:
        row = session.get(OfferInbox, inbox_id)
        if row is None or row.owner_id != offer.get("owner_id"):
            raise NotFoundError("offer", offer.get("offer_id"))
        return dict(row.payload)


def for_this_database(offer: dict[str, Any]) -> bool:
    """Every database's enroll-on-offer deployment sees every offer event on a shared Prefect
    server: each takes only its own (an event without a database is anyone's, e.g. by hand)."""
    return offer.get("database") in (None, str(database_id()))


def parse_offer(offer: dict[str, Any] | str) -> dict[str, Any]:
    """Trigger templates may hand the payload over as JSON text: accept both."""
    if isinstance(offer, str):
        try:
            offer = json.loads(offer)
        except ValueError as exc:
            raise InvalidInputError("the event's offer is not JSON", field="offer") from exc
    if not isinstance(offer, dict) or not {"owner_id", "offer_id"} <= offer.keys() or not offer.keys() & {"deal", "inbox_id"}:
        raise InvalidInputError("the event's offer needs owner_id, offer_id and deal (or inbox_id)", field="offer")
    if not isinstance(offer.get("again", False), bool):
        raise InvalidInputError("must be true or false", field="offer.again")
    return offer
