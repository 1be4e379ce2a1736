"""The enrollment's flow runs in Prefect: create, read, suspend, resume and cancel them.

This is the only module that talks to Prefect about runs (`run_history` interprets the states
it reads). Prefect is imported inside the
functions, so that code paths which never reach Prefect (most CLI commands) do not pay for
importing it.

Facts this relies on (Prefect 3.9): `suspend_flow_run` refuses a run that is still Scheduled,
so a scheduled run is suspended by forcing a Suspended state (no worker picks it up, it never
expires); `resume_flow_run` reschedules to *now*, so the original due time is restored after.
A WAIT never holds a process: the next stretch of a sequence is a flow run of the deployment
scheduled for the due time, and its idempotency key makes "schedule step N of enrollment E" a
single run however often it is asked for.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import threading
import time
import uuid
from datetime import UTC, datetime
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from followups.db.session import in_transaction
from followups.identity import database_id, database_tag
from followups.prefect_private import SUSPEND_EXPIRED_TEXT
from followups.settings import get_settings

if TYPE_CHECKING:
    from prefect.client.orchestration import SyncPrefectClient
    from prefect.client.schemas.objects import FlowRun

_local = threading.local()
_deployment_ids: dict[tuple[str, str], uuid.UUID] = {}
BULK_RUNS = 100  # the most runs Prefect 3.9 creates in one bulk call


# The test suite sets this variable for every process it starts (flow runs included), so any
# call to Prefect made inside a transaction fails the test that made it.
_forbidden_in_transaction = os.environ.get("FOLLOWUPS_FORBID_PREFECT_IN_TRANSACTION") == "1"


def forbid_calls_in_transaction(on: bool = True) -> None:
    """Make every call to Prefect made inside a `session_scope` fail (tests prove with it that a
    path calls Prefect only outside transactions, and so never under a row lock)."""
    global _forbidden_in_transaction
    _forbidden_in_transaction = on


@contextlib.contextmanager
def allowed_in_transaction() -> Iterator[None]:
    """The one place a call inside a transaction is meant: a new enrollment's first run is created
    before its insert commits, so that an unreachable Prefect stores nothing. Nobody else can see
    that row yet, so nobody waits on it."""
    before = getattr(_local, "allowed", False)
    _local.allowed = True
    try:
        yield
    finally:
        _local.allowed = before


def _guard() -> None:
    if _forbidden_in_transaction and in_transaction() and not getattr(_local, "allowed", False):
        raise AssertionError("a call to Prefect was made inside a database transaction")


def _client() -> SyncPrefectClient:
    """One Prefect client per thread and API: building one (its SSL context) costs more than
    the call itself, and enrolling or scheduling is on the hot path."""
    _guard()
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL

    api_url = str(PREFECT_API_URL.value())
    cached = getattr(_local, "client", None)
    if cached is None or cached[0] != api_url:
        client = get_client(sync_client=True)
        client.__enter__()  # lives as long as the thread
        _local.client = cached = (api_url, client)
    return cached[1]


def _deployment_id(client: SyncPrefectClient, name: str, *, refresh: bool = False) -> uuid.UUID:
    key = (str(client.api_url), name)
    if refresh or key not in _deployment_ids:
        _deployment_ids[key] = client.read_deployment_by_name(name).id
    return _deployment_ids[key]


def run_tags(enrollment_id: int, deal_ref: str, db_tag: str | None = None) -> list[str]:
    return ["followups", db_tag or database_tag(), f"deal:{deal_ref}", f"enrollment:{enrollment_id}"]


def run_key(enrollment_id: int, step_index: int, epoch: int = 1, db_id: uuid.UUID | None = None) -> str:
    """The idempotency key of "run step N of enrollment E, epoch K" in this database: asking twice
    for the same epoch's run finds the one made. The first run (epoch 1) keeps the key it had
    before runs carried epochs."""
    suffix = f":epoch:{epoch}" if epoch > 1 else ""
    return f"followups:{db_id or database_id()}:enrollment:{enrollment_id}:step:{step_index}{suffix}"


def epoch_of(run: FlowRun | None) -> int | None:
    """The epoch a run was created for (None: a run started by hand, or made before epochs)."""
    value = (run.parameters or {}).get("epoch") if run is not None else None
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def from_this_database(run: FlowRun, db_tag: str | None = None) -> bool:
    """False for a run tagged with another database's identity. Runs without any database tag
    (started by hand with `prefect deployment run`) are taken as this database's. Pass `db_tag`
    when checking many runs, so the identity is read once."""
    tags = [tag for tag in (run.tags or []) if tag.startswith("followups-db:")]
    return not tags or (db_tag or database_tag()) in tags


def belongs_here(run: FlowRun, enrollment_id: int, db_tag: str | None = None) -> bool:
    """True when `run` is this database's run of this enrollment (not another database's,
    nor another enrollment's)."""
    parameters = run.parameters or {}
    return parameters.get("enrollment_id") == enrollment_id and from_this_database(run, db_tag)


