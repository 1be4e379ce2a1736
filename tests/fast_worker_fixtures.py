"""Fixtures for the fast worker (followups.worker), imported by tests/test_fast_worker.py.

The fast worker under test runs in its own process (`python -m followups.worker`) against a
Prefect server of its own (`prefect server start`, with its own PREFECT_HOME and PostgreSQL
database, so its own deployments), and the session's database and fake providers. No other
executor polls that server, so "the fast worker ran these runs" holds without stopping or
pausing anything, and the session executor (`sequence_runner`) goes on serving other
modules' tests meanwhile, xdist or not.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from executor_process import ExecutorProcess, fast_worker_command
from prefect_servers import prefect_server


@pytest.fixture(scope="session")
def fast_worker_server(tmp_path_factory) -> Iterator[str]:
    """The API URL of a Prefect server that only the fast-worker tests use (session-scoped so
    that xdist interleaving other modules' tests does not restart it)."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
    with prefect_server(tmp_path_factory.mktemp("fast-worker-prefect"), name=f"fast_{worker}") as url:
        yield url


@pytest.fixture(scope="module")
def fast_worker_api(fast_worker_server: str, fake_providers) -> Iterator[str]:
    """Point this process's Prefect client at the fast worker's server for the module."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings(updates={PREFECT_API_URL: fast_worker_server}):
        yield fast_worker_server


class FastWorkerProcess(ExecutorProcess):
    """One `python -m followups.worker` process."""

    def __init__(self, prefect_api: str, log_path: Path, concurrency: int = 4, poll: float = 0.2) -> None:
        super().__init__(fast_worker_command(concurrency, poll), prefect_api, log_path, label="fast worker")
        self.concurrency = concurrency
        self.poll = poll


class FastWorkers:
    """The module's fast worker processes: one shared by the sequence tests, plus dedicated
    ones for the kill/shutdown tests (the shared one is stopped first: one executor at a time)."""

    def __init__(self, prefect_api: str, log_dir: Path) -> None:
        self.prefect_api = prefect_api
        self.log_dir = log_dir
        self._shared: FastWorkerProcess | None = None
        self._dedicated: list[FastWorkerProcess] = []

    def shared(self) -> FastWorkerProcess:
        if self._shared is None or not self._shared.alive():
            self._shared = FastWorkerProcess(self.prefect_api, self.log_dir / "shared.log").start()
        return self._shared

    def stop_shared(self) -> None:
        if self._shared is not None and self._shared.alive():
            code = self._shared.terminate()
            assert code is not None, f"the fast worker did not stop within 60 s of SIGTERM:\n{self._shared.log()}"
        self._shared = None

    def dedicated(self, name: str, **options) -> FastWorkerProcess:
        self.stop_shared()
        worker = FastWorkerProcess(self.prefect_api, self.log_dir / f"{name}.log", **options)
        self._dedicated.append(worker)
        return worker.start()

    def stop_all(self) -> None:
        self.stop_shared()
        for worker in self._dedicated:
            if worker.alive():
                with contextlib.suppress(Exception):
                    worker.terminate(timeout=30)
            if worker.alive():
                worker.kill()


@pytest.fixture(scope="module")
def fast_workers(fast_worker_api: str, tmp_path_factory) -> Iterator[FastWorkers]:
    workers = FastWorkers(fast_worker_api, tmp_path_factory.mktemp("fast-worker"))
    try:
        yield workers
    finally:
        workers.stop_all()


@pytest.fixture
def fast_worker(fast_workers: FastWorkers) -> FastWorkerProcess:
    """The shared fast worker process (started on first use, kept for the module)."""
    return fast_workers.shared()
