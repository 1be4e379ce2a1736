"""Links into the Prefect UI for an enrollment, built without importing Prefect.

The runs list is filtered by two tags (the UI ANDs them): this database's identity and the
enrollment's id, so a second followups database on the same Prefect server never shows up.
Its date range reaches past the pending run: the UI's default "past 7 days" hides the scheduled
run that holds a wait.
"""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import quote, urlencode


def ui_base() -> str | None:
    """The Prefect UI's address: the setting, PREFECT_UI_URL, or PREFECT_API_URL without /api."""
    from followups.settings import get_settings

    base = get_settings().prefect_ui_url or os.environ.get("PREFECT_UI_URL")
    if not base and os.environ.get("PREFECT_API_URL"):
        base = os.environ["PREFECT_API_URL"].rstrip("/").removesuffix("/api")
    return base.rstrip("/") if base else None


def flow_run_link(flow_run_id: Any, base: str | None = None) -> str | None:
    base = base or ui_base()
    if not base or not flow_run_id:
        return None
    return f"{base}/runs/flow-run/{flow_run_id}"


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.000Z")


def runs_list_link(details: Any, db_tag: str, base: str | None = None, now: datetime | None = None) -> str | None:
    """The runs page filtered to this enrollment's runs, from an hour before its first step to a
    day after its last planned one (or its pending run)."""
    base = base or ui_base()
    if not base:
        return None
    now = now or datetime.now(UTC)
    moments = [step.at for step in details.timeline if step.at is not None]
    if details.next_due_at is not None:
        moments.append(details.next_due_at)
    start = min([*moments, now]) - timedelta(hours=1)
    end = max([*moments, now]) + timedelta(days=1)
    query = urlencode(
        [("type", "range"), ("startDate", _iso(start)), ("endDate", _iso(end)),
         ("tag", db_tag), ("tag", f"enrollment:{details.id}")],
        quote_via=quote, safe=":",
    )
    return f"{base}/runs?{query}"
