"""Races between the product's controls and the executors, replayed one state change at a time
on a real Prefect server: a pause that lands after a worker claimed the run, a resume done in
Prefect, a run stopped by its runner shutting down, and a stop signal in the middle of a send.

The runs belong to a deployment nobody serves, so no executor moves them behind the test's back.
"""

from __future__ import annotations

import contextvars
import os
import signal
import threading
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.responses import SetStateStatus
from prefect.flow_runs import resume_flow_run
from prefect.states import Cancelled, Cancelling, Pending, Running, Suspended

from followups import prefect_runs, run_history
from followups.control import pause_enrollment, resume_enrollment
from followups.db.models import EventType
from followups.db.session import session_scope
from followups.execution.checkpoint import Next, checkpoint
from followups.tasks.stop_guard import stops_held, stop_thread_when_safe
from followups.lifecycle import store
from followups.lifecycle.plan import load_plan
from followups.lifecycle.reconcile import reconcile_enrollment
from followups.lifecycle.transitions import Actor
from followups.settings import reset_settings
from support import enrollment_row, event_types, new_enrollment, new_owner, new_sequence, unique

STEPS = [{"type": "EMAIL", "subject": "Offer", "text": "Hi"}, {"type": "WAIT", "seconds": 60}, {"type": "SMS", "body": "Any news?"}]


@pytest.fixture
def unserved(prefect_api, monkeypatch):
    from followups.deployments.definitions import sequence_deployment

    monkeypatch.setenv("FOLLOWUPS_DEPLOYMENT_NAME", f"follow-up-sequence/races-{uuid.uuid4().hex[:6]}")
    reset_settings()
    sequence_deployment().apply()
    yield
    monkeypatch.undo()
    reset_settings()


def _enrollment_with_a_run(**deal) -> tuple[int, uuid.UUID]:
    """An ACTIVE enrollment whose pending run is Scheduled and due (no executor serves it: the
    test starts it as one would)."""
    owner = new_owner()
    enrollment_id = new_enrollment(owner, new_sequence(owner, STEPS), **deal)
    with session_scope() as session:
        plan = load_plan(session, enrollment_id, lock=True)
        store.reschedule(session, plan, due=None, actor=Actor.API)
    # The run is created once the change commits.
    return enrollment_id, enrollment_row(enrollment_id).prefect_flow_run_id


def _set(run_id, state, force: bool = True):
    with get_client(sync_client=True) as client:
        return client.set_flow_run_state(run_id, state, force=force)


def _start(run_id) -> None:
    """What an executor does with a claimed run: propose Running, orchestrated (not forced)."""
    assert _set(run_id, Running(), force=False).status == SetStateStatus.ACCEPT


def test_a_pause_that_lands_after_the_workers_claim_is_kept(unserved):
    enrollment_id, run_id = _enrollment_with_a_run()
    _set(run_id, Pending(message="claimed by a worker"))
    assert pause_enrollment(enrollment_id).status == "PAUSED"
    assert prefect_runs.read_run(run_id).state.is_paused()
    _start(run_id)  # Prefect lets a claimed run start from Suspended: nobody resumed it
    check = checkpoint(enrollment_id, run_id, starting=True)
    assert (check.next, check.plan.status) == (Next.SUSPEND, "PAUSED")
    assert "RESUMED" not in event_types(enrollment_id)
    # The flow suspends itself; the investor's resume is accepted and the run goes on.
    _set(run_id, Suspended(pause_key="again"))
    assert resume_enrollment(enrollment_id).status == "ACTIVE"
    _set(run_id, Pending(message="claimed by a worker"))
    _start(run_id)
    check = checkpoint(enrollment_id, run_id, starting=True)
    assert (check.next, check.plan.status) == (Next.GO, "ACTIVE")
    assert event_types(enrollment_id).count("RESUMED") == 1


