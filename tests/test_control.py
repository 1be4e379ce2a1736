"""Pause / resume / cancel through Prefect, with the session's executor running the runs (the
fast worker; tests/test_stock_runner.py runs some of these on the stock runner too)."""

from __future__ import annotations

import time
from datetime import datetime

import pytest
from prefect.client.orchestration import get_client
from prefect.flow_runs import resume_flow_run
from prefect.states import Suspended

from followups.control import (
    cancel_enrollment,
    enroll_deal,
    get_enrollment,
    list_events,
    pause_enrollment,
    record_offer_sent,
    resume_enrollment,
)
from followups.errors import InvalidInputError, InvalidStateError, NotFoundError
from followups.offer_events import emit_offer_sent
from support import deal_input, enrollment_row, event_types, events_of, new_owner, new_sequence, pending_run, wait_for


def email_wait_email(wait_seconds: float) -> list[dict]:
    return [
        {"type": "EMAIL", "subject": "Offer", "text": "Hi {{ seller.first_name }}"},
        {"type": "WAIT", "seconds": wait_seconds},
        {"type": "EMAIL", "subject": "Following up", "text": "Any news?"},
    ]


def run_state(flow_run_id):
    with get_client(sync_client=True) as client:
        return client.read_flow_run(flow_run_id).state


def _start_and_reach_wait(wait_seconds: float):
    owner = new_owner()
    deal = deal_input()
    enrollment = enroll_deal(owner, deal, new_sequence(owner, email_wait_email(wait_seconds)))
    wait_for(lambda: "WAIT_STARTED" in event_types(enrollment.id), timeout=60, what="the wait to start")
    pending_run(enrollment.id)
    wait_started = [e for e in events_of(enrollment.id) if e.event_type == "WAIT_STARTED"][0]
    due = datetime.fromisoformat(wait_started.content["due_at"])
    return owner, deal, enrollment.id, due


def test_pause_during_a_wait_then_resume_before_due_sends_at_the_due_time(sequence_runner, fake_providers):
    owner, deal, enrollment_id, due = _start_and_reach_wait(8)
    details = pause_enrollment(enrollment_id)
    assert details.status == "PAUSED"
    assert run_state(details.flow_run_id).name == "Suspended"
    resume_enrollment(enrollment_id)
    assert not run_state(details.flow_run_id).is_paused()  # scheduled for the due time (or already claimed)

    wait_for(lambda: enrollment_row(enrollment_id).status == "COMPLETED", timeout=60, what="COMPLETED")
    emails = fake_providers.for_recipient(str(deal.seller_email))
    assert len(emails) == 2
    assert emails[1].received_at >= due.timestamp()
    assert event_types(enrollment_id).count("PAUSED") == 1 and event_types(enrollment_id).count("RESUMED") == 1


def test_a_pause_past_the_due_time_keeps_what_was_left_of_the_wait(sequence_runner, fake_providers):
    # 5 s: the fast worker claims a due run within its 0.5 s poll, so on a loaded machine a
    # shorter wait can be over before the pause lands.
    owner, deal, enrollment_id, due = _start_and_reach_wait(5)
    asked = time.time()
    details = pause_enrollment(enrollment_id)
    left = due.timestamp() - asked  # of the wait, when it was paused
    time.sleep(max(0.0, due.timestamp() - time.time()) + 3)
    assert len(fake_providers.for_recipient(str(deal.seller_email))) == 1
    assert run_state(details.flow_run_id).is_paused()
    assert enrollment_row(enrollment_id).status == "PAUSED"

    resumed_at = time.time()
    resumed = resume_enrollment(enrollment_id)
    # Due again once what was left of the wait has passed since the resume, not at once, nor at
    # the wait's whole length again.
    assert resumed_at + left - 1 <= resumed.next_due_at.timestamp() <= time.time() + left
    assert run_state(details.flow_run_id).state_details.scheduled_time == resumed.next_due_at
    wait_for(lambda: enrollment_row(enrollment_id).status == "COMPLETED", timeout=120, what="COMPLETED")
    emails = fake_providers.for_recipient(str(deal.seller_email))
    assert len(emails) == 2
    assert emails[1].received_at >= resumed.next_due_at.timestamp() - 0.5
    resumed_events = [e for e in events_of(enrollment_id) if e.event_type == "RESUMED"]
    assert resumed_events[0].content["due_at"] == resumed.next_due_at.isoformat()


