"""Hostile input on every webhook: raw header bytes, broken forms and charsets, odd JSON.

Requests go to the ASGI app as raw scopes (not through an HTTP client), so header values reach
the app byte for byte, as a lenient server would pass them on. Whatever arrives, the answer is a
4xx (or 200 for mail that is accepted and dropped), never a 5xx, and the app logs no error.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from urllib.parse import parse_qsl, urlencode

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from api_support import SG_SIGNATURE, SG_TIMESTAMP, SendGridSigner, new_api_user, sg_body
from followups.api.app import create_app
from followups.api.signatures import twilio_signature
from followups.db.models import Deal
from followups.db.session import session_scope
from followups.settings import get_settings, reset_settings
from support import FAST_SEQUENCE, enrollment_row, event_types, events_of, new_enrollment, new_sequence

TWILIO_TOKEN = "twilio-test-token"  # tests/conftest.py TEST_ENV
SG_EVENTS = "/webhooks/sendgrid/events"
SG_INBOUND = "/webhooks/sendgrid/inbound"
TW_STATUS = "/webhooks/twilio/status"
TW_INBOUND = "/webhooks/twilio/inbound"
ENDPOINTS = [SG_EVENTS, SG_INBOUND, TW_STATUS, TW_INBOUND]
SG_SIGNATURE_NAME, SG_TIMESTAMP_NAME = SG_SIGNATURE.lower().encode(), SG_TIMESTAMP.lower().encode()
ALLOWED = {200, 204, 400, 403, 404, 409, 413, 415, 422}
FUZZ = settings(
    max_examples=120,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@dataclass
class Answer:
    status: int
    body: bytes

    def json(self):
        return json.loads(self.body)


class ErrorRecords(logging.Handler):
    """ERROR (and worse) records of the app's loggers."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


