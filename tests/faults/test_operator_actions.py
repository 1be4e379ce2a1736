"""Operators in the Prefect UI, done with the API calls the UI makes, on a seeded mix of many
enrollments: waiting ones (their run Scheduled for the wait's due time) get their run deleted,
cancelled, suspended with a timeout that Prefect lets expire (then, for some, a run started by
hand with `run_deployment`), or suspended and resumed; running ones (a send in flight) get
their run suspended and resumed, or cancelled; finished ones get `run_deployment` again.

Each enrollment must end where the table of docs/operations/prefect-ui.md says, with
`followups reconcile` run as an operator would to repair what nothing listens for (counted),
no step sent twice, nothing sent after a cancel or while paused, and the event log unchanged.
"""

from __future__ import annotations

import re
import time
from datetime import datetime

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.responses import SetStateStatus
from prefect.deployments import run_deployment
from prefect.flow_runs import resume_flow_run, suspend_flow_run
from prefect.states import Cancelled, Cancelling, Suspended

from checks import EventLedger, check_sends, fault_report, fault_schedule, scale, statuses, wait_final_states  # noqa: F401
from fault_world import attempts_in_flight, reconciled_count, step_state
from scenario_world import calls_by_enrollment, enroll_many, events_by_enrollment, operator_reconcile, own_world
from support import enrollment_row, pending_run, wait_for_each

pytestmark = pytest.mark.faults

DEPLOYMENT = "follow-up-sequence/followups"
WAIT = scale(25, 40)  # long enough for every action on a waiting run to land before it is due


def steps(wait_seconds: int) -> list[dict]:
    return [
        {"type": "EMAIL", "subject": "Offer on {{ deal.property_address }}", "text": "Hi {{ seller.first_name }}"},
        {"type": "WAIT", "seconds": wait_seconds},
        {"type": "SMS", "body": "Hi {{ seller.first_name }}, any thoughts on our offer?"},
    ]


RUNNING_STEPS = [
    {"type": "EMAIL", "subject": "Offer on {{ deal.property_address }}", "text": "Hi {{ seller.first_name }}"},
    {"type": "SMS", "body": "Hi {{ seller.first_name }}, any thoughts on our offer?"},
]
# action -> the enrollment's final status (docs/operations/prefect-ui.md's table)
WAITING_ACTIONS = {
    "delete": "COMPLETED",  # repaired by the reconciler, sent at the due time
    "cancel": "CANCELLED",
    "suspend-expire": "PAUSED",  # the operator meant a pause; an expired suspend does not undo it
    "suspend-expire-run": "COMPLETED",  # a run started by hand takes the paused enrollment over
    "suspend-resume": "COMPLETED",
    "none": "COMPLETED",
}
RUNNING_ACTIONS = {"suspend-resume-running": "COMPLETED", "cancel-running": "CANCELLED"}
TOO_LATE = {"too-late": "COMPLETED"}  # a running action refused because the run had ended
# From the cancel call to the last moment a step may begin: the call's own latency, plus a check
# between steps that read the run just before the cancel was committed.
CANCEL_GRACE_SECONDS = 2.5


@pytest.fixture(scope="module")
def world(database_url, tmp_path_factory):
    with own_world(tmp_path_factory.mktemp("operators"), "operators") as world:
        yield world


def _run_of(enrollment_id: int):
    return enrollment_row(enrollment_id).prefect_flow_run_id


def _completed_before(enrollment_id: int, at: float) -> bool:
    return any(e.event_type == "COMPLETED" and e.occurred_at <= at for e in events_by_enrollment([enrollment_id])[enrollment_id])


def _state(client, run_id) -> str | None:
    run = client.read_flow_run(run_id)
    return run.state.type.value if run.state else None


