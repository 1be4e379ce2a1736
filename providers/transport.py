"""The HTTP boundary both providers share: one POST that turns transport failures into the
provider error tree, Retry-After parsing, and scrubbing secrets from messages."""

from __future__ import annotations

import time
from datetime import timezone
from email.utils import parsedate_to_datetime
from typing import Any

import httpx

from followups.errors import OutcomeUnknownProviderError, PermanentProviderError, TransientProviderError

# Failures before the request could reach the provider: safe to retry.
_NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout, httpx.WriteError, httpx.WriteTimeout)
# Failures after it was written: the provider may have accepted it, so it must not be resent.
_ANSWER_LOST = (httpx.ReadTimeout, httpx.ReadError, httpx.RemoteProtocolError)


def post(client: httpx.Client, url: str, *, provider: str, label: str, **request: Any) -> httpx.Response:
    try:
        return client.post(url, **request)
    except _NOT_SENT as exc:
        raise TransientProviderError(f"not sent: {type(exc).__name__}: {exc}", provider=provider) from exc
    except _ANSWER_LOST as exc:
        raise OutcomeUnknownProviderError(
            f"sent, but the answer was lost: {type(exc).__name__}: {exc}", provider=provider
        ) from exc
    except httpx.UnsupportedProtocol as exc:
        # A malformed base URL is configuration, not a network hiccup: retrying cannot help.
        raise PermanentProviderError(f"bad {label} base URL: {exc}", provider=provider) from exc
    except httpx.TransportError as exc:
        raise TransientProviderError(f"connection error: {type(exc).__name__}: {exc}", provider=provider) from exc


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """RFC 9110 Retry-After: delay in seconds or an HTTP date; None when absent or unreadable."""
    if value is None:
        return None
    now = time.time() if now is None else now
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
    return max(0.0, when.timestamp() - now)


def redact(text: str, secret: str) -> str:
    # Providers should never echo a key or token, but messages are logged and stored: be sure.
    return text.replace(secret, "[redacted]") if secret else text
