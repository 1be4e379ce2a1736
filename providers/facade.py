"""One entry point for sending: console or live (SendGrid/Twilio), chosen by settings."""

from __future__ import annotations

import threading
from types import TracebackType

import httpx
from rich.console import Console

from followups.settings import ProviderMode, Settings
from followups.providers import console as console_provider, sendgrid_mail, twilio_sms
from followups.providers.messages import OutgoingEmail, OutgoingSms, ProviderReceipt


class Providers:
    """Sends emails and SMS; owns one pooled httpx.Client, created on first live send.

    A client passed in belongs to the caller and is not closed by `close()`. Credentials are
    passed per request (never set on the client), so no repr here or of the client shows them.
    """

    def __init__(
        self,
        settings: Settings,
        client: httpx.Client | None = None,
        *,
        console: Console | None = None,
    ):
        self._settings = settings
        self._client = client
        self._owns_client = client is None
        self._console = console
        # Step tasks may run on several threads: create the shared client only once.
        self._lock = threading.Lock()

    @property
    def mode(self) -> ProviderMode:
        return ProviderMode(self._settings.provider_mode)

    def send_email(self, email: OutgoingEmail) -> ProviderReceipt:
        if self.mode is ProviderMode.CONSOLE:
            return console_provider.send_email_console(email, self._console)
        return sendgrid_mail.send_email(self._http(), self._settings, email)

    def send_sms(self, sms: OutgoingSms) -> ProviderReceipt:
        if self.mode is ProviderMode.CONSOLE:
            return console_provider.send_sms_console(sms, self._console)
        return twilio_sms.send_sms(self._http(), self._settings, sms)

    def _http(self) -> httpx.Client:
        with self._lock:
            if self._client is None:
                self._client = httpx.Client(timeout=self._settings.provider_timeout_seconds)
            return self._client

    def close(self) -> None:
        with self._lock:
            if self._owns_client and self._client is not None:
                self._client.close()
                self._client = None  # a later send opens a fresh one

    def __enter__(self) -> Providers:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Providers(mode={self.mode.value!r})"
