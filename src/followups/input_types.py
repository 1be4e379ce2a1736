"""The field types of the product's inputs, and the checks behind them.

Each type is bounded by what PostgreSQL and the providers accept: bigint ids, numeric(14, 2)
amounts, text without NUL, UTF-8 without lone surrogates, JSONB without NaN, E.164 phone
numbers, Twilio Messaging Service SIDs, IANA time zones. `followups.inputs` builds the input models from them.
"""

from __future__ import annotations

import json
import re
import unicodedata
from decimal import Decimal
from functools import lru_cache
from typing import Annotated, Any
from zoneinfo import available_timezones

import phonenumbers
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    EmailStr,
    Field,
    StringConstraints,
    ValidationError,
    ValidatorFunctionWrapHandler,
    WrapValidator,
)
from pydantic_core import InitErrorDetails, PydanticCustomError

from followups import templating
from followups.steps import SEQUENCE_VALIDATION_TIMEOUT, SequenceSteps, Step

MAX_ID = 2**63 - 1  # PostgreSQL bigint
MAX_NAME = 200
MAX_DESCRIPTION = 10_000
MAX_ADDRESS = 500
MAX_EMAIL = 320
MAX_PHONE_INPUT = 32
MAX_TIMEZONE = 64
MAX_CONTEXT_BYTES = 64 * 1024
MAX_CONTEXT_DEPTH = 5
EXTERNAL_ID_PATTERN = r"^[A-Za-z0-9._:\-]+$"
# Raw input deeper than this is wrong anyway (context stops at 5, steps at 3): the text check
# stops there instead of following it, so cyclic or absurdly deep data cannot hang it.
_SCAN_DEPTH = 16
# No honest input holds this many values (context is at most 64 KB); YAML aliases can make a
# small file expand into billions of them.
_SCAN_BUDGET = 100_000
UNION_TAGS = {"EMAIL", "SMS", "WAIT"}
# "[0-9]" is ASCII only; phonenumbers would turn Arabic-Indic or full-width digits into ASCII
# ones and accept a number no carrier can dial as typed.
_PHONE_CHARS = re.compile(r"\+[0-9 ().\-]+")
PHONE_MESSAGE = "must be a phone number in E.164 form with ASCII digits, e.g. +15035550142"
_MESSAGING_SERVICE = re.compile(r"MG[0-9a-fA-F]{32}", re.ASCII)
MESSAGING_SERVICE_MESSAGE = "must be a Twilio Messaging Service SID: MG followed by 32 hex digits"


# -- single values ------------------------------------------------------------------------


def _single_line(value: str) -> str:
    for char in value:
        if unicodedata.category(char) in ("Cc", "Zl", "Zp"):
            raise PydanticCustomError("control_character", "must not contain control characters or line breaks")
    return value


def _not_bool(value: Any) -> Any:
    # bool is an int to Python and to pydantic's lax mode; an id of `true` is a mistake.
    if isinstance(value, bool):
        raise PydanticCustomError("int_type", "Input should be a valid integer")
    return value


@lru_cache(maxsize=1)
def _zones() -> frozenset[str]:
    # "localtime" names whatever the host is set to; it is not a place a seller lives in.
    return frozenset(available_timezones() | {"UTC"}) - {"localtime", "posixrules"}


def _known_zone(value: str) -> str:
    # A set lookup, never ZoneInfo(value): that would open "America" (a folder) or "../x".
    if len(value) > MAX_TIMEZONE or value not in _zones():
        raise PydanticCustomError("time_zone", "unknown time zone; use an IANA name such as America/New_York")
    return value


def _upper(value: Any) -> Any:
    return value.strip().upper() if isinstance(value, str) else value


def _us_state(value: str) -> str:
    from followups.scheduling.state_laws import STATE_NAMES

    if value not in STATE_NAMES:
        raise PydanticCustomError("us_state", "unknown US state; use its 2-letter USPS code, e.g. FL")
    return value