class RawClient:
    """Posts raw ASGI requests to the app on one event loop."""

    def __init__(self) -> None:
        self.app = create_app()
        self.loop = asyncio.new_event_loop()
        self.errors = ErrorRecords()

    def post(self, path: str, headers: list[tuple[bytes, bytes]], body: bytes, query: bytes = b"") -> Answer:
        return self.loop.run_until_complete(self._call(path, headers, body, query))

    async def _call(self, path: str, headers: list[tuple[bytes, bytes]], body: bytes, query: bytes) -> Answer:
        scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": "POST",
            "scheme": "http",
            "path": path,
            "raw_path": path.encode(),
            "query_string": query,
            "root_path": "",
            "headers": [(b"host", b"testserver"), *headers],
            "server": ("testserver", 80),
            "client": ("127.0.0.1", 50000),
        }
        delivered = False
        status = 0
        chunks: list[bytes] = []

        async def receive():
            nonlocal delivered
            if delivered:
                return {"type": "http.disconnect"}
            delivered = True
            return {"type": "http.request", "body": body, "more_body": False}

        async def send(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            elif message["type"] == "http.response.body":
                chunks.append(message.get("body", b""))

        await self.app(scope, receive, send)
        return Answer(status, b"".join(chunks))

    def check(self, answer: Answer, *allowed: int) -> None:
        """A 4xx/200-style answer and no error logged by the app."""
        errors = [r.getMessage() for r in self.errors.records]
        self.errors.records.clear()
        assert answer.status in (set(allowed) or ALLOWED), (answer.status, answer.body[:300], errors)
        assert not errors, errors


@pytest.fixture(scope="module")
def raw(signer) -> Iterator[RawClient]:
    client = RawClient()
    logger = logging.getLogger("followups.api")
    logger.addHandler(client.errors)
    yield client
    logger.removeHandler(client.errors)
    client.loop.close()


def sg_headers(signer: SendGridSigner, body: bytes, **replace: bytes) -> list[tuple[bytes, bytes]]:
    stamp = str(int(time.time()))
    headers = {
        b"content-type": b"application/json",
        SG_SIGNATURE_NAME: signer.sign(body, stamp).encode(),
        SG_TIMESTAMP_NAME: stamp.encode(),
    }
    headers.update({name.encode(): value for name, value in replace.items()})
    return list(headers.items())


def twilio_headers(path: str, params: list[tuple[str, str]]) -> list[tuple[bytes, bytes]]:
    signature = twilio_signature(TWILIO_TOKEN, "http://testserver" + path, params)
    return [(b"content-type", b"application/x-www-form-urlencoded"), (b"x-twilio-signature", signature.encode())]


def form_part(name: bytes, value: bytes, *, headers: bytes = b"") -> bytes:
    return b'Content-Disposition: form-data; name="' + name + b'"\r\n' + headers + b"\r\n" + value


def multipart_body(parts: list[bytes], boundary: bytes = b"xYzZY") -> tuple[bytes, bytes]:
    body = b"".join(b"--" + boundary + b"\r\n" + part + b"\r\n" for part in parts) + b"--" + boundary + b"--\r\n"
    return body, b"multipart/form-data; boundary=" + boundary


def post_form(raw: RawClient, parts: list[bytes], params: bytes = b"") -> Answer:
    body, content_type = multipart_body(parts)
    return raw.post(SG_INBOUND, [(b"content-type", content_type + params)], body)


def events_of_type(enrollment_id: int, event_type: str) -> list:
    return [e for e in events_of(enrollment_id) if e.event_type == event_type]


@pytest.fixture
def reply_address(database_url: str) -> tuple[int, bytes]:
    user = new_api_user()
    enrollment_id = new_enrollment(user.id, new_sequence(user.id, FAST_SEQUENCE))
    return enrollment_id, f"reply+{enrollment_row(enrollment_id).reply_token}@{get_settings().reply_domain}".encode()


# --- the defects, one by one ----------------------------------------------------------------


@pytest.mark.parametrize(
    "header, value",
    [(SG_TIMESTAMP, v) for v in [b"\xb2", b"17\xb2", b"\xb9\xb2\xb3", b"1\x00", b"\xff\xfe", b"\xd9\xa3", b" ", b"-1", b"1e9"]]
    + [(SG_SIGNATURE, v) for v in [b"\x00", b"MEUC\x00IQ==", b"\xb2\xff", b"\xc3\xa9t\xc3\xa9", b"====", b"=" * 200]],
)
def test_sendgrid_signature_headers_with_odd_bytes_are_403(raw, signer, header, value):
    body = sg_body([{"event": "delivered", "sg_message_id": "x.y"}])
    raw.check(raw.post(SG_EVENTS, sg_headers(signer, body, **{header.lower(): value}), body), 403)


def test_sendgrid_signature_with_junk_between_base64_characters_is_403(raw, signer):
    # base64.b64decode skips characters outside the alphabet unless told to validate.
    body = sg_body([{"event": "delivered", "sg_message_id": "x.y"}])
    headers = dict(sg_headers(signer, body))
    good = headers[SG_SIGNATURE_NAME]
    headers[SG_SIGNATURE_NAME] = b"\x00".join(good[i : i + 4] for i in range(0, len(good), 4))
    raw.check(raw.post(SG_EVENTS, list(headers.items()), body), 403)


@pytest.mark.parametrize("depth", [5_000, 100_000])
def test_sendgrid_signed_deeply_nested_json_is_422(raw, signer, depth):
    body = b"[" * depth + b"]" * depth
    raw.check(raw.post(SG_EVENTS, sg_headers(signer, body), body), 422)


@pytest.mark.parametrize("enrollment_id, step_index", [("\u00b2", "0"), ("{id}", "\u00b9"), ("{id}", "99999999999"), ("{id}", "-1")])
def test_sendgrid_event_with_odd_custom_args_is_stored_unmatched_or_without_step(raw, signer, reply_address, enrollment_id, step_index):
    real, _ = reply_address
    event = {"event": "delivered", "sg_message_id": f"odd{real}.x", "enrollment_id": enrollment_id.format(id=real), "step_index": step_index}
    body = sg_body([event])
    answer = raw.post(SG_EVENTS, sg_headers(signer, body), body)
    raw.check(answer, 200)
    assert answer.json()["stored"] == 1
    if "{id}" in enrollment_id:
        assert [e.step_index for e in events_of_type(real, "PROVIDER_EVENT")] == [None]


CHARSETS = ["idna", "punycode", "rot13", "base64", "zlib", "uu", "hex", "bz2", "quopri", "undefined",
            "unicode_escape", "raw_unicode_escape", "utf\x008", "utf-8\x00", "no-such-charset", "\udcff", ""]


@pytest.mark.parametrize("charset", CHARSETS)
def test_inbound_email_with_an_odd_charsets_field_is_read_as_utf8(raw, reply_address, charset):
    enrollment_id, to = reply_address
    text = "Can we talk? Prix: 260 000 €"
    charsets = json.dumps({"text": charset, "to": charset, "subject": charset}).encode()
    parts = [form_part(b"to", to), form_part(b"subject", b"Re: offer"), form_part(b"text", text.encode()), form_part(b"charsets", charsets)]
    answer = post_form(raw, parts)
    raw.check(answer, 200)
    assert answer.json()["stopped"] == 1
    assert events_of_type(enrollment_id, "REPLY_RECEIVED")[0].content["text"] == text


@pytest.mark.parametrize("charset", [c.encode("utf-8", "surrogateescape") for c in CHARSETS] + [b'"idna"', b"utf-8\xb2"])
def test_inbound_email_with_an_odd_part_charset_is_read_as_utf8(raw, reply_address, charset):
    enrollment_id, to = reply_address
    text = "Stop by at 5, caf\u00e9 on Elm"
    part_type = b"Content-Type: text/plain; charset=" + charset + b"\r\n"
    answer = post_form(raw, [form_part(b"to", to, headers=part_type), form_part(b"text", text.encode(), headers=part_type)])
    raw.check(answer, 200)
    assert answer.json()["stopped"] == 1
    assert events_of_type(enrollment_id, "REPLY_RECEIVED")[0].content["text"] == text


def test_inbound_email_text_keeps_its_declared_charset(raw, reply_address):
    enrollment_id, to = reply_address
    text = "Très bien, 260 000 €"
    charsets = b'{"text": "windows-1252", "to": "UTF-8"}'
    raw.check(post_form(raw, [form_part(b"to", to), form_part(b"text", text.encode("cp1252")), form_part(b"charsets", charsets)]), 200)
    assert events_of_type(enrollment_id, "REPLY_RECEIVED")[0].content["text"] == text


@pytest.mark.parametrize("text", [b"\x00hello", b"+2AA-", b"\\ud800 and \\x00"], ids=["nul", "utf7-lone-surrogate", "escapes"])
def test_inbound_email_with_nul_or_lone_surrogates_is_still_recorded(raw, reply_address, text):
    enrollment_id, to = reply_address
    raw.check(post_form(raw, [form_part(b"to", to), form_part(b"text", text), form_part(b"charsets", b'{"text": "utf-7"}')]), 200)
    assert event_types(enrollment_id)[-2:] == ["REPLY_RECEIVED", "STOPPED"]


def test_urlencoded_inbound_email_with_a_nul_is_still_recorded(raw, reply_address):
    enrollment_id, to = reply_address
    body = urlencode({"to": to, "text": "call\x00me"}).encode()
    raw.check(raw.post(SG_INBOUND, [(b"content-type", b"application/x-www-form-urlencoded")], body), 200)
    assert events_of_type(enrollment_id, "REPLY_RECEIVED")[0].content["text"] == "call\ufffdme"


@pytest.mark.parametrize("where", ["part", "form"])
@pytest.mark.parametrize("param", [b"charset*=idna''x%ff", b"charset*=utf\x008''x", b"name*=idna''x%ff", b"name*=utf\x008''x"])
def test_inbound_email_with_unreadable_rfc2231_parameters_is_422(raw, where, param):
    # The stdlib email parser raises on these instead of noting a defect.
    part_header = b"Content-Type: text/plain; " + param + b"\r\n" if where == "part" else b""
    parts = [form_part(b"to", b"nobody@example.com"), form_part(b"text", b"hi", headers=part_header)]
    answer = post_form(raw, parts, b"; " + param if where == "form" else b"")
    raw.check(answer, 422)
    assert answer.json()["detail"].startswith("malformed multipart headers")


@pytest.mark.parametrize("field", ["envelope", "charsets"])
def test_inbound_email_with_deeply_nested_json_fields_is_not_an_error(raw, field):
    nested = b"[" * 100_000 + b"]" * 100_000
    raw.check(post_form(raw, [form_part(b"to", b"nobody@example.com"), form_part(field.encode(), nested)]), 200)


def test_inbound_email_with_a_long_blank_message_id_line_is_quick(raw, reply_address):
    _, to = reply_address
    headers = b"Message-ID: <a" + b" " * 200_000 + b"b>"
    started = time.monotonic()
    raw.check(post_form(raw, [form_part(b"to", to), form_part(b"headers", headers), form_part(b"text", b"hi")]), 200)
    assert time.monotonic() - started < 5


def is_utf8(body: bytes) -> bool:
    try:
        body.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


# --- property-based: every endpoint, anything at all --------------------------------------

ODD = [b"", b" ", b"\x00", b"\xb2", b"\xff\xfe", b"\xc3\xa9", b"\xed\xa0\x80", b"\r\n", b"=?idna?q?x=ff?=", b"idna",
       b"rot13", b"1700000000", b"MEUCIQ==", b"%ff", b"%00", b'"', b";", b"\\", b"''", b"*=", b"[", b"{"]
CHARSET_NAMES = [b"utf-8", b"UTF-8", b"iso-8859-1", b"windows-1252", b"utf-7", b"utf-16", b"idna", b"punycode", b"rot13",
                 b"base64", b"zlib", b"uu", b"hex", b"undefined", b"unicode_escape", b"utf\x008", b"x-unknown", b"\xb2"]
FIELDS = [b"to", b"cc", b"from", b"subject", b"text", b"html", b"headers", b"envelope", b"charsets", b"spam_score"]
odd_bytes = st.lists(st.sampled_from(ODD) | st.binary(max_size=8), max_size=5).map(b"".join)
header_values = odd_bytes | st.binary(max_size=40)
header_names = st.sampled_from(
    [b"content-type", b"content-length", b"host", b"x-twilio-signature", SG_SIGNATURE_NAME, SG_TIMESTAMP_NAME,
     b"transfer-encoding", b"content-encoding", b"authorization"]
) | st.from_regex(rb"[a-z][a-z0-9-]{0,15}", fullmatch=True)
random_headers = st.lists(st.tuples(header_names, header_values), max_size=6)
# Extra headers on signed requests: anything but what carries the signature, URL and length.
extra_headers = st.lists(
    st.tuples(st.from_regex(rb"x-[a-z0-9-]{1,12}", fullmatch=True).filter(lambda n: n != b"x-twilio-signature"), header_values),
    max_size=3,
)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=12,
)
short_text = st.text(max_size=30) | st.sampled_from(["", " ", "\x00", "\udcff", "STOP", " start ", "unsubscribe", "²"])