def run_name(enrollment_id: int, deal_ref: str, step_index: int) -> str:
    where = "start" if step_index == 0 else f"from step {step_index}"
    return f"deal {deal_ref} · enrollment {enrollment_id} · {where}"


def schedule_sequence_run(
    enrollment_id: int,
    deal_ref: str,
    step_index: int,
    *,
    scheduled_time: datetime | None,
    epoch: int = 1,
    message: str | None = None,
) -> uuid.UUID:
    """Create (or find, by idempotency key) the flow run that continues at `step_index`.

    The client equivalent of `run_deployment(..., timeout=0, as_subflow=False)`: a top-level
    run (a child run could never be suspended on its own) that returns at once.
    """
    from prefect.exceptions import ObjectNotFound
    from prefect.states import Scheduled

    client = _client()
    name = get_settings().deployment_name
    db_id = database_id()  # read once per run created: it is a query
    options: dict[str, Any] = dict(
        parameters={"enrollment_id": enrollment_id, "epoch": epoch},
        state=Scheduled(scheduled_time=scheduled_time, message=message),
        name=run_name(enrollment_id, deal_ref, step_index),
        tags=run_tags(enrollment_id, deal_ref, database_tag(db_id)),
        idempotency_key=run_key(enrollment_id, step_index, epoch, db_id),
    )
    try:
        return client.create_flow_run_from_deployment(_deployment_id(client, name), **options).id
    except ObjectNotFound:  # the deployment was deleted and registered again: new id
        return client.create_flow_run_from_deployment(_deployment_id(client, name, refresh=True), **options).id


def schedule_first_runs(
    enrollments: list[tuple[int, str]], *, scheduled_time: datetime | None = None
) -> dict[int, uuid.UUID | str]:
    """The first run (step 0, due at `scheduled_time`, None: now) of each (enrollment id, deal ref), created with Prefect's
    bulk endpoint, at most 100 per call (the server's limit): one HTTP request and one server
    transaction per hundred runs instead of one each. Same name, tags and idempotency key as
    `schedule_sequence_run`, so a repeat finds the run already made. Returns the run id of each
    enrollment, or Prefect's reason when it refused that one."""
    from prefect.client.schemas.actions import DeploymentFlowRunCreate
    from prefect.exceptions import PrefectHTTPStatusError
    from prefect.states import Scheduled, to_state_create

    client = _client()
    name = get_settings().deployment_name
    db_id = database_id()
    db_tag = database_tag(db_id)

    def state(enrollment_id: int) -> Any:
        message = f"enrollment {enrollment_id}, step 0: runs when its time comes"
        return to_state_create(Scheduled(scheduled_time=scheduled_time, message=message))
    answers: dict[int, uuid.UUID | str] = {}
    for start in range(0, len(enrollments), BULK_RUNS):
        batch = enrollments[start : start + BULK_RUNS]
        body = [
            DeploymentFlowRunCreate(
                parameters={"enrollment_id": enrollment_id, "epoch": 1}, state=state(enrollment_id),
                name=run_name(enrollment_id, deal_ref, 0), tags=run_tags(enrollment_id, deal_ref, db_tag),
                idempotency_key=run_key(enrollment_id, 0, 1, db_id),
            ).model_dump(mode="json", exclude_unset=True)
            for enrollment_id, deal_ref in batch
        ]
        path = "/deployments/{id}/create_flow_run/bulk"
        try:
            response = client.request("POST", path, path_params={"id": _deployment_id(client, name)}, json=body)
        except PrefectHTTPStatusError as exc:
            if exc.response.status_code != 404:
                raise
            # the deployment was registered again: new id
            response = client.request("POST", path, path_params={"id": _deployment_id(client, name, refresh=True)}, json=body)
        for (enrollment_id, deal_ref), result in zip(batch, response.json()["results"], strict=True):
            run_id = result.get("flow_run_id")
            answers[enrollment_id] = uuid.UUID(run_id) if run_id else _one_more_time(enrollment_id, deal_ref, result.get("error"), scheduled_time)
    return answers


