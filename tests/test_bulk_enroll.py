"""Bulk enrollment: `control.enroll_deals`, `followups import FILE` and POST /api/enrollments/batch,
against PostgreSQL and a real Prefect server (runs are created, not executed: see `deployment`)."""

from __future__ import annotations

import contextvars
import json
import threading
import uuid

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import func, select

from api_support import make_client, new_api_user
from followups.db.models import Deal, Enrollment, FollowUpEvent
from followups.db.session import session_scope
from followups.errors import NotFoundError
from support import new_owner, new_sequence, unique, unique_phone


@pytest.fixture(scope="module")
def deployment(prefect_api: str):
    """A deployment of the sequence flow under a name no runner serves. The session's runner
    serves the default name on the same server: it would execute the hundreds of runs made here,
    and every other module's runs on this xdist worker would queue behind them for minutes."""
    from followups.deployments.definitions import sequence_deployment
    from followups.settings import reset_settings

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("FOLLOWUPS_DEPLOYMENT_NAME", f"follow-up-sequence/bulk-{uuid.uuid4().hex[:6]}")
        reset_settings()
        yield sequence_deployment().apply()
    reset_settings()


def deal(ref: str | None = None, **overrides) -> dict:
    return {
        "external_id": ref or unique("B"),
        "property_address": "12 Elm Street, Springfield",
        "seller_name": "Pat Seller",
        "seller_email": "pat@example.com",
        "seller_phone": unique_phone(),
        **overrides,
    }


def counts(owner_id: int) -> tuple[int, int, int]:
    with session_scope() as session:
        deals = session.scalar(select(func.count()).select_from(Deal).where(Deal.owner_id == owner_id))
        enrollments = session.scalar(
            select(func.count()).select_from(Enrollment).join(Deal, Enrollment.deal_id == Deal.id).where(Deal.owner_id == owner_id)
        )
        events = session.scalar(
            select(func.count()).select_from(FollowUpEvent).join(Enrollment).join(Deal, Enrollment.deal_id == Deal.id)
            .where(Deal.owner_id == owner_id)
        )
    return deals, enrollments, events


def runs_of(enrollment_ids: list[int]) -> dict[int, list]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterTags

    found: dict[int, list] = {}
    with get_client(sync_client=True) as client:
        for eid in enrollment_ids:
            found[eid] = client.read_flow_runs(flow_run_filter=FlowRunFilter(tags=FlowRunFilterTags(all_=[f"enrollment:{eid}"])))
    return found


def test_mixed_batch_answers_each_item_and_stores_nothing_of_bad_ones(deployment):
    from followups.control import enroll_deals
    from followups.identity import database_tag

    owner = new_owner()
    sequence = new_sequence(owner)
    items = [deal(), deal(seller_phone="not a phone"), "not an object", deal(), deal(external_id="bad id!"), deal(extra=1)]
    results = enroll_deals(owner, items, sequence)
    assert [r.status for r in results] == ["ok", "error", "error", "ok", "error", "error"]
    assert results[1].field == "seller_phone" and results[1].deal == items[1]["external_id"]
    assert results[4].field == "external_id" and results[5].field == "extra"
    assert counts(owner) == (2, 2, 2)  # two deals, two enrollments, two ENROLLED events
    good = [results[0], results[3]]
    with session_scope() as session:
        rows = {e.id: e for e in session.scalars(select(Enrollment).where(Enrollment.id.in_([r.enrollment_id for r in good])))}
    runs = runs_of([r.enrollment_id for r in good])
    for result, item in zip(good, [items[0], items[3]], strict=True):
        row = rows[result.enrollment_id]
        assert row.status == "ACTIVE" and row.current_step == 0
        assert row.prefect_flow_run_id == result.flow_run_id
        [run] = runs[result.enrollment_id]
        assert run.id == result.flow_run_id and run.state.type.value == "SCHEDULED"
        assert run.parameters == {"enrollment_id": result.enrollment_id, "epoch": 1}
        assert {"followups", database_tag(), f"deal:{item['external_id']}", f"enrollment:{result.enrollment_id}"} <= set(run.tags)


