"""`followups automations apply` against a real Prefect server, notifying through a real
CustomWebhookNotificationBlock pointed at a local receiver: a follow-up run that fails, the
enrollment it failed, and the reconciler finding a stranded enrollment each reach the receiver."""

from __future__ import annotations

import json
import threading
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from prefect.blocks.notifications import CustomWebhookNotificationBlock
from prefect.client.orchestration import get_client
from prefect.deployments import run_deployment

from followups.alerts import apply_automations, automations
from followups.control import enroll_deal
from followups.errors import InvalidInputError
from followups.identity import database_tag
from support import deal_input, enrollment_row, new_owner, new_sequence, reach_wait, wait_for


class Receiver:
    """A webhook endpoint on loopback that keeps every JSON body it is sent."""

    def __init__(self) -> None:
        self.bodies: list[dict] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                length = int(self.headers.get("Content-Length") or 0)
                receiver.bodies.append(json.loads(self.rfile.read(length) or b"{}"))
                self.send_response(200)
                self.end_headers()

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_port}/hook"

    def matching(self, text: str) -> list[dict]:
        return [body for body in self.bodies if text in body.get("subject", "") + body.get("body", "")]


@pytest.fixture(scope="module")
def alerting(sequence_runner):
    receiver = Receiver()
    name = f"followups-alerts-{uuid.uuid4().hex[:8]}"
    CustomWebhookNotificationBlock(
        name="followups test receiver", url=receiver.url, method="POST",
        json_data={"subject": "{{subject}}", "body": "{{body}}"},
    ).save(name)
    applied = apply_automations(f"custom-webhook/{name}")
    yield receiver, name, applied
    receiver.server.shutdown()


def _ours() -> list:
    prefix = f"followups {database_tag().split(':')[1]}:"
    with get_client(sync_client=True) as client:
        return [a for a in client.read_automations() if a.name.startswith(prefix)]


def test_apply_creates_three_automations_and_is_idempotent(alerting, cli):
    _, name, applied = alerting
    assert [a.action for a in applied] == ["created"] * 3 or [a.action for a in applied] == ["updated"] * 3
    code, out, err = cli("automations", "apply", "--block", f"custom-webhook/{name}", "--json")
    assert code == 0, err
    assert [item["action"] for item in json.loads(out)] == ["updated"] * 3
    ours = _ours()
    assert sorted(a.name.split(": ", 1)[1] for a in ours) == [
        "enrollment failed", "follow-up run failed or crashed", "reconciler found stranded enrollments",
    ]
    assert all(a.enabled and a.actions[0].type == "send-notification" for a in ours)


def test_apply_names_a_missing_or_unset_block(sequence_runner, cli):
    code, out, err = cli("automations", "apply", "--block", "custom-webhook/no-such-block")
    assert code == 1 and out == ""
    assert err.strip().splitlines() == [
        "error: notification_block: no Prefect block 'custom-webhook/no-such-block'; "
        "create it in the Prefect UI (Blocks) or with the Python API"
    ]
    with pytest.raises(InvalidInputError) as refused:
        apply_automations("not a reference")
    assert refused.value.field == "notification_block"


def test_a_failed_step_alerts_for_the_run_and_the_enrollment(alerting, fake_providers):
    receiver, _, _ = alerting
    owner = new_owner()
    deal = deal_input()
    fake_providers.script(str(deal.seller_email), [400])
    steps = [{"type": "EMAIL", "subject": "Offer", "text": "Hi"}, {"type": "SMS", "body": "Any news?"}]
    enrollment = enroll_deal(owner, deal, new_sequence(owner, steps))
    wait_for(lambda: enrollment_row(enrollment.id).status == "FAILED", timeout=90, what="the enrollment to fail")

    wait_for(lambda: receiver.matching(f"enrollment {enrollment.id} (deal {deal.external_id}) failed"),
             timeout=60, what="the enrollment-failed notification")
    [failed] = receiver.matching(f"enrollment {enrollment.id} (deal {deal.external_id}) failed")
    assert "at step 0" in failed["body"] and "400" in failed["body"]
    assert str(deal.seller_email) not in json.dumps(receiver.bodies)  # ids, never addresses

    run_id = str(enrollment_row(enrollment.id).prefect_flow_run_id)
    wait_for(lambda: receiver.matching(run_id), timeout=60, what="the run-failed notification")
    [run_failed] = receiver.matching(run_id)
    assert "Failed" in run_failed["subject"]


def test_the_reconciler_alerts_on_a_stranded_enrollment(alerting, fake_providers):
    receiver, _, _ = alerting
    _, enrollment_id, _ = reach_wait(30)
    with get_client(sync_client=True) as client:
        client.delete_flow_run(enrollment_row(enrollment_id).prefect_flow_run_id)
    run = run_deployment("reconcile-enrollments/followups", timeout=120)
    assert run.state.is_completed(), run.state
    wait_for(lambda: [b for b in receiver.matching("stranded") if str(enrollment_id) in b["body"]],
             timeout=60, what="the stranded-enrollments notification")


def test_automations_of_two_databases_do_not_overlap():
    mine = automations("followups-db:aaaaaaaa", uuid.uuid4())
    theirs = automations("followups-db:bbbbbbbb", uuid.uuid4())
    assert not {a.name for a in mine} & {a.name for a in theirs}
    for automation in mine:
        matches = json.dumps(automation.trigger.model_dump(mode="json"))
        assert "aaaaaaaa" in matches and "bbbbbbbb" not in matches
