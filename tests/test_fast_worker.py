"""The fast worker (followups.worker): what only the fast path has to prove (every run claimed
by it, bounded threads, hung and failing runs, retries, cancels, graceful shutdown, SIGKILL +
restart, patched names). The sequence, pause, resume and cancel tests of the rest of the suite
run on a fast worker too: it is the session's executor (tests/conftest.py). The fast worker here
has a Prefect server of its own (see fast_worker_fixtures.py), so no other executor can take
its runs.
"""

from __future__ import annotations

import contextvars
import logging
import os
import signal
import threading
import time
import uuid

import httpx
import pytest
import respx
from prefect import flow
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowFilter, FlowFilterName, FlowRunFilter, FlowRunFilterTags
from prefect.client.schemas.objects import FlowRun, StateType
from prefect.exceptions import Abort
from prefect.states import Pending, Running

from fast_worker_fixtures import fast_worker, fast_worker_api, fast_worker_server, fast_workers  # noqa: F401 - fixtures
from followups.control import cancel_enrollment, enroll_deal
from followups.prefect_runs import schedule_sequence_run
from followups.worker import concurrency_patches, polling
from followups.worker.executing import Executor
from followups.worker.identity import WorkerIdentity
from support import FAST_SEQUENCE, deal_input, enrollment_row, event_types, events_of, new_owner, new_sequence, unique, wait_for

ONE_EMAIL = [{"type": "EMAIL", "subject": "Offer on {{ deal.property_address }}", "text": "Hi {{ seller.first_name }}"}]

pytestmark = pytest.mark.slow


def runs_of(enrollment_id: int) -> list[FlowRun]:
    """The enrollment's follow-up-sequence runs (sync runs carry its tags too)."""
    with get_client(sync_client=True) as client:
        return client.read_flow_runs(
            flow_filter=FlowFilter(name=FlowFilterName(any_=["follow-up-sequence"])),
            flow_run_filter=FlowRunFilter(tags=FlowRunFilterTags(all_=[f"enrollment:{enrollment_id}"])),
        )


def final_runs_of(enrollment_id: int, count: int) -> list[FlowRun]:
    """The enrollment's `count` runs once Prefect shows each in a final state (the enrollment's
    COMPLETED row commits before the last run reports Completed)."""
    return wait_for(
        lambda: (runs := runs_of(enrollment_id)) and len(runs) == count
        and all(r.state is not None and r.state.is_final() for r in runs) and runs,
        timeout=30, what=f"{count} runs of enrollment {enrollment_id} in a final state",
    )


def claimers_of(flow_run_id) -> list[WorkerIdentity | None]:
    """Who claimed the run, in order (a Pending state per claim)."""
    with get_client(sync_client=True) as client:
        states = sorted(client.read_flow_run_states(flow_run_id), key=lambda s: s.timestamp)
    return [WorkerIdentity.parse(s.message) for s in states if s.type == StateType.PENDING]


def state_names(flow_run_id) -> list[str]:
    with get_client(sync_client=True) as client:
        return [s.name for s in sorted(client.read_flow_run_states(flow_run_id), key=lambda s: s.timestamp)]


# --- no Prefect server needed ------------------------------------------------------------------


def test_the_tag_filter_keeps_existing_limits_only():
    limits = concurrency_patches.TAG_LIMITS
    limits.set(frozenset({"tag:followups"}))
    try:
        assert concurrency_patches.keep_existing(["tag:followups", "tag:deal:D-1", "tag:step:0"]) == ["tag:followups"]
        limits.set(None)  # unknown: ask for every tag, as Prefect does
        assert concurrency_patches.keep_existing(["tag:deal:D-1"]) == ["tag:deal:D-1"]
    finally:
        limits.set(None)


def test_worker_identity_round_trips_and_knows_a_dead_process():
    me = WorkerIdentity.current()
    parsed = WorkerIdentity.parse(me.marker)
    assert parsed == me and parsed.is_alive_here() is True
    dead = WorkerIdentity(me.host, me.pid, "1", me.token)  # same pid, other start time
    assert dead.is_alive_here() is False
    assert WorkerIdentity("elsewhere", 1, "1", "x").is_alive_here() is None
    assert WorkerIdentity.parse("Pending") is None


