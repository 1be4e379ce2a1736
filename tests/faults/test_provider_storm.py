"""A provider storm: SendGrid and Twilio answer 503s (about 30 % of answers), 429s with a reset
time (SendGrid `X-RateLimit-Reset`, Twilio 20429 with `Retry-After`), time out and reset the
connection, in a seeded order per recipient. Everything goes out at most once: a 503 or 429 is
retried (never before the reset the provider gave) until it goes out; a timeout or a reset after
the request went out loses the answer, so that step is recorded outcome-unknown and never sent
again; a step whose 5 attempts all fail ends FAILED with the provider's message.

Each recipient's answers are scripted from the seed (not drawn per request), so a seed replays
the same storm whatever order the worker threads send in.
"""

from __future__ import annotations

import time

import pytest

from checks import EventLedger, check_sends, fault_report, fault_schedule, scale, wait_final_states  # noqa: F401
from scenario_world import contacts, enroll_many, events_by_enrollment, own_world, step_of_request
from support import deal_input

from followups.providers.fake_server import RESET, TIMEOUT

pytestmark = pytest.mark.faults

STEPS = [
    {"type": "EMAIL", "subject": "Offer on {{ deal.property_address }}", "text": "Hi {{ seller.first_name }}"},
    {"type": "WAIT", "seconds": 1},
    {"type": "SMS", "body": "Hi {{ seller.first_name }}, any thoughts on our offer?"},
    {"type": "WAIT", "seconds": 1},
    {"type": "EMAIL", "subject": "Following up", "text": "Still interested?"},
]
SEND_STEPS = {0: "email", 2: "sms", 4: "email"}
ATTEMPTS = 5  # FOLLOWUPS_STEP_RETRIES=4 (the default) + the first attempt
TIMEOUT_ANSWER, RESET_ANSWER = "timeout", "reset"
CLIENT_TIMEOUT = 1.0  # the product's provider timeout here; the fake holds a "timeout" longer


@pytest.fixture(scope="module")
def world(database_url, tmp_path_factory):
    env = {"FOLLOWUPS_PROVIDER_TIMEOUT_SECONDS": str(CLIENT_TIMEOUT), "FOLLOWUPS_STEP_RETRIES": str(ATTEMPTS - 1)}
    with own_world(tmp_path_factory.mktemp("storm"), "storm", env=env, hang_seconds=CLIENT_TIMEOUT + 0.5) as world:
        yield world


def _fault(rng, channel: str):
    """One refused answer: 503 (most) or 429 with a reset 1-3 s ahead."""
    if rng.random() < 0.75:
        return 503
    delay = rng.randint(1, 3)
    if channel == "email":  # an epoch, evaluated when the answer goes out
        return (429, {"X-RateLimit-Reset": lambda: str(int(time.time()) + delay)})
    return (429, {"Retry-After": str(delay)})


def _answers(rng, channel: str, doomed: bool) -> list:
    """The answers one step gets: refusals, then success or (1 in 5) a lost answer, a timeout or
    a reset, which ends the step; a doomed step gets 5 refusals, the last a 503."""
    if doomed:
        return [_fault(rng, channel) for _ in range(ATTEMPTS - 1)] + [503]
    answers = []
    while len(answers) < ATTEMPTS - 1 and rng.random() < 0.5:
        answers.append(_fault(rng, channel))
    if rng.random() < 0.2:
        return answers + [rng.choice([TIMEOUT_ANSWER, RESET_ANSWER])]
    return answers + [202 if channel == "email" else 201]


