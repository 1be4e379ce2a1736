"""Sequence steps and the sequence definition, validated with pydantic."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

from datetime import timedelta
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator

from followups import templating
from followups.errors import InvalidInputError
from followups.sequence_options import SendTimeOfDay

SMS_MAX_CHARS = 1600
# All templates of one sequence share this, so 100 slow steps cost what one does.
SEQUENCE_VALIDATION_TIMEOUT = 2.0
MAX_WAIT_DAYS = 365
MAX_BUSINESS_DAYS = 260  # about a year of working days
MIN_VARIANTS, MAX_VARIANTS = 2, 5


class _Step(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _plain_template(cls, value: str | None, info: ValidationInfo) -> str | None:
    if value is not None:
        _check_template(value, info, html=False)
    return value


def _html_template(cls, value: str | None, info: ValidationInfo) -> str | None:
    if value is not None:
        _check_template(value, info, html=True)
    return value


def _sms_template(cls, value: str, info: ValidationInfo) -> str:
    if value:
        _check_template(value, info, html=False, max_chars=SMS_MAX_CHARS)
    return value


class _Variant(BaseModel):
    """One version of a message step's content (an A/B test): each enrollment gets one, drawn by
    `weight` (`draw_variant`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(
        min_length=1, max_length=40, pattern=r"^[\w][\w .-]*$",
        description="Unique within the step; recorded in the sent events and reported by analytics",
    )
    weight: int = Field(default=1, ge=1, le=1000, description="Relative share of the enrollments that get it")


class EmailVariant(_Variant):
    subject: str = Field(
        default="", min_length=1, max_length=998,
        description='Required unless the email is reply-threaded; then "Re: <previous subject>" when left out',
    )
    text: str | None = None
    html: str | None = None

    _plain = field_validator("subject", "text")(classmethod(_plain_template))
    _html = field_validator("html")(classmethod(_html_template))

    @model_validator(mode="after")
    def _has_body(self) -> EmailVariant:
        if not (self.text or self.html):
            raise ValueError("an EMAIL variant needs a text or an html body")
        return self


class SmsVariant(_Variant):
    body: str = Field(min_length=1, max_length=SMS_MAX_CHARS)

    _body = field_validator("body")(classmethod(_sms_template))


_VARIANTS_DESCRIPTION = (
    f"{MIN_VARIANTS} to {MAX_VARIANTS} versions of the content (an A/B test) instead of the step's own; "
    "each enrollment gets one, drawn by weight"
)


class EmailStep(_Step):
    type: Literal["EMAIL"] = "EMAIL"
    # Left out (""), a reply-threaded step uses "Re: " + the previous email's subject. A string
    # rather than None: readers that only show a step's subject keep working.
    subject: str = Field(
        default="", min_length=1, max_length=998,
        description='Required unless the email is reply-threaded; then "Re: <previous subject>" when left out',
    )
    text: str | None = None
    html: str | None = None
    # "reply": sent in the thread of the enrollment's previous email (In-Reply-To/References).
    # None: "new" for the sequence's first EMAIL, "reply" for the later ones (`email_thread`).
    thread: Literal["reply", "new"] | None = None
    variants: list[EmailVariant] | None = Field(
        default=None, min_length=MIN_VARIANTS, max_length=MAX_VARIANTS, description=_VARIANTS_DESCRIPTION
    )
    at: SendTimeOfDay = None

    _plain = field_validator("subject", "text")(classmethod(_plain_template))
    _html = field_validator("html")(classmethod(_html_template))

    @model_validator(mode="after")
    def _has_body(self) -> EmailStep:
        # A step with variants is checked by `SequenceSteps`, which can name the field.
        if not self.variants and not (self.text or self.html):
            raise ValueError("an EMAIL step needs a text or an html body")
        return self


class SmsStep(_Step):
    type: Literal["SMS"] = "SMS"
    # "" only in a step with variants; `SequenceSteps` requires it otherwise.
    body: str = Field(default="", min_length=1, max_length=SMS_MAX_CHARS)
    variants: list[SmsVariant] | None = Field(
        default=None, min_length=MIN_VARIANTS, max_length=MAX_VARIANTS, description=_VARIANTS_DESCRIPTION
    )
    at: SendTimeOfDay = None

    _body = field_validator("body")(classmethod(_sms_template))


class WaitStep(_Step):
    type: Literal["WAIT"] = "WAIT"
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    # A follow-up waits days or weeks; a year is a generous bound that keeps dates valid.
    days: float = Field(default=0, ge=0, le=MAX_WAIT_DAYS)
    hours: float = Field(default=0, ge=0, le=MAX_WAIT_DAYS * 24)
    minutes: float = Field(default=0, ge=0, le=MAX_WAIT_DAYS * 24 * 60)
    seconds: float = Field(default=0, ge=0, le=MAX_WAIT_DAYS * 24 * 3600)
    # Instead of a calendar duration: weekdays (minus the sequence's skipped holidays) in the
    # recipient's zone, ending at the same local time (followups.scheduling).
    business_days: int | None = Field(default=None, ge=1, le=MAX_BUSINESS_DAYS)

    @field_validator("business_days")
    @classmethod
    def _one_form(cls, value: int | None, info: ValidationInfo) -> int | None:
        if value is not None and any(info.data.get(part) for part in ("days", "hours", "minutes", "seconds")):
            raise ValueError("a WAIT takes either business_days or days/hours/minutes/seconds, not both")
        return value

    @property
    def duration(self) -> timedelta:
        """The calendar duration (zero for a business-day wait: its end depends on the calendar)."""
        return timedelta(days=self.days, hours=self.hours, minutes=self.minutes, seconds=self.seconds)

    @property
    def written(self) -> str:
        """The wait as the sequence gives it ("3 days", "1 hour 30 minutes", "5 business days")."""
        if self.business_days is not None:
            return f"{self.business_days} business day{'s' * (self.business_days != 1)}"
        parts = [(self.days, "day"), (self.hours, "hour"), (self.minutes, "minute"), (self.seconds, "second")]
        return " ".join(f"{value:g} {unit}{'s' * (value != 1)}" for value, unit in parts if value)

    @model_validator(mode="after")
    def _positive(self) -> WaitStep:
        if self.business_days is not None:
            return self
        if self.duration <= timedelta(0):
            raise ValueError("a WAIT must last longer than zero")
        if self.duration > timedelta(days=MAX_WAIT_DAYS):
            raise ValueError(f"a WAIT can last at most {MAX_WAIT_DAYS} days")
        return self


Step = Annotated[Union[EmailStep, SmsStep, WaitStep], Field(discriminator="type")]


def channel_of(step: Any) -> str | None:
    """"email" or "sms" for a message step; None for a WAIT."""
    if isinstance(step, EmailStep):
        return "email"
    if isinstance(step, SmsStep):
        return "sms"
    return None


class SequenceSteps(BaseModel):
    """The ordered steps of a sequence, with the rules that make a sequence runnable."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    steps: list[Step] = Field(min_length=1, max_length=100)

    @field_validator("steps", mode="before")
    @classmethod
    def _upper_types(cls, value: Any) -> Any:
        # Accept "email" as well as "EMAIL": files written by hand use both.
        if isinstance(value, list):
            for index, item in enumerate(value):  # a WAIT's `at` gets a reason, not just "unknown field"
                if isinstance(item, dict) and str(item.get("type")).upper() == "WAIT" and "at" in item:
                    raise _StepRuleError(f"{index}.at", "a WAIT has no send time; put `at` on the message step after it")
            return [
                {**item, "type": item["type"].upper()}
                if isinstance(item, dict) and isinstance(item.get("type"), str)
                else item
                for item in value
            ]
        return value

    @model_validator(mode="after")
    def _well_formed(self) -> SequenceSteps:
        for index, step in enumerate(self.steps):
            if isinstance(step, EmailStep | SmsStep):
                _check_variants(step, index)
            if isinstance(step, EmailStep):
                first = not any(isinstance(s, EmailStep) for s in self.steps[:index])
                if first and step.thread == "reply":
                    raise _StepRuleError(f"{index}.thread", "the first EMAIL has no earlier email to reply to")
                new_thread = email_thread(self.steps, index) == "new"
                for where, content in _contents(step, index):
                    if not content.subject and new_thread:
                        raise _StepRuleError(f"{where}.subject", "required: only a reply-threaded EMAIL can leave out its subject")
            if isinstance(step, WaitStep):
                if index == len(self.steps) - 1:
                    raise _StepRuleError(index, "a sequence cannot end with a WAIT")
                if index > 0 and isinstance(self.steps[index - 1], WaitStep):
                    raise _StepRuleError(index, "two WAIT steps in a row; merge them into one")
        return self


def _contents(step: EmailStep | SmsStep, index: int) -> list[tuple[str, Any]]:
    """(path, content) of each version of a message step: its variants, or the step itself."""
    if step.variants:
        return [(f"{index}.variants.{j}", variant) for j, variant in enumerate(step.variants)]
    return [(str(index), step)]


def _check_variants(step: EmailStep | SmsStep, index: int) -> None:
    if not step.variants:
        if isinstance(step, SmsStep) and not step.body:
            raise _StepRuleError(f"{index}.body", "Field required")
        return
    own = ("subject", "text", "html") if isinstance(step, EmailStep) else ("body",)
    for name in own:
        if getattr(step, name):
            raise _StepRuleError(f"{index}.{name}", "a step with variants takes its content from each variant, not its own")
    seen: set[str] = set()
    for j, variant in enumerate(step.variants):
        if variant.name.casefold() in seen:
            raise _StepRuleError(f"{index}.variants.{j}.name", f"duplicate variant name {variant.name!r}")
        seen.add(variant.name.casefold())


def draw_variant(step: Any, reply_token: str, step_index: int) -> Any:
    """The variant of a message step this enrollment gets, or None for a step without variants.

    A pure function of the enrollment's reply token and the step's place: a retry, a re-run or
    a second worker draws the same one without storing it first, and an enrollment keeps its
    sequence version, so its variants never change under it. Steps draw independently.
    """
    variants = getattr(step, "variants", None)
    if not variants:
        return None
    digest = hashlib.sha256(f"followups-variant:{reply_token}:{step_index}".encode()).digest()
    point = int.from_bytes(digest[:8], "big") % sum(v.weight for v in variants)
    for variant in variants:
        if point < variant.weight:
            return variant
        point -= variant.weight
    raise AssertionError("unreachable")  # pragma: no cover


def with_variant(step: Any, variant: Any) -> Any:
    """The step as sent with `variant`'s content: a plain EMAIL/SMS step (the step when None)."""
    if variant is None:
        return step
    content = variant.model_dump(exclude={"name", "weight"})
    return step.model_copy(update={**content, "variants": None})


class _StepRuleError(ValueError):
    def __init__(self, where: int | str, message: str):
        super().__init__(f"steps.{where}: {message}")


def email_thread(steps: list[Any], index: int) -> str:
    """"reply" or "new": the EMAIL step's own `thread`, else "new" for the first EMAIL only."""
    step = steps[index]
    if step.thread is not None:
        return step.thread
    return "reply" if any(isinstance(s, EmailStep) for s in steps[:index]) else "new"


# Set while a web server parses a request body on its event loop: rendering templates there
# would stall every other request, so the core renders them again off the loop (`checked_templates`).
_templates_deferred: ContextVar[bool] = ContextVar("templates_deferred", default=False)


@contextmanager
def _deferring(deferred: bool) -> Iterator[None]:
    token = _templates_deferred.set(deferred)
    try:
        yield
    finally:
        _templates_deferred.reset(token)


def deferred_templates():
    """Templates validated inside are only parsed, not rendered (a web server's event loop)."""
    return _deferring(True)


def checked_templates():
    """Templates validated inside are rendered, even where a caller deferred them."""
    return _deferring(False)


def _check_template(
    source: str, info: ValidationInfo, *, html: bool, max_chars: int = templating.MAX_RENDERED_LENGTH
) -> None:
    # Stored steps were rendered once when saved; reading them back must not pay for it again.
    if info.context and info.context.get("trusted") or _templates_deferred.get():
        return
    try:
        templating.check(source, html=html, max_chars=max_chars)
    except templating.TemplateRenderError as exc:
        raise ValueError(str(exc)) from exc


def parse_steps(raw: Any) -> list[Step]:
    """Validate raw steps (a list of dicts) and return them, or raise InvalidInputError.

    The error names the first wrong field as a dotted path, e.g. `steps.2.body`.
    """
    try:
        with checked_templates(), templating.validation_time_limit(SEQUENCE_VALIDATION_TIMEOUT):
            return list(SequenceSteps.model_validate({"steps": raw}).steps)
    except ValidationError as exc:
        raise invalid_input_from(exc) from exc


def load_stored_steps(raw: Any) -> list[Step]:
    """Rebuild steps saved by `steps_to_json` without rendering their templates again.

    Only for steps whose templates were checked when they were saved: the structural rules
    still apply, but the templates are trusted.
    """
    try:
        return list(SequenceSteps.model_validate({"steps": raw}, context={"trusted": True}).steps)
    except ValidationError as exc:
        raise invalid_input_from(exc) from exc


def invalid_input_from(exc: ValidationError, prefix: str = "") -> InvalidInputError:
    first = exc.errors(include_url=False)[0]
    path = [str(part) for part in first["loc"]]
    message = first["msg"].removeprefix("Value error, ")
    # Rule errors from the sequence validator carry their own step path in the message.
    if message.startswith("steps.") and ":" in message:
        location, _, message = message.partition(": ")
        path = location.split(".")
    if first["type"] in {"union_tag_invalid", "union_tag_not_found"}:
        path.append("type")
    # Drop the union tag pydantic inserts (steps.0.EMAIL.subject -> steps.0.subject).
    path = [part for part in path if part not in {"EMAIL", "SMS", "WAIT"}]
    field = ".".join(([prefix] if prefix else []) + path)
    return InvalidInputError(message, field=field or None)


def steps_to_json(steps: list[Step]) -> list[dict[str, Any]]:
    # Fields left at a default added later are not stored (a calendar WAIT's business_days, an
    # EMAIL's thread, variants, `at`), so unchanged steps compare equal to those stored before them.
    return [_dump(step) for step in steps]


def _dump(model: BaseModel) -> dict[str, Any]:
    data = model.model_dump(exclude=_unset_new_fields(model) or None)
    if getattr(model, "variants", None):
        data["variants"] = [_dump(variant) for variant in model.variants]
    return data


def _unset_new_fields(step: BaseModel) -> set[str]:
    if isinstance(step, WaitStep):
        return {"business_days"} if step.business_days is None else set()
    unset = set()
    if isinstance(step, EmailStep | SmsStep) and not step.variants:
        unset.add("variants")
    # An EMAIL's thread and a message's send time `at`: stored when given.
    unset |= {name for name in ("thread", "at") if hasattr(step, name) and getattr(step, name) is None}
    # "" is how a left-out subject (and a step with variants' body) is held; stored, it would not load.
    for name in ("subject", "body"):
        if hasattr(step, name) and not getattr(step, name):
            unset.add(name)
    return unset
