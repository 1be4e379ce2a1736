"""The preview promises what the flow does: for random sequences (some message steps with their
own send time `at`), zones, send windows and holidays, started around the 2027 US and EU DST
changes and around holidays, every WAIT's end and every message's due and send time of
`preview_sequence` equals, to the second, what the flow's own step-timing code decides
(`execution.waiting.wait_end` for a WAIT, started with the database's now();
`execution.deferral.hold_if_needed` for a message, re-run at each deferral's time as the
deferred run would be), under a controlled clock.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import HealthCheck, given, reject, settings
from hypothesis import strategies as st

from followups.db.session import session_scope
from followups.deals import upsert_deal
from followups.errors import InvalidInputError, InvalidStateError
from followups.execution import deferral, waiting
from followups.lifecycle.plan import EnrollmentPlan
from followups.preview import preview_sequence
from followups.sequence_options import load_stored_options
from followups.settings import reset_settings
from followups.steps import channel_of, load_stored_steps
from followups.templating import DealView, SellerView
from followups.users import set_sender_identity
from support import env_settings, new_owner, new_sequence

pytestmark = pytest.mark.usefixtures("database_url")

ZONES = ["America/New_York", "America/Chicago", "America/Denver", "America/Phoenix", "America/Los_Angeles",
         "America/Anchorage", "Europe/London", "Europe/Berlin", "Europe/Helsinki"]
# One zone, two zones (Adak/Anchorage), every NANP zone (toll-free), none (not a number's zone).
PHONES = [None, "+12125550142", "+13105550142", "+19075550142", "+17015550142", "+18005550142", "+12145550142"]
# State texting laws: by the property's state, besides the number's (Texas above).
PROPERTY_STATES = [None, None, "FL", "AL", "KY"]
# 2027 DST changes (US: Mar 14, Nov 7; EU: Mar 28, Oct 31) and US/DE holidays nearby.
ANCHORS = [
    datetime(2027, 3, 14, 7, tzinfo=UTC), datetime(2027, 11, 7, 6, tzinfo=UTC),
    datetime(2027, 3, 28, 1, tzinfo=UTC), datetime(2027, 10, 31, 1, tzinfo=UTC),
    datetime(2027, 11, 25, 5, tzinfo=UTC), datetime(2027, 12, 24, 5, tzinfo=UTC),
    datetime(2027, 7, 5, 4, tzinfo=UTC), datetime(2027, 10, 3, 0, tzinfo=UTC),
]

messages = st.sampled_from([{"type": "EMAIL", "subject": "s", "text": "t"}, {"type": "SMS", "body": "b"}])
# Send times (`at`) all day round: the hours the US and EU DST changes skip or repeat included.
AT_TIMES = [f"{hour:02d}:{minute:02d}" for hour in range(24) for minute in (0, 1, 30, 59)]
calendar_waits = st.builds(
    lambda d, h, m, s: {"type": "WAIT", "days": d, "hours": h, "minutes": m, "seconds": s},
    st.integers(0, 6), st.sampled_from([0, 0, 1, 5, 23]), st.sampled_from([0, 0, 30]), st.sampled_from([0, 0, 17]),
).filter(lambda w: w["days"] or w["hours"] or w["minutes"] or w["seconds"])
waits = st.one_of(calendar_waits, st.builds(lambda n: {"type": "WAIT", "business_days": n}, st.integers(1, 3)))


@st.composite
def sequences(draw, window: dict[str, Any] | None = None, quiet: bool = False) -> list[dict[str, Any]]:
    # A send time the window or (SMS) the quiet hours (21:00-08:00, the default) never allow is
    # refused when the sequence is saved: only the others.
    allowed = [at for at in AT_TIMES if window is None or window["start"] <= at < window["end"]]
    texts = [at for at in allowed if not quiet or "08:00" <= at < "21:00"]

    @st.composite
    def timed(draw) -> dict[str, Any]:
        message = draw(messages)
        at = draw(st.one_of(st.none(), st.none(), st.sampled_from((texts if message["type"] == "SMS" else allowed) or [None])))
        return {**message, "at": at} if at else message

    steps = [draw(timed())]
    for _ in range(draw(st.integers(0, 3))):
        steps += [draw(waits), draw(timed())]
    return steps


@st.composite
def option_sets(draw) -> dict[str, Any]:
    options: dict[str, Any] = {"skip_holidays": draw(st.booleans()), "holiday_country": draw(st.sampled_from(["US", "DE"]))}
    if draw(st.booleans()):
        start = draw(st.integers(6, 12))
        options["send_window"] = {
            "weekdays": draw(st.lists(st.sampled_from(["mon", "tue", "wed", "thu", "fri", "sat", "sun"]), min_size=1, unique=True)),
            "start": f"{start:02d}:{draw(st.sampled_from([0, 30])):02d}",
            "end": f"{draw(st.integers(start + 1, 23)):02d}:00",
        }
    return options


@st.composite
def plans(draw) -> tuple[list[dict[str, Any]], dict[str, Any], bool]:
    """Steps, options, and whether the SMS quiet hours and state texting laws are on."""
    options, compliance = draw(option_sets()), draw(st.booleans())
    return draw(sequences(options.get("send_window"), compliance)), options, compliance


class Clock:
    """The flow's clock: what `deferral.clock` says, moved on by the flow's short sleeps."""

    def __init__(self) -> None:
        self.at = datetime.now(UTC)

    def now(self) -> datetime:
        return self.at

    def sleep(self, seconds: float) -> None:
        self.at += timedelta(seconds=seconds)


@pytest.fixture(scope="module")
def owners() -> dict[str | None, int]:
    made = {}
    for zone in (None, "America/Denver", "Europe/Berlin"):
        made[zone] = new_owner()
        if zone:
            with session_scope() as session:
                set_sender_identity(session, made[zone], {"timezone": zone})
    return made


@pytest.fixture(scope="module")
def flow_clock():
    clock = Clock()
    patch = pytest.MonkeyPatch()
    patch.setenv("FOLLOWUPS_CAPS_ENABLED", "false")
    reset_settings()
    patch.setattr(deferral, "clock", clock.now)
    patch.setattr(deferral.time, "sleep", clock.sleep)
    patch.setattr(deferral, "defer", lambda *args: True)  # the deferred run is simulated below

    def no_allowed_time(plan, index, reason, run):
        raise InvalidStateError(reason)  # the flow skips the step: what the preview cannot plan

    patch.setattr(deferral, "_skip", no_allowed_time)
    yield clock
    patch.undo()
    reset_settings()


def flow_times(plan: EnrollmentPlan, start: datetime, clock: Clock) -> list[tuple[str, datetime, datetime | None]]:
    """Each step's (type, due or end, send time) as the flow decides them, step by step."""
    times: list[tuple[str, datetime, datetime | None]] = []
    moment = start
    for index, step in enumerate(plan.steps):
        plan = replace(plan, current_step=index)  # as the flow's checkpoint loads it
        channel = channel_of(step)
        if channel is None:
            # run_wait starts the wait with the database's now(), which comes back on UTC.
            moment = waiting.wait_end(plan, index, moment.astimezone(timezone.utc))
            times.append(("WAIT", moment, None))
            continue
        clock.at = moment
        for _ in range(50):
            held = deferral.hold_if_needed(plan, index, channel, None)
            if held is None:
                break
            clock.at = held.until  # the deferred run starts at its scheduled time
        else:
            raise AssertionError("never sent")
        times.append((channel.upper(), moment, clock.at))
        moment = clock.at
    return times


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    sequence=plans(),
    seller_zone=st.sampled_from(["UTC", *ZONES]), phone=st.sampled_from(PHONES),
    owner_zone=st.sampled_from([None, "America/Denver", "Europe/Berlin"]),
    anchor=st.sampled_from(ANCHORS), offset=st.integers(-5 * 86400, 5 * 86400),
    property_state=st.sampled_from(PROPERTY_STATES),
)
def test_the_preview_equals_the_flow(owners, flow_clock, sequence, seller_zone, phone, owner_zone, anchor, offset, property_state):
    steps, options, compliance = sequence
    owner = owners[owner_zone]
    # The suite turns the SMS quiet hours and state texting laws off; here they are on in half.
    on = str(compliance).lower()
    with env_settings({"FOLLOWUPS_QUIET_HOURS_ENABLED": on, "FOLLOWUPS_STATE_LAWS_ENABLED": on}):
        try:
            sequence_id = new_sequence(owner, steps, options=options)
        except InvalidInputError as exc:  # a window inside SMS quiet hours: refused when saved
            assert exc.field == "options.send_window"
            reject()
        start = anchor + timedelta(seconds=offset)
        deal = {"external_id": "D-1", "property_address": "1 Main St", "seller_name": "Pat Lee",
                "seller_email": "pat@example.com", "seller_phone": phone, "seller_timezone": seller_zone,
                "property_state": property_state}
        with session_scope() as session:  # the flow reads the deal's property_state from its row
            deal_id = upsert_deal(session, owner, deal)
        with session_scope(read_only=True) as session:
            try:
                preview = preview_sequence(session, owner, sequence_id, deal, start.isoformat())
            except InvalidStateError:
                preview = None
        plan = EnrollmentPlan(
            enrollment_id=1, status="ACTIVE", current_step=0, next_due_at=start, prefect_flow_run_id=None,
            sequence_id=sequence_id, sequence_version=1, steps=load_stored_steps(steps), deal_id=deal_id, owner_id=owner,
            deal_ref="D-1", deal=DealView("D-1", "1 Main St", None), seller=SellerView("Pat Lee", "pat@example.com", phone, seller_zone),
            reply_token="x", options=load_stored_options(options), owner_timezone=owner_zone,
        )
        if preview is None:  # no allowed moment at all (a window inside quiet hours): the flow agrees
            with pytest.raises(InvalidStateError):
                flow_times(plan, start, flow_clock)
            return
        planned = [
            (row["type"], datetime.fromisoformat(row["due_at"]), datetime.fromisoformat(row["send_at"]) if row["send_at"] else None)
            for row in preview["steps"]
        ]
        assert planned == flow_times(plan, start, flow_clock)


