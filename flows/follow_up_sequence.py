"""The `follow-up-sequence` flow: runs one enrollment from its current step until it ends or waits.

Each EMAIL / SMS step is a task run; a WAIT schedules the deployment's next flow run for the due
time and ends. Where the sequence is comes from the database, never from Prefect's task
results, so a re-run, a resumed run or a duplicate run continues correctly. The rules live in
`followups.execution` and `followups.lifecycle`; this module only sequences them and logs.
"""

from __future__ import annotations

import time
import uuid

from prefect import flow, get_run_logger
from prefect.exceptions import Pause
from prefect.flow_runs import suspend_flow_run
from prefect.runtime import flow_run as runtime_flow_run

from followups.execution.checkpoint import Next, checkpoint
from followups.execution.completion import complete
from followups.execution.waiting import defer_for_quiet_hours, run_wait
from followups.steps import EmailStep, WaitStep
from followups.tasks.send_step import configured_send_step


def _current_flow_run_id() -> uuid.UUID | None:
    return uuid.UUID(str(runtime_flow_run.id)) if runtime_flow_run.id else None


@flow(name="follow-up-sequence", log_prints=True, persist_result=False)
def follow_up_sequence(enrollment_id: int) -> str:
    """Run enrollment `enrollment_id` from its current step until it ends or waits."""
    logger = get_run_logger()
    flow_run_id = _current_flow_run_id()
    starting = True
    while True:
        check = checkpoint(enrollment_id, flow_run_id, starting=starting)
        starting = False
        plan = check.plan
        if check.next is Next.STAY_SUSPENDED:
            raise Pause(state=check.run_state)
        if check.next is Next.SUSPEND:
            logger.info("Enrollment %s was paused at step %s; suspending until resumed", enrollment_id, plan.current_step)
            suspend_flow_run(key=f"pause-{plan.current_step}-{time.time_ns()}")
            continue
        if check.next is Next.STOP:
            # Paused (and this is not its pending run), or finished: another run owns it, or nobody.
            logger.info("Enrollment %s is %s: nothing to do", enrollment_id, plan.status)
            return plan.status
        if plan.finished_steps:
            status = complete(enrollment_id, flow_run_id)
            logger.info("Enrollment %s %s", enrollment_id, status.lower())
            return status
        index = plan.current_step
        step = plan.steps[index]
        if isinstance(step, WaitStep):
            waited = run_wait(enrollment_id, index, step, flow_run_id)
            if waited.outcome == "deferred":
                logger.info("Enrollment %s waits (step %s) until %s; next run %s", enrollment_id, index, waited.due, waited.next_run_id)
                return "WAITING"
            continue
        channel = "email" if isinstance(step, EmailStep) else "sms"
        if channel == "sms":
            until = defer_for_quiet_hours(plan, index, flow_run_id)
            if until is not None:
                logger.info("Enrollment %s: SMS step %s waits for quiet hours to end (%s)", enrollment_id, index, until)
                return "WAITING"
        configured_send_step(enrollment_id, index, channel, plan.deal_ref)(enrollment_id, index, channel, plan.deal_ref)
