"""Which deployments the fast worker serves, and their flows as it runs them."""

from __future__ import annotations

import importlib
import logging
import uuid
from pathlib import Path
from typing import Any

from prefect.client.orchestration import SyncPrefectClient
from prefect.exceptions import ObjectNotFound
from prefect.flows import Flow
from prefect.settings import get_current_settings

logger = logging.getLogger("followups.fast_worker")


def load_entrypoint(entrypoint: str) -> Flow[..., Any]:
    module_name, _, attribute = entrypoint.replace(":", ".").rpartition(".")
    return getattr(importlib.import_module(module_name), attribute)


def ensure_deployments(client: SyncPrefectClient) -> dict[uuid.UUID, Flow[..., Any]]:
    """The product's deployments (the ones `followups serve` serves, named after
    FOLLOWUPS_DEPLOYMENT_NAME), by id, with their flows.

    A missing one is registered; one without a work pool (registered by `followups serve` or an
    earlier fast worker) is registered again, as `serve` does on every start, so its triggers
    and schedule follow the code and the settings; one in a work pool (from `prefect deploy`)
    is left as it is."""
    from followups.deployments.definitions import local_deployments

    found: dict[uuid.UUID, Flow[..., Any]] = {}
    for deployment in local_deployments():
        name = f"{deployment.flow_name}/{deployment.name}"
        try:
            existing = client.read_deployment_by_name(name)
        except ObjectNotFound:
            logger.info("Deployment %s does not exist: registering it", name)
            existing = None
        if existing is None or existing.work_pool_name is None:
            deployment_id = deployment.apply()
        else:
            deployment_id = existing.id
        found[deployment_id] = load_entrypoint(deployment.entrypoint)
    return found


def fast_flow(flow: Flow[..., Any], result_dir: Path) -> Flow[..., Any]:
    """The flow with an explicit result storage, so the engine does not ask the server for its
    default storage block on every run. Whether results are persisted stays as it was (the
    flow's own setting, else PREFECT_RESULTS_PERSIST_BY_DEFAULT)."""
    if flow.result_storage is not None:
        return flow
    persist = flow.persist_result
    if persist is None:
        persist = get_current_settings().results.persist_by_default
    return flow.with_options(result_storage=result_dir, persist_result=persist)
