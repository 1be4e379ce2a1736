"""An owner's sending identity: set and read through Python, the CLI and HTTP (hostile input
refused whole, with the field), its fallback to the settings, and the messages sent with it."""

from __future__ import annotations

import json
from urllib.parse import parse_qs

import pytest

from followups.db.session import session_scope
from followups.errors import InvalidInputError, NotFoundError
from followups.execution.sending import execute_send_step
from followups.inputs import SenderIdentity
from followups.settings import get_settings
from followups.users import ensure_user, get_sender_identity, load_sender, set_sender_identity
from support import events_of, new_enrollment, new_owner, new_sequence, unique, unique_phone

SERVICE = "MG" + "0123456789abcdef" * 2
EMAIL_THEN_SMS = [
    {"type": "EMAIL", "subject": "Offer on {{ deal.property_address }}", "text": "Hi {{ seller.first_name }}"},
    {"type": "SMS", "body": "Hi {{ seller.first_name }}, any thoughts?"},
]
FULL = {"email_from": "alice@investor.example.com", "email_from_name": "Alice Buys Houses", "sms_from": "+1 (503) 555-0177"}
BAD = [
    ({"sms_from": "12"}, "sms_from"),
    ({"sms_from": "+1503555０１７７"}, "sms_from"),  # full-width digits
    ({"sms_from": 15035550177}, "sms_from"),
    ({"messaging_service_sid": "MG123"}, "messaging_service_sid"),
    ({"messaging_service_sid": "PN" + "0" * 32}, "messaging_service_sid"),
    ({"messaging_service_sid": "MG" + "g" * 32}, "messaging_service_sid"),
    ({"sms_from": "+15035550177", "messaging_service_sid": SERVICE}, "messaging_service_sid"),
    ({"email_from": "not-an-address"}, "email_from"),
    ({"email_from": "a@b.example.com\r\nBcc: x@evil.example.com"}, "email_from"),
    ({"email_from_name": "Alice\r\nBcc: x@evil.example.com"}, "email_from_name"),
    ({"email_from_name": "x" * 201}, "email_from_name"),
    ({"email_from_name": "nul\x00"}, "email_from_name"),
    ({"email_from_name": "\udcff"}, "email_from_name"),
    ({"email_from_name": ""}, "email_from_name"),
    ({"from": "x@y.example.com"}, "from"),
]


def with_identity(identity: dict | None) -> int:
    owner = new_owner()
    if identity is not None:
        with session_scope() as session:
            set_sender_identity(session, owner, identity)
    return owner


def stored(owner: int) -> dict:
    with session_scope() as session:
        return get_sender_identity(session, owner).model_dump()


# --- Python -------------------------------------------------------------------------------------


def test_set_and_get_normalise_and_fall_back_to_the_settings(db):
    settings = get_settings()
    owner = with_identity(FULL)
    assert stored(owner) == {**FULL, "sms_from": "+15035550177", "messaging_service_sid": None, "timezone": None}
    with session_scope() as session:
        sender = load_sender(session, owner, settings)
        assert (sender.email_from, sender.email_from_name) == (FULL["email_from"], FULL["email_from_name"])
        assert sender.sms_from == "+15035550177"

        set_sender_identity(session, owner, SenderIdentity(messaging_service_sid=" MG" + "0123456789ABCDEF" * 2))
        assert get_sender_identity(session, owner).messaging_service_sid == SERVICE  # stored as Twilio writes it
        sender = load_sender(session, owner, settings)
        assert (sender.email_from, sender.email_from_name) == (settings.sendgrid_from_email, settings.sendgrid_from_name)
        assert (sender.sms_from, sender.messaging_service_sid) == (None, SERVICE)

        set_sender_identity(session, owner, None)  # cleared: the settings' identity again
        sender = load_sender(session, owner, settings)
    assert stored(owner) == dict.fromkeys(FULL | {"messaging_service_sid": None, "timezone": None})
    assert (sender.email_from, sender.sms_from, sender.messaging_service_sid) == (
        settings.sendgrid_from_email, settings.twilio_from_number, None
    )


@pytest.mark.parametrize(("identity", "field"), BAD)
def test_bad_identities_are_refused_whole_naming_the_field(db, identity, field):
    owner = with_identity(FULL)
    before = stored(owner)
    with session_scope() as session, pytest.raises(InvalidInputError) as info:
        set_sender_identity(session, owner, {**FULL, **identity})
    assert info.value.field == field
    assert stored(owner) == before


