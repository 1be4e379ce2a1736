"""Replies and opt-outs reach only the owner they answer: an inbound SMS is routed by the pair
(seller phone, our number), a STOP blocks that pair for every owner sending from the number
(without showing them the text), and an email unsubscribe stays with its owner."""

from __future__ import annotations

import json
import os
import time
import uuid
from urllib.parse import parse_qs, urlencode

import pytest
from twilio.request_validator import RequestValidator

from api_support import SendGridSigner, enrollment_status, make_client, sg_body
from followups.db.session import session_scope
from followups.execution.sending import execute_send_step
from followups.replies import email_opted_out, sms_opted_out
from followups.settings import get_settings, reset_settings
from followups.users import set_sender_identity
from support import event_types, events_of, new_enrollment, new_owner, new_sequence, unique, unique_phone

TWILIO_TOKEN = "twilio-test-token"  # tests/conftest.py TEST_ENV
INBOUND_URL = "http://testserver/webhooks/twilio/inbound"
SMS_FIRST = [{"type": "SMS", "body": "Hi {{ seller.first_name }}, about our offer"}, {"type": "WAIT", "days": 1},
             {"type": "SMS", "body": "Still there?"}]
EMAIL_FIRST = [{"type": "EMAIL", "subject": "Our offer", "text": "Hi {{ seller.first_name }}"}]
SERVICE = "MG" + "fedcba9876543210" * 2
SECRET = "Can you do 260k if we close in May?"


@pytest.fixture(scope="module")
def client(signer):
    with make_client() as client:
        yield client


def owner_with(**identity) -> int:
    owner = new_owner()
    if identity:
        with session_scope() as session:
            set_sender_identity(session, owner, identity)
    return owner


def enroll(owner: int, phone: str, steps=SMS_FIRST, **deal) -> int:
    return new_enrollment(owner, new_sequence(owner, steps), seller_phone=phone, **deal)


def post_sms(client, params: dict[str, str]):
    signature = RequestValidator(TWILIO_TOKEN).compute_signature(INBOUND_URL, params)
    headers = {"Content-Type": "application/x-www-form-urlencoded", "X-Twilio-Signature": signature}
    return client.post("/webhooks/twilio/inbound", content=urlencode(params).encode(), headers=headers)


def text_sms(client, phone: str, to: str, body: str, **extra: str) -> None:
    response = post_sms(client, {"MessageSid": "SM" + uuid.uuid4().hex, "From": phone, "To": to, "Body": body, **extra})
    assert response.status_code == 200, response.text


def rows_text(enrollment_id: int) -> str:
    return json.dumps([[e.content, e.failure_reason, e.provider_message_id] for e in events_of(enrollment_id)])


def of_type(enrollment_id: int, event_type: str) -> list:
    return [e for e in events_of(enrollment_id) if e.event_type == event_type]


def opted_out(phone: str, number: str | None, service: str | None = None) -> bool:
    with session_scope() as session:
        return sms_opted_out(session, phone, number, messaging_service_sid=service)


# --- replies ------------------------------------------------------------------------------------


@pytest.mark.parametrize("answered", ["A", "B"])
def test_a_reply_to_an_owners_number_lands_only_on_that_owners_enrollments(client, answered):
    numbers = {"A": unique_phone(), "B": unique_phone()}
    owners = {name: owner_with(sms_from=number) for name, number in numbers.items()}
    phone = unique_phone()
    enrollments = {name: enroll(owner, phone) for name, owner in owners.items()}
    other = "B" if answered == "A" else "A"

    text_sms(client, phone, numbers[answered], SECRET)
    assert enrollment_status(enrollments[answered]) == "STOPPED"
    [reply] = of_type(enrollments[answered], "REPLY_RECEIVED")
    assert (reply.content["body"], reply.content["to"]) == (SECRET, numbers[answered])

    assert enrollment_status(enrollments[other]) == "ACTIVE"
    assert event_types(enrollments[other]) == ["ENROLLED"]
    assert "260k" not in rows_text(enrollments[other])


