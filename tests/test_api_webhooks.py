"""Provider webhooks through the app: signatures (403, nothing stored), matching, idempotency,
replies and opt-outs that stop enrollments, and what they add to the sequence stats."""

from __future__ import annotations

import base64
import os
import time
import uuid
from urllib.parse import urlencode

import pytest
from fastapi.testclient import TestClient
from twilio.request_validator import RequestValidator

from api_support import (
    SG_SIGNATURE,
    SG_TIMESTAMP,
    ApiUser,
    SendGridSigner,
    enrollment_status,
    event_count,
    events_with_key_prefix,
    make_client,
    multipart,
    new_api_user,
    sg_body,
)
from followups.api.signatures import twilio_signature
from followups.db.events import record_event
from followups.db.models import EventType
from followups.db.session import session_scope
from followups.settings import get_settings, reset_settings
from followups.replies import email_suppressed
from support import (
    FAST_SEQUENCE, deal_input, enrollment_row, event_types, events_of, new_enrollment, new_sequence, unique, unique_phone,
    wait_for,
)

TWILIO_TOKEN = "twilio-test-token"  # tests/conftest.py TEST_ENV
STATUS_URL = "http://testserver/webhooks/twilio/status"
INBOUND_URL = "http://testserver/webhooks/twilio/inbound"
GLOBAL_NUMBER = "+15005550006"  # Settings.twilio_from_number, for owners without a number


@pytest.fixture(scope="module")
def signer(database_url: str):
    signer = SendGridSigner()
    os.environ["FOLLOWUPS_SENDGRID_WEBHOOK_PUBLIC_KEY"] = signer.public_key
    reset_settings()
    assert get_settings().twilio_auth_token.get_secret_value() == TWILIO_TOKEN
    yield signer
    os.environ.pop("FOLLOWUPS_SENDGRID_WEBHOOK_PUBLIC_KEY", None)
    reset_settings()


@pytest.fixture(scope="module")
def client(signer) -> TestClient:
    with make_client() as client:
        yield client


@pytest.fixture
def user(database_url: str) -> ApiUser:
    return new_api_user()


def sent(enrollment_id: int, step_index: int, event_type: EventType, message_id: str) -> None:
    """What the step task writes after a provider accepted a message."""
    with session_scope() as session:
        record_event(
            session, enrollment_id=enrollment_id, event_type=event_type, step_index=step_index,
            status="sent", provider_message_id=message_id,
        )


def sg_event(event: str, enrollment_id: int | None = None, step_index: int | None = 0, **extra) -> dict:
    item = {
        "email": "pat@example.com",
        "timestamp": int(time.time()),
        "event": event,
        "sg_event_id": uuid.uuid4().hex,
        "sg_message_id": extra.pop("sg_message_id", f"{uuid.uuid4().hex[:22]}.filterdrecv-1-2-3.0"),
        "category": ["followups"],
        **extra,
    }
    if enrollment_id is not None:
        item["enrollment_id"] = str(enrollment_id)
        item["step_index"] = str(step_index)
    return item


def post_sg(client: TestClient, signer: SendGridSigner, events: list[dict], **kw):
    body = sg_body(events)
    return client.post("/webhooks/sendgrid/events", content=body, headers=signer.headers(body, **kw))


def twilio_post(client: TestClient, url: str, params: dict[str, str], *, token: str = TWILIO_TOKEN, signature=None):
    signature = RequestValidator(token).compute_signature(url, params) if signature is None else signature
    headers = {"Content-Type": "application/x-www-form-urlencoded"}
    if signature:
        headers["X-Twilio-Signature"] = signature
    return client.post(url.replace("http://testserver", ""), content=urlencode(params).encode(), headers=headers)


# --- SendGrid event webhook -------------------------------------------------------------------


