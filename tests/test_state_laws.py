"""State texting laws stricter than the TCPA: each state's hours, Sundays and holidays, read on
the recipient's clock, by the property's state and the number's area code (both when they
differ); the frequency cap per 24 h at send time; the preview naming the same rule."""

from __future__ import annotations

import random
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

import phonenumbers
import pytest
from phonenumbers import geocoder

from followups.errors import InvalidInputError
from followups.inputs import DealInput, validate
from followups.scheduling.planning import Recipient, plan_times
from followups.scheduling.state_laws import STATE_LAWS, STATE_NAMES, TABLE_VERSION, law_in_force, state_of_phone
from followups.sequence_options import SequenceOptions
from followups.settings import Settings, reset_settings
from followups.steps import load_stored_steps

QUIET = (21, 8)
SMS = {"type": "SMS", "body": "Hi"}
ET, CT, PT = ZoneInfo("America/New_York"), ZoneInfo("America/Chicago"), ZoneInfo("America/Los_Angeles")
FLORIDA, NEW_YORK, TEXAS, ALABAMA = "+13055550142", "+12125550142", "+12145550142", "+12055550142"


def send(phone: str | None, due: datetime, *, property_state: str | None = None, seller_zone: str = "UTC", laws: bool = True):
    [row] = plan_times(
        load_stored_steps([SMS]), due, SequenceOptions(), Recipient(seller_zone, phone, None, property_state), QUIET, state_laws=laws
    )
    return row


def test_the_table_is_versioned_dated_and_cited():
    assert TABLE_VERSION
    assert {law.state for law in STATE_LAWS} == {"FL", "OK", "MD", "WA", "TX", "AL", "LA", "KY"}
    for law in STATE_LAWS:
        assert law.version >= 1 and isinstance(law.effective, date) and law.citation and law.zones
        assert (law.cap is None) == (not law.cap_citation)
    assert law_in_force("TX", date(2025, 8, 31)) is None and law_in_force("TX", date(2025, 9, 1)) is not None


# (phone, due on the local clock, expected send on it, what the detail starts with); each pair
# straddles a DST change or falls on a state holiday.
CASES = [
    # Florida, 20:30 the evening before the 2027 spring-forward (EST) and the evening after (EDT).
    (FLORIDA, datetime(2027, 3, 13, 20, 30, tzinfo=ET), datetime(2027, 3, 14, 8, tzinfo=ET), "Florida: 08:00–20:00 (Fla. Stat. §501.616(6)(a))"),
    (FLORIDA, datetime(2027, 3, 15, 20, 30, tzinfo=ET), datetime(2027, 3, 16, 8, tzinfo=ET), "Florida: 08:00–20:00"),
    (FLORIDA, datetime(2027, 11, 7, 19, 59, tzinfo=ET), None, ""),
    # Oklahoma and Maryland, around the fall-back.
    ("+14055550142", datetime(2027, 11, 6, 7, 30, tzinfo=CT), datetime(2027, 11, 6, 8, tzinfo=CT), "Oklahoma: 08:00–20:00"),
    ("+14055550142", datetime(2027, 11, 8, 20, 0, tzinfo=CT), datetime(2027, 11, 9, 8, tzinfo=CT), "Oklahoma: 08:00–20:00"),
    ("+14105550142", datetime(2027, 11, 6, 20, 15, tzinfo=ET), datetime(2027, 11, 7, 8, tzinfo=ET), "Maryland: 08:00–20:00"),
    # Washington: 20:00 is already closed.
    ("+12065550142", datetime(2027, 3, 13, 20, 0, tzinfo=PT), datetime(2027, 3, 14, 8, tzinfo=PT), "Washington: 08:00–20:00"),
    # Texas: Sunday opens at noon, Saturday at 09:00; the fall-back Sunday too.
    (TEXAS, datetime(2027, 11, 7, 10, 0, tzinfo=CT), datetime(2027, 11, 7, 12, tzinfo=CT), "Texas: 09:00–21:00 Mon–Sat, 12:00–21:00 Sun"),
    (TEXAS, datetime(2027, 3, 13, 8, 30, tzinfo=CT), datetime(2027, 3, 13, 9, tzinfo=CT), "Texas:"),
    (TEXAS, datetime(2027, 3, 13, 21, 30, tzinfo=CT), datetime(2027, 3, 14, 12, tzinfo=CT), "Texas:"),
    # Before SB 140 took effect only the TCPA's hours held.
    (TEXAS, datetime(2025, 8, 31, 10, 0, tzinfo=CT), None, ""),
    # Alabama: no Sundays, no state holidays (Christmas 2026 is a Friday; Confederate Memorial Day).
    (ALABAMA, datetime(2027, 3, 14, 10, 0, tzinfo=CT), datetime(2027, 3, 15, 8, tzinfo=CT), "Alabama: 08:00–20:00 Mon–Sat, none Sun"),
    (ALABAMA, datetime(2026, 12, 25, 10, 0, tzinfo=CT), datetime(2026, 12, 26, 8, tzinfo=CT), "Alabama: no texts on state holidays (Christmas Day)"),
    (ALABAMA, datetime(2027, 4, 26, 10, 0, tzinfo=CT), datetime(2027, 4, 27, 8, tzinfo=CT), "Alabama: no texts on state holidays (Confederate Memorial Day)"),
    (ALABAMA, datetime(2027, 11, 6, 19, 59, tzinfo=CT), None, ""),
    # Louisiana: Mardi Gras 2027 is Tuesday Feb 9; Sundays around the fall-back.
    ("+15045550142", datetime(2027, 2, 9, 12, 0, tzinfo=CT), datetime(2027, 2, 10, 8, tzinfo=CT), "Louisiana: no texts on state holidays (Mardi Gras)"),
    ("+15045550142", datetime(2027, 11, 6, 20, 30, tzinfo=CT), datetime(2027, 11, 8, 8, tzinfo=CT), "Louisiana: 08:00–20:00 Mon–Sat, none Sun"),
    # Kentucky: opens at 10:00, open until 21:00.
    ("+15025550142", datetime(2027, 3, 15, 9, 30, tzinfo=ET), datetime(2027, 3, 15, 10, tzinfo=ET), "Kentucky: 10:00–21:00"),
    ("+15025550142", datetime(2027, 3, 13, 20, 30, tzinfo=ET), None, ""),
]


