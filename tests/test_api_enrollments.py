"""HTTP API with Prefect: enrolling, offers, pause / resume / cancel of running sequences, health,
and a real sequence's sends joined with provider webhooks in the stats."""

from __future__ import annotations

import json
import os
import time
import uuid

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings

from api_support import ApiUser, SendGridSigner, enrollment_status, make_client, new_api_user, sg_body
from followups.errors import InvalidInputError
from followups.inputs import EnrollRequest, validate
from followups.settings import get_settings, reset_settings
from support import FAST_SEQUENCE, unique, unique_phone, wait_for
from test_inputs import DEALS, rows

EMAIL_WAIT_EMAIL = [
    {"type": "EMAIL", "subject": "Offer", "text": "Hi {{ seller.first_name }}"},
    {"type": "WAIT", "minutes": 30},
    {"type": "EMAIL", "subject": "Following up", "text": "Any news?"},
]


def deal(**overrides) -> dict:
    return {
        "external_id": unique("D"),
        "property_address": "12 Elm Street, Springfield",
        "seller_name": "Pat Seller",
        "seller_email": "pat@example.com",
        "seller_phone": unique_phone(),
        "offer_amount": "250000",
        **overrides,
    }


@pytest.fixture(scope="module")
def client(sequence_runner, signer) -> TestClient:
    with make_client() as client:
        yield client


@pytest.fixture
def user(database_url: str) -> ApiUser:
    return new_api_user()


def new_sequence(client: TestClient, user: ApiUser, steps=EMAIL_WAIT_EMAIL, **options) -> int:
    response = client.post("/api/sequences", json={"name": unique("seq"), "steps": steps, **options}, headers=user.headers)
    assert response.status_code == 201, response.text
    return response.json()["id"]


def event_types(client: TestClient, user: ApiUser, enrollment_id: int) -> list[str]:
    events = client.get(f"/api/enrollments/{enrollment_id}/events", headers=user.headers)
    assert events.status_code == 200
    return [e["event_type"] for e in events.json()]


def test_enroll_then_pause_resume_and_cancel_through_both_routes(client: TestClient, user: ApiUser):
    sequence_id = new_sequence(client, user)
    created = client.post("/api/enrollments", json={"sequence_id": sequence_id, "deal": deal()}, headers=user.headers)
    assert created.status_code == 201, created.text
    enrollment = created.json()
    assert enrollment["status"] == "ACTIVE" and enrollment["flow_run_id"] and enrollment["sequence_version"] == 1
    assert [step["type"] for step in enrollment["timeline"]] == ["EMAIL", "WAIT", "EMAIL"]
    eid = enrollment["id"]
    wait_for(lambda: "WAIT_STARTED" in event_types(client, user, eid), timeout=60, what="the wait to start")

    # Another user can neither pause it through their own sequence nor directly.
    mallory = new_api_user()
    mallory_sequence = new_sequence(client, mallory)
    for method, path, body in [
        ("PATCH", f"/api/sequences/{mallory_sequence}", {"action": "pause", "enrollment_id": eid}),
        ("PATCH", f"/api/sequences/{sequence_id}", {"action": "pause", "enrollment_id": eid}),
        ("POST", f"/api/enrollments/{eid}/pause", None),
        ("POST", f"/api/enrollments/{eid}/cancel", None),
    ]:
        assert client.request(method, path, json=body, headers=mallory.headers).status_code == 404
    assert enrollment_status(eid) == "ACTIVE"

    patch = f"/api/sequences/{sequence_id}"
    paused = client.patch(patch, json={"action": "pause", "enrollment_id": eid}, headers=user.headers)
    assert paused.status_code == 200 and paused.json()["status"] == "PAUSED"
    conflict = client.post(f"/api/enrollments/{eid}/pause", headers=user.headers)
    assert conflict.status_code == 409 and "PAUSED" in conflict.json()["detail"]
    resumed = client.post(f"/api/enrollments/{eid}/resume", headers=user.headers)
    assert resumed.status_code == 200 and resumed.json()["status"] == "ACTIVE"
    assert client.patch(patch, json={"action": "resume", "enrollment_id": eid}, headers=user.headers).status_code == 409
    assert client.post(f"/api/enrollments/{eid}/pause", headers=user.headers).json()["status"] == "PAUSED"
    assert client.patch(patch, json={"action": "resume", "enrollment_id": eid}, headers=user.headers).json()["status"] == "ACTIVE"

    cancelled = client.post(f"/api/enrollments/{eid}/cancel", headers=user.headers)
    assert cancelled.status_code == 200 and cancelled.json()["status"] == "CANCELLED"
    assert client.post(f"/api/enrollments/{eid}/cancel", headers=user.headers).status_code == 409
    assert client.post(f"/api/enrollments/{eid}/resume", headers=user.headers).status_code == 409
    types = event_types(client, user, eid)
    assert types.count("PAUSED") == 2 and types.count("RESUMED") == 2 and types[-1] == "CANCELLED"


