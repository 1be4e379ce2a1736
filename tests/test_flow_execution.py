"""The flow and its step task run in this process against the Prefect test API and the fake
SendGrid/Twilio server: retries and backoff, permanent failures, rate limits, no duplicates."""

from __future__ import annotations

import contextvars
import threading
import time
from datetime import datetime

import pytest
from prefect.client.orchestration import get_client

from followups.db.events import record_event
from followups.db.models import EventType
from followups.db.session import session_scope
from followups.flows.follow_up_sequence import follow_up_sequence
from followups.prefect_runs import schedule_sequence_run
from followups.execution.sending import execute_send_step
from followups.tasks.send_step import backoff_delays
from support import enrollment_row, event_types, events_of, new_enrollment, new_owner, new_sequence, unique, unique_phone

ONE_EMAIL = [{"type": "EMAIL", "subject": "Offer on {{ deal.property_address }}", "text": "Hi {{ seller.first_name }}"}]
EMAIL_THEN_SMS = ONE_EMAIL + [{"type": "SMS", "body": "Hi {{ seller.first_name }}"}]


@pytest.fixture
def seller_email() -> str:
    return f"{unique('seller')}@example.com"


def _enroll(steps, email: str, owner: int | None = None) -> int:
    owner = owner or new_owner()
    return new_enrollment(owner, new_sequence(owner, steps), seller_email=email)


def test_backoff_doubles_from_the_base_and_jitter_only_lengthens():
    delays = backoff_delays(4, 2.0, 0.2)
    assert len(delays) == 4
    for n, delay in enumerate(delays):
        assert 2.0 * 2**n <= delay <= 2.0 * 2**n * 1.2
    assert delays == sorted(delays)


def test_a_send_step_sequence_completes_in_order(prefect_api, fake_providers, seller_email):
    enrollment_id = _enroll(EMAIL_THEN_SMS, seller_email)
    assert follow_up_sequence(enrollment_id) == "COMPLETED"
    assert event_types(enrollment_id) == [
        "ENROLLED", "STEP_ATTEMPT", "EMAIL_SENT", "STEP_ATTEMPT", "SMS_SENT", "COMPLETED",
    ]
    sent = [e for e in events_of(enrollment_id) if e.event_type == "EMAIL_SENT"][0]
    assert sent.provider_message_id and sent.flow_run_id and sent.task_run_id
    assert sent.content["subject"] == "Offer on 12 Elm Street, Springfield"
    row = enrollment_row(enrollment_id)
    assert (row.status, row.current_step) == ("COMPLETED", 2)


def test_two_server_errors_then_accepted_retries_with_growing_delays(prefect_api, fake_providers, seller_email):
    fake_providers.script(seller_email, [500, 500, 202])
    enrollment_id = _enroll(ONE_EMAIL, seller_email)
    assert follow_up_sequence(enrollment_id) == "COMPLETED"

    calls = fake_providers.for_recipient(seller_email)
    assert [c.status for c in calls] == [500, 500, 202]
    types = event_types(enrollment_id)
    assert types.count("EMAIL_SENT") == 1 and types.count("STEP_RETRY") == 2
    retries = [e for e in events_of(enrollment_id) if e.event_type == "STEP_RETRY"]
    assert [r.attempt for r in retries] == [1, 2]
    assert "500" in retries[0].failure_reason
    first_gap = calls[1].received_at - calls[0].received_at
    second_gap = calls[2].received_at - calls[1].received_at
    assert first_gap >= 0.3 and second_gap >= 0.6 and second_gap > first_gap


def test_a_permanent_error_is_not_retried_and_fails_the_enrollment(prefect_api, fake_providers, seller_email):
    fake_providers.script(seller_email, [400])
    enrollment_id = _enroll(EMAIL_THEN_SMS, seller_email)
    with pytest.raises(Exception):
        follow_up_sequence(enrollment_id)
    assert len(fake_providers.for_recipient(seller_email)) == 1
    failed = [e for e in events_of(enrollment_id) if e.event_type == "STEP_FAILED"]
    assert len(failed) == 1 and "400" in failed[0].failure_reason
    assert "STEP_RETRY" not in event_types(enrollment_id)
    assert enrollment_row(enrollment_id).status == "FAILED"


