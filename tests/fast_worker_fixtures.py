"""Fixtures for the fast worker (followups.worker), imported by tests/test_fast_worker.py.

The fast worker under test runs in its own process (`python -m followups.worker`) against a
Prefect server of its own (`prefect server start`, with its own PREFECT_HOME and PostgreSQL
database, so its own deployments), and the session's database and fake providers. No other
executor polls that server, so "the fast worker ran these runs" holds without stopping or
pausing anything, and the session's stock runner (`sequence_runner`) goes on serving other
modules' tests meanwhile, xdist or not.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from prefect_servers import prefect_server, stop

DEPLOYMENT = "follow-up-sequence/followups"


_stop = stop


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


class FastWorkerProcess:
    """One `python -m followups.worker` process."""

    def __init__(self, prefect_api: str, log_path: Path, concurrency: int = 4, poll: float = 0.2) -> None:
        self.prefect_api = prefect_api
        self.log_path = log_path
        self.concurrency = concurrency
        self.poll = poll
        self.process: subprocess.Popen | None = None

    def start(self, timeout: float = 60) -> FastWorkerProcess:
        from prefect.client.orchestration import get_client

        started = datetime.now(UTC)
        # PYTHONSAFEPATH: `python -m` must import the installed package, not a checkout in the cwd.
        env = {**os.environ, "PREFECT_API_URL": self.prefect_api, "PYTHONSAFEPATH": "1"}
        command = ["-m", "followups.worker", "--concurrency", str(self.concurrency), "--poll", str(self.poll)]
        with open(self.log_path, "ab") as out:
            self.process = subprocess.Popen(
                [sys.executable, *command],
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        # Ready: the deployment exists and this worker has polled it since it started.
        deadline = time.monotonic() + timeout
        with get_client(sync_client=True) as client:
            while True:
                if self.process.poll() is not None:
                    raise AssertionError(f"the fast worker exited with {self.process.returncode}:\n{self.log()}")
                with contextlib.suppress(Exception):
                    deployment = client.read_deployment_by_name(DEPLOYMENT)
                    if deployment.last_polled and deployment.last_polled >= started:
                        return self
                if time.monotonic() > deadline:
                    raise AssertionError(f"the fast worker did not start polling in {timeout}s:\n{self.log()}")
                time.sleep(0.2)

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def kill(self) -> None:
        """SIGKILL: no clean-up of any kind, like a machine losing power."""
        if self.alive():
            os.killpg(self.pid, signal.SIGKILL)
            self.process.wait(timeout=10)

    def terminate(self, timeout: float = 60) -> int:
        assert self.process is not None
        if self.alive():
            os.killpg(self.pid, signal.SIGTERM)
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"the fast worker did not stop within {timeout}s of SIGTERM:\n{self.log()}") from None

    def log(self, chars: int = 6000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:] if self.log_path.exists() else ""


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
            self._shared.terminate()
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
