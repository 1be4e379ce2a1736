"""The same delivery, five times at once: an offer-sent event (through Prefect and its
`enroll-on-offer` trigger) together with the same offer posted to the HTTP API, a signed
SendGrid event batch, and a signed Twilio inbound SMS. Each ends as one enrollment, or as one
stored fact per event, however the deliveries interleave.

Everything is real: the module's own Prefect server (on PostgreSQL) and stock runner
(`followups serve`) serving the deployments and their triggers, the HTTP API as a uvicorn
process (`followups api`), and the session's followups database and fake providers. The five
deliveries leave their threads together (a barrier), so they race in the API's worker
threads and in PostgreSQL, not one after another.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import urlencode

import httpx
import pytest
from sqlalchemy import text

from checks import EventLedger, check_sends, fault_report, fault_schedule, wait_final_states  # noqa: F401
from fault_world import Executor, module_prefect
from followups.db.session import session_scope
from prefect_servers import free_port, stop
from support import at_once as support_at_once, deal_input, new_sequence, unique, wait_for

pytestmark = pytest.mark.faults

COPIES = 5
TWILIO_TOKEN = "twilio-test-token"  # tests/conftest.py TEST_ENV
GLOBAL_NUMBER = "+15005550006"  # the settings' SMS number: owners without one send from it
SHORT = [
    {"type": "EMAIL", "subject": "Offer on {{ deal.property_address }}", "text": "Hi {{ seller.first_name }}"},
    {"type": "WAIT", "seconds": 1},
    {"type": "SMS", "body": "Any thoughts on our offer, {{ seller.first_name }}?"},
]
# Holds the enrollment in its wait while the webhooks arrive.
LONG_WAIT = [SHORT[0], {"type": "WAIT", "days": 3}, SHORT[2]]


@pytest.fixture(scope="module")
def world(tmp_path_factory, fake_providers, signer) -> Iterator[dict[str, Any]]:
    from followups.prefect_server import wait_for_deployment

    with module_prefect(tmp_path_factory, "duplicates") as prefect_api:
        logs = tmp_path_factory.mktemp("duplicates")
        runner = Executor("stock", prefect_api, logs / "runner.log").start()
        port = free_port()
        api_log = open(logs / "api.log", "wb")
        api = subprocess.Popen(
            [sys.executable, "-m", "followups.cli", "api", "--port", str(port)],
            env={**os.environ, "PREFECT_API_URL": prefect_api, "PYTHONSAFEPATH": "1"},
            stdout=api_log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
        )
        base = f"http://127.0.0.1:{port}"
        try:
            wait_for(lambda: _healthy(base, api), timeout=60, what="the HTTP API to answer")
            wait_for_deployment("enroll-on-offer/followups", timeout=90)
            wait_for_deployment("cancel-enrollment/followups", timeout=90)
            yield {"prefect_api": prefect_api, "base": base, "runner": runner, "logs": logs}
        finally:
            stop(api)
            api_log.close()
            runner.terminate(timeout=30)


def _healthy(base: str, process: subprocess.Popen) -> bool:
    assert process.poll() is None, "the HTTP API process exited"
    with contextlib.suppress(httpx.HTTPError):
        return httpx.get(f"{base}/healthz", timeout=2).status_code == 200
    return False


def at_once(action: Callable[[int], Any], copies: int = COPIES) -> list[Any]:
    return support_at_once(action, copies)


def rows(sql: str, **params: Any) -> list[Any]:
    with session_scope(read_only=True) as session:
        return list(session.execute(text(sql), params).all())


def event_counts(enrollment_id: int) -> dict[str, int]:
    return dict(rows("SELECT event_type, count(*) FROM follow_up_events WHERE enrollment_id = :e GROUP BY 1", e=enrollment_id))


def enroll_and_wait(owner_id: int, steps: list[dict[str, Any]], event: str) -> tuple[int, Any]:
    from followups.control import enroll_deal

    deal = deal_input()
    enrollment = enroll_deal(owner_id, deal, new_sequence(owner_id, steps))
    wait_for(lambda: event_counts(enrollment.id).get(event), timeout=90, what=f"{event} of enrollment {enrollment.id}")
    return enrollment.id, deal


def enroll_on_offer_runs(prefect_api: str) -> dict[str, int]:
    """State names of the enroll-on-offer flow runs, counted."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterName

    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(deployment_filter=DeploymentFilter(name=DeploymentFilterName(any_=["followups"])))
        deployment = client.read_deployment_by_name("enroll-on-offer/followups")
    counted: dict[str, int] = {}
    for run in runs:
        if run.deployment_id == deployment.id:
            counted[run.state_name] = counted.get(run.state_name, 0) + 1
    return counted