def test_unknown_owners_are_not_found(db):
    with session_scope() as session:
        for call in (lambda: get_sender_identity(session, 2**62), lambda: set_sender_identity(session, 2**62, FULL)):
            with pytest.raises(NotFoundError):
                call()
        with pytest.raises(InvalidInputError):
            set_sender_identity(session, True, FULL)


# --- messages go out with it ---------------------------------------------------------------------


def _sent_through(fake_providers, owner: int, phone: str, email: str) -> tuple[dict, dict, int]:
    enrollment_id = new_enrollment(owner, new_sequence(owner, EMAIL_THEN_SMS), seller_phone=phone, seller_email=email)
    assert execute_send_step(enrollment_id, 0).outcome == "sent"
    assert execute_send_step(enrollment_id, 1).outcome == "sent"
    [mail] = [json.loads(r.body) for r in fake_providers.for_recipient(email)]
    [sms] = [parse_qs(r.body.decode()) for r in fake_providers.for_recipient(phone)]
    return mail, sms, enrollment_id


def test_emails_and_sms_go_out_from_the_owners_identity(db, fake_providers):
    phone, email = unique_phone(), f"{unique('pat')}@example.com"
    mail, sms, enrollment_id = _sent_through(fake_providers, with_identity(FULL), phone, email)
    assert mail["from"] == {"email": FULL["email_from"], "name": FULL["email_from_name"]}
    assert sms["From"] == ["+15035550177"] and "MessagingServiceSid" not in sms
    sent = {e.event_type: e.content for e in events_of(enrollment_id) if e.event_type.endswith("_SENT")}
    assert sent["SMS_SENT"]["from"] == "+15035550177" and sent["EMAIL_SENT"]["from"] == FULL["email_from"]


def test_a_messaging_service_sends_without_a_from_number(db, fake_providers):
    phone, email = unique_phone(), f"{unique('pat')}@example.com"
    _, sms, enrollment_id = _sent_through(fake_providers, with_identity({"messaging_service_sid": SERVICE}), phone, email)
    assert sms["MessagingServiceSid"] == [SERVICE] and "From" not in sms
    [sent] = [e.content for e in events_of(enrollment_id) if e.event_type == "SMS_SENT"]
    assert sent["messaging_service_sid"] == SERVICE and sent["from"] is None


def test_without_an_identity_the_settings_are_used(db, fake_providers):
    settings = get_settings()
    phone, email = unique_phone(), f"{unique('pat')}@example.com"
    mail, sms, enrollment_id = _sent_through(fake_providers, with_identity(None), phone, email)
    assert mail["from"] == {"email": settings.sendgrid_from_email, "name": settings.sendgrid_from_name}
    assert sms["From"] == [settings.twilio_from_number]
    assert [e.content["from"] for e in events_of(enrollment_id) if e.event_type == "SMS_SENT"] == [settings.twilio_from_number]


# --- CLI ----------------------------------------------------------------------------------------


