"""The enrollment lifecycle: the transition table walked pair by pair on real rows, the one
reconciliation rule, and the guarantee that nothing else writes an enrollment's state."""

from __future__ import annotations

import itertools
import re
import uuid
from pathlib import Path

import pytest
from sqlalchemy import func, select, update

import followups
from followups.db.models import FINISHED_STATUSES, OPEN_STATUSES, Enrollment, EnrollmentStatus, FollowUpEvent
from followups.db.session import session_scope
from followups.errors import InvalidStateError, NotFoundError
from followups.lifecycle import store
from followups.lifecycle.plan import load_plan
from followups.lifecycle.reconcile import Action, decide
from followups.lifecycle.transitions import TRANSITIONS, Actor, allowed, check
from support import new_enrollment, new_owner, new_sequence

STATUSES = list(EnrollmentStatus)


def _force_status(enrollment_id: int, status: EnrollmentStatus) -> None:
    """Test set-up only: put a row in a given status without going through the lifecycle."""
    with session_scope() as session:
        session.execute(update(Enrollment).where(Enrollment.id == enrollment_id).values(status=status.value))


def _snapshot(enrollment_id: int) -> tuple[str, int, int]:
    with session_scope() as session:
        row = session.get(Enrollment, enrollment_id)
        events = session.scalar(select(func.count()).select_from(FollowUpEvent).where(FollowUpEvent.enrollment_id == enrollment_id))
        return row.status, row.current_step, events


def test_open_and_finished_statuses_partition_every_status():
    assert OPEN_STATUSES | FINISHED_STATUSES == set(EnrollmentStatus)
    assert not OPEN_STATUSES & FINISHED_STATUSES
    assert all(EnrollmentStatus(s).is_open == (s in OPEN_STATUSES) for s in EnrollmentStatus)


def test_nothing_leaves_a_finished_status():
    for (source, _target), actors in TRANSITIONS.items():
        assert source not in FINISHED_STATUSES, f"{source} is final but the table lets {actors} move it"


@pytest.mark.parametrize("source,target", list(itertools.product(STATUSES, STATUSES)))
def test_every_status_pair_is_allowed_exactly_as_the_table_says(db, source, target):
    """Each pair, for each actor, on a real row: allowed moves write the status and its event;
    refused ones raise InvalidStateError and change nothing."""
    owner = new_owner()
    sequence = new_sequence(owner)
    for actor in Actor:
        enrollment_id = new_enrollment(owner, sequence)
        _force_status(enrollment_id, source)
        before = _snapshot(enrollment_id)
        expected = actor in TRANSITIONS.get((source, target), frozenset())
        assert allowed(source, target, actor) is expected
        with session_scope() as session:
            plan = load_plan(session, enrollment_id, lock=True)
            if source == target:
                # A move within a status is a step (advance / reschedule), never a status change.
                if expected:
                    check(enrollment_id, source, target, actor)
                    if actor is Actor.FLOW:
                        store.advance(session, plan, 0)
                else:
                    with pytest.raises(InvalidStateError):
                        check(enrollment_id, source, target, actor)
                continue
            if expected:
                moved = store.move(session, plan, target, actor=actor)
                assert moved.status == target
            else:
                with pytest.raises(InvalidStateError):
                    store.move(session, plan, target, actor=actor)
        status, step, events = _snapshot(enrollment_id)
        if source != target and expected:
            assert status == target and events == before[2] + 1
            with session_scope() as session:
                last = session.scalars(
                    select(FollowUpEvent).where(FollowUpEvent.enrollment_id == enrollment_id).order_by(FollowUpEvent.id.desc())
                ).first()
                assert last.event_type == store.STATUS_EVENTS[target].value
                assert last.content["source"] == actor.value
                if target in FINISHED_STATUSES:
                    assert session.get(Enrollment, enrollment_id).next_due_at is None
        elif source == target and expected and actor is Actor.FLOW:
            assert (status, step) == (source, 1)
        else:
            assert (status, step, events) == before


def test_a_refused_move_says_which_status_it_needs(db):
    owner = new_owner()
    enrollment_id = new_enrollment(owner, new_sequence(owner))
    with session_scope() as session:
        plan = load_plan(session, enrollment_id, lock=True)
        with pytest.raises(InvalidStateError, match="only a PAUSED enrollment can be resumed"):
            store.move(session, plan, EnrollmentStatus.ACTIVE, actor=Actor.API)
        paused = store.move(session, plan, EnrollmentStatus.PAUSED, actor=Actor.API)
        with pytest.raises(InvalidStateError, match="only an ACTIVE enrollment can be paused"):
            store.move(session, paused, EnrollmentStatus.PAUSED, actor=Actor.API)


