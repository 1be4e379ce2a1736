"""Pause, resume and cancel write their effect on the Prefect run with the change, and carry it out
after the commit: no call to Prefect under a row lock, an effect left undelivered is found and
delivered by the sweep, a later effect is never overtaken by an earlier one, and a database with
no connection to spare answers a typed BusyError.

The enrollments here start an hour from now, so no executor is needed: their first run stays
Scheduled in the session's Prefect server, and each test looks at it there.
"""

from __future__ import annotations

import contextvars
import uuid
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta

import pytest
from prefect.client.orchestration import get_client
from sqlalchemy import select, text

from followups import prefect_runs
from followups.control import cancel_enrollment, enroll_deal, get_enrollment, pause_enrollment, resume_enrollment
from followups.db.models import RunEffect
from followups.db.session import session_scope
from followups.doctor import diagnose
from followups.errors import BusyError, InvalidStateError
from followups.lifecycle import effects
from followups.lifecycle.reconcile import reconcile_enrollment
from followups.lifecycle.sweep import sweep
from support import deal_input, enrollment_row, env_settings, event_types, events_of, new_owner, new_sequence

WAITING = [
    {"type": "EMAIL", "subject": "Offer", "text": "Hi"},
    {"type": "WAIT", "days": 3},
    {"type": "EMAIL", "subject": "Following up", "text": "Any news?"},
]


@pytest.fixture(scope="module", autouse=True)
def deployment(prefect_api):
    """Runs are created from it under a name no runner serves (the session's runner may serve the
    default one on this server), so they stay as this module leaves them."""
    from followups.deployments.definitions import sequence_deployment

    with env_settings({"FOLLOWUPS_DEPLOYMENT_NAME": f"follow-up-sequence/effects-{uuid.uuid4().hex[:6]}"}):
        sequence_deployment().apply()
        yield


def _enroll_later(owner: int | None = None, sequence_id: int | None = None):
    owner = owner or new_owner()
    sequence_id = sequence_id or new_sequence(owner, WAITING)
    start = (datetime.now(UTC) + timedelta(hours=1)).replace(microsecond=0)
    return enroll_deal(owner, deal_input(), sequence_id, start_at=start), start


def _run_state(flow_run_id):
    with get_client(sync_client=True) as client:
        return client.read_flow_run(flow_run_id).state


def _effect(enrollment_id: int) -> RunEffect | None:
    with session_scope() as session:
        return session.get(RunEffect, enrollment_id)


def test_the_guard_fails_a_call_to_prefect_inside_a_transaction(prefect_api):
    enrollment, _ = _enroll_later()
    prefect_runs.forbid_calls_in_transaction(True)
    try:
        prefect_runs.read_run(enrollment.flow_run_id)  # outside: fine
        with pytest.raises(AssertionError, match="inside a database transaction"):
            with session_scope(read_only=True):
                prefect_runs.read_run(enrollment.flow_run_id)
    finally:
        prefect_runs.forbid_calls_in_transaction(False)


def test_pause_resume_and_cancel_call_prefect_only_after_the_commit(prefect_api):
    enrollment, start = _enroll_later()  # enrolling still creates its run in the transaction
    prefect_runs.forbid_calls_in_transaction(True)
    try:
        paused = pause_enrollment(enrollment.id)
        assert paused.status == "PAUSED" and _run_state(enrollment.flow_run_id).name == "Suspended"
        resumed = resume_enrollment(enrollment.id)
        state = _run_state(enrollment.flow_run_id)
        # Due at the start time again, not now (a start time is a moment: a pause does not move it).
        assert resumed.status == "ACTIVE" and resumed.next_due_at == start
        assert state.is_scheduled() and state.state_details.scheduled_time == start
        cancelled = cancel_enrollment(enrollment.id)
        assert cancelled.status == "CANCELLED" and _run_state(enrollment.flow_run_id).is_cancelled()
    finally:
        prefect_runs.forbid_calls_in_transaction(False)
    effect = _effect(enrollment.id)
    assert (effect.kind, effect.seq, effect.delivered_seq, effect.last_error) == ("cancel", 3, 3, None)
    assert event_types(enrollment.id) == ["ENROLLED", "PAUSED", "RESUMED", "CANCELLED"]
    # The Prefect UI's timeline artifact follows, though no run of the enrollment ran.
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    from followups.flows.story import artifact_key

    with get_client(sync_client=True) as client:
        [latest] = client.read_latest_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[artifact_key(enrollment.id)])))
    assert "CANCELLED at step 0" in latest.description


