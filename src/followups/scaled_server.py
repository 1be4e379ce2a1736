"""`followups prefect-server`: a Prefect server that uses more than one core.

`prefect server start` runs the API and every background service in one process, on one core.
Prefect's recipe for more: `prefect server start --workers N --no-services` (N API processes)
plus `prefect server services start` (the services), all on one PostgreSQL database and one
Redis (`prefect-redis`: messaging broker and cache, causal ordering, lease storage; docket's task
queue in another Redis database). This module prepares the database once, starts Redis when it
is local and down, starts both commands with that environment, waits for `/api/health` and
stops both on SIGINT/SIGTERM. On several machines: the same commands with `server_env`'s
environment (docs/operations/scaling.md).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import httpx

from followups.errors import InvalidInputError, ScaledServerError
from followups.prefect_server import remember_api_url, with_retention

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
LOOPBACK = {"127.0.0.1", "localhost", "::1"}
# Prefect 3.9's settings that `prefect server start --workers N` requires off their in-memory
# defaults (`prefect.cli._server_utils._validate_multi_worker`).
REDIS_BACKENDS = {
    "PREFECT_SERVER_EVENTS_MESSAGING_BROKER": "prefect_redis.messaging",
    "PREFECT_SERVER_EVENTS_MESSAGING_CACHE": "prefect_redis.messaging",
    "PREFECT_SERVER_EVENTS_CAUSAL_ORDERING": "prefect_redis.ordering",
    "PREFECT_SERVER_CONCURRENCY_LEASE_STORAGE": "prefect_redis.lease_storage",
}
# Every API process registers Prefect's block types on start-up; on a new database two of them
# insert the same row ("duplicate key value violates unique constraint uq_block_type__slug") and
# uvicorn stops the whole API. So it is done once, here, and turned off in the API processes.
REGISTER_BLOCKS = """
import asyncio
from prefect.server.database import provide_database_interface
from prefect.server.models.block_registration import run_block_auto_registration
async def main():
    async with await provide_database_interface().session() as session:
        await run_block_auto_registration(session=session)
asyncio.run(main())
"""


@dataclass(frozen=True)
class ScaledServerConfig:
    database_url: str  # postgresql+asyncpg://...
    redis_url: str  # messaging, cache, ordering, leases
    docket_url: str  # docket's task queue (another Redis database)
    host: str = "127.0.0.1"
    port: int = 4200
    workers: int = 2
    ui: bool = True
    start_redis: bool = True
    log_dir: Path | None = None  # None: the processes write to this process's stdout/stderr

    @property
    def api_url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/api"

    @property
    def client_api_url(self) -> str:
        """Where a client on this machine reaches it (not the "any address" it listens on)."""
        host = {"0.0.0.0": "127.0.0.1", "::": "[::1]"}.get(self.host, f"[{self.host}]" if ":" in self.host else self.host)
        return f"http://{host}:{self.port}/api"


# -- configuration --------------------------------------------------------------------------


def default_database_url() -> str:
    """Prefect's own setting when set, else a `prefect` database next to the product's."""
    configured = os.environ.get("PREFECT_SERVER_DATABASE_CONNECTION_URL") or os.environ.get("PREFECT_API_DATABASE_CONNECTION_URL")
    if configured:
        return configured
    from sqlalchemy.engine import make_url

    from followups.settings import get_settings

    return make_url(get_settings().database_url).set(database="prefect").render_as_string(hide_password=False)


def postgres_url(url: str) -> str:
    """The URL with Prefect's driver (asyncpg); anything but PostgreSQL is refused (Prefect's
    multi-worker server refuses SQLite)."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        parsed = make_url(url)
    except ArgumentError:
        raise InvalidInputError("not a database URL", field="--database-url") from None
    if parsed.get_backend_name() != "postgresql":
        raise InvalidInputError(
            f"must be a PostgreSQL URL (got {parsed.get_backend_name()}): a Prefect server with several "
            "processes cannot run on SQLite", field="--database-url",
        )
    if not parsed.database:
        raise InvalidInputError("names no database", field="--database-url")
    return parsed.set(drivername="postgresql+asyncpg").render_as_string(hide_password=False)


def redis_url_with_db(url: str, db: int) -> str:
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, f"/{db}", parts.query, parts.fragment))


def redis_db(url: str, field_name: str = "--redis-url") -> int:
    parts = urlsplit(url)
    if parts.scheme not in ("redis", "rediss") or not parts.hostname:
        raise InvalidInputError("must look like redis://HOST:PORT/DB", field=field_name)
    path = parts.path.strip("/") or "0"
    if not path.isdigit():
        raise InvalidInputError(f"database {path!r} is not a number", field=field_name)
    try:
        parts.port  # noqa: B018 - raises on a bad port
    except ValueError:
        raise InvalidInputError("has a bad port", field=field_name) from None
    return int(path)


