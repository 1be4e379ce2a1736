"""HTTP API: sequence CRUD, validation, size limit, delete/archive and stats (no Prefect needed)."""

from __future__ import annotations

import json
import uuid

import pytest
from fastapi.testclient import TestClient
from hypothesis import example, HealthCheck, given, settings
from prefect.settings import PREFECT_API_URL, temporary_settings

from api_support import ApiUser, enrollment_status, make_client, new_api_user
from followups.db.models import Enrollment
from followups.db.session import session_scope
from followups.errors import InvalidInputError
from followups.inputs import SequenceInput, validate
from followups.settings import get_settings
from support import FAST_SEQUENCE, new_enrollment, new_sequence, unique
from test_inputs import SEQUENCES, rows

EMAIL_ONLY = [{"type": "EMAIL", "subject": "Offer on {{ deal.property_address }}", "text": "Hi {{ seller.first_name }}"}]


def create(client: TestClient, user: ApiUser, **overrides) -> dict:
    body = {"name": unique("seq"), "steps": FAST_SEQUENCE, **overrides}
    response = client.post("/api/sequences", json=body, headers=user.headers)
    assert response.status_code == 201, response.text
    return response.json()


def test_create_get_list_update_delete(client: TestClient, user: ApiUser):
    first = create(client, user, description="first")
    second = create(client, user, steps=EMAIL_ONLY, is_default=True)
    assert first["version"] == 1 and first["description"] == "first" and first["active_enrollments"] == []
    assert [step["type"] for step in first["steps"]] == ["EMAIL", "WAIT", "EMAIL", "WAIT", "SMS"]

    got = client.get(f"/api/sequences/{first['id']}", headers=user.headers)
    assert got.status_code == 200 and got.json()["name"] == first["name"]

    listed = client.get("/api/sequences", headers=user.headers).json()
    assert [item["id"] for item in listed["items"]] == [second["id"], first["id"]]  # newest first
    assert listed["total"] == 2
    page = client.get("/api/sequences?limit=1&offset=1", headers=user.headers).json()
    assert [item["id"] for item in page["items"]] == [first["id"]] and page["total"] == 2

    renamed = client.put(f"/api/sequences/{first['id']}", json={"name": "Renamed"}, headers=user.headers)
    assert renamed.status_code == 200
    assert renamed.json()["name"] == "Renamed" and renamed.json()["version"] == 1  # same steps: same version
    edited = client.put(f"/api/sequences/{first['id']}", json={"steps": EMAIL_ONLY}, headers=user.headers)
    assert edited.json()["version"] == 2 and len(edited.json()["steps"]) == 1

    deleted = client.delete(f"/api/sequences/{second['id']}", headers=user.headers)
    assert deleted.status_code == 200 and deleted.json() == {"id": second["id"], "result": "deleted"}
    assert client.get(f"/api/sequences/{second['id']}", headers=user.headers).status_code == 404


def test_put_makes_a_new_version_and_running_enrollments_keep_theirs(client: TestClient, user: ApiUser):
    sequence = create(client, user)
    enrollment_id = new_enrollment(user.id, sequence["id"])
    edited = client.put(f"/api/sequences/{sequence['id']}", json={"steps": EMAIL_ONLY}, headers=user.headers).json()
    assert edited["version"] == 2
    [open_one] = edited["active_enrollments"]
    assert open_one["id"] == enrollment_id and open_one["sequence_version"] == 1 and open_one["status"] == "ACTIVE"


def test_delete_with_open_enrollments_is_409_unless_archived(client: TestClient, user: ApiUser):
    sequence = create(client, user)
    enrollment_id = new_enrollment(user.id, sequence["id"])
    refused = client.delete(f"/api/sequences/{sequence['id']}", headers=user.headers)
    assert refused.status_code == 409
    assert "active or paused enrollment" in refused.json()["detail"]
    assert client.get(f"/api/sequences/{sequence['id']}", headers=user.headers).status_code == 200

    archived = client.delete(f"/api/sequences/{sequence['id']}?archive=true", headers=user.headers)
    assert archived.status_code == 200 and archived.json()["result"] == "archived"
    assert client.get(f"/api/sequences/{sequence['id']}", headers=user.headers).status_code == 404
    assert enrollment_status(enrollment_id) == "ACTIVE"  # it finishes on its pinned version
    # Its history stays visible in the stats.
    assert client.get(f"/api/sequences/{sequence['id']}/stats", headers=user.headers).json()["enrolled"] == 1


