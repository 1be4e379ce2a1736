"""Two followups databases on one Prefect server, each with enrollments 1..N: every sequence
completes against its own database and no run crosses over."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator

import pytest
from sqlalchemy import func, select

from conftest import PG_ADMIN_URL, _admin_engine, _with_database
from followups.db.migrate import upgrade
from followups.db.models import Enrollment, FollowUpEvent
from followups.db.session import dispose_engines, session_scope
from followups.prefect_server import wait_for_deployment
from support import deal_input, using, wait_for

ENROLLMENTS = 12
STEPS = [
    {"type": "EMAIL", "subject": "Offer", "text": "Hi {{ seller.first_name }}"},
    {"type": "WAIT", "seconds": 1},
    {"type": "SMS", "body": "Any news on {{ deal.external_id }}?"},
]


@pytest.fixture
def two_databases(prefect_api, fake_providers, tmp_path) -> Iterator[list[tuple[str, str]]]:
    suffix = uuid.uuid4().hex[:6]
    setups = [(_with_database(PG_ADMIN_URL, f"followups_two_{side}_{suffix}"), f"two-{side}-{suffix}") for side in "ab"]
    workers = []
    try:
        for url, deployment in setups:
            upgrade(url)  # each from nothing, as `followups db upgrade` makes it: ids start at 1
            env = {
                **os.environ,
                "PREFECT_API_URL": prefect_api,
                "PYTHONSAFEPATH": "1",
                "FOLLOWUPS_DATABASE_URL": url,
                "FOLLOWUPS_DEPLOYMENT_NAME": f"follow-up-sequence/{deployment}",
            }
            log = open(tmp_path / f"{deployment}.log", "wb")
            workers.append(subprocess.Popen(
                [sys.executable, "-m", "followups.worker", "--concurrency", "4", "--poll", "0.5"],
                env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            ))
        for _, deployment in setups:
            wait_for_deployment(f"follow-up-sequence/{deployment}", timeout=60)
        yield setups
    finally:
        for worker in workers:
            os.killpg(worker.pid, signal.SIGTERM)
        for worker in workers:
            try:
                worker.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(worker.pid, signal.SIGKILL)
        dispose_engines()
        with _admin_engine().connect() as conn:
            for url, _ in setups:
                conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{url.rsplit("/", 1)[1]}" WITH (FORCE)')


def _enroll_all(side: str) -> list[tuple[int, str, str]]:
    from followups.control import enroll_deal
    from followups.sequences import create_sequence
    from followups.users import ensure_user

    with session_scope() as session:
        owner = ensure_user(session, f"investor-{side}")
        sequence = create_sequence(session, owner, name=f"seq {side}", steps=STEPS).id
    enrolled = []
    for _ in range(ENROLLMENTS):
        deal = deal_input(external_id=f"{side.upper()}-{uuid.uuid4().hex[:8]}")
        ref = enroll_deal(owner, deal, sequence)
        enrolled.append((ref.id, str(deal.seller_email), deal.seller_phone))
    return enrolled


def _summary() -> tuple[dict[str, int], set]:
    with session_scope() as session:
        statuses = dict(session.execute(select(Enrollment.status, func.count()).group_by(Enrollment.status)).all())
        runs = set(session.scalars(select(FollowUpEvent.flow_run_id).where(FollowUpEvent.flow_run_id.is_not(None))))
    return statuses, runs


def test_two_databases_on_one_prefect_server_never_meet(two_databases, fake_providers):
    enrolled: dict[str, list] = {}
    for (url, deployment), side in zip(two_databases, "ab"):
        with using(url, deployment):
            enrolled[side] = _enroll_all(side)
    # The same ids on both sides: exactly the keys that collided when they held no database id.
    assert [e[0] for e in enrolled["a"]] == [e[0] for e in enrolled["b"]] == list(range(1, ENROLLMENTS + 1))

    run_ids = {}
    for (url, deployment), side in zip(two_databases, "ab"):
        with using(url, deployment):
            wait_for(lambda: _summary()[0] == {"COMPLETED": ENROLLMENTS}, timeout=240, what=f"database {side} to complete")
            run_ids[side] = _summary()[1]
    assert run_ids["a"] and run_ids["b"] and not run_ids["a"] & run_ids["b"]  # no run served both
    for side in "ab":
        for _, email, phone in enrolled[side]:
            assert len(fake_providers.for_recipient(email)) == 1
            assert len(fake_providers.for_recipient(phone)) == 1
