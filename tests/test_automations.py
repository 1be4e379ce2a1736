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
    assert [a.action for a in applied] in (["created"] * 4, ["updated"] * 4)
    code, out, err = cli("automations", "apply", "--block", f"custom-webhook/{name}", "--json")
    assert code == 0, err
    assert [item["action"] for item in json.loads(out)] == ["updated"] * 4
    ours = _ours()
    assert sorted(a.name.split(": ", 1)[1] for a in ours) == [
        "crash follow-up runs whose heartbeat stopped", "enrollment failed", "follow-up run failed or crashed",
        "reconciler found stranded enrollments",
    ]
    assert sorted(a.actions[0].type for a in ours) == ["change-flow-run-state"] + ["send-notification"] * 3
    assert all(a.enabled for a in ours)


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
    # Without a block: the zombie-run rule alone (it notifies nobody), and a note saying so.
    code, out, err = cli("automations", "apply")
    assert code == 0, err
    assert out.splitlines()[-1].startswith("no notification block")
    assert [line.split(": ", 1)[0] for line in out.splitlines()[:-1]] in (["created"], ["updated"])


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


class ZombieWorld:
    """The zombie-run rule applied with 10 s of silence (the setting's default is 90 s) and
    matching a tag only this test's runs carry, so that no other run of the session's server
    (they beat every 30 s) can be taken for a zombie; runs of a real waiting enrollment, due in
    30 days so that no runner picks them up."""

    def __init__(self) -> None:
        from prefect.events.schemas.automations import AutomationCore

        from followups.alerts import zombie_rule

        self.tag = f"followups-db:{uuid.uuid4().hex[:8]}"
        with get_client(sync_client=True) as client:
            self.rule_id = client.create_automation(AutomationCore(**zombie_rule(self.tag, 10).model_dump(exclude={"id"})))
        owner = new_owner()
        self.enrollment = enroll_deal(owner, deal_input(), new_sequence(owner, [{"type": "WAIT", "days": 3}, {"type": "SMS", "body": "Hi"}]))
        wait_for(lambda: enrollment_row(self.enrollment.id).next_due_at is not None, timeout=60, what="the wait to start")
        self.runs: list[uuid.UUID] = []

    def run(self, name: str) -> uuid.UUID:
        """A follow-up run created with the tag, as served runs are: a state event names the
        tags the run was created with (Prefect caches them), not tags added later."""
        from datetime import UTC, datetime, timedelta

        from prefect.states import Scheduled

        from followups.settings import get_settings

        with get_client(sync_client=True) as client:
            deployment = client.read_deployment_by_name(get_settings().deployment_name)
            run_id = client.create_flow_run_from_deployment(
                deployment.id,
                parameters={"enrollment_id": self.enrollment.id},
                state=Scheduled(scheduled_time=datetime.now(UTC) + timedelta(days=30)),
                name=f"zombie test · {name}",
                tags=[self.tag, f"enrollment:{self.enrollment.id}"],
            ).id
        self.runs.append(run_id)
        return run_id

    def state_of(self, run_id: uuid.UUID) -> str:
        with get_client(sync_client=True) as client:
            return client.read_flow_run(run_id).state.type.value

    def close(self) -> None:
        from prefect.states import Cancelled

        with get_client(sync_client=True) as client:
            client.delete_automation(self.rule_id)
            for run_id in self.runs:
                if self.state_of(run_id) not in ("COMPLETED", "CRASHED"):
                    client.set_flow_run_state(run_id, Cancelled(), force=True)


def test_a_follow_up_run_whose_heartbeat_stops_is_marked_crashed(sequence_runner):
    """Prefect's recipe for runs whose process died with its runner: heartbeats, then silence.
    The run here beats twice, as a runner's flow-run process does, and then goes quiet."""
    import time

    from prefect.events import emit_event
    from prefect.states import Running

    world = ZombieWorld()
    try:
        zombie = world.run("zombie")
        with get_client(sync_client=True) as client:
            client.set_flow_run_state(zombie, Running(), force=True)
            run = client.read_flow_run(zombie)
            flow = client.read_flow(run.flow_id)
        related = [{"prefect.resource.id": f"prefect.flow.{flow.id}", "prefect.resource.role": "flow", "prefect.resource.name": flow.name}]
        related += [{"prefect.resource.id": f"prefect.tag.{tag}", "prefect.resource.role": "tag"} for tag in run.tags]
        for _ in range(2):
            emit_event(event="prefect.flow-run.heartbeat", resource={"prefect.resource.id": f"prefect.flow-run.{zombie}"}, related=related)
            time.sleep(1)
        wait_for(lambda: world.state_of(zombie) == "CRASHED", timeout=90, what="the silent run to be marked Crashed")
    finally:
        world.close()


def test_a_follow_up_run_left_claimed_or_started_by_a_killed_runner_is_marked_crashed(sequence_runner):
    """A runner claims a run (Pending, Submitting) before it is due and is killed before it starts
    the run's process, or the process dies right after proposing Running, before any heartbeat:
    nothing else would ever move those runs. A run that goes on to finish is left alone."""
    import time

    from prefect.states import Completed, Pending, Running, Submitting

    world = ZombieWorld()
    try:
        claimed, started, healthy = world.run("claimed"), world.run("started"), world.run("healthy")
        with get_client(sync_client=True) as client:
            for run_id in (claimed, started, healthy):
                # Forced: Prefect makes a claim of a run due in 30 days wait for its time.
                client.set_flow_run_state(run_id, Pending(), force=True)
                # The runner's next claim step, an event of its own (named after the state).
                client.set_flow_run_state(run_id, Submitting())
            assert {world.state_of(r) for r in (claimed, started, healthy)} == {"PENDING"}
            time.sleep(2)
            client.set_flow_run_state(started, Running())
            client.set_flow_run_state(healthy, Running())
            time.sleep(2)
            client.set_flow_run_state(healthy, Completed())
        wait_for(lambda: world.state_of(claimed) == "CRASHED", timeout=90, what="the claimed run to be marked Crashed")
        wait_for(lambda: world.state_of(started) == "CRASHED", timeout=30, what="the started run to be marked Crashed")
        # The healthy run's windows closed before the started one's.
        time.sleep(3)
        assert world.state_of(healthy) == "COMPLETED"
    finally:
        world.close()
