"""Sandboxed Jinja2 rendering of step templates against a deal.

Templates see `deal`, `seller` and `offer`. A template is checked when it is saved by rendering
it against a sample deal with strict undefined handling, so an unknown variable or a syntax error
is a validation error then, never a crash at send time. `deal.context` is free-form, so any key
under it is accepted (and renders empty when the deal lacks it).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from jinja2 import StrictUndefined, TemplateError, Undefined
from jinja2.sandbox import ImmutableSandboxedEnvironment, SecurityError

MAX_RENDERED_LENGTH = 100_000


class _BoundedSandbox(ImmutableSandboxedEnvironment):
    """The sandbox also bounds `*` and `**`: `{{ 'x' * 10**9 }}` must not exhaust memory on save."""

    intercepted_binops = frozenset(["*", "**"])

    def call_binop(self, context, operator, left, right):
        if operator == "**" and isinstance(right, int | float) and abs(right) > 100:
            raise SecurityError("exponent too large")
        if operator == "*":
            for seq, count in ((left, right), (right, left)):
                if isinstance(seq, str | list | tuple) and isinstance(count, int) and len(seq) * count > MAX_RENDERED_LENGTH:
                    raise SecurityError("repetition too large")
        return super().call_binop(context, operator, left, right)


_env = _BoundedSandbox(undefined=StrictUndefined, autoescape=False)
_html_env = _BoundedSandbox(undefined=StrictUndefined, autoescape=True)


class TemplateRenderError(ValueError):
    """A template that cannot be rendered; the message names the problem."""


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


def render(source: str, context: dict[str, Any], *, html: bool = False) -> str:
    env = _html_env if html else _env
    try:
        return env.from_string(source).render(context)
    except TemplateError as exc:
        raise TemplateRenderError(_describe(exc)) from exc


def check(source: str, *, html: bool = False) -> None:
    """Raise TemplateRenderError if `source` would fail for any deal."""
    render(source, SAMPLE_CONTEXT, html=html)


def _describe(exc: TemplateError) -> str:
    lineno = getattr(exc, "lineno", None)
    where = f" (line {lineno})" if lineno else ""
    return f"template error{where}: {exc.message or exc}"


__all__ = [
    "DealView",
    "SellerView",
    "TemplateRenderError",
    "Undefined",
    "build_context",
    "check",
    "render",
]
