"""A world of its own for one fault scenario module: a Prefect server on its own PostgreSQL
database that can be stopped and started again on the same port, the module's own fake
providers, and the executors (fast worker, stock runner) as subprocesses pointed at both.

Nothing here is shared with another module, so a scenario may stop its server or flood its
providers without touching anyone else's tests.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
from sqlalchemy import create_engine, text

from fast_worker_fixtures import FastWorkerProcess
from prefect_servers import PG_ADMIN_URL, free_port, stop
from support import deal_input, new_owner, new_sequence

from followups.providers.fake_server import FakeProviderServer


class RestartablePrefectServer:
    """`prefect server start` on a fixed port and database, so it can come back as it was."""

    def __init__(self, home: Path, name: str) -> None:
        self.home = home
        self.database = f"prefect_faults_{name}_{uuid.uuid4().hex[:8]}"
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/api"
        self.process: subprocess.Popen | None = None
        self.starts = 0
        with _admin().connect() as conn:
            conn.exec_driver_sql(f'CREATE DATABASE "{self.database}"')

    def start(self, timeout: float = 120) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
        env.update(
            PREFECT_HOME=str(self.home),
            PREFECT_SERVER_DATABASE_CONNECTION_URL=f"postgresql+asyncpg://postgres@127.0.0.1:5432/{self.database}",
            PREFECT_SERVER_ANALYTICS_ENABLED="false",
            PREFECT_SERVER_UI_ENABLED="false",
            PREFECT_SERVER_LOGGING_LEVEL="WARNING",
        )
        self.starts += 1
        with open(self.home / "server.log", "ab") as out:
            out.write(f"\n--- start {self.starts} at {datetime.now()} ---\n".encode())
            self.process = subprocess.Popen(
                [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(self.port)],
                env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while True:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.url}/health", timeout=2).status_code == 200:
                    return
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"the Prefect server did not start:\n{self.log()}")
            time.sleep(0.3)

    def stop(self) -> None:
        if self.process is not None:
            stop(self.process)
            self.process = None

    def close(self) -> None:
        self.stop()
        with _admin().connect() as conn:
            conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{self.database}" WITH (FORCE)')

    def log(self, chars: int = 4000) -> str:
        path = self.home / "server.log"
        return path.read_text(errors="replace")[-chars:] if path.exists() else ""


def _admin():
    return create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")


@dataclass
class World:
    server: RestartablePrefectServer
    fake: FakeProviderServer
    log_dir: Path
    workers: list[FastWorkerProcess] = field(default_factory=list)
    runners: list[subprocess.Popen] = field(default_factory=list)

    def fast_worker(self, name: str = "fast", concurrency: int = 4) -> FastWorkerProcess:
        worker = FastWorkerProcess(self.server.url, self.log_dir / f"{name}.log", concurrency=concurrency, poll=0.3)
        self.workers.append(worker)
        return worker.start()

    def stock_runner(self, name: str = "runner", limit: int = 4) -> subprocess.Popen:
        """`followups serve`, ready once it has registered the last of its deployments."""
        from followups.prefect_server import wait_for_deployment

        env = {**os.environ, "PREFECT_API_URL": self.server.url, "PYTHONSAFEPATH": "1"}
        with open(self.log_dir / f"{name}.log", "ab") as out:
            process = subprocess.Popen(
                [sys.executable, "-m", "followups.cli", "serve", "--limit", str(limit)],
                env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
            )
        self.runners.append(process)
        wait_for_deployment("cancel-enrollment/followups", timeout=90)
        return process

    def executors_alive(self) -> dict[str, bool]:
        alive = {f"fast:{w.pid}": w.alive() for w in self.workers}
        alive.update({f"runner:{p.pid}": p.poll() is None for p in self.runners})
        return alive

    def stop_executors(self) -> None:
        for worker in self.workers:
            with contextlib.suppress(Exception):
                worker.terminate(timeout=30)
            worker.kill()
        for process in self.runners:
            stop(process, timeout=30)

    def dump_stacks(self, chars: int = 20000) -> str:
        """Every fast worker's thread stacks (SIGUSR1), as the workers wrote them to their logs."""
        dumps = []
        for worker in (w for w in self.workers if w.alive()):
            before = len(worker.log(10**8))
            os.kill(worker.pid, signal.SIGUSR1)
            time.sleep(1)
            dumps.append(f"\n== thread stacks of fast worker {worker.pid}\n{worker.log(10**8)[before:][-chars:]}")
        return "".join(dumps)

    def logs(self, chars: int = 3000) -> str:
        parts = [f"== {p.name}\n{p.read_text(errors='replace')[-chars:]}" for p in sorted(self.log_dir.glob("*.log"))]
        return "\n".join(parts + [f"== prefect server\n{self.server.log(chars)}"])