def test_a_resume_between_the_flows_pause_check_and_its_suspend_is_not_lost(unserved):
    """The flow finds the enrollment PAUSED and decides to suspend itself; before its suspend
    lands the investor resumes, and finds the run running (nothing to resume). The run's own
    suspend then arrives: it is resumed, and the enrollment stays ACTIVE."""
    enrollment_id, run_id = _enrollment_with_a_run()
    _set(run_id, Pending(message="claimed by a worker"))
    pause_enrollment(enrollment_id)
    _start(run_id)
    check = checkpoint(enrollment_id, run_id, starting=True)
    assert (check.next, check.plan.status) == (Next.SUSPEND, "PAUSED")
    assert resume_enrollment(enrollment_id).status == "ACTIVE"
    assert prefect_runs.read_run(run_id).state.is_running()  # the resume had nothing to resume
    _set(run_id, Suspended(pause_key=prefect_runs.self_pause_key(check.plan.current_step)))
    # What the sync flow (Prefect's Suspended event) and the sweep both do.
    plan = reconcile_enrollment(enrollment_id)
    assert plan.status == "ACTIVE" and plan.prefect_flow_run_id == run_id
    run = prefect_runs.read_run(run_id)
    assert run.state.is_scheduled() and run.state.name == "Resuming"
    assert event_types(enrollment_id)[-2:] == ["RESUMED", "RECONCILED"]
    # An operator's suspend in Prefect still pauses the enrollment.
    _set(run_id, Suspended(pause_key="operator"))
    assert reconcile_enrollment(enrollment_id).status == "PAUSED"


def test_a_pause_and_resume_during_a_send_leave_one_pair_of_events(unserved, monkeypatch):
    """The investor pauses while a step is being sent (the run is Running, so our API suspends
    it), then resumes after the flow's next check has read the run and before it has taken the
    enrollment's lock. The check must not judge on the run as it read it (suspended): that stale
    view once recorded a pause and a resume nobody asked for. It sees the resume's effect and
    reads again."""
    from followups.execution import checkpoint as checkpoint_module

    enrollment_id, run_id = _enrollment_with_a_run()
    _set(run_id, Pending(message="claimed by a worker"))
    _start(run_id)
    assert pause_enrollment(enrollment_id).status == "PAUSED"
    assert prefect_runs.read_run(run_id).state.is_paused()
    real_load_plan = checkpoint_module.load_plan
    resumed = []

    def resume_lands_first(session, enrollment_id_, **kwargs):
        # The resume commits after the check read the run, while it waits for the row lock
        # (another thread, with this test's Prefect settings, which live in a context variable).
        if kwargs.get("lock") and not resumed:
            resumed.append(1)
            done = threading.Thread(target=contextvars.copy_context().run, args=(resume_enrollment, enrollment_id_))
            done.start()
            done.join()
        return real_load_plan(session, enrollment_id_, **kwargs)

    monkeypatch.setattr(checkpoint_module, "load_plan", resume_lands_first)
    check = checkpoint(enrollment_id, run_id, starting=False)
    assert resumed and check.plan.status == "ACTIVE" and check.next is not Next.STAY_SUSPENDED
    events = event_types(enrollment_id)
    assert (events.count("PAUSED"), events.count("RESUMED")) == (1, 1), events


