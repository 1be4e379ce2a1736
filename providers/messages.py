"""What a step hands to a provider, and what the provider hands back."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class OutgoingEmail:
    to_email: str
    to_name: str
    subject: str
    text: str | None
    html: str | None
    reply_to: str | None = None
    # Echoed back by SendGrid's event webhook; values must be strings (a number is a 400).
    custom_args: dict[str, str] = field(default_factory=dict)
    categories: tuple[str, ...] = ()
    # The owner's sender; None uses the settings' `sendgrid_from_email` / `sendgrid_from_name`.
    from_email: str | None = None
    from_name: str | None = None
    # Extra mail headers (List-Unsubscribe, List-Unsubscribe-Post): SendGrid's `headers` field.
    headers: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class OutgoingSms:
    to: str
    body: str
    status_callback: str | None = None
    # Sent through the Messaging Service when set, else from `from_number` (None: the settings').
    from_number: str | None = None
    messaging_service_sid: str | None = None


@dataclass(frozen=True)
class ProviderReceipt:
    provider: str  # "sendgrid" | "twilio" | "console"
    message_id: str
    status_code: int
    details: dict[str, Any] = field(default_factory=dict)
