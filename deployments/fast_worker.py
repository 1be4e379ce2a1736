"""The fast execution path: run the deployments' flow runs inside one long-lived process.

`python -m followups.deployments.fast_worker --concurrency 8 --poll 0.5`

Same deployments as `followups serve` (follow-up-sequence/followups, and the two small ones in
deployments.definitions.local_deployments() that its triggers start), same flow and task runs,
states, logs and retries in the Prefect UI, but no new Python process per flow run: a flow run
is executed by Prefect's own flow engine (`prefect.flow_engine.run_flow`) on one of N threads of
this process. The stock runner and the process worker keep working; any of them can serve the
same deployments at the same time (the server lets exactly one of them claim each run), so the
fast worker can also take over deployments registered with `prefect deploy` for a work pool.

Our flows and tasks are synchronous (SQLAlchemy, httpx): threads, not asyncio tasks, run them.

How it works
- Poll: `get_scheduled_flow_runs_for_deployments(scheduled_before=now, limit=<free threads>)`
  every `poll` seconds (immediately again while a backlog keeps every thread busy). The same
  call the stock runner makes, so the deployment shows as Ready in the UI.
- Claim right after fetching, one run at a time, and only when a thread is free to start it at
  once: propose `Pending` (with this worker's identity in the state message). The server refuses
  a second claimer; a run we fail to claim is skipped. Nothing is queued between claim and start
  (two executors that queued claimed runs before starting them ran 1 of 300 twice).
- Execute: `run_flow(flow, flow_run=run, return_type="state")` on the thread. The engine
  reports Running/Completed/Failed, creates the task runs, and does task retries as always.
- Per-run costs removed (measured on this machine): each thread keeps one Prefect API client for
  its whole life (`SyncClientContext`); the flow gets an explicit result storage so the engine
  does not GET the server's default storage block per run; `PREFECT_FLOWS_HEARTBEAT_FREQUENCY`
  is None inside runs and one worker thread emits the same `prefect.flow-run.heartbeat` events
  for every run in flight; when the server does not enforce CSRF (its default), client CSRF
  support is off, saving a GET per new client. Private patches (engine_patches.py, the only
  module with any): the per-run suspension observer is skipped (the flow checks its own run
  state at each step, so pause still works), and the task engine asks only for the tag
  concurrency limits that exist (one API call, one client and one leaked thread per task run
  otherwise). Idle per-tag-set concurrency services are drained.

Guarantees
- Bounded concurrency: at most `concurrency` runs at once (plus replacements for hung runs, see
  below, at most `concurrency` more threads in total).
- Graceful shutdown: SIGTERM/SIGINT (or `stop_event`) stops claiming; runs in flight finish;
  then the process exits. A second signal exits at once; the runs it abandons are recovered.
- Crash isolation: a run that raises is reported Failed by the engine and the thread takes the
  next run. A run whose engine itself breaks (e.g. the API was unreachable) is proposed Crashed.
  A run that hangs longer than `hang_seconds` keeps its thread, but a replacement thread takes
  its slot, so the others go on. What threads cannot isolate (a segfault, `os._exit`) ends the
  process like it would end one stock run process; the runs it held are then recovered:
- Recovery: at start (and every `recover_seconds`), runs of the deployment left Pending/Running
  by a fast worker on this host whose process is gone (checked by pid + process start time) are
  marked Crashed and rescheduled (`AwaitingRetry`, due now); any worker then runs them again.
  The flow resumes from the database, and the step task's attempt record makes a send that was
  in flight when the process died `STEP_OUTCOME_UNKNOWN` instead of sending it twice.
- Cancel from the Prefect UI: a run in flight that turns `Cancelling` gets a cancellation
  exception raised in its thread (like the stock runner's SIGTERM to its process) and is then
  marked `Cancelled`.
"""

from __future__ import annotations