class _FakeClient:
    """What the main loop asks the API, for the thread-pool test below."""

    def __init__(self, runs: list[FlowRun]):
        self.runs = runs
        self.lock = threading.Lock()

    def get_scheduled_flow_runs_for_deployments(self, deployment_ids, scheduled_before, limit):
        with self.lock:
            return list(self.runs[:limit])

    def read_flow_runs(self, **kwargs):
        return []

    def read_global_concurrency_limits(self, limit, offset):
        return []


def test_threads_are_bounded_and_a_hung_or_failing_run_does_not_stop_the_others(fast_worker_api, monkeypatch, caplog):
    runs = [FlowRun(flow_id=uuid.uuid4(), name=name) for name in ["hang", "boom", "taken", *[f"ok-{i}" for i in range(10)]]]
    late = [FlowRun(flow_id=uuid.uuid4(), name=f"late-{i}") for i in range(6)]  # due after the replacement
    client = _FakeClient(runs)
    executed: list[str] = []
    active = {"now": 0, "max": 0}  # runs in flight other than the hung one
    release_hung = threading.Event()
    guard = threading.Lock()

    def claim(client_, state, flow_run_id, force=False):
        run = next(r for r in runs + late if r.id == flow_run_id)
        with client.lock:
            client.runs.remove(run)  # the server moves it out of Scheduled
        if run.name == "taken":
            raise Abort("claimed by another worker")
        return Pending()

    def execute(self, flow_run):
        with guard:
            executed.append(flow_run.name)
        if flow_run.name == "hang":
            release_hung.wait(20)
            return
        with guard:
            active["now"] += 1
            active["max"] = max(active["max"], active["now"])
        try:
            if flow_run.name == "boom":
                raise RuntimeError("a run that raises")
            time.sleep(0.2 if flow_run.name.startswith("late-") else 0.01)
        finally:
            with guard:
                active["now"] -= 1

    monkeypatch.setattr(polling, "propose_state_sync", claim)
    monkeypatch.setattr(Executor, "execute", execute)
    caplog.set_level(logging.WARNING, logger="followups.fast_worker")
    stop = threading.Event()
    # a short-but-not-too-short hang threshold: the other runs take 10 ms, even on a loaded machine
    worker = polling.FastWorker(concurrency=2, poll_seconds=0.05, stop_event=stop, hang_seconds=2.0)
    executor = worker.executor
    executor.flows = {uuid.uuid4(): None}
    executor.start(contextvars.copy_context())
    loop = threading.Thread(target=worker._serve, args=(client,), daemon=True)
    loop.start()
    try:
        wait_for(lambda: sum(n.startswith("ok-") for n in executed) == 10, timeout=30, what="the other runs")
        # the hung run keeps its thread; after hang_seconds a replacement takes its slot
        wait_for(lambda: len(executor._slots) == 3, timeout=15, what="a replacement for the hung run's thread")
        time.sleep(0.3)
        assert len(executor._slots) == 3 and sum(s.retired for s in executor._slots) == 1
        assert [s.run.name for s in executor._slots if s.retired] == ["hang"]
        # the warning shows where the hung run is stuck
        hung_warning = next(r.getMessage() for r in caplog.records if "giving its slot" in r.getMessage())
        assert "release_hung.wait(20)" in hung_warning, hung_warning
        with client.lock:
            client.runs.extend(late)
        wait_for(lambda: sum(n.startswith("late-") for n in executed) == 6, timeout=15, what="runs on the new thread")
        assert active["max"] == 2  # two threads besides the hung one, never more
        assert "taken" not in executed and executed.count("boom") == 1
        assert worker.counts["skipped"] == 1 and worker.counts["claimed"] == 18
    finally:
        release_hung.set()
        stop.set()
        loop.join(10)
        executor.finish(grace_seconds=None)
    assert not loop.is_alive()
    assert all(not (s.thread and s.thread.is_alive()) for s in executor._slots)


@flow(name="followups-crash-report-probe")
def _crash_report_probe() -> None:
    """Never run: a flow to create flow runs of."""


