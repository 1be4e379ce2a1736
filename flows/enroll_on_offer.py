"""`enroll-on-offer`: run by the `deal.offer.sent` deployment trigger."""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger

from followups.control import record_offer_sent
from followups.offer_events import for_this_database, parse_offer, resolve_offer


@flow(name="enroll-on-offer", log_prints=True, persist_result=False)
def enroll_on_offer(offer: dict[str, Any] | str) -> dict[str, Any]:
    data = parse_offer(offer)
    if not for_this_database(data):
        get_run_logger().info("offer %s belongs to another followups database; skipped", data.get("offer_id"))
        return {"skipped": "another database"}
    data = resolve_offer(data)
    # Once per offer id, however often the event is delivered; `again` as the offer asks.
    result = record_offer_sent(
        data["owner_id"], data["offer_id"], data["deal"], sequence_id=data.get("sequence_id"), again=data.get("again", False)
    )
    get_run_logger().info("offer %s: %s", result.offer_id, result.reason or f"enrollment {result.enrollment_id}")
    return result.as_dict()
