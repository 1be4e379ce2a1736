"""`prefect deploy --all` from the checkout makes deployments a process worker runs from any
directory; and the deployments `followups serve` and the fast worker register follow
FOLLOWUPS_DEPLOYMENT_NAME, so two databases can share one Prefect server.

Everything here talks to a Prefect server of this module's own (own PREFECT_HOME and PostgreSQL
database): every subprocess gets an environment without the session's PREFECT_* settings, and
this process reaches that server only inside `own_prefect.api()`. The session's shared API
and runner are never used.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import WorkPoolCreate
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterDeploymentId, FlowRunFilterTags
from prefect.client.schemas.responses import DeploymentResponse
from prefect.events import DeploymentEventTrigger
from prefect.settings import PREFECT_API_URL, temporary_settings

from prefect_servers import prefect_server, stop as _stop
from followups.control import cancel_enrollment, enroll_deal
from followups.deployments.definitions import local_deployments
from followups.errors import InvalidInputError
from followups.settings import reset_settings
from support import deal_input, enrollment_row, event_types, new_owner, new_sequence, wait_for

REPO = Path(__file__).resolve().parents[1]
PREFECT = str(Path(sys.executable).parent / "prefect")  # the console script, as an operator runs it
SHORT_SEQUENCE = [
    {"type": "EMAIL", "subject": "Our offer", "text": "Hi {{ seller.first_name }}"},
    {"type": "WAIT", "seconds": 2},
    {"type": "SMS", "body": "Any thoughts on our offer?"},
]


@dataclass
class OwnPrefect:
    url: str
    home: Path

    def env(self, **extra: str) -> dict[str, str]:
        """The session's environment (test database, fake providers) without its Prefect
        settings, pointed at this server."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
        env.update(PREFECT_HOME=str(self.home), PREFECT_API_URL=self.url, PREFECT_SERVER_ANALYTICS_ENABLED="false")
        env.update(extra)
        return env

    @contextlib.contextmanager
    def api(self) -> Iterator[None]:
        with temporary_settings(updates={PREFECT_API_URL: self.url}):
            yield


@pytest.fixture(scope="module")
def own_prefect(tmp_path_factory) -> Iterator[OwnPrefect]:
    home = tmp_path_factory.mktemp("deploy-anywhere-prefect")
    # No scheduled reconcile-enrollments runs: see the deploy test.
    with prefect_server(home, name="deploy", PREFECT_SERVER_SERVICES_SCHEDULER_ENABLED="false") as url:
        yield OwnPrefect(url, home)


def _cli(args: list[str], *, cwd: Path, env: dict[str, str], timeout: float = 180) -> str:
    done = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    assert done.returncode == 0, f"{' '.join(args)} exited {done.returncode}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done.stdout


def _descendants(pid: int) -> list[tuple[int, str]]:
    """(pid, start time) of every process below `pid`, from /proc."""
    children: dict[int, list[tuple[int, str]]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, IndexError, ValueError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            children.setdefault(int(fields[1]), []).append((int(stat.parent.name), fields[19]))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child[0])
    return found


def _stop_with_children(process: subprocess.Popen) -> None:
    """Stop the worker's process group, then any flow-run process it started in a session of
    its own (checked by start time, so a reused pid is never hit)."""
    below = _descendants(process.pid)
    _stop(process)
    for pid, started in below:
        with contextlib.suppress(OSError, IndexError):
            if Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19] == started:
                os.kill(pid, signal.SIGKILL)


@pytest.mark.slow
def test_prefect_deploy_all_makes_deployments_a_worker_runs_from_anywhere(own_prefect, fake_providers, tmp_path):
    env = own_prefect.env(PREFECT_WORKER_QUERY_SECONDS="1", PREFECT_LOGGING_TO_API_ENABLED="false")
    listed, config = set(os.listdir(REPO)), (REPO / "prefect.yaml").read_bytes()
    _cli([PREFECT, "work-pool", "create", "followups", "--type", "process"], cwd=REPO, env=env)
    _cli([PREFECT, "deploy", "--all", "--no-prompt"], cwd=REPO, env=env)
    # Non-interactive and leaves the checkout as it was (no .prefect/, no rewritten prefect.yaml).
    assert (REPO / "prefect.yaml").read_bytes() == config
    assert not [name for name in set(os.listdir(REPO)) - listed if name.startswith(".prefect")]

    declared = {f"{d.flow_name}/{d.name}" for d in local_deployments()}
    with own_prefect.api(), get_client(sync_client=True) as client:
        deployed = {name: client.read_deployment_by_name(name) for name in declared}
        for name, deployment in deployed.items():
            assert deployment.work_pool_name == "followups", name
            assert not deployment.pull_steps, f"{name} has pull steps: {deployment.pull_steps}"
            assert not deployment.path, f"{name} runs in the deploying machine's directory {deployment.path}"
        reconcile = deployed["reconcile-enrollments/followups"]
        [schedule] = reconcile.schedules
        assert schedule.active and schedule.schedule.interval.total_seconds() == 300
        # A sweep here would check every open enrollment of the session's database against this
        # server, where their runs do not exist: it must not run.
        client.pause_deployment(reconcile.id)
        for run in client.read_flow_runs(flow_run_filter=FlowRunFilter(deployment_id=FlowRunFilterDeploymentId(any_=[reconcile.id]))):
            client.delete_flow_run(run.id)

    workdir = tmp_path / "worker"
    workdir.mkdir()
    assert REPO not in workdir.resolve().parents
    enrollment_id, deal, runs = _complete_a_sequence(own_prefect, env, "followups", deployed["follow-up-sequence/followups"].id, workdir)
    with own_prefect.api(), get_client(sync_client=True) as client:
        never_ran = client.read_flow_runs(flow_run_filter=FlowRunFilter(deployment_id=FlowRunFilterDeploymentId(any_=[reconcile.id])))
    _assert_completed(fake_providers, enrollment_id, deal, runs, "followups")
    assert never_ran == []


