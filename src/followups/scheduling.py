"""Creating the deployment's flow runs for an enrollment: names, tags, idempotency keys.

A WAIT never holds a process: the next part of a sequence is a flow run of the deployment
scheduled for the due time. The idempotency key makes "schedule step N of enrollment E" a
single run no matter how many times it is asked for.
"""

from __future__ import annotations

import threading
import uuid
from datetime import datetime

from prefect.client.orchestration import SyncPrefectClient, get_client
from prefect.exceptions import ObjectNotFound
from prefect.settings import PREFECT_API_URL
from prefect.states import Scheduled

from followups.settings import get_settings

_local = threading.local()
_deployment_ids: dict[tuple[str, str], uuid.UUID] = {}


def _client() -> SyncPrefectClient:
    """One Prefect client per thread and API: building one (its SSL context) costs more than
    the call itself, and enrolling or scheduling is on the hot path."""
    api_url = str(PREFECT_API_URL.value())
    cached = getattr(_local, "client", None)
    if cached is None or cached[0] != api_url:
        client = get_client(sync_client=True)
        client.__enter__()  # lives as long as the thread
        _local.client = cached = (api_url, client)
    return cached[1]


def _deployment_id(client: SyncPrefectClient, name: str, *, refresh: bool = False) -> uuid.UUID:
    key = (str(client.api_url), name)
    if refresh or key not in _deployment_ids:
        _deployment_ids[key] = client.read_deployment_by_name(name).id
    return _deployment_ids[key]

FLOW_NAME = "follow-up-sequence"


def run_tags(enrollment_id: int, deal_ref: str) -> list[str]:
    return ["followups", f"deal:{deal_ref}", f"enrollment:{enrollment_id}"]


def run_name(enrollment_id: int, deal_ref: str, step_index: int) -> str:
    where = "start" if step_index == 0 else f"from step {step_index}"
    return f"deal {deal_ref} · enrollment {enrollment_id} · {where}"


def schedule_sequence_run(
    enrollment_id: int,
    deal_ref: str,
    step_index: int,
    *,
    scheduled_time: datetime | None,
    key_suffix: str = "",
) -> uuid.UUID:
    """Create (or find, by idempotency key) the flow run that continues at `step_index`.

    The client equivalent of `run_deployment(..., timeout=0, as_subflow=False)`: a top-level
    run (a child run could never be suspended on its own) that returns at once.
    """
    client = _client()
    name = get_settings().deployment_name
    options = dict(
        parameters={"enrollment_id": enrollment_id},
        state=Scheduled(scheduled_time=scheduled_time) if scheduled_time else Scheduled(),
        name=run_name(enrollment_id, deal_ref, step_index),
        tags=run_tags(enrollment_id, deal_ref),
        idempotency_key=f"followups:enrollment:{enrollment_id}:step:{step_index}{key_suffix}",
    )
    try:
        return client.create_flow_run_from_deployment(_deployment_id(client, name), **options).id
    except ObjectNotFound:  # the deployment was deleted and registered again: new id
        return client.create_flow_run_from_deployment(_deployment_id(client, name, refresh=True), **options).id