def test_same_offer_five_times_through_prefect_and_the_api_enrolls_once(world, fake_providers, fault_schedule, fault_report):
    from api_support import new_api_user
    from followups.offer_events import emit_offer_sent

    ledger = EventLedger()
    ledger.checkpoint("start")
    # The trigger works before the race starts (an automation loads a moment after `serve`).
    warm = new_api_user()
    warm_sequence = new_sequence(warm.id, SHORT)
    emit_offer_sent(warm.id, unique("warm"), deal_input(), warm_sequence)
    wait_for(lambda: rows("SELECT 1 FROM offers WHERE owner_id = :o", o=warm.id), timeout=120, what="the trigger to enroll")
    runs_before = sum(enroll_on_offer_runs(world["prefect_api"]).values())

    user = new_api_user()
    sequence_id = new_sequence(user.id, SHORT)
    deal = deal_input().model_dump(mode="json")
    offer_id = unique("offer")
    # Five deliveries as the event and five through the HTTP API, all at once, in a seeded order.
    channels = ["event"] * COPIES + ["http"] * COPIES
    fault_schedule.shuffle(channels)
    events = channels.count("event")

    def deliver(i: int) -> Any:
        if channels[i] == "event":
            return emit_offer_sent(user.id, offer_id, deal, sequence_id)
        return httpx.post(f"{world['base']}/api/offers", json={"offer_id": offer_id, "deal": deal, "sequence_id": sequence_id},
                          headers={"Authorization": f"Bearer {user.token}"}, timeout=60)

    answers = at_once(deliver, 2 * COPIES)
    assert not [a for a in answers if isinstance(a, Exception)], answers
    statuses = sorted(a.status_code for a in answers if isinstance(a, httpx.Response))
    assert all(s in (200, 201) for s in statuses), [(a.status_code, a.text) for a in answers if isinstance(a, httpx.Response)]
    assert statuses.count(201) <= 1

    # Every emitted event ran its enroll-on-offer flow to completion (none was lost or failed).
    wait_for(lambda: enroll_on_offer_runs(world["prefect_api"]).get("Completed", 0) >= runs_before + events,
             timeout=120, what=f"{events} enroll-on-offer runs to complete")
    states = enroll_on_offer_runs(world["prefect_api"])
    assert set(states) == {"Completed"}, states

    offers = rows("SELECT enrollment_id FROM offers WHERE owner_id = :o", o=user.id)
    enrollments = rows("SELECT e.id FROM enrollments e JOIN deals d ON d.id = e.deal_id WHERE d.owner_id = :o", o=user.id)
    assert len(offers) == 1 and len(enrollments) == 1, (offers, enrollments)
    enrollment_id = enrollments[0].id
    assert offers[0].enrollment_id == enrollment_id
    assert rows("SELECT count(*) FROM deals WHERE owner_id = :o", o=user.id)[0][0] == 1

    wait_final_states({enrollment_id: "COMPLETED"}, timeout=120)
    assert event_counts(enrollment_id).get("ENROLLED") == 1
    fault_report.add_sends(check_sends(fake_providers, [enrollment_id]))
    ledger.assert_unchanged()
    fault_report.extra.update(deliveries=len(channels), via_event=events, via_http=len(channels) - events,
                              enroll_on_offer_runs=states.get("Completed", 0) - runs_before)
    fault_report.finish()