def test_sendgrid_events_are_matched_stored_once_and_counted(client, signer, user):
    sequence_id = new_sequence(user.id, FAST_SEQUENCE)
    enrollment_id = new_enrollment(user.id, sequence_id)
    sent(enrollment_id, 0, EventType.EMAIL_SENT, "xmsg-" + uuid.uuid4().hex[:12])
    events = [
        sg_event("delivered", enrollment_id),
        sg_event("open", enrollment_id),
        sg_event("open", enrollment_id, timestamp=int(time.time()) + 1),
        sg_event("bounce", enrollment_id, step_index=2, reason="550 mailbox full", status="5.2.2"),
    ]
    first = post_sg(client, signer, events)
    assert first.status_code == 200, first.text
    # The bounce stops the enrollment (see the bounce tests below).
    assert first.json() == {"received": 4, "stored": 4, "duplicates": 0, "stopped": 1}
    provider = [e for e in events_of(enrollment_id) if e.event_type == "PROVIDER_EVENT"]
    assert [(e.status, e.step_index) for e in provider] == [("delivered", 0), ("open", 0), ("open", 0), ("bounce", 2)]
    assert provider[3].failure_reason == "550 mailbox full"
    assert provider[0].provider_message_id == events[0]["sg_message_id"].split(".")[0]

    # SendGrid redelivers the same batch (new signature timestamp): nothing new is stored.
    again = post_sg(client, signer, events)
    assert again.json() == {"received": 4, "stored": 0, "duplicates": 4, "stopped": 0}
    assert event_count(enrollment_id, event_type="PROVIDER_EVENT") == 4
    assert event_count(enrollment_id, event_type="BOUNCED") == 1

    stats = client.get(f"/api/sequences/{sequence_id}/stats", headers=user.headers).json()
    assert (stats["sent"], stats["delivered"], stats["opened"], stats["bounced"]) == (1, 1, 1, 1)


def test_sendgrid_event_without_custom_args_is_matched_by_x_message_id(client, signer, user):
    enrollment_id = new_enrollment(user.id, new_sequence(user.id, FAST_SEQUENCE))
    x_message_id = "Xm" + uuid.uuid4().hex[:20]
    sent(enrollment_id, 2, EventType.EMAIL_SENT, x_message_id)
    response = post_sg(client, signer, [sg_event("delivered", sg_message_id=f"{x_message_id}.filter0001.16.0")])
    assert response.json()["stored"] == 1
    [event] = [e for e in events_of(enrollment_id) if e.event_type == "PROVIDER_EVENT"]
    assert (event.step_index, event.content["event"]) == (2, "delivered")

    # An event for a message we never sent (or a forged enrollment id) is kept unmatched.
    stray = sg_event("delivered", enrollment_id=2**62)
    assert post_sg(client, signer, [stray]).json()["stored"] == 1
    [kept] = events_with_key_prefix(f"sg:{stray['sg_message_id']}")
    assert kept.enrollment_id is None


def test_sendgrid_unsubscribe_opts_out_and_stops(client, signer, user):
    sequence_id = new_sequence(user.id, FAST_SEQUENCE)
    email = f"{unique('seller')}@example.com"
    enrollment_id = new_enrollment(user.id, sequence_id, seller_email=email)
    other_sequence_same_seller = new_enrollment(user.id, new_sequence(user.id, FAST_SEQUENCE), seller_email=email)
    bystander = new_enrollment(user.id, sequence_id)
    events = [sg_event("unsubscribe", enrollment_id, email=email)]
    response = post_sg(client, signer, events)
    assert response.status_code == 200 and response.json()["stopped"] == 2
    assert enrollment_status(enrollment_id) == enrollment_status(other_sequence_same_seller) == "STOPPED"
    assert enrollment_status(bystander) == "ACTIVE"
    assert event_types(enrollment_id)[-3:] == ["PROVIDER_EVENT", "OPTED_OUT", "STOPPED"]

    assert post_sg(client, signer, events).json() == {"received": 1, "stored": 0, "duplicates": 1, "stopped": 0}
    assert event_types(enrollment_id).count("OPTED_OUT") == 1
    assert client.get(f"/api/sequences/{sequence_id}/stats", headers=user.headers).json()["unsubscribed"] == 1


