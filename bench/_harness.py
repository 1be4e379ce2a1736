"""Shared machinery for the benchmarks in bench/ (not a benchmark itself).

Every benchmark builds its own world and tears it down again:

- a followups database and a Prefect database on the local PostgreSQL (127.0.0.1:5432),
- `prefect server start` on a free loopback port, backed by that PostgreSQL database,
- the fake SendGrid/Twilio server (followups.providers.fake_server) in this process,
- one executor at a time: the stock runner (`python -m followups.cli serve --limit 4`,
  one process per flow run) or the fast worker (`python -m followups.worker`).

CPU is read from /proc (no psutil here): a process tree's user+system time including reaped
children, and the PostgreSQL backends serving the two benchmark databases, sampled often enough
to see short-lived connections (a backend that lives less than one sampling interval is missed;
see docs/benchmarks.md).

All traffic stays on 127.0.0.1, and every wait is bounded in time.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
PG_ADMIN_URL = os.environ.get("FOLLOWUPS_BENCH_ADMIN_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
CLK_TCK = os.sysconf("SC_CLK_TCK")

# The stock path as the issue measured it: `serve(limit=4)`, runner poll every second.
STOCK_LIMIT = 4
STOCK_POLL_SECONDS = 1
FAST_CONCURRENCY = 8
FAST_POLL_SECONDS = 0.5


# --- statistics ----------------------------------------------------------------------------


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank-with-interpolation percentile (q in 0..100); NaN for no values."""
    if not values:
        return math.nan
    data = sorted(values)
    if len(data) == 1:
        return data[0]
    pos = (len(data) - 1) * q / 100
    lo, hi = math.floor(pos), math.ceil(pos)
    return data[lo] + (data[hi] - data[lo]) * (pos - lo)


def summary(values: list[float]) -> dict[str, float]:
    return {
        "n": len(values),
        "median": statistics.median(values) if values else math.nan,
        "p95": percentile(values, 95),
        "min": min(values) if values else math.nan,
        "max": max(values) if values else math.nan,
    }


def fmt(stats: dict[str, float], unit: str = "", digits: int = 3) -> str:
    def f(v: float) -> str:
        return "nan" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{digits}f}"

    return (
        f"median {f(stats['median'])}{unit}  p95 {f(stats['p95'])}{unit}  "
        f"min {f(stats['min'])}{unit}  max {f(stats['max'])}{unit}  (n={stats['n']})"
    )


def ratio(a: float, b: float) -> float:
    return a / b if b else math.nan


def cpu_calibration_seconds() -> float:
    """Seconds for a fixed pure-Python loop: how fast this (shared, virtual) machine was when a
    benchmark ran (recorded in every results file; see docs/benchmarks.md)."""
    started = time.perf_counter()
    total = 0
    for i in range(3_000_000):
        total += i * i
    return time.perf_counter() - started


def machine_info() -> dict[str, Any]:
    info: dict[str, Any] = {
        "cores": os.cpu_count(),
        "cpu_calibration_seconds": cpu_calibration_seconds(),
        "loadavg": loadavg(),
        "python": platform.python_version(),
        "platform": platform.platform(),
    }
    with contextlib.suppress(Exception):
        import prefect

        info["prefect"] = prefect.__version__
    with contextlib.suppress(Exception):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
    with contextlib.suppress(Exception):
        from sqlalchemy import create_engine, text

        engine = create_engine(PG_ADMIN_URL)
        with engine.connect() as conn:
            info["postgresql"] = conn.scalar(text("SHOW server_version"))
            info["postgresql_settings"] = {
                k: conn.scalar(text(f"SHOW {k}"))
                for k in ("max_connections", "shared_buffers", "synchronous_commit", "fsync")
            }
        engine.dispose()
    return info


