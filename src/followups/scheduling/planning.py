"""Which rules apply to a step, when a WAIT ends, and the planned time of every step. Pure.

`step_time` is the one computation of a step's times: the flow (`execution.waiting` with the
database's now(), `execution.deferral` with its clock) and the preview and `followups status`
(with the previous step's time) all call it, so what a preview promises is what the flow does.

A WAIT is counted on the clock of the message it leads to (`wait_zone`). Its whole days, calendar
or business, end at the same local wall-clock time in that zone, whatever DST does meanwhile:
"3 days" from Friday 10:45 ends Monday 10:45 there, 73 hours later over a fall-back. Its hours,
minutes and seconds (and a fraction of a day) are exact elapsed time, added after the days:
"2 hours" is 7,200 seconds even across a DST change.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, time, timedelta
from typing import Any

from followups.scheduling.send_times import SendRules, add_business_days, add_days, explain, holiday_lookup, next_at_time, rules_for
from followups.scheduling.state_laws import STATE_LAWS, StateLaw, has_law, state_of_phone, strictest_cap
from followups.scheduling.zones import recipient_zone, recipient_zones
from followups.sequence_options import SequenceOptions
from followups.steps import Step, WaitStep, channel_of


def quiet_hours_of(settings: Any) -> tuple[int, int] | None:
    """SMS quiet hours from the settings, as (start hour, end hour); None when switched off."""
    return (settings.quiet_hours_start, settings.quiet_hours_end) if settings.quiet_hours_enabled else None


@dataclass(frozen=True)
class Recipient:
    timezone: str | None  # the deal's seller_timezone ("UTC" counts as not given)
    phone: str | None = None
    owner_timezone: str | None = None
    property_state: str | None = None  # the deal's property_state (USPS code)

    @classmethod
    def of(cls, seller: Any, owner_timezone: str | None = None, property_state: str | None = None) -> Recipient:
        """The recipient of an enrollment's messages, from its seller (a SellerView) and the
        owner's zone (the last fallback)."""
        return cls(seller.timezone, seller.phone, owner_timezone, property_state)

    def states(self) -> tuple[str, ...]:
        """The states whose texting laws apply: the property's and the phone number's (both
        when they differ: the seller may be at either). None without a number to text."""
        if not self.phone:
            return ()
        return tuple(dict.fromkeys(state for state in (self.property_state, state_of_phone(self.phone)) if state))

    def laws(self, zones: tuple[str, ...]) -> tuple[tuple[str, tuple[str, ...]], ...]:
        """Each state with a texting law, and the clocks it is read on: the message's candidate
        zones; for the property's state also that state's own zones, unless the deal gave the
        seller's zone or the number is from that state (the seller may live at the property)."""
        placed = bool(self.timezone and self.timezone != "UTC") or state_of_phone(self.phone) == self.property_state
        found = []
        for state in filter(has_law, self.states()):
            own = () if placed or state != self.property_state else _state_zones(state)
            found.append((state, tuple(dict.fromkeys((*zones, *own)))))
        return tuple(found)

    def text_cap(self, moment: datetime) -> StateLaw | None:
        """The state law whose cap on texts per 24 h applies, the strictest of them."""
        return strictest_cap(self.states(), moment.date())

    def zone(self, channel: str) -> tuple[str, str]:
        return recipient_zone(channel, self.timezone, self.phone, self.owner_timezone)

    def zones(self, channel: str) -> tuple[tuple[str, ...], str]:
        """Every candidate zone (several when the phone number's zone is uncertain)."""
        return recipient_zones(channel, self.timezone, self.phone, self.owner_timezone)


def _state_zones(state: str) -> tuple[str, ...]:
    return next(law.zones for law in STATE_LAWS if law.state == state)


def step_rules(
    channel: str,
    options: SequenceOptions,
    recipient: Recipient,
    quiet_hours: tuple[int, int] | None,
    state_laws: bool = True,
) -> SendRules:
    """The rules of one message: the sequence's window and holidays in the recipient's zone (in
    each candidate zone when unsure), and for SMS the quiet hours (`quiet_hours` None: switched
    off) and the state texting laws (`state_laws`) on top."""
    zones, _ = recipient.zones(channel)
    sms = channel == "sms"
    return rules_for(
        options, zones[0], quiet_hours=quiet_hours if sms else None, other_zones=zones[1:],
        laws=recipient.laws(zones) if sms and state_laws else (),
    )