def _complete_a_sequence(own_prefect: OwnPrefect, env: dict[str, str], pool: str, sequence_id, workdir: Path) -> tuple:
    """Start `prefect worker start --pool POOL` in `workdir`, enroll a deal in a short sequence
    and wait for it to complete: (enrollment id, deal, the sequence's runs in their final state)."""
    log = workdir.parent / "worker.log"
    enrollment_id = None
    with open(log, "wb") as out:
        worker = subprocess.Popen(
            [PREFECT, "worker", "start", "--pool", pool],
            cwd=workdir, env={**env, "PYTHONSAFEPATH": "1"},
            stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
        )
    try:
        with own_prefect.api():
            owner = new_owner()
            deal = deal_input()
            enrollment_id = enroll_deal(owner, deal, new_sequence(owner, SHORT_SEQUENCE)).id
            wait_for(
                lambda: enrollment_row(enrollment_id).status == "COMPLETED" or worker.poll() is not None,
                timeout=180, interval=0.5, what=f"the sequence to complete on a worker of pool {pool}",
            )
            assert worker.poll() is None, f"the worker exited:\n{log.read_text()[-4000:]}"
            with get_client(sync_client=True) as client:
                sequence_runs = FlowRunFilter(
                    deployment_id=FlowRunFilterDeploymentId(any_=[sequence_id]),
                    tags=FlowRunFilterTags(all_=[f"enrollment:{enrollment_id}"]),  # not an earlier test's
                )
                # The enrollment's COMPLETED row commits before the run reports its final state.
                runs = wait_for(
                    lambda: (found := client.read_flow_runs(flow_run_filter=sequence_runs))
                    and all(r.state and r.state.is_final() for r in found) and found,
                    timeout=60, interval=0.5, what="both runs to reach a final state in Prefect",
                )
    finally:
        _stop_with_children(worker)
        if enrollment_id is not None and enrollment_row(enrollment_id).status in ("ACTIVE", "PAUSED"):
            with own_prefect.api(), contextlib.suppress(Exception):
                cancel_enrollment(enrollment_id)
    return enrollment_id, deal, runs


def _assert_completed(fake_providers, enrollment_id: int, deal, runs: list, pool: str) -> None:
    assert [t for t in event_types(enrollment_id) if t != "STEP_ATTEMPT"] == [
        "ENROLLED", "EMAIL_SENT", "WAIT_STARTED", "WAIT_COMPLETED", "SMS_SENT", "COMPLETED"
    ]
    assert len(fake_providers.for_recipient(str(deal.seller_email))) == 1
    assert len(fake_providers.for_recipient(deal.seller_phone)) == 1
    assert len(runs) == 2 and all(r.state.is_completed() and r.work_pool_name == pool for r in runs), [
        (r.name, r.state, r.work_pool_name) for r in runs
    ]


# -- followups deploy --pool -----------------------------------------------------------------

FOLLOWUPS = str(Path(sys.executable).parent / "followups")
THREAD_POOL = "followups-threads"
SAVED_SEARCHES = ["Follow-ups: needs attention", "Follow-ups: waiting"]
# What Prefect's classic UI reads from a saved search (it drops one it cannot read, silently).
UI_LIST_PROPERTIES = {"state", "flow", "tag", "deployment", "workQueue", "workPool"}


def _saved_searches(client) -> list[dict]:
    return client.request("POST", "/saved_searches/filter", json={}).json()


