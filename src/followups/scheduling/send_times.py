"""The next moment a message may go out, and business-day arithmetic. Pure functions.

A send is allowed when, in the recipient's zone, the day is one of the window's weekdays and
not a skipped holiday, and the wall-clock time is inside the window and (SMS) outside quiet
hours. Everything is computed on local wall-clock times and converted back through the zone,
so DST changes move the UTC instant, never the local opening hour.

When the recipient's zone is uncertain (`zones.recipient_zones`), the rules hold in every
candidate zone at once: the send time is the first moment allowed on all their clocks, and the
zone whose rule held it back last is the one that decided.

A state's texting law (`state_laws`), when one applies to an SMS, holds the same way: its hours
and days must allow the moment on each clock it is read on, and a deferral it decides names it
(reason "state law").

A message step with its own send time (`at`, e.g. 10:00) goes at that local time on the first
day the rules allow it (`next_at_time`, reason "send time").
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from functools import lru_cache
from zoneinfo import ZoneInfo

from followups.errors import InvalidStateError
from followups.scheduling.state_laws import law_in_force
from followups.sequence_options import SendWindow, SequenceOptions

# A holiday calendar: the holiday's name for a date, or None.
HolidayLookup = Callable[[date], "str | None"]

# Far enough for any real window (a once-a-week window over a run of holidays), near enough
# that an impossible combination fails fast.
MAX_SEARCH_DAYS = 400
_MIDNIGHT = time(0)
_DAY_MINUTES = 24 * 60


@dataclass(frozen=True)
class SendRules:
    """Everything that limits when one message may go out."""

    timezone: str
    window: SendWindow | None = None
    # (start_hour, end_hour) of SMS quiet hours, e.g. (21, 8); None for email or when off.
    quiet_hours: tuple[int, int] | None = None
    holidays: HolidayLookup | None = None
    # More candidate zones when the recipient's is uncertain: a send must be allowed in each.
    other_zones: tuple[str, ...] = ()
    # State texting laws on top: (USPS code, the zones its hours are read on).
    laws: tuple[tuple[str, tuple[str, ...]], ...] = ()

    @property
    def zones(self) -> tuple[str, ...]:
        return (self.timezone, *self.other_zones)


@dataclass(frozen=True)
class SendTime:
    at: datetime  # aware, in `zone`
    reason: str | None  # None: allowed as due; else window | quiet hours | holiday | state law | send time
    detail: str = ""
    zone: str = ""  # the zone whose rule decided (the rules' first zone when nothing held it)

    @property
    def deferred(self) -> bool:
        return self.reason is not None


@lru_cache(maxsize=64)
def _country_calendar(country: str, year: int) -> dict[date, str]:
    import holidays

    return dict(holidays.country_holidays(country, years=year))


def holiday_lookup(country: str) -> HolidayLookup:
    """Public holidays of `country` (ISO code; observed days included), by date."""

    def lookup(day: date) -> str | None:
        return _country_calendar(country, day.year).get(day)

    return lookup


def rules_for(
    options: SequenceOptions,
    timezone: str,
    *,
    quiet_hours: tuple[int, int] | None = None,
    other_zones: tuple[str, ...] = (),
    laws: tuple[tuple[str, tuple[str, ...]], ...] = (),
) -> SendRules:
    return SendRules(
        timezone=timezone,
        other_zones=other_zones,
        laws=laws,
        window=options.send_window,
        quiet_hours=quiet_hours,
        holidays=holiday_lookup(options.holiday_country) if options.skip_holidays else None,
    )


def _minutes(value: time) -> int:
    return value.hour * 60 + value.minute


def _allowed_ranges(rules: SendRules) -> list[tuple[int, int]]:
    """Minutes of the day [start, end) in which a send is allowed, by window and quiet hours."""
    ranges = [(0, _DAY_MINUTES)]
    if rules.window is not None:
        ranges = [(_minutes(rules.window.start), _minutes(rules.window.end))]
    if rules.quiet_hours is not None and rules.quiet_hours[0] != rules.quiet_hours[1]:
        quiet_start, quiet_end = rules.quiet_hours[0] * 60, rules.quiet_hours[1] * 60
        if quiet_start > quiet_end:  # e.g. 21:00-08:00, over midnight
            open_ranges = [(quiet_end, quiet_start)]
        else:
            open_ranges = [(0, quiet_start), (quiet_end, _DAY_MINUTES)]
        ranges = [
            (max(a, c), min(b, d)) for a, b in ranges for c, d in open_ranges if max(a, c) < min(b, d)
        ]
    return sorted(ranges)


def _blocked_day(day: date, rules: SendRules) -> tuple[str, str] | None:
    if rules.holidays is not None:
        name = rules.holidays(day)
        if name:
            return "holiday", name
    if rules.window is not None and day.weekday() not in rules.window.weekday_numbers:
        return "window", "not a sending day"
    return None


def _wall(day: date, minute: int, zone: ZoneInfo, fold: int = 0) -> datetime:
    return datetime.combine(day, time(minute // 60, minute % 60), tzinfo=zone).replace(fold=fold)


def _real(moment: datetime, zone: ZoneInfo) -> datetime:
    """The moment as the zone would show it (a wall time in a DST gap moves forward)."""
    return moment.astimezone(UTC).astimezone(zone)


def next_send_time(due: datetime, rules: SendRules) -> SendTime:
    """The first moment at or after `due` when a send is allowed under `rules`, in every zone.

    `reason` names the first rule that moved it (window, quiet hours, holiday), in the zone that
    decided. Raises InvalidStateError when no moment within MAX_SEARCH_DAYS is allowed (e.g. a
    window that lies entirely inside SMS quiet hours, or no hour open on every candidate clock).
    """
    if due.tzinfo is None:
        raise ValueError("due must be timezone-aware")
    if not rules.other_zones and not rules.laws:
        return _next_in_zone(due, rules, rules.timezone)
    # Laws first: where a law and the TCPA's quiet hours end at the same moment, the law (the
    # stricter rule, and the one to name) decides.
    checks: list[Callable[[datetime], SendTime]] = [
        lambda moment, s=state, z=zone: _next_by_law(moment, s, z) for state, zones in rules.laws for zone in zones
    ]
    checks += [lambda moment, zone=zone: _next_in_zone(moment, rules, zone) for zone in rules.zones]
    # Each zone (and each law on each of its clocks) moves the moment to its next opening until
    # none objects; every move goes forward, so the search ends or runs out of days.
    moment, decided = due, None
    while True:
        moved = False
        for check in checks:
            result = check(moment)
            if result.deferred and result.at > moment:
                moment, decided, moved = result.at, result, True
        if not moved:
            break
        if moment - due > timedelta(days=MAX_SEARCH_DAYS):
            raise InvalidStateError(
                f"no allowed send time: no hour is open in all {len(rules.zones)} candidate zones "
                f"({rules.zones[0]} … {rules.zones[-1]})"
                + (f" under the texting laws of {', '.join(state for state, _ in rules.laws)}" if rules.laws else "")
                + "; give the deal a seller_timezone"
            )
    if decided is None:
        return SendTime(due.astimezone(ZoneInfo(rules.timezone)), None, zone=rules.timezone)
    return decided


def _next_in_zone(due: datetime, rules: SendRules, timezone: str) -> SendTime:
    zone = ZoneInfo(timezone)
    local = due.astimezone(zone)
    ranges = _allowed_ranges(rules)
    reason: tuple[str, str] | None = None
    day = local.date()
    for _ in range(MAX_SEARCH_DAYS):
        blocked = _blocked_day(day, rules)
        if blocked is not None:
            reason = reason or blocked
            day += timedelta(days=1)
            continue
        for start, end in ranges:
            if day == local.date():
                now_minute = local.hour * 60 + local.minute + local.second / 60 + local.microsecond / 60e6
                if start <= now_minute < end:
                    return SendTime(local, None, zone=timezone)
                if now_minute >= end:
                    continue
            # fold=1 only matters when the opening falls in the repeated hour of a DST change.
            for fold in (0, 1):
                candidate = _real(_wall(day, start, zone, fold), zone)
                minute = candidate.hour * 60 + candidate.minute
                if candidate >= due and candidate.date() == day and start <= minute < end:
                    reason = reason or _why_not(local, rules)
                    return SendTime(candidate, reason[0], reason[1], timezone)
        if day == local.date():
            reason = reason or _why_not(local, rules)
        day += timedelta(days=1)
    raise InvalidStateError("no allowed send time: the send window lies inside quiet hours or never opens")


def _next_by_law(due: datetime, state: str, timezone: str) -> SendTime:
    """The first moment at or after `due` that `state`'s texting law allows on `timezone`'s clock."""
    zone = ZoneInfo(timezone)
    local = due.astimezone(zone)
    day, why = local.date(), ""
    for _ in range(MAX_SEARCH_DAYS):
        law = law_in_force(state, day)
        if law is None:  # not yet in force that day
            at = max(local, _real(_wall(day, 0, zone), zone))
            return SendTime(at, "state law" if at > local else None, why, timezone)
        holiday = law.holiday(day)
        hours = None if holiday else law.hours[day.weekday()]
        if hours is not None:
            opening, closing = (_real(_wall(day, _minutes(moment), zone), zone) for moment in hours)
            if local < closing:
                if local >= opening:
                    return SendTime(local, None, zone=timezone)
                return SendTime(opening, "state law", why or law.describe(), timezone)
        why = why or (f"{law.name}: no texts on state holidays ({holiday}) ({law.citation})" if holiday else law.describe())
        day += timedelta(days=1)
    raise InvalidStateError(f"no allowed send time under {state}'s texting law")


def _why_not(local: datetime, rules: SendRules) -> tuple[str, str]:
    minute = local.hour * 60 + local.minute
    if rules.window is not None and not _minutes(rules.window.start) <= minute < _minutes(rules.window.end):
        return "window", f"outside {rules.window.start:%H:%M}-{rules.window.end:%H:%M}"
    if rules.quiet_hours is not None:
        return "quiet hours", f"{rules.quiet_hours[0]:02d}:00-{rules.quiet_hours[1]:02d}:00"
    return "window", "outside the window"


def explain(due: datetime, rules: SendRules) -> tuple[SendTime, str]:
    """next_send_time and a sentence saying why and until when, for events and previews."""
    result = next_send_time(due, rules)
    if not result.deferred:
        return result, ""
    return result, f"{_held_by(result, rules)}; deferred until {result.at.isoformat()} ({result.zone})"


def _held_by(result: SendTime, rules: SendRules) -> str:
    detail = {
        "window": "outside the send window" + (f" ({_window_text(rules.window)})" if rules.window else ""),
        "quiet hours": f"SMS quiet hours in {result.zone}",
        "holiday": "a public holiday",
        "state law": result.detail,
    }[result.reason]
    if result.reason == "holiday":
        detail = f"a public holiday ({result.detail})"
    if rules.other_zones:
        detail += f", the strictest of {len(rules.zones)} possible zones"
    return detail


def _window_text(window: SendWindow) -> str:
    return f"{','.join(window.weekdays)} {window.start:%H:%M}-{window.end:%H:%M}"


# -- a step's own send time (`at`) ------------------------------------------------------------

# A step that falls due this little after its `at` goes at once when the rules allow it: a run
# that starts late, a WAIT ending at 10:00 whose step runs at 10:00:01, or a rate cap holding the
# send a moment must not cost the step a day.
AT_SLACK = timedelta(minutes=15)
_MINUTE = timedelta(minutes=1)


def at_local(day: date, at: time, timezone: str) -> datetime:
    """`at` on `day` on `timezone`'s wall clock. A time the DST change skips is the moment the
    clocks jump past it (02:30 on a spring-forward night is 03:00); a repeated one is its first
    occurrence."""
    zone = ZoneInfo(timezone)
    wall = datetime.combine(day, at)
    moment = datetime.combine(day, at, tzinfo=zone).astimezone(UTC)  # fold=0: the first occurrence
    if moment.astimezone(zone).replace(tzinfo=None) != wall:
        # In the gap: `moment` is `at` moved on by the gap; back to the jump itself.
        while (moment - _MINUTE).astimezone(zone).replace(tzinfo=None) >= wall:
            moment -= _MINUTE
    return moment.astimezone(zone)


def next_at_time(due: datetime, at: time, rules: SendRules) -> tuple[SendTime, str]:
    """When a step with the send time `at` goes out, due at `due`, and a sentence (as `explain`).

    The first moment at or after `due` that is `at` on the clock of the rules' first zone and
    that every rule allows (in every candidate zone); a day whose `at` a rule forbids (a holiday,
    a day outside the window, quiet hours) is passed over for the next day's. Or `due` itself,
    when it is less than AT_SLACK after an `at` and the rules allow it. Reason "send time" when
    later than `due`. Raises InvalidStateError when no `at` within MAX_SEARCH_DAYS is allowed.
    """
    if due.tzinfo is None:
        raise ValueError("due must be timezone-aware")
    zone = ZoneInfo(rules.timezone)
    day = due.astimezone(zone).date()
    for opened in (at_local(day, at, rules.timezone), at_local(day - timedelta(days=1), at, rules.timezone)):
        if opened <= due < opened + AT_SLACK and not next_send_time(due, rules).deferred:
            return SendTime(due.astimezone(zone), None, zone=rules.timezone), ""
    refused = ""
    while True:
        candidate = at_local(day, at, rules.timezone)
        if candidate - due > timedelta(days=MAX_SEARCH_DAYS):
            raise InvalidStateError(
                f"no allowed send time: {at:%H:%M} in {rules.timezone} is outside what the send window, "
                f"holidays, quiet hours or texting laws allow on every day for {MAX_SEARCH_DAYS} days"
            )
        if candidate < due:
            day += timedelta(days=1)
            continue
        allowed = next_send_time(candidate, rules)
        if not allowed.deferred:
            break
        refused = refused or f"; not at {at:%H:%M} on {day:%a %Y-%m-%d}: {_held_by(allowed, rules)}"
        # No `at` before the next allowed moment can be allowed: go on from that moment's day.
        due_next = allowed.at
        day = due_next.astimezone(zone).date()
        if at_local(day, at, rules.timezone) < due_next:
            day += timedelta(days=1)
    if candidate == due:
        return SendTime(candidate, None, zone=rules.timezone), ""
    result = SendTime(candidate, "send time", f"{at:%H:%M}", rules.timezone)
    return result, (
        f"its send time {at:%H:%M} ({rules.timezone}){refused}; deferred until {candidate.isoformat()} ({rules.timezone})"
    )


# -- business days ----------------------------------------------------------------------------


def is_business_day(day: date, holidays: HolidayLookup | None) -> bool:
    return day.weekday() < 5 and not (holidays is not None and holidays(day))


def add_days(start: datetime, count: int, timezone: str) -> datetime:
    """`count` calendar days after `start`, at the same local wall-clock time in `timezone` (a
    time the DST change skips moves forward by the gap; a repeated one is its first occurrence)."""
    if start.tzinfo is None:
        raise ValueError("start must be timezone-aware")
    zone = ZoneInfo(timezone)
    local = start.astimezone(zone)
    return _real(datetime.combine(local.date() + timedelta(days=count), local.time(), tzinfo=zone), zone)


def add_business_days(start: datetime, count: int, timezone: str, holidays: HolidayLookup | None = None) -> datetime:
    """`count` business days (Mon-Fri, minus holidays when given) after `start`, at the same
    local wall-clock time in `timezone`. A start on a weekend counts from the next business day."""
    if start.tzinfo is None:
        raise ValueError("start must be timezone-aware")
    zone = ZoneInfo(timezone)
    local = start.astimezone(zone)
    day = local.date()
    remaining = count
    while remaining > 0:
        day += timedelta(days=1)
        if is_business_day(day, holidays):
            remaining -= 1
    return _real(datetime.combine(day, local.time().replace(tzinfo=None), tzinfo=zone), zone)