def test_an_effect_a_crash_left_undelivered_is_reported_and_delivered_by_the_sweep(prefect_api, monkeypatch):
    enrollment, _ = _enroll_later()
    # The process dies between the commit and the call to Prefect.
    monkeypatch.setattr(effects, "deliver", lambda enrollment_id: False)
    assert pause_enrollment(enrollment.id).status == "PAUSED"
    monkeypatch.undo()
    assert _run_state(enrollment.flow_run_id).is_scheduled()
    assert _effect(enrollment.id).delivered_seq == 0

    # Not an operator's doing: nothing reads the still-Scheduled run as a resume in Prefect.
    assert reconcile_enrollment(enrollment.id).status == "PAUSED"
    assert event_types(enrollment.id) == ["ENROLLED", "PAUSED"]

    with env_settings({"FOLLOWUPS_EFFECT_OVERDUE_SECONDS": "0"}):
        problems = [check for check in diagnose() if check.name == "run effects"]
        assert not problems[0].ok and f"enrollment {enrollment.id} since" in problems[0].detail
        report = sweep()
        assert report.redelivered >= 1 and enrollment.id in [e for e, _, _ in report.undelivered]
        assert _run_state(enrollment.flow_run_id).name == "Suspended"
        assert _effect(enrollment.id).delivered_seq == 1
        assert [check.ok for check in diagnose() if check.name == "run effects"] == [True]


def test_a_resume_committed_while_the_pause_is_being_delivered_is_not_overtaken(prefect_api, monkeypatch):
    enrollment, start = _enroll_later()
    monkeypatch.setattr(effects, "deliver", lambda enrollment_id: False)
    pause_enrollment(enrollment.id)
    monkeypatch.undo()
    [pause] = effects._claim_many([enrollment.id])  # a dispatcher starts delivering the pause ...
    assert pause.kind is effects.Kind.SUSPEND

    resume_enrollment(enrollment.id)  # ... a resume commits meanwhile; its own delivery finds the claim taken
    assert _effect(enrollment.id).seq == 2 and _effect(enrollment.id).delivered_seq == 0

    effects.carry_out(pause)  # the late pause lands: the run is Suspended, the enrollment ACTIVE
    assert _run_state(enrollment.flow_run_id).is_paused()
    # What the sync run triggered by that Suspended would do.
    assert reconcile_enrollment(enrollment.id).status == "ACTIVE"
    assert "PAUSED" not in event_types(enrollment.id)[2:]

    assert effects._release(pause, None) is True  # it sees the newer effect ...
    assert effects.deliver(enrollment.id) is True  # ... and delivers it
    state = _run_state(enrollment.flow_run_id)
    row = enrollment_row(enrollment.id)
    assert state.is_scheduled() and state.state_details.scheduled_time == row.next_due_at == start
    assert row.status == "ACTIVE"
    assert event_types(enrollment.id) == ["ENROLLED", "PAUSED", "RESUMED"]