@pytest.mark.parametrize(
    "event",
    [
        {"event": "bounce", "type": "bounce", "reason": "550 5.1.1 no such user", "status": "5.1.1"},
        {"event": "bounce", "type": "blocked", "reason": "554 blocked by policy", "status": "5.7.1"},
        {"event": "dropped", "reason": "Bounced Address", "status": "5.0.0"},
        {"event": "dropped", "reason": "Invalid", "status": "5.1.3"},
    ],
    ids=["hard-bounce", "blocked", "dropped-bounced-address", "dropped-invalid"],
)
def test_a_bounce_stops_the_owners_mail_to_the_address_and_suppresses_it(client, signer, user, event):
    email = f"{unique('seller')}@example.com"
    enrollment_id = new_enrollment(user.id, new_sequence(user.id, FAST_SEQUENCE), seller_email=email)
    same_address = new_enrollment(user.id, new_sequence(user.id, FAST_SEQUENCE), seller_email=email.upper())
    other_owner = new_api_user()
    theirs = new_enrollment(other_owner.id, new_sequence(other_owner.id, FAST_SEQUENCE), seller_email=email)
    response = post_sg(client, signer, [sg_event(enrollment_id=enrollment_id, email=email, **event)])
    assert response.status_code == 200 and response.json()["stopped"] == 2
    assert enrollment_status(enrollment_id) == enrollment_status(same_address) == "STOPPED"
    assert enrollment_status(theirs) == "ACTIVE"  # another owner's mail, another sender
    stopped = [e for e in events_of(enrollment_id) if e.event_type == "STOPPED"][0]
    assert stopped.content["reason_code"] == "bounced"
    with session_scope() as session:
        assert email_suppressed(session, email, user.id) == "BOUNCED"
        assert email_suppressed(session, email, other_owner.id) is None


@pytest.mark.parametrize("event", [{"event": "dropped", "reason": "Unsubscribed Address"}, {"event": "delivered"}, {"event": "open"}])
def test_other_delivery_events_do_not_stop(client, signer, user, event):
    enrollment_id = new_enrollment(user.id, new_sequence(user.id, FAST_SEQUENCE))
    assert post_sg(client, signer, [sg_event(enrollment_id=enrollment_id, **event)]).json()["stopped"] == 0
    assert enrollment_status(enrollment_id) == "ACTIVE"


def test_soft_bounces_stop_only_when_too_many_come_in_a_row(client, signer, user):
    limit = get_settings().sendgrid_soft_bounce_limit
    email = f"{unique('seller')}@example.com"
    enrollment_id = new_enrollment(user.id, new_sequence(user.id, FAST_SEQUENCE), seller_email=email)

    def deferred(n: int) -> list[dict]:
        return [sg_event("deferred", enrollment_id, email=email, response="421 try again later", attempt=str(i)) for i in range(n)]

    # A delivery in between starts the count again.
    for batch in (deferred(limit - 1), [sg_event("delivered", enrollment_id, email=email)], deferred(limit - 1)):
        assert post_sg(client, signer, batch).json()["stopped"] == 0
    assert enrollment_status(enrollment_id) == "ACTIVE"
    assert post_sg(client, signer, deferred(1)).json()["stopped"] == 1
    assert enrollment_status(enrollment_id) == "STOPPED"
    [bounced] = [e for e in events_of(enrollment_id) if e.event_type == "BOUNCED"]
    assert bounced.content["provider_event"] == "deferred" and bounced.content["reason"] == "421 try again later"


