"""Running claimed flow runs in this process: one thread per slot, Prefect's own flow engine.

Each slot is a thread with one Prefect API client for its whole life (`SyncClientContext`). A
run is executed with `prefect.flow_engine.run_flow`, which reports Running/Completed/Failed,
creates the task runs and does task retries as always. What the engine cannot report itself
is reported here: a run whose engine broke is proposed Crashed, a run cancelled in Prefect is
stopped by raising in its thread (the stock runner kills its process) and marked Cancelled,
and a run that hangs keeps its thread while a new thread takes its slot.
"""

from __future__ import annotations

import contextlib
import contextvars
import ctypes
import functools
import logging
import queue
import sys
import threading
import time
import traceback
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
from prefect.client.orchestration import SyncPrefectClient, get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId, FlowRunFilterState, FlowRunFilterStateType
from prefect.client.schemas.objects import FlowRun, StateType
from prefect.context import SyncClientContext
from prefect.exceptions import Abort, Pause
from prefect.flow_engine import run_flow
from prefect.flows import Flow
from prefect.states import Cancelled, Crashed
from prefect.utilities.engine import propose_state_sync

from followups.tasks.stop_guard import stop_thread_when_safe

logger = logging.getLogger("followups.fast_worker")


class RunCounts(dict[str, int]):
    """What the worker did with the runs it saw (logged at exit)."""

    def __init__(self) -> None:
        super().__init__(claimed=0, skipped=0, completed=0, failed=0, crashed=0, recovered=0, cancelled=0)
        self._lock = threading.Lock()

    def add(self, what: str) -> None:
        with self._lock:
            self[what] += 1


class _CancelledByPrefect(Abort):
    """Raised inside a run's thread when its flow run was cancelled in Prefect."""


def _raise_in_thread(thread_id: int, exc_type: type[BaseException]) -> bool:
    result = ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread_id), ctypes.py_object(exc_type))
    if result > 1:  # more than one thread state touched: undo
        ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread_id), None)
        return False
    return result == 1


def _server_unavailable(exc: BaseException) -> bool:
    """A 5xx or no answer at all: worth asking again. A 4xx (say, the run was deleted) is not."""
    if isinstance(exc, httpx.HTTPStatusError):
        return exc.response.status_code >= 500
    return isinstance(exc, (httpx.TransportError, OSError))


def _stack_of(thread: threading.Thread | None) -> str:
    frame = sys._current_frames().get(thread.ident) if thread is not None and thread.ident else None
    return "".join(traceback.format_stack(frame)) if frame is not None else "(no stack)"


@dataclass
class _Slot:
    """One executor thread and the run it is executing."""

    index: int
    inbox: queue.SimpleQueue = field(default_factory=queue.SimpleQueue)
    thread: threading.Thread | None = None
    run: FlowRun | None = None
    started_at: float = 0.0
    retired: bool = False  # replaced because its run hung: exits after that run
    cancel_sent: bool = False
    on_done: Callable[[], None] | None = None  # told when the run ends, however it ends


