"""What an operator does from Prefect with the product's own deployments, done as the UI's
"Run" does it (`run_deployment`): pause, resume and cancel a waiting enrollment, and run the
reconciler after a run was deleted; and a crashed run repaired by the sync trigger. The
session's executor runs them."""

from __future__ import annotations

import time
from datetime import datetime

from prefect.client.orchestration import get_client
from prefect.client.schemas.objects import FlowRun
from prefect.deployments import run_deployment
from prefect.states import Crashed

from followups.control import enroll_deal
from support import reach_wait, stock_session_executor, deal_input, enrollment_row, event_types, events_of, new_owner, new_sequence, wait_for


def _waiting(wait_seconds: float):
    return reach_wait(wait_seconds)


def _run(flow_name: str, **parameters) -> FlowRun:
    """The Prefect UI's "Run" on `<flow_name>/followups`, waited for."""
    return run_deployment(f"{flow_name}/followups", parameters=parameters, timeout=120)


def _read_run(run_id) -> FlowRun:
    with get_client(sync_client=True) as client:
        return client.read_flow_run(run_id)


def _completes(enrollment_id: int, timeout: float = 90) -> None:
    wait_for(lambda: enrollment_row(enrollment_id).status == "COMPLETED", timeout=timeout, what=f"enrollment {enrollment_id} COMPLETED")


def test_pause_then_resume_a_waiting_enrollment_from_prefect(sequence_runner, fake_providers):
    # Long enough for two control runs on a busy shared executor to land before the due time.
    deal, enrollment_id, due = _waiting(50 if stock_session_executor() else 20)
    waiting_run = enrollment_row(enrollment_id).prefect_flow_run_id

    paused = _run("pause-enrollment", enrollment_id=enrollment_id)
    assert paused.state.is_completed(), paused.state
    assert paused.name == f"pause enrollment {enrollment_id}"
    row = enrollment_row(enrollment_id)
    assert row.status == "PAUSED" and row.prefect_flow_run_id == waiting_run
    assert _read_run(waiting_run).state.is_paused()  # Suspended: no worker starts it

    resumed = _run("resume-enrollment", enrollment_id=enrollment_id)
    assert resumed.state.is_completed(), resumed.state
    assert resumed.name == f"resume enrollment {enrollment_id}"
    assert enrollment_row(enrollment_id).status == "ACTIVE"
    assert time.time() < due.timestamp() - 2, "the test was too slow to show that the wait is kept"
    # Resumed, not started over nor cut short: the SMS goes at the wait's due time.
    time.sleep(1)
    assert fake_providers.for_recipient(deal.seller_phone) == []

    _completes(enrollment_id, timeout=60)
    [sms] = fake_providers.for_recipient(deal.seller_phone)
    assert sms.received_at >= due.timestamp() - 0.5
    assert [e.content.get("source") for e in events_of(enrollment_id) if e.event_type in ("PAUSED", "RESUMED")] == ["api", "api"]


def test_cancel_a_waiting_enrollment_from_prefect(sequence_runner, fake_providers):
    deal, enrollment_id, due = _waiting(30)
    waiting_run = enrollment_row(enrollment_id).prefect_flow_run_id
    cancelled = _run("cancel-enrollment", enrollment_id=enrollment_id)
    assert cancelled.state.is_completed(), cancelled.state
    assert cancelled.name == f"cancel enrollment {enrollment_id}"
    assert enrollment_row(enrollment_id).status == "CANCELLED"
    assert _read_run(waiting_run).state.is_cancelled()
    assert event_types(enrollment_id).count("CANCELLED") == 1


def test_a_refused_control_fails_the_run_with_the_reason(sequence_runner):
    unknown = _run("pause-enrollment", enrollment_id=2**40)
    assert unknown.state.is_failed() and f"enrollment {2**40} not found" in (unknown.state.message or ""), unknown.state
    owner = new_owner()
    finished = enroll_deal(owner, deal_input(), new_sequence(owner, [{"type": "EMAIL", "subject": "Hi", "text": "one"}]))
    _completes(finished.id)
    refused = _run("resume-enrollment", enrollment_id=finished.id)
    assert refused.state.is_failed() and f"enrollment {finished.id} is COMPLETED" in (refused.state.message or ""), refused.state
    assert enrollment_row(finished.id).status == "COMPLETED"


def test_a_crashed_waiting_run_still_ends_the_sequence_once(sequence_runner, fake_providers):
    """A Crashed run may be picked up again by the runner that held it, or be replaced by the
    reconciler: either way the sequence goes on from its wait, and each step is sent once."""
    deal, enrollment_id, due = _waiting(4)
    crashed = enrollment_row(enrollment_id).prefect_flow_run_id
    with get_client(sync_client=True) as client:
        client.set_flow_run_state(crashed, Crashed(message="the worker's machine went away"), force=True)
    run = _run("reconcile-enrollments")
    assert run.state.is_completed(), run.state
    _completes(enrollment_id)
    [sms] = fake_providers.for_recipient(deal.seller_phone)
    assert sms.received_at >= due.timestamp() - 0.5
    assert len(fake_providers.for_recipient(str(deal.seller_email))) == 1


def test_reconcile_enrollments_repairs_a_deleted_waiting_run(sequence_runner, fake_providers):
    deal, enrollment_id, due = _waiting(4)
    deleted = enrollment_row(enrollment_id).prefect_flow_run_id
    with get_client(sync_client=True) as client:
        client.delete_flow_run(deleted)

    run = _run("reconcile-enrollments")
    assert run.state.is_completed(), run.state
    assert enrollment_row(enrollment_id).prefect_flow_run_id not in (None, deleted)
    [reconciled] = [e for e in events_of(enrollment_id) if e.event_type == "RECONCILED"]
    assert reconciled.content["previous_run_id"] == str(deleted)

    _completes(enrollment_id)
    [sms] = fake_providers.for_recipient(deal.seller_phone)
    assert sms.received_at >= due.timestamp() - 0.5
