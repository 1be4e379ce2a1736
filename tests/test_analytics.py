"""Analytics per sequence and step, against an event log built by hand: every counter, the
attribution of replies, opt-outs and stops to the last message sent, owner scoping, HTTP, CLI."""

from __future__ import annotations

import json

import pytest
from sqlalchemy import func, select

from followups.analytics import sequence_analytics, sequence_stats
from followups.db.events import record_event
from followups.db.models import EventType, FollowUpEvent
from followups.db.session import session_scope
from followups.errors import NotFoundError
from followups.users import ensure_user
from support import FAST_SEQUENCE, new_enrollment, new_owner, new_sequence, unique

E = EventType


def log(enrollment_id: int | None, event_type: EventType, step: int | None = None, **fields) -> None:
    with session_scope() as session:
        record_event(session, enrollment_id=enrollment_id, event_type=event_type, step_index=step, **fields)


def sent(enrollment_id: int, step: int, message_id: str, sms: bool = False) -> None:
    log(enrollment_id, E.SMS_SENT if sms else E.EMAIL_SENT, step, provider_message_id=message_id, status="sent")


def callback(enrollment_id: int | None, step: int | None, event: str, message_id: str) -> None:
    log(enrollment_id, E.PROVIDER_EVENT, step, status=event, content={"event": event}, provider_message_id=message_id)


def stopped(enrollment_id: int, step: int | None, **content) -> None:
    log(enrollment_id, E.STOPPED, step, content={"source": "seller", **content})


def rows() -> int:
    with session_scope() as session:
        return session.scalar(select(func.count()).select_from(FollowUpEvent))


@pytest.fixture
def built(db):
    """A sequence (EMAIL, WAIT, EMAIL, WAIT, SMS) with five enrollments' worth of history."""
    name = unique("analyst")
    with session_scope() as session:
        owner = ensure_user(session, name)
    sequence = new_sequence(owner, FAST_SEQUENCE)
    a, b, c, d, e = (new_enrollment(owner, sequence) for _ in range(5))
    m = {k: unique(k) for k in ("a0", "a2", "b0", "d0", "d4", "e0", "x0")}
    # a: two emails; the first delivered (reported twice), the second bounced; then a reply.
    sent(a, 0, m["a0"]); callback(a, 0, "delivered", m["a0"]); callback(a, 0, "delivered", m["a0"])
    callback(a, 0, "open", m["a0"])
    sent(a, 2, m["a2"]); callback(a, 2, "bounce", m["a2"])
    log(a, E.REPLY_RECEIVED, status="received", content={"channel": "email"})
    stopped(a, 3, reason="the seller replied by email", reason_code="replied")
    # b: delivered reported before its send was stored (unmatched), then a one-click opt-out.
    sent(b, 0, m["b0"]); callback(None, None, "delivered", m["b0"])
    log(b, E.OPTED_OUT, 0, status="received", content={"channel": "email"})
    stopped(b, 1, reason="unsubscribed", reason_code="unsubscribed")
    # c: the offer was accepted before anything went out.
    stopped(c, 0, reason="offer_accepted", source="api")
    # d: an email and an SMS (delivered), then the deal closed.
    sent(d, 0, m["d0"]); sent(d, 4, m["d4"], sms=True); callback(d, 4, "delivered", m["d4"])
    stopped(d, None, reason="deal_closed", source="api")
    # e: a stop recorded before reasons had codes.
    sent(e, 0, m["e0"]); stopped(e, 1, reason="email spamreport")
    # Another sequence of the same owner: must not count.
    other = new_enrollment(owner, new_sequence(owner, FAST_SEQUENCE))
    sent(other, 0, m["x0"]); callback(other, 0, "delivered", m["x0"]); stopped(other, 1, reason="deal_closed")
    return owner, name, sequence