def test_advance_refuses_another_step_than_the_current_one(db):
    owner = new_owner()
    enrollment_id = new_enrollment(owner, new_sequence(owner))
    with session_scope() as session:
        plan = load_plan(session, enrollment_id, lock=True)
        with pytest.raises(InvalidStateError, match="at step 0, not 2"):
            store.advance(session, plan, 2)
    assert _snapshot(enrollment_id)[1] == 0


def test_another_owners_enrollment_is_not_found_without_taking_its_lock(db):
    owner, other = new_owner(), new_owner()
    enrollment_id = new_enrollment(owner, new_sequence(owner))
    with session_scope() as holder:
        load_plan(holder, enrollment_id, lock=True)  # a step in flight holds the row
        with session_scope() as session:
            session.execute(select(func.set_config("lock_timeout", "200ms", True)))
            with pytest.raises(NotFoundError):
                load_plan(session, enrollment_id, lock=True, owner_id=other)
    for bad in (0, -1, 2**63, True, "1"):
        with session_scope() as session, pytest.raises(NotFoundError):
            load_plan(session, bad)  # type: ignore[arg-type]


RUN = uuid.uuid4()
OTHER_RUN = uuid.uuid4()


@pytest.mark.parametrize(
    "status,run_state,starting,expected",
    [
        ("ACTIVE", "SCHEDULED", None, Action.NONE),
        ("ACTIVE", "RUNNING", None, Action.NONE),
        ("ACTIVE", "PENDING", None, Action.NONE),
        ("ACTIVE", "PAUSED", None, Action.PAUSE),
        ("ACTIVE", "CANCELLED", None, Action.CANCEL),
        ("ACTIVE", "CANCELLING", None, Action.CANCEL),
        ("ACTIVE", None, None, Action.RESCHEDULE),
        ("ACTIVE", "COMPLETED", None, Action.RESCHEDULE),
        ("ACTIVE", "FAILED", None, Action.RESCHEDULE),
        ("ACTIVE", "CRASHED", None, Action.RESCHEDULE),
        ("PAUSED", "PAUSED", None, Action.NONE),
        ("PAUSED", "SCHEDULED", None, Action.RESUME),
        ("PAUSED", "PENDING", None, Action.RESUME),
        ("PAUSED", "RUNNING", None, Action.NONE),
        ("PAUSED", "RUNNING", RUN, Action.NONE),  # no resume in its history: claimed before the suspend
        ("PAUSED", "RUNNING", OTHER_RUN, Action.NONE),
        ("PAUSED", "CANCELLED", None, Action.CANCEL),
        ("PAUSED", "FAILED", None, Action.NONE),  # an expired suspend: stays paused
        ("PAUSED", None, None, Action.NONE),  # deleted while paused: resume starts a new run
        *[(s.value, state, None, Action.NONE) for s in sorted(FINISHED_STATUSES) for state in ("SCHEDULED", "PAUSED", None)],
    ],
)
def test_the_reconciliation_rule(status, run_state, starting, expected):
    assert decide(status, RUN, run_state, starting_run_id=starting).action is expected


def test_an_expired_suspend_pauses_an_active_enrollment_and_leaves_a_paused_one():
    assert decide("ACTIVE", RUN, "FAILED", suspend_expired=True).action is Action.PAUSE
    assert decide("PAUSED", RUN, "FAILED", suspend_expired=True).action is Action.NONE
    assert decide("PAUSED", RUN, "FAILED", starting_run_id=OTHER_RUN, suspend_expired=True).action is Action.ADOPT


def test_a_run_that_suspended_itself_is_resumed_when_its_enrollment_is_active_again():
    # The flow suspends itself only for a PAUSED enrollment: ACTIVE now means a resume came after.
    assert decide("ACTIVE", RUN, "PAUSED", suspended_itself=True).action is Action.RESUME_RUN
    assert decide("ACTIVE", RUN, "PAUSED").action is Action.PAUSE  # an operator's suspend
    assert decide("PAUSED", RUN, "PAUSED", suspended_itself=True).action is Action.NONE


def test_a_run_cancelled_before_its_claimed_start_cancels_the_enrollment():
    assert decide("ACTIVE", RUN, "RUNNING", starting_run_id=RUN, cancel_requested=True).action is Action.CANCEL
    assert decide("ACTIVE", RUN, "RUNNING", starting_run_id=RUN).action is Action.NONE
    # A run killed for a cancel may report Crashed (or Failed) before its runner reports Cancelled.
    assert decide("ACTIVE", RUN, "CRASHED", cancel_requested=True).action is Action.CANCEL
    assert decide("ACTIVE", RUN, "FAILED", cancel_requested=True).action is Action.CANCEL
    assert decide("ACTIVE", RUN, "CRASHED").action is Action.RESCHEDULE
    # Read only for the pending run starting: a run started by hand beside it only goes along.
    assert decide("ACTIVE", RUN, "RUNNING", starting_run_id=OTHER_RUN, cancel_requested=True).action is Action.NONE


