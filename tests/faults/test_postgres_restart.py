"""PostgreSQL restarted (`pg_ctl restart -m fast`) while runs execute.

Every connection of every process dies at once: the executor's, this test's, and the Prefect
server's (it uses the same PostgreSQL). The product reconnects (pool pre-ping), a step whose
database work failed is retried by a new run, and nothing is sent twice. A step that had its
STEP_ATTEMPT committed before the restart and no outcome after it may have been delivered
while its outcome commit failed: like a kill between call and commit, it may only end
STEP_OUTCOME_UNKNOWN. The Prefect server is NOT restarted by the test: it must survive on its
own, since an operator's PostgreSQL maintenance must not need a Prefect restart.

The cluster restarted is the module's own (tests/faults/private_postgres.py), holding the
product's database and the Prefect server's: other tests, on the machine's cluster, see nothing.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
from prefect.client.orchestration import get_client

from checks import EventLedger, check_sends, fault_report, fault_schedule, full_only, scale, wait_final_states  # noqa: F401
from fault_world import (
    DEPLOYMENT, SEQUENCE, Executor, attempts_in_flight, event_total, module_prefect, reconcile_cli, reconciled_count, step_state,
)
from followups.control import enroll_deal
from private_postgres import PrivatePostgres, private_postgres
from support import deal_input, new_owner, new_sequence, wait_for

# Its own cluster: it may run beside other tests. Not the stock runner's variant (full scale
# only): beside another test on 2 cores, its backlog of run processes misses the scenario's
# waits, like the stock variants of test_kill_workers.py.
pytestmark = pytest.mark.faults
STOCK = pytest.param("stock", marks=[full_only, pytest.mark.exclusive])


@contextlib.contextmanager
def product_database(url: str):
    """This process and the processes it starts (executor, `followups reconcile`) use `url`
    until the block ends; then the session's database again."""
    from followups.db.session import dispose_engines
    from followups.settings import reset_settings

    saved = os.environ["FOLLOWUPS_DATABASE_URL"]
    os.environ["FOLLOWUPS_DATABASE_URL"] = url
    reset_settings()
    dispose_engines()
    try:
        yield url
    finally:
        dispose_engines()
        os.environ["FOLLOWUPS_DATABASE_URL"] = saved
        reset_settings()


@pytest.fixture(scope="module")
def postgres(fake_providers) -> Iterator[PrivatePostgres]:
    # After fake_providers (so after the session's database_url): this module's URL wins.
    from followups.db.migrate import upgrade

    with private_postgres() as cluster:
        upgrade(cluster.url("followups"))
        with product_database(cluster.url("followups")):
            yield cluster


def restart_postgres(cluster: PrivatePostgres) -> float:
    """Restart the cluster; returns how long PostgreSQL was away."""
    started = time.monotonic()
    cluster.restart()
    wait_for(cluster.ready, timeout=60, interval=0.2, what="PostgreSQL to accept connections")
    return time.monotonic() - started


@pytest.fixture(scope="module")
def prefect_url(postgres, tmp_path_factory):
    with module_prefect(tmp_path_factory, "faults_pg", admin_url=postgres.admin_url) as url:
        yield url


def _prefect_serves(url: str) -> bool:
    """The server answers a request that reads its database (health alone does not)."""
    try:
        if httpx.get(f"{url}/health", timeout=3).status_code != 200:
            return False
        with get_client(sync_client=True) as client:
            client.read_deployment_by_name(DEPLOYMENT)
        return True
    except Exception:
        return False


@pytest.mark.parametrize("kind", ["fast", STOCK])
def test_postgres_restart_while_runs_execute(
    kind, postgres, prefect_url, fake_providers, fault_schedule, fault_report, tmp_path
):
    owner = new_owner()
    sequence = new_sequence(owner, SEQUENCE)
    ledger = EventLedger()
    ledger.checkpoint("start")
    executor = Executor(kind, prefect_url, tmp_path / "executor.log").start()
    restarts = scale(1, 3)
    per_batch = scale(6, 20)
    ids: list[int] = []
    accept: set[tuple[int, int]] = set()
    away: list[float] = []
    prefect_back: list[float] = []
    # A little provider latency keeps steps in flight when the restart lands.
    fake_providers.latency_seconds = 0.2
    try:
        for n in range(restarts):
            batch = [enroll_deal(owner, deal_input(), sequence).id for _ in range(per_batch)]
            ids += batch
            sends_before = fault_schedule.randint(1, per_batch)
            wait_for(
                lambda: sum(bool(t & {"EMAIL_SENT", "SMS_SENT"}) for t in step_state(batch).values()) >= sends_before,
                timeout=90, interval=0.05, what="sends to be under way",
                progress=lambda: event_total(ids),  # the stock runner may first work through a backlog
            )
            time.sleep(fault_schedule.uniform(0.0, 0.5))
            restart_began = datetime.now(UTC)
            away.append(round(restart_postgres(postgres), 1))
            # Attempts committed before PostgreSQL came back (so before it went away: nothing
            # commits while it is down) and without an outcome, or recovered as outcome-unknown
            # since the restart began (the product can be that quick): their outcome commit may
            # have died with the connection after the provider accepted. (A snapshot taken just
            # before the restart missed attempts committed between it and the shutdown.)
            accept |= attempts_in_flight(ids, attempted_before=datetime.now(UTC), unknown_since=restart_began)
            back = time.monotonic()
            wait_for(lambda: _prefect_serves(prefect_url), timeout=90, interval=0.5, what="the Prefect server to serve again")
            prefect_back.append(round(time.monotonic() - back, 1))
            ledger.checkpoint(f"after restart {n + 1}")
        fake_providers.latency_seconds = 0.0
        assert executor.alive(), f"the {kind} executor died with the database restart:\n{executor.log()}"
        wait_final_states({i: "COMPLETED" for i in ids}, timeout=scale(150, 400), repair=reconcile_cli, repair_every=15)
        sends = check_sends(fake_providers, ids, accept_unknown=accept)
        ledger.assert_unchanged()
    finally:
        fake_providers.latency_seconds = 0.0
        if not postgres.ready():
            with contextlib.suppress(AssertionError):  # the failure that left it down is the one to report
                postgres.start()
        executor.terminate(timeout=30)
        fault_report.extra.update(
            executor=kind, restarts=restarts, postgres_away_s=away, prefect_back_s=prefect_back, accepted_unknown=len(accept),
            log=str(Path(executor.log_path)),
        )
        fault_report.stranded_repaired = reconciled_count(ids) if postgres.ready() else 0
    fault_report.add_sends(sends)
    fault_report.enrollments = len(ids)
    fault_report.finish()
