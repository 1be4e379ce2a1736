"""The enrollment lifecycle: the transition table walked pair by pair on real rows, the one
reconciliation rule, and the guarantee that nothing else writes an enrollment's state."""

from __future__ import annotations

import itertools
import re
from pathlib import Path

import pytest
from sqlalchemy import func, select, update

import followups
from followups.db.models import FINISHED_STATUSES, OPEN_STATUSES, Enrollment, EnrollmentStatus, FollowUpEvent
from followups.db.session import session_scope
from followups.errors import InvalidStateError, NotFoundError
from followups.lifecycle import store
from followups.lifecycle.plan import load_plan
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
