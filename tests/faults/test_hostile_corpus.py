"""Hostile input through every entry point: the Python API, the CLI (real processes, real
files), the HTTP API and the webhooks, from the committed corpus `hostile_corpus.json`.

Every corpus entry names its entry point, its input and the error it must get: a typed
`FollowupsError` (with the field path when one is named), a one-line CLI error with exit 1, or
an HTTP 4xx (with the field path). Never a 5xx, never a traceback, and no product table gains
or loses a row (counted before and after each entry). No Prefect server runs here: the API
address points at a closed port, so an input that slipped through validation and reached
Prefect would show up as an untyped error instead of passing quietly.

Corpus directives (expanded here so the committed file stays small): {"$text": s, "times": n
[, "close": c][, "suffix": t]} is s*n + c*n + t, {"$repeat": v, "times": n} is [v]*n, {"$nest": n} is an object n
levels deep; "$SEQ" / "$OWNER_NAME" are the corpus owner's sequence id and name.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest
from sqlalchemy import text

from checks import EventLedger, fault_report, fault_schedule  # noqa: F401
from followups.errors import FollowupsError, InvalidInputError

# Nothing here is timed or killed: it runs beside other tests, its entries spread over the xdist
# workers (each worker's last test checks the entries that worker ran).
pytestmark = [pytest.mark.faults, pytest.mark.concurrent]

CORPUS_PATH = Path(__file__).with_name("hostile_corpus.json")
CORPUS: list[dict[str, Any]] = json.loads(CORPUS_PATH.read_text())
TABLES = ["users", "api_tokens", "installation", "sequences", "sequence_versions", "deals", "offers",
          "offer_inbox", "enrollments", "follow_up_events"]
CLOSED_PREFECT = "http://127.0.0.1:9/api"  # nothing listens: reaching Prefect is a failure here
TWILIO_TOKEN = "twilio-test-token"  # tests/conftest.py TEST_ENV
# corpus id -> entry point, for the module's report line: entries this process started, and
# those that got their clean error.
STARTED: dict[str, str] = {}
PASSED: dict[str, str] = {}
LEAKS = ("Traceback", "File \"", "sqlalchemy", "psycopg", "site-packages", "[SQL:")


def expand(value: Any, world: dict[str, Any]) -> Any:
    if isinstance(value, dict):
        if "$text" in value:
            return value["$text"] * value["times"] + value.get("close", "") * value["times"] + value.get("suffix", "")
        if "$repeat" in value:
            return [expand(value["$repeat"], world) for _ in range(value["times"])]
        if "$nest" in value:
            nested: Any = "leaf"
            for _ in range(value["$nest"]):
                nested = {"k": nested}
            return nested
        return {key: expand(item, world) for key, item in value.items()}
    if isinstance(value, list):
        return [expand(item, world) for item in value]
    if value == "$SEQ":
        return world["sequence_id"]
    if isinstance(value, str) and "$" in value:
        return value.replace("$SEQ", str(world["sequence_id"])).replace("$OWNER_NAME", world["owner_name"])
    return value


def counts() -> dict[str, int]:
    from followups.db.session import session_scope

    query = " UNION ALL ".join(f"SELECT '{t}', count(*) FROM {t}" for t in TABLES)
    with session_scope(read_only=True) as session:
        return dict(session.execute(text(query)).all())


def field_matches(actual: str | None, expected: str) -> bool:
    """The error names the expected field, or a part of it (steps.1 for steps.1.days is not
    enough; steps.1.days.x for steps.1.days is)."""
    return actual is not None and (actual == expected or actual.startswith(expected + "."))


@pytest.fixture(scope="module")
def world(database_url: str, signer) -> dict[str, Any]:
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from api_support import make_client, new_api_user
    from followups.db.session import session_scope
    from followups.sequences import create_sequence

    saved = os.environ.get("PREFECT_API_URL")
    os.environ["PREFECT_API_URL"] = CLOSED_PREFECT
    user = new_api_user()
    ledger = EventLedger()
    ledger.checkpoint("before the corpus")
    with session_scope() as session:
        sequence_id = create_sequence(session, user.id, name="corpus", steps=[
            {"type": "EMAIL", "subject": "Offer", "text": "Hi {{ seller.first_name }}"},
            {"type": "WAIT", "seconds": 1},
            {"type": "SMS", "body": "Any news?"},
        ]).id
    try:
        with temporary_settings(updates={PREFECT_API_URL: CLOSED_PREFECT}), make_client() as client:
            yield {"user": user, "owner_name": user.name, "sequence_id": sequence_id, "client": client,
                   "signer": signer, "ledger": ledger}
    finally:
        if saved is None:
            os.environ.pop("PREFECT_API_URL", None)
        else:
            os.environ["PREFECT_API_URL"] = saved


# -- the entry points ----------------------------------------------------------------------


def call_python(entry: str, data: Any, world: dict[str, Any]) -> Any:
    """The product call for a python.* entry; returns what it returned (raising is the point)."""
    from followups import bulk, control, deal_events, sequences, users
    from followups.db.session import session_scope

    owner = world["user"].id
    if entry == "python.create_sequence":
        with session_scope() as session:
            return sequences.create_sequence(session, owner, data)
    if entry == "python.update_sequence":
        with session_scope() as session:
            return sequences.update_sequence(session, owner, world["sequence_id"], data)
    if entry == "python.enroll_deal":
        return control.enroll_deal(owner, data["deal"], data["sequence_id"])
    if entry == "python.record_offer_sent":
        return control.record_offer_sent(owner, data["offer_id"], data["deal"], sequence_id=data["sequence_id"])
    if entry == "python.record_deal_event":
        return deal_events.record_deal_event(owner, data["deal"], data["event"])
    if entry == "python.enroll_deals":
        return bulk.enroll_deals(owner, data["items"], data["sequence_id"])
    if entry == "python.control":
        operation = {"pause": control.pause_enrollment, "resume": control.resume_enrollment,
                     "cancel": control.cancel_enrollment, "get": control.get_enrollment}[data["op"]]
        return operation(data["enrollment_id"], owner_id=owner)
    if entry == "python.set_sender_identity":
        with session_scope() as session:
            return users.set_sender_identity(session, owner, data)
    raise AssertionError(f"unknown entry point {entry}")


def check_python(item: dict[str, Any], data: Any, world: dict[str, Any]) -> None:
    expect = item["expect"]
    try:
        result = call_python(item["entry"], data, world)
    except FollowupsError as exc:
        if "field" in expect:
            assert isinstance(exc, InvalidInputError), f"{type(exc).__name__}: {exc}"
            assert field_matches(exc.field, expect["field"]), f"field {exc.field!r}, expected {expect['field']!r}: {exc}"
        elif expect.get("error") not in (None, "any"):
            assert type(exc).__name__ == expect["error"], f"{type(exc).__name__}: {exc}"
        assert "\n" not in str(exc) and len(str(exc)) < 2000, "an error message should be one short line"
        return
    if "items" in expect:  # bulk: the batch is answered item by item, every one refused
        assert [r.status for r in result] == ["error"] * len(expect["items"]), result
        for got, field in zip(result, expect["items"], strict=True):
            assert got.field == field or (field and field_matches(got.field, field)), (got.field, field, got.message)
        return
    raise AssertionError(f"accepted: {result!r}")


def check_cli(item: dict[str, Any], data: dict[str, Any], world: dict[str, Any], tmp_path: Path) -> None:
    file = tmp_path / item["input"].get("file_name", "input.json")
    if "file" in data:
        content = data["file"]
        # ensure_ascii: NUL and lone surrogates reach the product as the JSON escapes a client writes
        file.write_text(content if isinstance(content, str) else json.dumps(content), encoding="utf-8")
    # A lone surrogate in an argument stands for a byte that is not UTF-8 (surrogateescape).
    args = [os.fsencode(str(arg).replace("{file}", str(file))) for arg in data["args"]]
    env = {**os.environ, "PYTHONSAFEPATH": "1", "PREFECT_API_URL": CLOSED_PREFECT}
    env.pop("FOLLOWUPS_DEBUG", None)
    done = subprocess.run([sys.executable.encode(), b"-m", b"followups.cli", *args], env=env,
                          capture_output=True, timeout=60, cwd=tmp_path)
    err = done.stderr.decode("utf-8", "replace")
    assert done.returncode == 1, (done.returncode, done.stdout[-500:], err[-2000:])
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err[-2000:]
    assert not any(leak in err for leak in LEAKS), err
    if "field" in item["expect"]:
        assert item["expect"]["field"] in lines[0], lines[0]


def http_body(data: dict[str, Any]) -> tuple[bytes | None, str | None]:
    if "json" in data:
        return json.dumps(data["json"]).encode(), "application/json"
    if "form" in data:
        return urlencode(data["form"]).encode(), "application/x-www-form-urlencoded"
    if "body_hex" in data:
        return bytes.fromhex(data["body_hex"]), data.get("content_type")
    if "body" in data:
        return data["body"].encode("utf-8", "surrogatepass"), data.get("content_type")
    return None, None


def check_http(item: dict[str, Any], data: dict[str, Any], world: dict[str, Any]) -> None:
    from api_support import SG_SIGNATURE
    from followups.api.signatures import twilio_signature

    body, content_type = http_body(data)
    headers: dict[str, Any] = {"Content-Type": content_type} if content_type else {}
    if item["entry"] == "http":
        auth = data.get("auth", f"Bearer {world['user'].token}")
        if auth is not None:
            headers["Authorization"] = auth.encode("utf-8")
    sign = data.get("sign")
    if sign and sign.startswith("sendgrid"):
        headers.update(world["signer"].headers(body))
        if sign == "sendgrid-garbled":
            headers[SG_SIGNATURE] = "\u202eMEUCIQ\u200b==".encode()
    elif sign and sign.startswith("twilio"):
        token = TWILIO_TOKEN if sign == "twilio" else "not-the-token"
        headers["X-Twilio-Signature"] = twilio_signature(token, "http://testserver" + data["path"], list(data["form"].items()))
    response = world["client"].request(data.get("method", "POST"), data["path"], content=body, headers=headers)
    expect = item["expect"]
    assert response.status_code < 500, (response.status_code, response.text[:1000])
    if expect["status"] == "4xx":
        assert 400 <= response.status_code < 500, (response.status_code, response.text[:1000])
    else:
        assert response.status_code == expect["status"], (response.status_code, response.text[:1000])
    if "field" in expect:
        fields = [error["field"] for error in response.json().get("errors", [])]
        assert any(field_matches(f, expect["field"]) for f in fields), (fields, expect["field"])


@pytest.mark.parametrize("item", CORPUS, ids=[item["id"] for item in CORPUS])
def test_hostile_input_gets_a_clear_error_and_stores_nothing(item, world, tmp_path):
    STARTED[item["id"]] = item["entry"]
    data = expand(item["input"], world)
    before = counts()
    started = time.monotonic()
    if item["entry"].startswith("python."):
        check_python(item, data, world)
    elif item["entry"] == "cli":
        check_cli(item, data, world, tmp_path)
    else:
        check_http(item, data, world)
    assert counts() == before, f"{item['id']} stored something half-way"
    # Bounded work: a bomb is refused, not computed (generous: this machine is shared).
    assert time.monotonic() - started < 20, f"{item['id']} took {time.monotonic() - started:.1f}s"
    PASSED[item["id"]] = item["entry"]


def test_every_entry_point_and_expectation_is_covered():
    """The corpus keeps its reach: each entry point is exercised, each entry says what it expects."""
    entries = {item["entry"] for item in CORPUS}
    assert {"python.create_sequence", "python.enroll_deal", "python.record_offer_sent", "python.record_deal_event",
            "python.enroll_deals", "python.control", "cli", "http", "webhook"} <= entries
    assert all(item["expect"] for item in CORPUS)
    assert len({item["id"] for item in CORPUS}) == len(CORPUS)


def test_the_whole_corpus_was_refused_and_the_event_log_kept(world, fault_report):
    """Runs last: one report line for the entries this process ran, and no event row changed
    while they ran. Under xdist the corpus is spread over the workers, each with this test."""
    world["ledger"].assert_unchanged()
    failed = [corpus_id for corpus_id in STARTED if corpus_id not in PASSED]
    by_entry: dict[str, int] = {}
    for entry in PASSED.values():
        key = entry if entry.startswith("python.") else entry.split(".")[0]
        by_entry[key] = by_entry.get(key, 0) + 1
    fault_report.extra.update(corpus_items=len(CORPUS), ran_here=len(STARTED), refused_cleanly=len(PASSED),
                              by_entry_point=by_entry, failed=failed)
    assert not failed, f"corpus entries that did not get a clean error (see their own failures): {failed}"
    fault_report.finish()
