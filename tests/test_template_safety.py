"""Step templates cannot hurt: output, work and time of a render are bounded, at save and at send."""

from __future__ import annotations

import threading
import time
import tracemalloc
from collections.abc import Callable
from typing import Any

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from api_support import ApiUser, make_client, new_api_user
from followups import steps, templating
from followups.errors import InvalidInputError
from followups.steps import SMS_MAX_CHARS, parse_steps
from followups.templating import SAMPLE_CONTEXT, TemplateRenderError, check, render
from support import unique

POWER_TOWER = "{{ ((((9**100)**100)**100)**100) > 1 }}"
HUGE_CENTER = "{{ 'x'|center(50000000) }}"
HUGE_PERCENT_WIDTH = "{{ '%050000000d'|format(1) }}"
LOOP_OF_BIG_STRINGS = "{% for i in range(1000) %}{{ 'x'*99999 }}{% endfor %}"
# Within every size cap, but each iteration walks a 15k-item structure: only the deadline stops it.
SLOW = (
    "{% set xs = range(1000)|list %}{% for i in range(1000) %}{% for j in range(9) %}"
    "{% set y = [xs, xs, xs, xs, xs, xs, xs, xs, xs, xs, xs, xs, xs, xs, xs] %}{% endfor %}{% endfor %}"
)