def test_concurrent_controls_on_many_enrollments_leave_every_run_agreeing(prefect_api):
    owner = new_owner()
    sequence_id = new_sequence(owner, WAITING)
    enrolled = [_enroll_later(owner, sequence_id)[0] for _ in range(30)]
    errors: list[BaseException] = []

    def controls(index: int) -> None:
        enrollment = enrolled[index]
        try:
            pause_enrollment(enrollment.id, owner_id=owner)
            if index % 2:
                resume_enrollment(enrollment.id, owner_id=owner)
            if index % 3 == 0:
                cancel_enrollment(enrollment.id, owner_id=owner)
        except BaseException as exc:  # noqa: BLE001 - collected and reported below
            errors.append(exc)

    with ThreadPoolExecutor(max_workers=30) as pool:  # each thread with this one's Prefect settings
        for future in [pool.submit(contextvars.copy_context().run, controls, i) for i in range(len(enrolled))]:
            future.result()
    assert errors == []
    for index, enrollment in enumerate(enrolled):
        state = _run_state(enrollment.flow_run_id)
        status = enrollment_row(enrollment.id).status
        if index % 3 == 0:
            assert status == "CANCELLED" and state.is_cancelled()
        elif index % 2:
            assert status == "ACTIVE" and state.is_scheduled()
        else:
            assert status == "PAUSED" and state.is_paused()
        effect = _effect(enrollment.id)
        assert effect.delivered_seq == effect.seq


@pytest.fixture
def tiny_pool(database_url) -> Iterator[None]:
    """One connection, and half a second to wait for it."""
    pool = {"FOLLOWUPS_DATABASE_POOL_SIZE": "1", "FOLLOWUPS_DATABASE_MAX_OVERFLOW": "0", "FOLLOWUPS_DATABASE_POOL_TIMEOUT_SECONDS": "0.5"}
    with env_settings(pool, new_engines=True):
        yield


def test_a_saturated_database_is_a_busy_error_everywhere(tiny_pool, cli):
    from api_support import make_client, new_api_user

    user = new_api_user()
    held = threading.Event()
    release = threading.Event()

    def hold_the_only_connection() -> None:
        with session_scope() as session:
            session.execute(text("SELECT 1"))
            held.set()
            release.wait(30)

    holder = threading.Thread(target=hold_the_only_connection)
    holder.start()
    try:
        assert held.wait(10)
        with pytest.raises(BusyError) as caught:
            get_enrollment(1)
        assert caught.value.retry_after > 0 and "busy" in str(caught.value)
        with make_client() as client:
            answer = client.get("/api/enrollments/1", headers=user.headers)
        assert answer.status_code == 503 and answer.headers["Retry-After"] == str(caught.value.retry_after)
        assert "busy" in answer.json()["detail"]
        code, out, err = cli("status", "1")
        assert code == 1 and err.strip().splitlines() == [f"error: {caught.value}"]
    finally:
        release.set()
        holder.join(10)


def test_effects_are_one_row_per_enrollment(prefect_api):
    enrollment, _ = _enroll_later()
    for _ in range(3):
        pause_enrollment(enrollment.id)
        resume_enrollment(enrollment.id)
    with session_scope() as session:
        rows = session.execute(select(RunEffect.seq, RunEffect.delivered_seq).where(RunEffect.enrollment_id == enrollment.id)).all()
    assert [tuple(row) for row in rows] == [(6, 6)]
    assert [e.content["source"] for e in events_of(enrollment.id) if e.event_type in ("PAUSED", "RESUMED")] == ["api"] * 6


def test_a_control_reads_the_run_again_when_an_effect_landed_after_its_read(prefect_api, monkeypatch):
    enrollment, start = _enroll_later()
    monkeypatch.setattr(effects, "deliver", lambda enrollment_id: False)
    pause_enrollment(enrollment.id)  # committed; its suspend not delivered yet
    monkeypatch.undo()
    reads = []
    read_run = prefect_runs.read_run

    def read_then_deliver(flow_run_id):
        run = read_run(flow_run_id)
        reads.append(run.state.type.value)
        if len(reads) == 1:  # the pause's suspend lands just after the resume read the run (Scheduled)
            monkeypatch.setattr(prefect_runs, "read_run", read_run)
            effects.deliver(enrollment.id)
            monkeypatch.setattr(prefect_runs, "read_run", read_then_deliver)
        return run

    monkeypatch.setattr(prefect_runs, "read_run", read_then_deliver)
    # With the stale read, the Scheduled run would look resumed in Prefect: RESUMED from
    # "prefect", then this resume refused as "already ACTIVE".
    assert resume_enrollment(enrollment.id).status == "ACTIVE"
    assert reads[:2] == ["SCHEDULED", "PAUSED"]  # the control's reads (then its own delivery's)
    assert [e.content["source"] for e in events_of(enrollment.id) if e.event_type in ("PAUSED", "RESUMED")] == ["api", "api"]
    state = _run_state(enrollment.flow_run_id)
    assert state.is_scheduled() and state.state_details.scheduled_time == enrollment_row(enrollment.id).next_due_at == start