@pytest.mark.parametrize(("phone", "due", "expected", "detail"), CASES)
def test_each_states_hours_days_and_holidays(phone, due, expected, detail):
    row = send(phone, due)
    if expected is None:
        assert row.reason is None and row.send_at == due
        return
    assert row.send_at == expected and row.reason == "state law"
    assert row.detail.startswith(detail) and "deferred until" in row.detail


def test_switched_off_only_the_tcpa_holds():
    row = send(FLORIDA, datetime(2027, 3, 15, 20, 30, tzinfo=ET), laws=False)
    assert row.reason is None
    # On unless switched off (the suite's own environment switches it off, as it does quiet hours).
    assert Settings.model_fields["state_laws_enabled"].default is True


def test_the_state_from_the_area_code():
    assert state_of_phone("+13056731234") == "FL"  # libphonenumber says "Miami Beach, FL"
    assert state_of_phone("+12065550142") == "WA"  # "Washington State"
    assert state_of_phone("+12022001234") == "DC"
    assert state_of_phone("+16045550142") is None  # British Columbia
    assert state_of_phone("+18005550142") is None and state_of_phone("+15555550142") is None
    assert state_of_phone(None) is None and state_of_phone("not a number") is None


def test_property_state_is_validated():
    deal = {"external_id": "D-1", "property_address": "1 Main St", "seller_name": "Pat", "seller_phone": NEW_YORK}
    assert validate(DealInput, {**deal, "property_state": " fl "}).property_state == "FL"
    assert validate(DealInput, deal).property_state is None
    for bad in ("ZZ", "Florida", "F", 12):
        with pytest.raises(InvalidInputError) as caught:
            validate(DealInput, {**deal, "property_state": bad}, prefix="deal")
        assert caught.value.field == "deal.property_state"