def build_config(
    *,
    workers: int = 2,
    redis_url: str | None = None,
    docket_url: str | None = None,
    database_url: str | None = None,
    host: str = "127.0.0.1",
    port: int = 4200,
    ui: bool = True,
    start_redis: bool = True,
    log_dir: Path | None = None,
) -> ScaledServerConfig:
    """Validate the options; the docket queue defaults to the next Redis database number."""
    if workers < 1:
        raise InvalidInputError("must be at least 1", field="--workers")
    if not 0 < port < 65536:
        raise InvalidInputError("must be between 1 and 65535", field="--port")
    redis_url = redis_url or os.environ.get("PREFECT_REDIS_MESSAGING_URL") or DEFAULT_REDIS_URL
    db = redis_db(redis_url)
    if docket_url is None:
        docket_url = os.environ.get("PREFECT_SERVER_DOCKET_URL") or redis_url_with_db(redis_url, db + 1)
    if redis_db(docket_url, "--docket-url") == db and urlsplit(docket_url).netloc == urlsplit(redis_url).netloc:
        raise InvalidInputError("must be another Redis database than --redis-url's", field="--docket-url")
    return ScaledServerConfig(
        database_url=postgres_url(database_url or default_database_url()),
        redis_url=redis_url, docket_url=docket_url, host=host, port=port, workers=workers, ui=ui,
        start_redis=start_redis, log_dir=log_dir,
    )


