"""The `deal.offer.sent` Prefect event: what the investor's systems emit when an offer goes out.

A deployment trigger on this event runs the `enroll-on-offer` flow, which calls
`record_offer_sent` with the offer carried in the event's payload. The offer is validated
before it is emitted, so a bad offer fails where it is sent, not later in a flow run.
"""

from __future__ import annotations

import json
from typing import Any

from followups.errors import InvalidInputError
from followups.identity import database_id
from followups.inputs import DealInput, OfferInput, require_owner, validate

EVENT_NAME = "deal.offer.sent"


def offer_payload(owner_id: int, offer_id: str, deal: DealInput | dict[str, Any], sequence_id: int | None = None) -> dict[str, Any]:
    offer = validate(OfferInput, {"offer_id": offer_id, "deal": deal, "sequence_id": sequence_id})
    return {
        "database": str(database_id()),
        "owner_id": owner_id,
        "offer_id": offer.offer_id,
        "sequence_id": offer.sequence_id,
        "deal": offer.deal.model_dump(mode="json"),
    }


def emit_offer_sent(owner_id: int, offer_id: str, deal: DealInput | dict[str, Any], sequence_id: int | None = None):
    from prefect.events import emit_event

    from followups.db.session import session_scope

    offer = offer_payload(owner_id, offer_id, deal, sequence_id)
    with session_scope() as session:
        require_owner(session, owner_id)
    return emit_event(
        event=EVENT_NAME,
        resource={"prefect.resource.id": f"deal.{offer['deal']['external_id']}", "followups.database": offer["database"]},
        payload={"offer": offer},
    )


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
    if not isinstance(offer, dict) or not {"owner_id", "offer_id", "deal"} <= offer.keys():
        raise InvalidInputError("the event's offer needs owner_id, offer_id and deal", field="offer")
    return offer