def test_enroll_errors(client: TestClient, user: ApiUser):
    sequence_id = new_sequence(client, user)
    same = deal()
    assert client.post("/api/enrollments", json={"sequence_id": sequence_id, "deal": same}, headers=user.headers).status_code == 201
    duplicate = client.post("/api/enrollments", json={"sequence_id": sequence_id, "deal": same}, headers=user.headers)
    assert duplicate.status_code == 409 and "already enrolled" in duplicate.json()["detail"]

    disabled = new_sequence(client, user, enabled=False)
    response = client.post("/api/enrollments", json={"sequence_id": disabled, "deal": deal()}, headers=user.headers)
    assert response.status_code == 409 and "disabled" in response.json()["detail"]
    assert client.post("/api/enrollments", json={"sequence_id": 2**62, "deal": deal()}, headers=user.headers).status_code == 404

    for bad, field in [
        (deal(seller_phone="555-1234"), "deal.seller_phone"),
        (deal(seller_timezone="Mars/Olympus"), "deal.seller_timezone"),
        (deal(seller_email=None, seller_phone=None), "deal"),
        (deal(extra="x"), "deal.extra"),
    ]:
        response = client.post("/api/enrollments", json={"sequence_id": sequence_id, "deal": bad}, headers=user.headers)
        assert response.status_code == 422, response.text
        assert response.json()["errors"][0]["field"] == field


def test_offers_enroll_once_per_offer_id(client: TestClient, user: ApiUser):
    default = new_sequence(client, user, is_default=True)
    offer = {"offer_id": unique("offer"), "deal": deal(), "amount": "310000.50"}
    first = client.post("/api/offers", json=offer, headers=user.headers)
    assert first.status_code == 201, first.text
    assert first.json()["created"] and first.json()["enrolled"] and first.json()["enrollment_id"]
    again = client.post("/api/offers", json=offer, headers=user.headers)
    assert again.status_code == 200 and not again.json()["created"]
    assert again.json()["enrollment_id"] == first.json()["enrollment_id"]
    got = client.get(f"/api/enrollments/{first.json()['enrollment_id']}", headers=user.headers).json()
    assert got["sequence_id"] == default

    newcomer = new_api_user()  # no default sequence
    response = client.post("/api/offers", json={"offer_id": unique("offer"), "deal": deal()}, headers=newcomer.headers)
    assert response.status_code == 422 and response.json()["errors"][0]["field"] == "sequence_id"
    bad_amount = client.post("/api/offers", json={**offer, "offer_id": unique("o"), "amount": "-1"}, headers=user.headers)
    assert bad_amount.status_code == 422 and bad_amount.json()["errors"][0]["field"] == "amount"


def test_a_real_sequence_with_provider_webhooks_in_the_stats(client: TestClient, user: ApiUser, signer, fake_providers):
    steps = [FAST_SEQUENCE[0], FAST_SEQUENCE[2], FAST_SEQUENCE[4]]  # EMAIL, EMAIL, SMS: one flow run
    sequence_id = new_sequence(client, user, steps=steps)
    enrollment = client.post("/api/enrollments", json={"sequence_id": sequence_id, "deal": deal()}, headers=user.headers).json()
    eid = enrollment["id"]
    wait_for(lambda: enrollment_status(eid) == "COMPLETED", timeout=90, what="COMPLETED")
    events = client.get(f"/api/enrollments/{eid}/events", headers=user.headers).json()
    email_ids = [e["provider_message_id"] for e in events if e["event_type"] == "EMAIL_SENT"]
    [sms_id] = [e["provider_message_id"] for e in events if e["event_type"] == "SMS_SENT"]
    assert len(email_ids) == 2

    # SendGrid reports both emails delivered and the first opened, matched by X-Message-Id alone.
    now = int(time.time())
    webhook = [
        {"event": "delivered", "timestamp": now, "sg_message_id": f"{email_ids[0]}.f1.0", "sg_event_id": uuid.uuid4().hex},
        {"event": "delivered", "timestamp": now, "sg_message_id": f"{email_ids[1]}.f1.0", "sg_event_id": uuid.uuid4().hex},
        {"event": "open", "timestamp": now, "sg_message_id": f"{email_ids[0]}.f1.0", "sg_event_id": uuid.uuid4().hex},
    ]
    body = sg_body(webhook)
    assert client.post("/webhooks/sendgrid/events", content=body, headers=signer.headers(body)).json()["stored"] == 3

    stats = client.get(f"/api/sequences/{sequence_id}/stats", headers=user.headers).json()
    assert stats["enrolled"] == stats["completed"] == 1 and stats["active"] == 0
    assert (stats["sent"], stats["delivered"], stats["opened"], stats["bounced"]) == (3, 2, 1, 0)
    timeline = client.get(f"/api/enrollments/{eid}", headers=user.headers).json()["timeline"]
    assert [step["state"] for step in timeline] == ["done"] * 3
    assert sms_id