class Executor:
    """At most `concurrency` runs at once, plus at most `concurrency` replacement threads for
    runs that hang longer than `hang_seconds`."""

    # How long a run the engine could not finish may hold its slot while the server is away.
    crash_report_seconds = 300.0

    def __init__(self, concurrency: int, hang_seconds: float, counts: RunCounts) -> None:
        self.concurrency = concurrency
        self.hang_seconds = hang_seconds
        self.counts = counts
        self.flows: dict[uuid.UUID, Flow[..., Any]] = {}  # deployment id -> flow
        self.slot_freed = threading.Event()
        self._idle: queue.SimpleQueue[_Slot] = queue.SimpleQueue()
        self._slots: list[_Slot] = []
        self._lock = threading.Lock()
        self._context: contextvars.Context | None = None

    def start(self, context: contextvars.Context) -> None:
        """Start the threads; each runs in a copy of `context` (the worker's settings)."""
        self._context = context
        for _ in range(self.concurrency):
            self._idle.put(self._new_slot())

    @property
    def in_flight(self) -> list[FlowRun]:
        with self._lock:
            return [s.run for s in self._slots if s.run is not None]

    def free_slots(self) -> int:
        return self._idle.qsize()

    def take_slot(self) -> _Slot | None:
        try:
            return self._idle.get_nowait()
        except queue.Empty:
            return None

    def return_slot(self, slot: _Slot) -> None:
        self._idle.put(slot)

    def start_run(self, slot: _Slot, flow_run: FlowRun, on_done: Callable[[], None] | None = None) -> None:
        with self._lock:
            slot.run = flow_run
            slot.started_at = time.monotonic()
            slot.cancel_sent = False
            slot.on_done = on_done
        slot.inbox.put(flow_run)

    def start_thread(self, target, name: str, *args: Any) -> threading.Thread:
        context = (self._context or contextvars.copy_context()).copy()
        thread = threading.Thread(target=context.run, args=(target, *args), name=name, daemon=True)
        thread.start()
        return thread

    # -- the threads -----------------------------------------------------------------------------

    def _new_slot(self) -> _Slot:
        with self._lock:
            slot = _Slot(index=len(self._slots))
            self._slots.append(slot)
        slot.thread = self.start_thread(self._slot_loop, f"fast-worker-{slot.index}", slot)
        return slot

    def _slot_loop(self, slot: _Slot) -> None:
        with SyncClientContext():  # one API client for every run this thread executes
            while True:
                flow_run = slot.inbox.get()
                if flow_run is None:
                    return
                try:
                    self.execute(flow_run)
                except BaseException:  # noqa: BLE001 - nothing may kill the thread
                    logger.exception("Unexpected error around flow run %s", flow_run.id)
                finally:
                    with self._lock:
                        slot.run = None
                        retired = slot.retired
                        on_done, slot.on_done = slot.on_done, None
                    if not retired:
                        self._idle.put(slot)
                    self.slot_freed.set()
                    if on_done is not None:
                        with contextlib.suppress(Exception):
                            on_done()
                if retired:
                    return

    def execute(self, flow_run: FlowRun) -> None:
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
            self.counts.add("completed")
        elif state is not None and state.is_failed():
            self.counts.add("failed")

    def _mark_crashed_if_unfinished(self, flow_run: FlowRun, message: str) -> None:
        """Propose Crashed unless the run already ended. Retried while the server cannot answer:
        the engine usually broke because the server (or its database) was away, and a run left
        Running is one nothing else repairs until the zombie-run automation, if any."""
        self.counts.add("crashed")
        deadline = time.monotonic() + self.crash_report_seconds
        delay = 0.5
        while True:
            try:
                with get_client(sync_client=True) as client:
                    current = client.read_flow_run(flow_run.id)
                    if current.state is not None and not current.state.is_final() and not current.state.is_paused():
                        propose_state_sync(client, Crashed(message=message), flow_run_id=flow_run.id)
                return
            except Exception as exc:  # noqa: BLE001 - reported below, never raised into the slot
                if not _server_unavailable(exc) or time.monotonic() + delay > deadline:
                    logger.warning("Could not report flow run %s Crashed: %r", flow_run.id, exc)
                    return
                logger.info("Reporting flow run %s Crashed: the server is unavailable (%r); retrying", flow_run.id, exc)
            time.sleep(delay)
            delay = min(delay * 2, 8.0)

    def _finish_cancelled(self, flow_run: FlowRun) -> None:
        self.counts.add("cancelled")
        with contextlib.suppress(Exception), get_client(sync_client=True) as client:
            current = client.read_flow_run(flow_run.id)
            if current.state is not None and current.state.type == StateType.CANCELLING:
                client.set_flow_run_state(
                    flow_run.id, Cancelled(message="Cancelled in Prefect; stopped by the fast worker"), force=True
                )

    # -- watchdogs (called from the main loop) -----------------------------------------------------

    def replace_hung_threads(self, now: float) -> None:
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
                "Flow run %s has run for more than %ss: giving its slot to a new thread; it is at:\n%s",
                slot.run and slot.run.id,
                self.hang_seconds,
                _stack_of(slot.thread),
            )
            with self._lock:
                slot.retired = True
            self._idle.put(self._new_slot())
            total_threads += 1

    def stop_cancelled_runs(self, client: SyncPrefectClient) -> None:
        """Raise a cancellation in the thread of each run in flight that turned Cancelling."""
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
            self.cancel(flow_run.id)

    def cancel(self, flow_run_id: uuid.UUID) -> bool:
        """Stop the run's thread (cancelled in Prefect). False when the run is not in flight here."""
        with self._lock:
            slot = next((s for s in self._slots if s.run is not None and s.run.id == flow_run_id), None)
            if slot is None or slot.thread is None or slot.thread.ident is None:
                return False
            if slot.cancel_sent:
                return True
            slot.cancel_sent = True
            ident = slot.thread.ident
            # A send in flight finishes and commits its outcome first (`tasks.stop_guard`).
            now = stop_thread_when_safe(ident, functools.partial(_raise_in_thread, ident, _CancelledByPrefect))
        logger.info("Flow run %s was cancelled in Prefect: %s", flow_run_id,
                    "stopping it" if now else "stopping it once its send in flight is recorded")
        return True

    # -- shutdown --------------------------------------------------------------------------------

    def finish(self, grace_seconds: float | None) -> None:
        """Wait for the runs in flight (at most `grace_seconds`), then end the threads."""
        deadline = None if grace_seconds is None else time.monotonic() + grace_seconds
        if self.in_flight:
            logger.info("Stopping: waiting for %s flow run(s) in flight", len(self.in_flight))
        while self.in_flight:
            if deadline is not None and time.monotonic() > deadline:
                logger.warning(
                    "Shutdown grace period over with %s flow run(s) in flight; a restarted worker recovers them",
                    len(self.in_flight),
                )
                return
            self.slot_freed.wait(0.2)
            self.slot_freed.clear()
        with self._lock:
            slots = list(self._slots)
        for slot in slots:
            slot.inbox.put(None)
        for slot in slots:
            if slot.thread is not None:
                slot.thread.join(timeout=5)