def test_a_bounce_stops_the_next_step_of_a_running_sequence(client, signer, user, sequence_runner, fake_providers):
    """End to end: the first email goes out, SendGrid reports a bounce through the signed
    webhook, and the email after the wait never goes; a later enrollment of the same owner to
    that address skips its email."""
    from followups.control import enroll_deal

    email = f"{unique('seller')}@example.com"
    steps = [
        {"type": "EMAIL", "subject": "Offer", "text": "Hi"},
        {"type": "WAIT", "seconds": 4},
        {"type": "EMAIL", "subject": "Following up", "text": "Any news?"},
    ]
    sequence_id = new_sequence(user.id, steps)
    enrollment = enroll_deal(user.id, deal_input(seller_email=email), sequence_id)
    wait_for(lambda: "WAIT_STARTED" in event_types(enrollment.id), timeout=60, what="the wait to start")
    [first] = fake_providers.for_recipient(email)
    message_id = [e.provider_message_id for e in events_of(enrollment.id) if e.event_type == "EMAIL_SENT"][0]
    bounce = sg_event("bounce", email=email, sg_message_id=f"{message_id}.filterdrecv-1.0", type="bounce", reason="550 no such user")
    bounce.pop("step_index", None)
    assert post_sg(client, signer, [bounce]).json()["stopped"] == 1
    assert enrollment_status(enrollment.id) == "STOPPED"
    later = enroll_deal(user.id, deal_input(seller_email=email), new_sequence(user.id, steps[:1]))
    wait_for(lambda: enrollment_status(later.id) == "COMPLETED", timeout=60, what="the later enrollment to complete")
    skipped = [e for e in events_of(later.id) if e.event_type == "STEP_SKIPPED"]
    assert len(skipped) == 1 and "bounced" in str(skipped[0].content) + str(skipped[0].failure_reason)
    time.sleep(5)  # past the stopped enrollment's wait
    assert fake_providers.for_recipient(email) == [first]


@pytest.mark.parametrize("case", ["tampered", "stale", "future", "wrong_key", "garbage", "not_base64", "missing", "no_timestamp"])
def test_bad_sendgrid_signatures_are_403_and_store_nothing(client, signer, user, case):
    enrollment_id = new_enrollment(user.id, new_sequence(user.id, FAST_SEQUENCE))
    event = sg_event("delivered", enrollment_id)
    body = sg_body([event])
    now = int(time.time())
    headers = signer.headers(body)
    if case == "tampered":
        body = body.replace(b'"delivered"', b'"open"')
    elif case == "stale":
        headers = signer.headers(body, timestamp=now - 301)
    elif case == "future":
        headers = signer.headers(body, timestamp=now + 301)
    elif case == "wrong_key":
        headers = SendGridSigner().headers(body)
    elif case == "garbage":
        headers[SG_SIGNATURE] = base64.b64encode(os.urandom(70)).decode()
    elif case == "not_base64":
        headers[SG_SIGNATURE] = "%%% not a signature %%%"
    elif case == "missing":
        del headers[SG_SIGNATURE]
    elif case == "no_timestamp":
        del headers[SG_TIMESTAMP]
    response = client.post("/webhooks/sendgrid/events", content=body, headers=headers)
    assert response.status_code == 403, response.text
    assert event_count(enrollment_id, event_type="PROVIDER_EVENT") == 0


def test_sendgrid_signed_body_that_is_not_an_array_is_422(client, signer):
    body = b'{"event": "delivered"}'
    response = client.post("/webhooks/sendgrid/events", content=body, headers=signer.headers(body))
    assert response.status_code == 422


def test_sendgrid_events_are_refused_when_no_key_is_configured(client, signer, monkeypatch):
    monkeypatch.setenv("FOLLOWUPS_SENDGRID_WEBHOOK_PUBLIC_KEY", "")
    reset_settings()
    try:
        body = sg_body([sg_event("delivered")])
        assert client.post("/webhooks/sendgrid/events", content=body, headers=signer.headers(body)).status_code == 403
    finally:
        monkeypatch.setenv("FOLLOWUPS_SENDGRID_WEBHOOK_PUBLIC_KEY", signer.public_key)
        reset_settings()