def test_a_used_sequence_without_open_enrollments_is_archived_not_removed(client: TestClient, user: ApiUser):
    sequence = create(client, user)
    enrollment_id = new_enrollment(user.id, sequence["id"])
    with session_scope() as session:
        session.get(Enrollment, enrollment_id).status = "COMPLETED"
    result = client.delete(f"/api/sequences/{sequence['id']}", headers=user.headers)
    assert result.status_code == 200 and result.json()["result"] == "archived"


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"steps": [{"type": "EMAIL", "text": "no subject"}]}, "steps.0.subject"),
        ({"steps": [{"type": "SMS", "body": "hi", "colour": "red"}]}, "steps.0.colour"),
        ({"steps": [{"type": "FAX", "body": "hi"}]}, "steps.0"),
        ({"steps": [{"type": "SMS", "body": "hi"}, {"type": "WAIT", "days": 1}]}, "steps.1"),
        ({"steps": [{"type": "SMS", "body": "{{ unclosed"}]}, "steps.0.body"),
        ({"steps": [{"type": "WAIT", "days": 1e300}, {"type": "SMS", "body": "hi"}]}, ""),
        ({"steps": []}, "steps"),
        ({"name": "", "steps": FAST_SEQUENCE}, "name"),
        ({"name": "x", "steps": FAST_SEQUENCE, "owner_id": 1}, "owner_id"),
        ({"name": "x"}, "steps"),
    ],
)
def test_bad_bodies_are_422_with_the_field_path(client: TestClient, user: ApiUser, body: dict, field: str):
    body = {"name": unique("seq"), **body}
    response = client.post("/api/sequences", json=body, headers=user.headers)
    assert response.status_code == 422, response.text
    fields = [error["field"] for error in response.json()["errors"]]
    assert any(f.startswith(field) for f in fields), fields


def test_malformed_json_and_bad_query_are_422(client: TestClient, user: ApiUser):
    response = client.post(
        "/api/sequences", content=b"{not json", headers={**user.headers, "Content-Type": "application/json"}
    )
    assert response.status_code == 422
    assert client.get("/api/sequences?limit=0", headers=user.headers).json()["errors"][0]["field"] == "limit"
    assert client.get("/api/sequences/abc", headers=user.headers).status_code == 422
    assert client.get(f"/api/sequences/{2**70}", headers=user.headers).status_code == 422


def test_unknown_fields_are_rejected_on_update_and_patch(client: TestClient, user: ApiUser):
    sequence = create(client, user)
    put = client.put(f"/api/sequences/{sequence['id']}", json={"version": 7}, headers=user.headers)
    assert put.status_code == 422 and put.json()["errors"][0]["field"] == "version"
    patch = client.patch(
        f"/api/sequences/{sequence['id']}", json={"action": "stop", "enrollment_id": 1}, headers=user.headers
    )
    assert patch.status_code == 422 and patch.json()["errors"][0]["field"] == "action"