def test_an_operators_suspend_during_a_send_pauses_the_enrollment_in_that_run(unserved, fake_providers, monkeypatch):
    """The UI's Pause on a run whose step is being sent. Prefect's engine notices the suspend
    and ends the flow as soon as the step's task returns, before the flow's next check: the run
    must record the pause itself (nothing else would until a sync run or the sweep), and a resume
    in Prefect then goes on from the next step without sending this one again."""
    from prefect.exceptions import Pause
    from prefect.flow_engine import run_flow
    from prefect.flow_runs import suspend_flow_run

    from followups.execution import sending
    from followups.flows.follow_up_sequence import follow_up_sequence

    seller_email = f"{unique('suspended')}@example.com"
    enrollment_id, run_id = _enrollment_with_a_run(seller_email=seller_email)
    real = sending.get_providers()

    class SuspendedMidSend:
        def send_email(self, message):
            # In this process, as with the engine's own observer of the run: marked at once.
            suspend_flow_run(flow_run_id=run_id, timeout=600)
            return real.send_email(message)

    monkeypatch.setattr(sending, "get_providers", SuspendedMidSend)
    _set(run_id, Pending(message="claimed by a worker"))
    with get_client(sync_client=True) as client:
        with pytest.raises(Pause):
            run_flow(follow_up_sequence, flow_run=client.read_flow_run(run_id), return_type="state")
        assert client.read_flow_run(run_id).state.name == "Suspended"
    row = enrollment_row(enrollment_id)
    assert (row.status, row.current_step) == ("PAUSED", 1)  # when the run ends, not later
    assert event_types(enrollment_id).count("EMAIL_SENT") == 1

    monkeypatch.setattr(sending, "get_providers", lambda: real)
    resume_flow_run(run_id)  # the UI's Resume; nobody serves this deployment, so run it here
    _set(run_id, Pending(message="claimed by a worker"))
    with get_client(sync_client=True) as client:
        run_flow(follow_up_sequence, flow_run=client.read_flow_run(run_id), return_type="state")
        assert client.read_flow_run(run_id).state.is_completed()
    row = enrollment_row(enrollment_id)
    assert (row.status, row.current_step) == ("ACTIVE", 1) and "WAIT_STARTED" in event_types(enrollment_id)
    events = event_types(enrollment_id)
    assert (events.count("EMAIL_SENT"), events.count("PAUSED"), events.count("RESUMED")) == (1, 1, 1), events
    assert len(fake_providers.for_recipient(seller_email)) == 1


def _suspend_as_the_wait_is_handed_over(monkeypatch, run_id, suspend) -> None:
    """The UI's Pause landing after the run's last check, while it schedules its WAIT's run."""
    from followups.execution import waiting

    real = waiting.store.reschedule

    def reschedule(session, plan, **kwargs):
        moved = real(session, plan, **kwargs)
        if kwargs.get("event_type") == "WAIT_STARTED":
            suspend(run_id)
        return moved

    monkeypatch.setattr(waiting.store, "reschedule", reschedule)


def _handed_over_to(enrollment_id: int, run_id) -> uuid.UUID:
    row = enrollment_row(enrollment_id)
    assert (row.status, row.current_step) == ("ACTIVE", 1) and row.prefect_flow_run_id != run_id
    return row.prefect_flow_run_id


def test_a_suspend_as_a_run_hands_over_that_stops_the_run_pauses_in_that_run(unserved, fake_providers, monkeypatch):
    """Prefect's engine (the stock runner) sees the suspend and ends the run Suspended, after it
    scheduled its WAIT's run. The sync run its Suspended event triggers makes it the pending run
    again (the scheduled one is cancelled) and pauses the enrollment; resuming it in Prefect goes
    on with the rest of the wait, nothing sent twice."""
    from prefect.exceptions import Pause
    from prefect.flow_engine import run_flow
    from prefect.flow_runs import suspend_flow_run

    from followups.flows.follow_up_sequence import follow_up_sequence
    from followups.flows.sync_enrollment_state import sync_enrollment_state

    seller_email = f"{unique('handover')}@example.com"
    enrollment_id, run_id = _enrollment_with_a_run(seller_email=seller_email)
    _suspend_as_the_wait_is_handed_over(monkeypatch, run_id, lambda rid: suspend_flow_run(flow_run_id=rid, timeout=600))
    _set(run_id, Pending(message="claimed by a worker"))
    with get_client(sync_client=True) as client:
        with pytest.raises(Pause):
            run_flow(follow_up_sequence, flow_run=client.read_flow_run(run_id), return_type="state")
    assert prefect_runs.read_run(run_id).state.name == "Suspended"
    scheduled = _handed_over_to(enrollment_id, run_id)

    assert sync_enrollment_state(str(run_id)) == "PAUSED"  # what the Suspended event triggers
    row = enrollment_row(enrollment_id)
    assert (row.status, row.prefect_flow_run_id) == ("PAUSED", run_id)
    assert prefect_runs.read_run(scheduled).state.is_cancelled()
    assert sync_enrollment_state(str(scheduled)) == "PAUSED"  # its Cancelled event changes nothing
    assert enrollment_row(enrollment_id).status == "PAUSED"

    monkeypatch.undo()
    resume_flow_run(run_id)  # the UI's Resume of the run the operator paused
    assert sync_enrollment_state(str(run_id)) == "ACTIVE"
    _set(run_id, Pending(message="claimed by a worker"))
    with get_client(sync_client=True) as client:
        run_flow(follow_up_sequence, flow_run=client.read_flow_run(run_id), return_type="state")
    row = enrollment_row(enrollment_id)
    assert (row.status, row.current_step) == ("ACTIVE", 1) and row.prefect_flow_run_id not in (run_id, scheduled)
    assert prefect_runs.read_run(row.prefect_flow_run_id).state.is_scheduled()  # the rest of the wait
    events = event_types(enrollment_id)
    assert (events.count("EMAIL_SENT"), events.count("PAUSED"), events.count("RESUMED")) == (1, 1, 1), events
    assert len(fake_providers.for_recipient(seller_email)) == 1


