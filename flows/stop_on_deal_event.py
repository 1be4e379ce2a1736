"""`stop-on-deal-event`: run by the trigger on `deal.offer.accepted`, `deal.offer.rejected` and
`deal.closed`. The event names the owner and the deal; its name is the kind of event."""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger

from followups.deal_events import parse_deal_event, record_deal_event
from followups.offer_events import for_this_database


@flow(name="stop-on-deal-event", log_prints=True, persist_result=False)
def stop_on_deal_event(deal_event: dict[str, Any] | str, event: str) -> dict[str, Any]:
    """Stop the deal's open follow-ups whose sequence stops on this event.

    Args:
        deal_event: The event's payload: `owner_id`, `deal` (the deal's external id), `database`.
        event: The event's name: deal.offer.accepted, deal.offer.rejected or deal.closed.
    """
    data = parse_deal_event(deal_event, event)
    if not for_this_database(data):
        get_run_logger().info("deal %s belongs to another followups database; skipped", data.get("deal"))
        return {"skipped": "another database"}
    result = record_deal_event(data["owner_id"], data["deal"], data["type"])
    get_run_logger().info(
        "deal %s %s: stopped %s, kept %s", result.deal_external_id, result.event, result.stopped or "none", result.kept or "none"
    )
    return result.as_dict()