def test_a_reply_to_a_shared_number_goes_to_the_owner_who_texted_last(client, fake_providers):
    global_number = get_settings().twilio_from_number
    a, b = owner_with(), owner_with()  # both on the global number
    phone = unique_phone()
    mine, theirs = enroll(a, phone), enroll(b, phone)
    assert execute_send_step(mine, 0).outcome == "sent"

    text_sms(client, phone, global_number, SECRET)
    assert [e.content["body"] for e in of_type(mine, "REPLY_RECEIVED")] == [SECRET]
    assert enrollment_status(theirs) == "ACTIVE" and "260k" not in rows_text(theirs)

    # Nobody texted this seller from the number yet: the reply concerns every owner on it.
    fresh = unique_phone()
    first, second = enroll(a, fresh), enroll(b, fresh)
    text_sms(client, fresh, global_number, "who is this?")
    assert enrollment_status(first) == enrollment_status(second) == "STOPPED"


def test_an_sms_to_a_number_nobody_sends_from_reaches_no_enrollment(client):
    phone = unique_phone()
    mine = enroll(owner_with(sms_from=unique_phone()), phone)
    on_global = enroll(owner_with(), phone)
    text_sms(client, phone, unique_phone(), SECRET)
    text_sms(client, phone, unique_phone(), "STOP")
    assert event_types(mine) == event_types(on_global) == ["ENROLLED"]


def test_an_sms_without_our_number_is_422_and_changes_nothing(client):
    phone = unique_phone()
    enrollment_id = enroll(owner_with(), phone)
    params = {"MessageSid": "SM" + uuid.uuid4().hex, "From": phone, "Body": "STOP"}
    assert post_sms(client, params).status_code == 422
    assert post_sms(client, {**params, "To": "  "}).status_code == 422
    assert event_types(enrollment_id) == ["ENROLLED"]


def test_a_reply_through_a_messaging_service_reaches_its_owner(client):
    pool_number, phone = unique_phone(), unique_phone()
    through_service = enroll(owner_with(messaging_service_sid=SERVICE), phone)
    on_global = enroll(owner_with(), phone)
    text_sms(client, phone, pool_number, SECRET, MessagingServiceSid=SERVICE)
    assert [e.content["body"] for e in of_type(through_service, "REPLY_RECEIVED")] == [SECRET]
    assert event_types(on_global) == ["ENROLLED"]


# --- opt-outs -----------------------------------------------------------------------------------


def test_a_stop_to_an_owners_number_stops_that_owners_enrollment_and_blocks_only_that_pair(client):
    number_a, number_b, phone = unique_phone(), unique_phone(), unique_phone()
    a, b = enroll(owner_with(sms_from=number_a), phone), enroll(owner_with(sms_from=number_b), phone)
    text_sms(client, phone, number_a, "Stop")
    assert enrollment_status(a) == "STOPPED" and event_types(a)[-2:] == ["OPTED_OUT", "STOPPED"]
    assert of_type(a, "OPTED_OUT")[0].content["body"] == "Stop"
    assert enrollment_status(b) == "ACTIVE" and event_types(b) == ["ENROLLED"]
    assert opted_out(phone, number_a) and not opted_out(phone, number_b)


def test_a_stop_to_the_shared_number_stops_both_but_only_the_addressed_owner_sees_the_text(client, fake_providers):
    global_number = get_settings().twilio_from_number
    phone = unique_phone()
    a, b = enroll(owner_with(), phone), enroll(owner_with(), phone)
    assert execute_send_step(a, 0).outcome == "sent"  # A's text is the one the seller answers

    text_sms(client, phone, global_number, "STOP.")
    assert enrollment_status(a) == enrollment_status(b) == "STOPPED"
    [mine] = of_type(a, "OPTED_OUT")
    assert mine.content["body"] == "STOP." and mine.content["message_sid"].startswith("SM")
    [theirs] = of_type(b, "OPTED_OUT")
    assert theirs.content == {"channel": "sms", "from": phone, "to": global_number, "keyword": "STOP"}
    assert theirs.provider_message_id is None
    assert "STOP." not in rows_text(b)
    assert opted_out(phone, global_number)


