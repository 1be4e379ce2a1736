"""Twilio Programmable Messaging: one form POST per SMS, sent with httpx.

The official twilio library sends through requests/aiohttp, which respx cannot see, so the
Messages resource is called directly. Every outcome is classified here, at the boundary.
"""

from __future__ import annotations

from typing import Any

import httpx

from followups.settings import Settings
from followups.providers.messages import OutgoingSms, ProviderReceipt
from followups.errors import PermanentProviderError, TransientProviderError
from followups.providers.transport import parse_retry_after, post, redact

PROVIDER = "twilio"
TOO_MANY_REQUESTS = 20429  # never processed by Twilio: always safe to retry


def messages_url(settings: Settings) -> str:
    base = settings.twilio_base_url.rstrip("/")
    return f"{base}/2010-04-01/Accounts/{settings.twilio_account_sid}/Messages.json"


def send_sms(client: httpx.Client, settings: Settings, sms: OutgoingSms) -> ProviderReceipt:
    """POST one SMS to Twilio; return its receipt or raise a classified ProviderError."""
    sid = settings.twilio_account_sid
    token = settings.twilio_auth_token.get_secret_value()
    if not (sid and token):
        raise PermanentProviderError("Twilio account SID or auth token is not configured", provider=PROVIDER)
    form = {"To": sms.to, "Body": sms.body}
    if sms.messaging_service_sid:
        form["MessagingServiceSid"] = sms.messaging_service_sid
    else:
        form["From"] = sms.from_number or settings.twilio_from_number
    if sms.status_callback:
        form["StatusCallback"] = sms.status_callback
    response = post(
        client,
        messages_url(settings),
        provider=PROVIDER,
        label="Twilio",
        data=form,
        auth=httpx.BasicAuth(sid, token),
        headers={"Accept": "application/json"},
        timeout=settings.provider_timeout_seconds,
    )
    return _receipt_or_raise(response, secret=token)


def _receipt_or_raise(response: httpx.Response, *, secret: str) -> ProviderReceipt:
    status = response.status_code
    body = _json_object(response)
    if 200 <= status < 300:
        # Accepted: even an unreadable body must not become a retry (that would send twice).
        return ProviderReceipt(
            provider=PROVIDER,
            message_id=str(body.get("sid") or ""),
            status_code=status,
            details={"status": body.get("status"), "num_segments": _as_int(body.get("num_segments"))},
        )
    code = _as_int(body.get("code"))
    message = redact(str(body.get("message") or f"HTTP {status} {response.reason_phrase}".strip()), secret)
    if status == 429 or code == TOO_MANY_REQUESTS:
        raise TransientProviderError(
            f"rate limited: {message}",
            provider=PROVIDER,
            status_code=status,
            code=code,
            retry_after=parse_retry_after(response.headers.get("Retry-After")),
        )
    if status >= 500:
        raise TransientProviderError(message, provider=PROVIDER, status_code=status, code=code)
    # 21211 bad number, 21610 opted out (STOP), 21612/21614 unreachable, 20003 bad credentials...
    raise PermanentProviderError(message, provider=PROVIDER, status_code=status, code=code)


def _json_object(response: httpx.Response) -> dict[str, Any]:
    try:
        body = response.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


def _as_int(value: Any) -> int | None:
    # Twilio sends num_segments as a string ("1") and code as a number.
    try:
        return int(value)
    except (TypeError, ValueError):
        return None
