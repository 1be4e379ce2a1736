"""No duplicate sends on the scaled-out Prefect server: `followups prefect-server --workers 2`
(two API processes + a services process, PostgreSQL + Redis) with two fast workers racing for
the same runs through it, and one of them SIGKILLed at a seeded moment, then replaced.

Every enrollment must complete; each send step has at most one accepted provider call and
exactly one outcome event (outcome-unknown only for attempts in flight at the kill); no event
row changes. The server itself must stop cleanly on SIGTERM, leaving no process behind.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator

import httpx
import pytest
import redis
from sqlalchemy import create_engine

from checks import FULL, EventLedger, check_sends, fault_report, fault_schedule, scale, wait_final_states  # noqa: F401
from fault_world import SEQUENCE, Executor, attempts_in_flight, reconcile_cli, reconciled_count, step_state
from followups.control import enroll_deal
from prefect_servers import PG_ADMIN_URL, free_port, pointed_at
from support import deal_input, new_owner, new_sequence, wait_for

# Five server processes and two workers beside the suite's own: at full scale only, to keep
# .ci/run near its time budget (`FOLLOWUPS_FAULTS_SCALE=full pytest -m faults` runs it).
pytestmark = [pytest.mark.faults, pytest.mark.skipif(not FULL, reason="scaled Prefect server: runs with FOLLOWUPS_FAULTS_SCALE=full")]

# Redis databases only this scenario uses (the benchmark uses 14 and 15): flushed before and after.
REDIS_DB, DOCKET_DB = 12, 13
REDIS_URL = f"redis://127.0.0.1:6379/{REDIS_DB}"
DOCKET_URL = f"redis://127.0.0.1:6379/{DOCKET_DB}"


def _flush_redis() -> None:
    for db in (REDIS_DB, DOCKET_DB):
        client = redis.Redis(host="127.0.0.1", port=6379, db=db)
        try:
            client.flushdb()
        except redis.ConnectionError:
            pass  # Redis is down: `followups prefect-server` starts it (and it keeps nothing on disk)
        finally:
            client.close()


def _start_time(pid: int) -> str | None:
    """Field 22 of /proc/<pid>/stat (tells our process from a later one with the same pid);
    None when gone or a zombie (exited, waiting to be reaped by init)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            raw = stat.read()
    except OSError:
        return None
    fields = raw[raw.rindex(")") + 2 :].split()
    return None if fields[0] == "Z" else fields[19]


def _descendants(pid: int) -> dict[int, str | None]:
    found: dict[int, str | None] = {}
    todo = [pid]
    while todo:
        current = todo.pop()
        with contextlib.suppress(OSError):
            for task in os.listdir(f"/proc/{current}/task"):
                with open(f"/proc/{current}/task/{task}/children") as children:
                    kids = {int(c) for c in children.read().split()} - set(found)
                todo += kids
                found.update({kid: _start_time(kid) for kid in kids})
    return found


def _still_running(processes: dict[int, str | None]) -> set[int]:
    return {pid for pid, started in processes.items() if started is not None and _start_time(pid) == started}


@pytest.fixture(scope="module")
def scaled_prefect(fake_providers, tmp_path_factory) -> Iterator[dict]:
    """The product's scaled server on a fresh PostgreSQL database; this process's client and
    `followups reconcile` point at it."""
    home = tmp_path_factory.mktemp("scaled-prefect")
    database = f"prefect_test_scaled_{uuid.uuid4().hex[:8]}"
    port = free_port()
    url = f"http://127.0.0.1:{port}/api"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(PREFECT_HOME=str(home), PREFECT_SERVER_ANALYTICS_ENABLED="false",
               PREFECT_SERVER_LOGGING_LEVEL="WARNING", PYTHONSAFEPATH="1")
    command = [
        sys.executable, "-m", "followups.cli", "prefect-server", "--workers", "2", "--port", str(port),
        "--redis-url", REDIS_URL, "--docket-url", DOCKET_URL,
        "--database-url", f"postgresql+asyncpg://postgres@127.0.0.1:5432/{database}",
        "--no-ui", "--log-dir", str(home / "logs"),
    ]
    _flush_redis()
    with open(home / "supervisor.log", "wb") as out:
        supervisor = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT,
                                      stdin=subprocess.DEVNULL, start_new_session=True)

    def logs() -> str:
        parts = [home / "supervisor.log", *sorted((home / "logs").glob("*.log"))]
        return "\n".join(f"== {p.name}\n{p.read_text(errors='replace')[-3000:]}" for p in parts if p.exists())

    world = {"url": url, "supervisor": supervisor, "logs": logs}
    try:
        deadline = time.monotonic() + 150
        while True:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            if supervisor.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"the scaled Prefect server did not start:\n{logs()}")
            time.sleep(0.3)
        world["processes"] = _descendants(supervisor.pid)
        with pointed_at(url):
            yield world
        # The product's stop: SIGTERM to the supervisor alone stops every process it started.
        supervisor.send_signal(signal.SIGTERM)
        code = supervisor.wait(timeout=90)
        deadline = time.monotonic() + 10
        while (left := _still_running(world["processes"])) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert code == 0 and not left, f"exit code {code}, processes left {left}:\n{logs()}"
    finally:
        if supervisor.poll() is None:
            os.killpg(supervisor.pid, signal.SIGKILL)
            supervisor.wait(timeout=10)
        for pid in _still_running(world.get("processes", {})):  # never leave a server process behind
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        engine = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
        with engine.connect() as conn:
            conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
        engine.dispose()
        _flush_redis()


