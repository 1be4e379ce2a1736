"""The schema: migrations apply to an empty database, and the event log is append-only."""

from __future__ import annotations

import uuid

import pytest
from sqlalchemy import create_engine, inspect, text
from sqlalchemy.exc import DBAPIError, IntegrityError

from followups.db.events import record_event
from followups.db.migrate import upgrade
from followups.db.models import EventType
from followups.db.session import session_scope
from alembic.script import ScriptDirectory

from followups.db.migrate import alembic_config
from support import FAST_SEQUENCE, new_enrollment, new_owner, new_sequence

from conftest import PG_ADMIN_URL, _admin_engine, _with_database


def test_migrations_create_the_database_and_apply_to_it():
    name = f"followups_empty_{uuid.uuid4().hex[:8]}"
    url = _with_database(PG_ADMIN_URL, name)
    admin = _admin_engine()
    try:
        upgrade(url)  # creates the database too
        engine = create_engine(url)
        tables = set(inspect(engine).get_table_names())
        assert {"users", "sequences", "sequence_versions", "deals", "enrollments", "offers", "follow_up_events"} <= tables
        with engine.connect() as conn:
            head = ScriptDirectory.from_config(alembic_config(url)).get_current_head()
            assert conn.scalar(text("SELECT version_num FROM alembic_version")) == head
        engine.dispose()
        upgrade(url)  # a second run is a no-op
    finally:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.dispose()


@pytest.fixture
def one_event(db) -> int:
    owner = new_owner()
    enrollment_id = new_enrollment(owner, new_sequence(owner))
    with session_scope() as session:
        return record_event(session, enrollment_id=enrollment_id, event_type=EventType.PAUSED)


@pytest.mark.parametrize(
    "statement",
    [
        "UPDATE follow_up_events SET status = 'tampered' WHERE id = :id",
        "DELETE FROM follow_up_events WHERE id = :id",
        "TRUNCATE follow_up_events CASCADE",
    ],
    ids=["update", "delete", "truncate"],
)
def test_the_database_rejects_changes_to_the_event_log(one_event, statement):
    with pytest.raises(DBAPIError, match="append-only"):
        with session_scope() as session:
            session.execute(text(statement), {"id": one_event})
    with session_scope() as session:
        assert session.scalar(text("SELECT status FROM follow_up_events WHERE id = :id"), {"id": one_event}) == "ok"


def test_one_sent_event_per_enrollment_and_step_is_enforced_by_the_database(db):
    owner = new_owner()
    enrollment_id = new_enrollment(owner, new_sequence(owner))
    with session_scope() as session:
        session.execute(
            text("INSERT INTO follow_up_events (enrollment_id, step_index, event_type) VALUES (:e, 0, 'EMAIL_SENT')"),
            {"e": enrollment_id},
        )
    with pytest.raises(IntegrityError):
        with session_scope() as session:
            session.execute(
                text("INSERT INTO follow_up_events (enrollment_id, step_index, event_type) VALUES (:e, 0, 'EMAIL_SENT')"),
                {"e": enrollment_id},
            )


def test_record_event_with_a_dedupe_key_is_idempotent(db):
    owner = new_owner()
    enrollment_id = new_enrollment(owner, new_sequence(owner, FAST_SEQUENCE))
    with session_scope() as session:
        first = record_event(session, enrollment_id=enrollment_id, event_type=EventType.PROVIDER_EVENT, dedupe_key=f"k-{enrollment_id}")
        second = record_event(session, enrollment_id=enrollment_id, event_type=EventType.PROVIDER_EVENT, dedupe_key=f"k-{enrollment_id}")
    assert first is not None and second is None


def test_occurred_at_comes_from_the_database_clock(db):
    owner = new_owner()
    enrollment_id = new_enrollment(owner, new_sequence(owner))
    with session_scope() as session:
        db_now = session.scalar(text("SELECT clock_timestamp()"))
        event_id = record_event(session, enrollment_id=enrollment_id, event_type=EventType.PAUSED)
        occurred = session.scalar(text("SELECT occurred_at FROM follow_up_events WHERE id = :id"), {"id": event_id})
    assert occurred >= db_now
