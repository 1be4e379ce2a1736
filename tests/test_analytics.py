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
    # The counters this test predates; clicks, failures and rates are tested below.
    pick = lambda c: {k: c[k] for k in ("sent", "delivered", "opened", "bounced", "replied", "unsubscribed", "stopped")}  # noqa: E731
    assert pick(report["totals"]) == {
        "sent": 6, "delivered": 3, "opened": 1, "bounced": 1, "replied": 1, "unsubscribed": 1,
        "stopped": {"deal_closed": 1, "email spamreport": 1, "offer_accepted": 1, "replied": 1, "unsubscribed": 1},
    }
    zero = {"sent": 0, "delivered": 0, "opened": 0, "bounced": 0, "replied": 0, "unsubscribed": 0, "stopped": {}}
    steps = report["steps"]
    assert [s["type"] for s in steps] == ["EMAIL", "WAIT", "EMAIL", "WAIT", "SMS"]
    assert [s["step_index"] for s in steps] == [0, 1, 2, 3, 4]
    strip = pick
    assert strip(steps[0]) == {**zero, "sent": 4, "delivered": 2, "opened": 1, "unsubscribed": 1,
                               "stopped": {"email spamreport": 1, "unsubscribed": 1}}
    assert strip(steps[1]) == zero and strip(steps[3]) == zero
    assert strip(steps[2]) == {**zero, "sent": 1, "bounced": 1, "replied": 1, "stopped": {"replied": 1}}
    assert strip(steps[4]) == {**zero, "sent": 1, "delivered": 1, "stopped": {"deal_closed": 1}}
    assert pick(report["before_first_message"]) == {**zero, "stopped": {"offer_accepted": 1}}
    # The stats are the same totals, with the enrollments by status.
    stats = sequence_stats(owner, sequence)
    assert {k: stats[k] for k in ("sent", "delivered", "opened", "bounced", "replied", "unsubscribed")} == {
        k: v for k, v in pick(report["totals"]).items() if k != "stopped"
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


# --- A/B variants, clicks, failures and rates ------------------------------------------------

AB_SEQUENCE = [
    {"type": "EMAIL", "variants": [{"name": "A", "subject": "Offer A", "text": "a"}, {"name": "B", "weight": 2, "subject": "Offer B", "text": "b"}]},
    {"type": "WAIT", "seconds": 2},
    {"type": "EMAIL", "subject": "Following up", "text": "Still interested?"},
]
COUNTER_NAMES = ("sent", "delivered", "opened", "clicked", "bounced", "replied", "unsubscribed", "failed", "outcome_unknown")


def counters(counts: dict, *names: str) -> tuple[int, ...]:
    return tuple(counts[name] for name in names or COUNTER_NAMES)


@pytest.fixture
def ab_built(db):
    """Six enrollments of an A/B sequence, each message's events as the sender and webhooks write them."""
    name = unique("ab-analyst")
    with session_scope() as session:
        owner = ensure_user(session, name)
    sequence = new_sequence(owner, AB_SEQUENCE)
    e1, e2, e3, e4, e5, e6 = (new_enrollment(owner, sequence) for _ in range(6))
    m = {k: unique(k) for k in ("e1", "e2", "e3", "e6", "e6b")}

    def sent_variant(enrollment_id: int, step: int, variant: str | None, message_id: str) -> None:
        log(enrollment_id, E.STEP_ATTEMPT, step, status="sending", content={"variant": variant} if variant else {})
        log(enrollment_id, E.EMAIL_SENT, step, provider_message_id=message_id, status="sent",
            content={"variant": variant} if variant else {})

    # e1 (A): delivered twice, opened three times, clicked, then a reply.
    sent_variant(e1, 0, "A", m["e1"])
    for event in ("delivered", "delivered", "open", "open", "open", "click", "click"):
        callback(e1, 0, event, m["e1"])
    log(e1, E.REPLY_RECEIVED, status="received", content={"channel": "email"})
    # e2 (A): delivered, then bounced.
    sent_variant(e2, 0, "A", m["e2"]); callback(e2, 0, "delivered", m["e2"]); callback(e2, 0, "bounce", m["e2"])
    # e3 (B): delivered and opened, then a one-click unsubscribe that stopped it.
    sent_variant(e3, 0, "B", m["e3"]); callback(e3, 0, "delivered", m["e3"]); callback(e3, 0, "open", m["e3"])
    log(e3, E.OPTED_OUT, 0, status="received", content={"channel": "email"})
    stopped(e3, 1, reason="unsubscribed", reason_code="unsubscribed")
    # e4 (B): the provider refused it for good.
    log(e4, E.STEP_ATTEMPT, 0, status="sending", content={"variant": "B"})
    log(e4, E.STEP_FAILED, 0, status="failed", failure_reason="400", content={"variant": "B"})
    # e5 (A): its worker died mid-send.
    log(e5, E.STEP_ATTEMPT, 0, status="sending", content={"variant": "A"})
    log(e5, E.STEP_OUTCOME_UNKNOWN, 0, status="unknown", content={"variant": "A"})
    # e6 (B), then the plain step 2, delivered before its send was stored.
    sent_variant(e6, 0, "B", m["e6"]); sent_variant(e6, 2, None, m["e6b"]); callback(None, None, "delivered", m["e6b"])
    return owner, name, sequence


def test_counts_and_rates_per_step_and_variant(ab_built):
    owner, _, sequence = ab_built
    report = sequence_analytics(owner, sequence).as_dict()
    first, wait, last = report["steps"]
    assert counters(first) == (4, 3, 2, 1, 1, 1, 1, 1, 1)
    a, b = first["variants"]
    assert (a["name"], a["weight"], b["name"], b["weight"]) == ("A", 1, "B", 2)
    assert counters(a) == (2, 2, 1, 1, 1, 1, 0, 0, 1) and a["stopped"] == {}
    assert counters(b) == (2, 1, 1, 0, 0, 0, 1, 1, 0) and b["stopped"] == {"unsubscribed": 1}
    assert a["rates"] == {"delivery_rate": 1.0, "open_rate": 0.5, "click_rate": 0.5, "reply_rate": 0.5,
                          "bounce_rate": 0.5, "unsubscribe_rate": 0.0}
    assert b["rates"] == {"delivery_rate": 0.5, "open_rate": 1.0, "click_rate": 0.0, "reply_rate": 0.0,
                          "bounce_rate": 0.0, "unsubscribe_rate": 0.5}
    assert first["rates"]["delivery_rate"] == 0.75 and first["rates"]["open_rate"] == 0.6667
    # Nothing sent: every rate is null, not 0 and not an error.
    assert counters(wait) == (0,) * 9 and set(wait["rates"].values()) == {None} and wait["variants"] == []
    assert counters(last) == (1, 1, 0, 0, 0, 0, 0, 0, 0) and last["variants"] == [] and last["rates"]["delivery_rate"] == 1.0
    assert counters(report["totals"]) == (5, 4, 2, 1, 1, 1, 1, 1, 1)
    assert report["totals"]["rates"]["reply_rate"] == 0.2 and report["totals"]["stopped"] == {"unsubscribed": 1}


def test_a_variant_only_an_earlier_version_had_is_still_reported(db):
    owner = new_owner()
    sequence = new_sequence(owner, AB_SEQUENCE)
    enrollment_id = new_enrollment(owner, sequence)
    log(enrollment_id, E.EMAIL_SENT, 0, provider_message_id=unique("m"), status="sent", content={"variant": "Old"})
    [a, b, old] = sequence_analytics(owner, sequence).steps[0].variants
    assert (a.name, b.name, old.name, old.weight, old.sent, a.sent) == ("A", "B", "Old", None, 1, 0)


def test_http_analytics_and_stats_have_variants_and_rates(client, ab_built):
    from followups.api_tokens import create_token

    _, name, sequence = ab_built
    headers = {"Authorization": f"Bearer {create_token(name, label='ab')}"}
    body = client.get(f"/api/sequences/{sequence}/analytics", headers=headers).json()
    assert [v["name"] for v in body["steps"][0]["variants"]] == ["A", "B"]
    assert body["steps"][0]["variants"][0]["rates"]["click_rate"] == 0.5 and body["totals"]["outcome_unknown"] == 1
    assert body["steps"][1]["rates"]["open_rate"] is None
    stats = client.get(f"/api/sequences/{sequence}/stats", headers=headers).json()
    # The older fields keep their meaning: `failed` and `stopped` count enrollments.
    assert (stats["enrolled"], stats["failed"], stats["stopped"], stats["sent"], stats["delivered"]) == (6, 0, 0, 5, 4)
    assert (stats["clicked"], stats["failed_sends"], stats["outcome_unknown"]) == (1, 1, 1)
    assert stats["rates"] == {"delivery_rate": 0.8, "open_rate": 0.5, "click_rate": 0.25, "reply_rate": 0.2,
                              "bounce_rate": 0.2, "unsubscribe_rate": 0.2}


def test_cli_shows_variants_and_rates(ab_built, cli):
    _, name, sequence = ab_built
    code, out, _ = cli("analytics", str(sequence), "--owner", name)
    assert code == 0, out
    lines = out.splitlines()
    a = next(line for line in lines if "│ A " in line)
    assert "2 (100.0%)" in a and "1 (50.0%)" in a
    assert any("│ B " in line for line in lines) and "opened, clicked per delivered" in out
    code, out, _ = cli("analytics", str(sequence), "--owner", name, "--json")
    assert json.loads(out)["steps"][0]["variants"][1]["rates"]["unsubscribe_rate"] == 0.5


# --- the Prefect artifact ---------------------------------------------------------------------


def test_the_artifact_key_is_unique_to_the_database(db):
    import re
    import uuid

    from followups.analytics import stats_artifact_key
    from followups.identity import database_id, database_tag

    one, two = uuid.uuid4(), uuid.uuid4()
    assert stats_artifact_key(7, one) == f"sequence-{one.hex[:8]}-7-stats" != stats_artifact_key(7, two)
    key = stats_artifact_key(7)
    assert key == stats_artifact_key(7, database_id()) and database_tag().split(":")[1] in key
    assert re.fullmatch(r"[a-z0-9-]+", key)  # what Prefect accepts as a key


def test_publish_writes_one_table_artifact_and_the_cli_flag_calls_it(ab_built, cli, monkeypatch):
    from followups.analytics import stats_artifact_key
    from followups import prefect_runs, prefect_server

    _, name, sequence = ab_built
    published = []
    monkeypatch.setattr(
        prefect_runs, "post_table_artifact", lambda key, rows, description: published.append({"key": key, "table": rows})
    )
    monkeypatch.setattr(prefect_server, "configured_api_url", lambda: "http://prefect.invalid/api")
    monkeypatch.setattr(prefect_server, "api_is_healthy", lambda url: True)
    code, out, _ = cli("analytics", str(sequence), "--owner", name, "--publish", "--json")
    assert code == 0 and json.loads(out)["artifact_key"] == stats_artifact_key(sequence)
    [artifact] = published
    assert artifact["key"] == stats_artifact_key(sequence)
    rows = {(row["step"], row["variant"]): row for row in artifact["table"]}
    assert list(rows) == [("0 EMAIL", ""), ("0", "A"), ("0", "B"), ("2 EMAIL", ""), ("total", "")]
    assert rows["0", "A"]["clicked"] == 1 and rows["0", "A"]["open_rate"] == "50.0%"
    assert rows["total", ""]["sent"] == 5 and rows["total", ""]["delivery_rate"] == "80.0%"
    # Prefect unreachable: an error, nothing published.
    monkeypatch.setattr(prefect_server, "api_is_healthy", lambda url: False)
    code, _, err = cli("analytics", str(sequence), "--owner", name, "--publish")
    assert code == 1 and len(published) == 1 and err.strip()