def write_results(name: str, payload: dict[str, Any]) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    path = RESULTS / f"{name}-{stamp}.json"
    payload = {"benchmark": name, "finished_at": stamp, "machine": machine_info(), **payload}
    path.write_text(json.dumps(payload, indent=2, default=str))
    (RESULTS / f"{name}-latest.json").write_text(json.dumps(payload, indent=2, default=str))
    return path


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


# --- /proc CPU accounting ------------------------------------------------------------------


def _stat_fields(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    # comm may contain spaces: split after the closing parenthesis
    return raw[raw.rindex(")") + 2 :].split()


def process_cpu_seconds(pid: int, *, with_children: bool = True) -> float:
    """utime+stime (+cutime+cstime: children already reaped) of one process, in seconds."""
    fields = _stat_fields(pid)
    if fields is None:
        return 0.0
    # after the comm: state(0) ppid(1) ... utime(11) stime(12) cutime(13) cstime(14)
    ticks = int(fields[11]) + int(fields[12])
    if with_children:
        ticks += int(fields[13]) + int(fields[14])
    return ticks / CLK_TCK


def machine_busy_seconds() -> float:
    """CPU-seconds the whole machine spent busy (all cores, /proc/stat), to show how much of
    the machine other work took during a measurement (this machine is shared)."""
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    values = [int(v) for v in fields]
    idle = values[3] + values[4]  # idle + iowait
    return (sum(values[:8]) - idle) / CLK_TCK


def loadavg() -> list[float]:
    return [float(v) for v in Path("/proc/loadavg").read_text().split()[:3]]


def children_of(pid: int) -> list[int]:
    kids: list[int] = []
    task_dir = Path(f"/proc/{pid}/task")
    try:
        for task in task_dir.iterdir():
            with contextlib.suppress(FileNotFoundError):
                kids.extend(int(c) for c in (task / "children").read_text().split())
    except FileNotFoundError:
        pass
    return kids


def descendants(pid: int) -> list[int]:
    out, todo = [], [pid]
    while todo:
        current = todo.pop()
        for child in children_of(current):
            out.append(child)
            todo.append(child)
    return out


def tree_cpu_seconds(pid: int) -> float:
    """CPU of a process tree: the root (with its reaped children) plus live descendants."""
    return process_cpu_seconds(pid) + sum(process_cpu_seconds(p) for p in descendants(pid))


def live_children_count(pid: int) -> int:
    return len(descendants(pid))


class TreeCpuSampler:
    """Samples a process tree's CPU often: a child that exits un-reaped by a live parent is lost
    at the moment it dies, so we keep the max seen per pid plus the root's reaped total."""

    def __init__(self, pid: int, interval: float = 0.5):
        self.pid = pid
        self.interval = interval
        self._seen: dict[int, float] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def sample(self) -> None:
        pids = [self.pid, *descendants(self.pid)]
        with self._lock:
            for p in pids:
                value = process_cpu_seconds(p)
                if value >= self._seen.get(p, 0.0):
                    self._seen[p] = value

    def total(self) -> float:
        """Max seen per pid. A reaped child's CPU moves into its parent's cutime: counting both
        would double it, so a pid that is gone is dropped once its parent has been resampled."""
        self.sample()
        with self._lock:
            alive = {p: v for p, v in self._seen.items() if Path(f"/proc/{p}").exists()}
            self._seen = alive
            return sum(alive.values())

    def root_and_rest(self) -> tuple[float, float]:
        """(root process without reaped children, everything else in the tree)."""
        total = self.total()
        root = process_cpu_seconds(self.pid, with_children=False)
        return root, total - root

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            with contextlib.suppress(Exception):
                self.sample()

    def start(self) -> TreeCpuSampler:
        self.sample()
        self._thread = threading.Thread(target=self._loop, daemon=True, name="cpu-sampler")
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=2)