def test_a_provider_storm_sends_everything_once_and_honours_reset_times(world, fault_schedule, fault_report):
    rng = fault_schedule
    count = scale(24, 100)
    world.fast_worker(concurrency=8)
    ledger = EventLedger()
    ledger.checkpoint("before the storm")

    # Each recipient's answers are scripted before its enrollment exists (its first send is due at once).
    deals = [deal_input() for _ in range(count)]
    doomed_at = {i: rng.choice(list(SEND_STEPS)) for i in rng.sample(range(count), max(2, count // 8))}
    by_index: dict[tuple[int, int], list] = {}
    for i, deal in enumerate(deals):
        for step, channel in SEND_STEPS.items():
            if i in doomed_at and step > doomed_at[i]:
                break  # never reached: the enrollment failed before it
            by_index[(i, step)] = _answers(rng, channel, doomed_at.get(i) == step)
        world.fake.script(deal.seller_email, by_index.get((i, 0), []) + by_index.get((i, 4), []))
        world.fake.script(deal.seller_phone, by_index.get((i, 2), []))
    ids = enroll_many(count, STEPS, deals)
    reach = contacts(ids)
    doomed = {ids[i]: step for i, step in doomed_at.items()}  # enrollment -> its step whose 5 attempts all fail
    scripted = {(ids[i], step): answers for (i, step), answers in by_index.items()}
    faults = sum(isinstance(a, str) or (a if isinstance(a, int) else a[0]) >= 300 for s in scripted.values() for a in s)
    print(f"{count} enrollments, {len(doomed)} doomed, {len(scripted)} send steps, {faults} scripted faults")

    expected = {e: "FAILED" if e in doomed else "COMPLETED" for e in ids}
    wait_final_states(expected, timeout=scale(240, 600))
    ledger.checkpoint("all final")
    lost = {key for key, answers in scripted.items() if answers[-1] in (TIMEOUT_ANSWER, RESET_ANSWER)}
    sends = check_sends(world.fake, ids, accept_unknown=lost)

    step_by_phone = {phone: (e, 2) for e, (_, phone) in reach.items()}
    requests: dict[tuple[int, int], list] = {}
    for request in sorted(world.fake.requests, key=lambda r: r.received_at):
        key = step_of_request(request, step_by_phone)
        if key is not None and key[0] in expected:
            requests.setdefault(key, []).append(request)

    problems = []
    for key, answers in scripted.items():
        got = requests.get(key, [])
        # Every refusal was retried and a lost answer was not: one request per scripted answer.
        if len(got) != len(answers):
            problems.append(f"{key}: {len(got)} requests for {len(answers)} scripted answers {[r.status for r in got]}")
        for earlier, later in zip(got, got[1:]):
            if earlier.not_before is not None and later.received_at < earlier.not_before - 0.01:
                problems.append(
                    f"{key}: retried {earlier.not_before - later.received_at:.2f}s before the reset the 429 gave"
                )
    events = events_by_enrollment(ids)
    for enrollment_id, step in doomed.items():
        failed = [e for e in events[enrollment_id] if e.event_type == "STEP_FAILED" and e.step_index == step]
        reason = failed[0].failure_reason if failed else ""
        if not failed or "fake error 503" not in reason or f"after {ATTEMPTS} attempts" not in reason:
            problems.append(f"enrollment {enrollment_id} step {step}: STEP_FAILED without the provider's message: {reason!r}")
    for enrollment_id, step in lost:
        kinds = [e.event_type for e in events[enrollment_id] if e.step_index == step]
        if "STEP_OUTCOME_UNKNOWN" not in kinds or "EMAIL_SENT" in kinds or "SMS_SENT" in kinds:
            problems.append(f"enrollment {enrollment_id} step {step}: a lost answer must end outcome-unknown: {kinds}")
    assert not problems, "\n".join(problems[:40])
    ledger.assert_unchanged()

    statuses = [r.status for rs in requests.values() for r in rs]
    fault_report.add_sends(sends)
    fault_report.extra.update(
        doomed=len(doomed),
        answers={str(s): statuses.count(s) for s in sorted(set(statuses))},
        timeouts=statuses.count(TIMEOUT),
        resets=statuses.count(RESET),
        rate_limited_with_reset=sum(r.not_before is not None for rs in requests.values() for r in rs),
    )
    fault_report.finish()
