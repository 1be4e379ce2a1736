"""Saved searches in Prefect's UI for the runs of this database's follow-up-sequence deployment:
"Follow-ups: waiting" (Scheduled: a wait in progress) and "Follow-ups: needs attention" (Failed,
Crashed, Suspended). `followups deploy` saves them; Prefect's PUT /saved_searches/ replaces the
one of the same name, so deploying again leaves one of each.

The filters have the shape Prefect's classic UI reads in the Flow Runs page's saved-filter menu:
{object: flowRun, property, value} with deployment ids, state names and a date range. Prefect's
newer UI keeps its saved filters in the browser and does not list these. A saved search holds no
sort order: "Oldest to newest" lists the waiting runs soonest first.
"""

from __future__ import annotations

from typing import Any
from uuid import UUID

from followups.alerts import Applied

WAITING_STATES = ["Scheduled"]
ATTENTION_STATES = ["Failed", "Crashed", "Suspended"]
# Any time: a wait can end weeks ahead, and the UI's default range (the past week) would hide it.
ANY_TIME = {"type": "range", "startDate": "2000-01-01T00:00:00.000Z", "endDate": "2100-01-01T00:00:00.000Z"}


def _filter(prop: str, value: Any) -> dict[str, Any]:
    # `type` and `operation` are what the UI itself stores: empty.
    return {"object": "flowRun", "property": prop, "type": "", "operation": "", "value": value}


def saved_searches(deployment_id: UUID, deployment_name: str) -> dict[str, list[dict[str, Any]]]:
    """Name -> filters. Another database's deployment name is in its names, so two databases on
    one Prefect server do not replace each other's."""
    label = "Follow-ups" if deployment_name == "followups" else f"Follow-ups ({deployment_name})"

    def runs_in(states: list[str]) -> list[dict[str, Any]]:
        return [_filter("deployment", [str(deployment_id)]), _filter("state", states), _filter("range", ANY_TIME)]

    return {f"{label}: waiting": runs_in(WAITING_STATES), f"{label}: needs attention": runs_in(ATTENTION_STATES)}


def apply_saved_searches(client: Any, deployment_id: UUID, deployment_name: str) -> list[Applied]:
    """Create or replace them through `client` (a sync Prefect client)."""
    applied = []
    for name, filters in saved_searches(deployment_id, deployment_name).items():
        response = client.request("PUT", "/saved_searches/", json={"name": name, "filters": filters})
        applied.append(Applied(name, "created" if response.status_code == 201 else "updated"))
    return applied