class PgBackendCpu:
    """CPU of the PostgreSQL backends connected to the given databases, sampled every
    `interval` s. Backends are the postmaster's children whose process title reads
    'postgres: [cluster: ]<user> <database> ...'; an exited backend keeps its last sample."""

    def __init__(self, databases: list[str], interval: float = 0.2):
        self.databases = set(databases)
        self.interval = interval
        self._cpu: dict[tuple[int, str], float] = {}  # (pid, starttime) -> cpu
        self._is_ours: dict[tuple[int, str], bool] = {}
        self._postmasters = self._find_postmasters()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    @staticmethod
    def _find_postmasters() -> list[int]:
        found = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            with contextlib.suppress(OSError):
                argv0 = (entry / "cmdline").read_bytes().split(b"\0", 1)[0]
                if argv0.endswith(b"/postgres") or argv0 == b"postgres":
                    found.append(int(entry.name))
        return found

    def sample(self) -> None:
        for postmaster in self._postmasters:
            for pid in children_of(postmaster):
                fields = _stat_fields(pid)
                if fields is None:
                    continue
                key = (pid, fields[19])  # starttime distinguishes a reused pid
                ours = self._is_ours.get(key)
                if ours is None:
                    try:
                        title = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
                    except OSError:
                        continue
                    parts = title.replace("\0", " ").split()
                    ours = self._is_ours[key] = any(part in self.databases for part in parts[1:5])
                if not ours:
                    continue
                cpu = (int(fields[11]) + int(fields[12])) / CLK_TCK
                with self._lock:
                    self._cpu[key] = max(cpu, self._cpu.get(key, 0.0))

    def total(self) -> float:
        self.sample()
        with self._lock:
            return sum(self._cpu.values())

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            with contextlib.suppress(Exception):
                self.sample()

    def start(self) -> PgBackendCpu:
        self.sample()
        self._thread = threading.Thread(target=self._loop, daemon=True, name="pg-cpu-sampler")
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=2)


# --- databases, servers, executors ---------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _admin_engine():
    from sqlalchemy import create_engine

    return create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")


def with_database(url: str, name: str) -> str:
    return url.rsplit("/", 1)[0] + "/" + name


def create_database(name: str) -> None:
    engine = _admin_engine()
    with engine.connect() as conn:
        conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    engine.dispose()


def drop_database(name: str) -> None:
    engine = _admin_engine()
    with engine.connect() as conn:
        conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    engine.dispose()


def wait_healthy(api_url: str, timeout: float, process: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"the Prefect server exited with {process.returncode}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{api_url}/health", timeout=2).status_code == 200:
                return
        time.sleep(0.5)
    raise RuntimeError(f"the Prefect server at {api_url} did not become healthy in {timeout}s")


def stop_process(process: subprocess.Popen, timeout: float = 30, sig: int = signal.SIGTERM) -> int | None:
    if process.poll() is not None:
        return process.returncode
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, sig)
    try:
        return process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        return process.wait(timeout=10)