@st.composite
def multipart_forms(draw, values: list[bytes], lead: tuple[bytes, ...] = ()) -> tuple[bytes, bytes]:
    """A multipart body with random fields, part headers, transfer encodings and charsets, after
    the `lead` parts."""
    boundary = draw(st.from_regex(rb"[A-Za-z0-9_-]{1,20}", fullmatch=True))
    if draw(st.integers(0, 9)) == 0:
        boundary = draw(st.sampled_from([b"--", b"a b", b"\xb2", b"'()+,./:=?", b'"q"']))
    part_header = st.tuples(
        st.sampled_from([b"Content-Type", b"Content-Transfer-Encoding", b"Content-Disposition", b"X-Odd"]),
        st.sampled_from([b"text/plain; charset=" + c for c in CHARSET_NAMES] + [b"text/plain; charset*=idna''x%ff",
            b"base64", b"quoted-printable", b"x-uuencode", b"form-data; name*=idna''x%ff", b'form-data; name="text"; filename="a"'])
        | header_values,
    ).map(lambda h: h[0] + b": " + h[1] + b"\r\n")
    value = st.sampled_from(values) | st.binary(max_size=60) | st.text(max_size=40).map(lambda t: t.encode("utf-8", "surrogatepass"))
    parts = list(lead)
    for _ in range(draw(st.integers(0, 5))):
        name = draw(st.sampled_from(FIELDS) | odd_bytes)
        headers = b"".join(draw(st.lists(part_header, max_size=3)))
        parts.append(form_part(name, draw(value), headers=headers))
    if draw(st.booleans()):
        names = draw(st.lists(st.sampled_from(FIELDS), max_size=4))
        charsets = {n.decode(): draw(st.sampled_from(CHARSET_NAMES)).decode("latin-1") for n in names}
        parts.append(form_part(b"charsets", json.dumps(charsets).encode()))
    return multipart_body(parts, boundary)


