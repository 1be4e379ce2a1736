"""What an operator does to a run in the Prefect UI, done with the API calls the UI makes, on a
waiting run and on a running one: every enrollment ends where the operator meant, and whatever
nothing was listening for is repaired by the reconciler."""

from __future__ import annotations

import time
from datetime import datetime, timedelta

from prefect.client.orchestration import get_client
from prefect.deployments import run_deployment
from prefect.flow_runs import resume_flow_run, suspend_flow_run
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterTags
from prefect.states import Cancelled, Cancelling, Failed, Scheduled, Suspended

from followups.control import enroll_deal, get_enrollment, resume_enrollment
from followups.lifecycle.sweep import sweep
from support import reach_wait, deal_input, enrollment_row, event_types, events_of, new_owner, new_sequence, pending_run, wait_for

def _waiting(wait_seconds: float):
    return reach_wait(wait_seconds)


def _pending_run(enrollment_id: int):
    # A repair or a deferral creates the next run just after its commit: waited for, if so.
    return pending_run(enrollment_id)


def _set_state(run_id, state, force: bool = True) -> None:
    with get_client(sync_client=True) as client:
        client.set_flow_run_state(run_id, state, force=force)


def _status(enrollment_id: int) -> str:
    return enrollment_row(enrollment_id).status


def _completes(enrollment_id: int, timeout: float = 90) -> None:
    wait_for(lambda: _status(enrollment_id) == "COMPLETED", timeout=timeout, what=f"enrollment {enrollment_id} COMPLETED")


# -- a waiting run ---------------------------------------------------------------------------


def test_deleting_the_waiting_run_is_repaired_at_its_due_time(sequence_runner, fake_providers):
    deal, enrollment_id, due = _waiting(4)
    deleted = _pending_run(enrollment_id)
    with get_client(sync_client=True) as client:
        # What the run's page in the UI says about it.
        assert client.read_flow_run(deleted).state.message == f"enrollment {enrollment_id}, step 1 (WAIT): runs when the wait ends"
    with get_client(sync_client=True) as client:
        client.delete_flow_run(deleted)
    # Reading never repairs; the sweep (the reconcile-enrollments deployment) does.
    assert get_enrollment(enrollment_id).flow_run_id == deleted
    report = sweep()
    assert (enrollment_id, "reschedule") in [(e, a) for e, a, _ in report.found]
    assert _pending_run(enrollment_id) != deleted
    assert "RECONCILED" in event_types(enrollment_id)
    _completes(enrollment_id)
    sms = fake_providers.for_recipient(deal.seller_phone)
    assert len(sms) == 1 and sms[0].received_at >= due.timestamp() - 0.5


def test_cancelling_the_waiting_run_cancels_the_enrollment(sequence_runner, fake_providers):
    deal, enrollment_id, due = _waiting(6)
    _set_state(_pending_run(enrollment_id), Cancelled(message="cancelled in the UI"))
    wait_for(lambda: _status(enrollment_id) == "CANCELLED", timeout=90, what="CANCELLED from Prefect")
    cancelled = [e for e in events_of(enrollment_id) if e.event_type == "CANCELLED"]
    assert len(cancelled) == 1 and cancelled[0].content["source"] == "prefect"
    time.sleep(max(0.0, due.timestamp() - time.time()) + 3)
    assert fake_providers.for_recipient(deal.seller_phone) == []


def test_a_suspend_that_expires_stays_paused_and_resume_continues(sequence_runner, fake_providers):
    deal, enrollment_id, due = _waiting(4)
    run_id = _pending_run(enrollment_id)
    _set_state(run_id, Suspended(timeout_seconds=1))  # the UI's dialog always sets a timeout
    # What Prefect does when the timeout passes, whoever notices first: the run fails.
    _set_state(run_id, Failed(message="The flow was suspended and never resumed."))
    sweep()  # or the sync trigger: the same rule; the operator meant a pause
    assert _status(enrollment_id) == "PAUSED"
    sweep()  # and an expired suspend is no reason to move a paused enrollment
    assert _status(enrollment_id) == "PAUSED"
    time.sleep(max(0.0, due.timestamp() - time.time()) + 2)
    assert fake_providers.for_recipient(deal.seller_phone) == []

    resume_enrollment(enrollment_id)
    _completes(enrollment_id)
    assert len(fake_providers.for_recipient(deal.seller_phone)) == 1