def _assert_the_ui_reads(search: dict) -> None:
    for item in search["filters"]:
        assert item["object"] == "flowRun", item
        if item["property"] == "range":
            assert item["value"]["type"] == "range" and all(
                datetime.fromisoformat(item["value"][key]) for key in ("startDate", "endDate")
            ), item
        else:
            assert item["property"] in UI_LIST_PROPERTIES, item
            assert item["value"] and all(isinstance(value, str) for value in item["value"]), item


@pytest.mark.slow
def test_followups_deploy_from_an_empty_directory_makes_a_pool_a_worker_runs(own_prefect, fake_providers, tmp_path):
    env = own_prefect.env(PREFECT_LOGGING_TO_API_ENABLED="false", PYTHONSAFEPATH="1")
    empty = tmp_path / "empty"
    empty.mkdir()
    deploy = [FOLLOWUPS, "deploy", "--pool", THREAD_POOL]
    first = _cli([*deploy, "--create-pool", "--type", "followups"], cwd=empty, env=env)
    second = json.loads(_cli([*deploy, "--json"], cwd=empty, env=env))
    assert os.listdir(empty) == []

    declared = {f"{d.flow_name}/{d.name}" for d in local_deployments()}
    assert f"created work pool {THREAD_POOL} (type followups)" in first
    assert all(f"registered {name} in work pool {THREAD_POOL}" in first for name in declared), first
    assert all(f"saved search created: {name}" in first for name in SAVED_SEARCHES), first
    assert second["pool_created"] is False and set(second["deployments"]) == declared
    assert sorted((s["name"], s["action"]) for s in second["saved_searches"]) == [(n, "updated") for n in SAVED_SEARCHES]

    with own_prefect.api(), get_client(sync_client=True) as client:
        assert client.read_work_pool(THREAD_POOL).type == "followups"
        deployed = {name: client.read_deployment_by_name(name) for name in declared}
        for name, deployment in deployed.items():
            assert deployment.work_pool_name == THREAD_POOL and deployment.work_queue_name == "default", name
            assert not deployment.pull_steps and not deployment.path, name
            assert deployment.entrypoint.startswith("followups.flows."), name
            assert deployment.job_variables == {"env": {"PREFECT_FLOWS_HEARTBEAT_FREQUENCY": "30"}}, name
        # Deploying twice replaces the triggers' automations: one each.
        [offer_trigger] = client.read_resource_related_automations(f"prefect.deployment.{deployed['enroll-on-offer/followups'].id}")
        assert offer_trigger.trigger.expect == {"deal.offer.sent"}
        reconcile = deployed["reconcile-enrollments/followups"]
        client.pause_deployment(reconcile.id)  # as in the prefect deploy test

        sequence_id = str(deployed["follow-up-sequence/followups"].id)
        ours = [s for s in _saved_searches(client) if s["name"].startswith("Follow-ups:")]
        assert sorted(s["name"] for s in ours) == SAVED_SEARCHES  # once each, after two deploys
        ours = {s["name"]: s for s in ours}
        for search in ours.values():
            _assert_the_ui_reads(search)
        filters = {name: {f["property"]: f["value"] for f in s["filters"]} for name, s in ours.items()}
        assert filters["Follow-ups: waiting"]["state"] == ["Scheduled"]
        assert filters["Follow-ups: needs attention"]["state"] == ["Failed", "Crashed", "Suspended"]
        assert all(f["deployment"] == [sequence_id] for f in filters.values())

    enrollment_id, deal, runs = _complete_a_sequence(own_prefect, env, THREAD_POOL, sequence_id, empty)
    _assert_completed(fake_providers, enrollment_id, deal, runs, THREAD_POOL)


