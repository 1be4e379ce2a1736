"""Links into the Prefect UI (pure: no Prefect, no database)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from urllib.parse import parse_qs, urlsplit

from followups.prefect_links import flow_run_link, runs_list_link, ui_base
from followups.settings import reset_settings

NOW = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)


def _details(timeline_at: list[datetime | None], next_due: datetime | None):
    return SimpleNamespace(id=42, next_due_at=next_due, timeline=[SimpleNamespace(at=at) for at in timeline_at])


def test_the_runs_link_filters_by_database_and_enrollment_and_covers_the_pending_run():
    due = NOW + timedelta(days=7)
    link = runs_list_link(_details([NOW - timedelta(days=2), due, None], due), "followups-db:ab12cd34", "http://ui:4200", NOW)
    parts = urlsplit(link)
    assert (parts.scheme, parts.netloc, parts.path) == ("http", "ui:4200", "/runs")
    query = parse_qs(parts.query)
    assert query["type"] == ["range"]
    assert query["tag"] == ["followups-db:ab12cd34", "enrollment:42"]
    start = datetime.fromisoformat(query["startDate"][0].replace("Z", "+00:00"))
    end = datetime.fromisoformat(query["endDate"][0].replace("Z", "+00:00"))
    assert start == NOW - timedelta(days=2, hours=1)
    assert end == due + timedelta(days=1)
    assert "enrollment:42" in link  # readable: the colon is not escaped


def test_a_new_enrollment_gets_a_range_around_now():
    query = parse_qs(urlsplit(runs_list_link(_details([None, None], None), "followups-db:x", "http://ui", NOW)).query)
    assert query["startDate"] == ["2026-11-26T11:00:00.000Z"] and query["endDate"] == ["2026-11-27T12:00:00.000Z"]


def test_the_ui_address_comes_from_the_setting_or_the_api_url(monkeypatch):
    monkeypatch.delenv("FOLLOWUPS_PREFECT_UI_URL", raising=False)
    monkeypatch.delenv("PREFECT_UI_URL", raising=False)
    monkeypatch.setenv("PREFECT_API_URL", "http://prefect.internal:4200/api/")
    reset_settings()
    try:
        assert ui_base() == "http://prefect.internal:4200"
        run = uuid.uuid4()
        assert flow_run_link(run) == f"http://prefect.internal:4200/runs/flow-run/{run}"
        monkeypatch.setenv("FOLLOWUPS_PREFECT_UI_URL", "https://ops.example.com/prefect/")
        reset_settings()
        assert ui_base() == "https://ops.example.com/prefect"
        monkeypatch.delenv("FOLLOWUPS_PREFECT_UI_URL")
        monkeypatch.delenv("PREFECT_API_URL")
        reset_settings()
        assert ui_base() is None and flow_run_link(run) is None
        assert runs_list_link(_details([], None), "followups-db:x") is None
    finally:
        reset_settings()