def _e164(value: str) -> str:
    value = value.strip()
    if len(value) > MAX_PHONE_INPUT or not value.isascii() or not _PHONE_CHARS.fullmatch(value):
        raise PydanticCustomError("phone", PHONE_MESSAGE)
    try:
        number = phonenumbers.parse(value, None)
    except phonenumbers.NumberParseException:
        raise PydanticCustomError("phone", PHONE_MESSAGE) from None
    # Possible, not valid: test and fictional ranges (555) have the right length and are fine.
    if not phonenumbers.is_possible_number(number):
        raise PydanticCustomError("phone", PHONE_MESSAGE)
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


def _messaging_service(value: str) -> str:
    value = value.strip()
    if not _MESSAGING_SERVICE.fullmatch(value):
        raise PydanticCustomError("messaging_service_sid", MESSAGING_SERVICE_MESSAGE)
    # Twilio writes the hex in lower case, and inbound webhooks are matched on the exact SID.
    return "MG" + value[2:].lower()


def _email_length(value: Any) -> Any:
    if isinstance(value, str) and len(value) > MAX_EMAIL:
        raise PydanticCustomError("string_too_long", f"String should have at most {MAX_EMAIL} characters")
    return value


def _json_depth(value: Any, limit: int) -> None:
    """Raise when containers nest deeper than `limit` or hold something JSON cannot."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children = list(item.values())
            if any(not isinstance(key, str) for key in item):
                raise PydanticCustomError("json_type", "keys must be strings")
        elif isinstance(item, list | tuple):
            children = list(item)
        elif item is None or isinstance(item, str | int | float):
            continue
        else:
            raise PydanticCustomError("json_type", "must hold only JSON values (objects, lists, strings, numbers, booleans, null)")
        if depth > limit:
            raise PydanticCustomError("json_depth", f"must be at most {limit} levels deep")
        stack.extend((child, depth + 1) for child in children)


def _bounded_json(value: dict[str, Any]) -> dict[str, Any]:
    _json_depth(value, MAX_CONTEXT_DEPTH)
    try:
        text = json.dumps(value, allow_nan=False, ensure_ascii=False, separators=(",", ":"))
    except ValueError:  # NaN/Infinity, or an integer too long to print
        raise PydanticCustomError("json_number", "numbers must be finite and of reasonable size") from None
    if len(text.encode("utf-8")) > MAX_CONTEXT_BYTES:
        raise PydanticCustomError("json_size", f"must be at most {MAX_CONTEXT_BYTES // 1024} KB as JSON")
    return value


Name = Annotated[
    str, StringConstraints(strip_whitespace=True, min_length=1, max_length=MAX_NAME), AfterValidator(_single_line)
]
Label = Annotated[str, StringConstraints(strip_whitespace=True, max_length=MAX_NAME), AfterValidator(_single_line)]
Description = Annotated[str, StringConstraints(max_length=MAX_DESCRIPTION)]
Address = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=MAX_ADDRESS)]
ExternalId = Annotated[
    str, StringConstraints(strip_whitespace=True, min_length=1, max_length=MAX_NAME, pattern=EXTERNAL_ID_PATTERN)
]
# Nested so that the bounds stay plain integer bounds in the JSON schema.
Id = Annotated[Annotated[int, Field(ge=1, le=MAX_ID)], BeforeValidator(_not_bool)]
Amount = Annotated[Decimal, Field(ge=0, max_digits=14, decimal_places=2, allow_inf_nan=False)]
Phone = Annotated[str, AfterValidator(_e164), Field(json_schema_extra={"examples": ["+15035550142"]})]
MessagingServiceSid = Annotated[
    str, AfterValidator(_messaging_service), Field(json_schema_extra={"examples": ["MG" + "0123456789abcdef" * 2]})
]
UsState = Annotated[
    str, BeforeValidator(_upper), AfterValidator(_us_state), Field(json_schema_extra={"examples": ["FL"]})
]
TimeZone = Annotated[str, AfterValidator(_known_zone), Field(json_schema_extra={"examples": ["America/New_York"]})]
Email = Annotated[EmailStr, BeforeValidator(_email_length)]
Context = Annotated[dict[str, Any], AfterValidator(_bounded_json)]


# -- text anywhere in an input --------------------------------------------------------------


def bad_text(value: str) -> str | None:
    """Why PostgreSQL could not store `value`, or None."""
    if "\x00" in value:
        return "must not contain NUL characters"
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return "must be valid Unicode text (no lone surrogates)"
    return None


def find_bad_text(data: Any) -> tuple[tuple[Any, ...], str, Any] | None:
    """(location, message, value) of the first string PostgreSQL cannot store, keys included."""
    stack: list[tuple[Any, tuple[Any, ...]]] = [(data, ())]
    budget = _SCAN_BUDGET
    while stack:
        item, loc = stack.pop()
        budget -= 1
        if budget < 0:
            return (), "the input holds too many values", None
        if isinstance(item, BaseModel):
            item = dict(item)
        if isinstance(item, str):
            problem = bad_text(item)
            if problem:
                return loc, problem, item
        elif len(loc) < _SCAN_DEPTH and isinstance(item, dict):
            for key, child in reversed(list(item.items())):
                problem = bad_text(key) if isinstance(key, str) else None
                if problem:
                    # The parent's location: the key itself is not printable as a path.
                    return loc, f"keys {problem}", key
                stack.append((child, (*loc, key)))
        elif len(loc) < _SCAN_DEPTH and isinstance(item, list | tuple):
            stack.extend((child, (*loc, index)) for index, child in reversed(list(enumerate(item))))
    return None


# -- steps --------------------------------------------------------------------------------


def _step_error(loc: tuple[Any, ...], message: str, value: Any) -> ValidationError:
    error = InitErrorDetails(type=PydanticCustomError("step_type", message), loc=loc, input=value)
    return ValidationError.from_exception_data("steps", [error])


def _step_types(value: Any) -> Any:
    """Accept "email" as well as "EMAIL" (files written by hand use both), and name a missing
    or unknown type as `steps.N.type` here, so that HTTP's error list says the same."""
    if not isinstance(value, list):
        return value
    steps = []
    for index, item in enumerate(value):
        if isinstance(item, BaseModel):
            steps.append(item)
            continue
        if not isinstance(item, dict):
            raise _step_error((index,), "each step must be a mapping with a type", item)
        kind = item.get("type")
        if kind is None:
            raise _step_error((index, "type"), "Field required", item)
        if not isinstance(kind, str) or kind.upper() not in UNION_TAGS:
            raise _step_error((index, "type"), "must be one of EMAIL, SMS or WAIT", kind)
        steps.append({**item, "type": kind.upper()})
    return steps