import argparse
import contextlib
import contextvars
import ctypes
import fcntl
import importlib
import logging
import os
import queue
import signal
import socket
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from prefect.client.orchestration import SyncPrefectClient, get_client
from prefect.client.schemas.filters import (
    FlowRunFilter,
    FlowRunFilterDeploymentId,
    FlowRunFilterId,
    FlowRunFilterState,
    FlowRunFilterStateType,
    TaskRunFilter,
    TaskRunFilterFlowRunId,
)
from prefect.client.schemas.objects import FlowRun, StateType
from prefect.context import SyncClientContext
from prefect.events import emit_event
from prefect.exceptions import Abort, ObjectNotFound, Pause
from prefect.flow_engine import run_flow
from prefect.flows import Flow
from prefect.logging.loggers import patch_print
from prefect.exceptions import PrefectHTTPStatusError
from prefect.settings import (
    PREFECT_CLIENT_CSRF_SUPPORT_ENABLED,
    PREFECT_FLOWS_HEARTBEAT_FREQUENCY,
    get_current_settings,
    temporary_settings,
)
from prefect.states import AwaitingRetry, Cancelled, Crashed, Pending
from prefect.utilities.engine import propose_state_sync

from followups.deployments import engine_patches

logger = logging.getLogger("followups.fast_worker")

CLAIM_PREFIX = "claimed by fast-worker"
DEFAULT_CONCURRENCY = 8
DEFAULT_POLL_SECONDS = 0.5
# Task-run tags naming one enrollment or deal (followups.tasks.send_step.configured_send_step).
PER_ENTITY_TAG_PREFIXES = ("tag:enrollment:", "tag:deal:")


# --- worker identity and liveness ------------------------------------------------------------


def _process_start_ticks(pid: int) -> str | None:
    """Field 22 of /proc/<pid>/stat: distinguishes a live process from a reused pid."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return raw[raw.rindex(")") + 2 :].split()[19]


@dataclass(frozen=True)
class WorkerIdentity:
    host: str
    pid: int
    started: str
    token: str

    @classmethod
    def current(cls) -> WorkerIdentity:
        pid = os.getpid()
        return cls(socket.gethostname(), pid, _process_start_ticks(pid) or "0", uuid.uuid4().hex[:8])

    @property
    def marker(self) -> str:
        return f"{CLAIM_PREFIX} host={self.host} pid={self.pid} started={self.started} id={self.token}"

    @classmethod
    def parse(cls, message: str | None) -> WorkerIdentity | None:
        if not message or not message.startswith(CLAIM_PREFIX):
            return None
        try:
            parts = dict(item.split("=", 1) for item in message[len(CLAIM_PREFIX) :].split())
            return cls(parts["host"], int(parts["pid"]), parts["started"], parts["id"])
        except (KeyError, ValueError):
            return None

    def is_alive_here(self) -> bool | None:
        """True/False for a worker on this host; None when it runs elsewhere (unknowable here)."""
        if self.host != socket.gethostname():
            return None
        return _process_start_ticks(self.pid) == self.started


# --- the flow as the fast path runs it --------------------------------------------------------


def _fast_flow(flow: Flow[..., Any], result_dir: Path) -> Flow[..., Any]:
    """The deployment's flow with an explicit result storage, so the engine does not ask the
    server for its default storage block on every run. Whether results are persisted stays as
    it was (the flow's own setting, else PREFECT_RESULTS_PERSIST_BY_DEFAULT)."""
    if flow.result_storage is not None:
        return flow
    persist = flow.persist_result
    if persist is None:
        persist = get_current_settings().results.persist_by_default
    return flow.with_options(result_storage=result_dir, persist_result=persist)


def _load_entrypoint(entrypoint: str) -> Flow[..., Any]:
    module_name, _, attribute = entrypoint.replace(":", ".").rpartition(".")
    return getattr(importlib.import_module(module_name), attribute)


def server_uses_csrf(client: SyncPrefectClient) -> bool:
    """Whether the Prefect server enforces CSRF tokens (off by default). When it does not, every
    new API client would still GET /csrf-token once, so the worker turns client CSRF support
    off in that case (PREFECT_CLIENT_CSRF_SUPPORT_ENABLED)."""
    try:
        client.request("GET", "/csrf-token", params={"client": str(uuid.uuid4())})  # type: ignore[arg-type]
    except PrefectHTTPStatusError as exc:
        return exc.response.status_code != 422
    except Exception:  # noqa: BLE001 - keep Prefect's default when in doubt
        return True
    return True


def ensure_deployments(client: SyncPrefectClient) -> dict[uuid.UUID, Flow[..., Any]]:
    """The product's deployments (deployments.definitions.local_deployments(): the ones
    `followups serve` serves), by id, with their flows. A deployment that does not exist yet is
    registered (with its triggers); an existing one, e.g. from `prefect deploy`, is left as is."""
    from followups.deployments.definitions import local_deployments

    found: dict[uuid.UUID, Flow[..., Any]] = {}
    for deployment in local_deployments():
        name = f"{deployment.flow_name}/{deployment.name}"
        try:
            deployment_id = client.read_deployment_by_name(name).id
        except ObjectNotFound:
            logger.info("Deployment %s does not exist: registering it", name)
            deployment_id = deployment.apply()
        found[deployment_id] = _load_entrypoint(deployment.entrypoint)
    return found


def ensure_deployment(client: SyncPrefectClient) -> uuid.UUID:
    """The id of follow-up-sequence/followups (registering the product's deployments if missing)."""
    from followups.settings import get_settings

    ensure_deployments(client)
    return client.read_deployment_by_name(get_settings().deployment_name).id


class _CancelledByPrefect(Abort):
    """Raised inside a run's thread when its flow run was cancelled in Prefect."""


def _raise_in_thread(thread_id: int, exc_type: type[BaseException]) -> bool:
    result = ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread_id), ctypes.py_object(exc_type))
    if result > 1:  # more than one thread state touched: undo
        ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread_id), None)
        return False
    return result == 1