def test_after_a_stop_sms_from_that_number_is_skipped_from_another_sent_until_start(client, fake_providers):
    number_a, number_b, phone = unique_phone(), unique_phone(), unique_phone()
    owner_a, owner_b = owner_with(sms_from=number_a), owner_with(sms_from=number_b)
    same_number = owner_with(sms_from=number_a)  # another owner on A's number: the pair is blocked for it too
    text_sms(client, phone, number_a, "STOP")

    later_a, later_same = enroll(owner_a, phone), enroll(same_number, phone)
    for enrollment_id in (later_a, later_same):
        assert execute_send_step(enrollment_id, 0).outcome == "skipped"
        assert event_types(enrollment_id)[-1] == "STEP_SKIPPED"
    later_b = enroll(owner_b, phone)
    assert execute_send_step(later_b, 0).outcome == "sent"
    assert [parse_qs(r.body.decode())["From"] for r in fake_providers.for_recipient(phone)] == [[number_b]]

    text_sms(client, phone, number_b, "START")  # lifts B's pair only: A's stays blocked
    assert opted_out(phone, number_a)
    text_sms(client, phone, number_a, "start")
    assert not opted_out(phone, number_a)
    again = enroll(owner_a, phone)
    assert execute_send_step(again, 0).outcome == "sent"


def test_a_stop_through_a_messaging_service_blocks_the_service(client, fake_providers):
    pool_number, phone = unique_phone(), unique_phone()
    owner = owner_with(messaging_service_sid=SERVICE)
    text_sms(client, phone, pool_number, "UNSUBSCRIBE", MessagingServiceSid=SERVICE)
    assert opted_out(phone, None, SERVICE) and opted_out(phone, pool_number)
    assert not opted_out(phone, unique_phone())
    assert execute_send_step(enroll(owner, phone), 0).outcome == "skipped"


# --- email opt-outs stay with their owner -----------------------------------------------------


def post_unsubscribe(client, signer, email: str, enrollment_id: int | None):
    item = {"email": email, "timestamp": int(time.time()), "event": "unsubscribe",
            "sg_message_id": f"{uuid.uuid4().hex[:22]}.filter-1.0", "sg_event_id": uuid.uuid4().hex}
    if enrollment_id is not None:
        item |= {"enrollment_id": str(enrollment_id), "step_index": "0"}
    body = sg_body([item])
    response = client.post("/webhooks/sendgrid/events", content=body, headers=signer.headers(body))
    assert response.status_code == 200, response.text
    return response.json()


def test_an_email_unsubscribe_suppresses_the_address_for_its_owner_only(client, signer, fake_providers):
    email = f"{unique('seller')}@example.com"
    a, b = owner_with(), owner_with()
    mine = new_enrollment(a, new_sequence(a, EMAIL_FIRST), seller_email=email)
    mine_too = new_enrollment(a, new_sequence(a, EMAIL_FIRST), seller_email=email.upper())
    theirs = new_enrollment(b, new_sequence(b, EMAIL_FIRST), seller_email=email)

    assert post_unsubscribe(client, signer, email, mine)["stopped"] == 2
    assert enrollment_status(mine) == enrollment_status(mine_too) == "STOPPED"
    assert enrollment_status(theirs) == "ACTIVE" and "OPTED_OUT" not in event_types(theirs)
    with session_scope() as session:
        assert email_opted_out(session, email, a) and not email_opted_out(session, email, b)

    assert execute_send_step(new_enrollment(a, new_sequence(a, EMAIL_FIRST), seller_email=email), 0).outcome == "skipped"
    assert execute_send_step(theirs, 0).outcome == "sent"


def test_an_unsubscribe_we_cannot_match_to_a_message_stops_nobody(client, signer):
    email = f"{unique('seller')}@example.com"
    owner = owner_with()
    enrollment_id = new_enrollment(owner, new_sequence(owner, EMAIL_FIRST), seller_email=email)
    assert post_unsubscribe(client, signer, email, None) == {"received": 1, "stored": 1, "duplicates": 0, "stopped": 0}
    assert enrollment_status(enrollment_id) == "ACTIVE"


# --- an SMS opt-out follows the owner, not just the number -----------------------------------


def skip_reason(enrollment_id: int) -> str | None:
    skipped = of_type(enrollment_id, "STEP_SKIPPED")
    return skipped[-1].failure_reason if skipped else None


