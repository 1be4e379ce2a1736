"""Users own sequences and deals. Token handling lives in followups.api_tokens."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import Session

from followups.db.models import User
from followups.errors import NotFoundError
from followups.inputs import check_name


def ensure_user(session: Session, name: str) -> int:
    """Return the id of the user called `name` (1-200 characters, one line), creating it if needed."""
    name = check_name(name, "name")
    session.execute(insert(User).values(name=name).on_conflict_do_nothing(index_elements=["name"]))
    return session.scalars(select(User.id).where(User.name == name)).one()


def user_id_by_name(session: Session, name: str) -> int:
    name = check_name(name, "name")
    user_id = session.scalars(select(User.id).where(User.name == name)).first()
    if user_id is None:
        raise NotFoundError("user", name)
    return user_id
