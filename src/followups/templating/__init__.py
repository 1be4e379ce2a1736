"""Sandboxed Jinja2 rendering of step templates against a deal.

Templates see `deal`, `seller` and `offer`. A template is checked when it is saved by rendering
it against a sample deal with strict undefined handling, so an unknown variable or a syntax error
is a validation error then, never a crash at send time. `deal.context` is free-form, so any key
under it is accepted (and renders empty when the deal lacks it).

Templates come from users, so a render is bounded: output is streamed and counted; every value a
template builds (operators, filters, methods, literals, `~`, macro and block buffers) is size-capped,
checked before the work where the work could be large; loop iterations, operations and allocated
characters are counted per render; a deadline is checked in every hook and per output chunk.
Passing any bound raises TemplateRenderError.
"""

from __future__ import annotations

import contextlib
import contextvars
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from jinja2 import TemplateError, Undefined

from followups.templating._errors import TemplateRenderError
from followups.templating._limits import (
    MAX_ALLOCATED,
    MAX_INT,
    MAX_ITEMS,
    MAX_LOOP_ITERATIONS,
    MAX_OPERATIONS,
    MAX_RENDERED_LENGTH,
    MAX_SOURCE_LENGTH,
    MAX_VALUE_SIZE,
    MAX_WIDTH,
    RENDER_TIMEOUT,
    VALIDATION_TIMEOUT,
    _Budget,
    _current_budget,
)
from followups.templating._sandbox import _env, _html_env


# Defined in a private module; named after the public one, where callers import it from.
TemplateRenderError.__module__ = __name__

# The limits are re-exported for reading. The sandbox reads them from _limits, so patching one
# here has no effect on it; render() and check() read MAX_SOURCE_LENGTH and VALIDATION_TIMEOUT
# from this module, and check() calls render() through it, so patching those here does apply.


# --- the data templates see ----------------------------------------------------------------------


class _FreeContext(dict):
    """deal.context: a missing key renders as empty instead of failing."""

    def __getitem__(self, key: str) -> Any:
        return dict.get(self, key, "")

    def __getattr__(self, key: str) -> Any:
        if key.startswith("__"):
            raise AttributeError(key)
        return self[key]


@dataclass(frozen=True)
class SellerView:
    name: str
    email: str | None
    phone: str | None
    timezone: str

    @property
    def first_name(self) -> str:
        return self.name.split()[0] if self.name.split() else ""

    @property
    def last_name(self) -> str:
        parts = self.name.split()
        return parts[-1] if len(parts) > 1 else ""


@dataclass(frozen=True)
class DealView:
    external_id: str
    property_address: str
    offer_amount: Decimal | None
    context: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class OfferView:
    amount: str  # formatted, e.g. "$250,000"


def format_amount(amount: Decimal | None) -> str:
    return "" if amount is None else f"${amount:,.0f}"


def build_context(deal: DealView, seller: SellerView) -> dict[str, Any]:
    deal_ns = {
        "external_id": deal.external_id,
        "property_address": deal.property_address,
        "offer_amount": format_amount(deal.offer_amount),
        "context": _FreeContext(deal.context or {}),
    }
    return {
        "deal": deal_ns,
        "seller": seller,
        "offer": OfferView(amount=format_amount(deal.offer_amount)),
    }


SAMPLE_CONTEXT = build_context(
    DealView(external_id="D-1", property_address="1 Sample St", offer_amount=Decimal("1")),
    SellerView(name="Sam Seller", email="sam@example.com", phone="+15555550100", timezone="UTC"),
)


# --- rendering -----------------------------------------------------------------------------------


def render(
    source: str,
    context: dict[str, Any],
    *,
    html: bool = False,
    max_chars: int = MAX_RENDERED_LENGTH,
    timeout: float = RENDER_TIMEOUT,
) -> str:
    """Render `source` by streaming it; fails as soon as the output passes `max_chars` characters."""
    if len(source) > MAX_SOURCE_LENGTH:
        raise TemplateRenderError(f"the template is longer than {MAX_SOURCE_LENGTH} characters")
    budget = _Budget(timeout)
    token = _current_budget.set(budget)
    chunks = None
    try:
        # Compiling folds constant filter calls, so it runs under the budget too. Its time is bounded
        # by the source length, so the render then gets the whole timeout.
        template = (_html_env if html else _env).from_string(source)
        budget.deadline = time.monotonic() + timeout
        chunks = template.generate(context)
        parts, length = [], 0
        for chunk in chunks:
            length += len(chunk)
            if length > max_chars:
                raise TemplateRenderError(f"the rendered text is longer than {max_chars} characters")
            budget.check_time()
            parts.append(chunk)
        return "".join(parts)
    except TemplateRenderError:
        raise
    except TemplateError as exc:
        raise TemplateRenderError(_describe(exc)) from exc
    except Exception as exc:  # a template can raise what Python can: 1/0, RecursionError...
        raise TemplateRenderError(f"template error: {str(exc)[:200] or type(exc).__name__}") from exc
    finally:
        if chunks is not None:
            chunks.close()
        _current_budget.reset(token)


_shared_deadline: contextvars.ContextVar[float | None] = contextvars.ContextVar("template_checks", default=None)


@contextlib.contextmanager
def validation_time_limit(seconds: float) -> Iterator[None]:
    """Templates checked inside share one deadline: a whole sequence gets `seconds`, not each template."""
    deadline, outer = time.monotonic() + seconds, _shared_deadline.get()
    token = _shared_deadline.set(deadline if outer is None else min(outer, deadline))
    try:
        yield
    finally:
        _shared_deadline.reset(token)


def check(source: str, *, html: bool = False, max_chars: int = MAX_RENDERED_LENGTH) -> None:
    """Raise TemplateRenderError if `source` would fail for any deal or passes a bound on the sample."""
    timeout, shared = VALIDATION_TIMEOUT, _shared_deadline.get()
    if shared is not None:
        timeout = min(timeout, shared - time.monotonic())
        if timeout <= 0:
            raise TemplateRenderError("template took too long")
    render(source, SAMPLE_CONTEXT, html=html, max_chars=max_chars, timeout=timeout)


def _describe(exc: TemplateError) -> str:
    lineno = getattr(exc, "lineno", None)
    where = f" (line {lineno})" if lineno else ""
    return f"template error{where}: {exc.message or exc}"


__all__ = [
    "MAX_RENDERED_LENGTH",
    "DealView",
    "SellerView",
    "TemplateRenderError",
    "Undefined",
    "build_context",
    "check",
    "render",
    "validation_time_limit",
]
