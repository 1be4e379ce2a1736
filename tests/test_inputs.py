"""Input validation at the Python entry points: the input models, `sequences.create_sequence`,
`deals.upsert_deal`, users and tokens. Every rejection is an InvalidInputError (or NotFoundError
for a missing owner) naming the field, and nothing is stored half-way."""

from __future__ import annotations

import json
import math
import re
from decimal import Decimal
from typing import Any
from zoneinfo import available_timezones

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import func, select

from followups import api_tokens, deals, sequences, users
from followups.db.models import ApiToken, Deal, Sequence, SequenceVersion, User
from followups.db.session import session_scope
from followups.errors import InvalidInputError, NotFoundError
from followups.inputs import (
    MAX_ID,
    DealInput,
    EnrollRequest,
    OfferInput,
    SequenceInput,
    SequencePatch,
    check_id,
    check_name,
    require_owner,
    validate,
)
from support import FAST_SEQUENCE, new_owner, unique

ZONES = available_timezones()
E164 = re.compile(r"\+[1-9][0-9]{4,15}")
EXTERNAL_ID = re.compile(r"[A-Za-z0-9._:\-]{1,200}")
DB_SETTINGS = settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow]
)
PURE_SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

NASTY_TEXT = [
    "", " ", "\x00", "a\x00b", "\ud800", "line\nbreak", "tab\there", "x" * 201, "x" * 501, "x" * 10_001,
    "America", "Europe", "../../etc/passwd", "x" * 300, "localtime", "Mars/Olympus", "America/New_York", "UTC",
    "+1٥٠٣5550142", "+１５０３５５５０１４２", "+1 503-555-0142", "+15035550142", "555-1234", "+1-800-FLOWERS", "+",
    "ann@example.com", "not an email", "a" * 320 + "@example.com", "NaN", "-5", "Infinity", "1E+12", "12.345", "0",
    "offer id", "D-1", "D:1.2_3",
]
ANY_VALUE = st.one_of(
    st.sampled_from(NASTY_TEXT),
    st.text(max_size=30),
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(),
    st.decimals(),
    st.lists(st.integers(), max_size=3),
)
JSON_LEAF = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=20))
CONTEXT = st.one_of(
    st.dictionaries(st.text(max_size=10), st.recursive(JSON_LEAF, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3), max_leaves=15), max_size=5),
    st.sampled_from([
        {"big": "x" * (1024 * 1024)},
        {"a": {"b": {"c": {"d": {"e": {"f": 1}}}}}},
        {"nan": float("nan")},
        {"k\x00": 1},
        {"v": ["ok", "bad\x00"]},
        {"n": 10**5000},
        {"s": "\udcff"},
        {"t": (1, 2)},
        {"obj": object()},
    ]),
)


def valid_deal() -> st.SearchStrategy[dict[str, Any]]:
    return st.fixed_dictionaries(
        {
            "external_id": st.from_regex(r"[A-Za-z0-9._:\-]{1,30}", fullmatch=True),
            "property_address": st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), min_size=1, max_size=40).filter(str.strip),
            "seller_name": st.sampled_from(["Ann Lee", "Bo", "Zoë Ünal", "李小龙"]),
            "seller_email": st.sampled_from(["ann@example.com", "bo.kim+x@example.org", None]),
            "seller_phone": st.sampled_from(["+15035550142", "+1 503 555 0142", "+447911123456", "+15551234567"]),
            "seller_timezone": st.sampled_from(["UTC", "America/New_York", "Europe/Paris", "Asia/Kolkata"]),
            "offer_amount": st.one_of(st.none(), st.decimals(min_value=0, max_value=Decimal("999999999999.99"), places=2)),
            "context": st.dictionaries(st.text(max_size=5), JSON_LEAF, max_size=3),
        }
    )


def mutated(base: st.SearchStrategy[dict[str, Any]], fields: list[str], values=ANY_VALUE):
    """A valid mapping with at most one field replaced by an arbitrary value (or added)."""
    return st.tuples(base, st.sampled_from([None, "unknown_field", *fields]), values).map(
        lambda t: t[0] if t[1] is None else {**t[0], t[1]: t[2]}
    )