def test_a_stop_to_one_number_of_an_owner_blocks_its_other_numbers_and_services(client, fake_providers):
    number_a, number_b, number_c, phone = unique_phone(), unique_phone(), unique_phone(), unique_phone()
    owner = owner_with(sms_from=number_a)
    other = owner_with(sms_from=number_c)
    first = enroll(owner, phone)
    text_sms(client, phone, number_a, "Stop texting me!")
    [fact] = of_type(first, "OPTED_OUT")
    assert (fact.content["keyword"], fact.content["source"], fact.content["owners"]) == ("STOP TEXTING ME", "inbound_sms", [owner])
    assert fact.occurred_at is not None

    with session_scope() as session:
        set_sender_identity(session, owner, {"sms_from": number_b})
    from_b = enroll(owner, phone)
    assert execute_send_step(from_b, 0).outcome == "skipped"
    assert skip_reason(from_b) == "the seller opted out of SMS (STOP)"
    with session_scope() as session:
        set_sender_identity(session, owner, {"messaging_service_sid": SERVICE})
    assert execute_send_step(enroll(owner, phone), 0).outcome == "skipped"
    # Another owner texting the same seller from its own number is not concerned.
    assert execute_send_step(enroll(other, phone), 0).outcome == "sent"
    assert [parse_qs(r.body.decode())["From"] for r in fake_providers.for_recipient(phone)] == [[number_c]]


def test_a_stop_to_a_number_the_owner_left_still_reaches_that_owner(client, fake_providers):
    number_a, number_b, phone = unique_phone(), unique_phone(), unique_phone()
    owner = owner_with(sms_from=number_a)
    texted = enroll(owner, phone)
    assert execute_send_step(texted, 0).outcome == "sent"
    with session_scope() as session:
        set_sender_identity(session, owner, {"sms_from": number_b})
    open_on_b = enroll(owner, phone)

    text_sms(client, phone, number_a, "STOP")  # nobody sends from A any more
    assert enrollment_status(texted) == enrollment_status(open_on_b) == "STOPPED"
    assert opted_out(phone, number_a)
    assert execute_send_step(enroll(owner, phone), 0).outcome == "skipped"


def test_a_stop_through_a_messaging_service_blocks_the_owners_own_number_later(client, fake_providers):
    pool_number, number_b, phone = unique_phone(), unique_phone(), unique_phone()
    service = "MG" + uuid.uuid4().hex
    owner = owner_with(messaging_service_sid=service)
    enroll(owner, phone)
    text_sms(client, phone, pool_number, "opt out", MessagingServiceSid=service)
    with session_scope() as session:
        set_sender_identity(session, owner, {"sms_from": number_b})
    assert execute_send_step(enroll(owner, phone), 0).outcome == "skipped"
    assert execute_send_step(enroll(owner_with(sms_from=unique_phone()), phone), 0).outcome == "sent"


def test_a_stop_to_the_shared_number_blocks_everyone_on_it_and_the_owner_who_texted_everywhere(client, fake_providers):
    global_number = get_settings().twilio_from_number
    phone = unique_phone()
    texted, quiet, newcomer = owner_with(), owner_with(), owner_with()
    mine, theirs = enroll(texted, phone), enroll(quiet, phone)
    assert execute_send_step(mine, 0).outcome == "sent"
    text_sms(client, phone, global_number, "UNSUBSCRIBE")
    assert enrollment_status(mine) == enrollment_status(theirs) == "STOPPED"
    assert execute_send_step(enroll(newcomer, phone), 0).outcome == "skipped"  # the number's block
    with session_scope() as session:
        set_sender_identity(session, texted, {"sms_from": unique_phone()})
    assert execute_send_step(enroll(texted, phone), 0).outcome == "skipped"  # the owner's block


@pytest.mark.parametrize(
    "body",
    ["STOP", "stop.", "Quit", "END!", "revoke", "Opt-out", "OPTOUT", "cancel", "Unsubscribe", "STOPALL",
     "Stop texting me", "stop messaging me!!", "Please remove me.", "remove me from your list", "Do not contact",
     "DON'T TEXT ME AGAIN", "Take me off your list", "not interested. Stop.", "Unsubscribe me please",
     "I revoke my consent"],
)
def test_revocations_opt_out(client, fake_providers, body):
    number, phone = unique_phone(), unique_phone()
    owner = owner_with(sms_from=number)
    enrollment_id = enroll(owner, phone)
    text_sms(client, phone, number, body)
    assert event_types(enrollment_id)[-2:] == ["OPTED_OUT", "STOPPED"]
    assert of_type(enrollment_id, "OPTED_OUT")[0].content["body"] == body
    assert opted_out(phone, number)