def test_body_over_the_limit_is_413(client: TestClient, user: ApiUser):
    limit = get_settings().api_max_body_bytes
    big = {"name": "big", "description": "x" * (limit + 10), "steps": FAST_SEQUENCE}
    assert client.post("/api/sequences", json=big, headers=user.headers).status_code == 413

    def chunks():  # no Content-Length: the streamed size is counted
        for _ in range(limit // 65536 + 2):
            yield b"x" * 65536

    streamed = client.post(
        "/api/sequences", content=chunks(), headers={**user.headers, "Content-Type": "application/json"}
    )
    assert streamed.status_code == 413
    # Unauthenticated webhooks are limited too.
    assert client.post("/webhooks/twilio/inbound", content=b"x" * (limit + 1)).status_code == 413


def test_patch_pauses_and_resumes_only_through_its_own_sequence(client: TestClient, user: ApiUser):
    sequence = create(client, user)
    other_sequence = create(client, user)
    enrollment_id = new_enrollment(user.id, sequence["id"])

    wrong_sequence = client.patch(
        f"/api/sequences/{other_sequence['id']}",
        json={"action": "pause", "enrollment_id": enrollment_id},
        headers=user.headers,
    )
    assert wrong_sequence.status_code == 404
    assert enrollment_status(enrollment_id) == "ACTIVE"

    paused = client.patch(
        f"/api/sequences/{sequence['id']}", json={"action": "pause", "enrollment_id": enrollment_id}, headers=user.headers
    )
    assert paused.status_code == 200, paused.text
    assert paused.json()["status"] == "PAUSED" and paused.json()["id"] == enrollment_id
    again = client.patch(
        f"/api/sequences/{sequence['id']}", json={"action": "pause", "enrollment_id": enrollment_id}, headers=user.headers
    )
    assert again.status_code == 409 and "only an ACTIVE enrollment can be paused" in again.json()["detail"]
    missing = client.patch(
        f"/api/sequences/{sequence['id']}", json={"action": "pause", "enrollment_id": 2**62}, headers=user.headers
    )
    assert missing.status_code == 404


def test_enrollment_controls_without_a_prefect_run(client: TestClient, user: ApiUser):
    """Pause and cancel of an enrollment that has no flow run yet need no Prefect API."""
    sequence = create(client, user)
    enrollment_id = new_enrollment(user.id, sequence["id"])
    got = client.get(f"/api/enrollments/{enrollment_id}", headers=user.headers)
    assert got.status_code == 200
    assert [step["state"] for step in got.json()["timeline"]] == ["pending"] * 5
    assert client.post(f"/api/enrollments/{enrollment_id}/pause", headers=user.headers).json()["status"] == "PAUSED"
    assert client.post(f"/api/enrollments/{enrollment_id}/pause", headers=user.headers).status_code == 409
    assert client.post(f"/api/enrollments/{enrollment_id}/cancel", headers=user.headers).json()["status"] == "CANCELLED"
    assert client.post(f"/api/enrollments/{enrollment_id}/cancel", headers=user.headers).status_code == 409
    assert client.post(f"/api/enrollments/{enrollment_id}/resume", headers=user.headers).status_code == 409
    events = client.get(f"/api/enrollments/{enrollment_id}/events", headers=user.headers).json()
    assert [e["event_type"] for e in events] == ["ENROLLED", "PAUSED", "CANCELLED"]
    deal = got.json()["deal_external_id"]
    deal_events = client.get(f"/api/deals/{deal}/events", headers=user.headers).json()
    assert [e["id"] for e in deal_events] == [e["id"] for e in events]
    assert client.get("/api/deals/NOPE-404/events", headers=user.headers).status_code == 404


def test_stats_counts_enrollments_and_events(client: TestClient, user: ApiUser):
    sequence = create(client, user)
    new_enrollment(user.id, sequence["id"])
    paused = new_enrollment(user.id, sequence["id"])
    client.post(f"/api/enrollments/{paused}/pause", headers=user.headers)
    stats = client.get(f"/api/sequences/{sequence['id']}/stats", headers=user.headers)
    assert stats.status_code == 200
    assert stats.json() == {
        "sequence_id": sequence["id"], "enrolled": 2, "active": 1, "paused": 1, "completed": 0, "stopped": 0,
        "cancelled": 0, "failed": 0, "sent": 0, "delivered": 0, "opened": 0, "bounced": 0, "replied": 0,
        "unsubscribed": 0, "clicked": 0, "failed_sends": 0, "outcome_unknown": 0,
        # Nothing sent yet: no rate rather than a 0 that would read as "none delivered".
        "rates": dict.fromkeys(("delivery_rate", "open_rate", "click_rate", "reply_rate", "bounce_rate", "unsubscribe_rate")),
    }
    assert client.get(f"/api/sequences/{2**62}/stats", headers=user.headers).status_code == 404


def test_an_unreachable_prefect_api_is_a_503_and_changes_nothing(user: ApiUser):
    sequence_id = new_sequence(user.id, FAST_SEQUENCE)
    enrollment_id = new_enrollment(user.id, sequence_id)
    with session_scope() as session:  # as if its flow run had been created
        session.get(Enrollment, enrollment_id).prefect_flow_run_id = uuid.uuid4()
    with temporary_settings(updates={PREFECT_API_URL: "http://127.0.0.1:9/api"}):
        with make_client() as client:
            response = client.post(f"/api/enrollments/{enrollment_id}/pause", headers=user.headers)
    assert response.status_code == 503, response.text
    assert "Prefect" in response.json()["detail"]
    assert enrollment_status(enrollment_id) == "ACTIVE"


def test_an_unexpected_error_is_a_503_not_a_500(client: TestClient, user: ApiUser, monkeypatch):
    from followups import control

    def broken(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(control, "get_enrollment", broken)
    response = client.get("/api/enrollments/1", headers=user.headers)
    assert response.status_code == 503
    assert response.json() == {"detail": "the service could not complete this request; try again later"}


# -- validation: the same models and field paths as the Python API ------------------------------


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"description": "x" * 10_001, "steps": FAST_SEQUENCE}, "description"),
        ({"name": "a\x00b", "steps": FAST_SEQUENCE}, "name"),
        ({"name": "two\nlines", "steps": FAST_SEQUENCE}, "name"),
        ({"name": "x" * 300, "steps": FAST_SEQUENCE}, "name"),
        ({"description": "\ud800", "steps": FAST_SEQUENCE}, "description"),
        ({"steps": [{"type": "SMS", "body": "nul \x00 inside"}]}, "steps.0.body"),
        ({"steps": [{"type": "EMAIL", "subject": "s\x00", "text": "t"}]}, "steps.0.subject"),
        ({"steps": FAST_SEQUENCE, "enabled": "maybe"}, "enabled"),
    ],
)
def test_unstorable_values_are_422_and_store_nothing(client: TestClient, user: ApiUser, body: dict, field: str):
    before = rows()
    content = json.dumps({"name": unique("seq"), **body})  # ASCII with \u escapes, lone surrogates too
    response = client.post("/api/sequences", content=content, headers={**user.headers, "Content-Type": "application/json"})
    assert response.status_code == 422, response.text
    assert response.json()["errors"][0]["field"] == field
    assert rows() == before


