"""What stops a sequence besides its own end: the one place the stop options are read.

A sequence's options (`followups.sequence_options.SequenceOptions`, saved with each version)
say which deal events stop it (`stop_on`: offer_accepted, offer_rejected, deal_closed; all by
default) and whether a reply on a channel the sequence does not use stops it too
(`stop_on_other_channel_reply`, off by default). An enrollment follows the version it started
with, like its steps.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from followups.steps import Step, channel_of


class DealEvent(StrEnum):
    OFFER_ACCEPTED = "offer_accepted"
    OFFER_REJECTED = "offer_rejected"
    DEAL_CLOSED = "deal_closed"


ALL_DEAL_EVENTS = frozenset(DealEvent)


@dataclass(frozen=True)
class StopRules:
    stop_on: frozenset[DealEvent] = ALL_DEAL_EVENTS
    stop_on_other_channel_reply: bool = False


def rules_from_options(options: Any) -> StopRules:
    """StopRules from a stored options mapping (or a SequenceOptions); missing keys keep the defaults."""
    if options is None:
        return StopRules()
    if not isinstance(options, dict):
        options = options.model_dump(mode="json") if hasattr(options, "model_dump") else {}
    stop_on = options.get("stop_on")
    reasons = ALL_DEAL_EVENTS if stop_on is None else frozenset(DealEvent(v) for v in stop_on if v in set(DealEvent))
    return StopRules(stop_on=reasons, stop_on_other_channel_reply=bool(options.get("stop_on_other_channel_reply", False)))


def channels(steps: list[Step]) -> frozenset[str]:
    """The channels a sequence reaches the seller on: "email", "sms"."""
    return frozenset(channel for channel in map(channel_of, steps) if channel)


def reply_stops(rules: StopRules, steps: list[Step], reply_channel: str) -> bool:
    """A reply on the sequence's own channel always stops it; one on the seller's other channel
    (a channel the sequence never uses) only with `stop_on_other_channel_reply`."""
    return reply_channel in channels(steps) or rules.stop_on_other_channel_reply