def finishes(seconds: float, fn: Callable[..., Any], *args: Any) -> dict[str, Any]:
    """Run fn in a daemon thread and fail (rather than hang) if it is still running after `seconds`."""
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["value"] = fn(*args)
        except BaseException as exc:  # noqa: BLE001 - the caller inspects it
            outcome["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"still running after {seconds} s"
    return outcome


def refused(step: dict[str, Any], field: str, seconds: float = 2.0) -> InvalidInputError:
    error = finishes(seconds, parse_steps, [step]).get("error")
    assert isinstance(error, InvalidInputError), repr(error)
    assert error.field == field
    return error


def sms(body: str) -> dict[str, Any]:
    return {"type": "SMS", "body": body}


def email(**parts: str) -> dict[str, Any]:
    return {"type": "EMAIL", "subject": "Hi", "text": "Hello", **parts}


# --- the reported attacks ------------------------------------------------------------------------


def test_power_tower_is_refused_at_once() -> None:
    assert "number too large" in refused(sms(POWER_TOWER), "steps.0.body").message


@pytest.mark.parametrize("source", [HUGE_CENTER, HUGE_PERCENT_WIDTH], ids=["center", "percent-width"])
def test_huge_widths_are_refused(source: str) -> None:
    assert "too large" in refused(sms(source), "steps.0.body").message
    assert "too large" in refused(email(html=source), "steps.0.html").message


@pytest.mark.parametrize(("step", "field"), [(sms(LOOP_OF_BIG_STRINGS), "steps.0.body"),
                                             (email(text=LOOP_OF_BIG_STRINGS), "steps.0.text")])
def test_loop_of_big_strings_is_refused_without_building_it(step: dict[str, Any], field: str) -> None:
    tracemalloc.start()
    try:
        error = refused(step, field)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert "longer than" in error.message
    assert peak < 5_000_000  # the whole output would be 100 MB


# --- output bounds -------------------------------------------------------------------------------


def test_sms_output_is_bounded_by_the_sms_limit() -> None:
    parse_steps([sms("{{ 'x' * %d }}" % SMS_MAX_CHARS)])
    assert str(SMS_MAX_CHARS) in refused(sms("{{ 'x' * %d }}" % (SMS_MAX_CHARS + 1)), "steps.0.body").message
    parse_steps([email(text="{{ 'x' * %d }}" % (SMS_MAX_CHARS + 1))])


@pytest.mark.parametrize("part", ["subject", "text", "html"])
def test_email_parts_are_bounded(part: str) -> None:
    parse_steps([email(**{part: "{{ 'x' * 99999 }}"})])
    assert "longer than 100000" in refused(email(**{part: "{{ 'x' * 99999 }}{{ 'xx' }}"}), f"steps.0.{part}").message


def test_render_at_send_time_is_bounded_too() -> None:
    with pytest.raises(TemplateRenderError, match="longer than 1600"):
        render("{{ 'x' * 1000 }}{{ 'x' * 1000 }}", SAMPLE_CONTEXT, max_chars=SMS_MAX_CHARS)
    with pytest.raises(TemplateRenderError, match="took too long"):
        render(SLOW, SAMPLE_CONTEXT, timeout=0.2)
    with pytest.raises(TemplateRenderError, match="longer than"):
        render("x" * (templating.MAX_SOURCE_LENGTH + 1), SAMPLE_CONTEXT)


# --- work bounds ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "source",
    [
        # arithmetic
        "{{ 2 ** 300 }}", "{{ (2**200) * (2**200) }}", "{{ 2 ** (10**300) }}", "{{ 10.0 ** 400 }}", "{{ 1e308 * 10 }}",
        "{{ 'x' * 10**9 }}", "{{ [1] * 1000000 }}", "{{ ('9' * 4000)|int }}",
        # widths and sizes of filters, methods and formatting
        "{{ 'x'.center(50000000) }}", "{{ 'x'.ljust(50000000) }}", "{{ 'x'.rjust(50000000) }}",
        "{{ 'x'.zfill(50000000) }}", "{{ 'x'|indent(50000000) }}", "{{ ('\\n' * 999)|indent(999) }}",
        "{{ ('x' * 1000)|wordwrap(1, wrapstring='y' * 1000) }}", "{{ 'x'|truncate(10**9) }}",
        "{{ range(1000)|join('x' * 1000) }}", "{{ ('x' * 1000).join(['y' * 1000] * 99) }}",
        "{{ range(9)|batch(50000000, 'x')|list }}", "{{ range(9)|slice(50000000)|list }}",
        "{{ ('x' * 1000)|replace('x', 'y' * 1000) }}", "{{ ('x' * 1000).replace('x', 'y' * 1000) }}",
        "{{ 1.5|round(10**9, 'ceil') }}", "{{ range(1000)|list|tojson(indent=999) }}",
        "{{ '%*d' % (50000000, 1) }}", "{{ '%.50000000f' % 1.0 }}", "{{ '%(a(b))50000000d' % {'a(b)': 1} }}",
        "{{ '{:50000000}'.format(1) }}", "{{ '{:{}}'.format(1, 50000000) }}",
        "{{ '{a:{w}}'.format_map({'a': 1, 'w': 50000000}) }}", "{{ '{0}{0}'.format('x' * 99999) }}",
        "{{ ('x' * 99999) ~ ('x' * 99999) }}", "{{ '%s%s' % ('x' * 99999, 'x' * 99999) }}",
        # values built by reference, which would only blow up when turned into text
        "{% set s = 'x' * 9999 %}{% set a = [s, s, s, s, s, s, s, s, s, s] %}{% set b = [a, a, a, a, a, a, a, a, a, a] %}"
        "{{ [b, b, b, b, b, b, b, b, b, b]|length }}",
        "{% set ns = namespace(s='x') %}{% for i in range(40) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}",
        "{% macro m() %}{% for i in range(1000) %}{{ 'y' * 1000 }}{% endfor %}{% endmacro %}{{ m()|length }}",
        "{{ range(1000)|map('center', 999)|list|length }}",
        # loops, recursion and calls
        "{{ range(10**9)|list }}",
        "{% for a in range(1000) %}{% for b in range(1000) %}{% endfor %}{% endfor %}",
        "{% for x in [1, 2] recursive %}{{ loop([1, 2]) }}{% endfor %}",
        "{% macro m() %}{{ m() }}{% endmacro %}{{ m() }}",
        "{% macro f(n) %}{% if n %}{{ f(n - 1) }}{{ f(n - 1) }}{% endif %}{% endmacro %}{{ f(40) }}",
        "{% block b %}x{% endblock %}{{ self.b() }}", "{{ lipsum(1000000) }}",
        "{{ (1).to_bytes(10**8, 'big') }}", "{{ {}.fromkeys(range(1000)) }}", "{{ 1 / 0 }}",
        "{{" + "(" * 3000 + "1" + ")" * 3000 + "}}",
    ],
)
def test_abusive_templates_are_refused_quickly(source: str) -> None:
    start = time.monotonic()
    error = finishes(3, check, source).get("error")
    assert isinstance(error, TemplateRenderError), repr(error)
    assert time.monotonic() - start < 2.0


