"""The module's own Prefect server (on PostgreSQL) stopped for a while and started again on the
same port and database, while runs are due, scheduled and in flight, under the fast worker and
under the stock runner (`followups serve`), which both keep running across the outage.

Three waves of enrollments: waits that fall due during the outage, waits due after it, and
sequences being sent at the moment of the stop. Nothing is lost: every enrollment completes
within a bound (an operator may run `followups reconcile`; how often it had to repair is
reported), each step goes out at most once, a wait due during the outage goes out only after
the server is back (nothing can claim a run meanwhile) and no wait goes out early, the
executors survive, and the event log is unchanged.
"""

from __future__ import annotations

import time
from datetime import datetime

import pytest

from checks import EventLedger, check_sends, fault_report, fault_schedule, full_only, scale, wait_final_states  # noqa: F401
from fault_world import attempts_in_flight, reconciled_count
from scenario_world import calls_by_enrollment, enroll_many, events_by_enrollment, operator_reconcile, own_world
from support import wait_for

pytestmark = pytest.mark.faults

OUTAGE = scale(10, 30)
# Seconds from enrolling the waiting waves to the stop (their first email and WAIT_STARTED come
# first), and before the stop when the busy wave is enrolled: the stock runner starts a process
# per flow run, so it needs longer.
LEAD = {"fast": (12.0, 2.5), "stock": (35.0, 8.0)}


def waiting_steps(wait_seconds: int) -> list[dict]:
    return [
        {"type": "EMAIL", "subject": "Offer on {{ deal.property_address }}", "text": "Hi {{ seller.first_name }}"},
        {"type": "WAIT", "seconds": wait_seconds},
        {"type": "SMS", "body": "Hi {{ seller.first_name }}, any thoughts on our offer?"},
    ]


# Being sent at the stop: three sends a second apart, so a run is mid-sequence whenever it stops.
BUSY_STEPS = [
    {"type": "EMAIL", "subject": "Offer on {{ deal.property_address }}", "text": "Hi {{ seller.first_name }}"},
    {"type": "WAIT", "seconds": 1},
    {"type": "EMAIL", "subject": "Following up", "text": "Still interested?"},
    {"type": "WAIT", "seconds": 1},
    {"type": "SMS", "body": "Hi {{ seller.first_name }}, any thoughts?"},
]


@pytest.fixture
def world(database_url, tmp_path_factory, request):
    name = "outage_" + request.node.name.rsplit("_", 1)[-1][:10]
    # A little provider latency keeps the in-flight wave's sends open across the stop.
    with own_world(tmp_path_factory.mktemp(name), name, latency_seconds=0.1) as world:
        yield world


def _enroll_waves(rng, outage: float, lead: float, count: int) -> dict[str, list[int]]:
    """Enrollments whose wait falls due during the outage ("during") and after it ("after"),
    grouped by wait length (one sequence per length)."""
    waits = {"during": [], "after": []}
    for _ in range(count):
        wave = rng.choice(["during", "during", "after"])
        offset = rng.uniform(1, outage - 2) if wave == "during" else outage + rng.uniform(2, 12)
        waits[wave].append(int(lead + offset))
    waves: dict[str, list[int]] = {"during": [], "after": []}
    for wave, lengths in waits.items():
        for length in sorted(set(lengths)):
            waves[wave] += enroll_many(lengths.count(length), waiting_steps(length))
    return waves


def _due_times(ids: list[int]) -> dict[int, float]:
    events = events_by_enrollment(ids)
    due = {}
    for enrollment_id, evs in events.items():
        started = [e for e in evs if e.event_type == "WAIT_STARTED"]
        if started:
            due[enrollment_id] = datetime.fromisoformat(started[0].content["due_at"]).timestamp()
    return due