@st.composite
def hostile_requests(draw, values: list[bytes]) -> tuple[list[tuple[bytes, bytes]], bytes]:
    kind = draw(st.sampled_from(["json", "form", "multipart", "bytes"]))
    if kind == "json":
        body, content_type = json.dumps(draw(json_values)).encode(), b"application/json"
    elif kind == "form":
        known = st.sampled_from(["to", "text", "subject"] + [v.decode("latin-1") for v in values])
        pairs = draw(st.lists(st.tuples(short_text | known, short_text | known), max_size=6))
        body = urlencode([(k.encode("utf-8", "surrogatepass"), v.encode("utf-8", "surrogatepass")) for k, v in pairs]).encode()
        content_type = b"application/x-www-form-urlencoded"
    elif kind == "multipart":
        body, content_type = draw(multipart_forms(values))
    else:
        body, content_type = draw(st.binary(max_size=300)), b"application/octet-stream"
    content_type = draw(st.just(content_type) | header_values | st.sampled_from(
        [b"multipart/form-data", b"multipart/form-data; boundary=", b"multipart/form-data; boundary*=idna''b%ff",
         b"application/x-www-form-urlencoded; charset=idna", b"application/json; charset=\xb2"]
    ))
    headers = [(b"content-type", content_type)] if draw(st.booleans()) or kind != "bytes" else []
    return headers + draw(random_headers), body