DEAL_FIELDS = ["external_id", "property_address", "seller_name", "seller_email", "seller_phone", "seller_timezone", "offer_amount"]
DEALS = st.one_of(mutated(valid_deal(), DEAL_FIELDS), valid_deal().flatmap(lambda d: CONTEXT.map(lambda c: {**d, "context": c})))
STEPS = st.lists(
    st.one_of(
        st.fixed_dictionaries({"type": st.sampled_from(["SMS", "sms", "Sms"]), "body": st.sampled_from(["hi", "Hi {{ seller.first_name }}", "", "a\x00", "{{ x", "x" * 1601])}),
        st.fixed_dictionaries({"type": st.just("EMAIL"), "subject": st.sampled_from(["Offer", "", "\ud800"]), "text": st.sampled_from(["Hi", "x\x00"])}),
        st.fixed_dictionaries({"type": st.just("WAIT"), "days": st.one_of(st.floats(), st.integers(-5, 400))}),
        st.sampled_from([{"type": "FAX"}, {"body": "no type"}, "SMS", None, {"type": "SMS", "body": "x", "colour": "red"}]),
    ),
    max_size=5,
)
VALID_SEQUENCE = st.fixed_dictionaries(
    {"name": st.sampled_from(["Three touches", "  padded  ", "Ünïcode ✓"]), "steps": st.just(FAST_SEQUENCE)},
    optional={"description": st.sampled_from(["", "x" * 10_000]), "enabled": st.booleans(), "is_default": st.booleans()},
)
SEQUENCES = st.one_of(
    mutated(VALID_SEQUENCE, ["name", "description", "steps", "enabled", "is_default"]),
    VALID_SEQUENCE.flatmap(lambda s: STEPS.map(lambda steps: {**s, "steps": steps})),
)


def no_bad_text(value: Any) -> bool:
    if isinstance(value, str):
        return "\x00" not in value and value.encode("utf-8", "strict") is not None
    if isinstance(value, dict):
        return all(no_bad_text(k) and no_bad_text(v) for k, v in value.items())
    if isinstance(value, list | tuple):
        return all(no_bad_text(v) for v in value)
    return True


def assert_valid_deal(deal: DealInput) -> None:
    assert EXTERNAL_ID.fullmatch(deal.external_id)
    assert 1 <= len(deal.property_address) <= 500 and 1 <= len(deal.seller_name) <= 200
    assert deal.seller_phone is None or E164.fullmatch(deal.seller_phone)
    assert deal.seller_email is None or len(deal.seller_email) <= 320
    assert deal.seller_email or deal.seller_phone
    assert deal.seller_timezone in ZONES
    amount = deal.offer_amount
    assert amount is None or (amount.is_finite() and 0 <= amount < Decimal(10) ** 12 and amount.as_tuple().exponent >= -2)
    text = json.dumps(deal.context, allow_nan=False)
    assert len(text.encode()) <= 64 * 1024
    assert no_bad_text(deal.model_dump())


def rows() -> dict[str, int]:
    with session_scope() as session:
        return {
            model.__tablename__: session.scalar(select(func.count()).select_from(model))
            for model in (Deal, Sequence, SequenceVersion, User, ApiToken)
        }


# -- the models alone --------------------------------------------------------------------

BASE_DEAL = {"external_id": "D-1", "property_address": "1 Main St", "seller_name": "Ann Lee", "seller_email": "ann@example.com"}