@pytest.mark.parametrize(
    "body",
    ["I can't stop thinking about your offer", "Stop by tomorrow? Let's talk price", "the end of the month works",
     "Don't cancel the inspection", "Can you remove me from the title paperwork", "Please don't stop, I'm interested",
     "stopping by at 5", "Startup costs?", "who is this"],
)
def test_other_texts_are_replies_not_opt_outs(client, fake_providers, body):
    number, phone = unique_phone(), unique_phone()
    owner = owner_with(sms_from=number)
    enrollment_id = enroll(owner, phone)
    text_sms(client, phone, number, body)
    assert event_types(enrollment_id)[-2:] == ["REPLY_RECEIVED", "STOPPED"]
    assert not opted_out(phone, number)
    assert execute_send_step(enroll(owner, phone), 0).outcome == "sent"


def test_start_to_any_number_of_the_owner_lifts_its_block(client, fake_providers):
    number_a, number_b, phone = unique_phone(), unique_phone(), unique_phone()
    owner = owner_with(sms_from=number_a)
    enroll(owner, phone)
    text_sms(client, phone, number_a, "STOP")
    with session_scope() as session:
        set_sender_identity(session, owner, {"sms_from": number_b})
    assert execute_send_step(enroll(owner, phone), 0).outcome == "skipped"

    text_sms(client, phone, number_b, "START")
    assert execute_send_step(enroll(owner, phone), 0).outcome == "sent"
    assert opted_out(phone, number_a)  # the carrier keeps number A blocked until START to A


@pytest.fixture
def stop_stops_email(monkeypatch):
    monkeypatch.setenv("FOLLOWUPS_SMS_STOP_STOPS_EMAIL", "true")
    reset_settings()
    yield
    monkeypatch.delenv("FOLLOWUPS_SMS_STOP_STOPS_EMAIL")
    reset_settings()


def email_enrollment(owner: int, email: str) -> int:
    return new_enrollment(owner, new_sequence(owner, EMAIL_FIRST), seller_email=email)


@pytest.mark.parametrize("option", [False, True])
def test_an_sms_stop_ends_email_too_only_with_the_option(request, client, fake_providers, option):
    if option:
        request.getfixturevalue("stop_stops_email")
    number, phone, email = unique_phone(), unique_phone(), f"{unique('seller')}@example.com"
    owner, other = owner_with(sms_from=number), owner_with()
    enroll(owner, phone, seller_email=email)
    by_email_only = email_enrollment(owner, email.upper())  # the same seller, a deal without the phone
    text_sms(client, phone, number, "STOP")

    assert enrollment_status(by_email_only) == ("STOPPED" if option else "ACTIVE")
    later = email_enrollment(owner, email)
    assert execute_send_step(later, 0).outcome == ("skipped" if option else "sent")
    assert execute_send_step(email_enrollment(other, email), 0).outcome == "sent"
    if option:
        assert skip_reason(later) == "the seller opted out by SMS (STOP), which ends email too"
        text_sms(client, phone, number, "Start")
        assert execute_send_step(email_enrollment(owner, email), 0).outcome == "sent"


def test_a_stop_recorded_before_owners_were_listed_still_blocks_its_owners_other_numbers(signer):
    from followups.db.events import record_event
    from followups.db.models import EventType

    phone = unique_phone()
    owner, other = new_owner(), new_owner()
    enrollment_id = new_enrollment(owner, new_sequence(owner, SMS_FIRST), seller_phone=phone)
    with session_scope() as session:
        # The shape an opt-out had before it listed its owners: on the enrollment, to one number.
        record_event(
            session, enrollment_id=enrollment_id, event_type=EventType.OPTED_OUT, status="received",
            content={"channel": "sms", "from": phone, "to": "+15005550111", "body": "STOP"},
            dedupe_key=f"legacy-stop:{uuid.uuid4().hex}",
        )
    with session_scope() as session:
        assert sms_opted_out(session, phone, "+15005550222", owner_id=owner)
        assert not sms_opted_out(session, phone, "+15005550222", owner_id=other)
        assert sms_opted_out(session, phone, "+15005550111", owner_id=other)  # the number itself, as the carrier