def test_a_suspend_as_a_run_hands_over_that_prefect_completes_pauses_the_next_run(unserved, fake_providers, monkeypatch):
    """The suspend comes from another process (the fast worker does not watch for it), so the
    engine's Completed overwrites it: Prefect lets a final state leave Suspended. The sync run
    pauses the enrollment and suspends the run scheduled for the wait, as our pause would; our
    resume then goes on with what is left of the wait."""
    from prefect.flow_engine import run_flow

    from followups.flows.follow_up_sequence import follow_up_sequence
    from followups.flows.sync_enrollment_state import sync_enrollment_state
    from followups import prefect_private
    from followups.worker import concurrency_patches

    enrollment_id, run_id = _enrollment_with_a_run()
    from_the_ui = lambda rid: _set(rid, Suspended(timeout_seconds=600, pause_key="ui"), force=False)  # noqa: E731
    _suspend_as_the_wait_is_handed_over(monkeypatch, run_id, from_the_ui)
    _set(run_id, Pending(message="claimed by a worker"))
    # As in the fast worker: no watching the run for a suspend.
    prefect_private.apply_fast_worker(concurrency_patches.make_tag_filtering_concurrency)
    try:
        with get_client(sync_client=True) as client:
            run_flow(follow_up_sequence, flow_run=client.read_flow_run(run_id), return_type="state")
    finally:
        prefect_private.restore()
    assert [s.name for s in prefect_runs.read_states(run_id)][-2:] == ["Suspended", "Waiting"]
    scheduled = _handed_over_to(enrollment_id, run_id)
    due = enrollment_row(enrollment_id).next_due_at

    assert sync_enrollment_state(str(run_id)) == "PAUSED"
    row = enrollment_row(enrollment_id)
    assert (row.status, row.prefect_flow_run_id) == ("PAUSED", scheduled)
    assert prefect_runs.read_run(scheduled).state.is_paused()
    assert sync_enrollment_state(str(scheduled)) == "PAUSED"  # its own Suspended event: no change
    assert resume_enrollment(enrollment_id).status == "ACTIVE"
    run = prefect_runs.read_run(scheduled)
    # What was left of the wait is kept: due later by the time it was paused.
    resumed_due = enrollment_row(enrollment_id).next_due_at
    assert due < resumed_due < due + timedelta(seconds=60)
    assert run.state.is_scheduled() and abs((run.state.state_details.scheduled_time - resumed_due).total_seconds()) < 1
    events = event_types(enrollment_id)
    assert (events.count("EMAIL_SENT"), events.count("PAUSED"), events.count("RESUMED")) == (1, 1, 1), events


