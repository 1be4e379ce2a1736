"""Claiming the deployments' due flow runs and handing them to the executor threads.

- Poll: `get_scheduled_flow_runs_for_deployments(scheduled_before=now, limit=<free threads>)`
  every `poll_seconds` (immediately again while a backlog keeps every thread busy): the call
  the stock runner makes, so the deployment shows as Ready in the UI.
- Claim right after fetching, one run at a time, and only when a thread is free to start it at
  once: propose `Pending` with this worker's identity in the state message. The server lets one
  claimer win; a run we fail to claim is skipped. Nothing is queued between claim and start
  (two executors that queued claimed runs before starting them ran 1 of 300 twice).
- Process-wide settings for the fast path (public ones): flow-run heartbeats off inside runs
  (upkeep.py emits them for all, every `PREFECT_FLOWS_HEARTBEAT_FREQUENCY` or else
  `FOLLOWUPS_RUN_HEARTBEAT_SECONDS`), client CSRF support off when the server does not enforce
  CSRF (a GET per new client otherwise), and `print` routed to run logs once for the process.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

from prefect.client.orchestration import SyncPrefectClient, get_client
from prefect.client.schemas.objects import FlowRun
from prefect.exceptions import Abort
from prefect.logging.loggers import patch_print
from prefect.settings import temporary_settings
from prefect.states import Pending
from prefect.utilities.engine import propose_state_sync

from followups import prefect_private
from followups.worker import concurrency_patches, runtime, upkeep
from followups.worker.executing import Executor, RunCounts
from followups.worker.identity import WorkerIdentity
from followups.worker.recovery import recover_orphans
from followups.worker.served_flows import ensure_deployments, fast_flow

logger = logging.getLogger("followups.fast_worker")

DEFAULT_CONCURRENCY = 8
DEFAULT_POLL_SECONDS = 0.5


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
        self.poll_seconds = max(poll_seconds, 0.05)
        self.stop_event = stop_event or threading.Event()
        self.recover_seconds = recover_seconds
        self.cancel_check_seconds = cancel_check_seconds
        self.tag_limit_refresh_seconds = tag_limit_refresh_seconds
        self.shutdown_grace_seconds = shutdown_grace_seconds
        self.identity = WorkerIdentity.current()
        self.counts = RunCounts()
        self.executor = Executor(concurrency, hang_seconds, self.counts)
        self._result_dir = Path(tempfile.gettempdir()) / "followups-fast-worker-results"

    def run(self) -> None:
        """Serve until `stop_event` is set; then finish the runs in flight and return."""
        prefect_private.apply_fast_worker(concurrency_patches.make_tag_filtering_concurrency)
        self._result_dir.mkdir(parents=True, exist_ok=True)
        heartbeat = runtime.run_heartbeat_seconds()
        with get_client(sync_client=True) as probe:
            updates = runtime.executor_settings(probe)
        with (
            temporary_settings(updates=updates),
            # print → run log for the whole process; swapping builtins.print per run races between threads
            patch_print(),
            get_client(sync_client=True) as client,
        ):
            self.executor.flows = {
                deployment_id: fast_flow(flow, self._result_dir) for deployment_id, flow in ensure_deployments(client).items()
            }
            logger.info(
                "Fast worker %s serving %s with %s threads, polling every %ss",
                self.identity.marker,
                ", ".join(f"{f.name} ({d})" for d, f in self.executor.flows.items()),
                self.executor.concurrency,
                self.poll_seconds,
            )
            self.executor.start(contextvars.copy_context())
            if heartbeat:
                self.executor.start_thread(
                    upkeep.emit_heartbeats, "fast-worker-heartbeat", lambda: self.executor.in_flight, self.stop_event, heartbeat
                )
            upkeep.refresh_tag_limits(client)
            self._recover(client)
            try:
                self._serve(client)
            finally:
                self.executor.finish(self.shutdown_grace_seconds)
        logger.info("Fast worker stopped: %s", dict(self.counts))

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
                self.executor.replace_hung_threads(now)
            if now >= next_cancel_check:
                next_cancel_check = now + self.cancel_check_seconds
                with contextlib.suppress(Exception):
                    self.executor.stop_cancelled_runs(client)
                upkeep.drain_idle_services(self.executor.in_flight)
            if now >= next_tag_limits:
                next_tag_limits = now + self.tag_limit_refresh_seconds
                upkeep.refresh_tag_limits(client)
            if now >= next_recover:
                next_recover = now + self.recover_seconds
                with contextlib.suppress(Exception):
                    self._recover(client)
            if backlog:
                # every thread busy and runs still waiting: poll again as soon as one frees up
                self.executor.slot_freed.wait(self.poll_seconds)
                self.executor.slot_freed.clear()
            else:
                self.stop_event.wait(self.poll_seconds)

    def _poll_once(self, client: SyncPrefectClient) -> bool:
        """Fetch due runs for the free threads, claim and start them. True when a backlog remains."""
        free = self.executor.free_slots()
        if free == 0:
            return True
        assert self.executor.flows, "no deployments to serve"
        runs = client.get_scheduled_flow_runs_for_deployments(
            deployment_ids=list(self.executor.flows),
            scheduled_before=datetime.now(UTC),
            limit=free,
        )
        runs.sort(key=lambda r: r.next_scheduled_start_time or r.expected_start_time or datetime.now(UTC))
        started = 0
        for flow_run in runs:
            if self.stop_event.is_set():
                break
            slot = self.executor.take_slot()
            if slot is None:
                break
            if self._claim(client, flow_run):
                self.executor.start_run(slot, flow_run)
                started += 1
            else:
                self.executor.return_slot(slot)
        return len(runs) >= free and started > 0

    def _claim(self, client: SyncPrefectClient, flow_run: FlowRun) -> bool:
        try:
            claim = prefect_private.pause_as_abort(propose_state_sync)
            state = claim(client, Pending(message=self.identity.marker), flow_run_id=flow_run.id)
        except Abort as exc:
            # Claimed elsewhere, or suspended between the fetch and the claim (an enrollment
            # paused then). A BaseException: one that escaped here would end the whole worker.
            logger.debug("Flow run %s was claimed elsewhere or suspended: %s", flow_run.id, exc)
            self.counts.add("skipped")
            return False
        except Exception:
            logger.exception("Could not claim flow run %s", flow_run.id)
            self.counts.add("skipped")
            return False
        if not state.is_pending():
            self.counts.add("skipped")
            return False
        flow_run.state = state
        self.counts.add("claimed")
        return True

    def _recover(self, client: SyncPrefectClient) -> None:
        in_flight = {r.id for r in self.executor.in_flight}
        recover_orphans(client, self.identity, list(self.executor.flows), in_flight, self.counts)
