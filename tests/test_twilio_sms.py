"""Twilio Messages: the form POST against the wire contract, and error classification."""

from __future__ import annotations

import base64
from urllib.parse import parse_qs

import httpx
import pytest
import respx

from followups.settings import Settings
from followups.providers.messages import OutgoingSms
from followups.errors import OutcomeUnknownProviderError, PermanentProviderError, TransientProviderError
from followups.providers.twilio_sms import send_sms

TOKEN = "tok"
MESSAGES_URL = "https://twilio.test/2010-04-01/Accounts/AC123/Messages.json"


@pytest.fixture
def settings() -> Settings:
    return Settings(
        sendgrid_api_key="SG.test",
        sendgrid_base_url="https://sendgrid.test",
        twilio_account_sid="AC123",
        twilio_auth_token=TOKEN,
        twilio_base_url="https://twilio.test",
        twilio_from_number="+15005550006",
        provider_mode="live",
    )


@pytest.fixture
def sms() -> OutgoingSms:
    return OutgoingSms(
        to="+15558675310",
        body="Hi Jane, any thoughts on our $250,000 offer? Reply STOP to opt out.",
        status_callback="https://api.example.com/webhooks/twilio/status",
    )


@pytest.fixture
def client() -> httpx.Client:
    with httpx.Client() as c:
        yield c


@pytest.fixture
def mock() -> respx.MockRouter:
    with respx.mock(assert_all_mocked=True, assert_all_called=False) as router:
        yield router


def _created(sid: str = "SM0123456789abcdef0123456789abcdef", **extra) -> httpx.Response:
    body = {"sid": sid, "status": "queued", "to": "+15558675310", "from": "+15005550006",
            "num_segments": "1", "error_code": None, **extra}
    return httpx.Response(201, json=body)


def _twilio_error(status: int, code: int, message: str) -> httpx.Response:
    body = {"code": code, "message": message, "more_info": f"https://www.twilio.com/docs/errors/{code}",
            "status": status}
    return httpx.Response(status, json=body)


# --- success -------------------------------------------------------------------------------


def test_send_posts_form_and_returns_receipt(settings, sms, client, mock) -> None:
    route = mock.post(MESSAGES_URL).mock(return_value=_created())

    receipt = send_sms(client, settings, sms)

    assert receipt.provider == "twilio"
    assert receipt.message_id == "SM0123456789abcdef0123456789abcdef"
    assert receipt.status_code == 201
    assert receipt.details == {"status": "queued", "num_segments": 1}

    request = route.calls.last.request
    assert request.method == "POST"
    assert str(request.url) == MESSAGES_URL
    assert request.headers["Content-Type"] == "application/x-www-form-urlencoded"
    expected_auth = base64.b64encode(f"AC123:{TOKEN}".encode()).decode()
    assert request.headers["Authorization"] == f"Basic {expected_auth}"
    form = parse_qs(request.content.decode(), strict_parsing=True)
    assert form == {
        "To": ["+15558675310"],
        "From": ["+15005550006"],
        "Body": ["Hi Jane, any thoughts on our $250,000 offer? Reply STOP to opt out."],
        "StatusCallback": ["https://api.example.com/webhooks/twilio/status"],
    }


def test_status_callback_is_optional(settings, client, mock) -> None:
    route = mock.post(MESSAGES_URL).mock(return_value=_created(num_segments="2"))

    receipt = send_sms(client, settings, OutgoingSms(to="+15558675310", body="x" * 200))

    form = parse_qs(route.calls.last.request.content.decode())
    assert "StatusCallback" not in form
    assert receipt.details["num_segments"] == 2


def test_the_owners_number_is_the_from(settings, sms, client, mock) -> None:
    route = mock.post(MESSAGES_URL).mock(return_value=_created())
    send_sms(client, settings, OutgoingSms(to=sms.to, body="Hi", from_number="+15035550177"))
    form = parse_qs(route.calls.last.request.content.decode())
    assert form["From"] == ["+15035550177"] and "MessagingServiceSid" not in form


