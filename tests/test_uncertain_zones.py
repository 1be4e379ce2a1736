"""An SMS to a number whose zone is uncertain (several zones, or none) goes out only when every
candidate zone allows it; a deal's own seller_timezone alone decides; a NANP number is never
read on UTC; the preview and the deferral say which zone decided."""

from __future__ import annotations

import random
from datetime import UTC, datetime, time, timedelta
from functools import cache
from zoneinfo import ZoneInfo

import phonenumbers
from phonenumbers import timezone as phone_timezones

from followups.execution import deferral
from followups.lifecycle.plan import EnrollmentPlan
from followups.scheduling.planning import Recipient, plan_times
from followups.scheduling.send_times import SendRules, next_send_time
from followups.scheduling.zones import recipient_zones, zones_of_phone
from followups.sequence_options import SequenceOptions
from followups.settings import reset_settings
from followups.steps import load_stored_steps
from followups.templating import DealView, SellerView

QUIET = (21, 8)
SMS = {"type": "SMS", "body": "Hi"}
ALASKA = "+19075550142"  # America/Adak and America/Anchorage


def test_the_candidate_zones():
    assert recipient_zones("sms", "UTC", ALASKA) == (("America/Adak", "America/Anchorage"), "phone")
    assert recipient_zones("sms", None, "+17015550142", "America/Chicago") == (
        ("America/Chicago", "America/Denver", "America/North_Dakota/Center"), "phone+owner",
    )
    # The deal's own zone alone decides, and email never guesses from the number.
    assert recipient_zones("sms", "America/New_York", ALASKA, "America/Denver") == (("America/New_York",), "deal")
    assert recipient_zones("email", "UTC", ALASKA, "America/Denver") == (("America/Denver",), "owner")
    # One zone: certain, the owner's zone plays no part.
    assert recipient_zones("sms", "UTC", "+12125550142", "America/Denver") == (("America/New_York",), "phone")
    # An area code libphonenumber has no zone for: every NANP zone, never UTC.
    unplaced = zones_of_phone("+15555550142")
    assert "America/New_York" in unplaced and "Pacific/Honolulu" in unplaced and "UTC" not in unplaced
    assert len(zones_of_phone("+18005550142")) > 30


def test_an_alaska_number_waits_for_the_later_clock():
    rules = SendRules("America/Adak", quiet_hours=QUIET, other_zones=("America/Anchorage",))
    # 08:30 in Anchorage is 07:30 on Adak: wait for 08:00 on Adak.
    morning = next_send_time(datetime(2027, 1, 12, 8, 30, tzinfo=ZoneInfo("America/Anchorage")), rules)
    assert morning.at == datetime(2027, 1, 12, 8, tzinfo=ZoneInfo("America/Adak")) and morning.zone == "America/Adak"
    # 20:30 on Adak is 21:30 in Anchorage: the next morning on Adak's clock.
    evening = next_send_time(datetime(2027, 1, 12, 20, 30, tzinfo=ZoneInfo("America/Adak")), rules)
    assert evening.at == datetime(2027, 1, 13, 8, tzinfo=ZoneInfo("America/Adak")) and evening.reason == "quiet hours"


def test_the_preview_and_the_deferral_name_the_deciding_zone(monkeypatch):
    steps = load_stored_steps([SMS])
    start = datetime(2027, 1, 12, 17, 30, tzinfo=UTC)  # 08:30 Anchorage, 07:30 Adak
    [row] = plan_times(steps, start, SequenceOptions(), Recipient("UTC", ALASKA), QUIET)
    shown = row.as_dict()
    assert shown["timezone"] == "America/Adak" and shown["candidate_zones"] == ["America/Adak", "America/Anchorage"]
    assert "America/Adak" in shown["detail"] and "strictest of 2" in shown["detail"]
    monkeypatch.setenv("FOLLOWUPS_QUIET_HOURS_ENABLED", "true")
    reset_settings()
    try:
        plan = EnrollmentPlan(
            enrollment_id=1, status="ACTIVE", current_step=0, next_due_at=None, prefect_flow_run_id=None,
            sequence_id=1, sequence_version=1, steps=steps, deal_id=1, owner_id=1, deal_ref="D-1",
            deal=DealView("D-1", "1 Main St", None), seller=SellerView("Pat Lee", None, ALASKA, "UTC"), reply_token="x",
        )
        held = deferral.outside_rules(plan, "sms", start)
    finally:
        monkeypatch.undo()
        reset_settings()
    assert held is not None and held.until == row.send_at and held.reason == "quiet hours"
    assert held.detail == row.detail and "SMS quiet hours in America/Adak" in held.detail


