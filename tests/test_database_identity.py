"""Each followups database has an identity, made with its schema, and everything that leaves it
for Prefect carries that identity: two databases on one Prefect server never meet."""

from __future__ import annotations

import uuid
from types import SimpleNamespace

import pytest
from sqlalchemy import create_engine, text

from conftest import PG_ADMIN_URL, _admin_engine, _with_database
from followups import identity, prefect_runs
from followups.db.migrate import upgrade
from followups.offer_events import for_this_database, offer_payload
from support import deal_input


@pytest.fixture
def fresh_database_url():
    """A database created and migrated from nothing, as `followups db upgrade` does."""
    name = f"followups_identity_{uuid.uuid4().hex[:8]}"
    url = _with_database(PG_ADMIN_URL, name)
    upgrade(url)
    yield url
    with _admin_engine().connect() as conn:
        conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _identity_of(url: str) -> uuid.UUID:
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            return conn.scalar(text("SELECT id FROM installation"))
    finally:
        engine.dispose()


def test_every_database_gets_its_own_identity_and_keeps_it(db, fresh_database_url):
    mine, fresh = identity.database_id(), _identity_of(fresh_database_url)
    assert isinstance(mine, uuid.UUID) and isinstance(fresh, uuid.UUID) and mine != fresh
    upgrade(fresh_database_url)  # migrating again changes nothing
    assert _identity_of(fresh_database_url) == fresh
    engine = create_engine(fresh_database_url)
    try:
        with engine.connect() as conn, pytest.raises(Exception, match="singleton|unique|duplicate"):
            conn.execute(text("INSERT INTO installation DEFAULT VALUES"))
    finally:
        engine.dispose()


def test_run_keys_and_tags_name_this_database(db):
    key = prefect_runs.run_key(1, 0)
    assert str(identity.database_id()) in key and key.endswith(":enrollment:1:step:0")
    assert identity.database_tag() in prefect_runs.run_tags(1, "D-1")


def _run(enrollment_id, tags):
    return SimpleNamespace(parameters={"enrollment_id": enrollment_id}, tags=tags)


def test_a_run_of_another_database_or_enrollment_is_not_ours(db):
    mine = identity.database_tag()
    assert prefect_runs.belongs_here(_run(7, ["followups", mine]), 7)
    assert prefect_runs.belongs_here(_run(7, ["followups"]), 7)  # started by hand: no database tag
    assert not prefect_runs.belongs_here(_run(8, ["followups", mine]), 7)
    assert not prefect_runs.belongs_here(_run(7, ["followups", "followups-db:00000000"]), 7)
    assert not prefect_runs.from_this_database(_run(7, ["followups-db:00000000"]))


def test_offer_events_carry_the_database_and_other_databases_skip_them(db):
    owner = 1
    payload = offer_payload(owner, "offer-1", deal_input())
    assert payload["database"] == str(identity.database_id())
    assert for_this_database(payload)
    assert not for_this_database({**payload, "database": str(uuid.uuid4())})
    assert for_this_database({k: v for k, v in payload.items() if k != "database"})
