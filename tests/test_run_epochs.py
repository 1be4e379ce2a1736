"""Runs carry their enrollment's epoch, and a new pending run is created after the commit that
calls for it: a run of an older epoch does nothing, the run of the current epoch is recognised
before its id is written back, and what a crash or an unreachable Prefect left uncreated the
sweep creates. Pauses and cancels committed meanwhile reach the run as it is created.

The runs belong to a deployment nobody serves, so no executor moves them behind the test's back.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest

from followups import prefect_runs
from followups.control import cancel_enrollment, pause_enrollment, resume_enrollment
from followups.db.session import session_scope
from followups.execution.checkpoint import Next, checkpoint
from followups.execution.waiting import run_wait
from followups.lifecycle import effects, load_plan, store
from followups.lifecycle.sweep import sweep
from followups.lifecycle.transitions import Actor
from followups.settings import reset_settings
from followups.steps import WaitStep
from support import enrollment_row, env_settings, event_types, new_enrollment, new_owner, new_sequence

STEPS = [{"type": "WAIT", "hours": 2}, {"type": "EMAIL", "subject": "Offer", "text": "Hi"}]


@pytest.fixture
def unserved(prefect_api, monkeypatch):
    from followups.deployments.definitions import sequence_deployment

    monkeypatch.setenv("FOLLOWUPS_DEPLOYMENT_NAME", f"follow-up-sequence/epochs-{uuid.uuid4().hex[:6]}")
    reset_settings()
    sequence_deployment().apply()
    yield
    monkeypatch.undo()
    reset_settings()


def _enrollment() -> int:
    owner = new_owner()
    return new_enrollment(owner, new_sequence(owner, STEPS))


def _reschedule(enrollment_id: int, due: datetime | None = None) -> None:
    with session_scope() as session:
        store.reschedule(session, load_plan(session, enrollment_id, lock=True), due=due, actor=Actor.API)


class _PrefectDown:
    """Run creation refused, as with Prefect unreachable right after the commit."""

    def __init__(self, _monkeypatch=None):
        self.monkeypatch = pytest.MonkeyPatch()  # its own: undoing it leaves the fixture's be

    def __enter__(self):
        def refuse(*args, **kwargs):
            raise ConnectionError("Prefect is unreachable")

        self.monkeypatch.setattr(prefect_runs, "schedule_sequence_run", refuse)

    def __exit__(self, *exc):
        self.monkeypatch.undo()


def test_a_waits_next_run_is_created_after_the_commit_and_carries_the_epoch(unserved):
    enrollment_id = _enrollment()
    prefect_runs.forbid_calls_in_transaction(True)
    try:
        outcome = run_wait(enrollment_id, 0, WaitStep(type="WAIT", hours=2), None)
    finally:
        prefect_runs.forbid_calls_in_transaction(False)
    row = enrollment_row(enrollment_id)
    assert outcome.outcome == "deferred" and outcome.next_run_id == row.prefect_flow_run_id is not None
    run = prefect_runs.read_run(row.prefect_flow_run_id)
    assert row.epoch == 1 and run.parameters == {"enrollment_id": enrollment_id, "epoch": 1}
    _reschedule(enrollment_id, datetime.now(UTC) + timedelta(hours=3))
    row = enrollment_row(enrollment_id)
    newer = prefect_runs.read_run(row.prefect_flow_run_id)
    assert row.epoch == 2 and newer.parameters["epoch"] == 2 and newer.idempotency_key.endswith(":epoch:2")


def test_a_run_of_an_older_epoch_does_nothing(unserved):
    enrollment_id = _enrollment()
    _reschedule(enrollment_id)
    stale = enrollment_row(enrollment_id).prefect_flow_run_id
    _reschedule(enrollment_id, datetime.now(UTC) + timedelta(hours=1))
    current = enrollment_row(enrollment_id).prefect_flow_run_id
    assert current != stale
    check = checkpoint(enrollment_id, stale, starting=True)
    assert check.next is Next.SUPERSEDED
    assert enrollment_row(enrollment_id).prefect_flow_run_id == current


def test_the_current_epochs_run_starting_before_its_id_is_written_back_records_itself(unserved, monkeypatch):
    enrollment_id = _enrollment()
    _reschedule(enrollment_id)
    old = enrollment_row(enrollment_id).prefect_flow_run_id
    with _PrefectDown(monkeypatch):
        _reschedule(enrollment_id)  # committed; its run not created
    row = enrollment_row(enrollment_id)
    assert (row.status, row.epoch, row.prefect_flow_run_id) == ("ACTIVE", 2, None)
    # The older run starting now is stale: the enrollment's next run is on its way.
    assert checkpoint(enrollment_id, old, starting=True).next is Next.SUPERSEDED
    # The run is created (a slow dispatcher) and starts before the id is written back.
    plan = load_plan_of(enrollment_id)
    run_id = prefect_runs.schedule_sequence_run(enrollment_id, plan.deal_ref, 0, scheduled_time=None, epoch=2)
    check = checkpoint(enrollment_id, run_id, starting=True)
    assert check.next is Next.GO and enrollment_row(enrollment_id).prefect_flow_run_id == run_id
    # The dispatcher then finds the same run (same key) already recorded, and leaves it be.
    order = effects.RunOrder(enrollment_id, 2, 0, plan.deal_ref, None)
    assert effects.deliver_run(order) == run_id
    assert prefect_runs.is_live(prefect_runs.read_run(run_id))


def load_plan_of(enrollment_id: int):
    with session_scope(read_only=True) as session:
        return load_plan(session, enrollment_id)


def test_the_sweep_creates_a_run_a_crash_left_uncreated_and_doctor_says_so(unserved, monkeypatch):
    from followups.doctor import _stranded

    enrollment_id = _enrollment()
    with _PrefectDown(monkeypatch):
        _reschedule(enrollment_id, datetime.now(UTC) + timedelta(hours=1))
    assert enrollment_row(enrollment_id).prefect_flow_run_id is None
    with env_settings({"FOLLOWUPS_EFFECT_OVERDUE_SECONDS": "0"}):
        checks = {check.name: check for check in _stranded()}
        assert not checks["pending runs"].ok and str(enrollment_id) in checks["pending runs"].detail
        report = sweep()
        assert enrollment_id in report.undelivered_runs and report.created_runs >= 1
        checks = {check.name: check for check in _stranded()}
    row = enrollment_row(enrollment_id)
    run = prefect_runs.read_run(row.prefect_flow_run_id)
    assert run.parameters["epoch"] == row.epoch == 1 and run.state.is_scheduled()
    assert enrollment_id not in sweep(repair=False).undelivered_runs


def test_a_pause_or_cancel_committed_before_the_run_was_created_reaches_it(unserved, monkeypatch):
    paused, cancelled = _enrollment(), _enrollment()
    for enrollment_id in (paused, cancelled):
        with _PrefectDown(monkeypatch):
            _reschedule(enrollment_id, datetime.now(UTC) + timedelta(hours=1))
    assert pause_enrollment(paused).status == "PAUSED"
    assert cancel_enrollment(cancelled).status == "CANCELLED"
    for enrollment_id in (paused, cancelled):
        row = enrollment_row(enrollment_id)
        plan = load_plan_of(enrollment_id)
        effects.deliver_run(effects.RunOrder(enrollment_id, row.epoch, 0, plan.deal_ref, row.next_due_at))
    assert prefect_runs.read_run(enrollment_row(paused).prefect_flow_run_id).state.is_paused()
    assert prefect_runs.read_run(enrollment_row(cancelled).prefect_flow_run_id).state.is_cancelled()
    # Resumed, the paused one goes on in its run, due when it was.
    assert resume_enrollment(paused).status == "ACTIVE"
    assert prefect_runs.read_run(enrollment_row(paused).prefect_flow_run_id).state.is_scheduled()


def test_resuming_an_enrollment_whose_next_run_was_never_created_schedules_one(unserved, monkeypatch):
    enrollment_id = _enrollment()
    with _PrefectDown(monkeypatch):
        _reschedule(enrollment_id, datetime.now(UTC) + timedelta(hours=1))
        pause_enrollment(enrollment_id)
    assert enrollment_row(enrollment_id).prefect_flow_run_id is None
    assert resume_enrollment(enrollment_id).status == "ACTIVE"
    row = enrollment_row(enrollment_id)
    assert row.epoch == 2 and row.prefect_flow_run_id is not None
    assert prefect_runs.read_run(row.prefect_flow_run_id).parameters["epoch"] == 2
    assert event_types(enrollment_id)[-2:] == ["PAUSED", "RESUMED"]


def test_a_pause_and_resume_while_the_next_run_is_on_its_way_leave_one_live_run(unserved, monkeypatch):
    """Paused and resumed in the instant between a WAIT's commit and its run's creation: the resume
    makes a run of a new epoch, the run on its way arrives stale and is cancelled, and what an
    operator sees of it in Prefect (its sync runs) changes nothing. Later controls act on the new
    run only."""
    from followups.lifecycle.reconcile import reconcile_enrollment, reconcile_handover

    enrollment_id = _enrollment()
    with _PrefectDown(monkeypatch):
        _reschedule(enrollment_id, datetime.now(UTC) + timedelta(hours=1))  # epoch 1, on its way
    on_its_way = effects.RunOrder(enrollment_id, 1, 0, load_plan_of(enrollment_id).deal_ref, enrollment_row(enrollment_id).next_due_at)
    assert pause_enrollment(enrollment_id).status == "PAUSED"
    assert resume_enrollment(enrollment_id).status == "ACTIVE"
    current = enrollment_row(enrollment_id).prefect_flow_run_id
    assert enrollment_row(enrollment_id).epoch == 2 and current is not None
    stale = effects.deliver_run(on_its_way)
    assert stale != current and prefect_runs.read_run(stale).state.is_cancelled()
    assert reconcile_handover(prefect_runs.read_run(stale)).status == "ACTIVE"  # its sync run
    assert pause_enrollment(enrollment_id).status == "PAUSED"
    assert reconcile_enrollment(enrollment_id).status == "PAUSED"  # the Suspended's sync run
    assert resume_enrollment(enrollment_id).status == "ACTIVE"
    assert reconcile_enrollment(enrollment_id).status == "ACTIVE"  # the Resuming's sync run
    assert reconcile_handover(prefect_runs.read_run(stale)).status == "ACTIVE"
    assert cancel_enrollment(enrollment_id).status == "CANCELLED"
    types = event_types(enrollment_id)
    assert (types.count("PAUSED"), types.count("RESUMED"), types[-1]) == (2, 2, "CANCELLED"), types
    assert prefect_runs.read_run(current).state.is_cancelled()