@pytest.mark.parametrize(
    ("model", "data", "field"),
    [
        (DealInput, {**BASE_DEAL, "offer_amount": "-5"}, "deal.offer_amount"),
        (DealInput, {**BASE_DEAL, "offer_amount": "NaN"}, "deal.offer_amount"),
        (DealInput, {**BASE_DEAL, "offer_amount": float("inf")}, "deal.offer_amount"),
        (DealInput, {**BASE_DEAL, "offer_amount": "1E+12"}, "deal.offer_amount"),
        (DealInput, {**BASE_DEAL, "context": {"big": "x" * 1024 * 1024}}, "deal.context"),
        (DealInput, {**BASE_DEAL, "context": {"a": {"b": {"c": {"d": {"e": {}}}}}}}, "deal.context"),
        (DealInput, {**BASE_DEAL, "context": {"k": float("nan")}}, "deal.context"),
        (DealInput, {**BASE_DEAL, "context": {"a": {"k\x00": 1}}}, "deal.context.a"),
        (DealInput, {**BASE_DEAL, "context": {"a": ["ok", "v\x00"]}}, "deal.context.a.1"),
        (DealInput, {**BASE_DEAL, "seller_name": "Ann\x00"}, "deal.seller_name"),
        (DealInput, {**BASE_DEAL, "seller_name": "x" * 300}, "deal.seller_name"),
        (DealInput, {**BASE_DEAL, "property_address": "\ud800"}, "deal.property_address"),
        (DealInput, {**BASE_DEAL, "seller_timezone": "America"}, "deal.seller_timezone"),
        (DealInput, {**BASE_DEAL, "seller_timezone": "Europe"}, "deal.seller_timezone"),
        (DealInput, {**BASE_DEAL, "seller_timezone": "x" * 300}, "deal.seller_timezone"),
        (DealInput, {**BASE_DEAL, "seller_timezone": "../x"}, "deal.seller_timezone"),
        (DealInput, {**BASE_DEAL, "seller_phone": "+1٥٠٣5550142"}, "deal.seller_phone"),
        (DealInput, {**BASE_DEAL, "seller_phone": "+1-800-FLOWERS"}, "deal.seller_phone"),
        (DealInput, {**BASE_DEAL, "seller_email": "a" * 320 + "@example.com"}, "deal.seller_email"),
        (DealInput, {**BASE_DEAL, "external_id": "id with spaces"}, "deal.external_id"),
        (OfferInput, {"offer_id": "offer id", "deal": BASE_DEAL}, "offer_id"),
        (OfferInput, {"offer_id": "o-1", "deal": BASE_DEAL, "amount": "-5"}, "amount"),
        (OfferInput, {"offer_id": "o-1", "deal": BASE_DEAL, "amount": "NaN"}, "amount"),
        (OfferInput, {"offer_id": "o-1", "deal": BASE_DEAL, "sequence_id": 2**63}, "sequence_id"),
        (OfferInput, {"offer_id": "o-1", "deal": {**BASE_DEAL, "seller_phone": "+1٥٠٣5550142"}}, "deal.seller_phone"),
        (EnrollRequest, {"sequence_id": True, "deal": BASE_DEAL}, "sequence_id"),
        (EnrollRequest, {"sequence_id": 0, "deal": BASE_DEAL}, "sequence_id"),
        (SequenceInput, {"name": "x", "description": "x" * (2 * 1024 * 1024), "steps": FAST_SEQUENCE}, "description"),
        (SequenceInput, {"name": "x" * 300, "steps": FAST_SEQUENCE}, "name"),
        (SequenceInput, {"name": "a\nb", "steps": FAST_SEQUENCE}, "name"),
        (SequenceInput, {"name": "x", "steps": [{"type": "SMS", "body": "a\x00"}]}, "steps.0.body"),
        (SequenceInput, {"name": "x", "steps": [{"type": "SMS", "body": "hi"}, {"type": "WAIT", "days": 1}]}, "steps.1"),
        (SequenceInput, {"name": "x", "steps": FAST_SEQUENCE, "colour": "red"}, "colour"),
        (SequencePatch, {"steps": [{"type": "WAIT", "days": 1}, {"type": "WAIT", "days": 1}, {"type": "SMS", "body": "x"}]}, "steps.1"),
    ],
)
def test_known_bad_values_are_typed_errors_naming_the_field(model, data, field):
    prefix = "deal" if model is DealInput else ""
    with pytest.raises(InvalidInputError) as caught:
        validate(model, data, prefix=prefix)
    assert caught.value.field == field, caught.value


def test_phones_are_stored_in_e164_and_amounts_move_onto_the_deal():
    deal = validate(DealInput, {**BASE_DEAL, "seller_phone": " +1 (503) 555-0142 "})
    assert deal.seller_phone == "+15035550142"
    offer = validate(OfferInput, {"offer_id": "o-1", "deal": BASE_DEAL, "amount": "310000.5"})
    assert offer.deal.offer_amount == Decimal("310000.5") == offer.amount


