"""Which rules apply to a step, when a WAIT ends, and the planned time of every step. Pure.

The flow (execution), the preview and `followups status` all go through these functions, so
what a preview promises is what the flow does.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from followups.scheduling.send_times import SendRules, add_business_days, explain, holiday_lookup, rules_for
from followups.scheduling.zones import recipient_zone
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

    @classmethod
    def of(cls, seller: Any, owner_timezone: str | None = None) -> Recipient:
        """The recipient of an enrollment's messages, from its seller (a SellerView) and the
        owner's zone (the last fallback)."""
        return cls(seller.timezone, seller.phone, owner_timezone)

    def zone(self, channel: str) -> tuple[str, str]:
        return recipient_zone(channel, self.timezone, self.phone, self.owner_timezone)


def step_rules(
    channel: str, options: SequenceOptions, recipient: Recipient, quiet_hours: tuple[int, int] | None
) -> SendRules:
    """The rules of one message: the sequence's window and holidays in the recipient's zone,
    and for SMS the quiet hours on top (`quiet_hours` None: switched off)."""
    zone, _ = recipient.zone(channel)
    return rules_for(options, zone, quiet_hours=quiet_hours if channel == "sms" else None)


def wait_zone(steps: Sequence[Step], index: int, recipient: Recipient) -> str:
    """A business-day WAIT counts days on the clock of the message it leads to."""
    following = next((channel_of(step) for step in steps[index + 1:] if channel_of(step)), "email")
    return recipient.zone(following)[0]


def wait_due(start: datetime, step: WaitStep, options: SequenceOptions, zone: str) -> datetime:
    if step.business_days is None:
        return start + step.duration
    holidays = holiday_lookup(options.holiday_country) if options.skip_holidays else None
    return add_business_days(start, step.business_days, zone, holidays)


@dataclass(frozen=True)
class PlannedStep:
    index: int
    type: str
    due_at: datetime  # when the step falls due (a WAIT: when it ends)
    send_at: datetime | None  # messages: the first allowed moment at or after due_at
    timezone: str
    zone_source: str
    reason: str | None = None  # window | quiet hours | holiday (why send_at is later)
    detail: str = ""

    def as_dict(self) -> dict[str, object]:
        return {
            "index": self.index,
            "type": self.type,
            "due_at": self.due_at.isoformat(),
            "send_at": self.send_at.isoformat() if self.send_at else None,
            "timezone": self.timezone,
            "zone_source": self.zone_source,
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
) -> list[PlannedStep]:
    """The planned time of every step from `first_index`, the first one due at `start`.

    Sending itself is taken as instant, and caps are not simulated (they depend on every other
    enrollment): a capped send can only come later than planned, never earlier.
    """
    planned: list[PlannedStep] = []
    moment = start
    for index in range(first_index, len(steps)):
        step = steps[index]
        channel = channel_of(step)
        if channel is None:
            assert isinstance(step, WaitStep)
            zone = wait_zone(steps, index, recipient)
            moment = wait_due(moment, step, options, zone)
            planned.append(PlannedStep(index, "WAIT", moment, None, zone, "wait"))
            continue
        zone, source = recipient.zone(channel)
        result, detail = explain(moment, step_rules(channel, options, recipient, quiet_hours))
        planned.append(PlannedStep(index, channel.upper(), moment, result.at, zone, source, result.reason, detail))
        moment = result.at
    return planned