def test_counts_per_sequence_and_per_step(built):
    owner, _, sequence = built
    before = rows()
    report = sequence_analytics(owner, sequence).as_dict()
    assert rows() == before
    assert report["totals"] == {
        "sent": 6, "delivered": 3, "opened": 1, "bounced": 1, "replied": 1, "unsubscribed": 1,
        "stopped": {"deal_closed": 1, "email spamreport": 1, "offer_accepted": 1, "replied": 1, "unsubscribed": 1},
    }
    zero = {"sent": 0, "delivered": 0, "opened": 0, "bounced": 0, "replied": 0, "unsubscribed": 0, "stopped": {}}
    steps = report["steps"]
    assert [s["type"] for s in steps] == ["EMAIL", "WAIT", "EMAIL", "WAIT", "SMS"]
    assert [s["step_index"] for s in steps] == [0, 1, 2, 3, 4]
    strip = lambda s: {k: v for k, v in s.items() if k not in ("step_index", "type")}  # noqa: E731
    assert strip(steps[0]) == {**zero, "sent": 4, "delivered": 2, "opened": 1, "unsubscribed": 1,
                               "stopped": {"email spamreport": 1, "unsubscribed": 1}}
    assert strip(steps[1]) == zero and strip(steps[3]) == zero
    assert strip(steps[2]) == {**zero, "sent": 1, "bounced": 1, "replied": 1, "stopped": {"replied": 1}}
    assert strip(steps[4]) == {**zero, "sent": 1, "delivered": 1, "stopped": {"deal_closed": 1}}
    assert report["before_first_message"] == {**zero, "stopped": {"offer_accepted": 1}}
    # The stats are the same totals, with the enrollments by status.
    stats = sequence_stats(owner, sequence)
    assert {k: stats[k] for k in ("sent", "delivered", "opened", "bounced", "replied", "unsubscribed")} == {
        k: v for k, v in report["totals"].items() if k != "stopped"
    }
    assert stats["enrolled"] == 5 and stats["active"] == 5 and rows() == before


def test_an_empty_sequence_and_another_owners_sequence(built):
    owner, _, sequence = built
    fresh = new_sequence(owner, FAST_SEQUENCE)
    report = sequence_analytics(owner, fresh)
    assert report.totals.sent == 0 and len(report.steps) == 5
    with pytest.raises(NotFoundError):
        sequence_analytics(new_owner(), sequence)


def test_http_analytics_is_owner_scoped(client, built):
    from api_support import new_api_user
    from followups.api_tokens import create_token

    owner, name, sequence = built
    token = create_token(name, label="analytics")
    answer = client.get(f"/api/sequences/{sequence}/analytics", headers={"Authorization": f"Bearer {token}"})
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["totals"]["sent"] == 6 and body["steps"][2]["replied"] == 1
    assert body["before_first_message"]["stopped"] == {"offer_accepted": 1}
    stranger = new_api_user()
    assert client.get(f"/api/sequences/{sequence}/analytics", headers=stranger.headers).status_code == 404
    assert client.get("/api/sequences/0/analytics", headers=stranger.headers).status_code == 422
    assert client.get(f"/api/sequences/{sequence}/analytics").status_code == 401


def test_cli_analytics(built, cli):
    _, name, sequence = built
    code, out, _ = cli("analytics", str(sequence), "--owner", name, "--json")
    assert code == 0 and json.loads(out)["totals"]["bounced"] == 1
    code, out, _ = cli("analytics", str(sequence), "--owner", name)
    assert code == 0 and "offer_accepted 1" in out and "total" in out
    code, _, err = cli("analytics", str(sequence), "--owner", unique("nobody"))
    assert code == 1 and len(err.strip().splitlines()) == 1


def test_the_analytics_command_does_not_import_prefect(built):
    import os
    import subprocess
    import sys
    import textwrap

    _, name, sequence = built
    script = textwrap.dedent(
        f"""
        import sys
        from followups.cli import main
        sys.argv = ["followups", "analytics", "{sequence}", "--owner", "{name}", "--json"]
        try:
            main()
        except SystemExit as exc:
            assert exc.code == 0, exc.code
        assert not [m for m in sys.modules if m == "prefect" or m.startswith("prefect.")]
        print("NO PREFECT")
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script], env={**os.environ, "PYTHONSAFEPATH": "1"}, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0 and "NO PREFECT" in result.stdout, result.stderr[-2000:]
