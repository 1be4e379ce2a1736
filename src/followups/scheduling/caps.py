"""Send caps: which limits a message counts against, and when a capped send may go. Pure.

Two kinds, each kept where it fits:
- `rate`: sends per second per provider account, a Prefect global concurrency limit with slot
  decay (Prefect's rate limit): a token bucket is what a per-second limit is, and its count
  lives in the Prefect server for every worker. A refused send waits a moment.
- `window`: sends per sending identity over a rolling window (24 h, and optionally 1 h), counted
  in PostgreSQL (`followups.limits`). Prefect has no sliding-window count: a limit N with slot
  decay N/24 h lets a full bucket through and then refills it, up to 2N in one 24 h, and a limit
  per calendar day lets a burst straddle midnight. The slots are rows of this database, so
  the count holds across any number of workers and dies with nothing but the database.

`place` is the whole window rule: a send goes now when every window that would hold it still
has room, otherwise at the first moment a slot frees, in the order the sends asked (a slot a
deferred send was promised stays promised to it).
"""

from __future__ import annotations

import bisect
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal

DAY_SECONDS = 86_400
HOUR_SECONDS = 3_600
# A refused rate-limit slot comes back within a second or two; a little slack avoids re-deferring.
MIN_DEFERRAL_SECONDS = 2.0
_UNSAFE = re.compile(r"[^A-Za-z0-9._@+\-]")


@dataclass(frozen=True)
class CapLimit:
    name: str  # a rate's Prefect limit name; a window's slot key (channel:identity)
    kind: Literal["rate", "window"]
    limit: int
    decay_per_second: float  # rates only
    identity: str  # the provider account or the sending identity it counts
    window_seconds: int = 0  # windows only

    def describe(self) -> str:
        if self.kind == "rate":
            return f"{self.limit}/s for {self.identity}"
        span = "24 h" if self.window_seconds == DAY_SECONDS else "hour" if self.window_seconds == HOUR_SECONDS else f"{self.window_seconds} s"
        return f"{self.limit} per {span} for {self.identity}"


def rate_limit_spec(name: str, identity: str, per_second: float) -> CapLimit | None:
    if per_second <= 0:
        return None
    # Prefect limits count whole slots: 0.5/s is 1 slot refilled every 2 s.
    return CapLimit(name, "rate", max(1, int(per_second)), per_second, identity)


def window_cap_spec(key: str, identity: str, limit: int, seconds: int) -> CapLimit | None:
    if limit <= 0:
        return None
    return CapLimit(key, "window", limit, 0.0, identity, seconds)


def limit_name(db_prefix: str, kind: str, channel: str, identity: str) -> str:
    """A Prefect limit name unique to this database, e.g. `followups-3f2a9c1e-email-rate-sendgrid`."""
    return f"followups-{db_prefix}-{channel}-{kind}-{_UNSAFE.sub('_', identity.lower())}"[:200]


def slot_key(channel: str, identity: str) -> str:
    return f"{channel}:{identity.lower()}"[:320]


def fits(others: Sequence[datetime], at: datetime, windows: Sequence[CapLimit]) -> bool:
    """Whether one more send at `at` keeps every window (t - W, t] that would hold it at or under
    its limit, given the other sends' times (`others`, sorted; promised ones may be later)."""
    for cap in windows:
        span = timedelta(seconds=cap.window_seconds)
        # The windows holding `at` end at `at` or at a later send less than W after it; the
        # count of a window changes only at a send, so those ends are the ones to check.
        ends = [at] + list(others[bisect.bisect_right(others, at): bisect.bisect_left(others, at + span)])
        for end in ends:
            inside = bisect.bisect_right(others, end) - bisect.bisect_right(others, end - span)
            if inside + 1 > cap.limit:
                return False
    return True


def place(others: Sequence[datetime], now: datetime, windows: Sequence[CapLimit], promised: datetime | None = None) -> datetime:
    """When a send that asks at `now` may go: `now` when it fits, else the first moment after
    every send already counted or promised at which it fits (first come, first served).
    `promised`: the moment this send was promised earlier, which it keeps while that is ahead."""
    others = sorted(others)
    if promised is not None and promised > now:
        return promised
    if not windows or fits(others, now, windows):
        return now
    # After the last counted or promised send, so no window holding a later one can overflow;
    # then as late as each window needs for its oldest send to leave it.
    at = max(now, others[-1]) if others else now
    for cap in windows:
        span = timedelta(seconds=cap.window_seconds)
        inside = others[bisect.bisect_right(others, at - span):]
        if len(inside) >= cap.limit:
            at = max(at, inside[len(inside) - cap.limit] + span)
    return at


@dataclass(frozen=True)
class CapDecision:
    granted: bool
    until: datetime | None = None
    detail: str = ""
    blocking: CapLimit | None = None


def window_deferral(windows: Sequence[CapLimit], others: Sequence[datetime], now: datetime, until: datetime) -> CapDecision:
    """The refusal of a send placed at `until`, naming the window that is full now."""
    full = [cap for cap in windows if not fits(others, now, [cap])] or list(windows)
    blocking = min(full, key=lambda cap: cap.limit)
    return CapDecision(False, until, f"cap {blocking.describe()} reached; a slot frees at {until.isoformat()}", blocking)


def rate_deferral(rate: CapLimit, active_slots: float | None, now: datetime) -> CapDecision:
    """Refused by a per-second rate: until it frees one slot (a moment)."""
    over = max(1.0, (active_slots or rate.limit) - rate.limit + 1)
    wait = max(MIN_DEFERRAL_SECONDS, over / rate.decay_per_second)
    return CapDecision(False, now + timedelta(seconds=wait), f"cap {rate.describe()}", rate)