def test_a_run_set_to_paused_through_prefects_api_pauses_and_its_resume_in_prefect_resumes(prefect_api):
    """Type PAUSED named "Paused" (not the UI's Suspend): Prefect's Resume would put it straight
    to Running with no process behind it, so the product turns it into a Suspended run, whose
    Resume reschedules it and reaches the enrollment."""
    from prefect.flow_runs import resume_flow_run
    from prefect.states import Paused

    from followups.flows.sync_enrollment_state import sync_enrollment_state

    enrollment, start = _enroll_later()
    with get_client(sync_client=True) as client:
        client.set_flow_run_state(enrollment.flow_run_id, Paused(), force=True)
    assert sync_enrollment_state(str(enrollment.flow_run_id)) == "PAUSED"  # what its Paused event triggers
    state = _run_state(enrollment.flow_run_id)
    assert state.is_paused() and state.state_details.pause_reschedule

    resume_flow_run(enrollment.flow_run_id)  # the UI's Resume
    assert _run_state(enrollment.flow_run_id).name == "Resuming"
    assert sync_enrollment_state(str(enrollment.flow_run_id)) == "ACTIVE"  # what Resuming triggers
    row = enrollment_row(enrollment.id)
    # Prefect's Resume made it due now; it is due at its start time again.
    assert row.next_due_at == start
    state = _run_state(enrollment.flow_run_id)
    assert state.is_scheduled() and state.state_details.scheduled_time == row.next_due_at
    assert [(e.event_type, e.content.get("source")) for e in events_of(enrollment.id)] == [("ENROLLED", None), ("PAUSED", "prefect"), ("RESUMED", "prefect")]


def test_status_shows_an_operators_suspend_not_recorded_yet_and_a_pause_then_agrees(prefect_api):
    from prefect.states import Suspended

    from api_support import make_client, new_api_user

    user = new_api_user()
    enrollment, _ = _enroll_later(user.id)
    with get_client(sync_client=True) as client:  # the UI's Suspend on the waiting run
        client.set_flow_run_state(enrollment.flow_run_id, Suspended(timeout_seconds=600), force=True)

    seen = get_enrollment(enrollment.id)
    assert (seen.status, seen.run_state) == ("ACTIVE", "Suspended")
    assert seen.in_prefect.startswith("PAUSED in Prefect")
    with make_client() as client:
        body = client.get(f"/api/enrollments/{enrollment.id}", headers=user.headers).json()
    assert (body["status"], body["run_state"], body["in_prefect"]) == ("ACTIVE", "Suspended", seen.in_prefect)
    assert event_types(enrollment.id) == ["ENROLLED"]  # reading wrote nothing

    # Status showed it paused in Prefect: pausing agrees rather than answering "already PAUSED".
    assert pause_enrollment(enrollment.id, owner_id=user.id).status == "PAUSED"
    assert [(e.event_type, e.content.get("source")) for e in events_of(enrollment.id)] == [("ENROLLED", None), ("PAUSED", "prefect")]
    after = get_enrollment(enrollment.id)
    assert (after.status, after.run_state, after.in_prefect) == ("PAUSED", "Suspended", None)
    with pytest.raises(InvalidStateError):  # a pause of what was PAUSED already is still refused
        pause_enrollment(enrollment.id)
