"""Send windows, quiet hours and holidays: the pure "next allowed send time" rules, the
recipient's zone, and the flow deferring a step outside its window to a scheduled run."""

from __future__ import annotations

from datetime import UTC, datetime, time, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from followups.scheduling.planning import Recipient, step_rules
from followups.scheduling.send_times import SendRules, explain, holiday_lookup, next_send_time
from followups.scheduling.zones import recipient_zone, zones_of_phone
from followups.sequence_options import WEEKDAYS, SendWindow, SequenceOptions

WORKDAYS = SendWindow(weekdays=["mon", "tue", "wed", "thu", "fri"], start=time(9), end=time(17))
QUIET = (21, 8)


def local(zone: str, *args: int) -> datetime:
    return datetime(*args, tzinfo=ZoneInfo(zone))


def sms_rules(zone: str, window: SendWindow | None = None) -> SendRules:
    return SendRules(zone, window=window, quiet_hours=QUIET)


@pytest.mark.parametrize("zone", ["America/New_York", "America/Los_Angeles", "Pacific/Honolulu"])
def test_sms_at_2130_local_goes_out_at_0800_next_day(zone):
    due = local(zone, 2026, 6, 10, 21, 30).astimezone(UTC)
    result = next_send_time(due, sms_rules(zone))
    assert result.at == local(zone, 2026, 6, 11, 8, 0) and result.reason == "quiet hours"


@pytest.mark.parametrize(
    ("zone", "due_local", "expected_local", "expected_utc"),
    [
        # Spring forward (2026-03-08 in the US): 21:30 EST the evening before -> 08:00 EDT.
        ("America/New_York", (2026, 3, 7, 21, 30), (2026, 3, 8, 8, 0), "2026-03-08T12:00:00+00:00"),
        ("America/Los_Angeles", (2026, 3, 7, 21, 30), (2026, 3, 8, 8, 0), "2026-03-08T15:00:00+00:00"),
        # The day before the change, same local hour, one hour later in UTC.
        ("America/New_York", (2026, 3, 6, 21, 30), (2026, 3, 7, 8, 0), "2026-03-07T13:00:00+00:00"),
        # Fall back (2026-11-01): 08:00 EST is 13:00 UTC, the day before it was 12:00 UTC.
        ("America/New_York", (2026, 10, 31, 22, 0), (2026, 11, 1, 8, 0), "2026-11-01T13:00:00+00:00"),
        ("America/Los_Angeles", (2026, 10, 31, 23, 0), (2026, 11, 1, 8, 0), "2026-11-01T16:00:00+00:00"),
        ("America/Los_Angeles", (2026, 10, 30, 23, 0), (2026, 10, 31, 8, 0), "2026-10-31T15:00:00+00:00"),
        # Honolulu has no DST: 08:00 HST is 18:00 UTC on both sides of the mainland changes.
        ("Pacific/Honolulu", (2026, 3, 7, 21, 30), (2026, 3, 8, 8, 0), "2026-03-08T18:00:00+00:00"),
        ("Pacific/Honolulu", (2026, 10, 31, 22, 0), (2026, 11, 1, 8, 0), "2026-11-01T18:00:00+00:00"),
    ],
)
def test_quiet_hours_across_dst(zone, due_local, expected_local, expected_utc):
    result = next_send_time(local(zone, *due_local).astimezone(UTC), sms_rules(zone))
    assert result.at == local(zone, *expected_local)
    assert result.at.astimezone(UTC).isoformat() == expected_utc


@pytest.mark.parametrize("zone", ["America/New_York", "America/Los_Angeles", "Pacific/Honolulu"])
def test_a_weekday_window_skips_the_weekend_across_the_dst_change(zone):
    # Friday 2026-03-06 17:30 local: closed; Monday 2026-03-09 09:00 local (after spring forward).
    result = next_send_time(local(zone, 2026, 3, 6, 17, 30).astimezone(UTC), SendRules(zone, window=WORKDAYS))
    assert result.at == local(zone, 2026, 3, 9, 9, 0) and result.reason == "window"
    # Saturday morning, fall-back weekend: Monday 09:00.
    result = next_send_time(local(zone, 2026, 10, 31, 10, 0).astimezone(UTC), SendRules(zone, window=WORKDAYS))
    assert result.at == local(zone, 2026, 11, 2, 9, 0)


def test_inside_the_window_is_sent_as_due():
    due = local("America/New_York", 2026, 6, 10, 12, 34, 56).astimezone(UTC)
    result = next_send_time(due, SendRules("America/New_York", window=WORKDAYS))
    assert result.at == due and not result.deferred


