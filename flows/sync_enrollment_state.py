"""`sync-enrollment-state`: run when a follow-up flow run is suspended or resumed in Prefect.

Pausing or resuming a run from the Prefect UI or CLI changes only Prefect's state; this flow,
triggered by those state-change events, brings the enrollment's status and event log along.
"""

from __future__ import annotations

import uuid

from prefect import flow
from sqlalchemy import select

from followups.control import get_enrollment
from followups.db.models import Enrollment
from followups.db.session import session_scope


@flow(name="sync-enrollment-state", persist_result=False)
def sync_enrollment_state(flow_run_id: str) -> str | None:
    run_id = uuid.UUID(flow_run_id.removeprefix("prefect.flow-run."))
    with session_scope() as session:
        enrollment_id = session.scalar(select(Enrollment.id).where(Enrollment.prefect_flow_run_id == run_id))
    if enrollment_id is None:
        return None
    return get_enrollment(enrollment_id).status  # reading reconciles with the run's Prefect state
