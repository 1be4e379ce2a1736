"""SendGrid mail send: the payload against the wire contract, and error classification."""

from __future__ import annotations

import json
import time
from datetime import datetime, timedelta, timezone
from email.utils import format_datetime

import httpx
import pytest
import respx

from followups.settings import Settings
from followups.providers.messages import OutgoingEmail
from followups.errors import OutcomeUnknownProviderError, PermanentProviderError, TransientProviderError
from followups.providers.sendgrid_mail import build_mail_payload, send_email

API_KEY = "SG.test"
SEND_URL = "https://sendgrid.test/v3/mail/send"


@pytest.fixture
def settings() -> Settings:
    return Settings(
        sendgrid_api_key=API_KEY,
        sendgrid_base_url="https://sendgrid.test",
        sendgrid_from_email="offers@example.com",
        sendgrid_from_name="Offer follow-ups",
        twilio_account_sid="AC123",
        twilio_auth_token="tok",
        twilio_base_url="https://twilio.test",
        provider_mode="live",
    )


@pytest.fixture
def email() -> OutgoingEmail:
    return OutgoingEmail(
        to_email="jane@seller.test",
        to_name="Jane Doe",
        subject="Your offer on 12 Elm St",
        text="Hi Jane, our offer is $250,000.",
        html="<p>Hi Jane, our offer is <b>$250,000</b>.</p>",
        reply_to="reply+tok123@reply.example.com",
        custom_args={"enrollment_id": "42", "step_index": "3"},
        categories=("followups", "offer", "step-3"),
    )


@pytest.fixture
def client() -> httpx.Client:
    with httpx.Client() as c:
        yield c


@pytest.fixture
def mock() -> respx.MockRouter:
    with respx.mock(assert_all_mocked=True, assert_all_called=False) as router:
        yield router


def _error_body(message: str, field: str | None = None) -> dict:
    return {"errors": [{"message": message, "field": field, "help": None}]}


# --- payload -------------------------------------------------------------------------------


def test_payload_matches_contract(settings: Settings, email: OutgoingEmail) -> None:
    payload = build_mail_payload(settings, email)

    assert payload["from"] == {"email": "offers@example.com", "name": "Offer follow-ups"}
    assert payload["subject"] == "Your offer on 12 Elm St"
    assert len(payload["personalizations"]) == 1
    assert payload["personalizations"][0]["to"] == [{"email": "jane@seller.test", "name": "Jane Doe"}]
    assert payload["content"] == [
        {"type": "text/plain", "value": "Hi Jane, our offer is $250,000."},
        {"type": "text/html", "value": "<p>Hi Jane, our offer is <b>$250,000</b>.</p>"},
    ]
    assert payload["reply_to"] == {"email": "reply+tok123@reply.example.com"}
    assert payload["custom_args"] == {"enrollment_id": "42", "step_index": "3"}
    assert all(isinstance(value, str) for value in payload["custom_args"].values())
    # The helper reverses categories; SendGrid treats them as a set.
    assert set(payload["categories"]) == {"followups", "offer", "step-3"}
    assert len(payload["categories"]) == 3
    json.dumps(payload)  # JSON-ready as is


def test_payload_is_from_the_owners_address_and_name(settings: Settings, email: OutgoingEmail) -> None:
    own = OutgoingEmail(**{**email.__dict__, "from_email": "alice@investor.test", "from_name": "Alice Buys Houses"})
    assert build_mail_payload(settings, own)["from"] == {"email": "alice@investor.test", "name": "Alice Buys Houses"}
    # An own address without an own name keeps the global display name.
    address_only = OutgoingEmail(**{**email.__dict__, "from_email": "alice@investor.test"})
    assert build_mail_payload(settings, address_only)["from"] == {"email": "alice@investor.test", "name": "Offer follow-ups"}


def test_payload_coerces_custom_arg_values_to_strings(settings: Settings, email: OutgoingEmail) -> None:
    # A number in custom_args is a 400 at SendGrid; the dataclass hint does not stop callers.
    loose = OutgoingEmail(**{**email.__dict__, "custom_args": {"enrollment_id": 42, "ratio": 1.5}})
    assert build_mail_payload(settings, loose)["custom_args"] == {"enrollment_id": "42", "ratio": "1.5"}