def test_the_deadline_stops_work_the_caps_allow() -> None:
    start = time.monotonic()
    error = refused(sms(SLOW), "steps.0.body", seconds=5)
    assert error.message == "template took too long"
    assert time.monotonic() - start < templating.VALIDATION_TIMEOUT + 1


def test_the_templates_of_a_sequence_share_one_deadline() -> None:
    start = time.monotonic()
    error = finishes(10, parse_steps, [sms(SLOW)] * 6).get("error")
    assert isinstance(error, InvalidInputError) and error.field == "steps.0.body"
    assert time.monotonic() - start < steps.SEQUENCE_VALIDATION_TIMEOUT + 1.5  # not 6 x VALIDATION_TIMEOUT


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("{{ '%05d'|format(42) }}|{{ '%(a)s-%(b)3s'|format(a=1, b='x') }}", "00042|1-  x"),
        ("{{ '{:>6}|{:.2f}'.format('ab', 3.14159) }}", "    ab|3.14"),
        ("{{ 'ab'|center(6) }}|{{ 'ab'.ljust(4) }}|{{ '7'.zfill(3) }}", "  ab  |ab  |007"),
        ("{{ range(3)|join(', ') }}|{{ '-'.join(['a', 'b']) }}|{{ [1, 2, 3, 4]|batch(2)|list }}", "0, 1, 2|a-b|[[1, 2], [3, 4]]"),
        ("{{ 2 ** 10 }} {{ 3 * 4 }} {{ 7 // 2 }} {{ 7 % 3 }} {{ 1 / 4 }} {{ 'ab' * 2 }} {{ [1] + [2] }}",
         "1024 12 3 1 0.25 abab [1, 2]"),
        ("{% for i in range(3) %}{{ loop.index }}{{ loop.cycle('a', 'b') }}{% endfor %}", "1a2b3a"),
        ("{% macro hi(n) %}Hi {{ n }}{% endmacro %}{{ hi(seller.first_name|upper) }}", "Hi SAM"),
        ("{% set ns = namespace(total=0) %}{% for i in [1, 2, 3] %}{% set ns.total = ns.total + i %}{% endfor %}"
         "{{ ns.total }}", "6"),
        ("{% filter upper %}{{ seller.name.split()[0] }}{% endfilter %} {{ 'a b c'|wordwrap(3) }}", "SAM a b\nc"),
    ],
)
def test_ordinary_templates_still_render(source: str, expected: str) -> None:
    assert render(source, SAMPLE_CONTEXT) == expected
    parse_steps([sms(source)])


# --- property: whatever the template, parse_steps answers quickly and with a typed error ---------

NUMBERS = st.sampled_from(["0", "2", "9", "100", "999", "1000", "99999", "50000000", "10**9", "(2**300)", "1e308"])
FILTERS = st.sampled_from(["center({})", "indent({})", "wordwrap({})", "truncate({})", "join('x' * {})", "batch({})",
                           "slice({})", "round({})", "format({})", "tojson(indent={})", "replace('x', 'xx', {})"])
METHODS = st.sampled_from(["center", "ljust", "rjust", "zfill"])
LEAVES = st.one_of(
    NUMBERS,
    st.sampled_from(["'x'", "'abc'", "seller.name", "[1, 2]", "range(100)"]),
    NUMBERS.map(lambda n: f"('%0{n}d'|format(1))"),
    NUMBERS.map(lambda n: f"('{{:{{}}}}'.format(1, {n}))"),
    NUMBERS.map(lambda n: f"('%.' ~ {n} ~ 'f')"),
)


