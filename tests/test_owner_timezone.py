"""The owner's time zone: the last fallback of a message's zone, after the deal's and the
seller's phone number's. Set through Python, the CLI and HTTP like the rest of the identity."""

from __future__ import annotations

from datetime import UTC, datetime, time, timedelta
from zoneinfo import ZoneInfo

import pytest

from followups.db.session import session_scope
from followups.errors import InvalidInputError
from followups.lifecycle.plan import load_plan
from followups.lifecycle.timeline import timeline
from followups.users import get_sender_identity, set_sender_identity
from support import new_enrollment, new_owner, new_sequence

pytestmark = pytest.mark.usefixtures("database_url")

WINDOW = {"send_window": {"weekdays": ["mon", "tue", "wed", "thu", "fri"], "start": "09:00", "end": "17:00"}}
EMAIL = [{"type": "EMAIL", "subject": "Offer", "text": "Hi"}]


def _planned_local(owner: int, zone: str, **deal) -> datetime:
    enrollment = new_enrollment(owner, new_sequence(owner, EMAIL, options=WINDOW), **deal)
    with session_scope(read_only=True) as session:
        [email] = timeline(session, load_plan(session, enrollment))
    return email.at.astimezone(ZoneInfo(zone))


def test_a_deal_without_a_zone_is_planned_in_the_owners_zone():
    owner = new_owner()
    with session_scope() as session:
        set_sender_identity(session, owner, {"timezone": "Pacific/Honolulu"})
    local = _planned_local(owner, "Pacific/Honolulu", seller_phone=None)
    assert local.weekday() < 5 and time(9) <= local.time() < time(17)
    # The deal's own zone comes first.
    local = _planned_local(owner, "Europe/Berlin", seller_phone=None, seller_timezone="Europe/Berlin")
    assert local.weekday() < 5 and time(9) <= local.time() < time(17)
    now = datetime.now(UTC)
    assert _planned_local(owner, "UTC", seller_phone=None) >= now - timedelta(seconds=5)


def test_the_owners_zone_is_validated_and_shown(cli, client):
    owner = new_owner()
    with pytest.raises(InvalidInputError) as refused, session_scope() as session:
        set_sender_identity(session, owner, {"timezone": "Mars/Olympus"})
    assert refused.value.field == "timezone"
    with session_scope(read_only=True) as session:
        assert get_sender_identity(session, owner).timezone is None  # nothing stored half-way

    from api_support import new_api_user

    user = new_api_user()
    answer = client.put("/api/me/sender-identity", json={"timezone": "America/Chicago"}, headers=user.headers)
    assert answer.status_code == 200 and answer.json()["timezone"] == "America/Chicago"
    bad = client.put("/api/me/sender-identity", json={"timezone": "Nowhere"}, headers=user.headers)
    assert bad.status_code == 422 and bad.json()["errors"][0]["field"] == "timezone"
    code, out, err = cli("users", "identity", user.name, "--timezone", "Europe/Paris", "--json")
    assert code == 0, err
    assert '"timezone": "Europe/Paris"' in out
    code, out, err = cli("users", "identity", user.name, "--timezone", "Europe/Atlantis")
    assert code == 1 and err.strip().startswith("error: timezone:")