def test_same_sendgrid_batch_five_times_stores_each_event_once(world, fake_providers, signer, fault_schedule, fault_report):
    from api_support import new_api_user, sg_body

    ledger = EventLedger()
    ledger.checkpoint("start")
    user = new_api_user()
    enrollment_id, deal = enroll_and_wait(user.id, LONG_WAIT, "WAIT_STARTED")
    [(message_id,)] = rows("SELECT provider_message_id FROM follow_up_events WHERE enrollment_id = :e AND event_type = 'EMAIL_SENT'",
                           e=enrollment_id)
    kinds = ["processed", "delivered", "open", "click"]
    fault_schedule.shuffle(kinds)
    kinds.append("unsubscribe")  # one that changes the enrollment: OPTED_OUT and STOPPED, once
    now = int(time.time())
    batch = [
        {"email": str(deal.seller_email), "timestamp": now + i, "event": kind, "sg_event_id": uuid.uuid4().hex,
         "sg_message_id": f"{message_id}.filterdrecv-1-2-3.0", "enrollment_id": str(enrollment_id), "step_index": "0"}
        for i, kind in enumerate(kinds)
    ]
    body = sg_body(batch)
    headers = signer.headers(body)  # the very same request, signature included, five times

    answers = at_once(lambda i: httpx.post(f"{world['base']}/webhooks/sendgrid/events", content=body, headers=headers, timeout=60))
    assert all(isinstance(a, httpx.Response) and a.status_code == 200 for a in answers), answers
    results = [a.json() for a in answers]
    assert sum(r["stored"] for r in results) == len(batch), results
    assert sum(r["duplicates"] for r in results) == (COPIES - 1) * len(batch), results
    assert sum(r["stopped"] for r in results) == 1, results

    counts = event_counts(enrollment_id)
    assert counts.get("PROVIDER_EVENT") == len(batch), counts
    assert (counts.get("OPTED_OUT"), counts.get("STOPPED")) == (1, 1), counts
    stored = rows("SELECT content->>'event' FROM follow_up_events WHERE enrollment_id = :e AND event_type = 'PROVIDER_EVENT'",
                  e=enrollment_id)
    assert sorted(r[0] for r in stored) == sorted(kinds)
    wait_final_states({enrollment_id: "STOPPED"}, timeout=60)
    fault_report.add_sends(check_sends(fake_providers, [enrollment_id]))
    ledger.assert_unchanged()
    fault_report.extra.update(deliveries=COPIES, batch_events=len(batch), stored=len(batch))
    fault_report.finish()


def test_same_twilio_inbound_sms_five_times_is_one_reply(world, fake_providers, fault_schedule, fault_report):
    from api_support import new_api_user
    from followups.api.signatures import twilio_signature

    ledger = EventLedger()
    ledger.checkpoint("start")
    user = new_api_user()
    enrollment_id, deal = enroll_and_wait(user.id, LONG_WAIT, "WAIT_STARTED")
    body = fault_schedule.choice(["Can you call me tomorrow?", "STOP"])  # a reply, or an opt-out
    params = [("MessageSid", "SM" + uuid.uuid4().hex), ("AccountSid", "ACtest"), ("From", deal.seller_phone),
              ("To", GLOBAL_NUMBER), ("Body", body), ("NumMedia", "0")]
    url = f"{world['base']}/webhooks/twilio/inbound"
    headers = {"Content-Type": "application/x-www-form-urlencoded",
               "X-Twilio-Signature": twilio_signature(TWILIO_TOKEN, url, params)}

    answers = at_once(lambda i: httpx.post(url, content=urlencode(params).encode(), headers=headers, timeout=60))
    assert all(isinstance(a, httpx.Response) and a.status_code == 200 for a in answers), answers

    counts = event_counts(enrollment_id)
    fact = "OPTED_OUT" if body == "STOP" else "REPLY_RECEIVED"
    assert (counts.get(fact), counts.get("STOPPED")) == (1, 1), counts
    wait_final_states({enrollment_id: "STOPPED"}, timeout=60)
    fault_report.add_sends(check_sends(fake_providers, [enrollment_id]))
    ledger.assert_unchanged()
    fault_report.extra.update(deliveries=COPIES, body=body)
    fault_report.finish()