def test_operators_act_on_runs_from_the_prefect_ui(world, fault_schedule, fault_report):
    rng = fault_schedule
    world.fast_worker(concurrency=8)
    ledger = EventLedger()
    ledger.checkpoint("before")

    # -- the waiting mix, and finished enrollments to start again -------------------------
    kinds = list(WAITING_ACTIONS)
    plan = rng.moments(scale(24, 80), kinds)
    waiting = enroll_many(len(plan), steps(WAIT))
    action = dict(zip(waiting, plan))
    finished = enroll_many(scale(4, 10), steps(1))
    action.update({e: "run-finished" for e in finished})
    wait_for_each(waiting, lambda e: "WAIT_STARTED" in {x.event_type for x in events_by_enrollment([e]).get(e, [])},
                  what="waits started")
    for e in waiting:
        pending_run(e)
    wait_final_states({e: "COMPLETED" for e in finished}, timeout=60)
    events_before_rerun = {e: [x.event_type for x in evs] for e, evs in events_by_enrollment(finished).items()}
    ledger.checkpoint("all waiting")

    acted_at: dict[int, float] = {}
    reruns = []
    with get_client(sync_client=True) as client:
        for enrollment_id in rng.sample(waiting, len(waiting)):  # the operators' order, seeded
            run_id, what = _run_of(enrollment_id), action[enrollment_id]
            acted_at[enrollment_id] = time.time()
            if what == "delete":
                client.delete_flow_run(run_id)
            elif what == "cancel":
                client.set_flow_run_state(run_id, Cancelled(message="cancelled in the UI"), force=True)
            elif what.startswith("suspend-expire"):
                # The UI's Pause dialog always sets a timeout; Prefect fails the run when it passes.
                client.set_flow_run_state(run_id, Suspended(timeout_seconds=rng.randint(1, 3)), force=True)
            elif what == "suspend-resume":
                client.set_flow_run_state(run_id, Suspended(timeout_seconds=600), force=True)
        for enrollment_id in finished:
            reruns.append(run_deployment(DEPLOYMENT, parameters={"enrollment_id": enrollment_id}, timeout=0))

        # Prefect itself expires the suspends (its pause-expiration service), then an operator starts a run by hand.
        expiring = [e for e in waiting if action[e].startswith("suspend-expire")]
        wait_for_each(expiring, lambda e: _state(client, _run_of(e)) == "FAILED", what="expired suspends failed by Prefect")
        time.sleep(rng.uniform(0, 3))
        for enrollment_id in (e for e in waiting if action[e] == "suspend-resume"):
            resume_flow_run(_run_of(enrollment_id))
        wait_final_states({e: "PAUSED" for e in expiring}, timeout=60, repair=lambda: operator_reconcile(expiring),
                          repair_every=10)
        for enrollment_id in (e for e in expiring if action[e] == "suspend-expire-run"):
            acted_at[enrollment_id] = time.time()
            run_deployment(DEPLOYMENT, parameters={"enrollment_id": enrollment_id}, timeout=0)
    ledger.checkpoint("waiting actions done")

    # -- running runs: a send in flight (the provider answers slowly) -----------------------
    # Slow answers from before the first run starts, so each is seen with its send in flight.
    world.fake.latency_seconds = 1.5
    running = enroll_many(scale(6, 16), RUNNING_STEPS)
    action.update(zip(running, rng.moments(len(running), RUNNING_ACTIONS)))
    try:
        pending = set(running)
        deadline = time.monotonic() + 90
        with get_client(sync_client=True) as client:
            while pending and time.monotonic() < deadline:
                attempted = {e for e, evs in events_by_enrollment(sorted(pending)).items()
                             if any(x.event_type == "STEP_ATTEMPT" for x in evs)}
                for enrollment_id in attempted:
                    run_id = _run_of(enrollment_id)
                    acted_at[enrollment_id] = time.time()
                    if action[enrollment_id] == "cancel-running":
                        taken = client.set_flow_run_state(run_id, Cancelling(message="cancelled in the UI"), force=False)
                        too_late = taken.status != SetStateStatus.ACCEPT
                    else:
                        try:
                            suspend_flow_run(flow_run_id=run_id, timeout=600)  # the UI's Pause on a running run
                            too_late = False
                        except RuntimeError as exc:  # what the UI shows too: the run has ended
                            too_late = "terminal state" in str(exc)
                            if not too_late:
                                raise
                    # Prefect takes a cancel until the run's final state, a moment after its
                    # enrollment completed: every step was done by then, so COMPLETED stands.
                    too_late = too_late or _completed_before(enrollment_id, time.time())
                    if too_late:
                        # On a loaded machine this loop can see a send so late that the run has
                        # already ended: the operator's action is refused and changes nothing.
                        action[enrollment_id] = "too-late"
                    pending.discard(enrollment_id)
                time.sleep(0.1)
        assert not pending, f"never saw a send in flight for {sorted(pending)}"
        in_flight = attempts_in_flight(running)
        suspended = [e for e in running if action[e] == "suspend-resume-running"]
        wait_final_states({e: "PAUSED" for e in suspended}, timeout=60, on_timeout=world.dump_stacks)
    finally:
        world.fake.latency_seconds = 0
    for enrollment_id in suspended:
        resume_flow_run(_run_of(enrollment_id))  # the UI's Resume
    ledger.checkpoint("running actions done")

    # -- everyone ends where the operator meant; the reconciler repairs the rest -------------
    ids = waiting + finished + running
    expected = {e: {**WAITING_ACTIONS, **RUNNING_ACTIONS, **TOO_LATE, "run-finished": "COMPLETED"}[action[e]] for e in ids}
    repairs: list[tuple[int, str]] = []
    wait_final_states(expected, timeout=scale(120, 240), repair=lambda: repairs.extend(operator_reconcile(ids)),
                      repair_every=15)
    # A send that should not happen would come once the waits are due: wait past them, then look again.
    due = {e: datetime.fromisoformat(x.content["due_at"]).timestamp()
           for e, evs in events_by_enrollment(waiting).items() for x in evs if x.event_type == "WAIT_STARTED"}
    time.sleep(max(0.0, max(due.values()) - time.time()) + 4)
    repairs.extend(operator_reconcile(ids))
    final = statuses(ids)
    wrong = {e: (action[e], final[e]) for e in ids if final[e] != expected[e]}
    assert not wrong, f"enrollments not where the operator meant (action, status): {wrong}"
    ledger.checkpoint("all final")

    # A cancel may land between a send's provider call and its commit: outcome-unknown is fair there.
    sends = check_sends(world.fake, ids, accept_unknown=in_flight, raise_on_violation=False)
    attempted = {k for k, types in step_state(ids).items() if "STEP_ATTEMPT" in types}

    def key_of(violation: str) -> tuple[int, int]:
        enrollment_id, step = re.match(r"\((\d+), (\d+)\)", violation).groups()
        return int(enrollment_id), int(step)

    # A step of a cancelled or paused enrollment that was never attempted rightly has no outcome
    # (check_sends counts it as reached because the CANCELLED/PAUSED event names it).
    never_attempted = [v for v in sends.violations if "0 outcome events []" in v and key_of(v) not in attempted
                       and expected[key_of(v)[0]] in ("CANCELLED", "PAUSED")]
    # A run cancelled while its send is in flight stops once the send's outcome is committed
    # (`tasks.stop_guard`): an attempt without an outcome is a violation like any other.
    real = [v for v in sends.violations if v not in never_attempted]
    if real:
        told = events_by_enrollment(sorted({key_of(v)[0] for v in real}))
        raise AssertionError(f"{len(real)} send-step violations:\n" + "\n".join(
            f"{v} (action {action[key_of(v)[0]]}; events {[(x.event_type, x.step_index) for x in told[key_of(v)[0]]]})"
            for v in real[:40]
        ) + f"\n{world.logs()[-6000:]}")

    calls = calls_by_enrollment(world.fake, ids)
    events = events_by_enrollment(ids)
    problems = []
    for enrollment_id in ids:
        what = action[enrollment_id]
        sms = [c for c in calls[enrollment_id] if c.provider != "sendgrid"]
        if expected[enrollment_id] == "COMPLETED" and len(sms) != 1:
            problems.append(f"{enrollment_id} ({what}): {len(sms)} SMS, expected 1")
        if what in ("cancel", "suspend-expire") and sms:
            problems.append(f"{enrollment_id} ({what}): SMS sent after the operator stopped it")
        if what == "cancel-running":
            # The cancel lands during a send, the EMAIL's or (on a loaded machine, seen late) the
            # SMS's: that send finishes. A step begun after it, or a call after it, is a violation.
            cancel_at = acted_at[enrollment_id] + CANCEL_GRACE_SECONDS
            begun = [x for x in events[enrollment_id] if x.event_type == "STEP_ATTEMPT" and x.occurred_at > cancel_at]
            late = [c for c in calls[enrollment_id] if c.received_at > cancel_at]
            if begun or late:
                attempts = [(x.step_index, round(x.occurred_at - acted_at[enrollment_id], 2))
                             for x in events[enrollment_id] if x.event_type == "STEP_ATTEMPT"]
                problems.append(f"{enrollment_id} ({what}): {len(begun)} steps begun / {len(late)} calls after the cancel "
                                f"({len(sms)} SMS; attempts (step, seconds after the cancel call): {attempts})")
        if enrollment_id in due and expected[enrollment_id] == "COMPLETED" and sms and sms[0].received_at < due[enrollment_id] - 0.5:
            problems.append(f"{enrollment_id} ({what}): SMS {due[enrollment_id] - sms[0].received_at:.1f}s before the wait was due")
        if what == "run-finished":
            if [x.event_type for x in events[enrollment_id]] != events_before_rerun[enrollment_id]:
                problems.append(f"{enrollment_id}: a run started on the finished enrollment changed its events")
    assert not problems, "\n".join(problems[:40])
    with get_client(sync_client=True) as client:
        rerun_states = [client.read_flow_run(r.id).state for r in reruns]
    assert all(s is not None and s.is_completed() for s in rerun_states), f"runs on finished enrollments: {rerun_states}"
    assert all(world.executors_alive().values()), f"an executor died:\n{world.logs()}"
    ledger.assert_unchanged()

    repaired = reconciled_count(ids)
    fault_report.add_sends(sends)
    fault_report.stranded_repaired += repaired
    fault_report.extra.update(
        actions={a: list(action.values()).count(a) for a in sorted(set(action.values()))},
        reconcile_cli_found=sorted({(e, a, action[e]) for e, a in repairs}),
        reconciled_by_action={a: sum(1 for e in ids if action[e] == a and "RECONCILED" in
                                     {x.event_type for x in events[e]}) for a in sorted(set(action.values()))},
        never_attempted_steps=len(never_attempted),
        # (enrollment, [(step, seconds after the cancel call)]): a cancel that landed during the SMS
        cancelled_during_sms=[(e, [(x.step_index, round(x.occurred_at - acted_at[e], 2))
                                   for x in events[e] if x.event_type == "STEP_ATTEMPT"])
                              for e in ids if action[e] == "cancel-running"
                              and any(c.provider != "sendgrid" for c in calls[e])],
    )
    print(f"actions {fault_report.extra['actions']}; reconcile found {fault_report.extra['reconcile_cli_found']}; "
          f"RECONCILED by action {fault_report.extra['reconciled_by_action']}; "
          f"cancelled during the SMS {fault_report.extra['cancelled_during_sms']}; {sends.counts()}")
    fault_report.finish()
