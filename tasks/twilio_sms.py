"""Twilio Programmable Messaging: one form POST per SMS, sent with httpx.

The official twilio library sends through requests/aiohttp, which respx cannot see, so the
Messages resource is called directly. Every outcome is classified here, at the boundary.
"""

from __future__ import annotations

import time
from datetime import timezone
from email.utils import parsedate_to_datetime
from typing import Any

import httpx

from followups.settings import Settings
from followups.tasks.messages import OutgoingSms, ProviderReceipt
from followups.tasks.provider_errors import PermanentProviderError, TransientProviderError

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
    form = {"To": sms.to, "From": settings.twilio_from_number, "Body": sms.body}
    if sms.status_callback:
        form["StatusCallback"] = sms.status_callback
    try:
        response = client.post(
            messages_url(settings),
            data=form,
            auth=httpx.BasicAuth(sid, token),
            headers={"Accept": "application/json"},
            timeout=settings.provider_timeout_seconds,
        )
    except httpx.TimeoutException as exc:
        # The SMS may or may not have been queued; de-duplication is the caller's job.
        raise TransientProviderError(f"request timed out: {type(exc).__name__}", provider=PROVIDER) from exc
    except httpx.UnsupportedProtocol as exc:
        # A malformed base URL is configuration, not a network hiccup: retrying cannot help.
        raise PermanentProviderError(f"bad Twilio base URL: {exc}", provider=PROVIDER) from exc
    except httpx.TransportError as exc:
        raise TransientProviderError(f"connection error: {type(exc).__name__}: {exc}", provider=PROVIDER) from exc
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
    message = _redact(str(body.get("message") or f"HTTP {status} {response.reason_phrase}".strip()), secret)
    if status == 429 or code == TOO_MANY_REQUESTS:
        raise TransientProviderError(
            f"rate limited: {message}",
            provider=PROVIDER,
            status_code=status,
            code=code,
            retry_after=_retry_after(response.headers.get("Retry-After")),
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


def _retry_after(value: str | None) -> float | None:
    """RFC 9110 Retry-After: delay in seconds or an HTTP date; None when absent or unreadable."""
    if value is None:
        return None
    try:
        return max(0.0, float(value.strip()))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value.strip())
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:  # "-0000" parses naive; HTTP dates are always GMT
        when = when.replace(tzinfo=timezone.utc)
    return max(0.0, when.timestamp() - time.time())


def _redact(text: str, secret: str) -> str:
    # Provider messages should never echo the token, but a message is logged and stored: be sure.
    return text.replace(secret, "[redacted]") if secret else text
