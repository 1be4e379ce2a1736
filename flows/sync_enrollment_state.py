"""`sync-enrollment-state`: run when a follow-up flow run is suspended or resumed in Prefect.

Pausing or resuming a run from the Prefect UI or CLI changes only Prefect's state; this flow,
triggered by those state-change events, applies the one reconciliation rule to the enrollment
whose pending run it is.
"""

from __future__ import annotations

import uuid

from prefect import flow
from sqlalchemy import select

from followups.db.models import Enrollment
from followups.db.session import session_scope
from followups.lifecycle.reconcile import reconcile_enrollment


@flow(name="sync-enrollment-state", persist_result=False)
def sync_enrollment_state(flow_run_id: str) -> str | None:
    try:
        run_id = uuid.UUID(str(flow_run_id).removeprefix("prefect.flow-run."))
    except ValueError:
        return None
    with session_scope() as session:
        enrollment_id = session.scalar(select(Enrollment.id).where(Enrollment.prefect_flow_run_id == run_id))
        if enrollment_id is None:
            return None
        return reconcile_enrollment(session, enrollment_id).status
