"""Enrolling many deals at once: `control.enroll_deals`, the `import` command and the HTTP batch.

One answer per item: `ok` (enrolled now, with its enrollment and first run), `exists` (the deal
already has an enrollment in that sequence, open or finished: idempotent on the deal's external
id) or `error` (the field and why; nothing of that item is written). That is the product's one
re-enrollment rule (`lifecycle.enroll_rule`): a deal that was ever enrolled in the
sequence is not enrolled again. With `again=True`, a deal whose earlier enrollments have all
finished is enrolled anew (`ok`, naming the enrollment it follows in `previous_enrollment_id`);
an open one still answers `exists`, so a rerun of the same batch with `again` enrolls nothing
twice while those enrollments run. Each chunk of up to 100 items costs two short transactions
and one Prefect call:

1. every item is validated by the same `DealInput` as a single enrollment;
2. one transaction takes an advisory lock per (owner, sequence, deal), in sorted order, so two
   imports of the same file wait for each other instead of both enrolling (and never deadlock);
   it answers `exists` for deals already enrolled (with `again`: open), upserts the other deals and inserts their
   enrollments and ENROLLED events in one statement each, and commits;
3. the first runs are created with Prefect's bulk endpoint, one idempotency key per enrollment,
   due now or at the batch's `start_at` (also stored as the enrollment's due time, so that a
   repair of a missing first run schedules it for then too);
4. one UPDATE stores their ids (`lifecycle.store.set_first_runs`).

The runs are made after the commit so that a run the worker starts at once finds its enrollment
(until step 4 the enrollment has no pending run, which the flow takes as a fresh start). If the
process dies between 2 and 4, the same import run again schedules the missing runs: same keys,
same runs. Chunks run on a few threads so one chunk's database work overlaps another's Prefect call.
"""

from __future__ import annotations

import contextvars
import logging
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import select, text
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import Session

from followups import prefect_runs
from followups.db.models import OPEN_STATUSES, Deal, Enrollment, EnrollmentStatus
from followups.db.session import session_scope
from followups.errors import InvalidInputError
from followups.inputs import DealInput, check_id, check_start_at, require_owner, validate
from followups.lifecycle import enroll_rule, store
from followups.sequences import latest_version_id

log = logging.getLogger(__name__)

MAX_BATCH = 1000  # items per HTTP request
CHUNK = 100  # items per transaction and per Prefect bulk call (Prefect's own limit)
WORKERS = 3  # chunks in flight: enough to overlap database and Prefect work on 2 cores

_pool: ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()


@dataclass(frozen=True)
class ItemResult:
    index: int  # position in the batch
    status: str  # ok | exists | error
    deal: str | None = None  # the deal's external id, when it could be read
    enrollment_id: int | None = None
    flow_run_id: uuid.UUID | None = None
    field: str | None = None  # for errors: the dotted path inside the item
    message: str = ""
    enrollment_status: str | None = None  # ok: ACTIVE; exists: the status of the enrollment there
    previous_enrollment_id: int | None = None  # ok with again: the finished enrollment this one follows

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["flow_run_id"] = str(self.flow_run_id) if self.flow_run_id else None
        return out


@dataclass
class BatchOutcome:
    results: list[ItemResult]
    # Seconds spent, summed over the worker threads (they overlap, so the sum can exceed the wall time).
    db_seconds: float = 0.0
    prefect_seconds: float = 0.0
    counts: dict[str, int] = field(default_factory=dict)


def enroll_deals(
    owner_id: int, items: Sequence[Any], sequence_id: int, *, start_at: Any = None, again: bool = False
) -> list[ItemResult]:
    """Enroll many deals in `sequence_id` and start each one's sequence; one answer per item.

    `start_at` (an aware datetime or ISO 8601 text; None: now) is when the sequences start: their
    first runs are scheduled for then, and nothing runs before.

    A deal that was ever enrolled in the sequence answers `exists` (with that enrollment's id and
    `enrollment_status`); `again=True` enrolls it anew when its earlier enrollments have all
    finished (an open one still answers `exists`).

    Bad items never stop good ones. Raises only for the request as a whole: NotFoundError (no
    such owner, or no such sequence for this owner), InvalidStateError (disabled sequence),
    InvalidInputError (more than MAX_BATCH items, or not a list; a bad `start_at`).
    """
    return enroll_batch(owner_id, items, sequence_id, max_items=MAX_BATCH, start_at=start_at, again=again).results