def test_an_instance_changed_without_validation_is_validated_again():
    deal = validate(DealInput, BASE_DEAL).model_copy(update={"offer_amount": Decimal("-5")})
    with pytest.raises(InvalidInputError) as caught:
        validate(DealInput, deal, prefix="deal")
    assert caught.value.field == "deal.offer_amount"
    with pytest.raises(InvalidInputError):
        validate(EnrollRequest, {"sequence_id": 1, "deal": deal})


@PURE_SETTINGS
@given(DEALS)
def test_deal_input_accepts_only_storable_deals(data):
    try:
        deal = validate(DealInput, data, prefix="deal")
    except InvalidInputError as exc:
        assert exc.field and exc.field.startswith("deal")
        assert exc.message
    else:
        assert_valid_deal(deal)


@PURE_SETTINGS
@given(SEQUENCES)
def test_sequence_input_accepts_only_runnable_sequences(data):
    try:
        spec = validate(SequenceInput, data)
    except InvalidInputError as exc:
        assert exc.field is None or exc.field.split(".")[0] in {"name", "description", "steps", "enabled", "is_default", "unknown_field"}
    else:
        assert 1 <= len(spec.name) <= 200 and len(spec.description) <= 10_000
        steps = spec.steps_json()
        assert 1 <= len(steps) <= 100 and steps[-1]["type"] != "WAIT"
        assert no_bad_text(steps) and no_bad_text(spec.name) and no_bad_text(spec.description)


@PURE_SETTINGS
@given(ANY_VALUE)
def test_offer_amounts_are_finite_non_negative_numeric_14_2(amount):
    try:
        offer = validate(OfferInput, {"offer_id": "o-1", "deal": BASE_DEAL, "amount": amount})
    except InvalidInputError as exc:
        assert exc.field == "amount"
    else:
        value = offer.amount
        assert value is None or (value.is_finite() and 0 <= value < Decimal(10) ** 12 and value.as_tuple().exponent >= -2)
        assert offer.deal.offer_amount == value


@PURE_SETTINGS
@given(st.one_of(st.integers(min_value=-(2**80), max_value=2**80), st.booleans(), st.floats(), st.text(max_size=5), st.none()))
def test_check_id_accepts_only_bigint_ids(value):
    try:
        result = check_id(value, "sequence_id")
    except InvalidInputError as exc:
        assert exc.field == "sequence_id"
        assert isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_ID
    else:
        assert result == value and 1 <= result <= MAX_ID and not isinstance(value, bool)


@pytest.mark.parametrize("name", [None, "", "   ", "a\x00", "x" * 201, "tab\tname", "\ud800", 5])
def test_names_are_checked(name):
    with pytest.raises(InvalidInputError) as caught:
        check_name(name)
    assert caught.value.field == "name"


# -- the entry points that store ---------------------------------------------------------


@DB_SETTINGS
@given(data=SEQUENCES)
def test_create_sequence_stores_valid_sequences_or_nothing(db, data):
    owner_id = new_owner()
    before = rows()
    try:
        with session_scope() as session:
            info = sequences.create_sequence(session, owner_id, data)
    except InvalidInputError as exc:
        assert exc.message
        assert rows() == before
    else:
        expected = validate(SequenceInput, data)
        assert (info.name, info.description, info.steps) == (expected.name, expected.description, expected.steps_json())
        after = rows()
        assert (after["sequences"], after["sequence_versions"]) == (before["sequences"] + 1, before["sequence_versions"] + 1)


def _numbers_as_floats(value):
    if isinstance(value, dict):
        return {key: _numbers_as_floats(item) for key, item in value.items()}
    if isinstance(value, list | tuple):  # JSON has arrays only
        return [_numbers_as_floats(item) for item in value]
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    return value


