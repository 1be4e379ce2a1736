"""Deal events (offer accepted / rejected, deal closed) stop the deal's open follow-ups: through
the Python API, HTTP, the CLI and the Prefect events via the real deployment trigger."""

from __future__ import annotations

import json
import contextvars
import threading
from urllib.parse import quote

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st
from sqlalchemy import func, select

from api_support import enrollment_status
from followups.analytics import sequence_analytics
from followups.db.models import Deal, Enrollment, FollowUpEvent
from followups.db.session import session_scope
from followups.deal_events import emit_deal_event, record_deal_event
from followups.errors import InvalidInputError, NotFoundError
from followups.prefect_server import wait_for_deployment
from followups import prefect_runs
from support import events_of, new_enrollment, new_owner, new_sequence, reach_wait, unique, wait_for

EMAIL_ONLY = [{"type": "EMAIL", "subject": "Offer", "text": "Hi"}]


def stopped_events(enrollment_id: int) -> list[FollowUpEvent]:
    return [e for e in events_of(enrollment_id) if e.event_type == "STOPPED"]


def event_rows() -> int:
    with session_scope() as session:
        return session.scalar(select(func.count()).select_from(FollowUpEvent))


def open_deal(owner: int, *sequences: int) -> tuple[str, list[int]]:
    """One deal enrolled in each sequence (no Prefect runs: nothing to cancel)."""
    deal = unique("D")
    return deal, [new_enrollment(owner, sequence, external_id=deal) for sequence in sequences]


@pytest.mark.parametrize("event", ["offer_accepted", "offer_rejected", "deal_closed"])
def test_each_deal_event_stops_every_open_enrollment_of_the_deal(db, event):
    owner = new_owner()
    deal, enrollments = open_deal(owner, new_sequence(owner), new_sequence(owner, EMAIL_ONLY))
    _, other_deal = open_deal(owner, new_sequence(owner))
    result = record_deal_event(owner, deal, event)
    assert sorted(result.stopped) == sorted(enrollments) and result.kept == []
    for enrollment_id in enrollments:
        assert enrollment_status(enrollment_id) == "STOPPED"
        [stop] = stopped_events(enrollment_id)
        assert stop.content["reason"] == event and stop.content["source"] == "api"
    assert enrollment_status(other_deal[0]) == "ACTIVE"  # another deal of the same owner


@pytest.mark.parametrize("event", ["offer_accepted", "offer_rejected", "deal_closed"])
def test_a_deal_event_stop_carries_its_reason_code_and_analytics_count_it(db, event):
    owner = new_owner()
    sequence = new_sequence(owner)
    deal, [enrollment] = open_deal(owner, sequence)
    record_deal_event(owner, deal, event.split("_")[1])  # the short name: the code is still the event
    [stop] = stopped_events(enrollment)
    assert stop.content["reason_code"] == event
    analytics = sequence_analytics(owner, sequence)
    assert analytics.totals.stopped == {event: 1} and analytics.before_first_message.stopped == {event: 1}


def test_short_names_and_a_paused_enrollment(db):
    owner = new_owner()
    deal, [enrollment] = open_deal(owner, new_sequence(owner))
    from followups.lifecycle import store
    from followups.lifecycle.plan import load_plan
    from followups.lifecycle.transitions import Actor
    from followups.db.models import EnrollmentStatus

    with session_scope() as session:
        store.move(session, load_plan(session, enrollment, lock=True), EnrollmentStatus.PAUSED, actor=Actor.API)
    assert record_deal_event(owner, deal, "closed").stopped == [enrollment]
    assert enrollment_status(enrollment) == "STOPPED"


def test_which_events_stop_a_sequence_is_per_sequence(db):
    owner = new_owner()
    only_closed = new_sequence(owner, options={"stop_on": ["deal_closed"]})
    never = new_sequence(owner, options={"stop_on": []})
    default = new_sequence(owner)
    deal, [closed_one, never_one, default_one] = open_deal(owner, only_closed, never, default)
    accepted = record_deal_event(owner, deal, "offer_accepted")
    assert accepted.stopped == [default_one] and accepted.kept == [closed_one, never_one]
    assert enrollment_status(closed_one) == "ACTIVE" and stopped_events(closed_one) == []
    closed = record_deal_event(owner, deal, "deal_closed")
    assert closed.stopped == [closed_one] and closed.kept == [never_one]
    assert enrollment_status(never_one) == "ACTIVE"


def test_the_same_event_delivered_five_times_at_once_stops_each_enrollment_once(db):
    owner = new_owner()
    deal, enrollments = open_deal(owner, new_sequence(owner), new_sequence(owner), new_sequence(owner))
    barrier = threading.Barrier(5)
    results, errors = [], []

    def deliver():
        barrier.wait()
        try:
            results.append(record_deal_event(owner, deal, "offer_accepted"))
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=contextvars.copy_context().run, args=(deliver,)) for _ in range(5)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert errors == []
    assert sorted(i for r in results for i in r.stopped) == sorted(enrollments)
    for enrollment_id in enrollments:
        assert len(stopped_events(enrollment_id)) == 1


def test_another_owners_deal_is_not_found_and_nothing_changes(db):
    owner, stranger = new_owner(), new_owner()
    deal, [enrollment] = open_deal(owner, new_sequence(owner))
    before = event_rows()
    with pytest.raises(NotFoundError, match="deal"):
        record_deal_event(stranger, deal, "offer_accepted")
    with pytest.raises(NotFoundError, match="deal"):
        record_deal_event(owner, unique("missing"), "offer_accepted")
    with pytest.raises(InvalidInputError) as bad:
        record_deal_event(owner, deal, "offer_withdrawn")
    assert bad.value.field == "type"
    with pytest.raises(InvalidInputError):
        record_deal_event(owner, "bad id!", "offer_accepted")
    assert enrollment_status(enrollment) == "ACTIVE" and event_rows() == before