def _running_run() -> FlowRun:
    with get_client(sync_client=True) as client:
        return client.create_flow_run(_crash_report_probe, state=Running())


def _answer_500_first(times: int):
    """A respx side effect: Prefect answers 500 (its database is restarting) `times` times, then
    the request goes through to the real server."""
    seen = {"n": 0}

    def effect(request: httpx.Request):
        seen["n"] += 1
        return httpx.Response(500, json={"detail": "database restarting"}) if seen["n"] <= times else request

    return effect, seen


def test_a_run_the_engine_could_not_finish_is_reported_crashed_once_the_server_answers(fast_worker_api, caplog):
    flow_run = _running_run()
    executor = Executor(1, float("inf"), polling.RunCounts())
    read_effect, reads = _answer_500_first(2)
    state_effect, proposals = _answer_500_first(2)
    caplog.set_level(logging.INFO, logger="followups.fast_worker")
    with respx.mock(assert_all_called=False) as mock:
        mock.get(f"{fast_worker_api}/flow_runs/{flow_run.id}").mock(side_effect=read_effect)
        mock.post(f"{fast_worker_api}/flow_runs/{flow_run.id}/set_state").mock(side_effect=state_effect)
        mock.route().pass_through()
        executor._mark_crashed_if_unfinished(flow_run, "fast worker: the engine failed: probe")
    with get_client(sync_client=True) as client:
        state = client.read_flow_run(flow_run.id).state
    assert state.type == StateType.CRASHED and state.message == "fast worker: the engine failed: probe"
    # two 500s on the read, then two on the proposal: four retries, then one answered proposal
    assert reads["n"] >= 3 and proposals["n"] >= 3
    assert sum("retrying" in r.getMessage() for r in caplog.records) == 4
    assert executor.counts["crashed"] == 1


def test_the_crash_report_gives_up_after_its_bound_and_never_retries_a_4xx(fast_worker_api, caplog):
    flow_run = _running_run()
    executor = Executor(1, float("inf"), polling.RunCounts())
    executor.crash_report_seconds = 2.0
    read_effect, reads = _answer_500_first(10**6)
    caplog.set_level(logging.INFO, logger="followups.fast_worker")
    started = time.monotonic()
    with respx.mock(assert_all_called=False) as mock:
        mock.get(f"{fast_worker_api}/flow_runs/{flow_run.id}").mock(side_effect=read_effect)
        mock.route().pass_through()
        executor._mark_crashed_if_unfinished(flow_run, "never reported")
    assert time.monotonic() - started < 2.0 + 5  # the bound, plus one last answer
    assert 2 <= reads["n"] <= 4  # 0.5 s, 1 s: the next wait would pass the bound
    assert any("Could not report flow run" in r.getMessage() for r in caplog.records)
    with get_client(sync_client=True) as client:
        assert client.read_flow_run(flow_run.id).state.type == StateType.RUNNING
    # a run the server does not know (deleted) is given up at once: asking again cannot help
    caplog.clear()
    gone = FlowRun(flow_id=flow_run.flow_id, name="deleted")
    started = time.monotonic()
    executor._mark_crashed_if_unfinished(gone, "deleted")
    assert time.monotonic() - started < 5
    assert not any("retrying" in r.getMessage() for r in caplog.records)


# --- sequences on the fast worker of this module -------------------------------------------------


def test_every_run_of_a_sequence_was_claimed_by_the_fast_worker(fast_worker, fake_providers):
    owner = new_owner()
    deal = deal_input(seller_email=f"{unique('fw')}@example.com")
    enrollment = enroll_deal(owner, deal, new_sequence(owner, FAST_SEQUENCE))
    wait_for(lambda: enrollment_row(enrollment.id).status == "COMPLETED", timeout=60, what="COMPLETED")
    runs = final_runs_of(enrollment.id, 3)
    assert all(r.state.is_completed() for r in runs)
    finals = []
    for run in runs:
        claimers = claimers_of(run.id)
        assert len(claimers) == 1 and claimers[0] is not None and claimers[0].pid == fast_worker.pid
        assert state_names(run.id)[-3:-1] == ["Pending", "Running"]
        finals.append(state_names(run.id)[-1])
    # Runs that end at a wait say so; the last one completes the sequence.
    assert sorted(finals) == ["Completed", "Waiting", "Waiting"]
    with get_client(sync_client=True) as client:
        task_runs = [t for r in runs for t in client.read_task_runs() if t.flow_run_id == r.id]
    assert len(task_runs) == 3 and all(t.state.is_completed() for t in task_runs)
    assert len(fake_providers.for_recipient(str(deal.seller_email))) == 2
    assert len(fake_providers.for_recipient(deal.seller_phone)) == 1