def test_followups_deploy_follows_the_deployment_name_and_names_a_missing_pool(own_prefect, deployment_name_env):
    from followups.deployments.work_pool import deploy_to_pool

    deployment_name_env("tenant-d")
    with own_prefect.api():
        with pytest.raises(InvalidInputError, match="no work pool 'tenant-d-pool'") as refused:
            deploy_to_pool("tenant-d-pool")
        assert refused.value.field == "--pool"
        deployed = deploy_to_pool("tenant-d-pool", "process")
        with get_client(sync_client=True) as client:
            assert client.read_work_pool("tenant-d-pool").type == "process"
            names = {s["name"]: s for s in _saved_searches(client)}
    assert deployed.pool_created and set(deployed.deployments) == {f"{d.flow_name}/tenant-d" for d in local_deployments()}
    waiting = {f["property"]: f["value"] for f in names["Follow-ups (tenant-d): waiting"]["filters"]}
    assert waiting["deployment"] == [str(deployed.deployments["follow-up-sequence/tenant-d"])]
    assert "Follow-ups (tenant-d): needs attention" in names

    done = subprocess.run([FOLLOWUPS, "deploy", "--pool", "no-such-pool"], env=own_prefect.env(), cwd=REPO,
                          capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
    assert done.returncode == 1 and done.stdout == ""
    assert done.stderr.splitlines() == [
        "error: --pool: no work pool 'no-such-pool' on this Prefect server; add --create-pool (--type followups or process)"
    ]


# -- one deployment name per database --------------------------------------------------------


@pytest.fixture
def deployment_name_env(monkeypatch):
    def use(name: str) -> None:
        monkeypatch.setenv("FOLLOWUPS_DEPLOYMENT_NAME", f"follow-up-sequence/{name}")
        monkeypatch.setenv("FOLLOWUPS_RECONCILE_INTERVAL_SECONDS", "0")
        reset_settings()

    yield use
    reset_settings()


def _deployments_named(client, name: str) -> dict[str, DeploymentResponse]:
    found = {}
    for deployment in client.read_deployments():
        if deployment.name == name:
            found[f"{client.read_flow(deployment.flow_id).name}/{name}"] = deployment
    return found


def test_the_fast_worker_serves_the_configured_name_and_brings_its_triggers_up_to_date(own_prefect, deployment_name_env):
    from followups.deployments.definitions import prefect_controls_trigger, sequence_deployment
    from followups.flows.sync_enrollment_state import sync_enrollment_state
    from followups.worker.served_flows import ensure_deployments

    with own_prefect.api(), get_client(sync_client=True) as client:
        # Left by an older version: a sync deployment whose trigger knew only Suspended.
        stale = sync_enrollment_state.to_deployment(
            name="tenant-a",
            triggers=[DeploymentEventTrigger(name="old", expect={"prefect.flow-run.Suspended"}, parameters={"flow_run_id": "{{ event.resource.id }}"})],
        ).apply()
        # From `prefect deploy`: in a work pool; a fast worker leaves it as it is.
        client.create_work_pool(work_pool=WorkPoolCreate(name="tenant-b-pool", type="process"))
        pooled = sequence_deployment(name="tenant-b", description="deployed with prefect deploy").apply(work_pool_name="tenant-b-pool")

        deployment_name_env("tenant-a")
        served_a = ensure_deployments(client)
        deployment_name_env("tenant-b")
        served_b = ensure_deployments(client)

        a, b = _deployments_named(client, "tenant-a"), _deployments_named(client, "tenant-b")
        flows = {d.flow_name for d in local_deployments()}
        assert {key.split("/")[0] for key in a} == flows == {key.split("/")[0] for key in b}
        assert set(served_a) == {d.id for d in a.values()} and set(served_b) == {d.id for d in b.values()}
        assert not set(served_a) & set(served_b)
        assert a["sync-enrollment-state/tenant-a"].id == stale
        assert b["follow-up-sequence/tenant-b"].id == pooled
        assert b["follow-up-sequence/tenant-b"].work_pool_name == "tenant-b-pool"
        assert b["follow-up-sequence/tenant-b"].description == "deployed with prefect deploy"

        automations = client.read_resource_related_automations(f"prefect.deployment.{stale}")
        expected = prefect_controls_trigger("tenant-a")
        assert [(x.trigger.expect, x.trigger.match_related) for x in automations] == [(expected.expect, expected.match_related)]
        [reconcile] = [d for key, d in a.items() if key.startswith("reconcile-enrollments/")]
        assert [s.active for s in reconcile.schedules] == [False]


def test_followups_serve_serves_the_configured_name(own_prefect, tmp_path):
    env = own_prefect.env(
        FOLLOWUPS_DEPLOYMENT_NAME="follow-up-sequence/tenant-c",
        FOLLOWUPS_RECONCILE_INTERVAL_SECONDS="0",
        PREFECT_RUNNER_POLL_FREQUENCY="1",
        PYTHONSAFEPATH="1",
    )
    log = tmp_path / "serve.log"
    started = time.time()
    with open(log, "wb") as out:
        serve = subprocess.Popen(
            [sys.executable, "-m", "followups.cli", "serve", "--limit", "1"],
            cwd=tmp_path, env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
        )
    try:
        with own_prefect.api(), get_client(sync_client=True) as client:
            expected = {f"{d.flow_name}/tenant-c" for d in local_deployments()}

            def all_polled():
                if serve.poll() is not None:
                    raise AssertionError(f"followups serve exited:\n{log.read_text()[-4000:]}")
                found = _deployments_named(client, "tenant-c")
                polled = {k for k, d in found.items() if d.last_polled and d.last_polled.timestamp() >= started - 1}
                return polled == expected

            wait_for(all_polled, timeout=90, interval=0.5, what="followups serve to serve every */tenant-c deployment")
    finally:
        _stop(serve)
