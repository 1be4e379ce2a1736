"""A real Prefect server for the tests: `prefect server start` in its own process, with its own
PREFECT_HOME and its own PostgreSQL database (Prefect's SQLite locks up under the concurrent
writes of a runner, triggers and the tests: "database is locked")."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
from sqlalchemy import create_engine
from sqlalchemy.engine import make_url

PG_ADMIN_URL = os.environ.get("FOLLOWUPS_TEST_ADMIN_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def stop(process: subprocess.Popen, timeout: float = 20) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)


def _admin(admin_url: str):
    return create_engine(admin_url, isolation_level="AUTOCOMMIT", pool_pre_ping=True)


@contextlib.contextmanager
def pointed_at(url: str) -> Iterator[str]:
    """This process (its Prefect settings) and the subprocesses it starts (PREFECT_API_URL) talk
    to `url` until the block ends."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    saved = os.environ.get("PREFECT_API_URL")
    os.environ["PREFECT_API_URL"] = url
    try:
        with temporary_settings(updates={PREFECT_API_URL: url}):
            yield url
    finally:
        if saved is None:
            os.environ.pop("PREFECT_API_URL", None)
        else:
            os.environ["PREFECT_API_URL"] = saved


@contextlib.contextmanager
def prefect_server(home: Path, *, name: str = "prefect", ui: bool = False, admin_url: str = PG_ADMIN_URL,
                   **extra_env: str) -> Iterator[str]:
    """Start a Prefect server on a free port with a fresh PostgreSQL database (on the cluster
    `admin_url` connects to); yield its API URL."""
    database = f"prefect_test_{name}_{uuid.uuid4().hex[:8]}"
    engine = _admin(admin_url)
    server_db = make_url(admin_url).set(drivername="postgresql+asyncpg", database=database)
    with engine.connect() as conn:
        conn.exec_driver_sql(f'CREATE DATABASE "{database}"')
    port = free_port()
    url = f"http://127.0.0.1:{port}/api"
    # Nothing of the session's Prefect configuration (API URL, profile, home) reaches it.
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(
        PREFECT_HOME=str(home),
        PREFECT_SERVER_DATABASE_CONNECTION_URL=server_db.render_as_string(hide_password=False),
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        PREFECT_SERVER_UI_ENABLED="true" if ui else "false",
        # The UI's JavaScript calls the API at this address, not at the default port 4200.
        PREFECT_UI_API_URL=url,
        PREFECT_SERVER_LOGGING_LEVEL="WARNING",
    )
    env.update(extra_env)
    log = home / "server.log"
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)],
            env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 120
        while True:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            if process.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"the Prefect server did not start:\n{log.read_text()[-4000:]}")
            time.sleep(0.3)
        yield url
    finally:
        stop(process)
        with engine.connect() as conn:
            conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
        engine.dispose()