def test_sigusr1_writes_every_threads_stack_and_the_worker_goes_on(fast_worker, fake_providers):
    before = len(fast_worker.log(10**7))
    os.kill(fast_worker.pid, signal.SIGUSR1)
    wait_for(lambda: "_slot_loop" in fast_worker.log(10**7)[before:], timeout=10, what="the stack dump")
    dump = fast_worker.log(10**7)[before:]
    assert "Current thread" in dump or "Thread 0x" in dump
    test_every_run_of_a_sequence_was_claimed_by_the_fast_worker(fast_worker, fake_providers)


def test_two_server_errors_then_success_retries_and_sends_once(fast_worker, fake_providers):
    email = f"{unique('retry')}@example.com"
    fake_providers.script(email, [500, 500])
    owner = new_owner()
    enrollment = enroll_deal(owner, deal_input(seller_email=email), new_sequence(owner, ONE_EMAIL))
    wait_for(lambda: enrollment_row(enrollment.id).status == "COMPLETED", timeout=60, what="COMPLETED")

    requests = fake_providers.for_recipient(email)
    assert [r.status for r in requests] == [500, 500, 202]
    types = event_types(enrollment.id)
    assert types.count("STEP_RETRY") == 2 and types.count("EMAIL_SENT") == 1
    [run] = runs_of(enrollment.id)
    with get_client(sync_client=True) as client:
        [task_run] = [t for t in client.read_task_runs() if t.flow_run_id == run.id]
        task_states = [s.name for s in sorted(client.read_task_run_states(task_run.id), key=lambda s: s.timestamp)]
    assert task_run.state.is_completed() and task_run.run_count == 3  # Prefect's own task retries
    assert task_states.count("AwaitingRetry") == 2


def test_a_run_that_fails_is_reported_failed_and_the_others_go_on(fast_worker, fake_providers):
    broken = schedule_sequence_run(10**9, "no-such-deal", 0, scheduled_time=None)  # no such enrollment
    owner = new_owner()
    deal = deal_input(seller_email=f"{unique('ok')}@example.com")
    enrollment = enroll_deal(owner, deal, new_sequence(owner, ONE_EMAIL))
    wait_for(lambda: enrollment_row(enrollment.id).status == "COMPLETED", timeout=60, what="COMPLETED")
    with get_client(sync_client=True) as client:
        wait_for(lambda: client.read_flow_run(broken).state.is_final(), timeout=30, what="the broken run to end")
        assert client.read_flow_run(broken).state.is_failed()
    assert fast_worker.alive()


def test_cancelling_a_running_run_in_prefect_stops_it_and_the_worker_goes_on(fast_worker, fake_providers):
    """What the UI's "Cancel" does to a running run: Cancelling, then the executor stops the run
    (the stock runner kills its process; the fast worker raises in the run's thread) and
    reports Cancelled."""
    from prefect.states import Cancelling

    owner = new_owner()
    sequence = new_sequence(owner, ONE_EMAIL)
    fake_providers.latency_seconds = 3
    try:
        enrollment = enroll_deal(owner, deal_input(seller_email=f"{unique('cancel')}@example.com"), sequence)
        wait_for(lambda: "STEP_ATTEMPT" in event_types(enrollment.id), timeout=30, what="the send to start")
        with get_client(sync_client=True) as client:
            client.set_flow_run_state(enrollment.flow_run_id, Cancelling(), force=True)
            wait_for(
                lambda: client.read_flow_run(enrollment.flow_run_id).state.is_cancelled(), timeout=30, what="Cancelled"
            )
    finally:
        fake_providers.latency_seconds = 0
    assert fast_worker.alive()
    other = enroll_deal(owner, deal_input(seller_email=f"{unique('after')}@example.com"), sequence)
    wait_for(lambda: enrollment_row(other.id).status == "COMPLETED", timeout=60, what="the next enrollment")