@dataclass
class BenchWorld:
    """Databases + Prefect server + fake providers for one benchmark; env for child processes."""

    name: str
    provider_latency: float = 0.0
    keep_databases: bool = False
    server_env: dict[str, str] = field(default_factory=dict)
    # write a pyinstrument profile of the Prefect server process here (bench/profile_server.py)
    profile_server: Path | None = None
    tag: str = field(default_factory=lambda: uuid.uuid4().hex[:8])
    env: dict[str, str] = field(default_factory=dict)
    api_url: str = ""
    followups_db: str = ""
    prefect_db: str = ""
    server: subprocess.Popen | None = None
    server_cpu: TreeCpuSampler | None = None
    pg_cpu: PgBackendCpu | None = None
    fake: Any = None
    tmp: Path | None = None
    _saved_env: dict[str, str | None] = field(default_factory=dict)

    def __enter__(self) -> BenchWorld:
        try:
            self._start()
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def _start(self) -> None:
        from followups.db.migrate import upgrade
        from followups.providers.fake_server import FakeProviderServer

        self.tmp = Path(tempfile.mkdtemp(prefix=f"bench-{self.name}-"))
        self.followups_db = f"bench_followups_{self.name}_{self.tag}"
        self.prefect_db = f"bench_prefect_{self.name}_{self.tag}"
        followups_url = with_database(PG_ADMIN_URL, self.followups_db)
        log(f"creating databases {self.followups_db}, {self.prefect_db}")
        upgrade(followups_url)
        create_database(self.prefect_db)

        self.fake = FakeProviderServer(latency_seconds=self.provider_latency).start()
        port = free_port()
        self.api_url = f"http://127.0.0.1:{port}/api"
        prefect_home = self.tmp / "prefect-home"
        prefect_home.mkdir()
        self.env = {
            "PREFECT_HOME": str(prefect_home),
            "PREFECT_API_URL": self.api_url,
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "PREFECT_RUNNER_POLL_FREQUENCY": str(STOCK_POLL_SECONDS),
            "FOLLOWUPS_DATABASE_URL": followups_url,
            "FOLLOWUPS_PROVIDER_MODE": "live",
            "FOLLOWUPS_SENDGRID_API_KEY": "SG.bench-key",
            "FOLLOWUPS_TWILIO_ACCOUNT_SID": "ACbench",
            "FOLLOWUPS_TWILIO_AUTH_TOKEN": "bench-token",
            "FOLLOWUPS_SENDGRID_BASE_URL": self.fake.url,
            "FOLLOWUPS_TWILIO_BASE_URL": self.fake.url,
            "FOLLOWUPS_STEP_RETRY_BASE_SECONDS": "0.5",
            # The benchmarks send thousands of messages from one identity and account: the send
            # caps (a product rule, 10 emails/s and 1,000 a day by default) would defer them.
            # FOLLOWUPS_BENCH_CAPS=1 keeps them on to measure what they cost.
            "FOLLOWUPS_CAPS_ENABLED": "true" if os.environ.get("FOLLOWUPS_BENCH_CAPS") else "false",
        }
        server_env = {
            **os.environ,
            **self.env,
            "PREFECT_SERVER_DATABASE_CONNECTION_URL": with_database(
                PG_ADMIN_URL.replace("+psycopg", "+asyncpg"), self.prefect_db
            ),
            "PREFECT_SERVER_UI_ENABLED": "false",
            **self.server_env,
        }
        server_env.pop("PREFECT_API_URL", None)
        # e.g. a folder with uvloop + httptools (`pip install --target DIR uvloop httptools`),
        # which uvicorn then uses for the Prefect server; see docs/benchmarks.md
        extra_path = os.environ.get("FOLLOWUPS_BENCH_SERVER_PYTHONPATH")
        if extra_path:
            server_env["PYTHONPATH"] = os.pathsep.join(filter(None, [extra_path, server_env.get("PYTHONPATH")]))
        server_log = open(self.tmp / "prefect-server.log", "wb")
        log(f"starting the Prefect server on {self.api_url} (PostgreSQL database {self.prefect_db})")
        command = [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)]
        if self.profile_server is not None:
            command[1:1] = ["-m", "pyinstrument", "-r", "pyisession", "-o", str(self.profile_server)]
        self.server = subprocess.Popen(
            command,
            env=server_env,
            stdout=server_log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        wait_healthy(self.api_url, timeout=120, process=self.server)
        self.server_cpu = TreeCpuSampler(self.server.pid).start()
        self.pg_cpu = PgBackendCpu([self.followups_db, self.prefect_db]).start()

        # This process talks to the same world (enrollments, API reads).
        for key, value in self.env.items():
            self._saved_env[key] = os.environ.get(key)
            os.environ[key] = value
        self._reset_clients()

    @staticmethod
    def _reset_clients() -> None:
        from followups.db.session import dispose_engines
        from followups.settings import reset_settings

        reset_settings()
        dispose_engines()
        import prefect.context
        from prefect.settings import Settings

        # Pick up PREFECT_API_URL in this (already imported) process.
        prefect.context.GLOBAL_SETTINGS_CONTEXT = prefect.context.SettingsContext(
            profile=prefect.context.GLOBAL_SETTINGS_CONTEXT.profile, settings=Settings()
        )

    def __exit__(self, *exc: Any) -> None:
        for sampler in (self.server_cpu, self.pg_cpu):
            if sampler is not None:
                sampler.stop()
        if self.server is not None:
            # SIGINT: the server (and pyinstrument, when profiling) shut down cleanly
            stop_process(self.server, timeout=60, sig=signal.SIGINT)
        if self.fake is not None:
            self.fake.stop()
        for key, value in self._saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        with contextlib.suppress(Exception):
            from followups.db.session import dispose_engines

            dispose_engines()
        if not self.keep_databases:
            for db in (self.followups_db, self.prefect_db):
                if db:
                    with contextlib.suppress(Exception):
                        drop_database(db)
            if self.tmp is not None:
                import shutil

                shutil.rmtree(self.tmp, ignore_errors=True)

    # -- resources shared by the benchmarks --

    def cpu_snapshot(self, executor: Executor | None = None) -> dict[str, float]:
        snap = {
            "bench_driver": process_cpu_seconds(os.getpid(), with_children=False),
            "machine_busy": machine_busy_seconds(),
            # `prefect server start` (3.9) serves the API and runs the background services in
            # one process (with its children, if any)
            "prefect_server": self.server_cpu.total() if self.server_cpu else 0.0,
            "postgresql": self.pg_cpu.total() if self.pg_cpu else 0.0,
            "executor": executor.cpu() if executor else 0.0,
        }
        snap["total"] = snap["prefect_server"] + snap["postgresql"] + snap["executor"]
        return snap


@dataclass
class Executor:
    """The stock runner, the fast worker or the followups work-pool worker, in its own process group."""

    kind: str  # "stock" | "fast" | "pool"
    world: BenchWorld
    concurrency: int = FAST_CONCURRENCY
    poll: float = FAST_POLL_SECONDS
    extra_env: dict[str, str] = field(default_factory=dict)
    nice: int = 0  # run the executor at a lower CPU priority than the Prefect server
    process: subprocess.Popen | None = None
    sampler: TreeCpuSampler | None = None
    log_path: Path | None = None

    @property
    def label(self) -> str:
        extra = "".join(f", {k}={v}" for k, v in self.extra_env.items()) + (f", nice {self.nice}" if self.nice else "")
        if self.kind == "stock":
            return f"stock serve(limit={STOCK_LIMIT}, poll={STOCK_POLL_SECONDS}s{extra})"
        if self.kind == "pool":
            return f"prefect worker start --pool {BENCH_POOL} (type followups, limit={self.concurrency}, query every {self.poll}s{extra})"
        return f"fast worker (concurrency={self.concurrency}, poll={self.poll}s{extra})"

    def command(self) -> list[str]:
        prefix = ["nice", "-n", str(self.nice)] if self.nice else []
        if self.kind == "stock":
            return [*prefix, sys.executable, "-m", "followups.cli", "serve", "--limit", str(STOCK_LIMIT)]
        if self.kind == "pool":
            prefect = str(Path(sys.executable).parent / "prefect")
            return [*prefix, prefect, "worker", "start", "--pool", BENCH_POOL, "--limit", str(self.concurrency)]
        return [
            *prefix,
            sys.executable,
            "-m",
            "followups.worker",
            "--concurrency",
            str(self.concurrency),
            "--poll",
            str(self.poll),
        ]

    def start(self, timeout: float = 90) -> Executor:
        assert self.world.tmp is not None
        self.log_path = self.world.tmp / f"{self.kind}-{uuid.uuid4().hex[:6]}.log"
        env = {**os.environ, **self.world.env, "PYTHONSAFEPATH": "1", **self.extra_env}
        if self.kind == "pool":
            env.setdefault("PREFECT_WORKER_QUERY_SECONDS", str(self.poll))
            use_pool(True)
        with open(self.log_path, "wb") as out:
            self.process = subprocess.Popen(
                self.command(),
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                cwd=str(self.world.tmp),
            )
        self.sampler = TreeCpuSampler(self.process.pid).start()
        self._wait_ready(timeout)
        return self

    def _wait_ready(self, timeout: float) -> None:
        """Ready = the deployment exists and this executor has polled it at least once."""
        from prefect.client.orchestration import get_client

        started = datetime.now(UTC)
        deadline = time.monotonic() + timeout
        with get_client(sync_client=True) as client:
            while time.monotonic() < deadline:
                if self.process is not None and self.process.poll() is not None:
                    raise RuntimeError(f"{self.label} exited early; see {self.log_path}")
                with contextlib.suppress(Exception):
                    deployment = client.read_deployment_by_name("follow-up-sequence/followups")
                    if deployment.last_polled and deployment.last_polled >= started:
                        return
                time.sleep(0.3)
        raise RuntimeError(f"{self.label} did not become ready in {timeout}s; see {self.log_path}")

    def pause(self) -> None:
        """SIGSTOP the executor's process group (so a backlog can be built that becomes
        available to it at one instant)."""
        assert self.process is not None
        os.killpg(self.process.pid, signal.SIGSTOP)

    def resume(self) -> None:
        assert self.process is not None
        os.killpg(self.process.pid, signal.SIGCONT)

    def cpu(self) -> float:
        return self.sampler.total() if self.sampler else 0.0

    def children(self) -> int:
        return live_children_count(self.process.pid) if self.process else 0

    def stop(self, timeout: float = 60) -> int | None:
        if self.sampler is not None:
            self.sampler.stop()
        if self.process is None:
            return None
        code = stop_process(self.process, timeout=timeout)
        if self.kind == "pool":
            use_pool(False)
        return code

    def tail(self, chars: int = 3000) -> str:
        if self.log_path and self.log_path.exists():
            return self.log_path.read_text(errors="replace")[-chars:]
        return ""


# --- the product calls the benchmarks make ---------------------------------------------------

ONE_EMAIL = [{"type": "EMAIL", "subject": "Offer on {{ deal.property_address }}", "text": "Hi {{ seller.first_name }}."}]


def new_owner_and_sequence(steps: list[dict[str, Any]] | None = None) -> tuple[int, int]:
    from followups.db.session import session_scope
    from followups.sequences import create_sequence
    from followups.users import ensure_user

    with session_scope() as session:
        owner = ensure_user(session, f"bench-{uuid.uuid4().hex[:8]}")
    with session_scope() as session:
        sequence = create_sequence(session, owner, name=f"bench-{uuid.uuid4().hex[:6]}", steps=steps or ONE_EMAIL)
        return owner, sequence.id


def deal(i: int, prefix: str) -> dict[str, Any]:
    import re

    return {
        "external_id": re.sub(r"[^A-Za-z0-9._:\-]", "-", f"{prefix}-{i}"),
        "property_address": f"{i} Bench Street, Springfield",
        "seller_name": "Pat Seller",
        "seller_email": f"seller{i}@example.com",
        "seller_phone": f"+1555{i:07d}",
        "offer_amount": "250000",
    }


def enroll_scheduled(owner: int, sequence_id: int, deal_input: dict[str, Any], scheduled_time: datetime | None):
    """An enrollment whose first flow run is due at `scheduled_time` (the product's own calls:
    create_enrollment + schedule_sequence_run, exactly what enroll_deal does for "now")."""
    from followups.db.models import Enrollment
    from followups.db.session import session_scope
    from followups.control import create_enrollment
    from followups.inputs import DealInput
    from followups.prefect_runs import schedule_sequence_run

    deal_in = DealInput.model_validate(deal_input)
    with session_scope() as session:
        enrollment = create_enrollment(session, owner, deal_in, sequence_id)
        run_id = schedule_sequence_run(enrollment.id, deal_in.external_id, 0, scheduled_time=scheduled_time)
        session.query(Enrollment).filter(Enrollment.id == enrollment.id).update({"prefect_flow_run_id": run_id})
        return enrollment.id, run_id


def parallel(fn: Callable[[int], Any], count: int, threads: int = 4, timeout: float = 600) -> list[Any]:
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=threads) as pool:
        futures = [pool.submit(fn, i) for i in range(count)]
        return [f.result(timeout=timeout) for f in futures]