def enroll_batch(
    owner_id: int,
    items: Sequence[Any],
    sequence_id: int,
    *,
    max_items: int | None = None,
    progress: Callable[[int], None] | None = None,
    start_at: Any = None,
    again: bool = False,
) -> BatchOutcome:
    """`enroll_deals` with timings and no size limit unless given; `progress(n)` after each chunk."""
    owner_id = check_id(owner_id, "owner_id")
    sequence_id = check_id(sequence_id, "sequence_id")
    starts = check_start_at(start_at)
    if not isinstance(again, bool):
        raise InvalidInputError("must be true or false", field="again")
    if not isinstance(items, list | tuple):
        raise InvalidInputError("must be a list of deals", field="items")
    if max_items is not None and len(items) > max_items:
        raise InvalidInputError(f"at most {max_items} items per batch", field="items")
    with session_scope(read_only=True) as session:
        check_request(session, owner_id, sequence_id)
    outcome = BatchOutcome(results=[])
    numbered = list(enumerate(items))
    chunks = [numbered[start : start + CHUNK] for start in range(0, len(numbered), CHUNK)]
    # Each chunk runs in a copy of the caller's context: Prefect's settings (the API URL) live there.
    futures = [_workers().submit(contextvars.copy_context().run, _chunk, owner_id, sequence_id, chunk, starts, again) for chunk in chunks]
    for future in futures:
        results, db_seconds, prefect_seconds = future.result()
        outcome.results.extend(results)
        outcome.db_seconds += db_seconds
        outcome.prefect_seconds += prefect_seconds
        if progress is not None:
            progress(len(results))
    for result in outcome.results:
        outcome.counts[result.status] = outcome.counts.get(result.status, 0) + 1
    return outcome


ANALYZE_AFTER = 1000  # enrollments made by one import before the planner's statistics are refreshed


def refresh_statistics() -> None:
    """After a large import, PostgreSQL's row estimates for deals and enrollments are stale until
    autovacuum catches up (minutes): with 100,000 deals of one owner counted as ~30, an owner's
    enrollment list by status was planned as a sort of all of them (217 ms instead of 0.24 ms).
    ANALYZE both tables now. Best effort: a database user that does not own the tables gets a
    warning from PostgreSQL and nothing changes; autovacuum still gets there."""
    from sqlalchemy.exc import DBAPIError

    try:
        with session_scope() as session:
            session.execute(text("ANALYZE deals, enrollments"))
    except DBAPIError as exc:  # the import itself is done: never fail it for this
        log.warning("could not refresh the planner's statistics after the import: %s", exc)


def _workers() -> ThreadPoolExecutor:
    # One long-lived pool: its threads keep their Prefect clients (one each) between batches.
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(max_workers=WORKERS, thread_name_prefix="followups-bulk")
        return _pool


def check_request(session: Session, owner_id: int, sequence_id: int) -> None:
    from followups.control import _enabled_sequence  # control re-exports this module

    require_owner(session, owner_id)
    _enabled_sequence(session, owner_id, sequence_id)


def _external_id_of(item: Any) -> str | None:
    value = item.get("external_id") if isinstance(item, dict) else None
    return value if isinstance(value, str) and len(value) <= 200 and value.isprintable() else None


def _validated(chunk: list[tuple[int, Any]]) -> tuple[dict[int, ItemResult], dict[str, tuple[int, DealInput]], list[tuple[int, str]]]:
    """(answers for bad items, the first valid item of each deal, later repeats of a deal)."""
    bad: dict[int, ItemResult] = {}
    valid: dict[str, tuple[int, DealInput]] = {}
    repeats: list[tuple[int, str]] = []
    for index, item in chunk:
        try:
            deal = validate(DealInput, item)
        except InvalidInputError as exc:
            bad[index] = ItemResult(index, "error", _external_id_of(item), field=exc.field, message=exc.message)
            continue
        except Exception as exc:  # noqa: BLE001 - one absurd item must not cost the others their answer
            bad[index] = ItemResult(index, "error", None, message=f"invalid item ({type(exc).__name__})")
            continue
        if deal.external_id in valid:
            repeats.append((index, deal.external_id))
        else:
            valid[deal.external_id] = (index, deal)
    return bad, valid, repeats