@DB_SETTINGS
@given(data=DEALS)
def test_upsert_deal_stores_valid_deals_or_nothing(db, data):
    owner_id = new_owner()
    before = rows()
    try:
        with session_scope() as session:
            deal_id = deals.upsert_deal(session, owner_id, data)
    except InvalidInputError as exc:
        assert exc.field and exc.field.startswith("deal")
        assert rows() == before
    else:
        expected = validate(DealInput, data)
        with session_scope() as session:
            row = session.get(Deal, deal_id)
            stored = {field: getattr(row, field) for field in expected.model_dump()}
        # JSONB keeps numbers as decimals: a float comes back as the number it prints as.
        assert _numbers_as_floats(stored) == _numbers_as_floats(expected.model_dump())
        assert_valid_deal(expected)


@pytest.mark.parametrize("owner", [0, -1, 2**63, True, "1", None])
def test_owner_ids_out_of_range_are_invalid_input(db, owner):
    before = rows()
    with session_scope() as session:
        with pytest.raises(InvalidInputError):
            sequences.create_sequence(session, owner, name="x", steps=FAST_SEQUENCE)
        with pytest.raises(InvalidInputError):
            deals.upsert_deal(session, owner, BASE_DEAL)
        with pytest.raises(InvalidInputError):
            require_owner(session, owner)
    assert rows() == before


def test_unknown_owners_and_sequences_are_not_found(db):
    owner_id = new_owner()
    with session_scope() as session:
        sequence_id = sequences.create_sequence(session, owner_id, name="x", steps=FAST_SEQUENCE).id
    before = rows()
    missing = 2**62
    with session_scope() as session:
        for call in (
            lambda: sequences.create_sequence(session, missing, name="x", steps=FAST_SEQUENCE),
            lambda: sequences.update_sequence(session, missing, sequence_id, name="y"),
            lambda: deals.upsert_deal(session, missing, BASE_DEAL),
        ):
            with pytest.raises(NotFoundError) as caught:
                call()
            assert caught.value.kind == "owner"
        with pytest.raises(NotFoundError):
            sequences.get_sequence(session, owner_id, missing)
        for bad in (2**63, 0, True):
            with pytest.raises(InvalidInputError) as invalid:
                sequences.get_sequence(session, owner_id, bad)
            assert invalid.value.field == "sequence_id"
            with pytest.raises(InvalidInputError):
                sequences.delete_sequence(session, owner_id, bad)
        with pytest.raises(InvalidInputError) as invalid:
            sequences.update_sequence(session, owner_id, sequence_id, description="x" * 10_001)
        assert invalid.value.field == "description"
    assert rows() == before


def test_users_and_tokens_refuse_bad_names_and_labels(db):
    before = rows()
    for name in ("x" * 300, "a\x00b", "two\nlines", "", None, "\ud800"):
        with pytest.raises(InvalidInputError):
            api_tokens.create_user(name)
        with pytest.raises(InvalidInputError):
            api_tokens.create_token(name)
    good = unique("tok-user")
    for label in ("x" * 201, "a\x00", "a\tb", "\udcff"):
        with pytest.raises(InvalidInputError) as caught:
            api_tokens.create_token(good, label)
        assert caught.value.field == "label"
        with pytest.raises(InvalidInputError):
            api_tokens.revoke_tokens(good, label)
    assert rows() == before
    with pytest.raises(NotFoundError):
        api_tokens.revoke_tokens(good)
    for token in ("\ud800", "x" * 201, "é", "", None, 5):
        assert api_tokens.verify_token(token) is None
    with session_scope() as session:
        with pytest.raises(InvalidInputError):
            users.user_id_by_name(session, "a\x00")
        with pytest.raises(NotFoundError):
            api_tokens.issue_token(session, 2**62)


def test_large_finite_numbers_in_context_are_stored(db):
    context = {"big": 1e308, "tiny": 5e-324, "int": 2**100, "nested": {"a": [1, {"b": None}]}}
    owner_id = new_owner()
    with session_scope() as session:
        deal_id = deals.upsert_deal(session, owner_id, {**BASE_DEAL, "context": context})
    with session_scope() as session:
        stored = session.get(Deal, deal_id).context
    assert stored["int"] == 2**100 and math.isfinite(stored["big"]) and stored["nested"] == context["nested"]