def test_a_holiday_is_skipped_only_when_asked():
    zone = "America/New_York"
    thanksgiving = local(zone, 2026, 11, 26, 10, 0).astimezone(UTC)
    assert not next_send_time(thanksgiving, SendRules(zone, window=WORKDAYS)).deferred
    result, detail = explain(thanksgiving, SendRules(zone, window=WORKDAYS, holidays=holiday_lookup("US")))
    assert result.at == local(zone, 2026, 11, 27, 9, 0) and result.reason == "holiday"
    assert "Thanksgiving" in detail and "2026-11-27T09:00:00-05:00" in detail
    # Independence Day 2026 is a Saturday, observed Friday 3 July: Thursday evening -> Monday 6 July.
    result = next_send_time(local(zone, 2026, 7, 2, 18, 0).astimezone(UTC), SendRules(zone, window=WORKDAYS, holidays=holiday_lookup("US")))
    assert result.at == local(zone, 2026, 7, 6, 9, 0) and result.reason == "window"


def test_window_and_quiet_hours_together_take_the_stricter():
    window = SendWindow(weekdays=list(WEEKDAYS), start=time(6), end=time(22))
    result = next_send_time(local("UTC", 2026, 6, 10, 6, 30).astimezone(UTC), sms_rules("UTC", window))
    assert result.at == local("UTC", 2026, 6, 10, 8, 0) and result.reason == "quiet hours"
    result = next_send_time(local("UTC", 2026, 6, 10, 21, 15).astimezone(UTC), sms_rules("UTC", window))
    assert result.at == local("UTC", 2026, 6, 11, 8, 0)


def test_a_window_inside_quiet_hours_is_refused_not_looped():
    from followups.errors import InvalidStateError

    window = SendWindow(weekdays=["mon"], start=time(22), end=time(23))
    with pytest.raises(InvalidStateError):
        next_send_time(datetime(2026, 6, 10, tzinfo=UTC), sms_rules("UTC", window))