def test_a_calendar_wait_ends_at_the_same_local_time_across_dst(owners, flow_clock):
    """EMAIL, WAIT 3 days, EMAIL from Friday 10:45 New York before the US fall-back: Monday 10:45
    New York, which is 72 hours and one more later."""
    owner = owners[None]
    steps = [{"type": "EMAIL", "subject": "s", "text": "t"}, {"type": "WAIT", "days": 3}, {"type": "EMAIL", "subject": "s", "text": "t"}]
    sequence_id = new_sequence(owner, steps)
    deal = {"external_id": "D-1", "property_address": "1 Main St", "seller_name": "Pat Lee",
            "seller_email": "pat@example.com", "seller_timezone": "America/New_York"}
    with session_scope(read_only=True) as session:
        preview = preview_sequence(session, owner, sequence_id, deal, "2027-11-05T14:45:00Z")
    sent = datetime.fromisoformat(preview["steps"][2]["send_at"])
    assert sent == datetime(2027, 11, 8, 15, 45, tzinfo=UTC)
    plan = EnrollmentPlan(
        enrollment_id=1, status="ACTIVE", current_step=0, next_due_at=None, prefect_flow_run_id=None,
        sequence_id=sequence_id, sequence_version=1, steps=load_stored_steps(steps), deal_id=1, owner_id=owner,
        deal_ref="D-1", deal=DealView("D-1", "1 Main St", None),
        seller=SellerView("Pat Lee", "pat@example.com", None, "America/New_York"), reply_token="x", owner_timezone=None,
    )
    assert flow_times(plan, datetime(2027, 11, 5, 14, 45, tzinfo=UTC), flow_clock)[2][2] == sent