def test_both_states_apply_when_the_property_and_the_number_differ():
    # A New York number, a Florida property, no seller zone: 20:30 in New York is too late for Florida.
    row = send(NEW_YORK, datetime(2027, 1, 12, 20, 30, tzinfo=ET), property_state="FL")
    assert row.reason == "state law" and row.detail.startswith("Florida:")
    # The seller may be at the property in the panhandle: 08:00 Central, not 08:00 Eastern.
    assert row.send_at == datetime(2027, 1, 13, 8, tzinfo=CT)
    # A Florida number, a Texas property: Sunday waits for noon in Texas, El Paso's clock included.
    row = send(FLORIDA, datetime(2027, 1, 17, 11, 0, tzinfo=ET), property_state="TX")
    assert row.send_at == datetime(2027, 1, 17, 12, tzinfo=ZoneInfo("America/Denver")) and row.detail.startswith("Texas:")
    # A Texas number, a Florida property: Texas alone allows 20:30, Florida does not; Texas then
    # opens the next morning at 09:00, the later of the two.
    assert send(TEXAS, datetime(2027, 1, 18, 20, 30, tzinfo=CT)).reason is None
    row = send(TEXAS, datetime(2027, 1, 18, 20, 30, tzinfo=CT), property_state="FL")
    assert row.send_at == datetime(2027, 1, 19, 9, tzinfo=CT) and row.detail.startswith("Texas:")
    # The deal's own zone says where the seller is: the law is read on that clock only.
    row = send(NEW_YORK, datetime(2027, 1, 12, 19, 30, tzinfo=PT), property_state="FL", seller_zone="America/Los_Angeles")
    assert row.reason is None


def test_no_planned_sms_outside_the_state_law_of_any_area_code():
    """1,000 phone-only sellers across every NANP area code: where libphonenumber places the
    number in a state with a texting law, no SMS is planned outside that law on any candidate clock."""
    from test_uncertain_zones import DST, SEQUENCES, nanp_numbers

    numbers = nanp_numbers()
    by_name = {name: code for code, name in STATE_NAMES.items()} | {"Washington State": "WA"}
    rng = random.Random(20250901)
    checked = 0
    for _ in range(1000):
        phone = numbers[rng.choice(sorted(numbers))]
        place = geocoder.description_for_number(phonenumbers.parse(phone, None), "en")
        state = place.rpartition(", ")[2] if ", " in place else by_name.get(place)
        owner = rng.choice([None, "America/New_York", "America/Chicago", "America/Denver"])
        if rng.random() < 1 / 3:
            start = rng.choice(DST) + timedelta(seconds=rng.randint(-3 * 86400, 3 * 86400))
        else:
            start = datetime(2027, 1, 1, tzinfo=UTC) + timedelta(seconds=rng.randint(0, 365 * 86400))
        options = SequenceOptions(skip_holidays=rng.random() < 0.5)
        for row in plan_times(load_stored_steps(rng.choice(SEQUENCES)), start, options, Recipient("UTC", phone, owner), QUIET):
            if row.type != "SMS":
                continue
            for zone in row.zones:
                local = row.send_at.astimezone(ZoneInfo(zone))
                law = law_in_force(state, local.date()) if state else None
                if law is None:
                    continue
                hours = law.hours[local.weekday()]
                assert hours is not None and hours[0] <= local.time() < hours[1], (phone, state, zone, local)
                assert law.holiday(local.date()) is None, (phone, state, local)
                checked += 1
    assert checked > 200


# -- with the database -------------------------------------------------------------------


@pytest.fixture
def laws_on(monkeypatch):
    monkeypatch.setenv("FOLLOWUPS_CAPS_ENABLED", "false")
    monkeypatch.setenv("FOLLOWUPS_STATE_LAWS_ENABLED", "true")
    reset_settings()
    yield
    monkeypatch.undo()
    reset_settings()


def _sent(enrollment_id: int, *moments: datetime) -> None:
    from followups.db.models import EventType, FollowUpEvent
    from followups.db.session import session_scope

    with session_scope() as session:
        for moment in moments:
            session.add(FollowUpEvent(enrollment_id=enrollment_id, event_type=EventType.SMS_SENT, status="ok", content={}, occurred_at=moment))