def test_a_run_resumed_in_prefect_before_it_handed_over_pauses_nothing(unserved):
    """An operator's suspend and resume earlier in the run's life is no pause at its end."""
    from followups.flows.sync_enrollment_state import sync_enrollment_state

    enrollment_id, run_id = _enrollment_with_a_run()
    _set(run_id, Pending(message="claimed"))
    _start(run_id)
    _set(run_id, Suspended(timeout_seconds=600, pause_key="ui"), force=False)
    _set(run_id, Pending(message="resumed and claimed"))  # what a resume and a claim leave
    _start(run_id)
    with session_scope() as session:  # the run hands over to its WAIT's run, its event the latest
        plan = load_plan(session, enrollment_id, lock=True)
        store.reschedule(session, plan, due=datetime.now(UTC) + timedelta(hours=2), actor=Actor.FLOW,
                         event_type=EventType.WAIT_STARTED, flow_run_id=run_id)
    _set(run_id, Suspended(timeout_seconds=600, pause_key="ui-again"), force=False)
    _set(run_id, Running(), force=True)  # ... and that run was resumed and started again
    assert sync_enrollment_state(str(run_id)) == "ACTIVE"
    assert "PAUSED" not in event_types(enrollment_id)


@pytest.mark.parametrize("enrollment_id", [True, "1", None, -1, 10**12, 2**70])
def test_a_sync_run_for_a_hand_made_run_with_nonsense_parameters_does_nothing(unserved, enrollment_id):
    """An operator can start the sync flow for any run, and a run can carry any parameters."""
    from followups.flows.follow_up_sequence import follow_up_sequence
    from followups.flows.sync_enrollment_state import sync_enrollment_state

    with get_client(sync_client=True) as client:
        run = client.create_flow_run(follow_up_sequence, parameters={"enrollment_id": enrollment_id})
    _set(run.id, Suspended(timeout_seconds=600, pause_key="ui"))
    assert sync_enrollment_state(str(run.id)) is None
    assert sync_enrollment_state("not-a-run") is None and sync_enrollment_state(str(uuid.uuid4())) is None


def test_an_operators_cancel_after_the_runners_claim_is_honoured_when_the_run_starts(unserved):
    """The runner claims a waiting run before it is due; the operator cancels it in the UI; the
    runner starts it anyway and Prefect accepts Cancelled -> Running. The run sends nothing and
    the enrollment is CANCELLED, as the operator meant."""
    enrollment_id, run_id = _enrollment_with_a_run()
    _set(run_id, Pending(message="claimed by a runner"))
    _set(run_id, Cancelled(message="cancelled in the UI"))
    _start(run_id)
    assert prefect_runs.read_run(run_id).state.is_running()
    check = checkpoint(enrollment_id, run_id, starting=True)
    assert (check.next, check.plan.status) == (Next.STOP, "CANCELLED")
    assert "CANCELLED" in event_types(enrollment_id)


def test_a_run_killed_for_a_cancel_that_reports_a_crash_first_still_cancels(unserved):
    """The operator cancels a running run (Cancelling); the runner kills its process, whose
    engine reports Crashed before the runner reports Cancelled. That is the cancel, not a crash
    to repair with a new run."""
    from prefect.states import Crashed

    enrollment_id, run_id = _enrollment_with_a_run()
    _set(run_id, Pending(message="claimed by a runner"))
    _start(run_id)
    _set(run_id, Cancelling(message="cancelled in the UI"), force=False)
    # The engine reports its crash with force (what the runner log showed: Crashed after Cancelling).
    _set(run_id, Crashed(message="Execution was aborted by a termination signal."))
    assert prefect_runs.read_run(run_id).state.is_crashed()
    plan = reconcile_enrollment(enrollment_id)
    assert plan.status == "CANCELLED" and plan.prefect_flow_run_id == run_id
    assert "RECONCILED" not in event_types(enrollment_id)


