"""Per-sequence settings: when messages may go out, which holidays to skip, what stops a sequence.

Stored as JSONB (`options`) on the sequence and on each of its versions: an enrollment is pinned
to a version, so it keeps the options it started with, as it keeps the steps.
"""

from __future__ import annotations

import re
from datetime import time
from functools import lru_cache
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    ValidationInfo,
    field_validator,
)
from sqlalchemy import select
from sqlalchemy.orm import Session

from followups.errors import InvalidInputError

WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")  # index = date.weekday()
Weekday = Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
StopReason = Literal["offer_accepted", "offer_rejected", "deal_closed"]
STOP_REASONS: tuple[str, ...] = ("offer_accepted", "offer_rejected", "deal_closed")


@lru_cache(maxsize=1)
def _holiday_countries() -> frozenset[str]:
    import holidays

    return frozenset(holidays.list_supported_countries())


class SendWindow(BaseModel):
    """Days and local hours (recipient's zone) in which steps may be sent; `end` is exclusive."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    weekdays: list[Weekday] = Field(
        default_factory=lambda: list(WEEKDAYS[:5]), min_length=1, max_length=7,
        description="Days on which sending is allowed: mon … sun",
    )
    start: time = Field(default=time(9), description="Local time the window opens, e.g. 09:00")
    end: time = Field(default=time(17), description="Local time the window closes (exclusive), e.g. 17:00")

    @field_validator("weekdays", mode="before")
    @classmethod
    def _lower(cls, value: Any) -> Any:
        if isinstance(value, list):
            return [day.strip().lower()[:3] if isinstance(day, str) else day for day in value]
        return value

    @field_validator("weekdays")
    @classmethod
    def _ordered(cls, value: list[str]) -> list[str]:
        return sorted(set(value), key=WEEKDAYS.index)

    @field_validator("start", "end")
    @classmethod
    def _naive_minutes(cls, value: time) -> time:
        # Wall-clock time in the recipient's zone: an offset here would contradict that zone.
        if value.tzinfo is not None:
            raise ValueError("must be a local time without an offset, e.g. 09:00")
        return value.replace(second=0, microsecond=0)

    @field_validator("end")
    @classmethod
    def _closes_after_it_opens(cls, value: time, info: ValidationInfo) -> time:
        start = info.data.get("start")
        if start is not None and value <= start:
            raise ValueError("must be later than start (windows over midnight are not supported)")
        return value

    @property
    def weekday_numbers(self) -> frozenset[int]:
        return frozenset(WEEKDAYS.index(day) for day in self.weekdays)


_CLOCK_TIME = re.compile(r"^([01][0-9]|2[0-3]):[0-5][0-9]$")


def _clock_time(value: Any) -> Any:
    if value is None or isinstance(value, str) and _CLOCK_TIME.fullmatch(value):
        return value
    # YAML 1.1 reads an unquoted 10:00 as the number 600 (base 60): say what to write.
    hint = '; quote it in YAML: at: "10:00"' if type(value) is int else ""
    raise ValueError(f'must be a local time "HH:MM", 00:00 to 23:59, e.g. "10:00"{hint}')


# A message step's own send time (`at`): local "HH:MM", 24 h; no seconds, no "9am".
SendTimeOfDay = Annotated[
    Annotated[str, StringConstraints(pattern=_CLOCK_TIME.pattern)] | None,  # the pattern for the schema
    BeforeValidator(_clock_time),
    Field(
        examples=["10:00"],
        description='Local time "HH:MM" (24 h) in the recipient\'s zone: the step goes at the first such time at or '
        "after it falls due that the send window, holidays, quiet hours and texting laws allow",
    ),
]


class SequenceOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    send_window: SendWindow | None = Field(default=None, description="None: any day, any time (SMS quiet hours still apply)")
    skip_holidays: bool = Field(default=False, description="Send nothing on public holidays of `holiday_country`")
    holiday_country: str = Field(default="US", min_length=2, max_length=3, description="ISO 3166 code for `skip_holidays`")
    stop_on: list[StopReason] = Field(
        default_factory=lambda: list(STOP_REASONS), max_length=3,
        description="Deal events that stop this sequence's enrollments",
    )
    stop_on_other_channel_reply: bool = Field(
        default=False, description="Also stop on a reply from the seller's other channel (SMS for an email step and back)"
    )

    @field_validator("holiday_country")
    @classmethod
    def _known_country(cls, value: str) -> str:
        value = value.strip().upper()
        if value not in _holiday_countries():
            raise ValueError("unknown country for holidays; use an ISO 3166 code such as US")
        return value

    @field_validator("stop_on")
    @classmethod
    def _unique(cls, value: list[str]) -> list[str]:
        return sorted(set(value), key=STOP_REASONS.index)

    def to_json(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


def _field_error(exc: ValidationError, prefix: str) -> InvalidInputError:
    first = exc.errors(include_url=False)[0]
    path = [prefix, *(str(part) for part in first["loc"])]
    message = first["msg"].removeprefix("Value error, ")
    if first["type"] == "extra_forbidden":
        message = "unknown field"
    return InvalidInputError(message, field=".".join(path))


def parse_options(raw: Any, *, prefix: str = "options") -> SequenceOptions:
    """Validate options from plain data (None = defaults), or raise InvalidInputError with the
    field path, e.g. `options.send_window.start`."""
    if raw is None:
        return SequenceOptions()
    if isinstance(raw, SequenceOptions):
        return raw
    try:
        return SequenceOptions.model_validate(raw)
    except ValidationError as exc:
        raise _field_error(exc, prefix) from exc


def load_stored_options(raw: Any) -> SequenceOptions:
    """Options as stored on a sequence or a version (`{}` for rows made before options existed)."""
    return parse_options(raw or {})


def version_options(session: Session, sequence_version_id: int) -> SequenceOptions:
    """The options an enrollment runs with: those of the version it is pinned to."""
    from followups.db.models import SequenceVersion

    raw = session.scalar(select(SequenceVersion.options).where(SequenceVersion.id == sequence_version_id))
    return load_stored_options(raw)


def check_sms_can_go_out(steps: list[dict[str, Any]], options: SequenceOptions) -> None:
    """Refuse a send window that lies wholly inside SMS quiet hours when the sequence has SMS
    steps: every such step would be deferred for ever."""
    from followups.settings import get_settings

    settings = get_settings()
    window = options.send_window
    if window is None or not settings.quiet_hours_enabled or settings.quiet_hours_start == settings.quiet_hours_end:
        return
    if not any(step.get("type") == "SMS" for step in steps):
        return
    quiet_from, quiet_until = time(settings.quiet_hours_start), time(settings.quiet_hours_end)
    if quiet_from > quiet_until:  # wraps midnight, e.g. 21:00–08:00
        always_quiet = window.end <= quiet_until or window.start >= quiet_from
    else:
        always_quiet = window.start >= quiet_from and window.end <= quiet_until
    if always_quiet:
        raise InvalidInputError(
            f"the window {window.start:%H:%M}–{window.end:%H:%M} lies inside SMS quiet hours "
            f"({quiet_from:%H:%M}–{quiet_until:%H:%M}), so the SMS steps could never be sent",
            "options.send_window",
        )


def check_send_times(steps: list[dict[str, Any]], options: SequenceOptions) -> None:
    """Refuse a message step's send time (`at`) that no day could allow: outside the send
    window's hours, or for an SMS inside the quiet hours when they are on. (What depends on the
    deal, its zones and its state's law, is only known when the step falls due: a step whose
    `at` is never allowed then is skipped.)"""
    from followups.settings import get_settings

    settings = get_settings()
    window = options.send_window
    quiet = settings.quiet_hours_enabled and settings.quiet_hours_start != settings.quiet_hours_end
    quiet_from, quiet_until = time(settings.quiet_hours_start), time(settings.quiet_hours_end)
    for index, step in enumerate(steps):
        at = step.get("at")
        if not at:
            continue
        moment = time.fromisoformat(at)
        if window is not None and not window.start <= moment < window.end:
            raise InvalidInputError(
                f"{at} is outside the send window {window.start:%H:%M}–{window.end:%H:%M}, so the step could never be sent",
                f"steps.{index}.at",
            )
        if step.get("type") == "SMS" and quiet:
            inside = (
                moment >= quiet_from or moment < quiet_until if quiet_from > quiet_until else quiet_from <= moment < quiet_until
            )
            if inside:
                raise InvalidInputError(
                    f"{at} is inside SMS quiet hours ({quiet_from:%H:%M}–{quiet_until:%H:%M}), so the text could never be sent",
                    f"steps.{index}.at",
                )