def test_pause_while_a_step_is_sending_lets_it_finish_once_and_stops_before_the_next(sequence_runner, fake_providers):
    owner = new_owner()
    deal = deal_input()
    steps = [
        {"type": "EMAIL", "subject": "One", "text": "first"},
        {"type": "SMS", "body": "second"},
    ]
    fake_providers.latency_seconds = 3
    try:
        enrollment = enroll_deal(owner, deal, new_sequence(owner, steps))
        wait_for(lambda: "STEP_ATTEMPT" in event_types(enrollment.id), timeout=60, what="the first send to start")
        pause_enrollment(enrollment.id)  # waits for the step in flight
    finally:
        fake_providers.latency_seconds = 0
    assert "EMAIL_SENT" in event_types(enrollment.id)
    time.sleep(4)
    assert fake_providers.for_recipient(deal.seller_phone) == []
    assert enrollment_row(enrollment.id).status == "PAUSED"

    resume_enrollment(enrollment.id)
    wait_for(lambda: enrollment_row(enrollment.id).status == "COMPLETED", timeout=60, what="COMPLETED")
    assert len(fake_providers.for_recipient(str(deal.seller_email))) == 1
    assert len(fake_providers.for_recipient(deal.seller_phone)) == 1


def test_suspend_and_resume_done_in_prefect_are_reflected(sequence_runner, fake_providers):
    owner, deal, enrollment_id, due = _start_and_reach_wait(6)
    run_id = enrollment_row(enrollment_id).prefect_flow_run_id
    with get_client(sync_client=True) as client:  # what the UI's "Suspend" does to a scheduled run
        client.set_flow_run_state(run_id, Suspended(), force=True)
    wait_for(lambda: enrollment_row(enrollment_id).status == "PAUSED", timeout=90, what="PAUSED from Prefect")
    assert get_enrollment(enrollment_id).status == "PAUSED"
    paused = [e for e in events_of(enrollment_id) if e.event_type == "PAUSED"]
    assert len(paused) == 1 and paused[0].content["source"] == "prefect"

    resume_flow_run(run_id)  # the UI's "Resume"
    wait_for(lambda: enrollment_row(enrollment_id).status == "COMPLETED", timeout=60, what="COMPLETED")
    resumed = [e for e in events_of(enrollment_id) if e.event_type == "RESUMED"]
    assert len(resumed) == 1 and resumed[0].content["source"] == "prefect"
    emails = fake_providers.for_recipient(str(deal.seller_email))
    assert len(emails) == 2 and emails[1].received_at >= due.timestamp()


def test_cancel_during_a_wait_cancels_the_run_and_sends_nothing_more(sequence_runner, fake_providers):
    owner, deal, enrollment_id, due = _start_and_reach_wait(6)  # long enough for the cancel to land first
    details = cancel_enrollment(enrollment_id)
    assert details.status == "CANCELLED"
    assert run_state(details.flow_run_id).is_cancelled()
    time.sleep(max(0.0, due.timestamp() - time.time()) + 3)
    assert len(fake_providers.for_recipient(str(deal.seller_email))) == 1
    assert event_types(enrollment_id)[-1] == "CANCELLED"


def test_wrong_state_calls_are_refused_and_change_nothing(sequence_runner, fake_providers):
    owner, deal, enrollment_id, due = _start_and_reach_wait(30)
    with pytest.raises(InvalidStateError, match="only a PAUSED enrollment can be resumed"):
        resume_enrollment(enrollment_id)
    pause_enrollment(enrollment_id)
    before = event_types(enrollment_id)
    with pytest.raises(InvalidStateError, match="only an ACTIVE enrollment can be paused"):
        pause_enrollment(enrollment_id)
    assert event_types(enrollment_id) == before
    cancel_enrollment(enrollment_id)
    for call in (pause_enrollment, resume_enrollment, cancel_enrollment):
        with pytest.raises(InvalidStateError):
            call(enrollment_id)
    assert enrollment_row(enrollment_id).status == "CANCELLED"
    with pytest.raises(NotFoundError):
        pause_enrollment(10**9)
    other_owner = new_owner()
    with pytest.raises(NotFoundError):
        get_enrollment(enrollment_id, owner_id=other_owner)


def test_get_enrollment_shows_a_timeline_with_planned_times(sequence_runner, fake_providers):
    owner, deal, enrollment_id, due = _start_and_reach_wait(30)
    details = get_enrollment(enrollment_id, owner_id=owner)
    assert [s.state for s in details.timeline] == ["done", "waiting", "pending"]
    assert details.timeline[1].at == due and details.timeline[2].at >= due
    assert details.next_due_at == due
    events = list_events(deal_external_id=deal.external_id, owner_id=owner)
    assert [e["event_type"] for e in events][:3] == ["ENROLLED", "STEP_ATTEMPT", "EMAIL_SENT"]
    cancel_enrollment(enrollment_id)


