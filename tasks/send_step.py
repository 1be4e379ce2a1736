"""The EMAIL / SMS step task: one task run per step, retried with exponential backoff.

The at-most-once send itself is `followups.execution.sending.execute_send_step`; this task
gives it Prefect's retries, names and tags, and only transient provider errors are retried.
"""

from __future__ import annotations

import random
import uuid
from typing import Any

from prefect import task
from prefect.runtime import flow_run as runtime_flow_run
from prefect.runtime import task_run as runtime_task_run

from followups.errors import TransientProviderError
from followups.execution.sending import StepResult, execute_send_step, wait_for_provider_reset
from followups.settings import get_settings
from followups.tasks.stop_guard import stops_held


def backoff_delays(retries: int, base: float, jitter: float) -> list[float]:
    """Exponential backoff (base, 2·base, 4·base, ...) with additive jitter of up to `jitter`×.

    Jitter only lengthens a delay (< 2×), so each wait is still longer than the one before.
    """
    return [base * 2**n * (1 + random.uniform(0, min(jitter, 0.99))) for n in range(retries)]


def _retry_only_transient(task: Any, task_run: Any, state: Any) -> bool:
    try:
        state.result(raise_on_failure=True)
    except TransientProviderError:
        return True
    except BaseException:
        return False
    return False


def _as_uuid(value: Any) -> uuid.UUID | None:
    return uuid.UUID(str(value)) if value else None


@task(name="send-step", retry_condition_fn=_retry_only_transient, persist_result=False)
def send_step(enrollment_id: int, step_index: int, channel: str, deal_ref: str) -> StepResult:
    """One EMAIL or SMS step. Retries (with backoff) are configured per call by the flow."""
    settings = get_settings()
    attempt = runtime_task_run.run_count or 1
    if attempt > 1:
        wait_for_provider_reset(enrollment_id, step_index)
    # A stop (SIGTERM, or the fast worker stopping a cancelled run's thread) that lands between
    # the attempt's commit and the outcome's would leave the step outcome-unknown: it is held
    # until the send's outcome is committed. The step's code never knows how runs are stopped.
    with stops_held():
        return execute_send_step(
            enrollment_id,
            step_index,
            attempt=attempt,
            max_attempts=settings.step_retries + 1,
            flow_run_id=_as_uuid(runtime_flow_run.id),
            task_run_id=_as_uuid(runtime_task_run.id),
        )


def configured_send_step(enrollment_id: int, step_index: int, channel: str, deal_ref: str):
    """send_step with this step's run name, tags and retry schedule."""
    settings = get_settings()
    return send_step.with_options(
        task_run_name=f"{channel} step {step_index} · deal {deal_ref}",
        tags=["followups", f"deal:{deal_ref}", f"enrollment:{enrollment_id}", f"step:{step_index}"],
        retries=settings.step_retries,
        retry_delay_seconds=backoff_delays(
            settings.step_retries, settings.step_retry_base_seconds, settings.step_retry_jitter_factor
        ),
    )