# --- Twilio signatures ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "params",
    [
        {},
        {"MessageSid": "SM1", "MessageStatus": "delivered"},
        {"Body": "héllo wörld ✓", "From": "+15551234567", "A": "", "b": "x&y=z"},
    ],
)
def test_our_twilio_signature_matches_twilio_request_validator(params):
    ours = twilio_signature(TWILIO_TOKEN, STATUS_URL, list(params.items()))
    assert ours == RequestValidator(TWILIO_TOKEN).compute_signature(STATUS_URL, params)
    assert RequestValidator(TWILIO_TOKEN).validate(STATUS_URL, params, ours)


def test_twilio_status_is_stored_once_with_its_error_code(client, user):
    sequence_id = new_sequence(user.id, FAST_SEQUENCE)
    enrollment_id = new_enrollment(user.id, sequence_id)
    sid = "SM" + uuid.uuid4().hex
    sent(enrollment_id, 4, EventType.SMS_SENT, sid)
    delivered = {"MessageSid": sid, "MessageStatus": "delivered", "AccountSid": "ACtest", "To": "+15550001111"}
    first = twilio_post(client, STATUS_URL, delivered)
    assert first.status_code == 200 and first.json()["stored"] == 1
    assert twilio_post(client, STATUS_URL, delivered).json() == {"received": 1, "stored": 0, "duplicates": 1, "stopped": 0}

    failed = {"MessageSid": sid, "MessageStatus": "undelivered", "ErrorCode": "30005"}
    assert twilio_post(client, STATUS_URL, failed).json()["stored"] == 1
    provider = [e for e in events_of(enrollment_id) if e.event_type == "PROVIDER_EVENT"]
    assert [(e.status, e.step_index, e.provider_message_id) for e in provider] == [
        ("delivered", 4, sid), ("undelivered", 4, sid)
    ]
    assert provider[1].failure_reason == "Twilio error 30005" and provider[1].content["error_code"] == "30005"
    stats = client.get(f"/api/sequences/{sequence_id}/stats", headers=user.headers).json()
    assert (stats["sent"], stats["delivered"], stats["bounced"]) == (1, 1, 1)


def test_a_status_callback_before_the_send_was_recorded_still_counts(client, user):
    sequence_id = new_sequence(user.id, FAST_SEQUENCE)
    enrollment_id = new_enrollment(user.id, sequence_id)
    sid = "SM" + uuid.uuid4().hex
    assert twilio_post(client, STATUS_URL, {"MessageSid": sid, "MessageStatus": "delivered"}).json()["stored"] == 1
    sent(enrollment_id, 4, EventType.SMS_SENT, sid)  # committed after the callback arrived
    assert client.get(f"/api/sequences/{sequence_id}/stats", headers=user.headers).json()["delivered"] == 1


@pytest.mark.parametrize("case", ["tampered", "wrong_token", "missing", "other_url", "json_body"])
def test_bad_twilio_signatures_are_403_and_store_nothing(client, user, case):
    sid = "SM" + uuid.uuid4().hex
    params = {"MessageSid": sid, "MessageStatus": "delivered"}
    if case == "tampered":
        signature = RequestValidator(TWILIO_TOKEN).compute_signature(STATUS_URL, params)
        params = {**params, "MessageStatus": "failed"}
        response = twilio_post(client, STATUS_URL, params, signature=signature)
    elif case == "wrong_token":
        response = twilio_post(client, STATUS_URL, params, token="not-the-token")
    elif case == "missing":
        response = twilio_post(client, STATUS_URL, params, signature="")
    elif case == "other_url":
        signature = RequestValidator(TWILIO_TOKEN).compute_signature(INBOUND_URL, params)
        response = twilio_post(client, STATUS_URL, params, signature=signature)
    else:
        signature = RequestValidator(TWILIO_TOKEN).compute_signature(STATUS_URL, {})
        response = client.post(
            "/webhooks/twilio/status", json=params, headers={"X-Twilio-Signature": signature}
        )
    assert response.status_code == 403, response.text
    assert events_with_key_prefix(f"tw:{sid}") == []


