"""What a follow-up run shows in the Prefect UI: a "Waiting" state with the next step's time, a
timeline artifact kept per enrollment (with what each step said), and log lines that tell the
story, with no seller address or body unless allowed."""

from __future__ import annotations

import json
import logging

from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, ArtifactFilterKey

from followups.flows.follow_up_sequence import follow_up_sequence
from followups.flows.story import artifact_key
from support import new_enrollment, new_owner, new_sequence, unique

STEPS = [
    {"type": "EMAIL", "subject": "Offer on {{ deal.property_address }}", "text": "Hi {{ seller.first_name }}, secret body"},
    {"type": "WAIT", "days": 3},
    {"type": "SMS", "body": "Hi {{ seller.first_name }}, any thoughts on our offer?"},
]


def _artifacts(**filters):
    with get_client(sync_client=True) as client:
        return client.read_artifacts(artifact_filter=ArtifactFilter(**filters))


def test_a_waiting_run_says_so_and_publishes_its_timeline(prefect_api, fake_providers, caplog):
    from followups.deployments.definitions import sequence_deployment

    sequence_deployment().apply()  # the wait's next run is created from it (due in 3 days)
    email = f"{unique('story')}@example.com"
    owner = new_owner()
    enrollment_id = new_enrollment(owner, new_sequence(owner, STEPS), seller_email=email)
    with caplog.at_level(logging.INFO):
        state = follow_up_sequence(enrollment_id, return_state=True)

    assert state.is_completed() and state.name == "Waiting"
    assert state.message.startswith("next step at ") and "WAIT step 1" in state.message
    assert state.result() == "WAITING"

    [timeline] = _artifacts(key=ArtifactFilterKey(any_=[artifact_key(enrollment_id)]))
    rows = json.loads(timeline.data) if isinstance(timeline.data, str) else timeline.data
    assert [(r["step"], r["type"], r["state"]) for r in rows] == [(0, "EMAIL", "done"), (1, "WAIT", "waiting"), (2, "SMS", "pending")]
    assert rows[0]["provider message id"] and rows[1]["at"].endswith("UTC")

    # What each step said is in the timeline (an SMS by its first words), not in one more artifact.
    assert rows[0]["message"] == "Offer on 12 Elm Street, Springfield" and rows[1]["message"] == ""
    assert rows[2]["message"] == "Hi Pat, any thoughts …"  # first words only: the rest is PII
    flow_run_id = state.state_details.flow_run_id
    assert [a.type for a in _artifacts(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]))] == ["table"]
    assert email not in timeline.data and "secret body" not in timeline.data

    logged = "\n".join(record.getMessage() for record in caplog.records)
    assert "EMAIL step 0 sent, subject 'Offer on 12 Elm Street, Springfield'" in logged
    assert "WAIT step 1 (3 days): next run 'deal" in logged  # as written, not what is left of it
    assert email not in logged and "secret body" not in logged


def test_a_finished_run_ends_completed_with_what_it_did(prefect_api, fake_providers):
    owner = new_owner()
    enrollment_id = new_enrollment(owner, new_sequence(owner, [STEPS[0]]), seller_email=f"{unique('story')}@example.com")
    state = follow_up_sequence(enrollment_id, return_state=True)
    assert state.name == "Completed" and state.message == "all 1 steps done" and state.result() == "COMPLETED"
    again = follow_up_sequence(enrollment_id, return_state=True)
    assert again.is_completed() and "nothing to do" in again.message