def _outage(world, rng, fault_report, kind: str) -> None:
    lead, busy_lead = LEAD[kind]
    ledger = EventLedger()
    ledger.checkpoint("before")
    enrolled_at = time.monotonic()
    waves = _enroll_waves(rng, OUTAGE, lead, scale(12, 40) if kind == "fast" else scale(6, 24))
    waiting = waves["during"] + waves["after"]
    wait_for(lambda: len(_due_times(waiting)) == len(waiting), timeout=lead + 30, interval=0.3,
             what="every waiting wave's first email and WAIT_STARTED before the stop")
    busy_count = scale(8, 30) if kind == "fast" else scale(3, 12)
    time.sleep(max(0.0, enrolled_at + lead - busy_lead - time.monotonic()))
    waves["busy"] = enroll_many(busy_count, BUSY_STEPS)
    time.sleep(max(0.0, enrolled_at + lead - time.monotonic()) + rng.uniform(0, 1.5))

    ledger.checkpoint("at the stop")
    stopped = time.time()
    world.server.stop()
    started_at_stop = {e for e, evs in events_by_enrollment(waves["busy"]).items() if len(evs) > 1}
    in_flight_attempts = attempts_in_flight(waves["busy"])
    time.sleep(max(0.0, stopped + OUTAGE - time.time()))
    alive_during = world.executors_alive()
    world.server.start()
    back = time.time()
    print(f"server away {back - stopped:.1f}s; busy wave started at the stop: {len(started_at_stop)}/{busy_count}; "
          f"attempts open at the stop: {len(in_flight_attempts)}")
    ledger.checkpoint("after the restart")

    ids = waves["during"] + waves["after"] + waves["busy"]
    cli_runs: list[list[tuple[int, str]]] = []

    def repair() -> None:
        cli_runs.append(operator_reconcile(ids))

    try:
        wait_final_states({e: "COMPLETED" for e in ids}, timeout=scale(120, 240), repair=repair,
                          repair_every=scale(20, 30))
    except AssertionError as exc:
        raise AssertionError(f"{exc}\nexecutors alive: {world.executors_alive()}\n{world.logs()}") from None
    finished = time.time()
    alive_after = world.executors_alive()
    assert all(alive_during.values()), f"an executor died during the outage: {alive_during}\n{world.logs()}"
    assert all(alive_after.values()), f"an executor died after the outage: {alive_after}\n{world.logs()}"
    ledger.checkpoint("all final")

    # A send in flight at the stop may have reached the provider while its outcome could not be
    # recorded (the run failed on the API): the one case where outcome-unknown is acceptable.
    sends = check_sends(world.fake, ids, accept_unknown=in_flight_attempts)

    due = _due_times(waves["during"] + waves["after"])
    calls = calls_by_enrollment(world.fake, waves["during"] + waves["after"])
    problems = []
    due_during = 0
    delays = []  # seconds from the server's return to the send of a wait due meanwhile
    for enrollment_id in waves["during"] + waves["after"]:
        sms = [c for c in calls[enrollment_id] if c.provider != "sendgrid"]
        if len(sms) != 1:
            problems.append(f"enrollment {enrollment_id}: {len(sms)} SMS requests")
            continue
        sent = sms[0].received_at
        if sent < due[enrollment_id] - 0.5:
            problems.append(f"enrollment {enrollment_id}: SMS {due[enrollment_id] - sent:.1f}s before its wait was due")
        if stopped <= due[enrollment_id] <= back:
            due_during += 1
            # Nothing can claim a run while the server is away: due meanwhile means sent after.
            if sent < back:
                problems.append(f"enrollment {enrollment_id}: due during the outage, sent {back - sent:.1f}s before it ended")
            delays.append(sent - back)
    assert not problems, "\n".join(problems[:40])
    assert due_during, "no wait fell due during the outage: the schedule did not test what it should"
    ledger.assert_unchanged()

    repaired = reconciled_count(ids)
    fault_report.add_sends(sends)
    fault_report.stranded_repaired += repaired
    fault_report.extra.update(
        executor=kind,
        outage_seconds=round(back - stopped, 1),
        waves={k: len(v) for k, v in waves.items()},
        due_during_outage=due_during,
        busy_started_at_stop=len(started_at_stop),
        attempts_open_at_stop=len(in_flight_attempts),
        reconcile_cli_runs=len(cli_runs),
        reconcile_cli_found=[found for run in cli_runs for found in run],
        reconciled_enrollments=repaired,
        seconds_to_all_final_after_return=round(finished - back, 1),
        due_meanwhile_sent_after_return_seconds=[round(min(delays), 1), round(max(delays), 1)],
    )
    print(f"final {finished - back:.1f}s after the return; due meanwhile sent {min(delays):.1f}-{max(delays):.1f}s after it; reconcile runs {len(cli_runs)} "
          f"found {[f for run in cli_runs for f in run]}; enrollments with RECONCILED {repaired}; {sends.counts()}")
    fault_report.finish()


def test_prefect_outage_under_the_fast_worker(world, fault_schedule, fault_report):
    world.fast_worker(concurrency=4)
    _outage(world, fault_schedule, fault_report, "fast")


@full_only
def test_prefect_outage_under_the_stock_runner(world, fault_schedule, fault_report):
    world.stock_runner(limit=8)
    _outage(world, fault_schedule, fault_report, "stock")