def _compose(inner: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    return st.one_of(
        st.tuples(inner, st.sampled_from(["**", "*", "+", "%", "~", "//"]), inner).map(lambda t: f"({t[0]} {t[1]} {t[2]})"),
        st.tuples(inner, FILTERS, NUMBERS).map(lambda t: f"({t[0]}|{t[1].format(t[2])})"),
        st.tuples(inner, METHODS, NUMBERS).map(lambda t: f"({t[0]}|string).{t[1]}({t[2]})"),
        st.tuples(inner, NUMBERS).map(lambda t: f"({t[0]}|string).replace('x', 'x' * {t[1]})"),
        NUMBERS.map(lambda n: f"(range({n})|list)"),
        st.tuples(inner, inner).map(lambda t: f"[{t[0]}, {t[1]}]"),
    )


EXPRESSIONS = st.recursive(LEAVES, _compose, max_leaves=6)
TEMPLATES = st.one_of(
    EXPRESSIONS.map(lambda e: "{{ " + e + " }}"),
    st.tuples(NUMBERS, NUMBERS, EXPRESSIONS).map(
        lambda t: f"{{% for i in range({t[0]}) %}}{{% for j in range({t[1]}) %}}{{{{ {t[2]} }}}}{{% endfor %}}{{% endfor %}}"
    ),
)
PLACES = st.sampled_from([("SMS", "body"), ("EMAIL", "subject"), ("EMAIL", "text"), ("EMAIL", "html")])


@settings(max_examples=120, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(source=TEMPLATES, place=PLACES)
def test_any_dangerous_template_is_accepted_or_refused_quickly(source: str, place: tuple[str, str]) -> None:
    kind, name = place
    step = sms(source) if kind == "SMS" else email(**{name: source})
    start = time.monotonic()
    error = finishes(5, parse_steps, [step]).get("error")
    assert time.monotonic() - start < 2.0
    if error is not None:
        assert isinstance(error, InvalidInputError), repr(error)
        assert error.field == f"steps.0.{name}"


# --- over HTTP -----------------------------------------------------------------------------------


def _post_sms(client: TestClient, user: ApiUser, body: str) -> Any:
    return client.post("/api/sequences", json={"name": unique("seq"), "steps": [sms(body)]}, headers=user.headers)


def test_power_tower_over_http_is_a_quick_422(client: TestClient, user: ApiUser) -> None:
    response = finishes(10, _post_sms, client, user, POWER_TOWER)["value"]
    assert response.status_code == 422, response.text
    assert [error["field"] for error in response.json()["errors"]] == ["steps.0.body"]


def test_validation_does_not_block_other_requests(client: TestClient, user: ApiUser, monkeypatch) -> None:
    # A template that runs until the (here longer) deadline; meanwhile the API must keep answering.
    monkeypatch.setattr(templating, "VALIDATION_TIMEOUT", 4.0)
    monkeypatch.setattr(steps, "SEQUENCE_VALIDATION_TIMEOUT", 4.0)
    started, real_check = threading.Event(), templating.check

    def spying_check(*args: Any, **kwargs: Any) -> None:
        started.set()
        real_check(*args, **kwargs)

    monkeypatch.setattr(templating, "check", spying_check)
    assert client.get("/openapi.json").status_code == 200  # built once, before timing
    posted: dict[str, Any] = {}
    thread = threading.Thread(target=lambda: posted.update(response=_post_sms(client, user, SLOW)), daemon=True)
    thread.start()
    assert started.wait(10)
    start = time.monotonic()
    probe = client.get("/openapi.json")
    elapsed, still_validating = time.monotonic() - start, thread.is_alive()
    thread.join(15)

    assert probe.status_code == 200
    assert still_validating, "the validation ended before the probe, so the probe proves nothing"
    assert elapsed < 2.0
    assert posted["response"].status_code == 422
    assert "took too long" in posted["response"].text
