"""The fast path as a Prefect worker type: `prefect worker start --pool <a pool of type followups>`.

    prefect work-pool create followups --type followups
    prefect deploy --all                       # prefect.yaml's deployments, into that pool
    prefect worker start --pool followups --limit 8

Prefect finds this class through the `prefect.collections` entry point in pyproject.toml. The
worker is Prefect's own `BaseWorker`: it polls the pool's queues, so work-pool and work-queue
concurrency limits, pausing a pool or a queue, worker heartbeats (the worker shows online in the
pool's page of the UI) and the run's Pending → Submitting claim are Prefect's. What this class
adds is where a claimed run executes: on one of `--limit` threads of this process, with
Prefect's flow engine (worker/executing.py), instead of a new process per run.

- No infrastructure to prepare, so nothing is fetched ahead of its time: the prefetch window is
  0, and a run that is still early when it arrives waits for its start time here. The pool is
  polled every second unless PREFECT_WORKER_QUERY_SECONDS is set (Prefect's 10 s would start a
  due step up to 10 s late). Each poll takes at most `--limit` runs, as Prefect's workers do;
  polling again whenever a thread frees up cost more server CPU than it gained, and asking the
  server for only as many runs as there are free threads gained nothing measurable
  (docs/benchmarks.md).
- Cancel in the Prefect UI stops a run in flight (polled, as the standalone fast worker does)
  and one claimed but not started (Prefect's cancellation observer, `kill_infrastructure`).
- Flow-run heartbeats come from one thread for all runs. A worker killed with runs in flight
  leaves them Pending/Submitting/Running and silent; the zombie-run automation
  (`followups automations apply`) marks them Crashed, and the enrollment is repaired.
- Only the product's own flows run here (entrypoints under `followups.flows.`); a run of
  another deployment put in the pool is marked Crashed with the reason.
- A job variable such as `env` cannot apply to a thread: the worker's own environment is what
  the runs see.
- SIGUSR1 writes every thread's stack to stderr: what a stuck run is doing.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import faulthandler
import logging
import os
import signal
import socket
import tempfile
import threading
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
from prefect.client.schemas.objects import FlowRun
from prefect.workers.base import BaseJobConfiguration, BaseVariables, BaseWorker, BaseWorkerResult

logger = logging.getLogger("followups.fast_worker")

WORKER_TYPE = "followups"
# Flows this worker type runs: the product's own (the engine patches are made for them).
PRODUCT_FLOWS_PREFIX = "followups.flows."
DEFAULT_LIMIT = 8
DEFAULT_QUERY_SECONDS = 1.0


class FollowupsWorkerResult(BaseWorkerResult):
    """The outcome of one run on a thread (status 0 unless the engine itself broke)."""


class FollowupsWorker(BaseWorker[BaseJobConfiguration, BaseVariables, FollowupsWorkerResult]):
    type = WORKER_TYPE
    job_configuration = BaseJobConfiguration
    job_configuration_variables = BaseVariables
    _description = (
        "Runs the followups deployments' flow runs on threads of one long-lived process "
        "(Prefect's flow engine, no process per run)."
    )

    def __init__(
        self,
        work_pool_name: str,
        work_queues: list[str] | None = None,
        name: str | None = None,
        prefetch_seconds: float | None = None,
        create_pool_if_not_found: bool = True,
        limit: int | None = None,
        heartbeat_interval_seconds: int | None = None,
        *,
        base_job_template: dict[str, Any] | None = None,
        cancel_check_seconds: float = 2.0,
        tag_limit_refresh_seconds: float = 10.0,
        shutdown_grace_seconds: float | None = None,
    ) -> None:
        if limit is not None and limit < 1:
            raise ValueError("limit must be at least 1")
        limit = limit or DEFAULT_LIMIT
        # Threads start a run at once: fetching runs ahead of their time would only hold slots.
        super().__init__(
            work_pool_name,
            work_queues,
            name,
            0,
            create_pool_if_not_found,
            limit,
            heartbeat_interval_seconds,
            base_job_template=base_job_template,
        )
        from followups.worker.executing import Executor, RunCounts

        self.concurrency = limit
        self.counts = RunCounts()
        # A hung run keeps its pool slot (the limit is the pool's to count), so no replacement threads.
        self.executor = Executor(self.concurrency, float("inf"), self.counts)
        self.cancel_check_seconds = cancel_check_seconds
        self.tag_limit_refresh_seconds = tag_limit_refresh_seconds
        self.shutdown_grace_seconds = shutdown_grace_seconds
        self.infrastructure_id = f"{socket.gethostname()}:{os.getpid()}"
        self._stop = threading.Event()
        self._stack = contextlib.ExitStack()
        self._entrypoints: dict[uuid.UUID, str] = {}
        self._result_dir = Path(tempfile.gettempdir()) / "followups-fast-worker-results"

    # -- life cycle ------------------------------------------------------------------------------

    async def setup(self) -> None:
        await super().setup()
        faulthandler.register(signal.SIGUSR1, all_threads=True)  # `kill -USR1`: every thread's stack
        await anyio.to_thread.run_sync(self._start_threads)

    async def teardown(self, *exc_info: Any) -> None:
        try:
            await super().teardown(*exc_info)
        finally:
            self._stop.set()
            await anyio.to_thread.run_sync(self.executor.finish, self.shutdown_grace_seconds)
            self._stack.close()
            logger.info("Worker %s stopped: %s", self.name, dict(self.counts))

    def _start_threads(self) -> None:
        from prefect.client.orchestration import get_client
        from prefect.logging.loggers import patch_print
        from prefect.settings import temporary_settings

        from followups import prefect_private
        from followups.worker import concurrency_patches, runtime, upkeep

        # pool=True: a run suspended before Prefect's claim is skipped (`pause_as_abort`).
        prefect_private.apply_fast_worker(concurrency_patches.make_tag_filtering_concurrency, pool=True)
        self._result_dir.mkdir(parents=True, exist_ok=True)
        with get_client(sync_client=True) as client:
            updates = runtime.executor_settings(client)
            upkeep.refresh_tag_limits(client)
        with temporary_settings(updates=updates):
            context = contextvars.copy_context()
        self._stack.enter_context(patch_print())
        self.executor.start(context)
        heartbeat = runtime.run_heartbeat_seconds()
        if heartbeat:
            self.executor.start_thread(
                upkeep.emit_heartbeats, "fast-worker-heartbeat", lambda: self.executor.in_flight, self._stop, heartbeat
            )
        self.executor.start_thread(self._watch, "fast-worker-watch")

    def _watch(self) -> None:
        """Cancels from Prefect for runs in flight; the concurrency helpers kept small."""
        from prefect.client.orchestration import get_client

        from followups.worker import upkeep

        next_tag_limits = time.monotonic() + self.tag_limit_refresh_seconds
        with get_client(sync_client=True) as client:
            while not self._stop.wait(self.cancel_check_seconds):
                with contextlib.suppress(Exception):
                    self.executor.stop_cancelled_runs(client)
                upkeep.drain_idle_services(self.executor.in_flight)
                if time.monotonic() >= next_tag_limits:
                    next_tag_limits = time.monotonic() + self.tag_limit_refresh_seconds
                    upkeep.refresh_tag_limits(client)

    # -- polling ---------------------------------------------------------------------------------

    async def start(self, *args: Any, **kwargs: Any) -> None:
        """Prefect's loops, polling every second unless PREFECT_WORKER_QUERY_SECONDS says otherwise:
        its default of 10 s would start a due step up to 10 s late, and take at most `limit`
        runs per 10 s from a backlog."""
        from prefect.settings import PREFECT_WORKER_QUERY_SECONDS, temporary_settings

        query = PREFECT_WORKER_QUERY_SECONDS.value()
        if query == PREFECT_WORKER_QUERY_SECONDS.default():
            query = DEFAULT_QUERY_SECONDS
        with temporary_settings(updates={PREFECT_WORKER_QUERY_SECONDS: query}):
            await super().start(*args, **kwargs)

    # -- one run ---------------------------------------------------------------------------------

    async def run(
        self,
        flow_run: FlowRun,
        configuration: BaseJobConfiguration,
        task_status: anyio.abc.TaskStatus[str] | None = None,
    ) -> FollowupsWorkerResult:
        try:
            flow = await self._flow_for(flow_run)
        except _NotOurs as exc:
            from prefect.states import Crashed
            from prefect.utilities.engine import propose_state

            if task_status is not None:
                task_status.started(self.infrastructure_id)
            logger.warning("Flow run %s: %s", flow_run.id, exc)
            with contextlib.suppress(Exception):
                await propose_state(self.client, Crashed(message=str(exc)), flow_run_id=flow_run.id)
            return FollowupsWorkerResult(identifier=self.infrastructure_id, status_code=0)
        self.executor.flows.setdefault(flow_run.deployment_id, flow)  # type: ignore[arg-type]
        start = flow_run.next_scheduled_start_time or flow_run.expected_start_time
        if start is not None:
            early = (start - datetime.now(UTC)).total_seconds()
            if early > 0:
                await anyio.sleep(early)
        slot = self.executor.take_slot()
        if slot is None:  # cannot happen while the limiter and the threads agree; never hold a run silently
            raise RuntimeError("no free thread for a claimed flow run")
        loop = asyncio.get_running_loop()
        finished = loop.create_future()
        self.executor.start_run(slot, flow_run, on_done=lambda: loop.call_soon_threadsafe(_settle, finished))
        if task_status is not None:
            task_status.started(self.infrastructure_id)
        await asyncio.shield(finished)
        return FollowupsWorkerResult(identifier=self.infrastructure_id, status_code=0)

    async def _flow_for(self, flow_run: FlowRun) -> Any:
        deployment_id = flow_run.deployment_id
        if deployment_id is None:
            raise _NotOurs("followups worker: the run has no deployment")
        if deployment_id in self.executor.flows:
            return self.executor.flows[deployment_id]
        entrypoint = self._entrypoints.get(deployment_id)
        if entrypoint is None:
            entrypoint = (await self.client.read_deployment(deployment_id)).entrypoint or ""
            self._entrypoints[deployment_id] = entrypoint
        if not entrypoint.replace(":", ".").startswith(PRODUCT_FLOWS_PREFIX):
            raise _NotOurs(
                f"followups worker: {entrypoint!r} is not one of the product's flows "
                f"(entrypoints under {PRODUCT_FLOWS_PREFIX}); run it from a process work pool"
            )
        from followups.worker.served_flows import fast_flow, load_entrypoint

        return fast_flow(load_entrypoint(entrypoint), self._result_dir)

    async def kill_infrastructure(
        self, infrastructure_pid: str, configuration: BaseJobConfiguration, grace_seconds: int = 30
    ) -> None:
        """Prefect's cancellation of a run claimed but not started: stop it if it is on one of
        this process's threads."""
        from prefect.exceptions import InfrastructureNotAvailable, InfrastructureNotFound

        if infrastructure_pid != self.infrastructure_id:
            raise InfrastructureNotAvailable(f"{infrastructure_pid} is not this worker ({self.infrastructure_id})")
        flow_run_id = configuration.labels.get("prefect.io/flow-run-id") if configuration.labels else None
        if flow_run_id is None or not self.executor.cancel(uuid.UUID(flow_run_id)):
            raise InfrastructureNotFound(f"flow run {flow_run_id} is not running here")


class _NotOurs(Exception):
    pass


def _settle(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)