def _step_rules(steps: list[Any]) -> list[Any]:
    """The rules across steps (no trailing WAIT, no two WAITs in a row), with the step's index
    as the error location so that every entry point names `steps.N`."""
    try:
        SequenceSteps(steps=steps)
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        message = first["msg"].removeprefix("Value error, ")
        loc: tuple[Any, ...] = tuple(first["loc"])[1:] if first["loc"][:1] == ("steps",) else ()
        if message.startswith("steps.") and ": " in message:
            where, _, message = message.partition(": ")
            parts = where.split(".")[1:]  # "steps.3" or "steps.3.subject"
            if parts and parts[0].isdigit():
                loc = tuple(int(part) if part.isdigit() else part for part in parts)
        error = InitErrorDetails(type=PydanticCustomError("step_rule", message), loc=loc, input=steps)
        raise ValidationError.from_exception_data("steps", [error]) from None
    return steps


def _time_limited(value: Any, handler: ValidatorFunctionWrapHandler) -> Any:
    # All templates of one sequence share one deadline, as in `steps.parse_steps`.
    with templating.validation_time_limit(SEQUENCE_VALIDATION_TIMEOUT):
        return handler(value)


StepList = Annotated[
    list[Step],
    Field(min_length=1, max_length=100, description="EMAIL, SMS and WAIT steps, in order"),
    BeforeValidator(_step_types),
    AfterValidator(_step_rules),
    WrapValidator(_time_limited),
]
