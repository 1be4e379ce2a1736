"""An owner's enrollments, newest first, a page at a time: `followups list`, GET /api/enrollments.

Pages are cut by id (`before`: the `next_before` of the previous page), not by offset, so a
page costs the same at the end of 100,000 enrollments as at the start, and enrollments made
while paging never shift or repeat what comes next.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select

from followups.db.models import Deal, Enrollment, EnrollmentStatus, SequenceVersion
from followups.db.session import session_scope
from followups.errors import InvalidInputError
from followups.inputs import check_id, require_owner

DEFAULT_LIMIT = 50
MAX_LIMIT = 500


@dataclass(frozen=True)
class EnrollmentSummary:
    id: int
    deal_external_id: str
    sequence_id: int
    sequence_version: int
    status: str
    current_step: int
    next_due_at: datetime | None
    updated_at: datetime

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["next_due_at"] = self.next_due_at.isoformat() if self.next_due_at else None
        data["updated_at"] = self.updated_at.isoformat()
        return data


@dataclass(frozen=True)
class EnrollmentPage:
    items: list[EnrollmentSummary]
    next_before: int | None  # pass as `before` for the next page; None: this was the last

    def as_dict(self) -> dict[str, Any]:
        return {"items": [item.as_dict() for item in self.items], "next_before": self.next_before}


def check_status(value: Any, field: str = "status") -> str | None:
    if value is None:
        return None
    known = [status.value for status in EnrollmentStatus]
    if not isinstance(value, str) or value.strip().upper() not in known:
        raise InvalidInputError(f"must be one of {', '.join(known)}", field=field)
    return value.strip().upper()


def check_limit(value: Any, field: str = "limit") -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_LIMIT:
        raise InvalidInputError(f"must be an integer between 1 and {MAX_LIMIT}", field=field)
    return value


def list_enrollments(
    owner_id: int,
    *,
    status: str | None = None,
    sequence_id: int | None = None,
    limit: int = DEFAULT_LIMIT,
    before: int | None = None,
) -> EnrollmentPage:
    """The owner's enrollments, newest first, optionally of one status and one sequence."""
    owner_id = check_id(owner_id, "owner_id")
    status = check_status(status)
    sequence_id = check_id(sequence_id, "sequence_id") if sequence_id is not None else None
    limit = check_limit(limit)
    before = check_id(before, "before") if before is not None else None
    statement = (
        select(
            Enrollment.id, Deal.external_id, Enrollment.sequence_id, SequenceVersion.version, Enrollment.status,
            Enrollment.current_step, Enrollment.next_due_at, Enrollment.updated_at,
        )
        .join(Deal, Enrollment.deal_id == Deal.id)
        .join(SequenceVersion, Enrollment.sequence_version_id == SequenceVersion.id)
        .where(Deal.owner_id == owner_id)
        .order_by(Enrollment.id.desc())
        .limit(limit + 1)
    )
    if status is not None:
        statement = statement.where(Enrollment.status == status)
    if sequence_id is not None:
        statement = statement.where(Enrollment.sequence_id == sequence_id)
    if before is not None:
        statement = statement.where(Enrollment.id < before)
    with session_scope(read_only=True) as session:
        require_owner(session, owner_id)
        rows = session.execute(statement).all()
    items = [EnrollmentSummary(*row) for row in rows[:limit]]
    return EnrollmentPage(items, items[-1].id if len(rows) > limit else None)