def test_twilio_signature_uses_the_public_base_url_when_set(client, monkeypatch):
    monkeypatch.setenv("FOLLOWUPS_PUBLIC_BASE_URL", "https://api.example.com/")
    reset_settings()
    try:
        sid = "SM" + uuid.uuid4().hex
        params = {"MessageSid": sid, "MessageStatus": "sent"}
        public = "https://api.example.com/webhooks/twilio/status"
        assert twilio_post(client, STATUS_URL, params, signature=RequestValidator(TWILIO_TOKEN).compute_signature(public, params)).status_code == 200
        # Twilio may sign with the default port spelled out.
        with_port = RequestValidator(TWILIO_TOKEN).compute_signature("https://api.example.com:443/webhooks/twilio/status", params)
        assert twilio_post(client, STATUS_URL, {**params}, signature=with_port).status_code == 200
        # The internal URL no longer verifies.
        assert twilio_post(client, STATUS_URL, params).status_code == 403
    finally:
        monkeypatch.delenv("FOLLOWUPS_PUBLIC_BASE_URL")
        reset_settings()


# --- inbound SMS --------------------------------------------------------------------------------


@pytest.mark.parametrize("body", ["STOP", "  stop \n", "Stop", "STOPALL", "unsubscribe", "Cancel", "END", "quit", "stop."])
def test_sms_opt_out_keywords_stop_the_sellers_open_enrollments_on_that_number(client, user, body):
    phone = unique_phone()
    other_user = new_api_user()
    mine = new_enrollment(user.id, new_sequence(user.id, FAST_SEQUENCE), seller_phone=phone)
    theirs = new_enrollment(other_user.id, new_sequence(other_user.id, FAST_SEQUENCE), seller_phone=phone)
    someone_else = new_enrollment(user.id, new_sequence(user.id, FAST_SEQUENCE))
    params = {"MessageSid": "SM" + uuid.uuid4().hex, "From": phone, "To": GLOBAL_NUMBER, "Body": body}

    response = twilio_post(client, INBOUND_URL, params)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/xml") and "<Response>" in response.text
    assert enrollment_status(mine) == enrollment_status(theirs) == "STOPPED"
    assert enrollment_status(someone_else) == "ACTIVE"
    assert event_types(mine)[-2:] == ["OPTED_OUT", "STOPPED"]
    opted = [e for e in events_of(mine) if e.event_type == "OPTED_OUT"][0]
    assert opted.content["body"] == body and opted.content["from"] == phone

    assert twilio_post(client, INBOUND_URL, params).status_code == 200  # delivered twice
    assert event_types(mine).count("OPTED_OUT") == 1 and event_types(theirs).count("OPTED_OUT") == 1


def test_any_other_sms_is_a_reply_that_stops_the_sequence(client, user):
    phone = unique_phone()
    sequence_id = new_sequence(user.id, FAST_SEQUENCE)
    enrollment_id = new_enrollment(user.id, sequence_id, seller_phone=phone)
    params = {"MessageSid": "SM" + uuid.uuid4().hex, "From": phone, "To": GLOBAL_NUMBER, "Body": "Stop by tomorrow? Let's talk price"}
    assert twilio_post(client, INBOUND_URL, params).status_code == 200
    assert enrollment_status(enrollment_id) == "STOPPED"
    assert event_types(enrollment_id)[-2:] == ["REPLY_RECEIVED", "STOPPED"]
    assert twilio_post(client, INBOUND_URL, params).status_code == 200
    assert event_types(enrollment_id).count("REPLY_RECEIVED") == 1

    # A later reply to the ended enrollment is still recorded (and counted), once.
    later = {**params, "MessageSid": "SM" + uuid.uuid4().hex, "Body": "Hello?"}
    twilio_post(client, INBOUND_URL, later)
    twilio_post(client, INBOUND_URL, later)
    assert event_types(enrollment_id).count("REPLY_RECEIVED") == 2
    stats = client.get(f"/api/sequences/{sequence_id}/stats", headers=user.headers).json()
    assert (stats["replied"], stats["stopped"], stats["active"]) == (1, 1, 0)


