"""`sync-enrollment-state`: run when a follow-up flow run is suspended, cancelled, fails
or crashes in Prefect.

Those changes touch only Prefect's state; this flow, triggered by their events, applies the one
reconciliation rule to the enrollment whose pending run it is, and names its own run after that
enrollment so the Prefect UI shows which one it brought along.
"""

from __future__ import annotations

import uuid

from prefect import flow, get_run_logger
from prefect.runtime import flow_run as runtime_flow_run
from sqlalchemy import select

from followups.db.models import Enrollment
from followups.db.session import session_scope
from followups.lifecycle.reconcile import reconcile_enrollment, reconcile_handover
from followups.prefect_runs import label_own_run, read_run, run_tags


@flow(name="sync-enrollment-state", flow_run_name="sync run {flow_run_id}", persist_result=False)
def sync_enrollment_state(flow_run_id: str) -> str | None:
    """Bring an enrollment along after its run's state changed in Prefect.

    Args:
        flow_run_id: The follow-up-sequence run whose state changed (`prefect.flow-run.<id>`
            from the triggering event, or the bare id).
    """
    try:
        run_id = uuid.UUID(str(flow_run_id).removeprefix("prefect.flow-run."))
    except ValueError:
        return None
    with session_scope(read_only=True) as session:
        enrollment_id = session.scalar(select(Enrollment.id).where(Enrollment.prefect_flow_run_id == run_id))
    if enrollment_id is None:
        # No longer pending: it may have been suspended just as it handed over to its next run.
        run = read_run(run_id)
        plan = reconcile_handover(run) if run is not None else None
        if plan is None:
            get_run_logger().info("run %s is no enrollment's pending run: nothing to do", run_id)
            return None
        enrollment_id = plan.enrollment_id
    else:
        plan = reconcile_enrollment(enrollment_id)
    label_own_run(runtime_flow_run.id, f"sync · deal {plan.deal_ref} · enrollment {enrollment_id}", run_tags(enrollment_id, plan.deal_ref))
    get_run_logger().info("enrollment %s is %s after run %s changed in Prefect", enrollment_id, plan.status, run_id)
    return plan.status
