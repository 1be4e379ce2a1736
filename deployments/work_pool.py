"""`followups deploy --pool NAME`: the deployments `prefect deploy --all` registers from
prefect.yaml, registered from the installed package instead, so from any directory (prefect.yaml
is only in the checkout). Entrypoints are module paths and there are no pull steps: a worker
needs the package installed, not a checkout.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any
from uuid import UUID

from followups.alerts import Applied
from followups.errors import InvalidInputError, InvalidStateError

POOL_TYPES = ("followups", "process")
WORK_QUEUE = "default"


@dataclass
class Deployed:
    work_pool: str
    pool_created: bool
    deployments: dict[str, UUID]  # flow/name -> id
    saved_searches: list[Applied]
    moved_runs: int = 0  # waiting runs created outside the pool, moved into it (`rehome`)

    def as_dict(self) -> dict[str, Any]:
        return {
            "work_pool": self.work_pool, "pool_created": self.pool_created,
            "deployments": {name: str(ident) for name, ident in self.deployments.items()},
            "saved_searches": [item.as_dict() for item in self.saved_searches],
            "moved_runs": self.moved_runs,
        }


def _default_job_template(pool_type: str) -> dict[str, Any]:
    if pool_type == "followups":
        from followups.worker.pool_worker import FollowupsWorker as worker
    else:
        from prefect.workers.process import ProcessWorker as worker
    return worker.get_default_base_job_template()


def ensure_work_pool(client: Any, name: str, create_type: str | None) -> bool:
    """True when the pool was created here; a missing pool is an error unless `create_type`."""
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound

    try:
        client.read_work_pool(name)
        return False
    except ObjectNotFound:
        if create_type is None:
            raise InvalidInputError(
                f"no work pool '{name}' on this Prefect server; add --create-pool (--type followups or process)", "--pool"
            ) from None
    if create_type not in POOL_TYPES:
        raise InvalidInputError(f"must be one of {', '.join(POOL_TYPES)}", "--type")
    pool = WorkPoolCreate(name=name, type=create_type, base_job_template=_default_job_template(create_type))
    try:
        client.create_work_pool(work_pool=pool)
    except ObjectAlreadyExists:  # created meanwhile by another deploy
        return False
    return True


def deploy_to_pool(pool: str, create_type: str | None = None) -> Deployed:
    """Register (or update) every deployment of `local_deployments()` into work pool `pool`,
    with its triggers and schedule, then the UI's saved searches, and move the waiting runs
    created outside the pool into it (`rehome`). Idempotent."""
    from prefect.client.orchestration import get_client
    from prefect.deployments.runner import DeploymentApplyError
    from prefect.exceptions import PrefectHTTPStatusError

    from followups.deployments.definitions import deployment_name, local_deployments
    from followups.flows.follow_up_sequence import follow_up_sequence
    from followups.saved_searches import apply_saved_searches
    from followups.settings import get_settings

    # What prefect.yaml's pool gives every run: a process per run must send heartbeats, or the
    # zombie-run automation would take a live run for dead (a followups pool sends its own).
    heartbeat = str(get_settings().run_heartbeat_seconds)
    deployed: dict[str, UUID] = {}
    with get_client(sync_client=True) as client:
        created = ensure_work_pool(client, pool, create_type)
        for deployment in local_deployments():
            key = f"{deployment.flow_name}/{deployment.name}"
            deployment.work_queue_name = WORK_QUEUE
            deployment.job_variables = {"env": {"PREFECT_FLOWS_HEARTBEAT_FREQUENCY": heartbeat}}
            try:
                deployed[key] = deployment.apply(work_pool_name=pool)
            except (DeploymentApplyError, PrefectHTTPStatusError) as exc:
                raise InvalidStateError(f"Prefect refused deployment {key}: {exc}") from exc
        name = deployment_name()
        sequence_id = deployed[f"{follow_up_sequence.name}/{name}"]
        searches = apply_saved_searches(client, sequence_id, name)
        moved = rehome(client, sequence_id)
    return Deployed(pool, created, deployed, searches, moved)


def rehome(client: Any, deployment_id: UUID) -> int:
    """Runs created while the sequence deployment had no work pool (served by `followups serve`,
    say) have no work queue, and a pool's workers never see them. Each of this database's
    that is waiting (Scheduled, or suspended by a pause) is deleted, and its enrollment is
    repaired at once: an ACTIVE one gets a new run, in the pool, due when the old one was; a
    PAUSED one gets it when resumed."""
    from prefect.client.schemas.filters import (
        DeploymentFilter, DeploymentFilterId, FlowRunFilter, FlowRunFilterState, FlowRunFilterStateType,
        FlowRunFilterWorkQueueName,
    )
    from prefect.client.schemas.objects import StateType
    from prefect.exceptions import ObjectNotFound

    from followups.errors import FollowupsError
    from followups.lifecycle.reconcile import reconcile_enrollment
    from followups.identity import database_tag
    from followups.prefect_runs import from_this_database

    db_tag = database_tag()  # once, not once per run
    moved = 0
    while True:
        waiting = client.read_flow_runs(
            deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment_id])),
            flow_run_filter=FlowRunFilter(
                work_queue_name=FlowRunFilterWorkQueueName(is_null_=True),
                state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.SCHEDULED, StateType.PAUSED])),
            ),
            limit=200,
        )
        ours = [run for run in waiting if from_this_database(run, db_tag)]
        if not ours:
            return moved
        for run in ours:
            with contextlib.suppress(ObjectNotFound):  # deleted meanwhile: its enrollment is repaired all the same
                client.delete_flow_run(run.id)
            with contextlib.suppress(FollowupsError):  # gone or busy: the sweep repairs it
                reconcile_enrollment((run.parameters or {}).get("enrollment_id"))
            moved += 1
