"""Form bodies parsed from the raw bytes (URL-encoded and multipart), with the standard library.

The webhooks need the exact raw body anyway (signatures), and this keeps python-multipart out
of the dependencies.
"""

from __future__ import annotations

import json
from email.message import Message
from email.parser import BytesParser
from email.policy import HTTP
from urllib.parse import parse_qsl


class FormError(ValueError):
    """The body is not a form of the declared type."""


def media_type(content_type: str | None) -> str:
    return (content_type or "").split(";", 1)[0].strip().lower()


def parse_urlencoded(body: bytes) -> list[tuple[str, str]]:
    try:
        text = body.decode("utf-8")
        return parse_qsl(text, keep_blank_values=True, strict_parsing=False, max_num_fields=1000)
    except (UnicodeDecodeError, ValueError) as exc:
        raise FormError(f"not a URL-encoded form: {exc}") from exc


def _charset_map(raw: dict[str, bytes]) -> dict[str, str]:
    try:
        charsets = json.loads(raw.get("charsets", b"{}").decode("utf-8", errors="replace") or "{}")
    except ValueError:
        return {}
    return {str(k): str(v) for k, v in charsets.items()} if isinstance(charsets, dict) else {}


def _decode(data: bytes, charset: str | None) -> str:
    try:
        return data.decode(charset or "utf-8", errors="replace")
    except LookupError:  # an unknown charset name
        return data.decode("utf-8", errors="replace")


def parse_multipart(body: bytes, content_type: str) -> dict[str, str]:
    """Text fields of a multipart/form-data body (file parts are skipped). A field repeated keeps
    its first value. SendGrid's `charsets` field names each field's charset."""
    if "boundary=" not in content_type.lower():
        raise FormError("multipart/form-data without a boundary")
    message: Message = BytesParser(policy=HTTP).parsebytes(
        b"Content-Type: " + content_type.encode("latin-1", errors="replace") + b"\r\n\r\n" + body
    )
    if not message.is_multipart():
        raise FormError("not a multipart body")
    raw: dict[str, bytes] = {}
    part_charsets: dict[str, str | None] = {}
    for part in message.iter_parts() if hasattr(message, "iter_parts") else message.get_payload():
        name = part.get_param("name", header="content-disposition")
        if not name or part.get_param("filename", header="content-disposition"):
            continue
        name = str(name)
        if name in raw:
            continue
        payload = part.get_payload(decode=True)
        raw[name] = payload if isinstance(payload, bytes) else b""
        part_charsets[name] = part.get_content_charset()
    if not raw:
        raise FormError("a form without fields")
    charsets = _charset_map(raw)
    return {name: _decode(data, charsets.get(name) or part_charsets.get(name)) for name, data in raw.items()}


def parse_form(body: bytes, content_type: str | None) -> dict[str, str]:
    """Either kind of form, as a dict (first value of each field)."""
    kind = media_type(content_type)
    if kind == "multipart/form-data":
        return parse_multipart(body, content_type or "")
    if kind == "application/x-www-form-urlencoded":
        fields: dict[str, str] = {}
        for key, value in parse_urlencoded(body):
            fields.setdefault(key, value)
        return fields
    raise FormError(f"expected a form body, got {kind or 'no content type'}")