def test_inbound_sms_with_a_bad_signature_is_403_and_changes_nothing(client, user):
    phone = unique_phone()
    enrollment_id = new_enrollment(user.id, new_sequence(user.id, FAST_SEQUENCE), seller_phone=phone)
    params = {"MessageSid": "SM" + uuid.uuid4().hex, "From": phone, "Body": "STOP"}
    assert twilio_post(client, INBOUND_URL, params, token="wrong").status_code == 403
    assert twilio_post(client, INBOUND_URL, params, signature="").status_code == 403
    assert enrollment_status(enrollment_id) == "ACTIVE" and event_types(enrollment_id) == ["ENROLLED"]


# --- inbound email (SendGrid Inbound Parse) ------------------------------------------------------


def test_email_reply_is_matched_by_its_reply_address(client, user):
    sequence_id = new_sequence(user.id, FAST_SEQUENCE)
    enrollment_id = new_enrollment(user.id, sequence_id)
    token = enrollment_row(enrollment_id).reply_token
    body, content_type = multipart(
        {
            "headers": f"Message-ID: <{uuid.uuid4().hex}@mail.example.com>\nSubject: Re: Offer",
            "from": "Pat Seller <pat@example.com>",
            "to": f'"Offers" <reply+{token}@{get_settings().reply_domain}>',
            "subject": "Re: Offer on 12 Elm Street",
            "text": "Can you do 260k?\n\n> Hi Pat, we offered ...",
            "envelope": '{"to": ["x@y.z"], "from": "pat@example.com"}',
        }
    )
    response = client.post("/webhooks/sendgrid/inbound", content=body, headers={"Content-Type": content_type})
    assert response.status_code == 200 and response.json() == {"received": 1, "stored": 1, "duplicates": 0, "stopped": 1}
    assert enrollment_status(enrollment_id) == "STOPPED"
    reply = [e for e in events_of(enrollment_id) if e.event_type == "REPLY_RECEIVED"][0]
    assert reply.content["subject"] == "Re: Offer on 12 Elm Street" and reply.content["text"].startswith("Can you do")

    again = client.post("/webhooks/sendgrid/inbound", content=body, headers={"Content-Type": content_type})
    assert again.json()["stored"] == 0 and event_types(enrollment_id).count("REPLY_RECEIVED") == 1
    assert client.get(f"/api/sequences/{sequence_id}/stats", headers=user.headers).json()["replied"] == 1


def test_email_reply_matched_through_the_envelope_and_opt_out_by_subject(client, user):
    enrollment_id = new_enrollment(user.id, new_sequence(user.id, FAST_SEQUENCE))
    token = enrollment_row(enrollment_id).reply_token
    body, content_type = multipart(
        {
            "to": "someone@else.example.com",
            "envelope": f'{{"to": ["reply+{token}@{get_settings().reply_domain}"], "from": "pat@example.com"}}',
            "subject": "Unsubscribe",
            "text": "",
        }
    )
    response = client.post("/webhooks/sendgrid/inbound", content=body, headers={"Content-Type": content_type})
    assert response.json()["stopped"] == 1
    assert event_types(enrollment_id)[-2:] == ["OPTED_OUT", "STOPPED"]


@pytest.mark.parametrize("to", ["reply+{token}@evil.example.com", "reply+NoSuchToken123@{domain}", "nobody@{domain}"])
def test_email_to_an_unknown_address_is_accepted_and_dropped(client, user, to):
    enrollment_id = new_enrollment(user.id, new_sequence(user.id, FAST_SEQUENCE))
    token = enrollment_row(enrollment_id).reply_token
    body, content_type = multipart({"to": to.format(token=token, domain=get_settings().reply_domain), "text": "hi"})
    response = client.post("/webhooks/sendgrid/inbound", content=body, headers={"Content-Type": content_type})
    assert response.status_code == 200 and response.json()["stored"] == 0
    assert event_types(enrollment_id) == ["ENROLLED"]


def test_inbound_email_that_is_not_a_form_is_415(client):
    response = client.post("/webhooks/sendgrid/inbound", json={"to": "x"})
    assert response.status_code == 415
