"""A/B variants of a message step: validation, the deterministic weighted draw, the variant
recorded in the send events (and kept across a retry), and the preview showing each."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from followups.errors import InvalidInputError, TransientProviderError
from followups.execution.sending import execute_send_step
from followups.preview import preview_sequence
from followups.db.session import session_scope
from followups.providers.messages import ProviderReceipt
from followups.steps import SmsStep, draw_variant, load_stored_steps, parse_steps, steps_to_json, with_variant
from support import enrollment_row, events_of, new_enrollment, new_owner, new_sequence, unique


def variant(name: str, weight: int = 1, **content: Any) -> dict[str, Any]:
    return {"name": name, "weight": weight, "subject": f"Offer {name} on {{{{ deal.property_address }}}}",
            "text": f"Hi {{{{ seller.first_name }}}}, version {name}", **content}


AB_EMAIL = {"type": "EMAIL", "variants": [variant("A"), variant("B", 3)]}
AB_SMS = {"type": "SMS", "variants": [{"name": "short", "body": "Hi"}, {"name": "long", "body": "Hi {{ seller.first_name }}!"}]}


def refused(steps: list[dict[str, Any]]) -> InvalidInputError:
    with pytest.raises(InvalidInputError) as info:
        parse_steps(steps)
    return info.value


# --- validation -------------------------------------------------------------------------------


def test_steps_with_variants_parse_and_round_trip() -> None:
    steps = parse_steps([AB_EMAIL, {"type": "WAIT", "days": 1}, AB_SMS])
    assert [v.name for v in steps[0].variants] == ["A", "B"] and steps[0].variants[1].weight == 3
    assert isinstance(steps[2], SmsStep) and steps[2].body == ""
    stored = steps_to_json(steps)
    assert "body" not in stored[2] and "subject" not in stored[0]
    assert load_stored_steps(stored) == steps
    # Steps without variants are stored as before.
    assert steps_to_json(parse_steps([{"type": "SMS", "body": "x"}])) == [{"type": "SMS", "body": "x"}]


@pytest.mark.parametrize(
    ("steps", "field"),
    [
        pytest.param([{"type": "EMAIL", "variants": [variant("A")]}], "steps.0.variants", id="one-variant"),
        pytest.param([{"type": "EMAIL", "variants": [variant(c) for c in "ABCDEF"]}], "steps.0.variants", id="six"),
        pytest.param([{"type": "EMAIL", "variants": [variant("A"), variant("a")]}], "steps.0.variants.1.name", id="duplicate-name"),
        pytest.param([{"type": "EMAIL", "variants": [variant("A"), variant("")]}], "steps.0.variants.1.name", id="empty-name"),
        pytest.param([{"type": "EMAIL", "variants": [variant("A"), variant("B", 0)]}], "steps.0.variants.1.weight", id="zero-weight"),
        pytest.param([{"type": "EMAIL", "variants": [variant("A"), variant("B", -2)]}], "steps.0.variants.1.weight", id="negative"),
        pytest.param([{"type": "EMAIL", "variants": [variant("A"), {"name": "B", "subject": "s"}]}], "steps.0.variants.1", id="no-body"),
        pytest.param([{"type": "EMAIL", "variants": [variant("A"), {"name": "B", "text": "t"}]}], "steps.0.variants.1.subject",
                     id="first-email-without-subject"),
        pytest.param([{"type": "EMAIL", "variants": [variant("A"), variant("B", subject="{{ deal.__class__ }}")]}],
                     "steps.0.variants.1.subject", id="unsafe-template"),
        pytest.param([{"type": "EMAIL", "variants": [variant("A"), variant("B", html="<p>{% for %}</p>")]}],
                     "steps.0.variants.1.html", id="broken-html"),
        pytest.param([{"type": "EMAIL", "variants": [variant("A"), variant("B", thread="reply")]}], "steps.0.variants.1.thread",
                     id="thread-is-the-step-s"),
        pytest.param([{**AB_EMAIL, "text": "own body"}], "steps.0.text", id="own-content-beside-variants"),
        pytest.param([{"type": "SMS", "variants": [{"name": "a", "body": "x"}, {"name": "b", "body": "y" * 1601}]}],
                     "steps.0.variants.1.body", id="sms-too-long"),
        pytest.param([{"type": "SMS", "variants": [{"name": "a", "body": "x"}, {"name": "b", "body": "{{ 'y' * 2000 }}"}]}],
                     "steps.0.variants.1.body", id="sms-renders-too-long"),
        pytest.param([{"type": "SMS"}], "steps.0.body", id="sms-without-body-or-variants"),
        pytest.param([{"type": "WAIT", "days": 1, "variants": []}, AB_SMS], "steps.0.variants", id="wait-has-none"),
    ],
)
def test_invalid_variants_name_their_field(steps: list[dict[str, Any]], field: str) -> None:
    assert refused(steps).field == field


def test_a_later_reply_threaded_variant_may_leave_out_its_subject() -> None:
    steps = parse_steps([AB_EMAIL, {"type": "WAIT", "days": 1}, {"type": "EMAIL", "variants": [
        {"name": "a", "text": "again"}, {"name": "b", "subject": "New subject", "text": "again"}]}])
    assert steps[2].variants[0].subject == "" and load_stored_steps(steps_to_json(steps)) == steps


def test_the_http_api_names_the_variant_field(client, user) -> None:
    body = {"name": unique("ab"), "steps": [{"type": "EMAIL", "variants": [variant("A"), variant("A")]}]}
    answer = client.post("/api/sequences", json=body, headers=user.headers)
    assert answer.status_code == 422 and answer.json()["errors"][0]["field"] == "steps.0.variants.1.name", answer.text


# --- the draw ---------------------------------------------------------------------------------


def test_the_draw_is_deterministic_per_token_and_step() -> None:
    [step] = parse_steps([{"type": "EMAIL", "variants": [variant(c) for c in "ABCDE"]}])
    token = uuid.uuid4().hex
    assert {draw_variant(step, token, 0).name for _ in range(20)} == {draw_variant(step, token, 0).name}
    # Steps draw independently: over many tokens, step 0 and step 2 do not always agree.
    tokens = [uuid.uuid4().hex for _ in range(200)]
    assert any(draw_variant(step, t, 0) != draw_variant(step, t, 2) for t in tokens)
    assert draw_variant(parse_steps([{"type": "SMS", "body": "x"}])[0], token, 0) is None


def test_the_draw_follows_the_weights() -> None:
    [step] = parse_steps([{"type": "EMAIL", "variants": [variant("A", 1), variant("B", 3), variant("C", 6)]}])
    draws = 2000
    counts = {"A": 0, "B": 0, "C": 0}
    for n in range(draws):
        counts[draw_variant(step, f"token-{n}", 0).name] += 1
    # Binomial standard deviation at most sqrt(2000 * 0.25) ~ 11; 4.5 of them is ~50.
    for name, share in (("A", 0.1), ("B", 0.3), ("C", 0.6)):
        assert abs(counts[name] - draws * share) < 50, counts


def test_with_variant_gives_a_plain_step() -> None:
    [step] = parse_steps([AB_EMAIL])
    chosen = with_variant(step, step.variants[1])
    assert chosen.variants is None and chosen.subject.startswith("Offer B") and chosen.text.endswith("version B")
    assert with_variant(step, None) is step


# --- sending ----------------------------------------------------------------------------------


class FlakyProviders:
    """Refuses the first `refusals` emails with a 503, then accepts; remembers what it was given."""

    def __init__(self, refusals: int = 1) -> None:
        self.sent: list[Any] = []
        self.refusals = refusals

    def send_email(self, email):
        self.sent.append(email)
        if len(self.sent) <= self.refusals:
            raise TransientProviderError("busy", provider="sendgrid", status_code=503)
        return ProviderReceipt("sendgrid", unique("msg"), 202)

    def send_sms(self, sms):
        self.sent.append(sms)
        return ProviderReceipt("twilio", unique("SM"), 201)


def test_the_variant_is_recorded_and_kept_across_a_retry(db) -> None:
    owner = new_owner()
    sequence = new_sequence(owner, [AB_EMAIL, {"type": "WAIT", "seconds": 1}, AB_SMS])
    enrollment_id = new_enrollment(owner, sequence)
    token = enrollment_row(enrollment_id).reply_token
    steps = parse_steps([AB_EMAIL, {"type": "WAIT", "seconds": 1}, AB_SMS])
    expected = draw_variant(steps[0], token, 0).name
    providers = FlakyProviders()
    with pytest.raises(TransientProviderError):
        execute_send_step(enrollment_id, 0, attempt=1, max_attempts=3, providers=providers)
    assert execute_send_step(enrollment_id, 0, attempt=2, max_attempts=3, providers=providers).outcome == "sent"
    assert [m.subject for m in providers.sent] == [f"Offer {expected} on 12 Elm Street, Springfield"] * 2
    events = [e for e in events_of(enrollment_id) if e.step_index == 0]
    assert [(e.event_type, e.content.get("variant")) for e in events] == [
        ("STEP_ATTEMPT", expected), ("STEP_RETRY", expected), ("STEP_ATTEMPT", expected), ("EMAIL_SENT", expected),
    ]
    # The SMS step draws its own, and the sent event says which.
    with session_scope() as session:
        from followups.lifecycle import store
        from followups.lifecycle.plan import load_plan

        store.advance(session, load_plan(session, enrollment_id, lock=True), 1)
    assert execute_send_step(enrollment_id, 2, providers=providers).outcome == "sent"
    sms_variant = draw_variant(steps[2], token, 2)
    assert providers.sent[-1].body == with_variant(steps[2], sms_variant).body.replace("{{ seller.first_name }}", "Pat")
    assert events_of(enrollment_id)[-2].content["variant"] == sms_variant.name


def test_a_reply_step_without_subject_takes_the_drawn_variant_s(db) -> None:
    owner = new_owner()
    steps = [AB_EMAIL, {"type": "WAIT", "seconds": 1}, {"type": "EMAIL", "text": "again"}]
    enrollment_id = new_enrollment(owner, new_sequence(owner, steps))
    providers = FlakyProviders(refusals=0)
    assert execute_send_step(enrollment_id, 0, providers=providers).outcome == "sent"
    with session_scope() as session:
        from followups.lifecycle import store
        from followups.lifecycle.plan import load_plan

        store.advance(session, load_plan(session, enrollment_id, lock=True), 1)
    assert execute_send_step(enrollment_id, 2, providers=providers).outcome == "sent"
    assert providers.sent[1].subject == "Re: " + providers.sent[0].subject


# --- preview ----------------------------------------------------------------------------------


def test_preview_shows_each_variant(db) -> None:
    owner = new_owner()
    sequence = new_sequence(owner, [AB_EMAIL, {"type": "WAIT", "days": 1}, AB_SMS])
    deal = {"external_id": unique("D"), "property_address": "12 Elm Street", "seller_name": "Pat Seller",
            "seller_email": "pat@example.com", "seller_phone": "+15555550123"}
    with session_scope(read_only=True) as session:
        plan = preview_sequence(session, owner, sequence, deal, "2026-12-01T15:00:00Z")
    email, _, sms = plan["steps"]
    assert [(v["name"], v["weight"], v["share"]) for v in email["variants"]] == [("A", 1, 0.25), ("B", 3, 0.75)]
    assert [v["message"]["subject"] for v in email["variants"]] == ["Offer A on 12 Elm Street", "Offer B on 12 Elm Street"]
    assert email["message"] == email["variants"][0]["message"]
    assert [v["message"]["body"] for v in sms["variants"]] == ["Hi", "Hi Pat!"]



def test_the_cli_preview_lists_each_variant_with_its_share(db, cli, tmp_path) -> None:
    import json

    from followups.users import ensure_user

    name = unique("ab-previewer")
    with session_scope() as session:
        owner = ensure_user(session, name)
    sequence = new_sequence(owner, [AB_EMAIL])
    deal = tmp_path / "deal.json"
    deal.write_text(json.dumps({"external_id": "D-1", "property_address": "12 Elm Street", "seller_name": "Pat Seller",
                                "seller_email": "pat@example.com"}))
    code, out, err = cli("preview", str(sequence), "--deal", str(deal), "--start", "2026-12-01T15:00:00Z", "--owner", name)
    assert code == 0, err
    assert "[A 25%] Subject: Offer A on 12 Elm Street" in out and "[B 75%] Subject: Offer B" in out


def test_a_reply_step_with_nothing_sent_before_takes_the_subject_its_variant_would_have_had(db) -> None:
    from followups.execution.sending import render_message
    from followups.lifecycle.plan import load_plan
    from followups.settings import get_settings

    owner = new_owner()
    enrollment_id = new_enrollment(owner, new_sequence(owner, [AB_EMAIL, {"type": "WAIT", "seconds": 1}, {"type": "EMAIL", "text": "again"}]))
    with session_scope(read_only=True) as session:
        plan = load_plan(session, enrollment_id)
    message = render_message(plan, plan.steps[2], 2, get_settings())
    name = draw_variant(plan.steps[0], plan.reply_token, 0).name
    assert message.subject == f"Offer {name} on 12 Elm Street, Springfield"