def test_rerun_is_idempotent_and_a_finished_enrollment_counts_as_there(deployment):
    from followups.control import cancel_enrollment, enroll_deals

    owner = new_owner()
    sequence = new_sequence(owner)
    items = [deal() for _ in range(5)] + [deal()]
    items[-1]["external_id"] = items[0]["external_id"]  # the same deal twice in one batch
    first = enroll_deals(owner, items, sequence)
    assert [r.status for r in first] == ["ok"] * 5 + ["exists"]
    assert first[5].enrollment_id == first[0].enrollment_id
    cancel_enrollment(first[1].enrollment_id)
    again = enroll_deals(owner, items, sequence)
    assert [r.status for r in again] == ["exists"] * 6
    assert [r.enrollment_id for r in again] == [r.enrollment_id for r in first]
    assert counts(owner)[:2] == (5, 5)
    assert all(len(runs) == 1 for runs in runs_of([r.enrollment_id for r in first[:5]]).values())


def test_request_level_errors(deployment):
    from followups.control import enroll_deals
    from followups.errors import InvalidInputError, InvalidStateError
    from followups.sequences import update_sequence

    owner, other = new_owner(), new_owner()
    sequence = new_sequence(other)
    with pytest.raises(NotFoundError):
        enroll_deals(owner, [deal()], sequence)
    with pytest.raises(InvalidInputError):
        enroll_deals(owner, [deal()] * 1001, new_sequence(owner))
    disabled = new_sequence(owner)
    with session_scope() as session:
        update_sequence(session, owner, disabled, {"enabled": False})
    with pytest.raises(InvalidStateError):
        enroll_deals(owner, [deal()], disabled)
    assert counts(owner) == (0, 0, 0)


def test_a_missing_first_run_is_scheduled_by_the_next_import(deployment, monkeypatch):
    from followups import prefect_runs
    from followups.control import enroll_deals

    owner = new_owner()
    sequence = new_sequence(owner)
    items = [deal() for _ in range(3)]

    def down(_):
        raise ConnectionError("Prefect is down")

    monkeypatch.setattr(prefect_runs, "schedule_first_runs", down)
    failed = enroll_deals(owner, items, sequence)
    assert [(r.status, r.field) for r in failed] == [("error", "prefect")] * 3
    assert all(r.enrollment_id for r in failed)
    monkeypatch.undo()
    repaired = enroll_deals(owner, items, sequence)
    assert [r.status for r in repaired] == ["exists"] * 3 and all(r.flow_run_id for r in repaired)
    assert [r.enrollment_id for r in repaired] == [r.enrollment_id for r in failed]
    runs = runs_of([r.enrollment_id for r in failed])
    assert all(len(found) == 1 for found in runs.values())


def test_a_start_time_schedules_the_first_runs_for_then(deployment, monkeypatch):
    from datetime import UTC, datetime, timedelta

    from followups import prefect_runs
    from followups.control import enroll_deals, pause_enrollment, resume_enrollment
    from followups.errors import InvalidInputError

    owner = new_owner()
    sequence = new_sequence(owner)
    start = (datetime.now(UTC) + timedelta(days=3)).replace(microsecond=0)
    results = enroll_deals(owner, [deal(), deal()], sequence, start_at=start.astimezone(timezone_minus_5()).isoformat())
    assert [r.status for r in results] == ["ok", "ok"]
    runs = runs_of([r.enrollment_id for r in results])
    with session_scope() as session:
        rows = list(session.scalars(select(Enrollment).where(Enrollment.id.in_([r.enrollment_id for r in results]))))
    for row in rows:
        [run] = runs[row.id]
        assert run.state.type.value == "SCHEDULED" and run.state.state_details.scheduled_time == start
        assert row.next_due_at == start and row.prefect_flow_run_id == run.id
    # Pausing and resuming before the start keeps the start.
    first = results[0].enrollment_id
    pause_enrollment(first)
    assert resume_enrollment(first).status == "ACTIVE"
    [run] = runs_of([first])[first]
    assert run.state.is_scheduled() and run.state.state_details.scheduled_time == start
    # A repair of a first run that was never made schedules it for the start too.
    def down(*_, **__):
        raise ConnectionError("Prefect is down")

    items = [deal()]
    monkeypatch.setattr(prefect_runs, "schedule_first_runs", down)
    assert enroll_deals(owner, items, sequence, start_at=start)[0].field == "prefect"
    monkeypatch.undo()
    [again] = enroll_deals(owner, items, sequence, start_at=start)
    [run] = runs_of([again.enrollment_id])[again.enrollment_id]
    assert again.status == "exists" and run.state.state_details.scheduled_time == start
    # Refused as a whole, with the field, and nothing stored.
    for bad in ("2020-01-01T00:00:00Z", "2027-01-01T09:00:00", (datetime.now(UTC) + timedelta(days=400)).isoformat(), "soon", 5):
        with pytest.raises(InvalidInputError) as refused:
            enroll_deals(owner, [deal()], sequence, start_at=bad)
        assert refused.value.field == "start_at", bad
    assert counts(owner)[:2] == (3, 3)