def test_cli_sets_shows_and_clears_an_identity(db, cli):
    name = unique("investor")
    assert cli("users", "create", name)[0] == 0
    code, out, _ = cli("users", "identity", name, "--email-from", FULL["email_from"], "--sms-from", "+15035550177",
                       "--json")
    shown = json.loads(out)
    assert code == 0 and (shown["user"], shown["email_from"], shown["sms_from"]) == (name, FULL["email_from"], "+15035550177")
    assert shown["effective"]["email_from_name"] == get_settings().sendgrid_from_name

    # A messaging service replaces the number (an SMS has one sender); the rest is kept.
    code, out, _ = cli("users", "identity", name, "--messaging-service", SERVICE, "--json")
    shown = json.loads(out)
    assert code == 0 and (shown["sms_from"], shown["messaging_service_sid"]) == (None, SERVICE)
    assert shown["email_from"] == FULL["email_from"]

    code, out, _ = cli("users", "identity", name)  # no option: shown, unchanged
    assert code == 0 and SERVICE in out and FULL["email_from"] in out

    code, out, _ = cli("users", "identity", name, "--clear", "--email-from-name", "Al", "--json")
    shown = json.loads(out)
    assert code == 0 and shown["email_from_name"] == "Al" and shown["messaging_service_sid"] is None
    assert shown["effective"]["sms_from"] == get_settings().twilio_from_number


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--sms-from", "12"], "sms_from: must be a phone number"),
        (["--sms-from", "+15035550177", "--messaging-service", SERVICE], "not both"),
        (["--messaging-service", "MG-not-a-sid"], "messaging_service_sid: must be a Twilio Messaging Service SID"),
        (["--email-from", "nobody"], "email_from:"),
        (["--email-from-name", "a\u2028b"], "email_from_name: must not contain control characters"),
        (["--email-from-name", "\udcff"], "email_from_name:"),
        (["--sms-from"], "requires an argument"),
    ],
)
def test_cli_refuses_bad_identities_in_one_line_and_stores_nothing(db, cli, args, message):
    name = unique("investor")
    with session_scope() as session:
        owner = ensure_user(session, name)
        set_sender_identity(session, owner, FULL)
    before = stored(owner)
    code, out, err = cli("users", "identity", name, *args)
    assert code == 1 and out == "" and message in err
    assert err.startswith("error: ") and err.count("\n") == 1
    assert stored(owner) == before


def test_cli_identity_of_an_unknown_user_is_one_line(db, cli):
    code, _, err = cli("users", "identity", unique("nobody"), "--sms-from", "+15035550177")
    assert code == 1 and "not found" in err and err.count("\n") == 1
    code, _, err = cli("users", "identity", "two\nlines")
    assert code == 1 and "name:" in err and err.count("\n") == 1


# --- HTTP ---------------------------------------------------------------------------------------

URL = "/api/me/sender-identity"


def test_http_get_and_put_the_callers_identity(client, user):
    settings = get_settings()
    first = client.get(URL, headers=user.headers)
    assert first.status_code == 200, first.text
    assert first.json()["sms_from"] is None
    assert first.json()["effective"] == {
        "email_from": settings.sendgrid_from_email, "email_from_name": settings.sendgrid_from_name,
        "sms_from": settings.twilio_from_number, "messaging_service_sid": None,
    }
    put = client.put(URL, json=FULL, headers=user.headers)
    assert put.status_code == 200, put.text
    assert put.json()["sms_from"] == "+15035550177" and put.json()["effective"]["sms_from"] == "+15035550177"
    assert client.get(URL, headers=user.headers).json() == put.json()
    assert stored(user.id)["email_from"] == FULL["email_from"]

    # PUT replaces the whole identity: what is left out goes back to the settings.
    service_only = client.put(URL, json={"messaging_service_sid": SERVICE}, headers=user.headers).json()
    assert (service_only["sms_from"], service_only["email_from"]) == (None, None)
    assert service_only["effective"]["messaging_service_sid"] == SERVICE and service_only["effective"]["sms_from"] is None
    assert client.put(URL, json={}, headers=user.headers).json()["messaging_service_sid"] is None


@pytest.mark.parametrize(("identity", "field"), BAD)
def test_http_bad_identities_are_422_naming_the_field_and_store_nothing(client, user, identity, field):
    assert client.put(URL, json=FULL, headers=user.headers).status_code == 200
    before = stored(user.id)
    body = json.dumps(identity, ensure_ascii=True).encode()  # a lone surrogate travels as \\udcff
    response = client.put(URL, content=body, headers={**user.headers, "Content-Type": "application/json"})
    assert response.status_code == 422, response.text
    assert response.json()["errors"][0]["field"] == field
    assert stored(user.id) == before


@pytest.mark.parametrize("body", [b"[]", b"null", b"{", b'{"sms_from": ["+15035550177"]}', b'"x"'])
def test_http_malformed_bodies_are_422(client, user, body):
    response = client.put(URL, content=body, headers={**user.headers, "Content-Type": "application/json"})
    assert response.status_code == 422, response.text


def test_http_identity_needs_a_token_and_is_the_callers_own(client, user):
    from api_support import new_api_user

    assert client.get(URL).status_code == 401
    assert client.put(URL, json=FULL, headers={"Authorization": "Bearer fu_nope"}).status_code == 401
    other = new_api_user()
    client.put(URL, json=FULL, headers=user.headers)
    assert client.get(URL, headers=other.headers).json()["sms_from"] is None