# --- executor threads -------------------------------------------------------------------------


@dataclass
class _Slot:
    """One executor thread with its own long-lived API client."""

    index: int
    inbox: queue.SimpleQueue = field(default_factory=queue.SimpleQueue)
    thread: threading.Thread | None = None
    run: FlowRun | None = None
    started_at: float = 0.0
    retired: bool = False  # replaced because its run hung: exits after that run
    cancel_sent: bool = False


class FastWorker:
    def __init__(
        self,
        concurrency: int = DEFAULT_CONCURRENCY,
        poll_seconds: float = DEFAULT_POLL_SECONDS,
        stop_event: threading.Event | None = None,
        *,
        hang_seconds: float = 600.0,
        recover_seconds: float = 30.0,
        cancel_check_seconds: float = 2.0,
        tag_limit_refresh_seconds: float = 10.0,
        shutdown_grace_seconds: float | None = None,
    ) -> None:
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        self.concurrency = concurrency
        self.poll_seconds = max(poll_seconds, 0.05)
        self.stop_event = stop_event or threading.Event()
        self.hang_seconds = hang_seconds
        self.recover_seconds = recover_seconds
        self.cancel_check_seconds = cancel_check_seconds
        self.tag_limit_refresh_seconds = tag_limit_refresh_seconds
        self.shutdown_grace_seconds = shutdown_grace_seconds
        self.identity = WorkerIdentity.current()
        self.flows: dict[uuid.UUID, Flow[..., Any]] = {}  # deployment id -> flow
        self.counts = {"claimed": 0, "skipped": 0, "completed": 0, "failed": 0, "crashed": 0, "recovered": 0, "cancelled": 0}
        self._counts_lock = threading.Lock()
        self._idle: queue.SimpleQueue[_Slot] = queue.SimpleQueue()
        self._slots: list[_Slot] = []
        self._lock = threading.Lock()
        self._slot_freed = threading.Event()
        self._context: contextvars.Context | None = None
        self._result_dir = Path(tempfile.gettempdir()) / "followups-fast-worker-results"

    def _count(self, what: str) -> None:
        with self._counts_lock:
            self.counts[what] += 1

    # -- public ------------------------------------------------------------------------------

    @property
    def in_flight(self) -> list[FlowRun]:
        with self._lock:
            return [s.run for s in self._slots if s.run is not None]

    def run(self) -> None:
        """Serve until `stop_event` is set; then finish the runs in flight and return."""
        engine_patches.apply()
        self._result_dir.mkdir(parents=True, exist_ok=True)
        heartbeat = get_current_settings().flows.heartbeat_frequency
        updates: dict[Any, Any] = {PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}
        with get_client(sync_client=True) as probe:
            if not server_uses_csrf(probe):
                updates[PREFECT_CLIENT_CSRF_SUPPORT_ENABLED] = False
        with (
            temporary_settings(updates=updates),
            # print → run log for the whole process, instead of each run swapping builtins.print
            # in and out (which races between threads).
            patch_print(),
            get_client(sync_client=True) as client,
        ):
            self._context = contextvars.copy_context()
            self.flows = {
                deployment_id: _fast_flow(flow, self._result_dir)
                for deployment_id, flow in ensure_deployments(client).items()
            }
            logger.info(
                "Fast worker %s serving %s with %s threads, polling every %ss",
                self.identity.marker,
                ", ".join(f"{f.name} ({d})" for d, f in self.flows.items()),
                self.concurrency,
                self.poll_seconds,
            )
            for _ in range(self.concurrency):
                self._idle.put(self._new_slot())
            if heartbeat:
                self._start_thread(self._heartbeat_loop, "fast-worker-heartbeat", heartbeat)
            self._refresh_tag_limits(client)
            self._recover(client)
            try:
                self._serve(client)
            finally:
                self._drain(client)
        logger.info("Fast worker stopped: %s", self.counts)

    # -- main loop -----------------------------------------------------------------------------

    def _serve(self, client: SyncPrefectClient) -> None:
        next_recover = time.monotonic() + self.recover_seconds
        next_cancel_check = time.monotonic() + self.cancel_check_seconds
        next_tag_limits = time.monotonic() + self.tag_limit_refresh_seconds
        while not self.stop_event.is_set():
            backlog = False
            try:
                backlog = self._poll_once(client)
            except Exception:
                logger.exception("Polling for scheduled flow runs failed; retrying")
            now = time.monotonic()
            with contextlib.suppress(Exception):
                self._watch_for_hung_runs(now)
            if now >= next_cancel_check:
                next_cancel_check = now + self.cancel_check_seconds
                with contextlib.suppress(Exception):
                    self._check_cancellations(client)
                self._drain_idle_services()
            if now >= next_tag_limits:
                next_tag_limits = now + self.tag_limit_refresh_seconds
                self._refresh_tag_limits(client)
            if now >= next_recover:
                next_recover = now + self.recover_seconds
                with contextlib.suppress(Exception):
                    self._recover(client)
            if backlog:
                # every thread busy and runs still waiting: poll again as soon as one frees up
                self._slot_freed.wait(self.poll_seconds)
                self._slot_freed.clear()
            else:
                self.stop_event.wait(self.poll_seconds)

    def _poll_once(self, client: SyncPrefectClient) -> bool:
        """Fetch due runs for the free threads, claim and start them. True when a backlog remains."""
        free = self._idle.qsize()
        if free == 0:
            return True
        assert self.flows, "no deployments to serve"
        runs = client.get_scheduled_flow_runs_for_deployments(
            deployment_ids=list(self.flows),
            scheduled_before=datetime.now(UTC),
            limit=free,
        )
        runs.sort(key=lambda r: r.next_scheduled_start_time or r.expected_start_time or datetime.now(UTC))
        started = 0
        for flow_run in runs:
            if self.stop_event.is_set():
                break
            try:
                slot = self._idle.get_nowait()
            except queue.Empty:
                break
            if self._claim(client, flow_run):
                self._assign(slot, flow_run)
                started += 1
            else:
                self._idle.put(slot)
        return len(runs) >= free and started > 0

    def _claim(self, client: SyncPrefectClient, flow_run: FlowRun) -> bool:
        try:
            state = propose_state_sync(client, Pending(message=self.identity.marker), flow_run_id=flow_run.id)
        except Abort as exc:
            logger.debug("Flow run %s was claimed elsewhere: %s", flow_run.id, exc)
            self._count("skipped")
            return False
        except Exception:
            logger.exception("Could not claim flow run %s", flow_run.id)
            self._count("skipped")
            return False
        if not state.is_pending():
            self._count("skipped")
            return False
        flow_run.state = state
        self._count("claimed")
        return True

    # -- slots -----------------------------------------------------------------------------------

    def _start_thread(self, target, name: str, *args: Any) -> threading.Thread:
        context = (self._context or contextvars.copy_context()).copy()
        thread = threading.Thread(target=context.run, args=(target, *args), name=name, daemon=True)
        thread.start()
        return thread

    def _new_slot(self) -> _Slot:
        with self._lock:
            slot = _Slot(index=len(self._slots))
            self._slots.append(slot)
        slot.thread = self._start_thread(self._slot_loop, f"fast-worker-{slot.index}", slot)
        return slot

    def _assign(self, slot: _Slot, flow_run: FlowRun) -> None:
        with self._lock:
            slot.run = flow_run
            slot.started_at = time.monotonic()
            slot.cancel_sent = False
        slot.inbox.put(flow_run)

    def _slot_loop(self, slot: _Slot) -> None:
        # One API client for every run this thread executes.
        with SyncClientContext():
            while True:
                flow_run = slot.inbox.get()
                if flow_run is None:
                    return
                try:
                    self._execute(flow_run)
                except BaseException:  # noqa: BLE001 - nothing may kill the thread
                    logger.exception("Unexpected error around flow run %s", flow_run.id)
                finally:
                    with self._lock:
                        slot.run = None
                        retired = slot.retired
                    if not retired:
                        self._idle.put(slot)
                    self._slot_freed.set()
                if retired:
                    return

    def _execute(self, flow_run: FlowRun) -> None:
        flow = self.flows.get(flow_run.deployment_id) if flow_run.deployment_id else None
        if flow is None:
            self._mark_crashed_if_unfinished(flow_run, "fast worker: this worker does not serve the run's deployment")
            return
        try:
            state = run_flow(flow, flow_run=flow_run, return_type="state")
        except Pause:
            return  # suspended/paused: the server holds it until resumed
        except _CancelledByPrefect:
            self._finish_cancelled(flow_run)
            return
        except Abort as exc:
            logger.info("Flow run %s was aborted by the server: %s", flow_run.id, exc)
            return
        except BaseException as exc:  # noqa: BLE001
            logger.exception("The engine failed running flow run %s", flow_run.id)
            self._mark_crashed_if_unfinished(flow_run, f"fast worker: the engine failed: {exc!r}")
            return
        if state is not None and state.is_completed():
            self._count("completed")
        elif state is not None and state.is_failed():
            self._count("failed")

    def _mark_crashed_if_unfinished(self, flow_run: FlowRun, message: str) -> None:
        self._count("crashed")
        with contextlib.suppress(Exception), get_client(sync_client=True) as client:
            current = client.read_flow_run(flow_run.id)
            if current.state is not None and not current.state.is_final() and not current.state.is_paused():
                propose_state_sync(client, Crashed(message=message), flow_run_id=flow_run.id)

    def _finish_cancelled(self, flow_run: FlowRun) -> None:
        self._count("cancelled")
        with contextlib.suppress(Exception), get_client(sync_client=True) as client:
            current = client.read_flow_run(flow_run.id)
            if current.state is not None and current.state.type == StateType.CANCELLING:
                client.set_flow_run_state(
                    flow_run.id, Cancelled(message="Cancelled in Prefect; stopped by the fast worker"), force=True
                )

    # -- watchdogs ---------------------------------------------------------------------------

    def _watch_for_hung_runs(self, now: float) -> None:
        """A run past `hang_seconds` keeps its thread; a new thread takes its slot (bounded)."""
        hung: list[_Slot] = []
        with self._lock:
            total_threads = sum(1 for s in self._slots if not (s.retired and s.run is None))
            for slot in self._slots:
                if slot.run is not None and not slot.retired and now - slot.started_at > self.hang_seconds:
                    hung.append(slot)
        for slot in hung:
            if total_threads >= 2 * self.concurrency:
                logger.warning("Flow run %s is hung, and no replacement thread is left", slot.run and slot.run.id)
                continue
            logger.warning(
                "Flow run %s has run for more than %ss: giving its slot to a new thread",
                slot.run and slot.run.id,
                self.hang_seconds,
            )
            with self._lock:
                slot.retired = True
            self._idle.put(self._new_slot())
            total_threads += 1

    def _check_cancellations(self, client: SyncPrefectClient) -> None:
        with self._lock:
            busy = {s.run.id: s for s in self._slots if s.run is not None and not s.cancel_sent}
        if not busy:
            return
        cancelling = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(
                id=FlowRunFilterId(any_=list(busy)),
                state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.CANCELLING])),
            )
        )
        for flow_run in cancelling:
            slot = busy.get(flow_run.id)
            if slot is None or slot.thread is None or slot.thread.ident is None:
                continue
            with self._lock:
                if slot.run is None or slot.run.id != flow_run.id:
                    continue
                slot.cancel_sent = True
                delivered = _raise_in_thread(slot.thread.ident, _CancelledByPrefect)
            logger.info("Flow run %s was cancelled in Prefect: stopping it (%s)", flow_run.id, delivered)

    @staticmethod
    def _refresh_tag_limits(client: SyncPrefectClient) -> None:
        try:
            engine_patches.TAG_LIMITS.refresh(client)
        except Exception:  # noqa: BLE001 - unknown: ask the server for every tag, as Prefect does
            logger.warning("Could not read the tag concurrency limits; not filtering tags", exc_info=True)
            engine_patches.TAG_LIMITS.set(None)

    def _drain_idle_services(self) -> None:
        """Stop Prefect's per-tag-set concurrency services that no run in flight can use (see
        engine_patches.drain_idle_concurrency_services): one would otherwise stay per task run."""
        busy = {f"tag:{tag}" for run in self.in_flight for tag in (run.tags or [])}

        def in_use(names: frozenset[str]) -> bool:
            per_entity = {n for n in names if n.startswith(PER_ENTITY_TAG_PREFIXES)}
            return not per_entity or bool(per_entity & busy)

        engine_patches.drain_idle_concurrency_services(in_use)

    def _heartbeat_loop(self, frequency: int) -> None:
        """One thread emits Prefect's flow-run heartbeat for every run in flight."""
        from prefect import __version__

        while not self.stop_event.wait(frequency):
            for flow_run in self.in_flight:
                with contextlib.suppress(Exception):
                    related = [{"prefect.resource.id": f"prefect.flow.{flow_run.flow_id}", "prefect.resource.role": "flow"}]
                    if flow_run.deployment_id:
                        related.append(
                            {
                                "prefect.resource.id": f"prefect.deployment.{flow_run.deployment_id}",
                                "prefect.resource.role": "deployment",
                            }
                        )
                    emit_event(
                        event="prefect.flow-run.heartbeat",
                        resource={
                            "prefect.resource.id": f"prefect.flow-run.{flow_run.id}",
                            "prefect.resource.name": flow_run.name or "",
                            "prefect.version": __version__,
                        },
                        related=related,
                    )

    # -- recovery of runs a dead fast worker left behind ---------------------------------------

    def _recover(self, client: SyncPrefectClient) -> None:
        lock_path = Path(tempfile.gettempdir()) / "followups-fast-worker-recover.lock"
        with open(lock_path, "a+") as lock_file:
            try:
                fcntl.flock(lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return  # another worker on this host is recovering right now
            try:
                self._recover_locked(client)
            finally:
                fcntl.flock(lock_file, fcntl.LOCK_UN)

    def _recover_locked(self, client: SyncPrefectClient) -> None:
        ours = {r.id for r in self.in_flight}
        candidates = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(
                deployment_id=FlowRunFilterDeploymentId(any_=list(self.flows)),
                state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.PENDING, StateType.RUNNING])),
            ),
            limit=200,
        )
        for flow_run in candidates:
            if flow_run.id in ours:
                continue
            claimer = self._claimer_of(client, flow_run)
            if claimer is None or claimer.token == self.identity.token:
                continue
            if claimer.is_alive_here() is not False:
                continue  # alive, or on another host (its own restart recovers it)
            current = client.read_flow_run(flow_run.id)
            if current.state is None or current.state.type not in (StateType.PENDING, StateType.RUNNING):
                continue
            self._reschedule_orphan(client, current, claimer)

    @staticmethod
    def _claimer_of(client: SyncPrefectClient, flow_run: FlowRun) -> WorkerIdentity | None:
        if flow_run.state is not None and flow_run.state.is_pending():
            return WorkerIdentity.parse(flow_run.state.message)
        states = client.read_flow_run_states(flow_run.id)
        for state in sorted(states, key=lambda s: s.timestamp, reverse=True):
            if state.type == StateType.PENDING:
                return WorkerIdentity.parse(state.message)
        return None

    def _reschedule_orphan(self, client: SyncPrefectClient, flow_run: FlowRun, claimer: WorkerIdentity) -> None:
        why = f"fast worker pid {claimer.pid} on {claimer.host} exited while running this flow run"
        logger.warning("Recovering flow run %s: %s", flow_run.id, why)
        for task_run in client.read_task_runs(
            task_run_filter=TaskRunFilter(flow_run_id=TaskRunFilterFlowRunId(any_=[flow_run.id]))
        ):
            if task_run.state is not None and not task_run.state.is_final():
                with contextlib.suppress(Exception):
                    client.set_task_run_state(task_run.id, Crashed(message=why), force=True)
        client.set_flow_run_state(flow_run.id, Crashed(message=why), force=True)
        client.set_flow_run_state(
            flow_run.id,
            AwaitingRetry(
                scheduled_time=datetime.now(UTC) - timedelta(seconds=1),
                message=f"Rescheduled by fast worker {self.identity.token} after a crash",
            ),
            force=True,
        )
        self._count("recovered")

    # -- shutdown ------------------------------------------------------------------------------

    def _drain(self, client: SyncPrefectClient) -> None:
        deadline = None if self.shutdown_grace_seconds is None else time.monotonic() + self.shutdown_grace_seconds
        waiting = self.in_flight
        if waiting:
            logger.info("Stopping: waiting for %s flow run(s) in flight", len(waiting))
        while self.in_flight:
            if deadline is not None and time.monotonic() > deadline:
                logger.warning(
                    "Shutdown grace period over with %s flow run(s) in flight; a restarted worker "
                    "recovers them",
                    len(self.in_flight),
                )
                return
            self._slot_freed.wait(0.2)
            self._slot_freed.clear()
        with self._lock:
            slots = list(self._slots)
        for slot in slots:
            slot.inbox.put(None)
        for slot in slots:
            if slot.thread is not None:
                slot.thread.join(timeout=5)


