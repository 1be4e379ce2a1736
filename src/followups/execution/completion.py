"""The end of a sequence: every step done."""

from __future__ import annotations

import uuid

from followups.db.models import EnrollmentStatus
from followups.db.session import session_scope
from followups.lifecycle import store
from followups.lifecycle.plan import load_plan


def complete(enrollment_id: int, flow_run_id: uuid.UUID | None) -> str:
    """COMPLETED, once; returns the status the enrollment ends up with."""
    with session_scope() as session:
        plan = load_plan(session, enrollment_id, lock=True)
        if plan.status == EnrollmentStatus.ACTIVE and plan.finished_steps:
            plan = store.complete(session, plan, flow_run_id=flow_run_id)
        return plan.status