def _owns_port(pid: int, port: int) -> bool:
    """Whether process `pid` holds the TCP socket whose local port is `port`."""
    inodes = set()
    with contextlib.suppress(OSError):
        for fd in os.listdir(f"/proc/{pid}/fd"):
            with contextlib.suppress(OSError):
                link = os.readlink(f"/proc/{pid}/fd/{fd}")
                if link.startswith("socket:["):
                    inodes.add(link[8:-1])
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError), open(table) as rows:
            for row in list(rows)[1:]:
                fields = row.split()
                if int(fields[1].rsplit(":", 1)[1], 16) == port and fields[9] in inodes:
                    return True
    return False


class KillAtCall:
    """Wraps the fake provider's handler: once armed, the first request that comes from the
    victim's process kills it, either before the call (the request is dropped unanswered: never
    delivered) or after it (answered 2xx; the kill lands before the worker commits the outcome)."""

    def __init__(self, fake, moment: str) -> None:
        self.fake = fake
        self.moment = moment
        self.victim: Executor | None = None  # set = armed
        self.fired = threading.Event()
        self.lock = threading.Lock()

    def fire(self) -> None:
        with self.lock:
            if self.victim is not None and not self.fired.is_set():
                self.victim.kill()
                self.fired.set()

    def __enter__(self) -> KillAtCall:
        original = self.original = self.fake._handle

        def tapped(handler, body):
            victim = self.victim
            mine = victim is not None and not self.fired.is_set() and _owns_port(victim.pid, handler.client_address[1])
            if mine and self.moment == "before_call":
                self.fire()
                handler.close_connection = True
                return None
            result = original(handler, body)
            if mine and self.moment == "after_call":
                with contextlib.suppress(Exception):
                    handler.wfile.flush()
                self.fire()
            return result

        self.fake._handle = tapped
        return self

    def __exit__(self, *exc) -> None:
        self.fake._handle = self.original


def _sent(enrollment_ids) -> int:
    return sum(bool(t & {"EMAIL_SENT", "SMS_SENT"}) for t in step_state(enrollment_ids).values())


def test_two_fast_workers_on_the_scaled_server_never_send_twice(scaled_prefect, fake_providers, fault_schedule, fault_report, tmp_path):
    url = scaled_prefect["url"]
    # Two API processes, one services process (and uvicorn's own helper): the layout is real.
    assert len(scaled_prefect["processes"]) >= 4, scaled_prefect["processes"]
    count = scale(20, 120)
    # Mostly with a kill (at the provider call or after a commit); sometimes the plain race.
    moment = fault_schedule.choice(["before_call", "after_call", "after_commit", "before_call", "after_call", None])
    victim = fault_schedule.randrange(2)
    kill_after = fault_schedule.randint(1, count)  # committed sends before the kill is armed
    owner = new_owner()
    sequence = new_sequence(owner, SEQUENCE)
    ledger = EventLedger()
    ledger.checkpoint("start")
    workers = [Executor("fast", url, tmp_path / f"worker-{i}.log").start() for i in range(2)]
    accept: set[tuple[int, int]] = set()
    started = time.monotonic()
    try:
        ids = [enroll_deal(owner, deal_input(), sequence).id for _ in range(count)]
        if moment:
            wait_for(lambda: _sent(ids) >= kill_after, timeout=60, interval=0.05, what="committed sends before the kill")
            with KillAtCall(fake_providers, moment) as tap:
                tap.victim = workers[victim]
                if moment == "after_commit" or not tap.fired.wait(30):  # or the victim sent nothing more
                    tap.fire()
            # The dead worker commits nothing more: these attempts may stay without an outcome.
            accept = attempts_in_flight(ids)
            ledger.checkpoint("after SIGKILL")
            # The replacement recovers the dead worker's runs as it starts.
            workers[victim] = Executor("fast", url, tmp_path / f"worker-{victim}-b.log").start()
        wait_final_states({i: "COMPLETED" for i in ids}, timeout=scale(90, 400), repair=reconcile_cli, repair_every=15)
        drained = time.monotonic() - started
        sends = check_sends(fake_providers, ids, accept_unknown=accept)
        ledger.assert_unchanged()
        assert scaled_prefect["supervisor"].poll() is None, f"the scaled server died:\n{scaled_prefect['logs']()}"
        client = redis.Redis(host="127.0.0.1", port=6379, db=REDIS_DB)
        try:
            assert client.dbsize() > 0, "nothing went through Redis: the server is not on the Redis broker"
        finally:
            client.close()
    finally:
        for worker in workers:
            worker.terminate(timeout=30)
        fault_report.extra.update(server="scaled: 2 API processes + services + Redis", fast_workers=2, kill=moment,
                                  kill_after_sends=kill_after if moment else None, accepted_unknown=len(accept))
        fault_report.enrollments = count
    fault_report.stranded_repaired = reconciled_count(ids)
    fault_report.extra["seconds_to_drain"] = round(drained, 1)
    fault_report.add_sends(sends)
    fault_report.enrollments = count
    fault_report.finish()