def _chunk(
    owner_id: int, sequence_id: int, chunk: list[tuple[int, Any]], start: datetime | None, again: bool = False
) -> tuple[list[ItemResult], float, float]:
    bad, valid, repeats = _validated(chunk)
    answers: dict[int, ItemResult] = dict(bad)
    started = time.perf_counter()
    # deal ref -> (index, enrollment id, its status, needs its first run)
    enrolled: dict[str, tuple[int, int, str, bool]] = {}
    created: set[str] = set()
    previous: dict[str, tuple[int, str]] = {}
    if valid:
        with session_scope() as session:
            enrolled, created, previous = _store(session, owner_id, sequence_id, valid, start, again)
    db_seconds = time.perf_counter() - started

    started = time.perf_counter()
    to_schedule = [(enrollment_id, ref) for ref, (_, enrollment_id, _, needs_run) in enrolled.items() if needs_run]
    runs: dict[int, uuid.UUID | str] = {}
    if to_schedule:
        try:
            runs = prefect_runs.schedule_first_runs(to_schedule, scheduled_time=start)
        except Exception as exc:  # noqa: BLE001 - Prefect down or refusing: stored, answered, repaired by a rerun
            reason = " ".join(f"{type(exc).__name__}: {exc}".split())[:300]
            runs = {enrollment_id: reason for enrollment_id, _ in to_schedule}
    prefect_seconds = time.perf_counter() - started

    started = time.perf_counter()
    scheduled = {eid: run for eid, run in runs.items() if isinstance(run, uuid.UUID)}
    if scheduled:
        with session_scope() as session:
            store.set_first_runs(session, scheduled, due=start)
    db_seconds += time.perf_counter() - started

    for ref, (index, enrollment_id, enrollment_status, needs_run) in enrolled.items():
        run = runs.get(enrollment_id)
        status = "ok" if ref in created else "exists"
        before = previous.get(ref) if status == "ok" else None
        if isinstance(run, str):
            answers[index] = ItemResult(
                index, "error", ref, enrollment_id, field="prefect",
                message=f"enrolled, but its first run could not be scheduled ({run}); import it again to schedule it",
            )
        elif before is not None:
            answers[index] = ItemResult(
                index, status, ref, enrollment_id, run, message=f"enrolled anew (enrollment {before[0]} was {before[1]})",
                enrollment_status=enrollment_status, previous_enrollment_id=before[0],
            )
        else:
            if status == "exists" and EnrollmentStatus(enrollment_status) not in OPEN_STATUSES:
                message = f"already enrolled (enrollment {enrollment_id}, {enrollment_status}); again=true enrolls it anew"
            else:
                message = "first run scheduled" if (needs_run and status == "exists") else ""
            answers[index] = ItemResult(index, status, ref, enrollment_id, run, message=message, enrollment_status=enrollment_status)
    for index, ref in repeats:
        first = answers[valid[ref][0]]
        if first.status == "error":
            answers[index] = ItemResult(index, "error", ref, first.enrollment_id, field=first.field, message=first.message)
        else:
            answers[index] = ItemResult(index, "exists", ref, first.enrollment_id, first.flow_run_id, message="repeated in this batch",
                                        enrollment_status=first.enrollment_status)
    return [answers[index] for index, _ in chunk], db_seconds, prefect_seconds