def timezone_minus_5():
    from datetime import timedelta, timezone

    return timezone(timedelta(hours=-5))


def test_two_concurrent_imports_enroll_each_deal_once(deployment):
    from followups.bulk import enroll_batch

    owner = new_owner()
    sequence = new_sequence(owner)
    items = [deal() for _ in range(250)]
    outcomes: list = []
    barrier = threading.Barrier(2)

    def run() -> None:
        barrier.wait()
        outcomes.append(enroll_batch(owner, items, sequence))

    # In copies of this context: the test session's Prefect settings live there.
    threads = [threading.Thread(target=contextvars.copy_context().run, args=(run,)) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    assert len(outcomes) == 2
    pairs = [(a, b) for a, b in zip(*(o.results for o in outcomes), strict=True)]
    odd = [(a, b) for a, b in pairs if {a.status, b.status} != {"ok", "exists"}]
    assert odd == [], odd[0][0].message
    assert counts(owner)[:2] == (250, 250)
    ids = {r.enrollment_id for o in outcomes for r in o.results}
    assert len(ids) == 250
    runs = runs_of(sorted(ids)[:40])
    assert all(len(found) == 1 for found in runs.values())


# -- the CLI ----------------------------------------------------------------------------------


def _csv(rows: list[dict]) -> str:
    import csv
    import io

    out = io.StringIO()
    writer = csv.DictWriter(out, ["external_id", "property_address", "seller_name", "seller_email", "seller_phone"], extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue()


def test_cli_import_csv_reports_bad_rows_by_line_and_is_resumable(deployment, cli, tmp_path):
    from followups.users import ensure_user

    name = unique("importer")
    with session_scope() as session:
        owner = ensure_user(session, name)
    sequence = new_sequence(owner)
    rows = [deal() for _ in range(6)]
    rows[2]["seller_phone"] = "12"  # line 4
    rows[4]["seller_name"] = "=HYPERLINK(\"http://x\")"  # line 6: CSV injection
    path = tmp_path / "deals.csv"
    path.write_text("\ufeff" + _csv(rows[:3]))  # first half, with a byte-order mark
    code, out, err = cli("import", str(path), "--sequence", str(sequence), "--owner", name, "--json")
    assert code == 0, err
    report = json.loads(out)
    assert (report["enrolled"], report["already_there"]) == (2, 0), report["bad_rows"]
    assert report["bad_rows"] == [{"line": 4, "field": "seller_phone", "message": report["bad_rows"][0]["message"]}]
    path.write_text(_csv(rows))  # the whole file: resumes
    code, out, err = cli("import", str(path), "--sequence", str(sequence), "--owner", name)
    assert code == 0, err
    assert "6 row(s) read (csv): 2 enrolled, 2 already there, 2 bad" in " ".join(out.split())
    assert "line 4: seller_phone" in out and "line 6: seller_name: looks like a spreadsheet formula" in out
    assert counts(owner)[:2] == (4, 4)


def test_cli_import_jsonl_and_hostile_lines(deployment, cli, tmp_path):
    from followups.users import ensure_user

    name = unique("importer")
    with session_scope() as session:
        owner = ensure_user(session, name)
    sequence = new_sequence(owner)
    good = [deal() for _ in range(3)]
    lines = [
        json.dumps(good[0]).encode(),
        b"not json",
        json.dumps(deal(property_address="x" * 1_000_000)).encode(),  # a 1 MB field: over the line limit
        json.dumps(good[1]).encode().replace(b"Pat", b"P\x00t"),  # a NUL byte
        json.dumps(deal(seller_name="Jos\u00e9"), ensure_ascii=False).encode("utf-8").replace(b"\xc3\xa9", b"\xe9"),  # Latin-1
        b"[1, 2]",
        json.dumps(deal(seller_name="P\u0000t")).encode(),  # an escaped NUL: refused by the core
        b"",
        json.dumps(good[2]).encode(),
    ]
    path = tmp_path / "deals.data"  # no telling extension: detected from the content
    path.write_bytes(b"\n".join(lines) + b"\n")
    code, out, err = cli("import", str(path), "--sequence", str(sequence), "--owner", name, "--json")
    assert code == 0, err
    report = json.loads(out)
    assert report["format"] == "jsonl" and report["enrolled"] == 2
    bad = {row["line"]: row for row in report["bad_rows"]}
    assert sorted(bad) == [2, 3, 4, 5, 6, 7]
    assert "longer than" in bad[3]["message"] and "NUL" in bad[4]["message"] and "UTF-8" in bad[5]["message"]
    assert bad[7]["field"] == "seller_name"
    assert "Traceback" not in out + err


def test_cli_import_with_a_start_time(deployment, cli, tmp_path):
    from datetime import UTC, datetime, timedelta

    from followups.users import ensure_user

    name = unique("importer")
    with session_scope() as session:
        owner = ensure_user(session, name)
    sequence = new_sequence(owner)
    path = tmp_path / "deals.csv"
    path.write_text(_csv([deal(), deal()]))
    start = (datetime.now(UTC) + timedelta(hours=5)).replace(microsecond=0)
    code, out, err = cli("import", str(path), "--sequence", str(sequence), "--owner", name, "--start-at", start.isoformat(), "--json")
    assert code == 0, err
    report = json.loads(out)
    assert report["enrolled"] == 2 and report["start_at"] == start.isoformat()
    with session_scope() as session:
        dues = session.scalars(select(Enrollment.next_due_at).join(Deal, Enrollment.deal_id == Deal.id).where(Deal.owner_id == owner)).all()
    assert dues == [start, start]
    for when in ("yesterday", "2020-01-01T00:00:00+00:00", "2027-01-01T09:00"):
        code, out, err = cli("import", str(path), "--sequence", str(sequence), "--owner", name, "--start-at", when)
        assert code == 1 and err.startswith("error: ") and "--start-at" in err and len(err.strip().splitlines()) == 1, (when, err)


def test_a_large_import_refreshes_the_planners_statistics(deployment, cli, tmp_path, monkeypatch):
    from sqlalchemy import text

    import followups.bulk as bulk
    from followups.users import ensure_user

    name = unique("importer")
    with session_scope() as session:
        owner = ensure_user(session, name)
    sequence = new_sequence(owner)
    path = tmp_path / "deals.csv"
    path.write_text(_csv([deal(), deal(), deal()]))
    refreshed = []
    monkeypatch.setattr(bulk, "ANALYZE_AFTER", 3)
    monkeypatch.setattr(bulk, "refresh_statistics", lambda: refreshed.append(True))
    assert cli("import", str(path), "--sequence", str(sequence), "--owner", name)[0] == 0
    assert refreshed == [True]
    assert cli("import", str(path), "--sequence", str(sequence), "--owner", name)[0] == 0  # nothing new: no refresh
    assert refreshed == [True]
    monkeypatch.undo()

    def analyzed() -> dict:
        with session_scope() as session:
            return dict(session.execute(text(
                "SELECT relname, analyze_count FROM pg_stat_user_tables WHERE relname IN ('deals', 'enrollments')"
            )).all())

    before = analyzed()
    bulk.refresh_statistics()
    after = analyzed()
    assert all(after[table] > before.get(table, 0) for table in ("deals", "enrollments")), (before, after)


def test_cli_import_fatal_cases_exit_1(deployment, cli, tmp_path):
    from followups.users import ensure_user

    name = unique("importer")
    with session_scope() as session:
        owner = ensure_user(session, name)
    sequence = new_sequence(owner)
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    unknown = tmp_path / "cols.csv"
    unknown.write_text("external_id,favourite_colour\nD-1,red\n")
    for args in (
        [str(tmp_path / "missing.csv"), "--sequence", str(sequence)],
        [str(empty), "--sequence", str(sequence)],
        [str(unknown), "--sequence", str(sequence)],
        [str(unknown), "--sequence", "999999999"],
    ):
        code, out, err = cli("import", *args, "--owner", name)
        assert code == 1 and err.startswith("error: ") and len(err.strip().splitlines()) == 1, (args, err)


# -- HTTP -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def http(deployment):
    with make_client() as client:
        yield client


def test_http_batch(http):
    user, other = new_api_user(), new_api_user()
    sequence = new_sequence(user.id)
    items = [deal(), deal(seller_email="nope", seller_phone=None), deal()]
    answer = http.post("/api/enrollments/batch", json={"sequence_id": sequence, "items": items}, headers=user.headers)
    assert answer.status_code == 207, answer.text
    body = answer.json()
    assert body["counts"] == {"ok": 2, "exists": 0, "error": 1}
    assert [i["status"] for i in body["items"]] == ["ok", "error", "ok"]
    assert body["items"][1]["field"] == "seller_email"
    again = http.post("/api/enrollments/batch", json={"sequence_id": sequence, "items": items}, headers=user.headers).json()
    assert again["counts"] == {"ok": 0, "exists": 2, "error": 1}
    too_many = http.post("/api/enrollments/batch", json={"sequence_id": sequence, "items": [{}] * 1001}, headers=user.headers)
    assert too_many.status_code == 413
    foreign = http.post("/api/enrollments/batch", json={"sequence_id": sequence, "items": [deal()]}, headers=other.headers)
    assert foreign.status_code == 404
    assert http.post("/api/enrollments/batch", json={"sequence_id": sequence, "items": [deal()]}).status_code == 401
    assert counts(user.id)[:2] == (2, 2) and counts(other.id) == (0, 0, 0)


def test_http_batch_start_at(http):
    from datetime import UTC, datetime, timedelta

    user = new_api_user()
    sequence = new_sequence(user.id)
    start = (datetime.now(UTC) + timedelta(days=1)).replace(microsecond=0)
    answer = http.post(
        "/api/enrollments/batch", json={"sequence_id": sequence, "items": [deal()], "start_at": start.isoformat()}, headers=user.headers,
    )
    assert answer.status_code == 207, answer.text
    [item] = answer.json()["items"]
    [run] = runs_of([item["enrollment_id"]])[item["enrollment_id"]]
    assert run.state.state_details.scheduled_time == start
    for bad in ("2027-01-01T09:00:00", "2020-01-01T00:00:00Z", "never", [], (datetime.now(UTC) + timedelta(days=400)).isoformat()):
        refused = http.post("/api/enrollments/batch", json={"sequence_id": sequence, "items": [deal()], "start_at": bad}, headers=user.headers)
        assert refused.status_code == 422, (bad, refused.text)
        assert "start_at" in json.dumps(refused.json()["errors"]), refused.text
    assert counts(user.id)[:2] == (1, 1)



def test_one_enrollment_with_a_start_time(deployment, http, cli):
    """The same `start_at` for a single enrollment: Python, HTTP and the CLI."""
    from datetime import UTC, datetime, timedelta

    from followups.control import enroll_deal, get_enrollment
    from followups.errors import InvalidInputError
    from followups.users import ensure_user

    name = unique("starter")
    with session_scope() as session:
        owner = ensure_user(session, name)
    user = new_api_user()
    sequence, api_sequence = new_sequence(owner), new_sequence(user.id)
    start = (datetime.now(UTC) + timedelta(days=2)).replace(microsecond=0)

    ref = enroll_deal(owner, deal(), sequence, start_at=start.astimezone(timezone_minus_5()).isoformat())
    [run] = runs_of([ref.id])[ref.id]
    assert run.id == ref.flow_run_id and run.state.is_scheduled() and run.state.state_details.scheduled_time == start
    assert get_enrollment(ref.id).next_due_at == start

    answer = http.post("/api/enrollments", json={"sequence_id": api_sequence, "deal": deal(), "start_at": start.isoformat()},
                       headers=user.headers)
    assert answer.status_code == 201, answer.text
    assert datetime.fromisoformat(answer.json()["next_due_at"]) == start

    code, out, err = cli("enroll", "--sequence", str(sequence), "--owner", name, "--deal", unique("B"),
                         "--address", "12 Elm Street", "--seller-name", "Pat", "--seller-email", "pat@example.com",
                         "--start-at", start.isoformat(), "--json")
    assert code == 0, err
    made = json.loads(out)
    assert made["start_at"] == start.isoformat() and get_enrollment(made["enrollment_id"]).next_due_at == start

    # Refused with the field, and nothing stored, at each entry point.
    before = counts(owner), counts(user.id)
    for bad in ("2020-01-01T00:00:00Z", "2027-01-01T09:00:00", (datetime.now(UTC) + timedelta(days=400)).isoformat(), "soon", 5, []):
        with pytest.raises(InvalidInputError) as refused:
            enroll_deal(owner, deal(), sequence, start_at=bad)
        assert refused.value.field == "start_at", bad
        answer = http.post("/api/enrollments", json={"sequence_id": api_sequence, "deal": deal(), "start_at": bad},
                           headers=user.headers)
        assert answer.status_code == 422 and "start_at" in json.dumps(answer.json()["errors"]), (bad, answer.text)
        if isinstance(bad, str):
            code, out, err = cli("enroll", "--sequence", str(sequence), "--owner", name, "--deal", unique("B"),
                                 "--address", "12 Elm Street", "--seller-email", "pat@example.com", "--start-at", bad)
            assert code == 1 and err.startswith("error: ") and "--start-at" in err and len(err.strip().splitlines()) == 1, (bad, err)
    assert (counts(owner), counts(user.id)) == before

_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=30),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
    max_leaves=12,
)
_items = st.lists(
    _json | st.fixed_dictionaries({"external_id": st.text(max_size=40), "seller_name": st.text(max_size=40)}, optional={"seller_phone": st.text(max_size=20), "context": _json}),
    max_size=5,
)


