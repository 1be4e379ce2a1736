"""Everything that enters the product, validated once, the same way for the Python API, the
CLI and HTTP: one model per input, and helpers that turn any failure into an InvalidInputError
naming the field (dotted path), never a driver error at insert time. The field types and their
bounds live in `followups.input_types`.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, model_validator
from pydantic_core import InitErrorDetails, PydanticCustomError
from sqlalchemy import select
from sqlalchemy.orm import Session

from followups.db.models import User
from followups.errors import InvalidInputError, NotFoundError
from followups.input_types import (
    EXTERNAL_ID_PATTERN,
    MAX_ID,
    MAX_NAME,
    UNION_TAGS,
    Address,
    Amount,
    Context,
    Description,
    Email,
    ExternalId,
    Id,
    Label,
    MessagingServiceSid,
    Name,
    Phone,
    StepList,
    TimeZone,
    UsState,
    bad_text,
    find_bad_text,
)
from followups.sequence_options import SequenceOptions
from followups.steps import deferred_templates, steps_to_json

__all__ = [
    "EXTERNAL_ID_PATTERN", "MAX_ID", "MAX_NAME", "DealInput", "EnrollRequest", "Id", "OfferInput", "SenderIdentity",
    "SequenceInput", "SequencePatch", "check_external_id", "check_start_at", "check_id", "check_label", "check_name", "invalid_input", "require_owner",
    "validate",
]


class _Input(BaseModel):
    """Base of every input: unknown fields are refused, and an instance handed back in (maybe
    changed with model_copy, which does not validate) is validated again."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True, revalidate_instances="always")

    @model_validator(mode="before")
    @classmethod
    def _storable_text(cls, data: Any) -> Any:
        found = find_bad_text(data)
        if found is not None:
            loc, message, value = found
            error = InitErrorDetails(type=PydanticCustomError("string_unstorable", message), loc=loc, input=value)
            raise ValidationError.from_exception_data(cls.__name__, [error])
        return data


# -- models -------------------------------------------------------------------------------


class DealInput(_Input):
    """A deal as the investor's app describes it; `external_id` is the app's own id."""

    external_id: ExternalId
    property_address: Address
    seller_name: Name
    seller_email: Email | None = None
    seller_phone: Phone | None = Field(default=None, description="E.164; stored formatted, e.g. +15035550142")
    seller_timezone: TimeZone = "UTC"
    property_state: UsState | None = Field(
        default=None, description="USPS code of the property's state (e.g. FL): its texting law applies, besides the one "
        "of the phone number's area code",
    )
    offer_amount: Amount | None = None
    context: Context = Field(
        default_factory=dict, description="Free-form values for templates (`deal.context.*`); at most 64 KB, 5 levels"
    )

    @model_validator(mode="after")
    def _reachable(self) -> DealInput:
        if not (self.seller_email or self.seller_phone):
            raise ValueError("a seller needs an email address or a phone number")
        return self


class SequenceInput(_Input):
    """A new sequence template."""

    name: Name
    description: Description = ""
    steps: StepList
    enabled: bool = True
    is_default: bool = Field(default=False, description="The sequence `POST /api/offers` uses when none is named")
    options: SequenceOptions = Field(
        default_factory=SequenceOptions, description="Send window, holidays and what stops the sequence"
    )

    def steps_json(self) -> list[dict[str, Any]]:
        return steps_to_json(self.steps)


class SequencePatch(_Input):
    """Fields left out keep their value. New `steps` make a new version of the sequence; running
    enrollments keep the version they started with."""

    name: Name | None = None
    description: Description | None = None
    steps: StepList | None = None
    enabled: bool | None = None
    is_default: bool | None = None
    options: SequenceOptions | None = Field(
        default=None, description="Replaces all options (fields left out take their defaults); changed options make a new version"
    )

    def steps_json(self) -> list[dict[str, Any]] | None:
        return None if self.steps is None else steps_to_json(self.steps)


