"""Per-sequence options: validated with field paths, stored on the sequence and each version,
the same through Python, HTTP and the CLI; enrollments keep their version's options."""

from __future__ import annotations

import json

import pytest
from fastapi.testclient import TestClient

from api_support import ApiUser
from followups.db.models import Enrollment
from followups.db.session import session_scope
from followups.errors import InvalidInputError
from followups.lifecycle.plan import load_plan
from followups.sequence_options import SequenceOptions, version_options
from followups.sequences import create_sequence, get_sequence, update_sequence
from support import FAST_SEQUENCE, new_enrollment, new_owner, unique

pytestmark = pytest.mark.usefixtures("database_url")

WINDOW = {"weekdays": ["Mon", "tue", "wed", "thu", "fri"], "start": "09:00", "end": "17:00"}


def test_defaults_and_round_trip():
    owner = new_owner()
    with session_scope() as session:
        plain = create_sequence(session, owner, name=unique("s"), steps=FAST_SEQUENCE)
        windowed = create_sequence(
            session, owner, name=unique("s"), steps=FAST_SEQUENCE,
            options={"send_window": WINDOW, "skip_holidays": True, "stop_on": ["deal_closed"]},
        )
    assert plain.options == SequenceOptions().to_json()
    assert plain.options["stop_on"] == ["offer_accepted", "offer_rejected", "deal_closed"]
    assert windowed.options["send_window"] == {"weekdays": ["mon", "tue", "wed", "thu", "fri"], "start": "09:00:00", "end": "17:00:00"}
    assert windowed.options["skip_holidays"] is True and windowed.options["stop_on"] == ["deal_closed"]


@pytest.mark.parametrize(
    ("options", "field"),
    [
        ({"send_window": {**WINDOW, "end": "08:00"}}, "options.send_window.end"),
        ({"send_window": {**WINDOW, "weekdays": ["someday"]}}, "options.send_window.weekdays.0"),
        ({"send_window": {**WINDOW, "weekdays": []}}, "options.send_window.weekdays"),
        ({"send_window": {**WINDOW, "start": "25:00"}}, "options.send_window.start"),
        ({"holiday_country": "XX"}, "options.holiday_country"),
        ({"stop_on": ["offer_countered"]}, "options.stop_on.0"),
        ({"skip_holidays": "often"}, "options.skip_holidays"),
        ({"colour": "blue"}, "options.colour"),
        ("weekdays", "options"),
    ],
)
def test_bad_options_name_the_field(options, field):
    owner = new_owner()
    with session_scope() as session, pytest.raises(InvalidInputError) as raised:
        create_sequence(session, owner, name=unique("s"), steps=FAST_SEQUENCE, options=options)
    assert raised.value.field == field


def test_changed_options_make_a_version_and_enrollments_keep_theirs():
    owner = new_owner()
    with session_scope() as session:
        sequence = create_sequence(session, owner, name=unique("s"), steps=FAST_SEQUENCE)
    enrollment_id = new_enrollment(owner, sequence.id)
    with session_scope() as session:
        same = update_sequence(session, owner, sequence.id, options={})
        assert same.version == 1  # the defaults again: nothing changed
        changed = update_sequence(session, owner, sequence.id, options={"send_window": WINDOW})
        assert changed.version == 2 and changed.options["send_window"] is not None
        renamed = update_sequence(session, owner, sequence.id, name="renamed")
        assert renamed.version == 2 and renamed.options == changed.options
        assert load_plan(session, enrollment_id).options.send_window is None
        pinned = session.get(Enrollment, enrollment_id).sequence_version_id
        assert version_options(session, pinned) == SequenceOptions()
        stepped = update_sequence(session, owner, sequence.id, steps=FAST_SEQUENCE[:1])
        assert stepped.version == 3 and get_sequence(session, owner, sequence.id).options == changed.options


def test_http_options(client: TestClient, user: ApiUser):
    body = {"name": unique("seq"), "steps": FAST_SEQUENCE, "options": {"send_window": WINDOW, "holiday_country": "ca"}}
    created = client.post("/api/sequences", json=body, headers=user.headers)
    assert created.status_code == 201, created.text
    assert created.json()["options"]["holiday_country"] == "CA"
    bad = client.put(f"/api/sequences/{created.json()['id']}", json={"options": {"send_window": {**WINDOW, "end": "09:00"}}}, headers=user.headers)
    assert bad.status_code == 422
    assert "options" in bad.text and "send_window" in bad.text and "end" in bad.text
    updated = client.put(f"/api/sequences/{created.json()['id']}", json={"options": {"skip_holidays": True}}, headers=user.headers)
    assert updated.status_code == 200 and updated.json()["version"] == 2
    assert updated.json()["options"]["send_window"] is None and updated.json()["options"]["skip_holidays"] is True


def test_cli_options(cli, tmp_path):
    owner = unique("owner")
    good = tmp_path / "seq.json"
    good.write_text(json.dumps({"name": "windowed", "steps": FAST_SEQUENCE, "options": {"send_window": WINDOW}}))
    code, out, err = cli("sequences", "create", "-f", str(good), "--owner", owner, "--json")
    assert code == 0, err
    assert json.loads(out)["options"]["send_window"]["weekdays"] == ["mon", "tue", "wed", "thu", "fri"]
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"name": "x", "steps": FAST_SEQUENCE, "options": {"send_window": {**WINDOW, "weekdays": ["xyz"]}}}))
    code, out, err = cli("sequences", "create", "-f", str(bad), "--owner", owner)
    assert code == 1 and err.count("\n") == 1 and "options.send_window.weekdays.0" in err


@pytest.fixture
def quiet_hours(monkeypatch):
    from followups.settings import reset_settings

    monkeypatch.setenv("FOLLOWUPS_QUIET_HOURS_ENABLED", "true")
    reset_settings()
    yield
    monkeypatch.undo()
    reset_settings()


SMS_STEPS = [{"type": "EMAIL", "subject": "Offer", "text": "Hi"}, {"type": "SMS", "body": "Any news?"}]


@pytest.mark.parametrize(("start", "end"), [("21:00", "23:59"), ("00:00", "08:00"), ("06:00", "07:30")])
def test_a_window_inside_sms_quiet_hours_is_refused_when_saved(quiet_hours, start, end):
    owner = new_owner()
    late = {"send_window": {"weekdays": ["mon"], "start": start, "end": end}}
    with pytest.raises(InvalidInputError) as refused, session_scope() as session:
        create_sequence(session, owner, name=unique("s"), steps=SMS_STEPS, options=late)
    assert refused.value.field == "options.send_window" and "quiet hours" in refused.value.message
    with session_scope() as session:  # email only: the window is the investor's choice
        create_sequence(session, owner, name=unique("s"), steps=FAST_SEQUENCE[:1], options=late)
        sms = create_sequence(session, owner, name=unique("s"), steps=SMS_STEPS)
    with pytest.raises(InvalidInputError), session_scope() as session:
        update_sequence(session, owner, sms.id, options=late)
    with session_scope() as session:
        assert get_sequence(session, owner, sms.id).version == 1  # nothing stored half-way
        # A window that reaches past 08:00 or starts before 21:00 leaves the SMS steps a time.
        update_sequence(session, owner, sms.id, options={"send_window": {"weekdays": ["mon"], "start": "07:00", "end": "08:30"}})
