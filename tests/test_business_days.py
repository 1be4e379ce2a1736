"""Business-day WAITs: weekends (and, when the sequence skips them, holidays) do not count; the
wait ends at the same local time in the recipient's zone."""

from __future__ import annotations

from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import pytest

from followups.errors import InvalidInputError
from followups.scheduling.planning import Recipient, plan_times, wait_due
from followups.scheduling.send_times import add_business_days, holiday_lookup
from followups.sequence_options import SequenceOptions
from followups.steps import WaitStep, parse_steps, steps_to_json

NY = ZoneInfo("America/New_York")


@pytest.mark.parametrize(
    ("start", "count", "expected", "holidays"),
    [
        ((2026, 6, 10, 10), 3, (2026, 6, 15, 10), False),  # Wed + 3 -> Mon
        ((2026, 6, 12, 10), 1, (2026, 6, 15, 10), False),  # Fri + 1 -> Mon
        ((2026, 6, 13, 10), 1, (2026, 6, 15, 10), False),  # Sat + 1 -> Mon
        ((2026, 11, 25, 10), 1, (2026, 11, 26, 10), False),  # Thanksgiving counts when not skipped
        ((2026, 11, 25, 10), 1, (2026, 11, 27, 10), True),  # ... and not when skipped
        ((2026, 12, 23, 10), 3, (2026, 12, 29, 10), True),  # over Christmas and a weekend
        ((2026, 3, 6, 10), 1, (2026, 3, 9, 10), False),  # over the spring-forward weekend: same local hour
        ((2026, 10, 30, 10), 1, (2026, 11, 2, 10), False),  # over the fall-back weekend
    ],
)
def test_add_business_days(start, count, expected, holidays):
    lookup = holiday_lookup("US") if holidays else None
    result = add_business_days(datetime(*start, tzinfo=NY).astimezone(UTC), count, "America/New_York", lookup)
    assert result == datetime(*expected, tzinfo=NY)


def test_the_local_hour_is_kept_across_dst_in_utc_terms():
    before = add_business_days(datetime(2026, 3, 6, 15, tzinfo=UTC), 1, "America/New_York")  # 10:00 EST
    assert before.astimezone(UTC) == datetime(2026, 3, 9, 14, tzinfo=UTC)  # 10:00 EDT
    hawaii = add_business_days(datetime(2026, 3, 6, 20, tzinfo=UTC), 1, "Pacific/Honolulu")
    assert hawaii.astimezone(UTC) == datetime(2026, 3, 9, 20, tzinfo=UTC)  # no DST there
    la = add_business_days(datetime(2026, 10, 30, 17, tzinfo=UTC), 1, "America/Los_Angeles")  # 10:00 PDT
    assert la.astimezone(UTC) == datetime(2026, 11, 2, 18, tzinfo=UTC)  # 10:00 PST


def test_wait_steps_take_exactly_one_form():
    steps = parse_steps([{"type": "WAIT", "business_days": 3}, {"type": "EMAIL", "subject": "s", "text": "t"}])
    assert steps[0].business_days == 3
    assert steps_to_json(steps)[0]["business_days"] == 3
    calendar = parse_steps([{"type": "WAIT", "days": 2}, {"type": "SMS", "body": "x"}])
    assert "business_days" not in steps_to_json(calendar)[0]  # stored as before
    for bad, field in [
        ({"type": "WAIT", "business_days": 3, "days": 1}, "steps.0.business_days"),
        ({"type": "WAIT", "business_days": 0}, "steps.0.business_days"),
        ({"type": "WAIT", "business_days": 1.5}, "steps.0.business_days"),
        ({"type": "WAIT", "business_days": 1000}, "steps.0.business_days"),
        ({"type": "WAIT"}, "steps.0"),
    ]:
        with pytest.raises(InvalidInputError) as raised:
            parse_steps([bad, {"type": "SMS", "body": "x"}])
        assert raised.value.field == field


def test_wait_due_uses_the_sequence_holidays():
    step = WaitStep(business_days=1)
    start = datetime(2026, 11, 25, 15, tzinfo=UTC)
    assert wait_due(start, step, SequenceOptions(), "America/New_York").day == 26
    assert wait_due(start, step, SequenceOptions(skip_holidays=True), "America/New_York").day == 27
    assert wait_due(start, WaitStep(days=1), SequenceOptions(skip_holidays=True), "America/New_York") == datetime(2026, 11, 26, 15, tzinfo=UTC)


def test_a_business_day_wait_counts_on_the_next_message_recipients_clock():
    steps = parse_steps([
        {"type": "EMAIL", "subject": "s", "text": "t"},
        {"type": "WAIT", "business_days": 2},
        {"type": "SMS", "body": "x"},
    ])
    # Friday 23:30 UTC is still Friday afternoon in Honolulu (by the phone): +2 business days = Tuesday.
    planned = plan_times(steps, datetime(2026, 6, 12, 23, 30, tzinfo=UTC), SequenceOptions(), Recipient("UTC", "+18085550142"), (21, 8))
    assert planned[1].timezone == "Pacific/Honolulu"
    assert planned[1].due_at == datetime(2026, 6, 16, 13, 30, tzinfo=ZoneInfo("Pacific/Honolulu"))
    assert planned[2].send_at == planned[1].due_at and planned[2].reason is None


def test_a_business_day_wait_in_a_flow_run_writes_its_due_time(prefect_api, fake_providers):
    from prefect.client.orchestration import get_client
    from prefect.states import Cancelled

    from followups.deployments.definitions import sequence_deployment
    from followups.flows.follow_up_sequence import follow_up_sequence
    from support import enrollment_row, events_of, new_enrollment, new_owner, new_sequence

    sequence_deployment().apply()
    owner = new_owner()
    steps = [{"type": "EMAIL", "subject": "s", "text": "t"}, {"type": "WAIT", "business_days": 2}, {"type": "EMAIL", "subject": "s2", "text": "t"}]
    enrollment_id = new_enrollment(owner, new_sequence(owner, steps), seller_timezone="America/New_York")
    assert follow_up_sequence(enrollment_id) == "WAITING"
    started = [e for e in events_of(enrollment_id) if e.event_type == "WAIT_STARTED"][0]
    due = datetime.fromisoformat(started.content["due_at"])
    row = enrollment_row(enrollment_id)
    assert row.next_due_at == due and row.current_step == 1
    local_start, local_due = started.occurred_at.astimezone(NY), due.astimezone(NY)
    assert local_due.weekday() < 5
    same_day_time = datetime.combine(local_due.date(), local_start.time(), tzinfo=NY)
    assert abs((local_due - same_day_time).total_seconds()) < 1  # the event's clock vs the flow's
    assert 2 <= (local_due.date() - local_start.date()).days <= 4
    with get_client(sync_client=True) as client:
        client.set_flow_run_state(row.prefect_flow_run_id, Cancelled(), force=True)