# --- shutdown and crashes (each with its own worker process) -----------------------------------


def test_sigterm_stops_claiming_and_lets_the_run_in_flight_finish(fast_workers, fake_providers):
    worker = fast_workers.dedicated("graceful")
    owner = new_owner()
    sequence = new_sequence(owner, ONE_EMAIL)
    first = deal_input(seller_email=f"{unique('inflight')}@example.com")
    fake_providers.latency_seconds = 2
    try:
        in_flight = enroll_deal(owner, first, sequence)
        wait_for(lambda: "STEP_ATTEMPT" in event_types(in_flight.id), timeout=30, what="the send to start")
        stopping = time.monotonic()
        os.killpg(worker.pid, signal.SIGTERM)
        later = enroll_deal(owner, deal_input(seller_email=f"{unique('later')}@example.com"), sequence)
        assert worker.process.wait(timeout=30) == 0
    finally:
        fake_providers.latency_seconds = 0
    assert time.monotonic() - stopping >= 1  # it waited for the step in flight
    assert "EMAIL_SENT" in event_types(in_flight.id) and enrollment_row(in_flight.id).status == "COMPLETED"
    [run] = runs_of(in_flight.id)
    assert run.state.is_completed()
    # the run that became due after SIGTERM was not claimed: still scheduled for the next worker
    [waiting] = runs_of(later.id)
    assert waiting.state.is_scheduled() and claimers_of(waiting.id) == []
    cancel_enrollment(later.id)


def test_sigkill_mid_send_then_a_restarted_worker_finishes_with_one_send_per_step(fast_workers, fake_providers, monkeypatch):
    owner = new_owner()
    deal = deal_input(seller_email=f"{unique('killed')}@example.com")
    arrived = threading.Event()
    handle = fake_providers._handle

    def noting_arrival(handler, body):  # the request reached the provider (before its latency)
        if str(deal.seller_email).encode() in body:
            arrived.set()
        return handle(handler, body)

    monkeypatch.setattr(fake_providers, "_handle", noting_arrival)
    first = fast_workers.dedicated("killed")
    fake_providers.latency_seconds = 2
    try:
        enrollment = enroll_deal(owner, deal, new_sequence(owner, FAST_SEQUENCE))
        assert arrived.wait(30), "the first send never reached the provider"
        first.kill()  # while the provider is still answering
    finally:
        fake_providers.latency_seconds = 0
    [killed_run] = runs_of(enrollment.id)
    assert killed_run.state.type == StateType.RUNNING  # nobody told Prefect

    second = fast_workers.dedicated("restarted")
    wait_for(lambda: enrollment_row(enrollment.id).status == "COMPLETED", timeout=60, what="COMPLETED after restart")

    # one provider request per step, the in-flight one included (it reached the provider)
    assert len(fake_providers.for_recipient(str(deal.seller_email))) == 2
    assert len(fake_providers.for_recipient(deal.seller_phone)) == 1
    types = event_types(enrollment.id)
    assert types.count("STEP_OUTCOME_UNKNOWN") == 1 and types.count("EMAIL_SENT") == 1 and types.count("SMS_SENT") == 1
    unknown = [e for e in events_of(enrollment.id) if e.event_type == "STEP_OUTCOME_UNKNOWN"][0]
    assert unknown.step_index == 0
    # Prefect shows what happened to the killed run: Crashed, rescheduled, run again, Completed
    names = state_names(killed_run.id)
    assert names[names.index("Crashed") :] == ["Crashed", "AwaitingRetry", "Pending", "Running", "Waiting"]
    assert [c.pid for c in claimers_of(killed_run.id)] == [first.pid, second.pid]
    runs = final_runs_of(enrollment.id, 3)
    assert all(r.state.is_completed() for r in runs)
