"""Webhook signature checks: SendGrid's ECDSA event webhook and Twilio's X-Twilio-Signature.

Both return normally for a valid signature and raise SignatureError otherwise; the routes turn
that into a 403 before anything is stored.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import time
from functools import lru_cache
from urllib.parse import urlsplit, urlunsplit

from sendgrid.helpers.eventwebhook import EventWebhook


class SignatureError(Exception):
    """The request is not signed by the provider (or the check is not configured)."""


# --- SendGrid --------------------------------------------------------------------------------


@lru_cache(maxsize=4)
def _sendgrid_verifier(public_key: str) -> EventWebhook:
    return EventWebhook(public_key)


# A DER ECDSA P-256 signature is at most 72 bytes: 96 base64 characters.
_SENDGRID_SIGNATURE = re.compile(r"[A-Za-z0-9+/]{4,200}={0,2}")
_SENDGRID_TIMESTAMP = re.compile(r"[0-9]{1,12}")  # ASCII digits only: str.isdigit() accepts "²"


def verify_sendgrid(
    body: bytes,
    signature: str | None,
    timestamp: str | None,
    *,
    public_key: str,
    max_age_seconds: int,
    now: float | None = None,
) -> None:
    """ECDSA P-256/SHA-256 over timestamp + raw body, and a timestamp within the window."""
    if not public_key:
        raise SignatureError("SendGrid webhook verification key is not configured")
    if not signature or not timestamp:
        raise SignatureError("missing SendGrid signature headers")
    timestamp = timestamp.strip()
    if not _SENDGRID_TIMESTAMP.fullmatch(timestamp):
        raise SignatureError("malformed SendGrid timestamp")
    age = (time.time() if now is None else now) - int(timestamp)
    if abs(age) > max_age_seconds:
        raise SignatureError(f"SendGrid timestamp outside the {max_age_seconds}s window")
    signature = signature.strip()
    # Strict base64: the helper's b64decode would skip characters outside the alphabet.
    if not _SENDGRID_SIGNATURE.fullmatch(signature) or len(signature) % 4:
        raise SignatureError("malformed SendGrid signature")
    try:
        payload = body.decode("utf-8")
        verifier = _sendgrid_verifier(public_key)
        valid = verifier.verify_signature(payload, signature, timestamp)
    except Exception as exc:  # not DER, wrong key format, not UTF-8: all "not signed"
        raise SignatureError(f"unverifiable SendGrid signature: {type(exc).__name__}") from exc
    if not valid:
        raise SignatureError("invalid SendGrid signature")


# --- Twilio ----------------------------------------------------------------------------------


def twilio_signature(auth_token: str, url: str, params: list[tuple[str, str]]) -> str:
    """base64(HMAC-SHA1(auth token, URL + each param name and value, sorted by name then value)).

    Like Twilio's RequestValidator, a repeated name contributes each distinct value once.
    """
    grouped: dict[str, set[str]] = {}
    for name, value in params:
        grouped.setdefault(name, set()).add(value)
    data = url + "".join(name + value for name in sorted(grouped) for value in sorted(grouped[name]))
    digest = hmac.new(auth_token.encode("utf-8"), data.encode("utf-8"), hashlib.sha1).digest()
    return base64.b64encode(digest).decode("ascii")


def _port_variants(url: str) -> list[str]:
    """The URL as given, without its port and with the default port: Twilio signs either."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return [url]
    host = parts.hostname or ""
    if ":" in host:  # IPv6 literal
        host = f"[{host}]"
    userinfo = parts.netloc.rsplit("@", 1)[0] + "@" if "@" in parts.netloc else ""
    default_port = 443 if parts.scheme == "https" else 80
    without = urlunsplit(parts._replace(netloc=f"{userinfo}{host}"))
    with_port = urlunsplit(parts._replace(netloc=f"{userinfo}{host}:{port or default_port}"))
    return list(dict.fromkeys([url, without, with_port]))


def verify_twilio(auth_token: str, url: str, params: list[tuple[str, str]], signature: str | None) -> None:
    if not auth_token:
        raise SignatureError("Twilio auth token is not configured")
    if not signature:
        raise SignatureError("missing X-Twilio-Signature")
    given = signature.strip().encode("utf-8", errors="replace")
    for candidate in _port_variants(url):
        if hmac.compare_digest(twilio_signature(auth_token, candidate, params).encode("ascii"), given):
            return
    raise SignatureError("invalid Twilio signature")