@pytest.fixture(scope="module")
def seller(signer) -> dict[str, object]:
    """One enrollment of our own, so some fuzzed deliveries match it and reach the writes."""
    user = new_api_user()
    enrollment_id = new_enrollment(user.id, new_sequence(user.id, FAST_SEQUENCE))
    row = enrollment_row(enrollment_id)
    with session_scope() as session:
        deal = session.get(Deal, row.deal_id)
        email, phone = deal.seller_email, deal.seller_phone
    reply = f"reply+{row.reply_token}@{get_settings().reply_domain}"
    return {"id": enrollment_id, "email": email, "phone": phone, "reply": reply}


@pytest.mark.parametrize("path", ENDPOINTS)
@FUZZ
@given(data=st.data())
def test_any_unsigned_request_is_answered_without_a_server_error(raw, seller, path, data):
    headers, body = data.draw(hostile_requests([seller["reply"].encode(), b"STOP", b"[[[[", b"{}"]))
    query = data.draw(st.just(b"") | st.sampled_from([b"x=1", b"\xb2=\xff", b"&&", b"%ff"]))
    raw.check(raw.post(path, headers, body, query))


EVENT_KEYS = ["event", "email", "timestamp", "sg_event_id", "sg_message_id", "enrollment_id", "step_index", "reason", "status"]
EVENT_NAMES = ["delivered", "bounce", "unsubscribe", "group_unsubscribe", "spamreport", "open", "\x00", ""]


@FUZZ
@given(data=st.data())
def test_signed_sendgrid_events_with_hostile_bodies_never_fail(raw, signer, seller, data):
    special = st.sampled_from([seller["email"], seller["id"], str(seller["id"]), 2**63, 2**40, -1, "9" * 30, "\u00b2", "\u0663", *EVENT_NAMES])
    event = st.dictionaries(st.sampled_from(EVENT_KEYS) | st.text(max_size=8), json_values | special, max_size=7)
    payload = data.draw(st.lists(event | json_values, max_size=4) | json_values)
    body = json.dumps(payload).encode() if data.draw(st.booleans()) else data.draw(st.text(max_size=200)).encode("utf-8", "surrogatepass")
    headers = sg_headers(signer, body) + data.draw(extra_headers)
    answer = raw.post(SG_EVENTS, headers, body)
    raw.check(answer, *(ALLOWED - {403} if is_utf8(body) else ALLOWED))


