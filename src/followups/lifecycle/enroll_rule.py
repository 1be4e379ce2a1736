"""The one re-enrollment rule, the same for every way of enrolling (Python, CLI, HTTP, the bulk
import, the `deal.offer.sent` event): a deal that was ever enrolled in a sequence is not enrolled
in it again, unless `again` asks for it; with `again` it is enrolled anew once every earlier
enrollment has finished (COMPLETED, CANCELLED, STOPPED or FAILED). An open (ACTIVE or PAUSED)
enrollment is never duplicated, `again` or not: the partial unique index on open enrollments
guarantees it even against a race.

Every way of enrolling first takes the transaction's advisory lock on (owner, sequence, deal),
then checks and inserts in that transaction, so two enrollments of one deal never interleave.
"""

from __future__ import annotations

from sqlalchemy import select, text
from sqlalchemy.orm import Session

from followups.db.models import OPEN_STATUSES, Enrollment, EnrollmentStatus
from followups.errors import AlreadyEnrolledError, InvalidStateError


def latest_enrollment(session: Session, deal_id: int, sequence_id: int) -> tuple[int, str] | None:
    """(id, status) of the deal's enrollment in the sequence that decides whether it may be
    enrolled again: its open one if it has one, else its newest; None if it never had one."""
    row = session.execute(
        select(Enrollment.id, Enrollment.status)
        .where(Enrollment.deal_id == deal_id, Enrollment.sequence_id == sequence_id)
        .order_by(Enrollment.status.in_(sorted(s.value for s in OPEN_STATUSES)).desc(), Enrollment.id.desc())
        .limit(1)
    ).first()
    return (row[0], row[1]) if row is not None else None


def check_enrollable(session: Session, deal_id: int, sequence_id: int, *, again: bool = False, deal_ref: object = None) -> int | None:
    """The one re-enrollment rule. A deal that was ever enrolled in the sequence is not enrolled
    in it again (AlreadyEnrolledError naming that enrollment and its status) unless `again`; with
    `again` it may be, once every earlier enrollment has finished: an open (ACTIVE or PAUSED) one
    is never duplicated. Returns the finished enrollment a new one follows (None: the first)."""
    found = latest_enrollment(session, deal_id, sequence_id)
    if found is None:
        return None
    enrollment_id, status = found
    if not again or EnrollmentStatus(status) in OPEN_STATUSES:
        raise AlreadyEnrolledError(deal_ref if deal_ref is not None else f"#{deal_id}", sequence_id, enrollment_id, status)
    return enrollment_id


def race_lost(session: Session, deal_id: int, sequence_id: int, deal_ref: object, exc: Exception) -> InvalidStateError:
    """What an insert refused by the partial unique index means: another enrollment of the deal
    committed meanwhile, and is open (AlreadyEnrolledError naming it)."""
    found = latest_enrollment(session, deal_id, sequence_id)
    if found is None or EnrollmentStatus(found[1]) not in OPEN_STATUSES:
        error = InvalidStateError(f"deal {deal_ref} is already enrolled in sequence {sequence_id} (active or paused)")
        error.__cause__ = exc
        return error
    error = AlreadyEnrolledError(deal_ref if deal_ref is not None else f"#{deal_id}", sequence_id, *found)
    error.__cause__ = exc
    return error


def enroll_lock(session: Session, owner_id: int, sequence_id: int, deal_ref: str) -> None:
    """The transaction's advisory lock on (owner, sequence, deal): every way of enrolling takes
    it (the bulk import many at once, in sorted order), so the check and the insert of one are
    never interleaved with another's."""
    session.execute(text("SELECT pg_advisory_xact_lock(hashtext(:k))"), {"k": enroll_lock_key(owner_id, sequence_id, deal_ref)})


def enroll_lock_key(owner_id: int, sequence_id: int, deal_ref: str) -> str:
    return f"enroll:{owner_id}:{sequence_id}:{deal_ref}"
