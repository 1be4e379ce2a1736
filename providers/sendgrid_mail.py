"""SendGrid v3 mail send: payload built with the official helpers, sent with httpx.

The official client sends through urllib (python_http_client), which respx cannot see and which
has no shared connection pool, so only its `helpers.mail` payload builders are used here. Every
HTTP outcome is classified into a receipt, a TransientProviderError or a PermanentProviderError
right here, at the boundary.
"""

from __future__ import annotations

import time
from typing import Any

import httpx
from sendgrid.helpers.mail import Category, Content, CustomArg, From, Header, Mail, ReplyTo, To
from sendgrid.helpers.mail.exceptions import ApiKeyIncludedException

from followups.settings import Settings
from followups.providers.messages import OutgoingEmail, ProviderReceipt
from followups.errors import PermanentProviderError, TransientProviderError
from followups.providers.transport import parse_retry_after, post, redact

PROVIDER = "sendgrid"
MAIL_SEND_PATH = "/v3/mail/send"

# An X-RateLimit-Reset below this is a delay in seconds, not an epoch (defensive: the contract
# says epoch, but a delta read as an epoch would mean "retry right now").
_EPOCH_FLOOR = 1_000_000_000


def build_mail_payload(settings: Settings, email: OutgoingEmail) -> dict[str, Any]:
    """The JSON body of a v3 mail send for one recipient."""
    if not (email.text or email.html):
        raise PermanentProviderError("email has neither a text nor an html body", provider=PROVIDER)
    try:
        mail = Mail(
            from_email=From(email.from_email or settings.sendgrid_from_email, _from_name(settings, email)),
            to_emails=To(email.to_email, email.to_name or None),
            subject=email.subject,
        )
        # The helper puts text/plain first whatever the order of assignment; set it first anyway.
        if email.text:
            mail.content = Content("text/plain", email.text)
        if email.html:
            mail.content = Content("text/html", email.html)
    except ApiKeyIncludedException as exc:
        # The helper refuses a body that starts with something shaped like a SendGrid key.
        raise PermanentProviderError(
            "email body looks like it contains a SendGrid API key; refusing to send",
            provider=PROVIDER,
        ) from exc
    if email.reply_to:
        mail.reply_to = ReplyTo(email.reply_to)
    if email.custom_args:
        # The helper passes values through untouched, and a non-string value is a 400.
        mail.custom_arg = [CustomArg(str(key), str(value)) for key, value in email.custom_args.items()]
    if email.headers:
        mail.header = [Header(str(key), str(value)) for key, value in email.headers.items()]
    if email.categories:
        # Note: the helper reverses category order; SendGrid treats them as a set.
        mail.category = [Category(name) for name in email.categories]
    return mail.get()


def _from_name(settings: Settings, email: OutgoingEmail) -> str | None:
    # An owner's own address without a name of its own still gets the global display name.
    return (email.from_name if email.from_name is not None else settings.sendgrid_from_name) or None


def send_email(client: httpx.Client, settings: Settings, email: OutgoingEmail) -> ProviderReceipt:
    """POST one email to SendGrid; return its receipt or raise a classified ProviderError."""
    api_key = settings.sendgrid_api_key.get_secret_value()
    if not api_key:
        raise PermanentProviderError("SendGrid API key is not configured", provider=PROVIDER)
    payload = build_mail_payload(settings, email)
    url = settings.sendgrid_base_url.rstrip("/") + MAIL_SEND_PATH
    response = post(
        client,
        url,
        provider=PROVIDER,
        label="SendGrid",
        json=payload,
        headers={
            "Authorization": f"Bearer {api_key}",
            "Content-Type": "application/json",
            "Accept": "application/json",
        },
        timeout=settings.provider_timeout_seconds,
    )
    return _receipt_or_raise(response, secret=api_key)


def _receipt_or_raise(response: httpx.Response, *, secret: str) -> ProviderReceipt:
    status = response.status_code
    if 200 <= status < 300:
        # 202 normally (200 in sandbox mode). The id is only used for webhook correlation, so a
        # missing header must not turn an accepted mail into a retry (that would send it twice).
        return ProviderReceipt(
            provider=PROVIDER,
            message_id=response.headers.get("X-Message-Id", ""),
            status_code=status,
        )
    message = redact(_first_error(response), secret)
    if status == 429:
        raise TransientProviderError(
            f"rate limited: {message}",
            provider=PROVIDER,
            status_code=status,
            retry_after=_retry_after(response.headers),
        )
    if status >= 500:
        raise TransientProviderError(message, provider=PROVIDER, status_code=status)
    # 400/413: fix the payload; 401/403: fix the configuration. Either way, do not retry.
    raise PermanentProviderError(message, provider=PROVIDER, status_code=status)


def _first_error(response: httpx.Response) -> str:
    """The first `errors[].message` (with its field), or a fallback naming the status."""
    try:
        errors = response.json().get("errors") or []
        first = errors[0]
        message = str(first.get("message") or "").strip()
        field = first.get("field")
    except (ValueError, AttributeError, IndexError, TypeError):
        message, field = "", None
    if not message:
        return f"HTTP {response.status_code} {response.reason_phrase}".strip()
    return f"{message} (field: {field})" if field else message


def _retry_after(headers: httpx.Headers) -> float | None:
    """Seconds from now before retrying: X-RateLimit-Reset (epoch) first, then Retry-After."""
    now = time.time()
    reset = headers.get("X-RateLimit-Reset")
    if reset is not None:
        try:
            value = float(reset)
        except ValueError:
            pass
        else:
            return max(0.0, value - now if value >= _EPOCH_FLOOR else value)
    return parse_retry_after(headers.get("Retry-After"), now=now)