def test_put_validates_like_post(client: TestClient, user: ApiUser):
    sequence = create(client, user)
    for body, field in [({"description": "x" * 10_001}, "description"), ({"name": "a\x00"}, "name"), ({"steps": []}, "steps")]:
        response = client.put(f"/api/sequences/{sequence['id']}", json=body, headers=user.headers)
        assert response.status_code == 422 and response.json()["errors"][0]["field"] == field
    assert client.get(f"/api/sequences/{sequence['id']}", headers=user.headers).json()["version"] == 1
    assert client.put(f"/api/sequences/{2**63}", json={"name": "x"}, headers=user.headers).status_code == 422


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@example(body={"name": "Three touches", "steps": [{"type": "SMS", "body": "{{ x"}, {"type": "WAIT", "days": 0.0}]})
@given(body=SEQUENCES)
def test_any_sequence_body_is_201_or_a_422_naming_the_python_field(client: TestClient, user: ApiUser, body):
    content = json.dumps(body, default=str)  # NaN and Decimal go out as JSON allows (NaN, strings)
    before = rows()
    response = client.post("/api/sequences", content=content, headers={**user.headers, "Content-Type": "application/json"})
    try:
        expected = validate(SequenceInput, json.loads(content))
    except InvalidInputError as exc:
        assert response.status_code == 422, response.text
        assert response.json()["errors"][0]["field"] == (exc.field or "")
        assert rows() == before
    else:
        assert response.status_code == 201, response.text
        assert response.json()["name"] == expected.name and response.json()["steps"] == expected.steps_json()