def wait_zone(steps: Sequence[Step], index: int, recipient: Recipient) -> str:
    """A WAIT counts its days on the clock of the message it leads to."""
    following = next((channel_of(step) for step in steps[index + 1:] if channel_of(step)), "email")
    return recipient.zone(following)[0]


def wait_due(start: datetime, step: WaitStep, options: SequenceOptions, zone: str) -> datetime:
    """When a WAIT started at `start` ends, its days counted in `zone` (see the module's text)."""
    if step.business_days is None:
        whole = int(step.days)
        end = add_days(start, whole, zone) if whole else start
        # Elapsed time is added on UTC (on the zone's wall clock it would stretch or shrink over
        # DST); the end is shown with the start's offset, as the flow records it.
        return (end.astimezone(UTC) + step.duration - timedelta(days=whole)).astimezone(start.tzinfo)
    holidays = holiday_lookup(options.holiday_country) if options.skip_holidays else None
    return add_business_days(start, step.business_days, zone, holidays)


@dataclass(frozen=True)
class PlannedStep:
    index: int
    type: str
    due_at: datetime  # when the step falls due (a WAIT: when it ends)
    send_at: datetime | None  # messages: the first allowed moment at or after due_at
    timezone: str  # a deferred message: the zone whose rule decided
    zone_source: str
    reason: str | None = None  # window | quiet hours | holiday | state law | send time (why send_at is later)
    detail: str = ""
    zones: tuple[str, ...] = ()  # every candidate zone a message's send time was checked in

    def as_dict(self) -> dict[str, object]:
        return {
            "index": self.index,
            "type": self.type,
            "due_at": self.due_at.isoformat(),
            "send_at": self.send_at.isoformat() if self.send_at else None,
            "timezone": self.timezone,
            "zone_source": self.zone_source,
            "candidate_zones": list(self.zones),
            "deferred_by": self.reason,
            "detail": self.detail,
        }


def plan_times(
    steps: Sequence[Step],
    start: datetime,
    options: SequenceOptions,
    recipient: Recipient,
    quiet_hours: tuple[int, int] | None,
    *,
    first_index: int = 0,
    state_laws: bool = True,
) -> list[PlannedStep]:
    """The planned time of every step from `first_index`, the first one due at `start`.

    Sending itself is taken as instant, and caps are not simulated (they depend on every other
    enrollment): a capped send can only come later than planned, never earlier.
    """
    planned: list[PlannedStep] = []
    moment = start
    for index in range(first_index, len(steps)):
        planned.append(step_time(steps, index, moment, options, recipient, quiet_hours, state_laws=state_laws))
        moment = planned[-1].send_at or planned[-1].due_at
    return planned


def step_time(
    steps: Sequence[Step],
    index: int,
    moment: datetime,
    options: SequenceOptions,
    recipient: Recipient,
    quiet_hours: tuple[int, int] | None,
    *,
    state_laws: bool = True,
) -> PlannedStep:
    """The times of step `index` reached at `moment`: a WAIT's end, or a message's first allowed
    send time at or after `moment`, at its own send time `at` when it has one
    (`send_times.next_at_time`; `reason` None: it may go out at `moment`)."""
    step = steps[index]
    channel = channel_of(step)
    if channel is None:
        assert isinstance(step, WaitStep)
        zone = wait_zone(steps, index, recipient)
        return PlannedStep(index, "WAIT", wait_due(moment, step, options, zone), None, zone, "wait")
    zones, source = recipient.zones(channel)
    rules = step_rules(channel, options, recipient, quiet_hours, state_laws)
    # A send time (`at`) is read on the rules' first zone, the one shown and the one a WAIT
    # counts days on; the window, quiet hours and laws must still allow it on every clock.
    result, detail = next_at_time(moment, time.fromisoformat(step.at), rules) if step.at else explain(moment, rules)
    return PlannedStep(index, channel.upper(), moment, result.at, result.zone, source, result.reason, detail, zones)
