"""Pausing, resuming or cancelling many enrollments at once: every open enrollment of a sequence,
of an owner, or of a list of deals (`control.control_many`, `followups bulk`, `POST
/api/enrollments/bulk/{action}`).

Each enrollment gets the same treatment as a single control (`control._control`): the owner is
checked first, the runs are read before any row lock, each change is checked under its lock
against that read, and what it means for the run is an effect carried out after the commit. What
makes it fast is doing that 50 at a time: one read of 50 runs, one transaction for 50 changes
(each in a savepoint, so one refusal spoils nothing else), then one request per 50 runs for the
suspends and cancels (`effects.deliver_many`). An enrollment that changed between the read and
its lock is handled on its own afterwards.

Idempotent: an enrollment already where the action would put it answers `unchanged`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from sqlalchemy import select

from followups import prefect_runs
from followups.db.models import Deal, Enrollment, EnrollmentStatus, Sequence
from followups.db.session import session_scope
from followups.errors import FollowupsError, InvalidInputError, NotFoundError
from followups.inputs import check_external_id, check_id, require_owner
from followups.lifecycle import effects, store
from followups.lifecycle.plan import load_plan
from followups.lifecycle.reconcile import look, reconcile
from followups.lifecycle.transitions import Actor

BATCH = 50  # Prefect's bulk state change takes 50 runs
MAX_DEALS = 10_000

ACTIONS = {"pause": EnrollmentStatus.PAUSED, "resume": EnrollmentStatus.ACTIVE, "cancel": EnrollmentStatus.CANCELLED}
# Which open enrollments an action concerns; the others are already where it would put them.
FROM = {
    EnrollmentStatus.PAUSED: (EnrollmentStatus.ACTIVE,),
    EnrollmentStatus.ACTIVE: (EnrollmentStatus.PAUSED,),
    EnrollmentStatus.CANCELLED: (EnrollmentStatus.ACTIVE, EnrollmentStatus.PAUSED),
}
OPEN = (EnrollmentStatus.ACTIVE.value, EnrollmentStatus.PAUSED.value)


@dataclass(frozen=True)
class ControlAnswer:
    deal: str
    enrollment_id: int | None
    outcome: str  # done | unchanged | error
    status: str | None  # the enrollment's status afterwards
    message: str | None = None


@dataclass
class BulkControlResult:
    action: str
    answers: list[ControlAnswer] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        counts = {"done": 0, "unchanged": 0, "error": 0}
        for answer in self.answers:
            counts[answer.outcome] += 1
        return counts

    def as_dict(self) -> dict[str, Any]:
        return {"action": self.action, "counts": self.counts(), "answers": [asdict(a) for a in self.answers]}


def control_many(
    action: str,
    owner_id: int,
    *,
    sequence_id: int | None = None,
    deals: list[str] | None = None,
    every: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> BulkControlResult:
    """Pause, resume or cancel every open enrollment of one sequence (`sequence_id`), of a list
    of deals (`deals`, external ids) or of the owner (`every=True`): exactly one of them. One
    answer per enrollment (and per deal that has none open); `progress(done, total)` after each
    batch."""
    if action not in ACTIONS:
        raise InvalidInputError(f"must be one of {', '.join(ACTIONS)}", field="action")
    if sum([sequence_id is not None, deals is not None, bool(every)]) != 1:
        raise InvalidInputError("give exactly one of sequence_id, deals or every", field="sequence_id")
    to = ACTIONS[action]
    result = BulkControlResult(action)
    with session_scope(read_only=True) as session:
        owner_id = require_owner(session, owner_id)
        targets = _targets(session, owner_id, sequence_id, deals, result)
    for start in range(0, len(targets), BATCH):
        result.answers += _batch(targets[start : start + BATCH], to)
        if progress is not None:
            progress(min(start + BATCH, len(targets)), len(targets))
    return result


def _targets(session, owner_id: int, sequence_id: int | None, deals: list[str] | None, result: BulkControlResult) -> list[tuple[int, str]]:
    """(enrollment id, deal ref) of the open enrollments selected, owner checked first; deals
    that have none open are answered here."""
    query = (
        select(Enrollment.id, Deal.external_id)
        .join(Deal, Deal.id == Enrollment.deal_id)
        .where(Deal.owner_id == owner_id, Enrollment.status.in_(OPEN))
        .order_by(Enrollment.id)
    )
    if sequence_id is not None:
        check_id(sequence_id, "sequence_id")
        if session.scalar(select(Sequence.id).where(Sequence.id == sequence_id, Sequence.owner_id == owner_id)) is None:
            raise NotFoundError("sequence", sequence_id)
        return [tuple(row) for row in session.execute(query.where(Enrollment.sequence_id == sequence_id))]
    if deals is not None:
        if not isinstance(deals, list) or not deals or len(deals) > MAX_DEALS:
            raise InvalidInputError(f"must be a list of 1 to {MAX_DEALS} deal ids", field="deals")
        refs = list(dict.fromkeys(check_external_id(ref, f"deals.{i}") for i, ref in enumerate(deals)))
        rows = [tuple(row) for row in session.execute(query.where(Deal.external_id.in_(refs)))]
        found = {ref for _, ref in rows}
        known = set(session.scalars(select(Deal.external_id).where(Deal.owner_id == owner_id, Deal.external_id.in_(refs))))
        for ref in refs:
            if ref not in found:
                why = "no open enrollment" if ref in known else "no such deal"
                result.answers.append(ControlAnswer(ref, None, "unchanged" if ref in known else "error", None, why))
        return rows
    return [tuple(row) for row in session.execute(query)]


def _batch(targets: list[tuple[int, str]], to: EnrollmentStatus) -> list[ControlAnswer]:
    ids = [enrollment_id for enrollment_id, _ in targets]
    refs = dict(targets)
    with session_scope(read_only=True) as session:
        seen = {
            row.id: (row.status, row.prefect_flow_run_id, row.epoch)
            for row in session.execute(
                select(Enrollment.id, Enrollment.status, Enrollment.prefect_flow_run_id, Enrollment.epoch).where(Enrollment.id.in_(ids))
            )
        }
        markers = {enrollment_id: effects.marker(session, enrollment_id) for enrollment_id in ids}
    runs = prefect_runs.read_runs([run_id for _, run_id, _ in seen.values() if run_id is not None])
    # What the rule needs of each run, read before any row lock is taken.
    sights = {
        enrollment_id: look(status, run_id, epoch=epoch, effects_marker=markers[enrollment_id], run=runs.get(run_id) if run_id else None)
        for enrollment_id, (status, run_id, epoch) in seen.items()
    }
    answers: list[ControlAnswer] = []
    changed: list[int] = []
    with session_scope() as session:
        to_deliver: set[int] = set()
        session.info[effects.BATCH] = to_deliver
        for enrollment_id in ids:  # in id order: two batches lock rows in the same order
            try:
                with session.begin_nested():
                    plan = load_plan(session, enrollment_id, lock=True)
                    sight = sights.get(enrollment_id)
                    if sight is None or not sight.holds(session, plan):
                        changed.append(enrollment_id)
                        continue
                    # What an operator did in Prefect first, as a single control does.
                    plan = reconcile(session, plan, sight)
                    if EnrollmentStatus(plan.status) not in FROM[to]:
                        answers.append(ControlAnswer(refs[enrollment_id], enrollment_id, "unchanged", plan.status))
                        continue
                    plan = store.move(session, plan, to, actor=Actor.API, run=sight.run)
                    answers.append(ControlAnswer(refs[enrollment_id], enrollment_id, "done", plan.status))
            except FollowupsError as exc:
                answers.append(ControlAnswer(refs[enrollment_id], enrollment_id, "error", None, str(exc)))
    effects.deliver_many(sorted(to_deliver))
    for enrollment_id in changed:
        answers.append(_one(enrollment_id, refs[enrollment_id], to))
    return answers


def _one(enrollment_id: int, ref: str, to: EnrollmentStatus) -> ControlAnswer:
    """An enrollment that changed while its batch was read: the single control, which reads again."""
    from followups.control import _control

    with session_scope(read_only=True) as session:
        before = load_plan(session, enrollment_id).status
    if EnrollmentStatus(before) not in FROM[to]:
        return ControlAnswer(ref, enrollment_id, "unchanged", before)
    try:
        return ControlAnswer(ref, enrollment_id, "done", _control(enrollment_id, None, to).status)
    except FollowupsError as exc:
        return ControlAnswer(ref, enrollment_id, "error", None, str(exc))
