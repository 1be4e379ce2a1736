"""Prefect is called only outside database transactions, so never under an enrollment's row lock.

The whole suite runs with the guard on (tests/conftest.py sets it for every process it starts):
any call to Prefect made inside a `session_scope` fails the test that made it. Here: the guard
itself, and `reconcile.under_lock`, which reads Prefect first and uses what it saw under the lock
only if nothing moved in between."""

from __future__ import annotations

import os
import uuid

import pytest
from sqlalchemy import text

from followups import prefect_runs
from followups.db.session import session_scope
from followups.errors import BusyError
from followups.lifecycle import reconcile as reconcile_module
from followups.lifecycle.reconcile import LOOK_ATTEMPTS, under_lock
from support import new_enrollment, new_owner, new_sequence

STEPS = [{"type": "EMAIL", "subject": "s", "text": "t"}]


def test_the_suite_runs_with_the_guard_on_in_every_process():
    assert os.environ["FOLLOWUPS_FORBID_PREFECT_IN_TRANSACTION"] == "1"


def test_a_call_to_prefect_inside_a_transaction_fails(db):
    with session_scope(read_only=True), pytest.raises(AssertionError, match="inside a database transaction"):
        prefect_runs.read_run(uuid.uuid4())


def test_the_first_run_of_a_new_enrollment_is_the_one_call_allowed_inside(db, monkeypatch):
    """Creating it before the insert commits is what makes an unreachable Prefect store nothing."""
    calls = []
    monkeypatch.setattr(prefect_runs, "in_transaction", lambda: True)
    monkeypatch.setattr(prefect_runs, "_client", lambda: (prefect_runs._guard(), calls.append(1)))
    with prefect_runs.allowed_in_transaction():
        prefect_runs._client()
    assert calls == [1]
    with pytest.raises(AssertionError):
        prefect_runs._client()


def _bump_epoch(enrollment_id: int) -> None:
    with session_scope() as session:
        session.execute(text("UPDATE enrollments SET epoch = epoch + 1 WHERE id = :i"), {"i": enrollment_id})


def test_under_lock_looks_again_when_the_enrollment_moved_after_its_look(db, monkeypatch):
    owner = new_owner()
    enrollment_id = new_enrollment(owner, new_sequence(owner, STEPS))
    looks = []
    real_look = reconcile_module.look

    def look(*args, **kwargs):
        looks.append(kwargs["epoch"])
        sight = real_look(*args, **kwargs)
        if len(looks) == 1:
            _bump_epoch(enrollment_id)  # a change that commits between the look and the lock
        return sight

    monkeypatch.setattr(reconcile_module, "look", look)
    acted = []
    result = under_lock(enrollment_id, lambda session, plan, sight: acted.append((plan.epoch, sight.epoch)) or "done")
    assert result == "done"
    assert looks == [0, 1] and acted == [(1, 1)]  # acted once, on the second look, which stands


def test_under_lock_gives_up_with_a_busy_error_when_it_never_settles(db, monkeypatch):
    owner = new_owner()
    enrollment_id = new_enrollment(owner, new_sequence(owner, STEPS))
    real_look = reconcile_module.look
    looks = []

    def look(*args, **kwargs):
        looks.append(1)
        sight = real_look(*args, **kwargs)
        _bump_epoch(enrollment_id)
        return sight

    monkeypatch.setattr(reconcile_module, "look", look)
    with pytest.raises(BusyError, match=f"enrollment {enrollment_id} is changing too fast"):
        under_lock(enrollment_id, lambda session, plan, sight: pytest.fail("acted on a stale sight"))
    assert len(looks) == LOOK_ATTEMPTS


def test_under_lock_checks_the_owner_before_anything_else(db):
    owner, other = new_owner(), new_owner()
    enrollment_id = new_enrollment(owner, new_sequence(owner, STEPS))
    from followups.errors import NotFoundError

    with pytest.raises(NotFoundError):
        under_lock(enrollment_id, lambda session, plan, sight: pytest.fail("acted for another owner"), owner_id=other)
