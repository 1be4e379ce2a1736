"""TCPA quiet hours: no marketing text before 08:00 or after 21:00 in the seller's time zone.

(47 CFR 64.1200(c)(1).) An SMS step due in those hours waits for the next allowed time.
"""

from __future__ import annotations

from datetime import datetime, time, timedelta
from zoneinfo import ZoneInfo


def next_allowed_time(now: datetime, timezone: str, start_hour: int, end_hour: int) -> datetime | None:
    """None when `now` is allowed; otherwise the next allowed moment (aware, seller's zone).

    Quiet hours run from `start_hour` (e.g. 21) to `end_hour` (e.g. 8) local time, wrapping
    past midnight when start > end.
    """
    local = now.astimezone(ZoneInfo(timezone))
    hour = local.hour + local.minute / 60 + local.second / 3600
    if start_hour == end_hour:
        return None
    wraps = start_hour > end_hour
    quiet = (hour >= start_hour or hour < end_hour) if wraps else (start_hour <= hour < end_hour)
    if not quiet:
        return None
    day = local.date()
    if wraps and hour >= start_hour:
        day = day + timedelta(days=1)
    # Build the wall-clock time in the zone (handles DST shifts by the zone's own rules).
    return datetime.combine(day, time(end_hour), tzinfo=ZoneInfo(timezone))