def test_giving_up_after_five_attempts(prefect_api, fake_providers, seller_email):
    fake_providers.script(seller_email, [503] * 5)
    enrollment_id = _enroll(ONE_EMAIL, seller_email)
    with pytest.raises(Exception):
        follow_up_sequence(enrollment_id)
    assert len(fake_providers.for_recipient(seller_email)) == 5
    types = event_types(enrollment_id)
    assert types.count("STEP_RETRY") == 4 and types.count("STEP_FAILED") == 1
    assert enrollment_row(enrollment_id).status == "FAILED"


def test_a_rate_limited_step_is_not_retried_before_the_reset_time(prefect_api, fake_providers, seller_email):
    resets: list[int] = []

    def three_seconds_from_now() -> str:  # relative to the 429 itself, however slow the machine
        resets.append(int(time.time()) + 3)
        return str(resets[-1])

    fake_providers.script(seller_email, [(429, {"X-RateLimit-Reset": three_seconds_from_now}), 202])
    enrollment_id = _enroll(ONE_EMAIL, seller_email)
    assert follow_up_sequence(enrollment_id) == "COMPLETED"
    calls = fake_providers.for_recipient(seller_email)
    assert [c.status for c in calls] == [429, 202]
    reset = resets[0]
    assert calls[1].received_at >= reset
    retry = [e for e in events_of(enrollment_id) if e.event_type == "STEP_RETRY"][0]
    assert datetime.fromisoformat(retry.content["not_before"]).timestamp() >= reset - 1


def test_running_the_same_flow_twice_sends_once(prefect_api, fake_providers, seller_email):
    enrollment_id = _enroll(ONE_EMAIL, seller_email)
    assert follow_up_sequence(enrollment_id) == "COMPLETED"
    assert follow_up_sequence(enrollment_id) == "COMPLETED"
    assert len(fake_providers.for_recipient(seller_email)) == 1
    assert event_types(enrollment_id).count("EMAIL_SENT") == 1