def test_after_an_expired_suspend_a_fresh_run_from_prefect_continues(sequence_runner, fake_providers):
    deal, enrollment_id, due = _waiting(3)
    run_id = _pending_run(enrollment_id)
    _set_state(run_id, Suspended(timeout_seconds=1))
    wait_for(lambda: _status(enrollment_id) == "PAUSED", timeout=90, what="PAUSED from Prefect")
    _set_state(run_id, Failed(message="The flow was paused and never resumed."))
    # `prefect deployment run follow-up-sequence/followups -p enrollment_id=N`
    fresh = run_deployment("follow-up-sequence/followups", parameters={"enrollment_id": enrollment_id}, timeout=0)
    _completes(enrollment_id)
    reconciled = [e for e in events_of(enrollment_id) if e.event_type == "RECONCILED"]
    assert reconciled and reconciled[0].flow_run_id == fresh.id
    assert len(fake_providers.for_recipient(deal.seller_phone)) == 1


def test_a_fresh_run_on_a_finished_enrollment_does_nothing(sequence_runner, fake_providers):
    deal, enrollment_id, due = _waiting(1)
    _completes(enrollment_id)
    before = event_types(enrollment_id)
    fresh = run_deployment("follow-up-sequence/followups", parameters={"enrollment_id": enrollment_id}, timeout=60)
    assert fresh.state.is_completed()
    assert event_types(enrollment_id) == before
    assert len(fake_providers.for_recipient(deal.seller_phone)) == 1


# -- a running run ---------------------------------------------------------------------------


def _sending():
    """An enrollment whose first step is in flight (the fake provider answers slowly)."""
    owner = new_owner()
    deal = deal_input()
    steps = [{"type": "EMAIL", "subject": "One", "text": "first"}, {"type": "SMS", "body": "second"}]
    enrollment = enroll_deal(owner, deal, new_sequence(owner, steps))
    wait_for(lambda: "STEP_ATTEMPT" in event_types(enrollment.id), timeout=60, what="the first send to start")
    return deal, enrollment.id


def test_suspending_a_running_run_pauses_after_the_step_and_resume_finishes(sequence_runner, fake_providers):
    fake_providers.latency_seconds = 3
    try:
        deal, enrollment_id = _sending()
        run_id = _pending_run(enrollment_id)
        suspend_flow_run(flow_run_id=run_id, timeout=600)  # the UI's Pause on a running run
        wait_for(lambda: _status(enrollment_id) == "PAUSED", timeout=60, what="PAUSED from Prefect")
    finally:
        fake_providers.latency_seconds = 0
    assert event_types(enrollment_id).count("EMAIL_SENT") == 1  # the step in flight finished once
    time.sleep(3)
    assert fake_providers.for_recipient(deal.seller_phone) == []
    resume_flow_run(run_id)  # the UI's Resume
    _completes(enrollment_id)
    assert len(fake_providers.for_recipient(deal.seller_phone)) == 1
    assert len(fake_providers.for_recipient(str(deal.seller_email))) == 1


def test_cancelling_a_running_run_cancels_the_enrollment_and_sends_nothing_more(sequence_runner, fake_providers):
    fake_providers.latency_seconds = 3
    try:
        deal, enrollment_id = _sending()
        _set_state(_pending_run(enrollment_id), Cancelling(message="cancelled in the UI"), force=False)
        wait_for(lambda: _status(enrollment_id) == "CANCELLED", timeout=60, what="CANCELLED from Prefect")
    finally:
        fake_providers.latency_seconds = 0
    time.sleep(3)
    assert fake_providers.for_recipient(deal.seller_phone) == []
    assert len(fake_providers.for_recipient(str(deal.seller_email))) <= 1
    assert event_types(enrollment_id).count("EMAIL_SENT") <= 1