def sent_events(enrollment_ids: list[int]) -> dict[int, Any]:
    """enrollment id -> occurred_at of its EMAIL_SENT/SMS_SENT events (first)."""
    from sqlalchemy import text

    from followups.db.session import session_scope

    with session_scope() as session:
        rows = session.execute(
            text(
                "SELECT enrollment_id, min(occurred_at) FROM follow_up_events "
                "WHERE enrollment_id = ANY(:ids) AND event_type IN ('EMAIL_SENT','SMS_SENT') GROUP BY enrollment_id"
            ),
            {"ids": enrollment_ids},
        ).all()
    return {r[0]: r[1] for r in rows}


def count_sent(enrollment_ids: list[int]) -> int:
    from sqlalchemy import text

    from followups.db.session import session_scope

    with session_scope() as session:
        return session.scalar(
            text(
                "SELECT count(*) FROM follow_up_events WHERE enrollment_id = ANY(:ids) "
                "AND event_type IN ('EMAIL_SENT','SMS_SENT')"
            ),
            {"ids": enrollment_ids},
        )


def wait_until(predicate: Callable[[], bool], timeout: float, interval: float = 0.25) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()


def request_enrollment_ids(fake) -> dict[int, list[float]]:
    """enrollment id -> received_at of each request the fake provider got (from custom_args)."""
    out: dict[int, list[float]] = {}
    with fake._lock:
        requests = list(fake.requests)
    for r in requests:
        eid = None
        with contextlib.suppress(Exception):
            if r.provider == "sendgrid":
                payload = json.loads(r.body)
                eid = int(payload["personalizations"][0]["custom_args"]["enrollment_id"])
        if eid is None:
            with contextlib.suppress(Exception):
                payload = json.loads(r.body)
                eid = int(payload.get("custom_args", {}).get("enrollment_id"))
        if eid is not None:
            out.setdefault(eid, []).append(r.received_at)
    return out


@contextlib.contextmanager
def executor(kind: str, world: BenchWorld, **kwargs: Any) -> Iterator[Executor]:
    ex = Executor(kind, world, **kwargs)
    try:
        ex.start()
        yield ex
    finally:
        code = ex.stop()
        if code not in (0, -15, 143, None):
            log(f"{ex.label} exited with {code}; log tail:\n{ex.tail()}")


BENCH_POOL = "bench-followups"


def use_pool(on: bool) -> Any:
    """Put follow-up-sequence/followups into the `followups`-type work pool (runs created from
    then on belong to it), or take it out again for the other executors."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectAlreadyExists

    from followups.deployments.definitions import sequence_deployment

    if not on:
        return sequence_deployment().apply()
    with get_client(sync_client=True) as client:
        with contextlib.suppress(ObjectAlreadyExists):
            client.create_work_pool(work_pool=WorkPoolCreate(name=BENCH_POOL, type="followups"))
    return sequence_deployment().apply(work_pool_name=BENCH_POOL)


def register_deployment() -> Any:
    """Create follow-up-sequence/followups (as `serve` and the fast worker would) so runs can be
    created before an executor is up."""
    from followups.deployments.definitions import sequence_deployment

    return sequence_deployment().apply()
