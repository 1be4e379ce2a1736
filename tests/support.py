"""Helpers shared by the tests: unique owners, deals and sequences, and polling."""

from __future__ import annotations

import contextlib
import os
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

from sqlalchemy import select

from followups.db.models import Enrollment, FollowUpEvent
from followups.db.session import session_scope
from followups.deals import DealInput
from followups.control import create_enrollment
from followups.sequences import create_sequence
from followups.users import ensure_user

FAST_SEQUENCE = [
    {"type": "EMAIL", "subject": "Offer on {{ deal.property_address }}", "text": "Hi {{ seller.first_name }}, we offered {{ offer.amount }}."},
    {"type": "WAIT", "seconds": 2},
    {"type": "EMAIL", "subject": "Following up", "text": "Still interested in {{ deal.property_address }}?"},
    {"type": "WAIT", "seconds": 2},
    {"type": "SMS", "body": "Hi {{ seller.first_name }}, any thoughts on our offer?"},
]


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def unique_phone() -> str:
    return "+1555" + str(uuid.uuid4().int)[:7]


def new_owner() -> int:
    with session_scope() as session:
        return ensure_user(session, unique("user"))


def new_sequence(owner_id: int, steps: list[dict[str, Any]] | None = None, **options: Any) -> int:
    with session_scope() as session:
        return create_sequence(session, owner_id, name=unique("seq"), steps=steps or FAST_SEQUENCE, **options).id


def deal_input(**overrides: Any) -> DealInput:
    values: dict[str, Any] = {
        "external_id": unique("D"),
        "property_address": "12 Elm Street, Springfield",
        "seller_name": "Pat Seller",
        "seller_email": f"{unique('pat')}@example.com",
        "seller_phone": unique_phone(),
        "offer_amount": "250000",
    }
    values.update(overrides)
    return DealInput.model_validate(values)


def new_enrollment(owner_id: int, sequence_id: int, **deal: Any) -> int:
    """An ACTIVE enrollment with its ENROLLED event, but no Prefect run (tests drive the flow)."""
    with session_scope() as session:
        return create_enrollment(session, owner_id, deal_input(**deal), sequence_id).id


def events_of(enrollment_id: int) -> list[FollowUpEvent]:
    with session_scope() as session:
        return list(
            session.scalars(
                select(FollowUpEvent).where(FollowUpEvent.enrollment_id == enrollment_id).order_by(FollowUpEvent.id)
            )
        )


def event_types(enrollment_id: int) -> list[str]:
    return [e.event_type for e in events_of(enrollment_id)]


def enrollment_row(enrollment_id: int) -> Enrollment:
    with session_scope() as session:
        row = session.get(Enrollment, enrollment_id)
        assert row is not None
        session.expunge(row)
        return row


def wait_for(
    predicate: Callable[[], Any],
    timeout: float = 60,
    interval: float = 0.25,
    what: str = "condition",
    progress: Callable[[], Any] | None = None,
) -> Any:
    """Until `predicate()` is true. With `progress`, the bound follows it: it fails only when
    `progress()` has not changed for `timeout` s (a busy executor working through a backlog
    first is slow, not stuck)."""
    deadline = time.monotonic() + timeout
    moved = progress() if progress is not None else None
    looked = time.monotonic()
    while True:
        value = predicate()
        if value:
            return value
        if progress is not None and time.monotonic() - looked >= 1:  # a second is fine enough for a bound
            looked = time.monotonic()
            if (now := progress()) != moved:
                moved, deadline = now, looked + timeout
        if time.monotonic() > deadline:
            still = " with nothing moving" if progress is not None else ""
            raise AssertionError(f"timed out after {timeout}s{still} waiting for {what}")
        time.sleep(interval)


def wait_for_each(items: list[Any], done: Callable[[Any], bool], stall: float = 60, interval: float = 0.5, what: str = "items") -> None:
    """Until `done(item)` for every item; fails only when none more got done for `stall` s, so a
    busy machine that is slow but moving passes."""
    left, deadline = list(items), time.monotonic() + stall
    while left:
        still = [item for item in left if not done(item)]
        if len(still) < len(left):
            deadline = time.monotonic() + stall
        left = still
        if left and time.monotonic() > deadline:
            raise AssertionError(f"{len(left)} of {len(items)} {what} not done, none for {stall}s: {left[:10]}")
        if left:
            time.sleep(interval)


def stock_session_executor() -> bool:
    """Whether the session's flow runs go through the stock runner (a process each, 10-15 s per
    control run on a loaded 2-core machine) rather than the fast worker (see tests/conftest.py)."""
    return os.environ.get("FOLLOWUPS_TEST_EXECUTOR", "fast") == "stock"


def pending_run(enrollment_id: int, timeout: float = 60):
    """The id of the enrollment's pending run, once written: a WAIT commits first and creates
    its next run just after, so for a moment the row names none."""
    return wait_for(lambda: enrollment_row(enrollment_id).prefect_flow_run_id, timeout=timeout,
                    what=f"enrollment {enrollment_id}'s next run id")


def reach_wait(wait_seconds: float):
    """A new enrollment (EMAIL, WAIT, SMS) whose first email went out and whose wait has
    started: (deal, enrollment id, the wait's due time). Needs a runner serving the flow."""
    from datetime import datetime

    from followups.control import enroll_deal

    steps = [
        {"type": "EMAIL", "subject": "Offer", "text": "Hi {{ seller.first_name }}"},
        {"type": "WAIT", "seconds": wait_seconds},
        {"type": "SMS", "body": "Any news?"},
    ]
    owner = new_owner()
    deal = deal_input()
    enrollment = enroll_deal(owner, deal, new_sequence(owner, steps))
    wait_for(lambda: "WAIT_STARTED" in event_types(enrollment.id), timeout=60, what="the wait to start")
    pending_run(enrollment.id)
    started = [e for e in events_of(enrollment.id) if e.event_type == "WAIT_STARTED"][0]
    return deal, enrollment.id, datetime.fromisoformat(started.content["due_at"])


@contextlib.contextmanager
def env_settings(values: dict[str, str], *, new_engines: bool = False) -> Iterator[None]:
    """FOLLOWUPS_ settings (environment variables) changed for this process until the block ends;
    `new_engines` also rebuilds the database engines, for the pool's settings."""
    from followups.db.session import dispose_engines
    from followups.settings import reset_settings

    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    reset_settings()
    if new_engines:
        dispose_engines()
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        reset_settings()
        if new_engines:
            dispose_engines()


@contextlib.contextmanager
def using(url: str, deployment: str) -> Iterator[None]:
    """Point this process's settings at one followups database and its deployment name."""
    with env_settings({"FOLLOWUPS_DATABASE_URL": url, "FOLLOWUPS_DEPLOYMENT_NAME": f"follow-up-sequence/{deployment}"}):
        yield


def at_once(action: Callable[[int], Any], copies: int) -> list[Any]:
    """`action(i)` for i in range(copies), from threads released together: each answer, or the
    exception it raised, in order (the caller's assertions report them with the others)."""
    import contextvars
    import threading

    barrier = threading.Barrier(copies)
    results: list[Any] = [None] * copies

    def run(i: int) -> None:
        barrier.wait(timeout=30)
        try:
            results[i] = action(i)
        except Exception as exc:  # noqa: BLE001 - the answer under test
            results[i] = exc

    # Each thread in a copy of this context: the test session's Prefect settings live there.
    threads = [threading.Thread(target=contextvars.copy_context().run, args=(run, i)) for i in range(copies)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    return results
