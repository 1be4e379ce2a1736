"""Whose enrollments a seller's message concerns."""

from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from followups.db.models import OPEN_STATUSES, Deal, Enrollment

_OPEN = sorted(OPEN_STATUSES)


def enrollments_for_phone(session: Session, phone: str) -> list[int]:
    """The seller's open enrollments (any owner: the sending number is shared), or else the
    most recent one, so a late reply still lands on the enrollment it answers."""
    base = select(Enrollment.id).join(Deal, Deal.id == Enrollment.deal_id).where(Deal.seller_phone == phone)
    open_ids = list(session.scalars(base.where(Enrollment.status.in_(_OPEN)).order_by(Enrollment.id)))
    if open_ids:
        return open_ids
    latest = session.scalars(base.order_by(Enrollment.id.desc()).limit(1)).first()
    return [latest] if latest is not None else []


def open_enrollments_for_email(session: Session, email: str) -> list[int]:
    return list(
        session.scalars(
            select(Enrollment.id)
            .join(Deal, Deal.id == Enrollment.deal_id)
            .where(func.lower(Deal.seller_email) == email.strip().lower(), Enrollment.status.in_(_OPEN))
            .order_by(Enrollment.id)
        )
    )