AGAIN_HELP = (
    "Enroll the deal anew when it was enrolled in this sequence before and every earlier enrollment has finished "
    "(COMPLETED, CANCELLED, STOPPED or FAILED). Without it, a deal that was ever enrolled in the sequence is not "
    "enrolled again; an open (ACTIVE or PAUSED) enrollment is never duplicated either way"
)


class EnrollRequest(_Input):
    sequence_id: Id
    deal: DealInput
    again: bool = Field(default=False, description=AGAIN_HELP)


class OfferInput(_Input):
    """An offer that went out. A given `amount` is the offer's amount: it replaces the deal's
    `offer_amount`, so `deal.offer_amount` is always the one to store."""

    offer_id: ExternalId = Field(description="The app's own id of the offer")
    deal: DealInput
    sequence_id: Id | None = Field(default=None, description="Defaults to the caller's default sequence")
    amount: Amount | None = None
    again: bool = Field(default=False, description=AGAIN_HELP)

    @model_validator(mode="after")
    def _amount_on_deal(self) -> OfferInput:
        if self.amount is not None and self.deal.offer_amount != self.amount:
            # Already validated with the same bounds, so the copy needs no validation.
            self.deal = self.deal.model_copy(update={"offer_amount": self.amount})
        return self


class SenderIdentity(_Input):
    """An owner's sending identity. A field left out (or null) falls back to the global settings:
    `sendgrid_from_email`, `sendgrid_from_name`, `twilio_from_number`."""

    email_from: Email | None = Field(default=None, description="From address of the owner's emails")
    email_from_name: Name | None = Field(default=None, description="Display name of that address")
    sms_from: Phone | None = Field(default=None, description="E.164 number the owner's SMS are sent from")
    messaging_service_sid: MessagingServiceSid | None = Field(
        default=None, description="Twilio Messaging Service the owner's SMS are sent through, instead of a number"
    )
    timezone: TimeZone | None = Field(
        default=None, description="The owner's IANA time zone: send windows and quiet hours use it when the deal "
        "and the seller's phone number give none",
    )

    @model_validator(mode="after")
    def _one_sms_sender(self) -> SenderIdentity:
        # Twilio takes From or MessagingServiceSid; with both, which one the seller sees (and so
        # where replies go) would depend on the service's settings.
        if self.sms_from and self.messaging_service_sid:
            message = "set either sms_from or messaging_service_sid, not both"
            error = InitErrorDetails(
                type=PydanticCustomError("sms_sender", message), loc=("messaging_service_sid",), input=self.messaging_service_sid
            )
            raise ValidationError.from_exception_data(type(self).__name__, [error])
        return self


# -- helpers ------------------------------------------------------------------------------

M = TypeVar("M", bound=BaseModel)


def invalid_input(exc: ValidationError, prefix: str = "") -> InvalidInputError:
    """The first error of `exc` as an InvalidInputError with a dotted field path, e.g.
    `deal.seller_phone` or `steps.2.body` (pydantic's union tags left out)."""
    first = exc.errors(include_url=False)[0]
    path: list[str] = []
    previous: Any = None
    for part in first["loc"]:
        if not (isinstance(previous, int) and part in UNION_TAGS):
            path.append(str(part))
        previous = part
    message = first["msg"].removeprefix("Value error, ").removeprefix("Assertion failed, ")
    if first["type"] == "extra_forbidden":
        message = "unknown field"
    elif first["type"] in {"union_tag_invalid", "union_tag_not_found"}:
        path.append("type")
    field = ".".join(([prefix] if prefix else []) + path)
    return InvalidInputError(message, field=field or None)


def validate(model_cls: type[M], data: Any, *, prefix: str = "") -> M:
    """`model_cls` built from `data` (a mapping or an instance, validated again), or an
    InvalidInputError naming the first wrong field under `prefix`."""
    try:
        return model_cls.model_validate(data)
    except ValidationError as exc:
        raise invalid_input(_structure_first(model_cls, data, exc), prefix) from exc
    except (ArithmeticError, RecursionError) as exc:  # a validator overflowed on an absurd number
        raise InvalidInputError("a value is out of range", field=prefix or None) from exc