def test_payload_html_only_and_minimal(settings: Settings) -> None:
    email = OutgoingEmail(to_email="a@b.test", to_name="", subject="S", text=None, html="<p>x</p>")
    payload = build_mail_payload(settings, email)

    assert payload["content"] == [{"type": "text/html", "value": "<p>x</p>"}]
    assert payload["personalizations"][0]["to"] == [{"email": "a@b.test"}]
    for absent in ("reply_to", "custom_args", "categories"):
        assert absent not in payload


def test_payload_text_only(settings: Settings) -> None:
    email = OutgoingEmail(to_email="a@b.test", to_name="A", subject="S", text="plain", html=None)
    assert build_mail_payload(settings, email)["content"] == [{"type": "text/plain", "value": "plain"}]


def test_payload_without_body_is_permanent(settings: Settings) -> None:
    email = OutgoingEmail(to_email="a@b.test", to_name="A", subject="S", text=None, html="")
    with pytest.raises(PermanentProviderError):
        build_mail_payload(settings, email)


def test_payload_refusing_an_api_key_shaped_body_is_permanent(settings: Settings) -> None:
    # sendgrid's Content helper raises ApiKeyIncludedException for a body starting with SG.x.y
    email = OutgoingEmail(to_email="a@b.test", to_name="A", subject="S", text="SG.abc.def", html=None)
    with pytest.raises(PermanentProviderError) as info:
        build_mail_payload(settings, email)
    assert "SG.abc.def" not in str(info.value)


# --- success -------------------------------------------------------------------------------


def test_send_posts_payload_and_returns_receipt(
    settings: Settings, email: OutgoingEmail, client: httpx.Client, mock: respx.MockRouter
) -> None:
    route = mock.post(SEND_URL).mock(return_value=httpx.Response(202, headers={"X-Message-Id": "abc123XYZ"}))

    receipt = send_email(client, settings, email)

    assert receipt.provider == "sendgrid"
    assert receipt.message_id == "abc123XYZ"
    assert receipt.status_code == 202
    assert route.call_count == 1
    request = route.calls.last.request
    assert request.method == "POST"
    assert str(request.url) == SEND_URL
    assert request.headers["Authorization"] == f"Bearer {API_KEY}"
    assert request.headers["Content-Type"] == "application/json"
    assert request.headers["Accept"] == "application/json"
    assert json.loads(request.content) == build_mail_payload(settings, email)


def test_send_trailing_slash_in_base_url(email: OutgoingEmail, client: httpx.Client, mock: respx.MockRouter) -> None:
    settings = Settings(sendgrid_api_key=API_KEY, sendgrid_base_url="https://sendgrid.test/", provider_mode="live")
    route = mock.post(SEND_URL).mock(return_value=httpx.Response(202, headers={"X-Message-Id": "m1"}))
    send_email(client, settings, email)
    assert route.called


def test_202_without_message_id_is_still_success(
    settings: Settings, email: OutgoingEmail, client: httpx.Client, mock: respx.MockRouter
) -> None:
    mock.post(SEND_URL).mock(return_value=httpx.Response(202))
    receipt = send_email(client, settings, email)
    assert receipt.message_id == ""
    assert receipt.status_code == 202


def test_missing_api_key_is_permanent_without_a_request(email: OutgoingEmail, client: httpx.Client, mock) -> None:
    settings = Settings(sendgrid_api_key="", sendgrid_base_url="https://sendgrid.test", provider_mode="live")
    route = mock.post(SEND_URL)
    with pytest.raises(PermanentProviderError):
        send_email(client, settings, email)
    assert not route.called


# --- errors --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "body", "expected_message"),
    [
        (400, _error_body("The to array is required for all personalization objects", "personalizations.0.to"),
         "The to array is required for all personalization objects (field: personalizations.0.to)"),
        (401, _error_body("The provided authorization grant is invalid, expired, or revoked"),
         "The provided authorization grant is invalid, expired, or revoked"),
        (403, _error_body("The from address does not match a verified Sender Identity.", "from"),
         "The from address does not match a verified Sender Identity. (field: from)"),
        (413, _error_body("Payload too large"), "Payload too large"),
        (404, None, "HTTP 404 Not Found"),
        (422, {"unexpected": "shape"}, "HTTP 422 Unprocessable Entity"),
    ],
)
def test_client_errors_are_permanent(
    settings, email, client, mock, status: int, body: dict | None, expected_message: str
) -> None:
    response = httpx.Response(status, json=body) if body is not None else httpx.Response(status, text="nope")
    mock.post(SEND_URL).mock(return_value=response)

    with pytest.raises(PermanentProviderError) as info:
        send_email(client, settings, email)

    exc = info.value
    assert type(exc) is PermanentProviderError
    assert exc.status_code == status
    assert exc.provider == "sendgrid"
    assert exc.message == expected_message
    assert exc.retry_after is None
    assert API_KEY not in str(exc) and API_KEY not in exc.describe()