def _one_more_time(enrollment_id: int, deal_ref: str, error: str | None, scheduled_time: datetime | None) -> uuid.UUID | str:
    """A run the bulk call did not make, asked for alone. The bulk endpoint makes its runs in one
    server transaction, so one failed insert (e.g. a deadlock with a concurrent import of the
    same deals, same keys) fails every later run of that call."""
    try:
        return schedule_sequence_run(enrollment_id, deal_ref, 0, scheduled_time=scheduled_time)
    except Exception as exc:  # noqa: BLE001 - reported to the caller as this item's answer
        return " ".join(str(error or exc).split())[:300] or "refused by Prefect"


def read_runs(flow_run_ids: list[uuid.UUID]) -> dict[uuid.UUID, FlowRun]:
    """The runs that exist among `flow_run_ids` (a deleted run is absent), 200 per request."""
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    found: dict[uuid.UUID, FlowRun] = {}
    for start in range(0, len(flow_run_ids), 200):
        batch = flow_run_ids[start : start + 200]
        runs = _client().read_flow_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=batch)), limit=len(batch))
        found.update({run.id: run for run in runs})
    return found


def read_run(flow_run_id: uuid.UUID | None) -> FlowRun | None:
    """The run, or None when there is none (no id, or deleted in Prefect)."""
    if flow_run_id is None:
        return None
    from prefect.exceptions import ObjectNotFound

    try:
        return _client().read_flow_run(flow_run_id)
    except ObjectNotFound:
        return None


def is_suspended(run: FlowRun | None) -> bool:
    return bool(run and run.state and run.state.is_paused())


def resumes_in_place(run: FlowRun | None) -> bool:
    """Paused without a reschedule (a state an operator can set through Prefect's API): Prefect's
    Resume would move it straight to Running, with no process behind it. Suspended (what the UI
    and our pause set) reschedules it instead."""
    return is_suspended(run) and not run.state.state_details.pause_reschedule


# The key a sequence run suspends itself with, for a pause made through our API between steps
# ("pause-<step>-<ns>" before this prefix existed).
SELF_PAUSE_KEY_PREFIX = "followups-self-pause-"
_OLD_SELF_PAUSE_KEY = re.compile(r"pause-\d+-\d+")


def self_pause_key(step: int) -> str:
    return f"{SELF_PAUSE_KEY_PREFIX}{step}-{time.time_ns()}"


def suspended_by_its_flow(state: Any) -> bool:
    key = (state.state_details.pause_key if state.state_details else None) or ""
    return key.startswith(SELF_PAUSE_KEY_PREFIX) or bool(_OLD_SELF_PAUSE_KEY.fullmatch(key))


def suspended_itself(run: FlowRun | None) -> bool:
    """Whether the run is suspended because its own flow suspended it (a pause through our API),
    rather than by an operator in Prefect or by our API from outside."""
    return is_suspended(run) and suspended_by_its_flow(run.state)


def is_live(run: FlowRun | None) -> bool:
    """Scheduled, pending, running or suspended: a run that may still do something."""
    return bool(run and run.state and not run.state.is_final())


def due_before(run: FlowRun | None, due: datetime | None) -> bool:
    """The run is Scheduled, for more than a second before `due`."""
    state = run.state if run is not None else None
    scheduled = state.state_details.scheduled_time if state and state.is_scheduled() else None
    return bool(scheduled and due and (due - scheduled).total_seconds() > 1)


def state_type(run: FlowRun | None) -> str | None:
    """The run's state type as a plain string (SCHEDULED, RUNNING, PAUSED, CANCELLED, ...)."""
    if run is None or run.state is None:
        return None
    return str(run.state.type.value)


def suspend_expired(run: FlowRun | None) -> bool:
    """The run failed because its suspend timed out (Prefect: "The flow was paused/suspended
    and never resumed.")."""
    state = run.state if run is not None else None
    return bool(state and state.is_failed() and SUSPEND_EXPIRED_TEXT in (state.message or ""))


