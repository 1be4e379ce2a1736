"""The `deal.offer.sent` Prefect event: what the investor's systems emit when an offer goes out.

A deployment trigger on this event runs the `enroll-on-offer` flow, which calls
`record_offer_sent` with the offer carried in the event's payload.
"""

from __future__ import annotations

import json
from typing import Any

from prefect.events import emit_event

from followups.deals import DealInput

EVENT_NAME = "deal.offer.sent"


def offer_payload(owner_id: int, offer_id: str, deal: DealInput | dict[str, Any], sequence_id: int | None = None) -> dict[str, Any]:
    deal_dict = deal.model_dump(mode="json") if isinstance(deal, DealInput) else dict(deal)
    return {"owner_id": owner_id, "offer_id": offer_id, "sequence_id": sequence_id, "deal": deal_dict}


def emit_offer_sent(owner_id: int, offer_id: str, deal: DealInput | dict[str, Any], sequence_id: int | None = None):
    offer = offer_payload(owner_id, offer_id, deal, sequence_id)
    return emit_event(
        event=EVENT_NAME,
        resource={"prefect.resource.id": f"deal.{offer['deal'].get('external_id', 'unknown')}"},
        payload={"offer": offer},
    )


def parse_offer(offer: dict[str, Any] | str) -> dict[str, Any]:
    """Trigger templates may hand the payload over as JSON text: accept both."""
    return json.loads(offer) if isinstance(offer, str) else offer