def test_healthz_checks_the_database_and_prefect(client: TestClient, monkeypatch):
    ok = client.get("/healthz")
    assert ok.status_code == 200 and ok.json() == {"status": "ok", "database": "ok", "prefect": "ok"}

    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings(updates={PREFECT_API_URL: "http://127.0.0.1:9/api"}):
        down = make_client().get("/healthz")
    assert down.status_code == 503 and down.json()["prefect"].startswith("unreachable") and down.json()["database"] == "ok"

    monkeypatch.setenv("FOLLOWUPS_DATABASE_URL", "postgresql+psycopg://postgres@127.0.0.1:9/nothing")
    reset_settings()
    try:
        no_db = client.get("/healthz")
        assert no_db.status_code == 503 and no_db.json()["database"].startswith("unreachable")
        # Any other request answers 503 too, never 500.
        user_headers = {"Authorization": "Bearer fu_whatever"}
        assert client.get("/api/sequences", headers=user_headers).status_code == 503
    finally:
        monkeypatch.undo()
        reset_settings()
    assert client.get("/healthz").status_code == 200


# -- validation (no Prefect: every request here is refused before anything is scheduled) ---------


@pytest.fixture(scope="module")
def plain_client(database_url: str) -> TestClient:
    with make_client() as client:
        yield client


def post_json(client: TestClient, path: str, body: dict, user: ApiUser):
    # json.dumps escapes lone surrogates and NUL as \u sequences, as a real client would.
    content = json.dumps(body, default=str)
    return client.post(path, content=content, headers={**user.headers, "Content-Type": "application/json"})


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"seller_timezone": "America"}, "deal.seller_timezone"),
        ({"seller_timezone": "Europe"}, "deal.seller_timezone"),
        ({"seller_timezone": "x" * 300}, "deal.seller_timezone"),
        ({"seller_timezone": "../../../etc/passwd"}, "deal.seller_timezone"),
        ({"seller_phone": "+1٥٠٣5550142"}, "deal.seller_phone"),
        ({"seller_name": "Pat\x00"}, "deal.seller_name"),
        ({"seller_name": "x" * 300}, "deal.seller_name"),
        ({"property_address": "\ud800"}, "deal.property_address"),
        ({"offer_amount": "-5"}, "deal.offer_amount"),
        ({"offer_amount": "NaN"}, "deal.offer_amount"),
        ({"context": {"notes": "x" * 100_000}}, "deal.context"),
        ({"context": {"k": {"nested\x00": 1}}}, "deal.context.k"),
        ({"external_id": "id with spaces"}, "deal.external_id"),
    ],
)
def test_bad_deals_are_422_naming_the_field_and_store_nothing(plain_client: TestClient, user: ApiUser, overrides, field):
    before = rows()
    for path, body in [
        ("/api/enrollments", {"sequence_id": 1, "deal": deal(**overrides)}),
        ("/api/offers", {"offer_id": unique("o"), "sequence_id": 1, "deal": deal(**overrides)}),
    ]:
        response = post_json(plain_client, path, body, user)
        assert response.status_code == 422, response.text
        assert response.json()["errors"][0]["field"] == field
    assert rows() == before


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"offer_id": "offer with spaces"}, "offer_id"),
        ({"offer_id": "o\x00"}, "offer_id"),
        ({"amount": "-5"}, "amount"),
        ({"amount": "NaN"}, "amount"),
        ({"amount": "1E+12"}, "amount"),
        ({"sequence_id": 2**63}, "sequence_id"),
        ({"sequence_id": True}, "sequence_id"),
    ],
)
def test_bad_offers_are_422_and_store_nothing(plain_client: TestClient, user: ApiUser, body, field):
    before = rows()
    response = post_json(plain_client, "/api/offers", {"offer_id": unique("o"), "deal": deal(), **body}, user)
    assert response.status_code == 422, response.text
    assert response.json()["errors"][0]["field"] == field
    assert rows() == before


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(body=DEALS)
def test_any_deal_is_a_422_naming_the_python_field_or_reaches_the_sequence_check(plain_client: TestClient, user: ApiUser, body):
    request = {"sequence_id": 2**62, "deal": body}  # no such sequence: a valid request ends in 404
    try:
        content = json.dumps(request, default=str)
    except ValueError:  # an integer JSON cannot print: no client can send it
        return
    before = rows()
    response = post_json(plain_client, "/api/enrollments", request, user)
    try:
        validate(EnrollRequest, json.loads(content))
    except InvalidInputError as exc:
        if len(content) > get_settings().api_max_body_bytes:
            assert response.status_code == 413
            return
        assert response.status_code == 422, response.text
        assert response.json()["errors"][0]["field"] == exc.field
    else:
        assert response.status_code == 404, response.text
    assert rows() == before
