"""HTTP API: bearer tokens (401s) and owner isolation (another user's objects are 404, unchanged)."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from api_support import ApiUser, enrollment_status, event_count, make_client, new_api_user
from followups.api_tokens import create_token, hash_token, revoke_tokens, verify_token
from followups.db.models import ApiToken, Sequence, User
from followups.db.session import session_scope
from support import FAST_SEQUENCE, new_enrollment, new_sequence, unique


# --- tokens ------------------------------------------------------------------------------------


def test_create_token_makes_the_user_and_stores_only_a_hash(database_url: str):
    name = unique("tokenuser")
    token = create_token(name, label="laptop")
    second = create_token(name)
    assert token != second and token.startswith("fu_") and len(token) > 40
    with session_scope() as session:
        user_id = session.scalars(select(User.id).where(User.name == name)).one()
        rows = session.scalars(select(ApiToken).where(ApiToken.user_id == user_id)).all()
        assert {row.token_hash for row in rows} == {hash_token(token), hash_token(second)}
        assert all(token not in row.token_hash for row in rows)
        assert {row.label for row in rows} == {"laptop", ""}
    assert verify_token(token) == user_id == verify_token(second)
    assert verify_token(token + "x") is None and verify_token("") is None and verify_token(None) is None


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer fu_not-a-real-token"},
        {"Authorization": "Bearer "},
        {"Authorization": "Basic dXNlcjpwYXNz"},
        {"Authorization": "Bearer " + "x" * 5000},
    ],
)
def test_missing_or_wrong_token_is_401(client: TestClient, headers: dict):
    for method, path in [
        ("GET", "/api/sequences"),
        ("POST", "/api/sequences"),
        ("GET", "/api/sequences/1"),
        ("PATCH", "/api/sequences/1"),
        ("GET", "/api/sequences/1/stats"),
        ("POST", "/api/enrollments"),
        ("GET", "/api/enrollments/1"),
        ("POST", "/api/enrollments/1/pause"),
        ("GET", "/api/enrollments/1/events"),
        ("POST", "/api/offers"),
    ]:
        response = client.request(method, path, headers=headers, json={})
        assert response.status_code == 401, (method, path, response.text)
        assert response.headers["www-authenticate"] == "Bearer"


def test_a_revoked_token_is_401(client: TestClient):
    user = new_api_user()
    assert client.get("/api/sequences", headers=user.headers).status_code == 200
    assert revoke_tokens(user.name) == 1
    assert client.get("/api/sequences", headers=user.headers).status_code == 401


# --- owner isolation ---------------------------------------------------------------------------


@pytest.fixture
def two_users(database_url: str) -> tuple[ApiUser, ApiUser, int, int]:
    """alice owns a sequence with an ACTIVE enrollment; bob is another user."""
    alice, bob = new_api_user(), new_api_user()
    sequence_id = new_sequence(alice.id, FAST_SEQUENCE)
    enrollment_id = new_enrollment(alice.id, sequence_id)
    return alice, bob, sequence_id, enrollment_id


def _snapshot(sequence_id: int, enrollment_id: int) -> tuple:
    with session_scope() as session:
        row = session.get(Sequence, sequence_id)
        return (row.name, row.version, row.archived_at, row.updated_at, enrollment_status(enrollment_id), event_count(enrollment_id))


def test_another_users_sequence_and_enrollment_are_404_and_unchanged(client: TestClient, two_users):
    alice, bob, sequence_id, enrollment_id = two_users
    before = _snapshot(sequence_id, enrollment_id)
    bob_sequence = new_sequence(bob.id, FAST_SEQUENCE)

    attempts = [
        ("GET", f"/api/sequences/{sequence_id}", None),
        ("PUT", f"/api/sequences/{sequence_id}", {"name": "hijacked", "steps": [{"type": "SMS", "body": "x"}]}),
        ("DELETE", f"/api/sequences/{sequence_id}", None),
        ("DELETE", f"/api/sequences/{sequence_id}?archive=true", None),
        ("GET", f"/api/sequences/{sequence_id}/stats", None),
        ("PATCH", f"/api/sequences/{sequence_id}", {"action": "pause", "enrollment_id": enrollment_id}),
        # The original plan's IDOR: bob's own sequence, alice's enrollment id.
        ("PATCH", f"/api/sequences/{bob_sequence}", {"action": "pause", "enrollment_id": enrollment_id}),
        ("PATCH", f"/api/sequences/{bob_sequence}", {"action": "resume", "enrollment_id": enrollment_id}),
        ("GET", f"/api/enrollments/{enrollment_id}", None),
        ("GET", f"/api/enrollments/{enrollment_id}/events", None),
        ("POST", f"/api/enrollments/{enrollment_id}/pause", None),
        ("POST", f"/api/enrollments/{enrollment_id}/resume", None),
        ("POST", f"/api/enrollments/{enrollment_id}/cancel", None),
        ("POST", "/api/enrollments", {"sequence_id": sequence_id, "deal": {
            "external_id": unique("D"), "property_address": "1 Main St", "seller_name": "Sam",
            "seller_email": "sam@example.com"}}),
        ("POST", "/api/offers", {"offer_id": unique("O"), "sequence_id": sequence_id, "deal": {
            "external_id": unique("D"), "property_address": "1 Main St", "seller_name": "Sam",
            "seller_email": "sam@example.com"}}),
    ]
    for method, path, body in attempts:
        response = client.request(method, path, json=body, headers=bob.headers)
        assert response.status_code == 404, (method, path, response.status_code, response.text)
        assert alice.name not in response.text
    assert _snapshot(sequence_id, enrollment_id) == before

    # bob sees none of alice's things in lists, and alice's deal is not his.
    assert client.get("/api/sequences", headers=bob.headers).json()["total"] == 1
    alice_deal = client.get(f"/api/enrollments/{enrollment_id}", headers=alice.headers).json()["deal_external_id"]
    assert client.get(f"/api/deals/{alice_deal}/events", headers=bob.headers).status_code == 404
    assert client.get(f"/api/deals/{alice_deal}/events", headers=alice.headers).status_code == 200


def test_a_404_for_someone_elses_object_looks_like_a_missing_one(client: TestClient, two_users):
    alice, bob, sequence_id, enrollment_id = two_users
    theirs = client.get(f"/api/enrollments/{enrollment_id}", headers=bob.headers)
    missing = client.get(f"/api/enrollments/{2**62}", headers=bob.headers)
    assert theirs.status_code == missing.status_code == 404
    assert theirs.json()["detail"].replace(str(enrollment_id), "N") == missing.json()["detail"].replace(str(2**62), "N")
