"""Fixtures for the fast execution path (deployments/fast_worker.py), imported by
tests/test_fast_worker.py.

The fast worker under test always runs in its own process (`python -m
followups.deployments.fast_worker`), against the session's Prefect test API, database and fake
providers, like the stock runner of the `sequence_runner` fixture.

Only one executor should serve the deployment while a fast-path test runs: a stock runner
started by another test module of the same session (the session-scoped `sequence_runner`)
is paused (SIGSTOP) for the duration of this module and continued afterwards. The at-most-once
guarantees do not depend on that (the database allows one send per step whoever runs it), but
"the fast worker executed these runs" assertions do.
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

DEPLOYMENT = "follow-up-sequence/followups"


def _children_serving_stock_runner() -> list[int]:
    """`followups.cli serve` processes started by this pytest process (the sequence_runner)."""
    found = []
    me = os.getpid()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            ppid = int(stat[stat.rindex(")") + 2 :].split()[1])
            if ppid != me:
                continue
            cmdline = (entry / "cmdline").read_bytes().split(b"\0")
        except (OSError, ValueError):
            continue
        if b"followups.cli" in cmdline and b"serve" in cmdline:
            found.append(int(entry.name))
    return found


class FastWorkerProcess:
    """One `python -m followups.deployments.fast_worker` process."""

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
        with open(self.log_path, "ab") as out:
            self.process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "followups.deployments.fast_worker",
                    "--concurrency",
                    str(self.concurrency),
                    "--poll",
                    str(self.poll),
                ],
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
def fast_workers(prefect_api: str, fake_providers, tmp_path_factory) -> Iterator[FastWorkers]:
    paused = _children_serving_stock_runner()
    for pid in paused:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGSTOP)
    workers = FastWorkers(prefect_api, tmp_path_factory.mktemp("fast-worker"))
    try:
        yield workers
    finally:
        workers.stop_all()
        for pid in paused:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGCONT)


@pytest.fixture
def fast_worker(fast_workers: FastWorkers) -> FastWorkerProcess:
    """The shared fast worker process (started on first use, kept for the module)."""
    return fast_workers.shared()