def test_a_run_retried_in_prefect_after_a_cancel_is_no_cancel_of_its_start(unserved):
    """Scheduled again after the cancel (the UI's Retry, a resume): that start is not the one the
    cancel was about."""
    from prefect.states import AwaitingRetry

    enrollment_id, run_id = _enrollment_with_a_run()
    _set(run_id, Pending(message="claimed by a runner"))
    _set(run_id, Cancelled(message="cancelled in the UI"))
    _set(run_id, AwaitingRetry(scheduled_time=datetime.now(UTC)))
    _set(run_id, Pending(message="claimed by a runner"))
    _start(run_id)
    assert not run_history.cancel_requested(run_id)
    # The runner's own shutdown cancel is no operator's either.
    _set(run_id, Cancelled(message=run_history.RUNNER_SHUTDOWN_MESSAGE))
    _start(run_id)
    assert not run_history.cancel_requested(run_id)


def test_a_resume_done_in_prefect_lets_the_paused_enrollments_run_go_on(unserved):
    enrollment_id, run_id = _enrollment_with_a_run()
    pause_enrollment(enrollment_id)
    resume_flow_run(run_id)  # the UI's Resume: Scheduled "Resuming"
    _set(run_id, Pending(message="claimed by a worker"))
    _start(run_id)
    check = checkpoint(enrollment_id, run_id, starting=True)
    assert (check.next, check.plan.status) == (Next.GO, "ACTIVE")
    resumed = [t for t in event_types(enrollment_id) if t == "RESUMED"]
    assert resumed == ["RESUMED"]


def test_a_run_stopped_by_its_runner_shutting_down_is_replaced_not_cancelled(unserved):
    enrollment_id, run_id = _enrollment_with_a_run()
    _set(run_id, Pending())
    _set(run_id, Running())
    # What Prefect's runner does to each run it still has when it shuts down.
    _set(run_id, Cancelled(message=run_history.RUNNER_SHUTDOWN_MESSAGE))
    plan = reconcile_enrollment(enrollment_id)
    assert plan.status == "ACTIVE" and plan.prefect_flow_run_id != run_id
    assert "RECONCILED" in event_types(enrollment_id) and "CANCELLED" not in event_types(enrollment_id)


def test_an_operators_cancel_during_a_runner_shutdown_still_cancels(unserved):
    enrollment_id, run_id = _enrollment_with_a_run()
    _set(run_id, Pending())
    _set(run_id, Running())
    _set(run_id, Cancelling(message="cancelled in the UI"))
    _set(run_id, Cancelled(message=run_history.RUNNER_SHUTDOWN_MESSAGE))
    reconcile_enrollment(enrollment_id)
    assert enrollment_row(enrollment_id).status == "CANCELLED"


def test_a_sigterm_during_a_send_is_delivered_after_it():
    seen: list[int] = []
    previous = signal.signal(signal.SIGTERM, lambda signum, _frame: seen.append(signum))
    try:
        with stops_held():
            os.kill(os.getpid(), signal.SIGTERM)
            for _ in range(1000):  # Python runs handlers between bytecodes: give it many chances
                pass
            assert seen == []
        assert seen == [signal.SIGTERM]
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_a_thread_stop_during_a_send_is_delivered_after_it():
    """The fast worker's cancel (an exception raised in the run's thread) waits for the send."""
    from followups.worker.executing import _raise_in_thread

    class Stopped(Exception):
        pass

    inside, release = threading.Event(), threading.Event()
    seen: list[str] = []

    def send() -> None:
        try:
            with stops_held():
                inside.set()
                release.wait(5)
                for _ in range(1000):  # async exceptions land between bytecodes: give it chances
                    pass
                seen.append("send finished")
            for _ in range(1000):
                pass
            seen.append("went on after the send")
        except Stopped:
            seen.append("stopped")

    thread = threading.Thread(target=send)
    thread.start()
    assert inside.wait(5)
    ident = thread.ident
    assert stop_thread_when_safe(ident, lambda: _raise_in_thread(ident, Stopped)) is False
    release.set()
    thread.join(5)
    assert seen == ["send finished", "stopped"]
    # Outside a send the stop is immediate.
    calls: list[int] = []
    assert stop_thread_when_safe(ident, lambda: calls.append(1)) is True and calls == [1]