def test_a_messaging_service_replaces_the_from(settings, sms, client, mock) -> None:
    route = mock.post(MESSAGES_URL).mock(return_value=_created())
    service = "MG" + "0123456789abcdef" * 2
    send_sms(client, settings, OutgoingSms(to=sms.to, body="Hi", from_number="+15035550177", messaging_service_sid=service))
    form = parse_qs(route.calls.last.request.content.decode())
    # Twilio takes one or the other: a From next to the service would pin the number.
    assert form == {"To": ["+15558675310"], "Body": ["Hi"], "MessagingServiceSid": [service]}


def test_missing_credentials_are_permanent_without_a_request(sms, client, mock) -> None:
    settings = Settings(twilio_account_sid="AC123", twilio_auth_token="", twilio_base_url="https://twilio.test")
    route = mock.post(MESSAGES_URL)
    with pytest.raises(PermanentProviderError):
        send_sms(client, settings, sms)
    assert not route.called


# --- errors --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "code", "message"),
    [
        (400, 21211, "The 'To' number +1555 is not a valid phone number."),
        (400, 21610, "Attempt to send to unsubscribed recipient"),
        (400, 21612, "The 'To' phone number is not currently reachable via SMS"),
        (400, 21614, "'To' number is not a valid mobile number"),
        (401, 20003, "Authenticate"),
        (404, 20404, "The requested resource was not found"),
    ],
)
def test_client_errors_are_permanent(settings, sms, client, mock, status: int, code: int, message: str) -> None:
    mock.post(MESSAGES_URL).mock(return_value=_twilio_error(status, code, message))

    with pytest.raises(PermanentProviderError) as info:
        send_sms(client, settings, sms)

    exc = info.value
    assert type(exc) is PermanentProviderError
    assert (exc.provider, exc.status_code, exc.code, exc.message) == ("twilio", status, code, message)
    assert exc.retry_after is None
    assert TOKEN not in str(exc) and TOKEN not in exc.describe()


@pytest.mark.parametrize(
    ("status", "code", "headers", "retry_after"),
    [
        (429, 20429, {"Retry-After": "5"}, 5.0),
        (429, 20429, {}, None),
        (429, None, {"Retry-After": "2"}, 2.0),
        # 20429 means "never processed" whatever the HTTP status says.
        (400, 20429, {}, None),
    ],
)
def test_rate_limits_are_transient(settings, sms, client, mock, status, code, headers, retry_after) -> None:
    body = {"message": "Too Many Requests", "status": status}
    if code is not None:
        body["code"] = code
    mock.post(MESSAGES_URL).mock(return_value=httpx.Response(status, json=body, headers=headers))

    with pytest.raises(TransientProviderError) as info:
        send_sms(client, settings, sms)

    assert info.value.status_code == status
    assert info.value.code == code
    assert info.value.retry_after == retry_after


@pytest.mark.parametrize("status", [500, 502, 503])
def test_server_errors_are_transient(settings, sms, client, mock, status: int) -> None:
    mock.post(MESSAGES_URL).mock(return_value=_twilio_error(status, 20500, "Internal Server Error"))

    with pytest.raises(TransientProviderError) as info:
        send_sms(client, settings, sms)

    assert info.value.status_code == status
    assert TOKEN not in str(info.value)


def test_non_json_error_body(settings, sms, client, mock) -> None:
    mock.post(MESSAGES_URL).mock(return_value=httpx.Response(502, text="<html>Bad Gateway</html>"))
    with pytest.raises(TransientProviderError) as info:
        send_sms(client, settings, sms)
    assert info.value.message == "HTTP 502 Bad Gateway"
    assert info.value.code is None


@pytest.mark.parametrize(
    "error",
    [
        httpx.ConnectTimeout("connect timed out"),
        httpx.ReadTimeout("read timed out"),
        httpx.ConnectError("connection refused"),
    ],
    ids=lambda e: type(e).__name__,
)
def test_transport_errors_are_transient_and_chained(settings, sms, client, mock, error: Exception) -> None:
    mock.post(MESSAGES_URL).mock(side_effect=error)

    with pytest.raises(TransientProviderError) as info:
        send_sms(client, settings, sms)
    # A lost answer is still transient for the provider layer, but marked: the sender never resends it.
    assert isinstance(info.value, OutcomeUnknownProviderError) is isinstance(error, httpx.ReadTimeout)

    assert info.value.__cause__ is error
    assert TOKEN not in str(info.value)
    assert TOKEN not in repr(info.value)
