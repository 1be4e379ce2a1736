"""Console mode, and the Providers facade that picks console or live from settings."""

from __future__ import annotations

import re

import httpx
import pytest
import respx
from rich.console import Console

from followups.settings import Settings
from followups.providers.console import send_email_console, send_sms_console
from followups.providers.messages import OutgoingEmail, OutgoingSms
from followups.errors import PermanentProviderError
from followups.providers.facade import Providers

CONSOLE_ID = re.compile(r"^console-[0-9a-f]{32}$")


def _settings(mode: str, **overrides) -> Settings:
    values = dict(
        sendgrid_api_key="SG.test",
        sendgrid_base_url="https://sendgrid.test",
        twilio_account_sid="AC123",
        twilio_auth_token="tok",
        twilio_base_url="https://twilio.test",
        provider_mode=mode,
    )
    return Settings(**{**values, **overrides})


def _recording_console() -> Console:
    return Console(record=True, width=100, force_terminal=False, color_system=None)


@pytest.fixture
def email() -> OutgoingEmail:
    return OutgoingEmail(
        to_email="jane@seller.test",
        to_name="Jane Doe",
        subject="Your offer on 12 Elm St",
        text="Hi Jane, our offer is $250,000. [bold]not markup[/bold]",
        html="<p>Hi Jane</p>",
        reply_to="reply+tok123@reply.example.com",
        custom_args={"enrollment_id": "42"},
        categories=("followups",),
    )


@pytest.fixture
def sms() -> OutgoingSms:
    return OutgoingSms(to="+15558675310", body="Any thoughts on our offer? [red]Reply STOP[/red]")


# --- console provider ----------------------------------------------------------------------


def test_email_is_printed_and_receipted(email: OutgoingEmail) -> None:
    console = _recording_console()

    receipt = send_email_console(email, console)

    assert receipt.provider == "console"
    assert CONSOLE_ID.match(receipt.message_id)
    out = console.export_text()
    for expected in ("Jane Doe <jane@seller.test>", "Your offer on 12 Elm St", "reply+tok123@reply.example.com",
                     "$250,000", receipt.message_id, "EMAIL"):
        assert expected in out
    # User text is printed literally, never interpreted as rich markup.
    assert "[bold]not markup[/bold]" in out


def test_html_only_email_prints_the_html(email: OutgoingEmail) -> None:
    console = _recording_console()
    send_email_console(OutgoingEmail(to_email="a@b.test", to_name="", subject="S", text=None, html="<p>only</p>"),
                       console)
    assert "<p>only</p>" in console.export_text()


def test_sms_is_printed_and_receipted(sms: OutgoingSms) -> None:
    console = _recording_console()

    receipt = send_sms_console(sms, console)

    assert receipt.provider == "console"
    assert CONSOLE_ID.match(receipt.message_id)
    out = console.export_text()
    assert "+15558675310" in out
    assert "[red]Reply STOP[/red]" in out
    assert "SMS" in out


def test_the_sender_is_printed(email: OutgoingEmail) -> None:
    console = _recording_console()
    send_email_console(OutgoingEmail(**{**email.__dict__, "from_email": "al@inv.test", "from_name": "Al"}), console)
    send_sms_console(OutgoingSms(to="+15558675310", body="Hi", from_number="+15035550177"), console)
    service = "MG" + "ab" * 16
    send_sms_console(OutgoingSms(to="+15558675310", body="Hi", messaging_service_sid=service), console)
    out = console.export_text()
    assert "Al <al@inv.test>" in out and "+15035550177" in out and service in out


def test_ids_are_unique(sms: OutgoingSms) -> None:
    console = _recording_console()
    ids = {send_sms_console(sms, console).message_id for _ in range(20)}
    assert len(ids) == 20


def test_default_console_prints_to_stdout(sms: OutgoingSms, capsys: pytest.CaptureFixture[str]) -> None:
    send_sms_console(sms)
    assert "+15558675310" in capsys.readouterr().out


# --- Providers facade ----------------------------------------------------------------------


def test_console_mode_never_touches_http(email: OutgoingEmail, sms: OutgoingSms) -> None:
    console = _recording_console()
    with respx.mock(assert_all_called=False) as mock:  # any HTTP request would fail as unmocked
        with Providers(_settings("console"), console=console) as providers:
            assert providers.send_email(email).provider == "console"
            assert providers.send_sms(sms).provider == "console"
        assert not mock.calls
    assert "jane@seller.test" in console.export_text()


def test_live_mode_uses_sendgrid_and_twilio(email: OutgoingEmail, sms: OutgoingSms) -> None:
    with respx.mock() as mock:
        mock.post("https://sendgrid.test/v3/mail/send").mock(
            return_value=httpx.Response(202, headers={"X-Message-Id": "sg-1"}))
        mock.post("https://twilio.test/2010-04-01/Accounts/AC123/Messages.json").mock(
            return_value=httpx.Response(201, json={"sid": "SM1", "status": "queued", "num_segments": "1"}))
        with Providers(_settings("live", provider_timeout_seconds=7)) as providers:
            assert providers.send_email(email).message_id == "sg-1"
            assert providers.send_sms(sms).message_id == "SM1"
            # One pooled client, reused, with the configured timeout.
            client = providers._http()
            assert client is providers._http()
            assert client.timeout == httpx.Timeout(7)
        assert client.is_closed


def test_injected_client_is_used_and_left_open(email: OutgoingEmail) -> None:
    with httpx.Client() as client, respx.mock() as mock:
        route = mock.post("https://sendgrid.test/v3/mail/send").mock(return_value=httpx.Response(202))
        with Providers(_settings("live"), client=client) as providers:
            providers.send_email(email)
        assert route.called
        assert not client.is_closed


def test_close_then_send_opens_a_new_client(sms: OutgoingSms) -> None:
    providers = Providers(_settings("live"))
    first = providers._http()
    providers.close()
    assert first.is_closed
    second = providers._http()
    assert second is not first and not second.is_closed
    providers.close()


def test_secrets_absent_from_repr_and_errors(email: OutgoingEmail, sms: OutgoingSms) -> None:
    settings = _settings("live", sendgrid_api_key="SG.supersecretkey", twilio_auth_token="twilio-secret-token")
    with respx.mock() as mock:
        mock.post("https://sendgrid.test/v3/mail/send").mock(
            return_value=httpx.Response(401, json={"errors": [{"message": "bad key SG.supersecretkey"}]}))
        mock.post("https://twilio.test/2010-04-01/Accounts/AC123/Messages.json").mock(
            return_value=httpx.Response(401, json={"code": 20003, "message": "Authenticate twilio-secret-token"}))
        with Providers(settings) as providers:
            texts = [repr(providers), repr(providers._http())]
            for send, message in ((providers.send_email, email), (providers.send_sms, sms)):
                with pytest.raises(PermanentProviderError) as info:
                    send(message)
                texts += [str(info.value), repr(info.value), info.value.describe()]
    for text in texts:
        assert "supersecretkey" not in text
        assert "twilio-secret-token" not in text
