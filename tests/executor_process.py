"""An executor as a real process, for tests: the fast worker (`python -m followups.worker`) or
the stock runner (`followups serve`), started against a Prefect API, ready once it has polled
its deployment, and stopped with SIGTERM or SIGKILL to its whole process group."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Self

DEPLOYMENT = "follow-up-sequence/followups"


def fast_worker_command(concurrency: int = 4, poll: float = 0.2) -> list[str]:
    return ["-m", "followups.worker", "--concurrency", str(concurrency), "--poll", str(poll)]


def stock_runner_command(limit: int = 4) -> list[str]:
    return ["-m", "followups.cli", "serve", "--limit", str(limit)]


class ExecutorProcess:
    """One executor process; `label` names it in failure messages."""

    def __init__(self, command: list[str], prefect_api: str, log_path: Path, *, label: str = "executor",
                 deployment: str = DEPLOYMENT) -> None:
        self.command = command
        self.prefect_api = prefect_api
        self.log_path = log_path
        self.label = label
        self.deployment = deployment
        self.process: subprocess.Popen | None = None

    def start(self, timeout: float = 90) -> Self:
        from prefect.client.orchestration import get_client

        started = datetime.now(UTC)
        # PYTHONSAFEPATH: `python -m` must import the installed package, not a checkout in the cwd.
        env = {**os.environ, "PREFECT_API_URL": self.prefect_api, "PYTHONSAFEPATH": "1"}
        with open(self.log_path, "ab") as out:
            self.process = subprocess.Popen(
                [sys.executable, *self.command], env=env, stdout=out, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, start_new_session=True,
            )
        # Ready: the deployment exists and this process has polled it since it started.
        deadline = time.monotonic() + timeout
        with get_client(sync_client=True) as client:
            while True:
                if self.process.poll() is not None:
                    raise AssertionError(f"the {self.label} exited with {self.process.returncode}:\n{self.log()}")
                with contextlib.suppress(Exception):
                    deployment = client.read_deployment_by_name(self.deployment)
                    if deployment.last_polled and deployment.last_polled >= started:
                        return self
                if time.monotonic() > deadline:
                    raise AssertionError(f"the {self.label} did not poll within {timeout}s:\n{self.log()}")
                time.sleep(0.2)

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def kill(self) -> None:
        """SIGKILL to the whole process group (the stock runner's flow-run children too): no
        clean-up of any kind, like a machine losing power."""
        if self.alive():
            os.killpg(self.pid, signal.SIGKILL)
            self.process.wait(timeout=10)

    def terminate(self, timeout: float = 60) -> int | None:
        """SIGTERM and wait; None when it had to be killed after `timeout`."""
        if not self.alive():
            return self.process.returncode if self.process else None
        os.killpg(self.pid, signal.SIGTERM)
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            return None

    def log(self, chars: int = 6000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:] if self.log_path.exists() else ""
