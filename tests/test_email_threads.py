"""Threaded follow-ups: later EMAIL steps go out as replies in the thread of the enrollment's
previous email (In-Reply-To / References, "Re: " subject) under our own stable Message-IDs, and
inbound replies are matched by those ids, only this database's."""

from __future__ import annotations

import json
import uuid
from typing import Any

import httpx
import pytest
import respx

from api_support import multipart
from followups.db.models import EventType
from followups.db.session import session_scope
from followups.email_threads import message_id, referenced_ids, reply_subject
from followups.errors import InvalidInputError
from followups.execution.sending import execute_send_step
from followups.flows.follow_up_sequence import follow_up_sequence
from followups.identity import database_id
from followups.lifecycle import store
from followups.lifecycle.plan import load_plan
from followups.providers import Providers
from followups.settings import get_settings
from followups.steps import email_thread, load_stored_steps, parse_steps, steps_to_json
from support import enrollment_row, event_types, events_of, new_enrollment, new_owner, new_sequence, unique

FIRST = {"type": "EMAIL", "subject": "Offer on {{ deal.property_address }}", "text": "Hi {{ seller.first_name }}"}
REPLY = {"type": "EMAIL", "text": "Any thoughts?"}  # no subject: "Re: <previous subject>"
WAIT = {"type": "WAIT", "days": 1}


def _invalid(raw: Any) -> InvalidInputError:
    with pytest.raises(InvalidInputError) as info:
        parse_steps(raw)
    return info.value


def _sent(enrollment_id: int) -> list:
    return [e for e in events_of(enrollment_id) if e.event_type == "EMAIL_SENT"]


# --- steps ------------------------------------------------------------------------------------


def test_later_emails_default_to_replies_and_the_first_to_a_new_thread() -> None:
    steps = parse_steps([FIRST, WAIT, REPLY, WAIT, {**FIRST, "thread": "new"}, WAIT, {**REPLY, "subject": "Still there?"}])
    assert [email_thread(steps, i) for i in (0, 2, 4, 6)] == ["new", "reply", "new", "reply"]
    stored = steps_to_json(steps)
    assert "thread" not in stored[0] and "subject" not in stored[2] and stored[4]["thread"] == "new"
    assert load_stored_steps(stored) == steps


def test_stored_steps_without_thread_load_with_the_default() -> None:
    old = [{**FIRST, "html": None}, {"type": "WAIT", "days": 1.0, "hours": 0, "minutes": 0, "seconds": 0},
           {**FIRST, "subject": "Following up", "html": None}]
    steps = load_stored_steps(old)
    assert email_thread(steps, 2) == "reply" and steps_to_json(steps) == old


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        pytest.param([REPLY], "steps.0.subject", id="first-email-without-subject"),
        pytest.param([FIRST, WAIT, {**REPLY, "thread": "new"}], "steps.2.subject", id="new-thread-without-subject"),
        pytest.param([{**FIRST, "thread": "reply"}], "steps.0.thread", id="first-email-replying"),
        pytest.param([FIRST, WAIT, {**REPLY, "thread": "forward"}], "steps.2.thread", id="unknown-thread"),
        pytest.param([FIRST, WAIT, {**REPLY, "thread": 1}], "steps.2.thread", id="thread-not-a-string"),
        pytest.param([FIRST, WAIT, {**REPLY, "subject": ""}], "steps.2.subject", id="empty-subject"),
    ],
)
def test_bad_threads_and_missing_subjects_name_the_field(raw: Any, field: str) -> None:
    assert _invalid(raw).field == field


def test_the_api_names_the_field_of_a_missing_subject(client, user_headers) -> None:
    body = {"name": unique("s"), "steps": [FIRST, WAIT, {**REPLY, "thread": "new"}]}
    response = client.post("/api/sequences", json=body, headers=user_headers)
    assert response.status_code == 422 and response.json()["errors"][0]["field"] == "steps.2.subject", response.text
    assert client.post("/api/sequences", json={**body, "steps": [FIRST, WAIT, REPLY]}, headers=user_headers).status_code == 201


