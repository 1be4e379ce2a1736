"""The reconciler's sweep: every open enrollment checked against its pending run, in batches.

It first delivers what a crash or an unreachable Prefect left undelivered after a commit: the
effects on runs (suspend, resume, cancel) and the pending runs to create. Then it finds ACTIVE enrollments whose pending run is final, missing or another's, and enrollments
whose run an operator suspended, resumed or cancelled while nothing was listening, and repairs
each through the one rule (`reconcile`), under the row lock, after reading the run again.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from followups import prefect_runs, run_history
from followups.db.models import OPEN_STATUSES, Enrollment, RunEffect
from followups.db.session import session_scope
from followups.errors import BusyError
from followups.identity import database_tag
from followups.lifecycle import effects, machine, store
from followups.lifecycle.plan import EnrollmentPlan, load_plan
from followups.lifecycle.reconcile import Sight, reconcile, under_lock


@dataclass
class SweepReport:
    checked: int = 0
    found: list[tuple[int, str, str]] = field(default_factory=list)  # (enrollment, action, why)
    repaired: Counter = field(default_factory=Counter)
    # Effects on runs left undelivered past the bound: (enrollment, recorded at, last error).
    undelivered: list[tuple[int, datetime, str | None]] = field(default_factory=list)
    redelivered: int = 0
    # ACTIVE enrollments whose next run was committed but not created past the bound.
    undelivered_runs: list[int] = field(default_factory=list)
    created_runs: int = 0

    def as_dict(self) -> dict:
        return {
            "checked": self.checked,
            "found": [{"enrollment_id": e, "action": a, "why": w} for e, a, w in self.found],
            "repaired": dict(self.repaired),
            "undelivered_effects": [
                {"enrollment_id": e, "recorded_at": at.isoformat(), "last_error": error} for e, at, error in self.undelivered
            ],
            "undelivered_runs": self.undelivered_runs,
            "created_runs": self.created_runs,
            "redelivered_effects": self.redelivered,
        }


def sweep(*, repair: bool = True, batch: int = 200) -> SweepReport:
    from followups.settings import get_settings

    report = SweepReport()
    bound = get_settings().effect_overdue_seconds
    with session_scope(read_only=True) as session:
        report.undelivered = effects.overdue(session, bound)
    if repair and report.undelivered:
        report.redelivered, _ = effects.deliver_overdue(bound)
    with session_scope(read_only=True) as session:
        orders = effects.undelivered_runs(session, bound)
    report.undelivered_runs = [order.enrollment_id for order in orders]
    if repair:
        report.created_runs = sum(effects.deliver_run(order) is not None for order in orders)
    _schedule_the_unscheduled(report, repair)
    db_tag = database_tag()  # once per sweep, not once per enrollment
    after = 0
    while True:
        with session_scope(read_only=True) as session:
            rows = session.execute(
                select(Enrollment.id, Enrollment.status, Enrollment.prefect_flow_run_id)
                .outerjoin(RunEffect, RunEffect.enrollment_id == Enrollment.id)
                .where(
                    Enrollment.id > after,
                    Enrollment.status.in_(sorted(OPEN_STATUSES)),
                    Enrollment.prefect_flow_run_id.is_not(None),
                    # A run with an effect still on its way is expected to disagree for now.
                    or_(RunEffect.enrollment_id.is_(None), RunEffect.delivered_seq >= RunEffect.seq),
                )
                .order_by(Enrollment.id)
                .limit(batch)
            ).all()
        if not rows:
            return report
        after = rows[-1].id
        runs = prefect_runs.read_runs([row.prefect_flow_run_id for row in rows])
        for row in rows:
            report.checked += 1
            run = runs.get(row.prefect_flow_run_id)
            action, why = machine.judge(row.status, row.prefect_flow_run_id, run_history.view(run, row.id, db_tag))
            if action == "none":
                continue
            report.found.append((row.id, action, why))
            if repair:
                try:
                    if under_lock(row.id, _repair):
                        report.repaired[action] += 1
                except BusyError:
                    continue  # changing right now: whoever changes it applies the rule; the next sweep looks again


def _repair(session: Session, before: EnrollmentPlan, sight: Sight) -> bool:
    after = reconcile(session, before, sight)
    return (after.status, after.prefect_flow_run_id) != (before.status, before.prefect_flow_run_id)


def _schedule_the_unscheduled(report: SweepReport, repair: bool) -> None:
    """ACTIVE enrollments that never got a first run: whoever enrolled them died between the
    commit and creating the run (a bulk import, an API process)."""
    from followups.settings import get_settings

    grace = get_settings().unscheduled_grace_seconds
    cutoff = datetime.now(UTC) - timedelta(seconds=grace)
    with session_scope(read_only=True) as session:
        ids = session.scalars(
            select(Enrollment.id).where(
                # Epoch 0: never given a run (a later one being created is `undelivered_runs`).
                Enrollment.status == "ACTIVE", Enrollment.prefect_flow_run_id.is_(None), Enrollment.epoch == 0,
                Enrollment.updated_at < cutoff,
            ).order_by(Enrollment.id)
        ).all()
    for enrollment_id in ids:
        report.checked += 1
        with session_scope() as session:
            plan = load_plan(session, enrollment_id, lock=True)
            touched = session.scalar(select(Enrollment.updated_at).where(Enrollment.id == enrollment_id))
            idle = (datetime.now(UTC) - touched).total_seconds() if touched else None
            outcome = machine.apply(store.state_of(session, plan)[0], machine.Unscheduled(idle or 0.0, grace))
            if outcome.action != "schedule":
                continue  # it got its run meanwhile
            report.found.append((enrollment_id, outcome.action, outcome.why))
            if repair:
                store.commit(session, plan, outcome)
                report.repaired[outcome.action] += 1