@pytest.mark.parametrize("status", [500, 502, 503, 504])
def test_server_errors_are_transient(settings, email, client, mock, status: int) -> None:
    mock.post(SEND_URL).mock(return_value=httpx.Response(status, json=_error_body("Internal error")))

    with pytest.raises(TransientProviderError) as info:
        send_email(client, settings, email)

    assert info.value.status_code == status
    assert info.value.message == "Internal error"
    assert API_KEY not in str(info.value)


def test_429_retry_after_from_rate_limit_reset(settings, email, client, mock) -> None:
    reset = int(time.time()) + 30
    headers = {"X-RateLimit-Limit": "600", "X-RateLimit-Remaining": "0", "X-RateLimit-Reset": str(reset)}
    mock.post(SEND_URL).mock(return_value=httpx.Response(429, headers=headers, json=_error_body("too many requests")))

    with pytest.raises(TransientProviderError) as info:
        send_email(client, settings, email)

    assert info.value.status_code == 429
    # reset - now, with a little slack for the time the test takes.
    assert reset - time.time() - 2 <= info.value.retry_after <= reset - time.time() + 1
    assert 27 <= info.value.retry_after <= 30


def test_429_reset_in_the_past_means_now(settings, email, client, mock) -> None:
    headers = {"X-RateLimit-Reset": str(int(time.time()) - 100)}
    mock.post(SEND_URL).mock(return_value=httpx.Response(429, headers=headers))
    with pytest.raises(TransientProviderError) as info:
        send_email(client, settings, email)
    assert info.value.retry_after == 0


@pytest.mark.parametrize(
    ("retry_after", "low", "high"),
    [
        ("17", 17, 17),
        ("http-date-in-60s", 55, 60),
        ("soon", None, None),
    ],
)
def test_429_retry_after_header(settings, email, client, mock, retry_after: str, low, high) -> None:
    if retry_after == "http-date-in-60s":  # computed now: a date fixed at collection time goes stale
        retry_after = format_datetime(datetime.now(timezone.utc) + timedelta(seconds=60), usegmt=True)
    mock.post(SEND_URL).mock(return_value=httpx.Response(429, headers={"Retry-After": retry_after}))

    with pytest.raises(TransientProviderError) as info:
        send_email(client, settings, email)

    if low is None:
        assert info.value.retry_after is None
    else:
        assert low <= info.value.retry_after <= high


def test_429_without_hint_has_no_retry_after(settings, email, client, mock) -> None:
    mock.post(SEND_URL).mock(return_value=httpx.Response(429))
    with pytest.raises(TransientProviderError) as info:
        send_email(client, settings, email)
    assert info.value.retry_after is None


@pytest.mark.parametrize(
    ("error", "unknown"),
    [
        (httpx.ConnectTimeout("connect timed out"), False),
        (httpx.ConnectError("connection refused"), False),
        (httpx.PoolTimeout("no connection free"), False),
        (httpx.WriteTimeout("write timed out"), False),
        # The request went out; the answer did not come back: perhaps sent.
        (httpx.ReadTimeout("read timed out"), True),
        (httpx.RemoteProtocolError("server disconnected"), True),
        (httpx.ReadError("connection reset by peer"), True),
    ],
    ids=lambda e: type(e).__name__ if isinstance(e, Exception) else str(e),
)
def test_transport_errors_are_transient_and_chained(settings, email, client, mock, error: Exception, unknown: bool) -> None:
    mock.post(SEND_URL).mock(side_effect=error)

    with pytest.raises(TransientProviderError) as info:
        send_email(client, settings, email)
    assert isinstance(info.value, OutcomeUnknownProviderError) is unknown

    assert info.value.__cause__ is error
    assert info.value.status_code is None
    assert API_KEY not in str(info.value)
    assert API_KEY not in repr(info.value)
