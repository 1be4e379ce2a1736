"""TCPA quiet hours: SMS steps wait for 08:00 in the seller's time zone."""

from __future__ import annotations

from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import pytest
from prefect.client.orchestration import get_client
from prefect.states import Cancelled

from followups.flows.follow_up_sequence import follow_up_sequence
from followups.scheduling.send_times import SendRules, next_send_time
from followups.settings import reset_settings
from support import enrollment_row, event_types, events_of, new_enrollment, new_owner, new_sequence


@pytest.mark.parametrize(
    ("utc", "zone", "expected_local"),
    [
        ("2026-06-01T15:00:00", "America/Chicago", None),  # 10:00 local: fine
        ("2026-06-02T03:30:00", "America/Chicago", "2026-06-02T08:00:00"),  # 22:30 local → next morning
        ("2026-06-01T11:00:00", "America/Chicago", "2026-06-01T08:00:00"),  # 06:00 local → same morning
        ("2026-03-08T07:30:00", "America/New_York", "2026-03-08T08:00:00"),  # DST day, 03:30 local
        ("2026-06-01T20:59:00", "UTC", None),
        ("2026-06-01T21:00:00", "UTC", "2026-06-02T08:00:00"),
    ],
)
def test_the_next_time_outside_quiet_hours(utc, zone, expected_local):
    now = datetime.fromisoformat(utc).replace(tzinfo=UTC)
    result = next_send_time(now, SendRules(timezone=zone, quiet_hours=(21, 8))).at
    if expected_local is None:
        assert result == now
    else:
        assert result == datetime.fromisoformat(expected_local).replace(tzinfo=ZoneInfo(zone))


def test_an_sms_due_in_quiet_hours_is_deferred_to_a_scheduled_run(prefect_api, fake_providers, monkeypatch):
    from followups.deployments.definitions import sequence_deployment

    sequence_deployment().apply()
    hour = datetime.now(UTC).hour
    monkeypatch.setenv("FOLLOWUPS_QUIET_HOURS_ENABLED", "true")
    monkeypatch.setenv("FOLLOWUPS_QUIET_HOURS_START", str(hour))
    monkeypatch.setenv("FOLLOWUPS_QUIET_HOURS_END", str((hour + 2) % 24))
    reset_settings()
    try:
        owner = new_owner()
        steps = [{"type": "EMAIL", "subject": "s", "text": "t"}, {"type": "SMS", "body": "Hi"}]
        # On UTC all year; "UTC" itself would mean no zone, and the +1 number every NANP zone.
        enrollment_id = new_enrollment(owner, new_sequence(owner, steps), seller_timezone="Atlantic/Reykjavik")
        assert follow_up_sequence(enrollment_id) == "WAITING"
    finally:
        monkeypatch.undo()
        reset_settings()
    assert event_types(enrollment_id)[-1] == "STEP_DEFERRED"  # the email went, the SMS waits
    deferred = events_of(enrollment_id)[-1]
    until = datetime.fromisoformat(deferred.content["until"])
    assert until.hour == (hour + 2) % 24 and until > datetime.now(UTC)
    row = enrollment_row(enrollment_id)
    assert row.next_due_at == until
    with get_client(sync_client=True) as client:
        run = client.read_flow_run(row.prefect_flow_run_id)
        assert run.state.is_scheduled() and run.state.state_details.scheduled_time == until
        client.set_flow_run_state(run.id, Cancelled(), force=True)
