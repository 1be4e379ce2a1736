"""Send caps: which limits a message counts against, and what to do when one is full. Pure.

Both kinds are Prefect global concurrency limits, so the count lives in the Prefect server and
holds across any number of workers and machines:
- `rate`: sends per second per provider account: limit R, slots decaying R per second (Prefect's
  rate limit). A refused send waits a moment.
- `daily`: sends per calendar day per sending identity. Each day has a limit of its own (the
  identity's name plus `~YYYY-MM-DD`): limit N, no slot decay, and a send takes a slot that is
  never given back, so at most N go out that day whatever the number of workers; the next day
  counts on a fresh limit. When the day's N are used up the step is deferred to the start of
  the next day (plus a small per-enrollment spread, so the deferred runs do not all start at
  the same instant).

The day is a UTC day. Owners and sending identities have no time zone of their own (only
recipients do, for send windows and quiet hours), and UTC is the one day every worker agrees on
whatever its machine's zone.

Taking a slot is behind `CapGate`, so the rule that decides "send now or defer until when"
is tested without a Prefect server (`MemoryCapGate`), and the flow uses the Prefect one.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from typing import Literal, Protocol

DAY_SECONDS = 86_400
# A refused rate-limit slot comes back within a second or two; a little slack avoids re-deferring.
MIN_DEFERRAL_SECONDS = 2.0
# Steps deferred to the next day start within this many seconds of midnight, spread by enrollment.
NEXT_DAY_SPREAD_SECONDS = 600
# Never produced by `limit_name` (identities are reduced to [A-Za-z0-9._@+-]), so the date of a
# day's limit is read back without ambiguity.
DAY_SEPARATOR = "~"
_UNSAFE = re.compile(r"[^A-Za-z0-9._@+\-]")


@dataclass(frozen=True)
class CapLimit:
    name: str  # for a daily cap: the identity's name; each day's limit is `day_name(day)`
    kind: Literal["rate", "daily"]
    limit: int
    decay_per_second: float
    identity: str  # the provider account or the sending identity it counts

    def describe(self) -> str:
        if self.kind == "rate":
            return f"{self.limit}/s for {self.identity}"
        return f"{self.limit}/day for {self.identity}"

    def day_name(self, day: date) -> str:
        return day_limit_name(self.name, day)

    def slot_name(self, now: datetime) -> str:
        """The Prefect limit a send at `now` takes a slot of."""
        return self.day_name(cap_day(now)) if self.kind == "daily" else self.name


def rate_limit_spec(name: str, identity: str, per_second: float) -> CapLimit | None:
    if per_second <= 0:
        return None
    # Prefect limits count whole slots: 0.5/s is 1 slot refilled every 2 s.
    return CapLimit(name, "rate", max(1, int(per_second)), per_second, identity)


def daily_cap_spec(name: str, identity: str, per_day: int) -> CapLimit | None:
    if per_day <= 0:
        return None
    return CapLimit(name, "daily", per_day, 0.0, identity)


def limit_name(db_prefix: str, kind: str, channel: str, identity: str) -> str:
    """A Prefect limit name unique to this database, e.g. `followups-3f2a9c1e-email-daily-a@b.c`."""
    return f"followups-{db_prefix}-{channel}-{kind}-{_UNSAFE.sub('_', identity.lower())}"[:200]


def day_limit_name(name: str, day: date) -> str:
    return f"{name}{DAY_SEPARATOR}{day.isoformat()}"


def day_of_limit(name: str) -> tuple[str, date] | None:
    """(identity's name, day) of a day's limit; None for any other name."""
    base, sep, tail = name.rpartition(DAY_SEPARATOR)
    if not sep:
        return None
    try:
        return base, date.fromisoformat(tail)
    except ValueError:
        return None


def cap_day(now: datetime) -> date:
    return now.astimezone(UTC).date()


def day_start(day: date) -> datetime:
    return datetime.combine(day, time(0), tzinfo=UTC)


def next_day_start(now: datetime, spread_key: int = 0) -> datetime:
    """When a step refused today may try again: tomorrow's start, spread by `spread_key`."""
    # A multiplier prime to the spread scatters consecutive enrollment ids over the window.
    offset = (spread_key * 7919) % NEXT_DAY_SPREAD_SECONDS
    return day_start(cap_day(now) + timedelta(days=1)) + timedelta(seconds=offset)


@dataclass(frozen=True)
class CapDecision:
    granted: bool
    until: datetime | None = None
    detail: str = ""
    blocking: CapLimit | None = None


@dataclass
class LimitState:
    """What a gate knows of a limit when it refuses: for choosing the deferral."""

    limit: CapLimit
    active_slots: float


class CapGate(Protocol):
    def acquire(self, limits: Sequence[CapLimit], now: datetime, spread_key: int = 0) -> CapDecision: ...


def deferral_for(states: Sequence[LimitState], now: datetime, spread_key: int = 0) -> CapDecision:
    """Refused: a full daily cap defers to the next day's start; a per-second rate until it
    frees one slot (a moment)."""
    if not states:
        return CapDecision(False, now + timedelta(seconds=MIN_DEFERRAL_SECONDS), "cap")
    full = [s for s in states if s.active_slots + 1 > s.limit.limit] or list(states)
    days = [s.limit for s in full if s.limit.kind == "daily"]
    if days:
        blocking = min(days, key=lambda cap: cap.limit)
        until = next_day_start(now, spread_key)
        return CapDecision(False, until, f"cap {blocking.describe()} used up on {cap_day(now)} (UTC)", blocking)

    def wait(state: LimitState) -> float:
        over = max(1.0, state.active_slots - state.limit.limit + 1)
        return over / state.limit.decay_per_second

    rate = max(full, key=wait)
    until = now + timedelta(seconds=max(MIN_DEFERRAL_SECONDS, wait(rate)))
    return CapDecision(False, until, f"cap {rate.limit.describe()}", rate.limit)


@dataclass
class MemoryCapGate:
    """The Prefect semantics (all-or-nothing slots, linear decay, a limit per day for daily caps)
    in memory, for tests and previews without a server."""

    slots: dict[str, float] = field(default_factory=dict)
    updated: dict[str, datetime] = field(default_factory=dict)

    def _level(self, cap: CapLimit, key: str, now: datetime) -> float:
        last = self.updated.get(key, now)
        level = self.slots.get(key, 0.0) - cap.decay_per_second * max(0.0, (now - last).total_seconds())
        return max(0.0, level)

    def acquire(self, limits: Sequence[CapLimit], now: datetime, spread_key: int = 0) -> CapDecision:
        keys = {cap.name: cap.slot_name(now) for cap in limits}
        levels = {cap.name: self._level(cap, keys[cap.name], now) for cap in limits}
        full = [LimitState(cap, levels[cap.name]) for cap in limits if levels[cap.name] + 1 > cap.limit]
        if full:
            return deferral_for(full, now, spread_key)
        for cap in limits:
            self.slots[keys[cap.name]] = levels[cap.name] + 1
            self.updated[keys[cap.name]] = now
        return CapDecision(True)
