"""The `followups` CLI, called in-process through its real entry point (`main`)."""

from __future__ import annotations

import json
import sys

import pytest

from followups.cli import main
from support import unique

SEQUENCE_YAML = """
name: {name}
description: three touches
steps:
  - type: email
    subject: Our offer on {{{{ deal.property_address }}}}
    text: Hi {{{{ seller.first_name }}}}
  - type: WAIT
    days: 3
  - type: SMS
    body: Any thoughts, {{{{ seller.first_name }}}}?
"""


@pytest.fixture
def owner() -> str:
    return unique("cli-user")


def test_sequence_commands_round_trip(db, cli, owner, tmp_path):
    name = unique("seq")
    path = tmp_path / "seq.yaml"
    path.write_text(SEQUENCE_YAML.format(name=name))
    code, out, _ = cli("sequences", "create", "-f", str(path), "--owner", owner, "--json")
    assert code == 0
    created = json.loads(out)
    assert created["name"] == name and [s["type"] for s in created["steps"]] == ["EMAIL", "WAIT", "SMS"]

    code, out, _ = cli("sequences", "list", "--owner", owner, "--json")
    assert code == 0 and [s["id"] for s in json.loads(out)] == [created["id"]]

    edited = tmp_path / "edit.json"
    edited.write_text(json.dumps({"steps": [{"type": "SMS", "body": "only this"}]}))
    code, out, _ = cli("sequences", "update", str(created["id"]), "-f", str(edited), "--owner", owner, "--json")
    assert code == 0 and json.loads(out)["version"] == 2

    code, out, _ = cli("sequences", "show", str(created["id"]), "--owner", owner)
    assert code == 0 and "SMS" in out and "version 2" in out

    code, out, _ = cli("sequences", "delete", str(created["id"]), "--owner", owner)
    assert code == 0 and "deleted" in out
    code, _, err = cli("sequences", "show", str(created["id"]), "--owner", owner)
    assert code == 1 and err.strip() == f"error: sequence {created['id']} not found"


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("name: x\nsteps: []\n", "steps: List should have at least 1 item"),
        ("name: x\nsteps:\n  - type: SMS\n", "steps.0.body: Field required"),
        ("name: x\nsteps:\n  - {type: SMS, body: '{{ deal.nope }}'}\n", "steps.0.body: template error"),
        ("name: [unclosed\n", "is not valid YAML"),
        ("- just a list\n", "must hold a mapping of fields"),
        ("name: x\ncolour: red\nsteps:\n  - {type: SMS, body: hi}\n", "colour: unknown field"),
        ("name: x\nsteps:\n  - {type: FAX, body: hi}\n", "steps.0.type: must be one of EMAIL, SMS or WAIT"),
        ("name: x\ndescription: " + "x" * 10_001 + "\nsteps:\n  - {type: SMS, body: hi}\n", "description: String should have at most"),
        ("name: \"a\\0b\"\nsteps:\n  - {type: SMS, body: hi}\n", "name: must not contain NUL"),
        ("name: x\nsteps:\n  - {type: SMS, body: \"a\\0b\"}\n", "steps.0.body: must not contain NUL"),
    ],
)
def test_bad_sequence_files_exit_1_with_one_line(db, cli, owner, tmp_path, content, message):
    path = tmp_path / "bad.yaml"
    path.write_text(content)
    code, out, err = cli("sequences", "create", "-f", str(path), "--owner", owner)
    assert code == 1 and out == ""
    assert len(err.strip().splitlines()) == 1 and message in err


def test_missing_file_and_unknown_ids_exit_1(db, cli, owner, tmp_path):
    code, _, err = cli("sequences", "create", "-f", str(tmp_path / "nope.yaml"), "--owner", owner)
    assert code == 1 and "cannot read" in err
    code, _, err = cli("status", "999999999")
    assert code == 1 and err.strip() == "error: enrollment 999999999 not found"
    code, _, err = cli("events")
    assert code == 1 and "exactly one of" in err


def test_enrollment_commands(prefect_api, cli, owner, tmp_path):
    path = tmp_path / "seq.yaml"
    path.write_text(SEQUENCE_YAML.format(name=unique("seq")))
    _, out, _ = cli("sequences", "create", "-f", str(path), "--owner", owner, "--json")
    sequence_id = json.loads(out)["id"]
    from followups.deployments.definitions import sequence_deployment

    sequence_deployment().apply()
    deal = unique("D")
    code, out, err = cli(
        "enroll", "--sequence", str(sequence_id), "--owner", owner, "--deal", deal, "--address", "1 Main St",
        "--seller-name", "Ann Lee", "--seller-email", "ann@example.com", "--json",
    )
    assert code == 0, err
    enrollment_id = json.loads(out)["enrollment_id"]

    code, out, _ = cli("status", str(enrollment_id), "--json")
    assert code == 0 and json.loads(out)["status"] == "ACTIVE"
    code, out, _ = cli("pause", str(enrollment_id), "--json")
    assert code == 0 and json.loads(out)["status"] == "PAUSED"
    code, _, err = cli("pause", str(enrollment_id))
    assert code == 1 and "only an ACTIVE enrollment can be paused" in err and len(err.strip().splitlines()) == 1
    code, out, _ = cli("resume", str(enrollment_id), "--json")
    assert code == 0 and json.loads(out)["status"] == "ACTIVE"
    code, out, _ = cli("cancel", str(enrollment_id))
    assert code == 0 and "CANCELLED" in out
    code, out, _ = cli("events", "--enrollment", str(enrollment_id), "--json")
    types = [e["event_type"] for e in json.loads(out)]
    assert types[0] == "ENROLLED" and types[-3:] == ["PAUSED", "RESUMED", "CANCELLED"] or "CANCELLED" in types
    code, out, _ = cli("events", "--deal", deal)
    assert code == 0 and "ENROLLED" in out

    code, _, err = cli("enroll", "--sequence", str(sequence_id), "--owner", owner, "--deal", unique("D"), "--address", "x", "--seller-name", "x")
    assert code == 1 and "email address or a phone number" in err

    code, out, _ = cli(
        "offer-sent", "offer-9", "--sequence", str(sequence_id), "--owner", owner, "--deal", unique("D"),
        "--address", "2 Main St", "--seller-name", "Bo Kim", "--seller-phone", "+15035550100", "--json",
    )
    result = json.loads(out)
    assert code == 0 and result["enrolled"] is True
    cli("cancel", str(result["enrollment_id"]))


