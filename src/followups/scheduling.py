"""Creating the deployment's flow runs for an enrollment: names, tags, idempotency keys.

A WAIT never holds a process: the next part of a sequence is a flow run of the deployment
scheduled for the due time. The idempotency key makes "schedule step N of enrollment E" a
single run no matter how many times it is asked for.
"""

from __future__ import annotations

import uuid
from datetime import datetime

from prefect.client.schemas.objects import FlowRun
from prefect.deployments import run_deployment

from followups.settings import get_settings

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
    """Create (or find, by idempotency key) the flow run that continues at `step_index`."""
    flow_run: FlowRun = run_deployment(
        get_settings().deployment_name,
        parameters={"enrollment_id": enrollment_id},
        scheduled_time=scheduled_time,
        flow_run_name=run_name(enrollment_id, deal_ref, step_index),
        timeout=0,
        as_subflow=False,  # a child run could never be suspended on its own
        tags=run_tags(enrollment_id, deal_ref),
        idempotency_key=f"followups:enrollment:{enrollment_id}:step:{step_index}{key_suffix}",
    )
    return flow_run.id