def test_reply_subject_is_not_doubled() -> None:
    assert reply_subject("Offer") == "Re: Offer" and reply_subject("RE: Offer") == "RE: Offer"


def test_only_our_ids_are_read_from_in_reply_to_and_references() -> None:
    ours = [f"<followups.{n}.0.{'ab' * 8}@reply.example.com>" for n in (7, 8, 9)]
    headers = f"Subject: Re: x\nIn-Reply-To: {ours[2]}\nReferences: <abc@mail.example.com>\n {ours[0]}\n\t{ours[1]} {ours[2]}\n"
    assert referenced_ids(headers) == [ours[2], ours[1], ours[0]]
    assert referenced_ids("In-Reply-To: <followups.7.0.nothex@reply.example.com>\n") == []
    assert referenced_ids("") == []


# --- sending ----------------------------------------------------------------------------------


def test_the_sendgrid_payload_carries_the_thread_headers(db) -> None:
    """Both steps through the live SendGrid client against respx."""
    owner = new_owner()
    enrollment_id = new_enrollment(owner, new_sequence(owner, [FIRST, REPLY]))
    settings = get_settings()
    url = settings.sendgrid_base_url.rstrip("/") + "/v3/mail/send"
    with respx.mock(assert_all_called=True) as mock, httpx.Client() as http:
        route = mock.post(url).mock(side_effect=lambda _: httpx.Response(202, headers={"X-Message-Id": unique("m")}))
        for step in (0, 1):
            assert execute_send_step(enrollment_id, step, providers=Providers(settings, http)).outcome == "sent"
    first, second = (json.loads(call.request.content) for call in route.calls)
    token = enrollment_row(enrollment_id).reply_token
    expected = message_id(enrollment_id, 0, token, database_id(), get_settings().reply_domain)
    assert first["headers"]["Message-ID"] == expected
    assert "In-Reply-To" not in first["headers"] and "References" not in first["headers"]
    assert second["headers"]["In-Reply-To"] == second["headers"]["References"] == expected
    assert second["headers"]["Message-ID"] != expected and "List-Unsubscribe" in second["headers"]
    assert (first["subject"], second["subject"]) == ("Offer on 12 Elm Street, Springfield", "Re: Offer on 12 Elm Street, Springfield")


def test_step_two_replies_to_step_one_through_the_fake_provider(prefect_api, fake_providers) -> None:
    email = f"{unique('seller')}@example.com"
    fake_providers.script(email, [500, 202])  # step 1 is retried: the same Message-ID both times
    owner = new_owner()
    steps = [FIRST, REPLY, {**REPLY, "subject": "Our offer stands"}, {**FIRST, "thread": "new", "subject": "New offer"}]
    enrollment_id = new_enrollment(owner, new_sequence(owner, steps), seller_email=email)
    assert follow_up_sequence(enrollment_id) == "COMPLETED"

    calls = fake_providers.for_recipient(email)
    assert [c.status for c in calls] == [500, 202, 202, 202, 202]
    retried, first, second, third, fresh = calls
    assert retried.mail_headers["Message-ID"] == first.mail_headers["Message-ID"]
    assert second.mail_headers["In-Reply-To"] == first.mail_headers["Message-ID"]
    assert second.subject == "Re: Offer on 12 Elm Street, Springfield"
    assert third.subject == "Our offer stands" and third.mail_headers["In-Reply-To"] == second.mail_headers["Message-ID"]
    assert third.mail_headers["References"] == f"{first.mail_headers['Message-ID']} {second.mail_headers['Message-ID']}"
    assert "In-Reply-To" not in fresh.mail_headers and fresh.subject == "New offer"
    assert len({c.mail_headers["Message-ID"] for c in calls}) == 4
    sent = _sent(enrollment_id)
    assert [e.content["message_id"] for e in sent] == [c.mail_headers["Message-ID"] for c in calls[1:]]
    assert sent[1].content["in_reply_to"] == sent[0].content["message_id"]


