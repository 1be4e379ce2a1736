"""A message step's own send time (`"at": "10:00"`): the pure rule (`send_times.next_at_time`,
through `planning.step_time`) across DST changes, holidays, windows, quiet hours, uncertain zones
and state laws; its validation; the preview and `status`; and the flow deferring a step to it."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from followups.errors import InvalidInputError, InvalidStateError
from followups.scheduling.planning import Recipient, step_time
from followups.scheduling.send_times import AT_SLACK, SendRules, at_local, holiday_lookup, next_at_time
from followups.sequence_options import SendWindow, SequenceOptions
from followups.steps import load_stored_steps, parse_steps, steps_to_json

NY = "America/New_York"
WORKDAYS = SendWindow(weekdays=["mon", "tue", "wed", "thu", "fri"], start=time(9), end=time(17))
TEN = time(10)
EMAIL = {"type": "EMAIL", "subject": "s", "text": "t"}
SMS = {"type": "SMS", "body": "b"}


def ny(*args: int) -> datetime:
    return datetime(*args, tzinfo=ZoneInfo(NY))


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


# -- the rule -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("due", "expected", "reason"),
    [
        (ny(2027, 6, 9, 7, 0), ny(2027, 6, 9, 10, 0), "send time"),  # before it: today's 10:00
        (ny(2027, 6, 9, 10, 0), ny(2027, 6, 9, 10, 0), None),  # at it: at once
        (ny(2027, 6, 9, 10, 0, 3), ny(2027, 6, 9, 10, 0, 3), None),  # a run 3 s late: at once
        (ny(2027, 6, 9, 10, 14, 59), ny(2027, 6, 9, 10, 14, 59), None),  # within the slack
        (ny(2027, 6, 9, 10, 15), ny(2027, 6, 10, 10, 0), "send time"),  # past it: tomorrow's
        (ny(2027, 6, 9, 16, 0), ny(2027, 6, 10, 10, 0), "send time"),
    ],
)
def test_a_step_goes_at_its_send_time(due, expected, reason):
    assert AT_SLACK == timedelta(minutes=15)
    result, detail = next_at_time(due.astimezone(UTC), TEN, SendRules(NY, window=WORKDAYS))
    assert result.at == expected and result.reason == reason
    if reason:
        assert detail == f"its send time 10:00 ({NY}); deferred until {expected.isoformat()} ({NY})"


def test_the_slack_runs_over_midnight_and_only_while_the_rules_allow():
    late = ny(2027, 6, 10, 0, 5)
    assert next_at_time(late, time(23, 55), SendRules(NY))[0].at == late
    # 10:05 is after a window that closed at 10:01: the next day's 10:00.
    closes = SendWindow(weekdays=["wed", "thu"], start=time(9), end=time(10, 1))
    assert next_at_time(ny(2027, 6, 9, 10, 5), TEN, SendRules(NY, window=closes))[0].at == ny(2027, 6, 10, 10, 0)


@pytest.mark.parametrize(
    ("day", "utc_hour"),
    # 10:00 New York on each side of the 2027 US changes: the same local time, another UTC hour.
    [(date(2027, 3, 13), 15), (date(2027, 3, 14), 14), (date(2027, 3, 15), 14),
     (date(2027, 11, 6), 14), (date(2027, 11, 7), 15), (date(2027, 11, 8), 15)],
)
def test_the_send_time_keeps_its_local_hour_across_dst(day, utc_hour):
    due = datetime.combine(day, time(0, 30), tzinfo=ZoneInfo(NY))
    result, _ = next_at_time(due, TEN, SendRules(NY))
    assert result.at == datetime.combine(day, TEN, tzinfo=ZoneInfo(NY))
    assert result.at.astimezone(UTC) == datetime.combine(day, time(utc_hour), tzinfo=UTC)


def test_a_send_time_the_dst_change_skips_or_repeats():
    # Spring forward (2027-03-14 02:00 EST -> 03:00 EDT): 02:00 and 02:30 never show; the next
    # valid moment is the jump itself, 03:00 EDT (07:00 UTC).
    for skipped in (time(2), time(2, 30), time(2, 59)):
        assert at_local(date(2027, 3, 14), skipped, NY) == ny(2027, 3, 14, 3, 0)
        result, _ = next_at_time(utc(2027, 3, 14, 5), skipped, SendRules(NY))
        assert result.at.astimezone(UTC) == utc(2027, 3, 14, 7) and result.reason == "send time"
    # Fall back (2027-11-07 02:00 EDT -> 01:00 EST): 01:30 comes twice; the first one counts.
    assert at_local(date(2027, 11, 7), time(1, 30), NY).astimezone(UTC) == utc(2027, 11, 7, 5, 30)
    # Due between the two (01:10 EST, after the first 01:30 and its slack): the next day's, not
    # the repeated one.
    result, _ = next_at_time(utc(2027, 11, 7, 6, 10), time(1, 30), SendRules(NY))
    assert result.at.astimezone(UTC) == utc(2027, 11, 8, 6, 30)
    # The re-run the deferral schedules for that moment sends it (it is its own send time).
    assert next_at_time(result.at, time(1, 30), SendRules(NY))[0].reason is None


def test_a_day_the_rules_forbid_is_passed_over_for_the_next_days_send_time():
    rules = SendRules(NY, window=WORKDAYS, holidays=holiday_lookup("US"))
    # Wednesday 2027-11-24 11:00, after its 10:00; Thursday is Thanksgiving: Friday 10:00.
    result, detail = next_at_time(ny(2027, 11, 24, 11, 0), TEN, rules)
    assert result.at == ny(2027, 11, 26, 10, 0) and result.reason == "send time"
    assert "not at 10:00 on Thu 2027-11-25: a public holiday (Thanksgiving" in detail
    # Friday after 10:00: the weekend is outside the window, Monday 10:00.
    result, detail = next_at_time(ny(2027, 11, 26, 12, 0), TEN, rules)
    assert result.at == ny(2027, 11, 29, 10, 0) and "not at 10:00 on Sat 2027-11-27: outside the send window" in detail


def test_a_send_time_no_day_allows_is_an_error_not_a_loop():
    # 22:00 is inside SMS quiet hours every day: refused when the sequence is saved, and if the
    # quiet hours only came later, the bounded search gives up and the flow skips the step.
    with pytest.raises(InvalidStateError, match="22:00 in America/New_York"):
        next_at_time(utc(2027, 6, 9), time(22), SendRules(NY, quiet_hours=(21, 8)))


def test_an_sms_to_an_uncertain_zone_reads_its_send_time_on_the_first_candidate():
    # An Alaska number and an owner in Denver: Denver, Adak, Anchorage; Denver is shown first.
    recipient = Recipient("UTC", "+19075550142", owner_timezone="America/Denver")
    due = utc(2027, 1, 12, 12)  # 05:00 Denver
    planned = step_time(parse_steps([{**SMS, "at": "11:00"}]), 0, due, SequenceOptions(), recipient, (21, 8))
    assert planned.timezone == "America/Denver" and planned.reason == "send time"
    assert planned.send_at == datetime(2027, 1, 12, 11, tzinfo=ZoneInfo("America/Denver"))  # 08:00 on Adak
    # 10:00 in Denver is 07:00 on Adak, in its quiet hours every day: no moment at all.
    with pytest.raises(InvalidStateError):
        step_time(parse_steps([{**SMS, "at": "10:00"}]), 0, due, SequenceOptions(), recipient, (21, 8))
    # An email is timed in the owner's zone alone.
    planned = step_time(parse_steps([{**EMAIL, "at": "10:00"}]), 0, due, SequenceOptions(), recipient, (21, 8))
    assert planned.send_at == datetime(2027, 1, 12, 10, tzinfo=ZoneInfo("America/Denver"))


def test_a_state_law_can_pass_a_day_over():
    # A Dallas number: Texas allows texts on Sundays only from 12:00, so Sunday's 10:00 is not
    # allowed; Monday's is.
    recipient = Recipient("UTC", "+12145550142")
    due = datetime(2027, 11, 6, 12, tzinfo=ZoneInfo("America/Chicago"))  # Saturday, after 10:00
    planned = step_time(parse_steps([{**SMS, "at": "10:00"}]), 0, due, SequenceOptions(), recipient, (21, 8))
    assert planned.send_at == datetime(2027, 11, 8, 10, tzinfo=ZoneInfo("America/Chicago"))
    assert planned.reason == "send time" and "Sun 2027-11-07: Texas" in planned.detail
    # Without the laws, Sunday 10:00.
    planned = step_time(parse_steps([{**SMS, "at": "10:00"}]), 0, due, SequenceOptions(), recipient, (21, 8), state_laws=False)
    assert planned.send_at == datetime(2027, 11, 7, 10, tzinfo=ZoneInfo("America/Chicago"))


def test_a_step_without_a_send_time_is_timed_as_before():
    planned = step_time(parse_steps([EMAIL]), 0, ny(2027, 6, 9, 7, 0), SequenceOptions(send_window=WORKDAYS), Recipient(NY), None)
    assert planned.send_at == ny(2027, 6, 9, 9, 0) and planned.reason == "window"


# -- validation ---------------------------------------------------------------------------------


@pytest.mark.parametrize("value", ["25:00", "24:00", "10:60", "9am", "9:00", "10:00:00", "10.00", " 10:00", "10:00\n", "", 10, 10.5, True, ["10:00"]])
def test_a_send_time_must_be_hh_mm(value: Any):
    with pytest.raises(InvalidInputError) as info:
        parse_steps([EMAIL, {"type": "WAIT", "days": 1}, {**SMS, "at": value}])
    assert info.value.field == "steps.2.at" and "HH:MM" in info.value.message


def test_an_unquoted_yaml_time_is_explained():
    import yaml

    raw = yaml.safe_load("steps:\n  - {type: EMAIL, subject: s, text: t, at: 10:00}\n")["steps"]
    assert raw[0]["at"] == 600  # YAML 1.1: base 60
    with pytest.raises(InvalidInputError) as info:
        parse_steps(raw)
    assert info.value.field == "steps.0.at" and 'quote it in YAML: at: "10:00"' in info.value.message


def test_a_wait_has_no_send_time():
    with pytest.raises(InvalidInputError) as info:
        parse_steps([EMAIL, {"type": "wait", "days": 1, "at": "10:00"}, SMS])
    assert info.value.field == "steps.1.at" and "message step" in info.value.message


def test_the_send_time_is_stored_with_the_steps():
    steps = parse_steps([{**EMAIL, "at": "00:00"}, {"type": "WAIT", "days": 1}, {**SMS, "at": "23:59"}])
    stored = steps_to_json(steps)
    assert stored[0]["at"] == "00:00" and stored[2]["at"] == "23:59"
    assert load_stored_steps(stored) == steps
    # Steps without it are stored as before, and steps stored before it existed load.
    assert "at" not in steps_to_json(parse_steps([EMAIL]))[0]
    assert load_stored_steps([{"type": "SMS", "body": "b"}])[0].at is None


def test_a_send_time_no_day_could_allow_is_refused_when_saved(database_url):
    from followups.db.session import session_scope
    from followups.sequences import create_sequence, update_sequence
    from support import env_settings, new_owner, unique

    owner = new_owner()
    window = {"send_window": {"weekdays": ["mon", "tue", "wed", "thu", "fri"], "start": "09:00", "end": "17:00"}}
    steps = [EMAIL, {"type": "WAIT", "days": 1}, {**SMS, "at": "17:00"}]
    with session_scope() as session, pytest.raises(InvalidInputError) as info:
        create_sequence(session, owner, name=unique("s"), steps=steps, options=window)
    assert info.value.field == "steps.2.at" and "outside the send window 09:00–17:00" in info.value.message
    with env_settings({"FOLLOWUPS_QUIET_HOURS_ENABLED": "true"}):
        with session_scope() as session, pytest.raises(InvalidInputError) as info:
            create_sequence(session, owner, name=unique("s"), steps=[{**SMS, "at": "07:59"}])
        assert info.value.field == "steps.0.at" and "quiet hours (21:00–08:00)" in info.value.message
        with session_scope() as session:  # an email is not bound by the SMS quiet hours
            sequence = create_sequence(session, owner, name=unique("s"), steps=[{**EMAIL, "at": "22:00"}, {"type": "WAIT", "days": 1}, {**SMS, "at": "08:00"}])
    # A window that would leave the send time out is refused as well.
    with session_scope() as session, pytest.raises(InvalidInputError) as info:
        update_sequence(session, owner, sequence.id, options=window)
    assert info.value.field == "steps.0.at"


# -- preview and status -------------------------------------------------------------------------

STEPS = [
    {**EMAIL, "subject": "Offer", "at": "10:00"},
    {"type": "WAIT", "days": 1},
    {**SMS, "at": "10:00"},
]
OPTIONS = {"send_window": {"weekdays": ["mon", "tue", "wed", "thu", "fri"], "start": "09:00", "end": "17:00"}, "skip_holidays": True}
DEAL = {
    "external_id": "D-AT", "property_address": "12 Elm St", "seller_name": "Pat Lee",
    "seller_email": "pat@example.com", "seller_phone": "+12125550142", "seller_timezone": NY,
}


def test_the_preview_shows_the_send_times(cli, database_url, tmp_path):
    from followups.db.session import session_scope
    from followups.preview import preview_sequence
    from followups.sequences import create_sequence
    from followups.users import ensure_user
    from support import unique

    with session_scope() as session:
        name = unique("user")
        owner = ensure_user(session, name)
        sequence_id = create_sequence(session, owner, name=unique("s"), steps=STEPS, options=OPTIONS).id
    # Wednesday before Thanksgiving 2027, 11:00 New York: past today's 10:00, and Thursday is
    # the holiday: Friday 10:00; a day later is Saturday, outside the window: Monday 10:00.
    with session_scope(read_only=True) as session:
        plan = preview_sequence(session, owner, sequence_id, DEAL, "2027-11-24T11:00:00-05:00")
    email, wait, sms = plan["steps"]
    assert email["at"] == "10:00" and email["send_at"] == "2027-11-26T10:00:00-05:00"
    assert email["deferred_by"] == "send time" and "Thanksgiving" in email["detail"]
    assert wait["due_at"] == "2027-11-27T10:00:00-05:00" and "at" not in wait
    assert sms["at"] == "10:00" and sms["send_at"] == "2027-11-29T10:00:00-05:00" and sms["deferred_by"] == "send time"
    # Across the US spring-forward (Sunday 2027-03-14): Friday 10:00 EST, then Monday 10:00 EDT.
    with session_scope(read_only=True) as session:
        plan = preview_sequence(session, owner, sequence_id, DEAL, "2027-03-12T06:00:00-05:00")
    assert [row["send_at"] for row in plan["steps"] if row["type"] != "WAIT"] == [
        "2027-03-12T10:00:00-05:00", "2027-03-15T10:00:00-04:00",
    ]
    deal_file = tmp_path / "deal.json"
    deal_file.write_text(json.dumps(DEAL))
    code, out, err = cli("preview", str(sequence_id), "--deal", str(deal_file), "--start", "2027-11-24T11:00:00-05:00", "--owner", name)
    assert code == 0, err
    assert "EMAIL at 10:00" in out and "its send time 10:00" in out


def test_status_shows_a_step_pending_for_its_send_time(cli, database_url):
    from followups.db.session import session_scope
    from followups.lifecycle.plan import load_plan
    from followups.lifecycle.timeline import timeline
    from followups.sequences import create_sequence
    from support import new_enrollment, new_owner, unique

    at = (datetime.now(UTC) + timedelta(hours=2)).astimezone(ZoneInfo(NY)).replace(second=0, microsecond=0)
    owner = new_owner()
    with session_scope() as session:
        sequence_id = create_sequence(session, owner, name=unique("s"), steps=[{**EMAIL, "at": f"{at:%H:%M}"}]).id
    enrollment_id = new_enrollment(owner, sequence_id, seller_timezone=NY)
    with session_scope(read_only=True) as session:
        [step] = timeline(session, load_plan(session, enrollment_id))
    assert step.at == at and step.deferred_by == "send time"
    code, out, err = cli("status", str(enrollment_id))
    assert code == 0, err
    assert "pending (send time)" in out


# -- the flow -----------------------------------------------------------------------------------


def test_the_flow_defers_a_step_to_its_send_time_and_sends_it_then(prefect_api, fake_providers, monkeypatch):
    """As `test_send_windows` does for a window: the step is deferred to a scheduled run for its
    send time, which the preview gave; that run, starting a few seconds late, sends it."""
    from prefect.client.orchestration import get_client
    from prefect.flow_engine import run_flow
    from prefect.states import Pending

    from followups.db.session import session_scope
    from followups.deployments.definitions import sequence_deployment
    from followups.execution import deferral
    from followups.flows.follow_up_sequence import follow_up_sequence
    from followups.preview import preview_sequence
    from support import enrollment_row, env_settings, event_types, events_of, new_enrollment, new_owner, new_sequence

    sequence_deployment().apply()
    now = datetime.now(UTC)
    chicago = ZoneInfo("America/Chicago")
    # Two hours from now in Chicago: the next run is in the future, where no runner takes it.
    at = (now + timedelta(hours=2)).astimezone(chicago).replace(second=0, microsecond=0)
    owner = new_owner()
    sequence_id = new_sequence(owner, [{**EMAIL, "at": f"{at:%H:%M}"}])
    enrollment_id = new_enrollment(owner, sequence_id, seller_timezone="America/Chicago", seller_phone=None)
    with env_settings({"FOLLOWUPS_CAPS_ENABLED": "false"}):
        monkeypatch.setattr(deferral, "clock", lambda: now)
        assert follow_up_sequence(enrollment_id) == "WAITING"
        deferred = events_of(enrollment_id)[-1]
        assert deferred.event_type == "STEP_DEFERRED" and "EMAIL_SENT" not in event_types(enrollment_id)
        until = datetime.fromisoformat(deferred.content["until"])
        assert deferred.content["reason"] == "send time" and until == at
        assert f"its send time {at:%H:%M} (America/Chicago)" in deferred.content["detail"]
        deal = {**DEAL, "seller_timezone": "America/Chicago", "seller_phone": None}
        with session_scope(read_only=True) as session:
            planned = preview_sequence(session, owner, sequence_id, deal, now.isoformat())["steps"][0]
        assert datetime.fromisoformat(planned["send_at"]) == until  # what the preview promised
        row = enrollment_row(enrollment_id)
        assert row.next_due_at == until and row.current_step == 0
        with get_client(sync_client=True) as client:
            run = client.read_flow_run(row.prefect_flow_run_id)
            assert run.state.is_scheduled() and run.state.state_details.scheduled_time == until
            # The executor starts it 3 s late: still its send time, so it is sent, not put off a day.
            monkeypatch.setattr(deferral, "clock", lambda: until + timedelta(seconds=3))
            client.set_flow_run_state(run.id, Pending(message="claimed by a worker"), force=True)
            run_flow(follow_up_sequence, flow_run=client.read_flow_run(run.id), return_type="result")
    assert "EMAIL_SENT" in event_types(enrollment_id)
    assert enrollment_row(enrollment_id).status == "COMPLETED"