# How to spoil a header value: drawn apart from the value, since ECDSA signatures vary per run.
mangles = st.tuples(st.sampled_from(["keep", "insert", "replace", "cut"]), st.integers(0, 200), odd_bytes.filter(bool))


def mangled(value: bytes, how: tuple[str, int, bytes]) -> bytes:
    """`value` with odd bytes put in, cut short, or left alone."""
    kind, at, odd = how
    at = min(at, len(value))
    if kind == "keep":
        return value
    if kind == "cut":
        return value[:at]
    return value[:at] + odd + value[at + (kind == "replace") :]


@FUZZ
@given(data=st.data())
def test_sendgrid_events_with_mangled_signature_headers_are_403(raw, signer, data):
    body = json.dumps(data.draw(st.lists(st.dictionaries(st.sampled_from(EVENT_KEYS), json_values), max_size=2))).encode()
    headers = dict(sg_headers(signer, body))
    signature = mangled(headers[SG_SIGNATURE_NAME], data.draw(mangles))
    stamp = mangled(headers[SG_TIMESTAMP_NAME], data.draw(mangles))
    intact = (signature, stamp) == (headers[SG_SIGNATURE_NAME], headers[SG_TIMESTAMP_NAME])
    headers.update({SG_SIGNATURE_NAME: signature, SG_TIMESTAMP_NAME: stamp})
    answer = raw.post(SG_EVENTS, list(headers.items()), body)
    if intact:  # 200, or 422 for what PostgreSQL cannot store (NUL, NaN)
        raw.check(answer, 200, 422)
    else:  # a few edits keep the signature valid (surrounding blanks): never a 5xx
        raw.check(answer, 403, 200, 422)


TWILIO_NAMES = ["MessageSid", "SmsSid", "MessageStatus", "SmsStatus", "ErrorCode", "To", "From", "Body", "AccountSid"]


@pytest.mark.parametrize("path", [TW_STATUS, TW_INBOUND])
@FUZZ
@given(data=st.data())
def test_signed_twilio_requests_with_hostile_forms_never_fail(raw, seller, path, data):
    value = short_text | st.sampled_from([seller["phone"], "SM" + "0" * 32, "delivered", "30005", "STOP", "START"])
    required = [("MessageSid", "From", "To"), ("MessageStatus", "Body")]
    pairs = [(name, data.draw(value)) for names in required for name in names if data.draw(st.integers(0, 4))]
    pairs += data.draw(st.lists(st.tuples(st.sampled_from(TWILIO_NAMES) | short_text, value), max_size=5))
    text = urlencode([(k.encode("utf-8", "surrogatepass"), v.encode("utf-8", "surrogatepass")) for k, v in pairs])
    text = data.draw(st.just(text) | st.text(max_size=80))
    body = text.encode("utf-8", "surrogatepass")
    try:
        params = parse_qsl(body.decode("utf-8"), keep_blank_values=True, max_num_fields=1000)
    except ValueError:
        params = []
    headers = twilio_headers(path, params)
    if data.draw(st.booleans()):
        headers[1] = (headers[1][0], mangled(headers[1][1], data.draw(mangles)))
    answer = raw.post(path, headers + data.draw(extra_headers), body)
    raw.check(answer)
    if answer.status == 403:  # only a mangled signature or a body we cannot read as a form
        assert headers[1][1] != twilio_headers(path, params)[1][1] or not is_utf8(body)


@FUZZ
@given(data=st.data())
def test_inbound_email_for_a_real_reply_address_with_hostile_fields_never_fails(raw, seller, data):
    to = seller["reply"].encode()
    # A readable `to` with the reply address comes first, so the mail is matched and recorded.
    body, content_type = data.draw(multipart_forms([to, b"STOP", b"\x00", b"+2AA-", b"[[[[", b"{}"], lead=(form_part(b"to", to),)))
    raw.check(raw.post(SG_INBOUND, [(b"content-type", content_type)], body))
