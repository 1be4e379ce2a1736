"""This database's identity: a random id made with the schema (`installation` table).

Everything that leaves the database for Prefect carries it: flow-run idempotency keys, run
tags and offer events. Two followups databases on one Prefect server (staging and production,
a database dropped and migrated again) then never take each other's runs.
"""

from __future__ import annotations

import uuid

from sqlalchemy import select

from followups.db.models import Installation
from followups.db.session import current_session, session_scope
from followups.errors import FollowupsError

def database_id() -> uuid.UUID:
    """The identity of the configured database. Read every time (a primary-key lookup): a
    database dropped and migrated again under the same URL has a new one. Inside a transaction it
    is read through it, never through a second connection."""
    session = current_session()
    if session is not None:
        found = session.scalar(select(Installation.id))
    else:
        with session_scope(read_only=True) as session:
            found = session.scalar(select(Installation.id))
    if found is None:  # pragma: no cover - the migration inserts the row
        raise FollowupsError("this database has no identity; run `followups db upgrade`")
    return found


def database_tag(db_id: uuid.UUID | None = None) -> str:
    """The Prefect tag naming this database's runs, e.g. `followups-db:3f2a9c1e`."""
    return f"followups-db:{(db_id or database_id()).hex[:8]}"