@contextlib.contextmanager
def own_world(tmp: Path, name: str, env: dict[str, str] | None = None, **fake_options: Any) -> Iterator[World]:
    """Start the world; the settings of this process and of every executor point at it."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from followups.settings import reset_settings

    fake = FakeProviderServer(**fake_options).start()
    server = RestartablePrefectServer(tmp, name)
    updates = {
        "PREFECT_API_URL": server.url,
        "FOLLOWUPS_SENDGRID_BASE_URL": fake.url,
        "FOLLOWUPS_TWILIO_BASE_URL": fake.url,
        **(env or {}),
    }
    saved = {k: os.environ.get(k) for k in updates}
    os.environ.update(updates)
    reset_settings()
    world = World(server, fake, tmp)
    try:
        server.start()
        with temporary_settings(updates={PREFECT_API_URL: server.url}):
            yield world
    finally:
        world.stop_executors()
        server.close()
        fake.stop()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        reset_settings()


# -- enrollments and what the event log says about them --------------------------------------


def enroll_many(count: int, steps: list[dict[str, Any]], deals: list[Any] | None = None) -> list[int]:
    """`count` enrollments of one new owner's sequence, each deal with its own email and phone."""
    from followups.control import enroll_deal

    owner = new_owner()
    sequence = new_sequence(owner, steps)
    deals = deals or [deal_input() for _ in range(count)]
    return [enroll_deal(owner, deal, sequence).id for deal in deals]


def step_of_request(request: Any, step_by_phone: dict[str, tuple[int, int]]) -> tuple[int, int] | None:
    """(enrollment, step) of one provider request: the email's custom args, the SMS's phone."""
    import json
    from urllib.parse import parse_qs

    if request.provider == "sendgrid":
        def find(node: Any) -> dict | None:
            if isinstance(node, dict):
                if isinstance(node.get("custom_args"), dict):
                    return node["custom_args"]
                node = list(node.values())
            if isinstance(node, list):
                return next((found for item in node if (found := find(item)) is not None), None)
            return None

        args = find(json.loads(request.body)) or {}
        return (int(args["enrollment_id"]), int(args["step_index"])) if "enrollment_id" in args else None
    return step_by_phone.get(parse_qs(request.body.decode()).get("To", [""])[0])


def events_by_enrollment(enrollment_ids: list[int]) -> dict[int, list[Any]]:
    """(event_type, step_index, occurred_at as epoch seconds, failure_reason, content) per enrollment."""
    from followups.db.session import session_scope

    found: dict[int, list[Any]] = {e: [] for e in enrollment_ids}
    with session_scope(read_only=True) as session:
        rows = session.execute(
            text(
                "SELECT enrollment_id, event_type, step_index, occurred_at, failure_reason, content "
                "FROM follow_up_events WHERE enrollment_id = ANY(:ids) ORDER BY id"
            ),
            {"ids": list(enrollment_ids)},
        ).all()
    for row in rows:
        found[row.enrollment_id].append(SimpleNamespace(**{**row._asdict(), "occurred_at": row.occurred_at.timestamp()}))
    return found


def contacts(enrollment_ids: list[int]) -> dict[int, tuple[str, str]]:
    """(seller email, seller phone) of each enrollment."""
    from followups.db.session import session_scope

    with session_scope(read_only=True) as session:
        rows = session.execute(
            text(
                "SELECT e.id, d.seller_email, d.seller_phone FROM enrollments e JOIN deals d ON d.id = e.deal_id "
                "WHERE e.id = ANY(:ids)"
            ),
            {"ids": list(enrollment_ids)},
        ).all()
    return {r.id: (r.seller_email, r.seller_phone) for r in rows}


def calls_by_enrollment(fake: FakeProviderServer, enrollment_ids: list[int]) -> dict[int, list[Any]]:
    """Every request the fake received for each enrollment (by its own address or phone)."""
    found: dict[int, list[Any]] = {}
    for enrollment_id, (email, phone) in contacts(enrollment_ids).items():
        found[enrollment_id] = sorted(
            fake.for_recipient(email) + fake.for_recipient(phone), key=lambda r: r.received_at
        )
    return found


def operator_reconcile(enrollment_ids) -> list[tuple[int, str]]:
    """`followups reconcile --json` as an operator runs it: the (enrollment, action) it found
    among `enrollment_ids` (the sweep also sees other scenarios' leftovers in the database)."""
    import json

    env = {**os.environ, "PYTHONSAFEPATH": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "followups.cli", "reconcile", "--json"], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, f"followups reconcile failed:\n{done.stdout}\n{done.stderr}"
    ours = set(enrollment_ids)
    return [(f["enrollment_id"], f["action"]) for f in json.loads(done.stdout)["found"] if f["enrollment_id"] in ours]