def test_an_offer_recorded_twice_enrolls_once(sequence_runner, fake_providers):
    owner = new_owner()
    sequence_id = new_sequence(owner, email_wait_email(30), is_default=True)
    deal = deal_input()
    first = record_offer_sent(owner, "offer-1", deal)
    second = record_offer_sent(owner, "offer-1", deal)
    assert first.enrolled and not second.enrolled and second.enrollment_id == first.enrollment_id
    third = record_offer_sent(owner, "offer-2", deal, sequence_id=sequence_id)  # same deal, same sequence
    assert not third.enrolled and third.enrollment_id == first.enrollment_id
    with pytest.raises(InvalidInputError):
        record_offer_sent(new_owner(), "offer-3", deal)  # no default sequence
    cancel_enrollment(first.enrollment_id)


def test_a_deal_offer_sent_event_enrolls_through_the_trigger(sequence_runner, fake_providers):
    owner = new_owner()
    new_sequence(owner, email_wait_email(30), is_default=True)
    deal = deal_input()
    emit_offer_sent(owner, "evt-offer-1", deal)
    emit_offer_sent(owner, "evt-offer-1", deal)
    wait_for(lambda: len(fake_providers.for_recipient(str(deal.seller_email))) >= 1, timeout=60, what="first email")
    time.sleep(3)
    events = list_events(deal_external_id=deal.external_id, owner_id=owner)
    enrollment_ids = {e["enrollment_id"] for e in events}
    assert len(enrollment_ids) == 1
    assert len(fake_providers.for_recipient(str(deal.seller_email))) == 1
    # The seller's details stay in the database: the runs' parameters carry ids only.
    from prefect.client.schemas.filters import FlowFilter, FlowFilterName

    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(flow_filter=FlowFilter(name=FlowFilterName(any_=["enroll-on-offer"])), limit=200)
    mine = [r for r in runs if r.parameters.get("offer", {}).get("offer_id") == "evt-offer-1" and r.parameters["offer"].get("owner_id") == owner]
    assert len(mine) == 2
    assert all(str(deal.seller_email) not in str(r.parameters) and deal.seller_phone not in str(r.parameters) for r in mine)
    cancel_enrollment(enrollment_ids.pop())


def test_a_repeated_offer_event_on_a_finished_deal_enrolls_anew_once_and_only_with_again(sequence_runner, fake_providers):
    """Through the real trigger: a deal whose enrollment finished is enrolled again only by an
    offer that asks for it (`again`), and that offer's event delivered twice enrolls it once."""
    from sqlalchemy import select

    from followups.db.models import Offer
    from followups.db.session import session_scope

    def recorded(offer_id: str):
        with session_scope() as session:
            return session.scalars(select(Offer).where(Offer.owner_id == owner, Offer.external_id == offer_id)).first()

    def offer_runs_done(offer_id: str) -> int:
        from prefect.client.schemas.filters import FlowFilter, FlowFilterName

        with get_client(sync_client=True) as client:
            runs = client.read_flow_runs(flow_filter=FlowFilter(name=FlowFilterName(any_=["enroll-on-offer"])), limit=200)
        return sum(1 for r in runs if r.parameters.get("offer", {}).get("offer_id") == offer_id
                   and r.parameters["offer"].get("owner_id") == owner and r.state and r.state.is_completed())

    owner = new_owner()
    new_sequence(owner, email_wait_email(30), is_default=True)
    deal = deal_input()
    first = record_offer_sent(owner, "offer-1", deal)
    cancel_enrollment(first.enrollment_id)

    emit_offer_sent(owner, "offer-2", deal)  # without again: recorded, not enrolled
    wait_for(lambda: recorded("offer-2") is not None, timeout=60, what="offer-2 to be recorded")
    assert recorded("offer-2").enrollment_id == first.enrollment_id
    emit_offer_sent(owner, "offer-3", deal, again=True)
    emit_offer_sent(owner, "offer-3", deal, again=True)  # the same offer's event, delivered twice
    wait_for(lambda: offer_runs_done("offer-3") == 2, timeout=60, what="both deliveries' enroll-on-offer runs")
    enrollment_ids = sorted({e["enrollment_id"] for e in list_events(deal_external_id=deal.external_id, owner_id=owner)})
    assert len(enrollment_ids) == 2 and enrollment_ids[0] == first.enrollment_id
    assert recorded("offer-3").enrollment_id == enrollment_ids[1]
    assert enrollment_row(enrollment_ids[1]).status == "ACTIVE"
    cancel_enrollment(enrollment_ids[1])