@cache
def nanp_numbers() -> dict[str, str]:
    """A valid number for every NANP area code libphonenumber places, and the toll-free ones."""
    codes = {prefix[1:4] for prefix in phone_timezones.TIMEZONE_DATA if prefix.startswith("1") and len(prefix) >= 4}
    numbers = {}
    for code in sorted(codes | {"800", "833", "844", "855", "866", "877", "888"}):
        for exchange in range(200, 1000):
            number = phonenumbers.parse(f"+1{code}{exchange}0142", None)
            if phonenumbers.is_valid_number(number):
                numbers[code] = phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)
                break
    return numbers


def candidate_zones(phone: str, owner: str | None) -> set[str]:
    """Worked out from libphonenumber here, not by the code under test."""
    number = phonenumbers.parse(phone, None)
    zones = {zone for zone in phone_timezones.time_zones_for_number(number) if zone != "Etc/Unknown"}
    zones = zones or set(phone_timezones.TIMEZONE_DATA["1"])
    return zones | {owner} if owner and len(zones) > 1 else zones


# 2027: US DST changes on Mar 14 and Nov 7; a third of the starts fall within days of one.
DST = [datetime(2027, 3, 14, 10, tzinfo=UTC), datetime(2027, 11, 7, 10, tzinfo=UTC)]
SEQUENCES = [
    [SMS],
    [SMS, {"type": "WAIT", "days": 1}, SMS],
    [{"type": "EMAIL", "subject": "s", "text": "t"}, {"type": "WAIT", "hours": 13}, SMS, {"type": "WAIT", "business_days": 2}, SMS],
]


def test_no_sms_outside_quiet_hours_in_any_candidate_zone():
    numbers = nanp_numbers()
    assert sum(phonenumbers.region_code_for_number(phonenumbers.parse(n, None)) == "US" for n in numbers.values()) > 300
    rng = random.Random(20271107)
    checked = 0
    for _ in range(1000):
        phone = numbers[rng.choice(sorted(numbers))]
        owner = rng.choice([None, "America/New_York", "America/Chicago", "America/Denver", "America/Los_Angeles"])
        if rng.random() < 1 / 3:
            start = rng.choice(DST) + timedelta(seconds=rng.randint(-3 * 86400, 3 * 86400))
        else:
            start = datetime(2027, 1, 1, tzinfo=UTC) + timedelta(seconds=rng.randint(0, 365 * 86400))
        steps = load_stored_steps(rng.choice(SEQUENCES))
        options = SequenceOptions(skip_holidays=rng.random() < 0.5)
        zones = candidate_zones(phone, owner)
        assert "UTC" not in zones
        for row in plan_times(steps, start, options, Recipient("UTC", phone, owner), QUIET):
            if row.type != "SMS":
                continue
            assert set(row.zones) == zones, phone
            for zone in zones:
                local = row.send_at.astimezone(ZoneInfo(zone))
                assert time(8) <= local.time() < time(21), (phone, owner, start, zone, local)
            checked += 1
    assert checked > 1000


def test_a_wait_before_an_uncertain_sms_counts_on_the_owners_clock():
    steps = load_stored_steps([SMS, {"type": "WAIT", "days": 1}, SMS])
    start = datetime(2027, 11, 6, 18, tzinfo=UTC)  # 11:00 Denver, the day before fall-back
    rows = plan_times(steps, start, SequenceOptions(), Recipient("UTC", "+18005550142", "America/Denver"), QUIET)
    assert rows[1].timezone == "America/Denver"
    assert rows[1].due_at.astimezone(ZoneInfo("America/Denver")).time() == rows[0].send_at.astimezone(ZoneInfo("America/Denver")).time()


def test_a_step_no_moment_allows_is_skipped_and_the_sequence_goes_on(db, monkeypatch):
    """A toll-free number may be anywhere from Guam to American Samoa: with a business-hours
    window no moment suits every zone. The SMS is not sent, and the sequence is not failed (a
    failed run would only be repaired and fail again)."""
    from followups.db.session import session_scope
    from followups.lifecycle.plan import load_plan
    from support import enrollment_row, events_of, new_enrollment, new_owner, new_sequence

    owner = new_owner()
    window = {"send_window": {"weekdays": ["mon", "tue", "wed", "thu", "fri"], "start": "09:00", "end": "17:00"}}
    steps = [SMS, {"type": "EMAIL", "subject": "s", "text": "t"}]
    enrollment_id = new_enrollment(owner, new_sequence(owner, steps, options=window), seller_phone="+18005550142")
    monkeypatch.setattr(deferral, "clock", lambda: datetime(2027, 1, 12, 15, tzinfo=UTC))
    with session_scope(read_only=True) as session:
        plan = load_plan(session, enrollment_id)
    held = deferral.hold_if_needed(plan, 0, "sms", None)
    assert held is not None and held.skipped and "seller_timezone" in held.detail
    row = enrollment_row(enrollment_id)
    assert (row.status, row.current_step) == ("ACTIVE", 1)
    [skipped] = [e for e in events_of(enrollment_id) if e.event_type == "STEP_SKIPPED"]
    assert skipped.step_index == 0 and "seller_timezone" in skipped.failure_reason