def server_env(config: ScaledServerConfig, base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment every process of the layout needs (the same on every machine)."""
    env = with_retention(dict(os.environ if base is None else base))
    env.pop("PREFECT_API_URL", None)  # the server talks to its database, never to an API
    env.update(REDIS_BACKENDS)
    env.update(
        PREFECT_SERVER_DATABASE_CONNECTION_URL=config.database_url,
        PREFECT_REDIS_MESSAGING_URL=config.redis_url,
        PREFECT_SERVER_DOCKET_URL=config.docket_url,
        # `database upgrade` and the block types' registration ran once before (`ensure_database`):
        # N processes must not do them at the same time.
        PREFECT_SERVER_DATABASE_MIGRATE_ON_START="false",
        PREFECT_SERVER_REGISTER_BLOCKS_ON_START="false",
        PREFECT_SERVER_UI_ENABLED="true" if config.ui else "false",
    )
    return env


# -- what must be there before the processes start -------------------------------------------


def _redis_answers(url: str, field_name: str = "--redis-url") -> bool:
    """False when nothing answers; an answer that is an error (a database number out of range,
    a wrong password) is bad input."""
    import redis

    client = redis.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=2)
    try:
        return bool(client.ping())
    except (redis.ConnectionError, redis.TimeoutError):
        return False
    except redis.RedisError as exc:
        raise InvalidInputError(f"Redis refuses it: {exc}", field=field_name) from None
    finally:
        client.close()


def ensure_redis(url: str, start: bool = True, timeout: float = 15, docket_url: str | None = None) -> bool:
    """True when Redis was down and was started here (local Redis only, nothing kept on disk)."""
    if _redis_answers(url):
        if docket_url:
            _redis_answers(docket_url, "--docket-url")
        return False
    parts = urlsplit(url)
    where = f"{parts.hostname}:{parts.port or 6379}"
    if not start or parts.hostname not in LOOPBACK:
        raise ScaledServerError(f"Redis at {where} does not answer")
    binary = shutil.which("redis-server")
    if binary is None:
        raise ScaledServerError(f"Redis at {where} does not answer and redis-server is not installed")
    subprocess.run(
        [binary, "--daemonize", "yes", "--bind", "127.0.0.1", "--port", str(parts.port or 6379),
         "--save", "", "--appendonly", "no"],
        check=False, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL, timeout=30,
    )
    deadline = time.monotonic() + timeout
    while not _redis_answers(url):
        if time.monotonic() > deadline:
            raise ScaledServerError(f"redis-server was started but Redis at {where} does not answer")
        time.sleep(0.2)
    return True


def ensure_database(config: ScaledServerConfig, env: Mapping[str, str]) -> None:
    """Create the Prefect database when missing, `prefect server database upgrade -y`, then
    register the block types."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import SQLAlchemyError

    from followups.db.migrate import create_database_if_missing

    url = make_url(config.database_url)
    try:
        create_database_if_missing(url.set(drivername="postgresql+psycopg").render_as_string(hide_password=False))
    except SQLAlchemyError:
        raise ScaledServerError(
            f"PostgreSQL at {url.host}:{url.port or 5432} does not answer or refuses to create database {url.database}"
        ) from None
    steps = {
        "prefect server database upgrade": ["-m", "prefect", "--no-prompt", "server", "database", "upgrade", "-y"],
        "registering Prefect's block types": ["-c", REGISTER_BLOCKS],
    }
    for what, arguments in steps.items():
        done = subprocess.run(
            [sys.executable, *arguments], env=dict(env), capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=600,
        )
        if done.returncode != 0:
            lines = [line for line in (done.stderr + done.stdout).splitlines() if line.strip()]
            raise ScaledServerError(f"{what} failed: {lines[-1] if lines else done.returncode}")


def _port_in_use(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
        sock.settimeout(1)
        return sock.connect_ex((host, port)) == 0


def _die_with_parent() -> None:
    """In the child: SIGTERM when the supervising process dies, even by SIGKILL (Linux)."""
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


# -- the processes ----------------------------------------------------------------------------


class ScaledServer:
    """The API processes and the services process: `start()`, then `stop()` in any case."""

    def __init__(self, config: ScaledServerConfig, echo: Callable[[str], None] | None = None) -> None:
        self.config = config
        self.echo = echo or (lambda message: None)
        self.env = server_env(config)
        self.processes: dict[str, subprocess.Popen] = {}
        self.redis_started = False

    def commands(self) -> dict[str, list[str]]:
        prefect = [sys.executable, "-m", "prefect", "--no-prompt", "server"]
        return {
            "api": [*prefect, "start", "--host", self.config.host, "--port", str(self.config.port),
                    "--workers", str(self.config.workers), "--no-services"],
            "services": [*prefect, "services", "start"],
        }

    def log_path(self, name: str) -> Path | None:
        return self.config.log_dir / f"{name}.log" if self.config.log_dir else None

    def start(self, timeout: float = 120) -> ScaledServer:
        if _port_in_use(self.config.host, self.config.port):
            raise InvalidInputError(f"{self.config.host}:{self.config.port} is already in use", field="--port")
        self.redis_started = ensure_redis(self.config.redis_url, start=self.config.start_redis, docket_url=self.config.docket_url)
        if self.redis_started:
            self.echo(f"started redis-server for {_redacted(self.config.redis_url)}")
        self.echo("prefect server database upgrade -y")
        ensure_database(self.config, self.env)
        if self.config.log_dir:
            self.config.log_dir.mkdir(parents=True, exist_ok=True)
        try:
            for name, command in self.commands().items():
                self._spawn(name, command)
            self.wait_healthy(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def _spawn(self, name: str, command: list[str]) -> None:
        path = self.log_path(name)
        out = open(path, "ab") if path else None  # noqa: SIM115 - the child keeps it
        try:
            # Own session: a Ctrl-C in the terminal reaches only this supervisor, which stops each
            # process once (a second SIGINT makes uvicorn exit without finishing requests).
            self.processes[name] = subprocess.Popen(
                command, env=self.env, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT if out else None,
                start_new_session=True, preexec_fn=_die_with_parent,
            )
        finally:
            if out is not None:
                out.close()
        self.echo(f"{name}: pid {self.processes[name].pid}: {' '.join(command[1:])}")

    def wait_healthy(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            self.check_alive()
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.config.api_url}/health", timeout=2).status_code == 200:
                    return
            if time.monotonic() > deadline:
                raise ScaledServerError(f"the Prefect API did not answer on {self.config.api_url} within {timeout:.0f}s")
            time.sleep(0.3)

    def check_alive(self) -> None:
        for name, process in self.processes.items():
            if process.poll() is not None:
                where = f"see {self.log_path(name)}" if self.config.log_dir else "see its output above"
                raise ScaledServerError(f"the Prefect {name} process exited with code {process.returncode}; {where}")

    def stop(self, timeout: float = 30) -> None:
        """SIGTERM to the API's process group (uvicorn finishes its requests), SIGINT to the
        services (their clean shutdown); SIGKILL whatever is left after `timeout`."""
        for name, process in self.processes.items():
            if process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGINT if name == "services" else signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for process in self.processes.values():
            try:
                process.wait(timeout=max(deadline - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=10)
            # uvicorn's worker processes are in the same group: none may outlive the stop.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(process.pid, signal.SIGKILL)


def _redacted(url: str) -> str:
    return re.sub(r"//[^@/]*@", "//***@", url)


class _Stop(Exception):
    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def run_until_stopped(config: ScaledServerConfig, echo: Callable[[str], None] = print) -> int:
    """Start the layout, block until SIGINT/SIGTERM (exit 0) or until a process dies (raise)."""

    def on_signal(signum: int, frame: object) -> None:
        raise _Stop(signum)

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    server = ScaledServer(config, echo)
    try:
        server.start()
        echo(
            f"Prefect API on {config.api_url} ({config.workers} worker process(es)) + services process; "
            f"Redis {_redacted(config.redis_url)} (docket {_redacted(config.docket_url)}). Ctrl-C stops both."
        )
        echo(remember_api_url(config.client_api_url))
        while True:
            server.check_alive()
            time.sleep(0.5)
    except _Stop as stop:
        echo(f"{stop}: stopping the Prefect API and services")
        return 0
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        server.stop()