def test_the_fourth_text_in_24_hours_waits_for_the_oldest_to_turn_24_hours(db, laws_on, monkeypatch):
    from followups.db.session import session_scope
    from followups.execution import deferral
    from followups.lifecycle.plan import load_plan
    from support import new_enrollment, new_owner, new_sequence

    owner, other = new_owner(), new_owner()
    first = new_enrollment(owner, new_sequence(owner, [SMS]), seller_phone=FLORIDA)
    second = new_enrollment(owner, new_sequence(owner, [SMS]), seller_phone=FLORIDA)  # another sequence, same phone
    strangers = new_enrollment(other, new_sequence(other, [SMS]), seller_phone=FLORIDA)  # another owner's texts
    now = datetime(2027, 1, 12, 17, tzinfo=UTC)  # Tuesday 12:00 in Miami
    oldest = now - timedelta(hours=23)
    _sent(first, now - timedelta(hours=30), oldest, now - timedelta(hours=2))
    _sent(strangers, *(now - timedelta(hours=h) for h in range(1, 6)))
    held: list[deferral.Deferral] = []
    monkeypatch.setattr(deferral, "clock", lambda: now)
    monkeypatch.setattr(deferral, "defer", lambda plan, index, found, run: held.append(found) or True)
    with session_scope(read_only=True) as session:
        plan = load_plan(session, first)
    assert deferral.hold_if_needed(plan, 0, "sms", None) is None  # 2 in the last 24 h
    _sent(second, now - timedelta(hours=1))
    found = deferral.hold_if_needed(plan, 0, "sms", None)
    assert found is not None and found.reason == "state law" and held == [found]
    assert found.until == oldest + timedelta(hours=24)
    assert found.detail.startswith("Florida: at most 3 texts to one person in 24 h (Fla. Stat. §501.616(6)(b)")
    # When the oldest turns 24 h old at night, the text waits for the morning too.
    third = new_enrollment(owner, new_sequence(owner, [SMS]), seller_phone="+13055550143")
    _sent(third, datetime(2027, 1, 12, 1, 30, tzinfo=UTC), datetime(2027, 1, 12, 12, tzinfo=UTC), datetime(2027, 1, 12, 13, tzinfo=UTC))
    evening = datetime(2027, 1, 13, 0, 45, tzinfo=UTC)  # 19:45 in Miami
    monkeypatch.setattr(deferral, "clock", lambda: evening)
    with session_scope(read_only=True) as session:
        night = load_plan(session, third)
    found = deferral.hold_if_needed(night, 0, "sms", None)
    assert found is not None and found.until == datetime(2027, 1, 13, 8, tzinfo=ET) and "at most 3" in found.detail
    # Switched off, the cap does not hold it.
    monkeypatch.setenv("FOLLOWUPS_STATE_LAWS_ENABLED", "false")
    reset_settings()
    assert deferral.hold_if_needed(night, 0, "sms", None) is None


def test_the_preview_names_the_rule_the_run_applies(db, laws_on, monkeypatch):
    from followups.db.session import session_scope
    from followups.execution import deferral
    from followups.lifecycle.plan import load_plan
    from followups.preview import preview_sequence
    from support import new_enrollment, new_owner, new_sequence

    owner = new_owner()
    sequence_id = new_sequence(owner, [SMS])
    deal = {"external_id": "D-7", "property_address": "1 Ocean Dr", "seller_name": "Pat Lee",
            "seller_phone": NEW_YORK, "property_state": "FL"}
    start = datetime(2027, 1, 13, 1, 30, tzinfo=UTC)  # 20:30 New York
    with session_scope(read_only=True) as session:
        [row] = preview_sequence(session, owner, sequence_id, deal, start.isoformat())["steps"]
    assert row["deferred_by"] == "state law" and row["detail"].startswith("Florida: 08:00–20:00 (Fla. Stat. §501.616(6)(a))")
    assert "at most 3 texts" in row["state_cap"]
    enrollment_id = new_enrollment(owner, sequence_id, seller_phone=NEW_YORK, property_state="FL", seller_timezone="UTC")
    with session_scope(read_only=True) as session:
        plan = load_plan(session, enrollment_id)
    held: list[deferral.Deferral] = []
    monkeypatch.setattr(deferral, "clock", lambda: start)
    monkeypatch.setattr(deferral, "defer", lambda plan, index, found, run: held.append(found) or True)
    found = deferral.hold_if_needed(plan, 0, "sms", None)
    assert found is not None and found.until == datetime.fromisoformat(row["send_at"])
    assert (found.reason, found.detail) == (row["deferred_by"], row["detail"])


def test_property_state_is_stored_and_imported(db, tmp_path):
    from sqlalchemy import select

    from followups.db.models import Deal
    from followups.db.session import session_scope
    from followups.deals import upsert_deal
    from followups.import_file import Reader
    from support import new_owner

    owner = new_owner()
    deal = {"external_id": "D-9", "property_address": "1 Main St", "seller_name": "Pat", "seller_phone": TEXAS, "property_state": "tx"}
    with session_scope() as session:
        deal_id = upsert_deal(session, owner, deal)
    with session_scope() as session:
        assert session.scalar(select(Deal.property_state).where(Deal.id == deal_id)) == "TX"
    path = tmp_path / "deals.csv"
    path.write_text("external_id,property_address,seller_name,seller_phone,property_state\nD-10,1 Main St,Pat,+12145550142,LA\n")
    [row] = list(Reader(path).rows())
    assert row.error == "" and validate(DealInput, row.data).property_state == "LA"
