"""Pause, resume and cancel many enrollments at once, through Python, the CLI and HTTP: one
answer per enrollment, idempotent, owner checked first, and each run in Prefect made to agree
(suspended, rescheduled for what was left of its wait, cancelled) with no call to Prefect
inside a transaction.

Like tests/test_effects.py, the enrollments start an hour from now under a deployment name no
runner serves, so their runs stay as the test leaves them.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest
from prefect.client.orchestration import get_client

from api_support import make_client, new_api_user
from followups import prefect_runs
from followups.control import control_many, enroll_deal, pause_enrollment
from followups.errors import InvalidInputError, NotFoundError
from support import deal_input, enrollment_row, env_settings, event_types, new_owner, new_sequence

WAITING = [{"type": "EMAIL", "subject": "Offer", "text": "Hi"}, {"type": "WAIT", "days": 3}, {"type": "SMS", "body": "Any news?"}]


@pytest.fixture(scope="module", autouse=True)
def deployment(prefect_api):
    from followups.deployments.definitions import sequence_deployment

    with env_settings({"FOLLOWUPS_DEPLOYMENT_NAME": f"follow-up-sequence/bulk-{uuid.uuid4().hex[:6]}"}):
        sequence_deployment().apply()
        yield


def _enroll(owner: int, sequence_id: int, n: int, **deal) -> tuple[list[int], datetime]:
    start = (datetime.now(UTC) + timedelta(hours=1)).replace(microsecond=0)
    return [enroll_deal(owner, deal_input(**deal), sequence_id, start_at=start).id for _ in range(n)], start


def _states(enrollment_ids: list[int]) -> list:
    runs = prefect_runs.read_runs([enrollment_row(e).prefect_flow_run_id for e in enrollment_ids])
    return [runs[enrollment_row(e).prefect_flow_run_id].state for e in enrollment_ids]


def test_a_sequence_is_paused_resumed_and_cancelled_with_one_answer_each_and_no_call_in_a_transaction():
    owner = new_owner()
    sequence_id = new_sequence(owner, WAITING)
    ids, start = _enroll(owner, sequence_id, 60)  # more than one batch of 50
    pause_enrollment(ids[0])  # already paused: unchanged
    other_sequence, _ = _enroll(owner, new_sequence(owner, WAITING), 2)
    prefect_runs.forbid_calls_in_transaction(True)
    try:
        paused = control_many("pause", owner, sequence_id=sequence_id)
        assert paused.counts() == {"done": 59, "unchanged": 1, "error": 0}
        assert {a.enrollment_id for a in paused.answers} == set(ids)
        assert {enrollment_row(e).status for e in ids} == {"PAUSED"}
        assert {s.name for s in _states(ids)} == {"Suspended"}
        assert {enrollment_row(e).status for e in other_sequence} == {"ACTIVE"}

        again = control_many("pause", owner, sequence_id=sequence_id)
        assert again.counts() == {"done": 0, "unchanged": 60, "error": 0}
        assert [event_types(e).count("PAUSED") for e in ids] == [1] * 60

        resumed = control_many("resume", owner, sequence_id=sequence_id)
        assert resumed.counts() == {"done": 60, "unchanged": 0, "error": 0}
        states = _states(ids)
        assert {s.type.value for s in states} == {"SCHEDULED"}
        # A start time is a moment, not a wait: it stays as it was.
        assert {s.state_details.scheduled_time for s in states} == {start}

        cancelled = control_many("cancel", owner, every=True)
        assert cancelled.counts() == {"done": 62, "unchanged": 0, "error": 0}
        assert {s.type.value for s in _states(ids + other_sequence)} == {"CANCELLED"}
        assert control_many("cancel", owner, every=True).answers == []  # nothing open is left
    finally:
        prefect_runs.forbid_calls_in_transaction(False)


def test_deals_are_answered_one_by_one_and_other_owners_are_untouched():
    owner, other = new_owner(), new_owner()
    mine, _ = _enroll(owner, new_sequence(owner, WAITING), 1, external_id="D-bulk-mine-" + uuid.uuid4().hex[:6])
    theirs, _ = _enroll(other, new_sequence(other, WAITING), 1, external_id="D-bulk-theirs-" + uuid.uuid4().hex[:6])
    from followups.control import get_enrollment

    my_ref = get_enrollment(mine[0]).deal_external_id
    their_ref = get_enrollment(theirs[0]).deal_external_id
    result = control_many("pause", owner, deals=[my_ref, their_ref, "D-nowhere"])
    answers = {a.deal: a for a in result.answers}
    assert answers[my_ref].outcome == "done" and answers[my_ref].status == "PAUSED"
    # Another owner's deal is no deal of this owner's: it says so, and is not touched.
    assert answers[their_ref].outcome == "error" and answers["D-nowhere"].outcome == "error"
    assert enrollment_row(theirs[0]).status == "ACTIVE"
    with pytest.raises(NotFoundError):
        control_many("pause", owner, sequence_id=new_sequence(other, WAITING))
    for bad in ({}, {"sequence_id": 1, "every": True}, {"deals": []}, {"deals": ["bad id!"]}):
        with pytest.raises(InvalidInputError):
            control_many("pause", owner, **bad)
    with pytest.raises(InvalidInputError):
        control_many("stop", owner, every=True)


def test_http_and_cli(cli):
    user = new_api_user()
    sequence_id = new_sequence(user.id, WAITING)
    ids, _ = _enroll(user.id, sequence_id, 3)
    with make_client() as client:
        response = client.post("/api/enrollments/bulk/pause", json={"sequence_id": sequence_id}, headers=user.headers)
        assert response.status_code == 200, response.text
        assert response.json()["counts"] == {"done": 3, "unchanged": 0, "error": 0}
        assert client.post("/api/enrollments/bulk/pause", json={}, headers=user.headers).status_code == 422
        assert client.post("/api/enrollments/bulk/explode", json={"all": True}, headers=user.headers).status_code == 422
        other = new_api_user()
        foreign = client.post("/api/enrollments/bulk/cancel", json={"sequence_id": sequence_id}, headers=other.headers)
        assert foreign.status_code == 404
    code, out, err = cli("bulk", "resume", "--sequence", str(sequence_id), "--owner", user.name)
    assert code == 0, out + err
    assert "resume: 3 done, 0 unchanged, 0 error(s)" in out
    code, out, err = cli("bulk", "pause", "--deal", "D-nowhere", "--owner", user.name)
    assert code == 1 and "deal D-nowhere: no such deal" in out
    assert {enrollment_row(e).status for e in ids} == {"ACTIVE"}
