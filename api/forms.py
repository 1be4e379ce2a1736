"""Form bodies parsed from the raw bytes (URL-encoded and multipart), with the standard library.

The webhooks need the exact raw body anyway (signatures), and this keeps python-multipart out
of the dependencies.
"""

from __future__ import annotations

import codecs
import json
import re
from email.errors import MessageError
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
    except (ValueError, RecursionError):  # RecursionError: nested too deeply for the parser
        return {}
    return {str(k): str(v) for k, v in charsets.items()} if isinstance(charsets, dict) else {}


_CHARSET_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:+\-]{0,39}")
# Text codecs of Python's own that are not MIME charsets: they would misread (or refuse) mail.
_NOT_CHARSETS = frozenset({"idna", "punycode", "undefined", "unicode-escape", "raw-unicode-escape"})


def _text_codec(charset: str | None) -> str | None:
    """The codec for a declared charset, or None when it names no text charset we can use."""
    name = (charset or "").strip()
    if not _CHARSET_NAME.fullmatch(name):
        return None
    try:
        info = codecs.lookup(name)
    except LookupError:
        return None
    # Bytes-to-bytes codecs (base64, zlib, rot13, ...) are no charsets at all.
    if not getattr(info, "_is_text_encoding", True) or info.name in _NOT_CHARSETS:
        return None
    return info.name


def clean_text(text: str) -> str:
    """Without NUL characters and lone surrogates (some codecs make them), which PostgreSQL
    refuses to store; pairs of surrogates become the character they encode."""
    if text.isascii():
        return text.replace("\x00", "\ufffd")
    return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace").replace("\x00", "\ufffd")


def _decode(data: bytes, charset: str | None) -> str:
    """The text in its declared charset; an unknown or unusable charset reads as UTF-8, so a
    reply is recorded rather than refused (SendGrid would retry it for days)."""
    codec = _text_codec(charset)
    if codec is not None:
        try:
            return clean_text(data.decode(codec, errors="replace"))
        except (ValueError, LookupError, TypeError):  # a codec that fails despite errors="replace"
            pass
    return clean_text(data.decode("utf-8", errors="replace"))


# The stdlib email parser raises these (instead of noting a defect) on some odd header
# encodings, e.g. an RFC 2231 parameter in the `idna` charset or a charset name with a NUL.
_HEADER_ERRORS = (ValueError, LookupError, TypeError, IndexError, MessageError)


def _raw_fields(body: bytes, content_type: str) -> tuple[dict[str, bytes], dict[str, str | None]]:
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
    return raw, part_charsets


def parse_multipart(body: bytes, content_type: str) -> dict[str, str]:
    """Text fields of a multipart/form-data body (file parts are skipped). A field repeated keeps
    its first value. SendGrid's `charsets` field names each field's charset."""
    if "boundary=" not in content_type.lower():
        raise FormError("multipart/form-data without a boundary")
    try:
        raw, part_charsets = _raw_fields(body, content_type)
    except FormError:
        raise
    except _HEADER_ERRORS as exc:
        raise FormError(f"malformed multipart headers ({type(exc).__name__})") from exc
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
            fields.setdefault(key, clean_text(value))
        return fields
    raise FormError(f"expected a form body, got {kind or 'no content type'}")