windows = st.builds(
    lambda days, start, length: SendWindow(
        weekdays=days, start=time(start // 60, start % 60), end=time(min(23 * 60 + 59, start + length) // 60, min(23 * 60 + 59, start + length) % 60)
    ),
    st.lists(st.sampled_from(WEEKDAYS), min_size=1, max_size=7, unique=True),
    st.integers(0, 22 * 60),
    st.integers(30, 12 * 60),
)


@settings(max_examples=300, deadline=None)
@given(
    due=st.datetimes(min_value=datetime(2025, 1, 1), max_value=datetime(2028, 12, 31), timezones=st.just(UTC)),
    zone=st.sampled_from(["America/New_York", "America/Los_Angeles", "Pacific/Honolulu", "Europe/London", "Australia/Lord_Howe", "UTC"]),
    window=windows,
    sms=st.booleans(),
    skip_holidays=st.booleans(),
)
def test_property_the_send_time_is_inside_the_window_and_never_early(due, zone, window, sms, skip_holidays):
    quiet = QUIET if sms else None
    if sms and (window.end <= time(8) or window.start >= time(21)):
        return  # a window entirely inside quiet hours never opens (refused, tested above)
    holidays = holiday_lookup("US") if skip_holidays else None
    result = next_send_time(due, SendRules(zone, window=window, quiet_hours=quiet, holidays=holidays))
    at = result.at.astimezone(ZoneInfo(zone))
    assert result.at >= due
    assert WEEKDAYS[at.weekday()] in window.weekdays
    assert window.start <= at.time().replace(tzinfo=None) < window.end
    if quiet:
        assert time(8) <= at.time().replace(tzinfo=None) < time(21)
    if holidays:
        assert holidays(at.date()) is None
    if not result.deferred:
        assert result.at == due
    else:  # the earliest: a minute before it would not have been allowed, or it is due itself
        before = result.at - timedelta(minutes=1)
        assert before < due or next_send_time(before, SendRules(zone, window=window, quiet_hours=quiet, holidays=holidays)).at == result.at


def test_the_recipient_zone():
    assert recipient_zone("email", "America/Chicago", "+12125550142") == ("America/Chicago", "deal")
    assert recipient_zone("sms", "UTC", "+12125550142") == ("America/New_York", "phone")
    assert recipient_zone("sms", "UTC", "+18085550142") == ("Pacific/Honolulu", "phone")
    assert recipient_zone("email", "UTC", "+18085550142") == ("UTC", "default")  # phones place SMS only
    # Toll-free: every NANP zone and the owner's are candidates, the owner's shown first.
    assert recipient_zone("sms", "UTC", "+18005550142", owner_timezone="America/Denver") == ("America/Denver", "phone+owner")
    assert len(zones_of_phone("+18005550142")) != 1  # toll-free: no single zone, no guess
    assert zones_of_phone("not a phone") == ()


def test_step_rules_add_quiet_hours_to_sms_only():
    options = SequenceOptions(send_window=WORKDAYS, skip_holidays=True)
    recipient = Recipient("UTC", "+13105550142")
    sms = step_rules("sms", options, recipient, QUIET)
    email = step_rules("email", options, recipient, QUIET)
    assert sms.timezone == "America/Los_Angeles" and sms.quiet_hours == QUIET and sms.holidays is not None
    assert email.timezone == "UTC" and email.quiet_hours is None and email.window == WORKDAYS


# -- the flow -------------------------------------------------------------------------------


def test_an_email_outside_its_window_is_deferred_to_a_scheduled_run(prefect_api, fake_providers):
    from prefect.client.orchestration import get_client
    from prefect.states import Cancelled

    from followups.deployments.definitions import sequence_deployment
    from followups.flows.follow_up_sequence import follow_up_sequence
    from support import enrollment_row, event_types, events_of, new_enrollment, new_owner, new_sequence

    sequence_deployment().apply()
    now = datetime.now(UTC)
    # A window that is closed right now: today's weekday is left out.
    open_days = [day for index, day in enumerate(WEEKDAYS) if index != now.weekday()]
    owner = new_owner()
    steps = [{"type": "EMAIL", "subject": "s", "text": "t"}, {"type": "SMS", "body": "Hi"}]
    sequence_id = new_sequence(
        owner, steps, options={"send_window": {"weekdays": open_days, "start": "00:00", "end": "23:59"}}
    )
    enrollment_id = new_enrollment(owner, sequence_id, seller_timezone="UTC", seller_phone="+15555550100")
    assert follow_up_sequence(enrollment_id) == "WAITING"
    assert event_types(enrollment_id)[-1] == "STEP_DEFERRED"  # nothing was sent
    assert "EMAIL_SENT" not in event_types(enrollment_id)
    deferred = events_of(enrollment_id)[-1]
    until = datetime.fromisoformat(deferred.content["until"])
    assert deferred.content["reason"] == "window" and "deferred until" in deferred.content["detail"]
    assert until == datetime.combine(now.date() + timedelta(days=1), time(0), tzinfo=UTC)
    row = enrollment_row(enrollment_id)
    assert row.next_due_at == until and row.current_step == 0
    with get_client(sync_client=True) as client:
        run = client.read_flow_run(row.prefect_flow_run_id)
        assert run.state.is_scheduled() and run.state.state_details.scheduled_time == until
        client.set_flow_run_state(run.id, Cancelled(), force=True)


def test_a_run_that_starts_a_moment_before_its_window_waits_instead_of_deferring(database_url, monkeypatch):
    """Prefect may start a deferred run up to half a second early: deferring again to the same
    instant would hand the step to this very run and leave nothing holding it."""
    from followups.db.session import session_scope
    from followups.execution import deferral
    from followups.lifecycle.plan import load_plan
    from followups.settings import reset_settings
    from support import event_types, new_enrollment, new_owner, new_sequence

    monkeypatch.setenv("FOLLOWUPS_CAPS_ENABLED", "false")
    reset_settings()
    opens = datetime(2026, 11, 30, 9, 0, tzinfo=UTC)  # a Monday
    owner = new_owner()
    window = {"send_window": {"weekdays": ["mon"], "start": "09:00", "end": "17:00"}}
    enrollment_id = new_enrollment(owner, new_sequence(owner, [{"type": "EMAIL", "subject": "s", "text": "t"}], options=window))
    moments = iter([opens - timedelta(seconds=0.4), opens + timedelta(milliseconds=5)])
    slept: list[float] = []
    monkeypatch.setattr(deferral, "clock", lambda: next(moments))
    monkeypatch.setattr(deferral.time, "sleep", slept.append)
    try:
        with session_scope(read_only=True) as session:
            plan = load_plan(session, enrollment_id)
        assert deferral.hold_if_needed(plan, 0, "email", None) is None
        assert slept == [pytest.approx(0.4)]
        assert "STEP_DEFERRED" not in event_types(enrollment_id)
        # Further off, the step is deferred to a scheduled run as usual (no Prefect here: the
        # write is checked, not the run).
        moments = iter([opens - timedelta(hours=2)])
        monkeypatch.setattr(deferral, "defer", lambda *args: True)
        held = deferral.hold_if_needed(plan, 0, "email", None)
        assert held is not None and held.until == opens and held.reason == "window"
    finally:
        monkeypatch.undo()
        reset_settings()