def test_resuming_a_run_that_waits_for_its_start_time_keeps_the_start_time(sequence_runner, fake_providers):
    """Prefect's Resume reschedules a run for now. A run that waited for its sequence's start
    time (not a WAIT) must still not send before that time."""
    owner = new_owner()
    deal = deal_input()
    # Far enough ahead that the run, resumed after this test's own steps on a busy machine, still
    # starts more than `deferral.EARLY_START_SECONDS` (15 s) early.
    start_at = datetime.now().astimezone() + timedelta(seconds=45)
    steps = [{"type": "EMAIL", "subject": "Offer", "text": "Hi"}]
    enrollment = enroll_deal(owner, deal, new_sequence(owner, steps), start_at=start_at)
    run_id = _pending_run(enrollment.id)
    _set_state(run_id, Suspended(timeout_seconds=3600))
    wait_for(lambda: _status(enrollment.id) == "PAUSED", timeout=60, what="PAUSED from Prefect")
    resume_flow_run(run_id)
    wait_for(lambda: _status(enrollment.id) == "ACTIVE", timeout=60, what="ACTIVE from Prefect's resume")
    with get_client(sync_client=True) as client:
        waiting = client.read_flow_run(_pending_run(enrollment.id)).state
    assert waiting.message == f"enrollment {enrollment.id}, step 0 (EMAIL): runs when its due time comes"
    _completes(enrollment.id)
    emails = fake_providers.for_recipient(deal.seller_email)
    assert len(emails) == 1 and emails[0].received_at >= start_at.timestamp() - 0.5


def test_a_retry_of_an_earlier_run_in_the_ui_ends_at_once_beside_the_waiting_run(sequence_runner, fake_providers):
    deal, enrollment_id, due = _waiting(30)
    pending = _pending_run(enrollment_id)
    earlier = [e.flow_run_id for e in events_of(enrollment_id) if e.event_type == "WAIT_STARTED"][0]
    assert earlier != pending
    # The UI's Retry on a finished run: the same run, Scheduled again.
    _set_state(earlier, Scheduled(name="AwaitingRetry", message="Retry from the UI"))
    with get_client(sync_client=True) as client:
        wait_for(lambda: client.read_flow_run(earlier).state.name == "Superseded", timeout=60, what="the retried run to end")
        live = [
            run for run in client.read_flow_runs(flow_run_filter=FlowRunFilter(tags=FlowRunFilterTags(all_=[f"enrollment:{enrollment_id}"])))
            if not run.state.is_final()
        ]
    assert [run.id for run in live] == [pending]
    assert _pending_run(enrollment_id) == pending and _status(enrollment_id) == "ACTIVE"
    assert len(fake_providers.for_recipient(deal.seller_email)) == 1


def test_a_resume_in_the_ui_costs_at_most_two_flow_runs(sequence_runner, fake_providers):
    """Suspend a waiting run and Resume it, as the UI does. Prefect makes the resumed run due at
    once: it records the resume itself, and hands the rest of the wait to one run due when the
    wait ends. No sync run beside them."""
    from datetime import UTC

    deal, enrollment_id, due = _waiting(20)
    run_id = _pending_run(enrollment_id)
    _set_state(run_id, Suspended(timeout_seconds=3600))
    wait_for(lambda: _status(enrollment_id) == "PAUSED", timeout=60, what="PAUSED from Prefect")
    resumed_at = datetime.now(UTC)
    resume_flow_run(run_id)
    wait_for(lambda: _status(enrollment_id) == "ACTIVE", timeout=60, what="ACTIVE from Prefect's resume")
    _completes(enrollment_id)
    with get_client(sync_client=True) as client:
        ran = [
            run for run in client.read_flow_runs(flow_run_filter=FlowRunFilter(tags=FlowRunFilterTags(all_=[f"enrollment:{enrollment_id}"])))
            if run.start_time is not None and run.start_time > resumed_at
        ]
    assert len(ran) <= 2, [(run.name, run.state_name) for run in ran]
    assert len(fake_providers.for_recipient(deal.seller_phone)) == 1