def test_users_and_tokens(db, cli):
    from followups.api_tokens import verify_token

    name = unique("api-user")
    code, out, _ = cli("users", "create", name, "--json")
    assert code == 0 and json.loads(out)["name"] == name
    code, out, _ = cli("tokens", "create", name, "--label", "ci")
    token = out.strip()
    assert code == 0 and verify_token(token) == json.loads(cli("users", "create", name, "--json")[1])["id"]
    code, out, _ = cli("tokens", "revoke", name)
    assert code == 0 and "revoked 1" in out and verify_token(token) is None


@pytest.mark.parametrize("reason", ["window", "quiet hours"])
def test_status_shows_every_time_in_utc_and_why_a_step_is_held(db, cli, reason):
    from followups.db.events import record_event
    from datetime import datetime
    from zoneinfo import ZoneInfo

    from followups.db.models import Enrollment, EventType
    from followups.db.session import session_scope
    from support import new_enrollment, new_owner, new_sequence

    owner = new_owner()
    steps = [{"type": "SMS", "body": "Hi"}, {"type": "WAIT", "days": 3}, {"type": "EMAIL", "subject": "Again", "text": "x"}]
    enrollment_id = new_enrollment(owner, new_sequence(owner, steps), seller_email="ann@example.com", seller_phone="+15035550100")
    with session_scope() as session:
        record_event(session, enrollment_id=enrollment_id, event_type=EventType.STEP_DEFERRED, step_index=0,
                     status="deferred", content={"until": "2030-12-09T13:00:00+00:00", "reason": reason, "detail": ""})
        # A wait's due time is stored in the seller's offset; sends are planned in UTC.
        record_event(session, enrollment_id=enrollment_id, event_type=EventType.WAIT_STARTED, step_index=1,
                     content={"due_at": "2030-12-09T10:00:00-05:00"})
        session.get(Enrollment, enrollment_id).next_due_at = datetime(2030, 12, 9, 8, tzinfo=ZoneInfo("America/New_York"))

    code, out, err = cli("status", str(enrollment_id))
    assert code == 0, err
    rows = {line.split("│")[1].strip(): [cell.strip() for cell in line.split("│")[2:]] for line in out.splitlines() if line.count("│") > 4}
    assert rows["0"][:2] == ["SMS", f"pending ({reason})"]
    assert rows["1"][2] == "2030-12-09 15:00:00 UTC"
    assert rows["2"][2].endswith(" UTC")
    assert out.splitlines()[0].endswith("· next due 2030-12-09 13:00:00 UTC")


def test_import_progress_counts_rows_enrolled(db, cli, tmp_path, monkeypatch):
    from types import SimpleNamespace

    import rich.progress

    from followups import bulk
    from followups.cli_bulk import count_lines
    from followups.db.session import session_scope
    from followups.users import ensure_user
    from support import new_sequence

    name = unique("importer")
    with session_scope() as session:
        owner_id = ensure_user(session, name)
    sequence = new_sequence(owner_id)
    path = tmp_path / "deals.csv"
    path.write_text("external_id,property_address,seller_name,seller_email\n" + "".join(
        f"{unique('D')},1 Main St,Ann Lee,ann@example.com\n" for _ in range(3)) + "\n")
    assert count_lines(path) == 5 and count_lines(tmp_path / "missing.csv") == 0

    updates: list[dict] = []
    real_update = rich.progress.Progress.update
    monkeypatch.setattr(rich.progress.Progress, "update", lambda self, task, **kw: (updates.append(kw), real_update(self, task, **kw))[1])
    seen: list[list[dict]] = []

    def enroll_batch(owner_id, rows, sequence_id, *, start_at=None, again=False):
        seen.append(list(updates))
        return SimpleNamespace(results=[SimpleNamespace(status="ok", field=None, message="", enrollment_status="ACTIVE",
                                                        previous_enrollment_id=None) for _ in rows])

    monkeypatch.setattr(bulk, "enroll_batch", enroll_batch)
    code, out, err = cli("import", str(path), "--sequence", str(sequence), "--owner", name)
    assert code == 0, err
    # Before the rows are enrolled the bar stands at 0 of the file's 3 rows (its header aside), not at 100 %.
    [before] = seen
    assert [u["total"] for u in before if "total" in u] == [4]
    assert {u.get("completed") for u in before} == {None, 0}
    assert updates[-1] == {"total": 3, "completed": 3}
    assert "3/3 rows" in out and "3 row(s) read (csv): 3 enrolled" in " ".join(out.split())
