"""The fast path as a Prefect worker type: `prefect work-pool create followups --type followups`,
`prefect deploy --all`, `prefect worker start --pool followups`, exactly as an operator types
them, against a Prefect server of this module's own (own PREFECT_HOME and database; the
session's API and runner are never used).

What a user of a work pool expects: the runs execute (one send per step) inside the one worker
process, the worker shows online in the pool, the pool's concurrency limit holds, and a Cancel
in the Prefect UI stops a run in flight while the worker goes on.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import WorkPoolUpdate
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterDeploymentId, FlowRunFilterId
from prefect.client.schemas.objects import FlowRun, WorkerStatus
from prefect.states import Cancelling
from prefect.workers.base import BaseWorker

from prefect_servers import prefect_server, stop
from followups.control import cancel_enrollment, enroll_deal
from followups.worker.pool_worker import FollowupsWorker
from support import deal_input, enrollment_row, event_types, new_owner, new_sequence, wait_for
from test_deploy_anywhere import FOLLOWUPS, PREFECT, REPO, SHORT_SEQUENCE, OwnPrefect, _cli, _descendants

pytestmark = pytest.mark.slow

POOL = "followups"  # the pool prefect.yaml deploys into
LIMIT = 3


@dataclass
class PoolWorld:
    prefect: OwnPrefect
    worker: subprocess.Popen
    log: Path
    sequence_deployment_id: object

    def runs(self, client, ids=None) -> list[FlowRun]:
        flow_filter = FlowRunFilter(deployment_id=FlowRunFilterDeploymentId(any_=[self.sequence_deployment_id]))
        if ids is not None:
            flow_filter.id = FlowRunFilterId(any_=list(ids))
        return client.read_flow_runs(flow_run_filter=flow_filter)

    def alive(self) -> None:
        assert self.worker.poll() is None, f"the worker exited:\n{self.log.read_text()[-4000:]}"


@pytest.fixture(scope="module")
def world(tmp_path_factory, fake_providers) -> Iterator[PoolWorld]:
    home = tmp_path_factory.mktemp("pool-worker-prefect")
    with prefect_server(home, name="pool", PREFECT_SERVER_SERVICES_SCHEDULER_ENABLED="false") as url:
        own = OwnPrefect(url, home)
        env = own.env()  # the worker type polls every second by default
        _cli([PREFECT, "work-pool", "create", POOL, "--type", "followups"], cwd=REPO, env=env)
        _cli([PREFECT, "deploy", "--all", "--no-prompt"], cwd=REPO, env=env)
        with own.api(), get_client(sync_client=True) as client:
            # A sweep here would check the session database's enrollments against this server.
            reconcile = client.read_deployment_by_name("reconcile-enrollments/followups")
            client.pause_deployment(reconcile.id)
            sequence = client.read_deployment_by_name("follow-up-sequence/followups")
        workdir = tmp_path_factory.mktemp("pool-worker-cwd")
        log = workdir / "worker.log"
        with open(log, "wb") as out:
            worker = subprocess.Popen(
                [PREFECT, "worker", "start", "--pool", POOL, "--limit", str(LIMIT)],
                cwd=workdir, env={**env, "PYTHONSAFEPATH": "1"},
                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
            )
        try:
            yield PoolWorld(own, worker, log, sequence.id)
        finally:
            stop(worker)


def _enroll(owner: int, sequence: int) -> tuple[int, object]:
    deal = deal_input()
    return enroll_deal(owner, deal, sequence).id, deal


def test_the_worker_type_is_registered_through_prefects_plugin_entry_point():
    assert BaseWorker.get_worker_class_from_type("followups") is FollowupsWorker
    template = FollowupsWorker.get_default_base_job_template()
    assert set(template["job_configuration"]) >= {"env", "labels", "name"}


def test_runs_execute_on_threads_of_the_one_worker_process_and_it_shows_online(world, fake_providers):
    enrolled = []
    with world.prefect.api():
        owner = new_owner()
        sequence = new_sequence(owner, SHORT_SEQUENCE)
        enrolled = [_enroll(owner, sequence) for _ in range(2 * LIMIT)]
        try:
            wait_for(
                lambda: all(enrollment_row(e).status == "COMPLETED" for e, _ in enrolled) or world.worker.poll() is not None,
                timeout=120, interval=0.5, what="every sequence to complete on the followups worker",
            )
            world.alive()
            with get_client(sync_client=True) as client:
                mine = {e for e, _ in enrolled}
                # The enrollment's COMPLETED row commits before its run reports its final state.
                runs = wait_for(
                    lambda: (found := [r for r in world.runs(client) if r.parameters.get("enrollment_id") in mine])
                    and all(r.state and r.state.is_final() for r in found) and found,
                    timeout=30, what="final run states",
                )
                workers = client.read_workers_for_work_pool(POOL)
                pool = client.read_work_pool(POOL)
        finally:
            for enrollment_id, _ in enrolled:
                if enrollment_row(enrollment_id).status in ("ACTIVE", "PAUSED"):
                    with contextlib.suppress(Exception):
                        cancel_enrollment(enrollment_id)
    for enrollment_id, deal in enrolled:
        assert [t for t in event_types(enrollment_id) if t != "STEP_ATTEMPT"] == [
            "ENROLLED", "EMAIL_SENT", "WAIT_STARTED", "WAIT_COMPLETED", "SMS_SENT", "COMPLETED"
        ]
        assert len(fake_providers.for_recipient(str(deal.seller_email))) == 1
        assert len(fake_providers.for_recipient(deal.seller_phone)) == 1
    ours = runs
    assert len(ours) == 2 * len(enrolled) and all(r.state.is_completed() for r in ours), [(r.name, r.state) for r in ours]
    # In the worker's own process: no process per run.
    me = f"{socket.gethostname()}:{world.worker.pid}"
    assert {r.infrastructure_pid for r in ours} == {me}
    assert all(r.work_pool_name == POOL for r in ours)
    assert _descendants(world.worker.pid) == []
    assert pool.type == "followups" and pool.status.value == "READY"
    assert [w.status for w in workers] == [WorkerStatus.ONLINE]


def test_the_pools_concurrency_limit_holds(world, fake_providers):
    one_email = [{"type": "EMAIL", "subject": "Our offer", "text": "Hi"}]
    enrolled = []
    with world.prefect.api(), get_client(sync_client=True) as client:
        client.update_work_pool(POOL, WorkPoolUpdate(concurrency_limit=1))
        try:
            owner = new_owner()
            sequence = new_sequence(owner, one_email)
            enrolled = [_enroll(owner, sequence)[0] for _ in range(4)]
            wait_for(
                lambda: all(enrollment_row(e).status == "COMPLETED" for e in enrolled) or world.worker.poll() is not None,
                timeout=120, interval=0.5, what="the one-email sequences to complete one at a time",
            )
            world.alive()
            ids = [enrollment_row(e).prefect_flow_run_id for e in enrolled]
            runs = wait_for(
                lambda: (found := world.runs(client, ids)) and all(r.end_time for r in found) and len(found) == 4 and found,
                timeout=30, what="the runs' end times",
            )
        finally:
            client.update_work_pool(POOL, WorkPoolUpdate(concurrency_limit=None))
    spans = sorted((r.start_time, r.end_time) for r in runs)
    # With the pool's limit at 1, no run starts before the previous one has ended.
    assert all(later[0] >= earlier[1] for earlier, later in zip(spans, spans[1:])), spans


def test_cancel_in_prefect_stops_a_run_in_flight_and_the_worker_goes_on(world, fake_providers):
    """The UI's Cancel on a running run: the send in flight is recorded, then the run's thread
    stops, the run is Cancelled, the enrollment follows, and the SMS after it never goes."""
    two_steps = [{"type": "EMAIL", "subject": "Our offer", "text": "Hi"}, {"type": "SMS", "body": "Any thoughts?"}]
    with world.prefect.api(), get_client(sync_client=True) as client:
        owner = new_owner()
        fake_providers.latency_seconds = 3
        try:
            enrollment_id, deal = _enroll(owner, new_sequence(owner, two_steps))
            wait_for(lambda: "STEP_ATTEMPT" in event_types(enrollment_id), timeout=60, what="the send to start")
            run_id = enrollment_row(enrollment_id).prefect_flow_run_id
            assert client.read_flow_run(run_id).state.is_running()
            client.set_flow_run_state(run_id, Cancelling(message="cancelled from the UI"), force=True)
            wait_for(lambda: client.read_flow_run(run_id).state.is_cancelled(), timeout=30, what="the run to be Cancelled")
        finally:
            fake_providers.latency_seconds = 0
        wait_for(lambda: enrollment_row(enrollment_id).status == "CANCELLED", timeout=60, what="the enrollment to follow")
        world.alive()
        # Its thread is free again: the next sequence runs to the end.
        after, _ = _enroll(owner, new_sequence(owner, [{"type": "EMAIL", "subject": "s", "text": "t"}]))
        wait_for(lambda: enrollment_row(after).status == "COMPLETED", timeout=60, what="a later sequence to complete")
    assert len(fake_providers.for_recipient(str(deal.seller_email))) == 1
    assert fake_providers.for_recipient(deal.seller_phone) == []
    assert "SMS_SENT" not in event_types(enrollment_id)
    world.alive()


def test_a_foreign_deployment_in_the_pool_is_refused_not_imported(world):
    """Only the product's flows run on these threads: another deployment put in the pool is
    marked Crashed with the reason, and its entrypoint is never imported."""
    with world.prefect.api(), get_client(sync_client=True) as client:
        flow_id = client.create_flow_from_name("not-ours")
        deployment_id = client.create_deployment(
            flow_id=flow_id, name="foreign", entrypoint="os:system", work_pool_name=POOL
        )
        run = client.create_flow_run_from_deployment(deployment_id)
        state = wait_for(
            lambda: (s := client.read_flow_run(run.id).state) and s.is_final() and s,
            timeout=60, what="the foreign run to be refused",
        )
        client.delete_deployment(deployment_id)
    assert state.is_crashed(), state
    assert "not one of the product's flows" in (state.message or "")
    world.alive()


def test_sigusr1_writes_every_threads_stack_and_the_worker_goes_on(world):
    world.alive()
    before = len(world.log.read_text(errors="replace"))
    os.kill(world.worker.pid, signal.SIGUSR1)
    wait_for(lambda: "_slot_loop" in world.log.read_text(errors="replace")[before:], timeout=10, what="the stack dump")
    time.sleep(1)
    world.alive()


def test_followups_deploy_moves_the_runs_waiting_outside_the_pool_into_it(world, fake_providers, monkeypatch):
    """`followups serve` registers new deployments with no work pool, and the runs created then
    have no work queue, which a pool's workers never see. `followups deploy --pool` moves the
    waiting ones into the pool: an ACTIVE enrollment goes on at its due time, a PAUSED one when
    resumed."""
    from followups.control import pause_enrollment, resume_enrollment
    from followups.deployments.definitions import local_deployments
    from followups.settings import reset_settings

    one_email = [{"type": "EMAIL", "subject": "Our offer", "text": "Hi"}]
    name = f"moved-{uuid.uuid4().hex[:6]}"  # deployments that were never in a pool
    monkeypatch.setenv("FOLLOWUPS_DEPLOYMENT_NAME", f"follow-up-sequence/{name}")
    monkeypatch.setenv("FOLLOWUPS_RECONCILE_INTERVAL_SECONDS", "0")  # no sweep of the session database here
    reset_settings()
    with world.prefect.api(), get_client(sync_client=True) as client:
        for deployment in local_deployments():
            deployment.apply()  # as `followups serve` registers them
        owner = new_owner()
        sequence = new_sequence(owner, one_email)
        (active, active_deal), (paused, paused_deal) = _enroll(owner, sequence), _enroll(owner, sequence)
        pause_enrollment(paused)
        waiting = client.read_flow_run(enrollment_row(active).prefect_flow_run_id)
        assert waiting.work_queue_name is None and waiting.state.is_scheduled()
        time.sleep(3)  # the worker polls its pool every second: the run is not in it
        assert "STEP_ATTEMPT" not in event_types(active)

        env = world.prefect.env(FOLLOWUPS_DEPLOYMENT_NAME=f"follow-up-sequence/{name}", FOLLOWUPS_RECONCILE_INTERVAL_SECONDS="0",
                                PYTHONSAFEPATH="1")
        deployed = json.loads(_cli([FOLLOWUPS, "deploy", "--pool", POOL, "--json"], cwd=world.log.parent, env=env))
        assert deployed["moved_runs"] == 2
        wait_for(lambda: enrollment_row(active).status == "COMPLETED", timeout=60, what="the moved run")
        assert enrollment_row(paused).status == "PAUSED" and "EMAIL_SENT" not in event_types(paused)
        resume_enrollment(paused)
        wait_for(lambda: enrollment_row(paused).status == "COMPLETED", timeout=60, what="the resumed enrollment")
        for enrollment_id, deal in ((active, active_deal), (paused, paused_deal)):
            assert event_types(enrollment_id).count("EMAIL_SENT") == 1
            assert len(fake_providers.for_recipient(str(deal.seller_email))) == 1
            run = client.read_flow_run(enrollment_row(enrollment_id).prefect_flow_run_id)
            assert run.work_pool_name == POOL and run.state.is_completed()
    monkeypatch.undo()
    reset_settings()
    world.alive()