def test_a_deal_event_after_the_enrollment_ended_changes_nothing(db):
    owner = new_owner()
    deal, [enrollment] = open_deal(owner, new_sequence(owner))
    record_deal_event(owner, deal, "offer_rejected")
    before = event_rows()
    assert record_deal_event(owner, deal, "deal_closed").stopped == []
    assert event_rows() == before and stopped_events(enrollment)[0].content["reason"] == "offer_rejected"


# -- HTTP -----------------------------------------------------------------------------------


def test_http_deal_event_stops_and_answers_what_it_did(client, user):
    deal, [enrollment] = open_deal(user.id, new_sequence(user.id))
    answer = client.post(f"/api/deals/{deal}/deal-events", json={"type": "offer_accepted"}, headers=user.headers)
    assert answer.status_code == 200, answer.text
    assert answer.json() == {"deal_external_id": deal, "event": "offer_accepted", "stopped": [enrollment], "kept": []}
    again = client.post(f"/api/deals/{deal}/deal-events", json={"type": "offer_accepted"}, headers=user.headers)
    assert again.status_code == 200 and again.json()["stopped"] == []
    assert len(stopped_events(enrollment)) == 1


def test_http_another_users_deal_is_404_and_bad_input_422(client, user):
    from api_support import new_api_user

    stranger = new_api_user()
    deal, [enrollment] = open_deal(user.id, new_sequence(user.id))
    before = event_rows()
    answer = client.post(f"/api/deals/{deal}/deal-events", json={"type": "deal_closed"}, headers=stranger.headers)
    assert answer.status_code == 404
    bad = client.post(f"/api/deals/{deal}/deal-events", json={"type": "sold"}, headers=user.headers)
    assert bad.status_code == 422 and bad.json()["errors"][0]["field"] == "type"
    extra = client.post(f"/api/deals/{deal}/deal-events", json={"type": "deal_closed", "x": 1}, headers=user.headers)
    assert extra.status_code == 422
    assert client.post(f"/api/deals/{deal}/deal-events", json={"type": "deal_closed"}).status_code == 401
    assert enrollment_status(enrollment) == "ACTIVE" and event_rows() == before


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(
    deal=st.text(min_size=1, max_size=60).filter(lambda s: "/" not in s and s not in (".", "..")),
    body=st.one_of(st.none(), st.integers(), st.text(max_size=30), st.dictionaries(st.text(max_size=10), st.text(max_size=20), max_size=3)),
)
def test_http_hostile_input_never_5xx_and_stores_nothing(client, user, deal, body):
    before = event_rows()
    answer = client.post(f"/api/deals/{quote(deal, safe='')}/deal-events", json=body, headers=user.headers)
    assert answer.status_code in (404, 422), answer.text
    assert event_rows() == before


# -- CLI ------------------------------------------------------------------------------------


def test_cli_deal_event(db, cli):
    from followups.users import ensure_user

    name = unique("cli-deals")
    with session_scope() as session:
        owner = ensure_user(session, name)
    deal, [enrollment] = open_deal(owner, new_sequence(owner))
    code, out, _ = cli("deal-event", deal, "accepted", "--owner", name, "--json")
    assert code == 0 and json.loads(out)["stopped"] == [enrollment]
    code, _, err = cli("deal-event", deal, "sold", "--owner", name)
    assert code == 1 and len(err.strip().splitlines()) == 1 and "event" in err
    code, _, err = cli("deal-event", unique("nope"), "closed", "--owner", name)
    assert code == 1 and "not found" in err and len(err.strip().splitlines()) == 1


# -- through Prefect ------------------------------------------------------------------------


def _owner_of(deal_ref: str) -> int:
    with session_scope() as session:
        return session.scalar(select(Deal.owner_id).where(Deal.external_id == deal_ref))


def test_a_prefect_deal_event_stops_a_waiting_sequence_and_cancels_its_run(sequence_runner, fake_providers):
    wait_for_deployment("stop-on-deal-event/followups", timeout=60)
    deal, enrollment, _ = reach_wait(600)
    with session_scope() as session:
        pending = session.get(Enrollment, enrollment).prefect_flow_run_id
    assert prefect_runs.is_live(prefect_runs.read_run(pending))
    emit_deal_event(_owner_of(deal.external_id), deal.external_id, "deal_closed")
    emit_deal_event(_owner_of(deal.external_id), deal.external_id, "deal_closed")
    wait_for(lambda: enrollment_status(enrollment) == "STOPPED", timeout=60, what="the trigger to stop the enrollment")
    [stop] = stopped_events(enrollment)
    assert stop.content["reason"] == "deal_closed"
    wait_for(lambda: prefect_runs.state_type(prefect_runs.read_run(pending)) == "CANCELLED", timeout=30, what="the run cancelled")
    assert not any(e.event_type == "SMS_SENT" for e in events_of(enrollment))
    assert fake_providers.for_recipient(str(deal.seller_phone)) == []


def test_a_stop_through_the_python_api_during_a_wait_cancels_the_pending_run(sequence_runner, fake_providers):
    deal, enrollment, _ = reach_wait(600)
    with session_scope() as session:
        pending = session.get(Enrollment, enrollment).prefect_flow_run_id
    result = record_deal_event(_owner_of(deal.external_id), deal.external_id, "offer_accepted")
    assert result.stopped == [enrollment]
    assert prefect_runs.state_type(prefect_runs.read_run(pending)) in ("CANCELLED", "CANCELLING")
    assert [e.event_type for e in events_of(enrollment)].count("EMAIL_SENT") == 1
    assert fake_providers.for_recipient(str(deal.seller_phone)) == []