def read_states(flow_run_id: uuid.UUID) -> list[Any]:
    """The run's states, oldest first (what `run_history` reads)."""
    return sorted(_client().read_flow_run_states(flow_run_id), key=lambda s: s.timestamp)


def suspend_run(run: FlowRun) -> None:
    from prefect.client.schemas.objects import StateType
    from prefect.flow_runs import suspend_flow_run
    from prefect.states import Suspended

    _guard()
    kind = run.state.type if run.state else None
    if kind in (StateType.SCHEDULED, StateType.PENDING) or resumes_in_place(run):
        _client().set_flow_run_state(run.id, Suspended(pause_key=f"followups-{uuid.uuid4().hex[:8]}"), force=True)
    elif kind == StateType.RUNNING:
        # The step in flight finishes; the flow stops at the next step boundary.
        from prefect.exceptions import Pause

        try:
            suspend_flow_run(flow_run_id=run.id)
        except Pause:
            # Refused: it is no longer running since it was read. It suspended itself (its flow
            # saw the enrollment PAUSED first) or ended; either way there is nothing to suspend.
            return


def resume_run(run: FlowRun, due: datetime | None, *, name: str = "Resuming") -> None:
    """Resume a suspended run, keeping what is left of its wait: one state change, Scheduled
    "Resuming" at the due time (what `resume_flow_run` does, but for later than now). A run that
    is Scheduled already (resumed in Prefect, due now) is scheduled for `due` the same way, named
    `name`."""
    from prefect.exceptions import NotPausedError
    from prefect.flow_runs import resume_flow_run
    from prefect.states import Scheduled

    _guard()
    if due is not None and due > datetime.now(UTC):
        _client().set_flow_run_state(run.id, Scheduled(scheduled_time=due, name=name), force=True)
        return
    try:
        resume_flow_run(run.id)
    except NotPausedError:
        # It left Suspended since it was read: a worker that had claimed it before the pause
        # started it (its checkpoint waits for this resume's lock, then goes on), or it ended
        # (the enrollment's repair replaces it). Either way there is nothing left to resume.
        pass


BULK_STATES = 50  # the most runs Prefect 3.9 sets in one bulk_set_state call


def set_states(run_ids: list[uuid.UUID], state: Any) -> set[uuid.UUID]:
    """Force `state` on many runs, 50 per request (`POST /flow_runs/bulk_set_state`): the runs
    Prefect accepted it for."""
    from prefect.states import to_state_create

    _guard()
    body = to_state_create(state).model_dump(mode="json", exclude_unset=True)
    accepted: set[uuid.UUID] = set()
    for start in range(0, len(run_ids), BULK_STATES):
        batch = [str(run_id) for run_id in run_ids[start : start + BULK_STATES]]
        answer = _client().request("POST", "/flow_runs/bulk_set_state", json={
            "flow_runs": {"id": {"any_": batch}}, "state": body, "force": True, "limit": BULK_STATES,
        })
        accepted |= {uuid.UUID(r["flow_run_id"]) for r in answer.json()["results"] if r["status"] == "ACCEPT"}
    return accepted


def cancel_run(run: FlowRun) -> None:
    from prefect.states import Cancelled

    _client().set_flow_run_state(run.id, Cancelled(message="follow-up sequence cancelled"), force=True)


def post_table_artifact(key: str, rows: list[dict[str, Any]], description: str) -> None:
    """A table artifact made outside any run, with this thread's client: Prefect's helper would
    build a client per call (an SSL context each) and warns that use is deprecated."""
    import json

    from prefect.client.schemas.actions import ArtifactCreate

    _client().create_artifact(ArtifactCreate(key=key, type="table", description=description, data=json.dumps(rows)))


def label_own_run(flow_run_id: Any, name: str, tags: list[str]) -> None:
    """Rename a run and add tags, once its flow knows what it is about (best effort: a label
    must never fail the run)."""
    if not flow_run_id:
        return
    try:
        client = _client()
        run = client.read_flow_run(uuid.UUID(str(flow_run_id)))
        client.update_flow_run(run.id, name=name, tags=sorted(set(run.tags or []) | set(tags)))
    except Exception as exc:  # pragma: no cover - Prefect unreachable mid-run; the run's work is done
        logging.getLogger(__name__).warning("could not label flow run %s: %s", flow_run_id, exc)