def test_two_concurrent_runs_of_one_enrollment_send_each_step_once(prefect_api, fake_providers, seller_email):
    enrollment_id = _enroll(EMAIL_THEN_SMS, seller_email)
    fake_providers.latency_seconds = 0.3
    try:
        results = []
        # Each thread runs in a copy of this context: Prefect's API URL is a context setting, and a
        # bare thread would start a temporary server of its own.
        threads = [
            threading.Thread(target=contextvars.copy_context().run, args=(lambda: results.append(follow_up_sequence(enrollment_id)),))
            for _ in range(2)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
    finally:
        fake_providers.latency_seconds = 0
    assert results == ["COMPLETED", "COMPLETED"]
    assert len(fake_providers.for_recipient(seller_email)) == 1
    types = event_types(enrollment_id)
    assert types.count("EMAIL_SENT") == 1 and types.count("SMS_SENT") == 1 and types.count("COMPLETED") == 1


def test_scheduling_the_same_step_twice_gives_one_flow_run(prefect_api, fake_providers, seller_email):
    from followups.deployments.definitions import sequence_deployment

    sequence_deployment().apply()
    enrollment_id = _enroll(ONE_EMAIL, seller_email)
    first = schedule_sequence_run(enrollment_id, "D-x", 3, scheduled_time=None)
    second = schedule_sequence_run(enrollment_id, "D-x", 3, scheduled_time=None)
    assert first == second
    with get_client(sync_client=True) as client:
        run = client.read_flow_run(first)
    assert {"followups", "deal:D-x", f"enrollment:{enrollment_id}"} <= set(run.tags)
    assert run.name == f"deal D-x · enrollment {enrollment_id} · from step 3"
    with get_client(sync_client=True) as client:
        client.set_flow_run_state(first, __import__("prefect").states.Cancelled(), force=True)


def test_a_worker_that_died_mid_send_leaves_a_trace_and_the_step_is_not_resent(db, fake_providers, seller_email):
    enrollment_id = _enroll(EMAIL_THEN_SMS, seller_email)
    with session_scope() as session:  # what a worker killed after the provider's 2xx leaves
        record_event(session, enrollment_id=enrollment_id, event_type=EventType.STEP_ATTEMPT, step_index=0, attempt=1)
    result = execute_send_step(enrollment_id, 0)
    assert result.outcome == "outcome-unknown"
    assert fake_providers.for_recipient(seller_email) == []
    assert event_types(enrollment_id)[-1] == "STEP_OUTCOME_UNKNOWN"
    assert enrollment_row(enrollment_id).current_step == 1


def test_a_step_already_sent_is_skipped(db, fake_providers, seller_email):
    enrollment_id = _enroll(EMAIL_THEN_SMS, seller_email)
    assert execute_send_step(enrollment_id, 0).outcome == "sent"
    assert execute_send_step(enrollment_id, 0).outcome == "already-done"
    assert len(fake_providers.for_recipient(seller_email)) == 1


def test_an_email_step_for_a_seller_without_email_is_skipped_not_failed(db, fake_providers):
    owner = new_owner()
    enrollment_id = new_enrollment(owner, new_sequence(owner, EMAIL_THEN_SMS), seller_email=None)
    assert execute_send_step(enrollment_id, 0).outcome == "skipped"
    assert event_types(enrollment_id)[-1] == "STEP_SKIPPED"


def test_a_seller_who_texted_stop_gets_no_more_sms_until_start(db, fake_providers):
    owner = new_owner()
    sms_only = [{"type": "SMS", "body": "Hi"}, {"type": "WAIT", "days": 1}, {"type": "SMS", "body": "Again"}]
    phone = unique_phone()
    earlier = new_enrollment(owner, new_sequence(owner, sms_only), seller_phone=phone)
    with session_scope() as session:
        record_event(session, enrollment_id=earlier, event_type=EventType.OPTED_OUT, content={"channel": "sms", "from": phone})
    later = new_enrollment(owner, new_sequence(owner, sms_only), seller_phone=phone)
    assert execute_send_step(later, 0).outcome == "skipped"
    assert "opted out" in events_of(later)[-1].failure_reason
    assert fake_providers.for_recipient(phone) == []

    with session_scope() as session:  # START: Twilio lifts its block, so do we
        record_event(session, enrollment_id=earlier, event_type=EventType.PROVIDER_EVENT, status="opt_in", content={"from": phone})
    third = new_enrollment(owner, new_sequence(owner, sms_only), seller_phone=phone)
    assert execute_send_step(third, 0).outcome == "sent"


def test_an_unsubscribed_email_is_not_written_to_again(db, fake_providers, seller_email):
    owner = new_owner()
    earlier = _enroll(ONE_EMAIL, seller_email, owner)
    with session_scope() as session:
        record_event(session, enrollment_id=earlier, event_type=EventType.OPTED_OUT, content={"channel": "email", "email": seller_email.upper()})
    later = _enroll(ONE_EMAIL, seller_email, owner)
    assert execute_send_step(later, 0).outcome == "skipped"
    assert fake_providers.for_recipient(seller_email) == []
    # The opt-out was from this owner's mail: another investor writing to the seller is not blocked.
    other = _enroll(ONE_EMAIL, seller_email)
    assert execute_send_step(other, 0).outcome == "sent"


@pytest.mark.parametrize("answer", ["reset", "timeout"])
def test_a_lost_answer_is_never_resent(prefect_api, fake_providers, seller_email, monkeypatch, answer):
    """The request reached the provider and its answer was lost (a dropped connection, a read
    timeout): perhaps sent, so the step is recorded outcome-unknown and the sequence goes on."""
    from followups.settings import reset_settings

    monkeypatch.setenv("FOLLOWUPS_PROVIDER_TIMEOUT_SECONDS", "1")
    monkeypatch.setattr(fake_providers, "hang_seconds", 2.0)
    reset_settings()
    try:
        fake_providers.script(seller_email, [answer, 202])
        enrollment_id = _enroll(ONE_EMAIL, seller_email)
        assert follow_up_sequence(enrollment_id) == "COMPLETED"
    finally:
        monkeypatch.undo()
        reset_settings()
    assert len(fake_providers.for_recipient(seller_email)) == 1  # never a second request
    [unknown] = [e for e in events_of(enrollment_id) if e.event_type == "STEP_OUTCOME_UNKNOWN"]
    assert "the answer was lost" in unknown.failure_reason
    assert "EMAIL_SENT" not in event_types(enrollment_id) and "STEP_RETRY" not in event_types(enrollment_id)