def run_fast_worker(
    concurrency: int = DEFAULT_CONCURRENCY,
    poll_seconds: float = DEFAULT_POLL_SECONDS,
    stop_event: threading.Event | None = None,
    **options: Any,
) -> None:
    """Run the deployment's flow runs in this process until stopped (SIGTERM/SIGINT/stop_event).

    In the main thread, the first SIGTERM or SIGINT stops claiming and lets the runs in flight
    finish; a second one exits at once (the runs it abandons are recovered by the next worker).
    """
    stop = stop_event or threading.Event()
    worker = FastWorker(concurrency, poll_seconds, stop, **options)
    previous: dict[int, Any] = {}
    if threading.current_thread() is threading.main_thread():

        def on_signal(signum: int, frame: Any) -> None:
            if stop.is_set():
                logger.warning("Second %s: exiting now", signal.Signals(signum).name)
                os._exit(128 + signum)
            logger.info("%s: no new flow runs; finishing the ones in flight", signal.Signals(signum).name)
            stop.set()

        for sig in (signal.SIGTERM, signal.SIGINT):
            previous[sig] = signal.signal(sig, on_signal)
    try:
        worker.run()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m followups.deployments.fast_worker",
        description="Run follow-up-sequence flow runs in one long-lived process (Prefect's flow engine on N threads).",
    )
    parser.add_argument("--concurrency", type=int, default=DEFAULT_CONCURRENCY, help="flow runs at once (threads)")
    parser.add_argument("--poll", type=float, default=DEFAULT_POLL_SECONDS, help="seconds between polls for due runs")
    parser.add_argument(
        "--hang-seconds", type=float, default=600.0, help="a run in flight longer than this gets its slot replaced"
    )
    parser.add_argument(
        "--shutdown-grace",
        type=float,
        default=None,
        help="seconds to wait for runs in flight after SIGTERM (default: as long as they take)",
    )
    parser.add_argument("--log-level", default=os.environ.get("FOLLOWUPS_FAST_WORKER_LOG_LEVEL", "INFO"))
    args = parser.parse_args(argv)
    if args.concurrency < 1:
        parser.error("--concurrency must be at least 1")
    if args.poll <= 0:
        parser.error("--poll must be positive")
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logger.setLevel(args.log_level.upper())
    run_fast_worker(
        concurrency=args.concurrency,
        poll_seconds=args.poll,
        hang_seconds=args.hang_seconds,
        shutdown_grace_seconds=args.shutdown_grace,
    )


if __name__ == "__main__":
    main()
