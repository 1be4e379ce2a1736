"""Sequence step validation (followups.steps) and sandboxed template rendering (followups.templating)."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal
from typing import Any

import pytest

from followups import templating
from followups.errors import InvalidInputError
from followups.steps import (
    SMS_MAX_CHARS,
    EmailStep,
    SmsStep,
    WaitStep,
    load_stored_steps,
    parse_steps,
    steps_to_json,
)
from followups.templating import DealView, SellerView, TemplateRenderError, build_context, render

EMAIL: dict[str, Any] = {
    "type": "EMAIL",
    "subject": "Our offer on {{ deal.property_address }}",
    "text": "Hi {{ seller.first_name }}, we offer {{ offer.amount }}.",
}
HTML_EMAIL: dict[str, Any] = {
    "type": "EMAIL",
    "subject": "Following up",
    "html": "<p>Hi {{ seller.name }}</p>",
}
WAIT: dict[str, Any] = {"type": "WAIT", "days": 2}
SMS: dict[str, Any] = {"type": "SMS", "body": "Hi {{ seller.first_name }}, still interested? {{ offer.amount }}"}


def _invalid(raw: Any) -> InvalidInputError:
    with pytest.raises(InvalidInputError) as info:
        parse_steps(raw)
    return info.value


# --- valid sequences -----------------------------------------------------------------------


def test_valid_sequence_parses() -> None:
    steps = parse_steps([EMAIL, WAIT, HTML_EMAIL, {"type": "WAIT", "hours": 6, "minutes": 30}, SMS])

    assert [type(step) for step in steps] == [EmailStep, WaitStep, EmailStep, WaitStep, SmsStep]
    assert steps[0].subject == EMAIL["subject"] and steps[0].text == EMAIL["text"] and steps[0].html is None
    assert steps[1].duration == timedelta(days=2)
    assert steps[3].duration == timedelta(hours=6, minutes=30)
    assert steps[4].body == SMS["body"]


def test_lower_case_types_are_accepted() -> None:
    steps = parse_steps([{**EMAIL, "type": "email"}, {**WAIT, "type": "wait"}, {**SMS, "type": "Sms"}])
    assert [step.type for step in steps] == ["EMAIL", "WAIT", "SMS"]


def test_sms_at_the_length_limit_is_accepted() -> None:
    assert parse_steps([{"type": "SMS", "body": "x" * SMS_MAX_CHARS}])[0].body == "x" * SMS_MAX_CHARS


def test_steps_round_trip_through_json() -> None:
    steps = parse_steps([EMAIL, WAIT, SMS])
    assert parse_steps(steps_to_json(steps)) == steps


def test_stored_steps_load_without_rendering_templates(monkeypatch: pytest.MonkeyPatch) -> None:
    stored = steps_to_json(parse_steps([EMAIL, WAIT, HTML_EMAIL, WAIT, SMS]))

    def no_rendering(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("a stored template was rendered again")

    monkeypatch.setattr(templating, "check", no_rendering)
    monkeypatch.setattr(templating, "render", no_rendering)
    loaded = load_stored_steps(stored)
    assert [type(step) for step in loaded] == [EmailStep, WaitStep, EmailStep, WaitStep, SmsStep]
    assert steps_to_json(loaded) == stored
    with pytest.raises(RuntimeError, match="rendered again"):  # saving still renders
        parse_steps(stored)


def test_stored_steps_still_follow_the_sequence_rules() -> None:
    with pytest.raises(InvalidInputError) as info:
        load_stored_steps([SMS, WAIT])
    assert info.value.field == "steps.1"
    with pytest.raises(InvalidInputError) as info:
        load_stored_steps([{"type": "FAX"}])
    assert info.value.field == "steps.0.type"


def test_deal_context_keys_are_free_form() -> None:
    # deal.context is free-form: any key passes validation (the sample deal has none).
    parse_steps([{**EMAIL, "text": "{{ deal.context.agent_name }} {{ deal.context['anything'] }}"}])


# --- invalid sequences ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        pytest.param([], "steps", id="no-steps"),
        pytest.param(None, "steps", id="not-a-list"),
        pytest.param([EMAIL, {"type": "WAIT"}, SMS], "steps.1", id="zero-wait-default"),
        pytest.param([EMAIL, {"type": "WAIT", "days": 0, "seconds": 0}, SMS], "steps.1", id="zero-wait"),
        pytest.param([EMAIL, {"type": "WAIT", "hours": -1}, SMS], "steps.1.hours", id="negative-wait"),
        pytest.param([EMAIL, WAIT, {"type": "SMS"}], "steps.2.body", id="sms-without-body"),
        pytest.param([EMAIL, WAIT, {"type": "SMS", "body": ""}], "steps.2.body", id="sms-empty-body"),
        pytest.param([EMAIL, WAIT, {"type": "SMS", "body": "x" * (SMS_MAX_CHARS + 1)}], "steps.2.body",
                     id="sms-too-long"),
        pytest.param([EMAIL, WAIT, WAIT, SMS], "steps.2", id="two-waits-in-a-row"),
        pytest.param([EMAIL, WAIT], "steps.1", id="wait-last"),
        pytest.param([EMAIL, {"type": "FAX", "body": "x"}], "steps.1.type", id="unknown-type"),
        pytest.param([EMAIL, {"body": "x"}], "steps.1.type", id="missing-type"),
        pytest.param([{"type": "EMAIL", "subject": "s"}], "steps.0", id="email-without-body"),
        pytest.param([{"type": "EMAIL", "subject": "s", "text": "", "html": ""}], "steps.0",
                     id="email-empty-bodies"),
        pytest.param([{**EMAIL, "subject": ""}], "steps.0.subject", id="email-empty-subject"),
        pytest.param([{**EMAIL, "text": "{{ deal.nope }}"}], "steps.0.text", id="unknown-variable-text"),
        pytest.param([{**HTML_EMAIL, "html": "<p>{{ deal.nope }}</p>"}], "steps.0.html", id="unknown-variable-html"),
        pytest.param([{**EMAIL, "subject": "{{ seller.nope }}"}], "steps.0.subject",
                     id="unknown-variable-subject"),
        pytest.param([EMAIL, WAIT, {"type": "SMS", "body": "{{ dealer.name }}"}], "steps.2.body",
                     id="unknown-variable-sms"),
        pytest.param([{**EMAIL, "text": "Hi {{ seller.first_name "}], "steps.0.text", id="syntax-error"),
        pytest.param([{**EMAIL, "text": "{% if %}x{% endif %}"}], "steps.0.text", id="syntax-error-block"),
        pytest.param([{**EMAIL, "priority": "high"}], "steps.0.priority", id="extra-field-email"),
        pytest.param([EMAIL, {**WAIT, "weeks": 1}, SMS], "steps.1.weeks", id="extra-field-wait"),
        pytest.param([EMAIL, "SMS"], "steps.1", id="step-not-an-object"),
    ],
)
def test_invalid_sequences_name_the_field(raw: Any, field: str) -> None:
    error = _invalid(raw)
    assert error.field == field
    assert error.message
    assert str(error).startswith(f"{field}: ")


def test_rule_errors_explain_themselves() -> None:
    assert "WAIT" in _invalid([EMAIL, WAIT, WAIT, SMS]).message
    assert "end with a WAIT" in _invalid([EMAIL, WAIT]).message
    assert "text or an html" in _invalid([{"type": "EMAIL", "subject": "s"}]).message


def test_unknown_variable_message_names_it() -> None:
    assert "nope" in _invalid([{**EMAIL, "text": "{{ deal.nope }}"}]).message


def test_sandbox_escape_is_rejected_at_validation() -> None:
    error = _invalid([{**EMAIL, "text": "{{ ''.__class__.__mro__[1].__subclasses__() }}"}])
    assert error.field == "steps.0.text"
    assert "unsafe" in error.message


def test_too_many_steps() -> None:
    assert _invalid([SMS] * 101).field == "steps"


# --- rendering -----------------------------------------------------------------------------


@pytest.fixture
def deal() -> DealView:
    return DealView(
        external_id="D-42",
        property_address="12 Elm St",
        offer_amount=Decimal("250000"),
        context={"agent_name": "Kim"},
    )


@pytest.fixture
def seller() -> SellerView:
    return SellerView(name="Jane Q Doe", email="jane@seller.test", phone="+15558675310",
                      timezone="America/New_York")


def test_render_with_real_values(deal: DealView, seller: SellerView) -> None:
    context = build_context(deal, seller)
    source = ("{{ seller.first_name }}|{{ seller.last_name }}|{{ seller.name }}|{{ deal.external_id }}|"
              "{{ deal.property_address }}|{{ deal.offer_amount }}|{{ offer.amount }}|{{ deal.context.agent_name }}")

    assert render(source, context) == "Jane|Doe|Jane Q Doe|D-42|12 Elm St|$250,000|$250,000|Kim"


def test_single_word_name_has_no_last_name(deal: DealView) -> None:
    context = build_context(deal, SellerView(name="Cher", email=None, phone=None, timezone="UTC"))
    assert render("[{{ seller.first_name }}][{{ seller.last_name }}]", context) == "[Cher][]"


@pytest.mark.parametrize(
    ("amount", "expected"),
    [(Decimal("250000"), "$250,000"), (Decimal("1234567.89"), "$1,234,568"), (None, "")],
)
def test_offer_amount_formatting(deal: DealView, seller: SellerView, amount: Decimal | None, expected: str) -> None:
    context = build_context(DealView(deal.external_id, deal.property_address, amount), seller)
    assert render("{{ offer.amount }}", context) == expected


def test_missing_context_key_renders_empty(deal: DealView, seller: SellerView) -> None:
    context = build_context(deal, seller)
    assert render("[{{ deal.context.nope }}][{{ deal.context['nope'] }}]", context) == "[][]"


def test_html_is_autoescaped_but_text_is_not(deal: DealView, seller: SellerView) -> None:
    context = build_context(deal, SellerView(name="<b>Jane</b> Doe", email=None, phone=None, timezone="UTC"))

    assert render("<p>Hi {{ seller.name }}</p>", context, html=True) == "<p>Hi &lt;b&gt;Jane&lt;/b&gt; Doe</p>"
    assert render("Hi {{ seller.name }}", context) == "Hi <b>Jane</b> Doe"


def test_unknown_variable_fails_at_render(deal: DealView, seller: SellerView) -> None:
    with pytest.raises(TemplateRenderError, match="nope"):
        render("{{ deal.nope }}", build_context(deal, seller))


@pytest.mark.parametrize(
    "source",
    [
        "{{ ''.__class__ }}",
        "{{ ''.__class__.__mro__[1].__subclasses__() }}",
        "{{ seller.__class__.__init__.__globals__ }}",
        "{{ deal.context.__class__ }}",
        "{{ offer.amount.format.__globals__ }}",
        "{{ deal.context.update({'x': 1}) }}",  # immutable sandbox: no mutating the deal
    ],
)
def test_sandbox_blocks_unsafe_access(deal: DealView, seller: SellerView, source: str) -> None:
    with pytest.raises((TemplateRenderError, ValueError)):
        render(source, build_context(deal, seller))
    with pytest.raises(TemplateRenderError):
        templating.check(source)


def test_the_sandbox_bounds_repetition_and_exponents():
    from followups.templating import TemplateRenderError, check

    for source in ("{{ 'x' * 10**9 }}", "{{ 2 ** 100000 }}", "{{ [1] * 1000000 }}"):
        with pytest.raises(TemplateRenderError):
            check(source)
    check("{{ '-' * 20 }}")


@pytest.mark.parametrize("wait", [{"days": 1e300}, {"days": float("inf")}, {"days": 366}, {"days": 200, "hours": 24 * 200}])
def test_absurd_waits_are_validation_errors(wait):
    with pytest.raises(InvalidInputError) as info:
        parse_steps([{"type": "SMS", "body": "x"}, {"type": "WAIT", **wait}, {"type": "SMS", "body": "y"}])
    assert info.value.field.startswith("steps.1")