@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
@given(body=st.one_of(_json, st.fixed_dictionaries({"sequence_id": st.just("OWN") | st.integers() | st.text(max_size=5), "items": _items | _json})))
def test_http_batch_hostile_bodies_never_5xx(http, body):
    user = _hostile_user()
    if isinstance(body, dict) and body.get("sequence_id") == "OWN":
        body["sequence_id"] = _hostile_user.sequence
    answer = http.post("/api/enrollments/batch", content=json.dumps(body), headers={**user.headers, "Content-Type": "application/json"})
    assert answer.status_code < 500, answer.text
    assert answer.status_code in (207, 404, 409, 413, 422)


def _hostile_user():
    if not hasattr(_hostile_user, "user"):
        _hostile_user.user = new_api_user()
        _hostile_user.sequence = new_sequence(_hostile_user.user.id)
    return _hostile_user.user


def test_http_batch_hostile_raw_bytes(http):
    user = new_api_user()
    sequence = new_sequence(user.id)
    bodies = [
        b"\x00\xff\xfe", b"{", b'{"sequence_id": %d, "items": "x"}' % sequence,
        b'{"sequence_id": %d, "items": [{"external_id": "A\\u0000B"}]}' % sequence,
        b'{"sequence_id": %d, "items": [' % sequence + b",".join([b"{}"] * 1000) + b"]}",
        b'{"sequence_id": %d, "items": [{"context": ' % sequence + b"[" * 5000 + b"]" * 5000 + b"}]}",
    ]
    for raw in bodies:
        answer = http.post("/api/enrollments/batch", content=raw, headers={**user.headers, "Content-Type": "application/json"})
        assert answer.status_code < 500, (raw[:40], answer.text)
    assert counts(user.id) == (0, 0, 0)
