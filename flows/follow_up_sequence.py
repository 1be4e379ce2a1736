"""The `follow-up-sequence` flow: runs one enrollment from its current step until it ends or waits.

Each EMAIL / SMS step is a task run; a WAIT schedules the deployment's next flow run for the due
time and ends, in a Completed state named "Waiting". Where the sequence is comes from the
database, never from Prefect's task results, so a re-run, a resumed run or a duplicate run
continues correctly. The rules live in `followups.execution` and `followups.lifecycle`; this
module only sequences them and tells the operator what happened (`flows.story`).
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

from prefect import flow, get_run_logger
from prefect.context import FlowRunContext
from prefect.exceptions import Pause
from prefect.flow_runs import suspend_flow_run
from prefect.runtime import flow_run as runtime_flow_run
from prefect.states import State

from followups.execution.checkpoint import Next, checkpoint
from followups.execution.completion import complete
from followups.execution.deferral import hold_if_needed
from followups.execution.waiting import run_wait
from followups.flows import story
from followups import prefect_runs
from followups.prefect_runs import run_name
from followups.steps import WaitStep, channel_of
from followups.tasks.send_step import configured_send_step


def _current_flow_run_id() -> uuid.UUID | None:
    return uuid.UUID(str(runtime_flow_run.id)) if runtime_flow_run.id else None


def _left(due: datetime | None) -> str:
    if due is None:
        return "no wait left"
    seconds = max(0, int((due - datetime.now(UTC)).total_seconds()))
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, seconds = divmod(rest, 60)
    parts = [f"{days} days" if days else "", f"{hours} h" if hours else "", f"{minutes} min" if minutes else ""]
    return " ".join(p for p in parts if p) or f"{seconds} s"


@flow(name="follow-up-sequence", log_prints=True, persist_result=False)
def follow_up_sequence(enrollment_id: int, epoch: int | None = None) -> State:
    """Run one enrolled follow-up sequence from its current step until it ends or waits.

    Args:
        enrollment_id: The enrollment to run: the id `followups enroll` / `followups status`
            print, and the `enrollment:<id>` tag on its runs.
        epoch: Set by the product on the runs it creates: which of the enrollment's pending
            runs this is. A run of an older epoch does nothing. Leave it out when starting a
            run by hand.
    """
    flow_run_id = _current_flow_run_id()
    try:
        return _run(enrollment_id, flow_run_id)
    finally:
        try:
            story.publish_timeline(enrollment_id)
        except Exception as exc:  # the story must never change what the run did
            get_run_logger().warning("could not publish the timeline artifact: %s", exc)


def _record_suspend(enrollment_id: int, flow_run_id: uuid.UUID | None) -> None:
    """Prefect's engine saw this run suspended (the UI's Pause during a step) and stops the flow
    at the step task's edge, before our next check. The check is made here instead, so the
    enrollment is PAUSED now rather than when a sync run or the sweep comes by."""
    logger = get_run_logger()
    try:
        check = checkpoint(enrollment_id, flow_run_id, starting=False)
    except Exception as exc:  # the Pause must still end the run; the sync trigger and the sweep repair it
        logger.warning("Suspended in Prefect; could not record it yet: %s", exc)
        return
    logger.info("Suspended in Prefect during step %s: enrollment %s is %s", check.plan.current_step, enrollment_id, check.plan.status)


def _run(enrollment_id: int, flow_run_id: uuid.UUID | None) -> State:
    logger = get_run_logger()
    starting = True
    while True:
        # At the start the engine's own copy of this run (just accepted as Running) is what the
        # check would read; between steps the run is read again, as an operator may have acted.
        engine = FlowRunContext.get() if starting else None
        check = checkpoint(enrollment_id, flow_run_id, starting=starting, run=engine.flow_run if engine else None)
        starting = False
        plan = check.plan
        if check.next is Next.STAY_SUSPENDED:
            logger.info("Paused in Prefect at step %s; Resume continues with %s of the wait", plan.current_step, _left(plan.next_due_at))
            raise Pause(state=check.run_state)
        if check.next is Next.SUSPEND:
            logger.info("Paused through the API at step %s; Resume continues with %s of the wait", plan.current_step, _left(plan.next_due_at))
            suspend_flow_run(key=prefect_runs.self_pause_key(plan.current_step))
            continue
        if check.next is Next.SUPERSEDED:
            where = f"run {plan.prefect_flow_run_id}" if plan.prefect_flow_run_id else f"its next run (epoch {plan.epoch}, being created)"
            why = f"enrollment {enrollment_id} goes on in {where}; this run does nothing"
            logger.info("Superseded: %s", why)
            return story.superseded(why)
        if check.next is Next.STOP:
            # Paused (and this is not its pending run), or finished: another run owns it, or nobody.
            logger.info("Enrollment %s is %s: nothing to do", enrollment_id, plan.status)
            return story.ended(plan.status, f"enrollment {enrollment_id} is {plan.status}; nothing to do")
        if plan.finished_steps:
            status = complete(enrollment_id, flow_run_id)
            logger.info("Enrollment %s %s: every step done", enrollment_id, status.lower())
            return story.ended(status, f"all {len(plan.steps)} steps done")
        index = plan.current_step
        step = plan.steps[index]
        if isinstance(step, WaitStep):
            waited = run_wait(enrollment_id, index, step, flow_run_id)
            if waited.outcome == "deferred":
                next_name = run_name(enrollment_id, plan.deal_ref, index)
                logger.info("WAIT step %s (%s): next run '%s' (%s) due %s", index, step.written, next_name, waited.next_run_id, waited.due)
                return story.waiting(waited.due, f"WAIT step {index}; next run '{next_name}'")
            if waited.outcome == "continue":
                logger.info("WAIT step %s done", index)
            continue
        channel = channel_of(step)
        held = hold_if_needed(plan, index, channel, flow_run_id)
        if held is not None and held.skipped:
            logger.warning("%s step %s skipped: %s", channel.upper(), index, held.detail)
            continue
        if held is not None:
            logger.info("%s step %s deferred to %s: %s", channel.upper(), index, held.until, held.reason)
            return story.waiting(held.until, f"{channel.upper()} step {index} deferred ({held.reason})")
        try:
            result = configured_send_step(enrollment_id, index, channel, plan.deal_ref)(enrollment_id, index, channel, plan.deal_ref)
        except Pause:
            _record_suspend(enrollment_id, flow_run_id)
            raise
        except Exception:
            story.announce_failure(enrollment_id, index)
            raise
        what = "subject" if channel == "email" else "first words"
        logger.info(
            "%s step %s %s, %s '%s', provider id %s", channel.upper(), index, result.outcome, what,
            story.shown(channel, result.detail), result.provider_message_id or "—",
        )
