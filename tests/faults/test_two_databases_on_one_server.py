"""Two followups databases on one Prefect server, each with enrollments 1..N (the same ids on
both sides), each with its own deployment name and its own fast workers: every enrollment
completes, and no run crosses over. Checked from Prefect's side (every follow-up run's
deployment, tags and parameters against the database that owns that deployment) and from each
database's side (its event log names only runs of its own deployment).

(Named apart from tests/test_two_databases.py: two test modules with one basename cannot be
collected in one pytest run.)
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import create_engine, text

from checks import EventLedger, check_sends, fault_report, fault_schedule, scale, wait_final_states  # noqa: F401
from conftest import PG_ADMIN_URL, _admin_engine, _with_database
from fault_world import Executor, module_prefect
from support import deal_input, using

pytestmark = pytest.mark.faults

ENROLLMENTS = scale(10, 50)
WORKERS_PER_DATABASE = scale(1, 2)
STEPS = [
    {"type": "EMAIL", "subject": "Offer on {{ deal.property_address }}", "text": "Hi {{ seller.first_name }}"},
    {"type": "WAIT", "seconds": 1},
    {"type": "SMS", "body": "Any news on {{ deal.external_id }}?"},
]


class SideExecutor(Executor):
    """A fast worker for one database (`fault_world.Executor`), started with that database's settings and
    ready when that database's own deployment has been polled."""

    def __init__(self, url: str, deployment: str, prefect_api: str, log_path) -> None:
        super().__init__("fast", prefect_api, log_path, deployment=f"follow-up-sequence/{deployment}")
        self.url, self.side_deployment = url, deployment

    def start(self, timeout: float = 90) -> SideExecutor:
        with using(self.url, self.side_deployment):
            return super().start(timeout)


@pytest.fixture(scope="module")
def sides(tmp_path_factory, fake_providers) -> Iterator[list[dict[str, Any]]]:
    from followups.db.migrate import upgrade
    from followups.db.session import dispose_engines

    suffix = uuid.uuid4().hex[:6]
    setups = [{"name": side, "url": _with_database(PG_ADMIN_URL, f"followups_faults_{side}_{suffix}"),
               "deployment": f"faults-{side}-{suffix}"} for side in "ab"]
    logs = tmp_path_factory.mktemp("two-databases")
    workers: list[Executor] = []
    with module_prefect(tmp_path_factory, "two_databases") as prefect_api:
        try:
            for side in setups:
                upgrade(side["url"])  # from nothing, as `followups db upgrade` makes it: ids start at 1
                for n in range(WORKERS_PER_DATABASE):
                    log = logs / f"{side['deployment']}-{n}.log"
                    workers.append(SideExecutor(side["url"], side["deployment"], prefect_api, log).start())
            yield setups
        finally:
            for worker in workers:
                worker.terminate(timeout=30)
            dispose_engines()
            with _admin_engine().connect() as conn:
                for side in setups:
                    conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{side["url"].rsplit("/", 1)[1]}" WITH (FORCE)')


def enroll_all(side: dict[str, Any], order: list[int]) -> list[int]:
    from followups.control import enroll_deal
    from followups.db.session import session_scope
    from followups.identity import database_tag
    from followups.sequences import create_sequence
    from followups.users import ensure_user

    with session_scope() as session:
        owner = ensure_user(session, f"investor-{side['name']}")
        sequence = create_sequence(session, owner, name=f"seq {side['name']}", steps=STEPS).id
    side["tag"] = database_tag()
    return [enroll_deal(owner, deal_input(external_id=f"{side['name'].upper()}-{i}-{uuid.uuid4().hex[:6]}"), sequence).id
            for i in order]


def follow_up_runs() -> list[Any]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowFilter, FlowFilterName

    runs, offset = [], 0
    with get_client(sync_client=True) as client:
        deployments = {d.id: d.name for d in client.read_deployments()}
        while True:
            page = client.read_flow_runs(flow_filter=FlowFilter(name=FlowFilterName(any_=["follow-up-sequence"])),
                                         limit=200, offset=offset)
            runs.extend((run, deployments.get(run.deployment_id)) for run in page)
            if len(page) < 200:
                return runs
            offset += 200


def logged_runs(url: str) -> set[str]:
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            return {str(r[0]) for r in conn.execute(text(
                "SELECT DISTINCT flow_run_id FROM follow_up_events WHERE flow_run_id IS NOT NULL"))}
    finally:
        engine.dispose()


def test_two_databases_complete_on_one_prefect_server_and_never_cross(sides, fake_providers, fault_schedule, fault_report):
    enrolled: dict[str, list[int]] = {}
    ledgers: dict[str, EventLedger] = {}
    for side in sides:
        order = list(range(1, ENROLLMENTS + 1))
        fault_schedule.shuffle(order)  # only the deals' names: ids are handed out 1..N in time order
        with using(side["url"], side["deployment"]):
            enrolled[side["name"]] = enroll_all(side, order)
        ledgers[side["name"]] = EventLedger(side["url"])
        ledgers[side["name"]].checkpoint("enrolled")
    # The same ids on both sides: exactly the keys that would collide without the database's identity.
    assert enrolled["a"] == enrolled["b"] == list(range(1, ENROLLMENTS + 1))
    assert sides[0]["tag"] != sides[1]["tag"]

    for side in sides:
        ids = enrolled[side["name"]]
        wait_final_states({e: "COMPLETED" for e in ids}, timeout=60 + 6 * ENROLLMENTS, url=side["url"])
        with using(side["url"], side["deployment"]):
            fault_report.add_sends(check_sends(fake_providers, ids, url=side["url"]))
        ledgers[side["name"]].assert_unchanged()

    # Prefect's side: every follow-up run belongs to one of the two deployments, carries that
    # database's tag and no other's, and names one of its enrollments.
    by_deployment = {side["deployment"]: side for side in sides}
    crossed, runs_of = [], {side["name"]: set() for side in sides}
    for run, deployment in follow_up_runs():
        side = by_deployment.get(deployment)
        if side is None:
            crossed.append((str(run.id), deployment, "not one of the two deployments"))
            continue
        tags = set(run.tags or [])
        other = next(s for s in sides if s is not side)
        if side["tag"] not in tags or other["tag"] in tags:
            crossed.append((str(run.id), deployment, sorted(tags)))
        if f"enrollment:{run.parameters.get('enrollment_id')}" not in tags or run.parameters.get("enrollment_id") not in enrolled[side["name"]]:
            crossed.append((str(run.id), deployment, run.parameters))
        if run.state_name not in ("Completed", "Waiting"):
            crossed.append((str(run.id), deployment, run.state_name))
        runs_of[side["name"]].add(str(run.id))
    assert not crossed, crossed

    # Each database's side: its event log names only runs of its own deployment, and some.
    for side in sides:
        logged = logged_runs(side["url"])
        assert logged and logged <= runs_of[side["name"]], logged - runs_of[side["name"]]
    assert not runs_of["a"] & runs_of["b"]

    fault_report.extra.update(databases=2, per_database=ENROLLMENTS, workers_per_database=WORKERS_PER_DATABASE,
                              flow_runs={name: len(runs) for name, runs in runs_of.items()})
    fault_report.finish()
