"""The enrollment lifecycle: loading an enrollment, the transition table, the one writer of its
state (`store`), the one re-enrollment rule (`enroll_rule`), and the one rule for agreeing with
Prefect (`reconcile`)."""

from followups.lifecycle.plan import EnrollmentPlan, load_plan
from followups.lifecycle.transitions import TRANSITIONS, Actor

__all__ = ["TRANSITIONS", "Actor", "EnrollmentPlan", "load_plan"]