def test_a_run_knows_its_own_suspend_from_an_operators():
    from types import SimpleNamespace

    from prefect.states import Running, Suspended

    from followups.prefect_runs import self_pause_key, suspended_itself

    def run(state):
        return SimpleNamespace(state=state)

    assert suspended_itself(run(Suspended(pause_key=self_pause_key(3))))
    assert suspended_itself(run(Suspended(pause_key="pause-1-1764194738000000000")))  # the older key
    assert not suspended_itself(run(Suspended(pause_key="followups-1a2b3c4d")))  # our API, from outside
    assert not suspended_itself(run(Suspended()))
    assert not suspended_itself(run(Running()))
    assert not suspended_itself(None)


@pytest.mark.parametrize("run_state", ["RUNNING", "PAUSED"])
def test_a_paused_enrollments_run_goes_on_only_when_its_history_shows_a_resume(run_state):
    # A worker that claimed the run before the pause suspended it starts it anyway: that is no
    # resume, and the flow must suspend itself again rather than turn the enrollment ACTIVE.
    assert decide("PAUSED", RUN, run_state, starting_run_id=RUN).action is Action.NONE
    assert decide("PAUSED", RUN, run_state, starting_run_id=RUN, resumed_in_prefect=True).action is Action.RESUME
    # A run started by hand alongside a live pending run only goes along, resumed or not.
    assert decide("PAUSED", RUN, run_state, starting_run_id=OTHER_RUN, resumed_in_prefect=True).action is Action.NONE


def test_a_run_stopped_by_its_runner_shutting_down_is_repaired_not_cancelled():
    assert decide("ACTIVE", RUN, "CANCELLED", stopped_by_runner=True).action is Action.RESCHEDULE
    assert decide("ACTIVE", RUN, "CANCELLED").action is Action.CANCEL  # an operator's cancel
    assert decide("PAUSED", RUN, "CANCELLED", stopped_by_runner=True).action is Action.NONE  # stays paused
    assert decide("PAUSED", RUN, "CANCELLED").action is Action.CANCEL
    # Like an ended run, it lets a run started by hand take the enrollment over.
    assert decide("ACTIVE", RUN, "CANCELLED", starting_run_id=OTHER_RUN, stopped_by_runner=True).action is Action.ADOPT
    assert decide("ACTIVE", RUN, "CANCELLED", starting_run_id=OTHER_RUN).action is Action.CANCEL


@pytest.mark.parametrize("status", list(EnrollmentStatus))
def test_an_enrollment_without_a_pending_run_has_nothing_to_reconcile(status):
    assert decide(status, None, None).action is Action.NONE


def test_only_the_lifecycle_store_writes_an_enrollments_state():
    """`update(Enrollment)` or `Enrollment(...)` anywhere else would be a second writer."""
    root = Path(followups.__file__).resolve().parent
    sources = list(root.rglob("*.py"))
    for package in ("flows", "tasks", "api", "deployments", "worker", "db", "providers"):
        try:
            module = __import__(f"followups.{package}", fromlist=["_"])
        except ImportError:
            continue
        sources += list(Path(module.__file__).resolve().parent.rglob("*.py"))
    writers = re.compile(r"update\(\s*Enrollment\s*\)|\bEnrollment\(|\.(status|current_step|next_due_at|prefect_flow_run_id)\s*=[^=]")
    offenders = []
    for path in set(sources):
        if path.name == "store.py" and path.parent.name == "lifecycle" or path.name == "models.py":
            continue
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if writers.search(line) and not line.lstrip().startswith("#"):
                offenders.append(f"{path.name}:{number}: {line.strip()}")
    assert offenders == []


def test_reading_an_enrollment_cannot_write(db, monkeypatch):
    """Reads run in a READ ONLY transaction: even a reconcile slipped into them would fail."""
    from sqlalchemy.exc import DBAPIError

    from followups import control
    from followups.lifecycle import timeline

    owner = new_owner()
    enrollment_id = new_enrollment(owner, new_sequence(owner))
    before = _snapshot(enrollment_id)
    assert control.get_enrollment(enrollment_id, owner_id=owner).status == "ACTIVE"
    assert control.list_events(enrollment_id=enrollment_id)[0]["event_type"] == "ENROLLED"
    assert _snapshot(enrollment_id) == before

    real_details = timeline.details

    def writing_details(session, plan):
        store.move(session, plan, EnrollmentStatus.PAUSED, actor=Actor.PREFECT)
        return real_details(session, plan)

    monkeypatch.setattr(control, "details", writing_details)
    with pytest.raises(DBAPIError, match="read-only transaction"):
        control.get_enrollment(enrollment_id)
    assert _snapshot(enrollment_id) == before
