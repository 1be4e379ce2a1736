"""Preview: planned times and rendered messages over the CLI and HTTP, and nothing written;
`followups status` shows the same planned times for an enrolled deal."""

from __future__ import annotations

import json

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from api_support import ApiUser, new_api_user
from followups.db.models import Deal, Enrollment, FollowUpEvent, Sequence, SequenceVersion
from followups.db.session import session_scope
from support import unique

STEPS = [
    {"type": "EMAIL", "subject": "Offer on {{ deal.property_address }}", "text": "Hi {{ seller.first_name }}"},
    {"type": "WAIT", "business_days": 2},
    {"type": "SMS", "body": "Hi {{ seller.first_name }}, any thoughts?"},
]
OPTIONS = {"send_window": {"weekdays": ["mon", "tue", "wed", "thu", "fri"], "start": "09:00", "end": "17:00"}, "skip_holidays": True}
DEAL = {
    "external_id": "D-PREVIEW", "property_address": "12 Elm St", "seller_name": "Pat Lee",
    "seller_email": "pat@example.com", "seller_phone": "+12125550142", "seller_timezone": "America/New_York",
}
# Wednesday before Thanksgiving, 18:00 New York: after the window.
START = "2026-11-25T18:00:00-05:00"


def counts() -> tuple[int, ...]:
    with session_scope() as session:
        return tuple(session.scalar(select(func.count()).select_from(t)) for t in (Deal, Enrollment, FollowUpEvent, Sequence, SequenceVersion))


def check_plan(plan: dict) -> None:
    email, wait, sms = plan["steps"]
    # Thursday is Thanksgiving: Friday 09:00.
    assert email["send_at"] == "2026-11-27T09:00:00-05:00" and email["deferred_by"] == "window"
    assert email["message"]["subject"] == "Offer on 12 Elm St" and email["message"]["text"] == "Hi Pat"
    assert any(cap["kind"] == "window" and cap["window_seconds"] == 86400 and "per 24 h" in cap["describe"] for cap in email["caps"])
    assert wait["due_at"] == "2026-12-01T09:00:00-05:00"  # Fri + 2 business days = Tue
    assert sms["send_at"] == "2026-12-01T09:00:00-05:00" and sms["message"]["body"] == "Hi Pat, any thoughts?"


@pytest.fixture
def owned(database_url) -> tuple[ApiUser, int]:
    from followups.sequences import create_sequence

    user = new_api_user()
    with session_scope() as session:
        sequence = create_sequence(session, user.id, name=unique("s"), steps=STEPS, options=OPTIONS)
    return user, sequence.id


def test_http_preview(client: TestClient, owned):
    user, sequence_id = owned
    before = counts()
    response = client.post(f"/api/sequences/{sequence_id}/preview", json={"deal": DEAL, "start": START}, headers=user.headers)
    assert response.status_code == 200, response.text
    check_plan(response.json())
    other = new_api_user()
    assert client.post(f"/api/sequences/{sequence_id}/preview", json={"deal": DEAL, "start": START}, headers=other.headers).status_code == 404
    for body, field in [
        ({"deal": DEAL, "start": "next tuesday"}, "start"),
        ({"deal": DEAL, "start": "2026-13-01T00:00:00"}, "start"),
        ({"deal": DEAL, "start": "9999-01-01T00:00:00"}, "start"),
        ({"deal": {**DEAL, "seller_timezone": "Mars/Olympus"}, "start": START}, "seller_timezone"),
        ({"deal": {**DEAL, "seller_phone": "12"}, "start": START}, "seller_phone"),
        ({"deal": DEAL}, "start"),
        ({"deal": DEAL, "start": START, "extra": 1}, "extra"),
    ]:
        answer = client.post(f"/api/sequences/{sequence_id}/preview", json=body, headers=user.headers)
        assert answer.status_code == 422 and field in answer.text, (body, answer.text)
    assert client.post(f"/api/sequences/{sequence_id}/preview", json={"deal": DEAL, "start": START}).status_code == 401
    assert counts() == before


def test_cli_preview(cli, owned, tmp_path):
    user, sequence_id = owned
    deal_file = tmp_path / "deal.json"
    deal_file.write_text(json.dumps(DEAL))
    before = counts()
    code, out, err = cli("preview", str(sequence_id), "--deal", str(deal_file), "--start", START, "--owner", user.name, "--json")
    assert code == 0, err
    check_plan(json.loads(out))
    code, out, err = cli("preview", str(sequence_id), "--deal", str(deal_file), "--start", START, "--owner", user.name)
    assert code == 0 and "Thanksgiving" not in out and "window" in out.lower()
    bad_zone = tmp_path / "bad.json"
    bad_zone.write_text(json.dumps({**DEAL, "seller_timezone": "../etc/passwd"}))
    other = new_api_user()
    for args, expected in [
        (("--deal", str(deal_file), "--start", "yesterday-ish"), "start"),
        (("--deal", str(tmp_path / "missing.json"), "--start", START), "cannot read"),
        (("--deal", str(bad_zone), "--start", START), "deal.seller_timezone"),
        (("--deal", str(deal_file), "--start", START, "--owner", other.name), "not found"),
    ]:
        owner_args = () if "--owner" in args else ("--owner", user.name)
        code, out, err = cli("preview", str(sequence_id), *args, *owner_args)
        assert code == 1 and err.count("\n") == 1 and expected in err, (args, err)
        assert "Traceback" not in err
    assert counts() == before


def test_status_shows_the_planned_times(cli, owned):
    from followups.db.session import session_scope as scope
    from followups.lifecycle.plan import load_plan
    from followups.lifecycle.timeline import timeline
    from support import new_enrollment

    user, sequence_id = owned
    enrollment_id = new_enrollment(user.id, sequence_id, seller_timezone="America/New_York")
    with scope(read_only=True) as session:
        steps = timeline(session, load_plan(session, enrollment_id))
    email, wait, sms = steps
    local = email.at.astimezone(__import__("zoneinfo").ZoneInfo("America/New_York"))
    assert local.weekday() < 5 and 9 <= local.hour < 17
    assert sms.at >= wait.at >= email.at
    code, out, err = cli("status", str(enrollment_id), "--json")
    assert code == 0, err
    assert [step["state"] for step in json.loads(out)["timeline"]] == ["pending"] * 3
    # The messages, rendered for this deal, as the preview shows them.
    assert email.message.startswith("Offer on ") and wait.message is None and sms.message.startswith("Hi ")
    code, out, err = cli("status", str(enrollment_id))
    assert code == 0, err
    assert "Offer on" in out and "any thoughts?" in out