def _store(
    session: Session, owner_id: int, sequence_id: int, valid: dict[str, tuple[int, DealInput]], start: datetime | None,
    again: bool = False,
) -> tuple[dict[str, tuple[int, int, str, bool]], set[str], dict[str, tuple[int, str]]]:
    """Step 2 above. Returns {deal ref: (index, enrollment id, its status, needs its first run)},
    the refs enrolled now, and {ref: (id, status)} of the finished enrollment each deal enrolled
    anew (with `again`) follows."""
    check_request(session, owner_id, sequence_id)
    version_id, version = latest_version_id(session, sequence_id)
    keys = sorted(enroll_rule.enroll_lock_key(owner_id, sequence_id, ref) for ref in valid)
    # Sorted, so two imports of overlapping files take the locks in the same order.
    session.execute(
        text(
            "SELECT pg_advisory_xact_lock(h) FROM "
            "(SELECT DISTINCT hashtext(k) AS h FROM unnest(CAST(:keys AS text[])) AS k ORDER BY h) AS ordered"
        ),
        {"keys": keys},
    )
    # The rule of `lifecycle.enroll_rule.check_enrollable`, for many deals in one query: a deal ever
    # enrolled is there, unless `again` and its enrollment (the open one, else the newest) has finished.
    enrolled: dict[str, tuple[int, int, str, bool]] = {}
    previous: dict[str, tuple[int, str]] = {}
    for ref, (eid, status, needs) in _existing(session, owner_id, sequence_id, list(valid)).items():
        if again and EnrollmentStatus(status) not in OPEN_STATUSES:
            previous[ref] = (eid, status)
        else:
            enrolled[ref] = (valid[ref][0], eid, status, needs)
    fresh = {ref: item for ref, item in valid.items() if ref not in enrolled}
    if not fresh:
        return enrolled, set(), previous
    rows = [{"owner_id": owner_id, **deal.model_dump()} for _, deal in fresh.values()]
    statement = insert(Deal).values(rows)
    statement = statement.on_conflict_do_update(
        index_elements=["owner_id", "external_id"],
        set_={key: statement.excluded[key] for key in rows[0] if key not in ("owner_id", "external_id")},
    ).returning(Deal.id, Deal.external_id)
    deal_ids = {ref: deal_id for deal_id, ref in session.execute(statement).all()}
    made = store.create_many(
        session,
        [
            {"deal_id": deal_ids[ref], "sequence_id": sequence_id, "sequence_version_id": version_id,
             "content": {"sequence_id": sequence_id, "sequence_version": version, "deal": ref, "source": "batch",
                         **({"start_at": start.isoformat()} if start else {}),
                         **({"again": True, "previous_enrollment_id": previous[ref][0]} if ref in previous else {})}}
            for ref in fresh
        ],
        due=start,
    )
    created = {ref for ref in fresh if deal_ids[ref] in made}
    for ref in created:
        enrolled[ref] = (fresh[ref][0], made[deal_ids[ref]], EnrollmentStatus.ACTIVE.value, True)
    missed = [ref for ref in fresh if ref not in created]
    if missed:  # an open enrollment made meanwhile by a single enroll (not under our locks)
        for ref, (eid, status, needs) in _existing(session, owner_id, sequence_id, missed).items():
            enrolled[ref] = (fresh[ref][0], eid, status, needs)
    return enrolled, created, previous


def _existing(session: Session, owner_id: int, sequence_id: int, refs: list[str]) -> dict[str, tuple[int, str, bool]]:
    """{deal ref: (its enrollment in the sequence: the open one, else the newest; its status;
    whether it still needs its first run)}."""
    open_first = Enrollment.status.in_(sorted(s.value for s in OPEN_STATUSES)).desc()
    rows = session.execute(
        select(Deal.external_id, Enrollment.id, Enrollment.status, Enrollment.current_step, Enrollment.prefect_flow_run_id)
        .join(Enrollment, Enrollment.deal_id == Deal.id)
        .where(Deal.owner_id == owner_id, Deal.external_id.in_(refs), Enrollment.sequence_id == sequence_id)
        .order_by(Deal.external_id, open_first, Enrollment.id.desc())
        .distinct(Deal.external_id)
    ).all()
    return {
        ref: (eid, status, status == EnrollmentStatus.ACTIVE.value and step == 0 and run_id is None)
        for ref, eid, status, step, run_id in rows
    }