def _structure_first(model_cls: type[BaseModel], data: Any, exc: ValidationError) -> ValidationError:
    """The error to report: a structural one before a template one, whatever their order. The
    HTTP API parses bodies with templates deferred (they render off the event loop), so it meets
    structural errors first; Python and the CLI then name the same field for the same input."""
    try:
        with deferred_templates():
            model_cls.model_validate(data)
    except ValidationError as structural:
        return structural
    except (ArithmeticError, RecursionError):
        return exc
    return exc


def _check(adapter: TypeAdapter, value: Any, field: str) -> Any:
    try:
        return adapter.validate_python(value)
    except ValidationError as exc:
        raise invalid_input(exc, field) from exc


_NAME = TypeAdapter(Name)
_LABEL = TypeAdapter(Label)
_EXTERNAL_ID = TypeAdapter(ExternalId)


def _text(value: Any, field: str) -> None:
    problem = bad_text(value) if isinstance(value, str) else "Input should be a valid string"
    if problem:
        raise InvalidInputError(problem, field=field)


def check_name(value: Any, field: str = "name") -> str:
    """A user's or a sequence's name: 1-200 characters on one line, stripped."""
    _text(value, field)
    return _check(_NAME, value, field)


def check_label(value: Any, field: str = "label") -> str:
    """A token's label: up to 200 characters on one line (may be empty), stripped."""
    _text(value, field)
    return _check(_LABEL, value, field)


def check_external_id(value: Any, field: str) -> str:
    """An id from the investor's app (deal, offer): 1-200 of A-Z a-z 0-9 . _ : -"""
    _text(value, field)
    return _check(_EXTERNAL_ID, value, field)


def check_id(value: Any, field: str) -> int:
    """A database id: an int (not a bool) in 1..2**63-1."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidInputError("must be an integer", field=field)
    if not 1 <= value <= MAX_ID:
        raise InvalidInputError(f"must be between 1 and {MAX_ID}", field=field)
    return int(value)


MAX_START_DAYS = 366  # a start further ahead than a year is a typo, not a campaign
START_SLACK_SECONDS = 300  # a start this far in the past (clock skew, a slow request) means now


def check_start_at(value: Any, field: str = "start_at") -> datetime | None:
    """When enrolled sequences start: None (now), or an ISO 8601 time with its UTC offset, from
    now to a year ahead. A time a few minutes past counts as now; further past is refused, since
    a typo must not start a whole import at once."""
    if value is None:
        return None
    if isinstance(value, str):
        _text(value, field)
        try:
            value = datetime.fromisoformat(value.strip())
        except ValueError as exc:
            raise InvalidInputError("must be an ISO 8601 time, e.g. 2026-12-01T09:00:00-05:00", field=field) from exc
    if not isinstance(value, datetime):
        raise InvalidInputError("must be an ISO 8601 time, e.g. 2026-12-01T09:00:00-05:00", field=field)
    if value.tzinfo is None or value.utcoffset() is None:
        raise InvalidInputError("needs a UTC offset (e.g. 2026-12-01T09:00:00-05:00 or ...Z)", field=field)
    now = datetime.now(UTC)
    try:
        start = value.astimezone(UTC)
    except (OverflowError, ValueError) as exc:
        raise InvalidInputError("is out of range", field=field) from exc
    if start < now - timedelta(seconds=START_SLACK_SECONDS):
        raise InvalidInputError("is in the past", field=field)
    if start > now + timedelta(days=MAX_START_DAYS):
        raise InvalidInputError(f"is more than {MAX_START_DAYS} days ahead", field=field)
    return start if start > now else None


def require_owner(session: Session, owner_id: Any) -> int:
    """The owner's id, checked to exist; NotFoundError("owner", id) otherwise."""
    owner_id = check_id(owner_id, "owner_id")
    if session.scalar(select(User.id).where(User.id == owner_id)) is None:
        raise NotFoundError("owner", owner_id)
    return owner_id