def test_a_reply_step_after_a_skipped_email_starts_a_new_thread(db, fake_providers) -> None:
    email = f"{unique('seller')}@example.com"
    owner = new_owner()
    enrollment_id = new_enrollment(owner, new_sequence(owner, [FIRST, REPLY]), seller_email=email)
    with session_scope() as session:  # as if step 0 had been suppressed
        plan = load_plan(session, enrollment_id, lock=True)
        store.advance(session, plan, 0, event_type=EventType.STEP_SKIPPED, status="skipped", failure_reason="test")
    assert execute_send_step(enrollment_id, 1).outcome == "sent"
    [call] = fake_providers.for_recipient(email)
    assert call.subject == "Offer on 12 Elm Street, Springfield"
    assert "In-Reply-To" not in call.mail_headers and call.mail_headers["Message-ID"].startswith(f"<followups.{enrollment_id}.1.")


def test_preview_shows_the_subject_a_reply_step_will_use(db) -> None:
    from followups.preview import preview_sequence

    owner = new_owner()
    sequence_id = new_sequence(owner, [FIRST, WAIT, REPLY, WAIT, {**REPLY, "subject": "Still there?"}, WAIT, REPLY])
    deal = {"external_id": unique("D"), "property_address": "12 Elm St", "seller_name": "Pat Lee", "seller_email": "pat@example.com"}
    with session_scope() as session:
        plan = preview_sequence(session, owner, sequence_id, deal, "2026-12-01T15:00:00Z")
    subjects = [step["message"]["subject"] for step in plan["steps"] if step.get("message")]
    assert subjects == ["Offer on 12 Elm St", "Re: Offer on 12 Elm St", "Still there?", "Re: Still there?"]


# --- inbound replies --------------------------------------------------------------------------


def _reply(client, in_reply_to: str, email: str):
    body, content_type = multipart({
        "headers": f"Message-ID: <{uuid.uuid4().hex}@mail.example.com>\nIn-Reply-To: {in_reply_to}\nReferences: {in_reply_to}",
        "from": f"Pat <{email}>",
        "to": "Offer follow-ups <offers@example.com>",  # the From address, no reply+token
        "subject": "Re: Offer on 12 Elm Street, Springfield",
        "text": "Can you do 260k?",
    })
    response = client.post("/webhooks/sendgrid/inbound", content=body, headers={"Content-Type": content_type})
    assert response.status_code == 200, response.text
    return response.json()


def test_an_inbound_reply_is_matched_by_in_reply_to_and_stops_the_enrollment(client, fake_providers) -> None:
    email = f"{unique('seller')}@example.com"
    owner = new_owner()
    enrollment_id = new_enrollment(owner, new_sequence(owner, [FIRST, WAIT, REPLY]), seller_email=email)
    assert execute_send_step(enrollment_id, 0).outcome == "sent"
    [sent] = _sent(enrollment_id)
    token = enrollment_row(enrollment_id).reply_token
    domain = get_settings().reply_domain

    # Another database's id for the same enrollment and step, and a forged one: not ours.
    other_database = message_id(enrollment_id, 0, token, uuid.uuid4(), domain)
    forged = f"<followups.{enrollment_id}.0.{'0' * 16}@{domain}>"
    for foreign in (other_database, forged):
        assert _reply(client, foreign, email)["stored"] == 0
    assert enrollment_row(enrollment_id).status == "ACTIVE"

    assert _reply(client, sent.content["message_id"], email)["stopped"] == 1
    assert enrollment_row(enrollment_id).status == "STOPPED"
    assert event_types(enrollment_id)[-2:] == ["REPLY_RECEIVED", "STOPPED"]


@pytest.fixture
def user_headers(database_url) -> dict[str, str]:
    from api_support import new_api_user

    return new_api_user().headers
