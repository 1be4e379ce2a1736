"""The enrollment machine: `apply(state, command) -> Outcome(state, events, effects)`, pure.

Every change an enrollment makes is decided here, from its state and one command: the
investor's pause, resume, cancel or stop; the flow's step outcomes, waits and deferrals; the
seller's reply; what Prefect showed of the pending run (an operator's suspend, resume, cancel,
delete, crash, or a run started by hand); the sweep. Nothing here reads the database or calls
Prefect: `lifecycle.store` loads the state, applies the command, and commits the new state, its
events and its effects together; Prefect is called only after that commit (`lifecycle.effects`).

Every run the product creates is named by the epoch it was created for (`CreateRun`), and the
epoch rises whenever the pending run changes hands, so a run of an older epoch does nothing.
"""

from __future__ import annotations

import dataclasses
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

from followups.db.models import FINISHED_STATUSES, OPEN_STATUSES, EnrollmentStatus, EventType
from followups.errors import InvalidStateError
from followups.lifecycle.transitions import Actor, check

ACTIVE, PAUSED, CANCELLED = EnrollmentStatus.ACTIVE, EnrollmentStatus.PAUSED, EnrollmentStatus.CANCELLED
NOT_STARTED = frozenset({"SCHEDULED", "PENDING"})
CANCELLED_STATES = frozenset({"CANCELLED", "CANCELLING"})
ENDED_STATES = frozenset({"COMPLETED", "FAILED", "CRASHED"})
FINAL_STATES = ENDED_STATES | {"CANCELLED"}
KILLED_STATES = frozenset({"FAILED", "CRASHED"})  # how a run whose process was killed for a cancel may end
REPAIR_BACKOFF_SECONDS = 30  # the second repair of one step waits 30 s, the third 60 s, ...
MAX_REPAIR_BACKOFF = 3600

# The event written for each status a move lands in.
STATUS_EVENTS = {
    EnrollmentStatus.PAUSED: EventType.PAUSED,
    EnrollmentStatus.ACTIVE: EventType.RESUMED,
    EnrollmentStatus.CANCELLED: EventType.CANCELLED,
    EnrollmentStatus.STOPPED: EventType.STOPPED,
    EnrollmentStatus.COMPLETED: EventType.COMPLETED,
    EnrollmentStatus.FAILED: EventType.FAILED,
}


@dataclass(frozen=True)
class State:
    """An enrollment's row, and the two facts of its event log that a change may need."""

    enrollment_id: int
    status: EnrollmentStatus
    step: int
    step_types: tuple[str, ...]  # the pinned version's steps: "EMAIL", "WAIT", "SMS"
    due_at: datetime | None
    run_id: uuid.UUID | None  # the pending run; None while the epoch's run is being created
    epoch: int
    paused_at: datetime | None = None  # the latest PAUSED event
    repairs: int = 0  # RECONCILED events of the current step

    @property
    def finished_steps(self) -> bool:
        return self.step >= len(self.step_types)

    @property
    def step_index(self) -> int | None:
        return None if self.finished_steps else self.step

    @property
    def is_open(self) -> bool:
        return self.status in OPEN_STATUSES


@dataclass(frozen=True)
class Run:
    """What Prefect showed of the pending run, read before the row lock (`reconcile.look`)."""

    state: str | None  # its state type; None: deleted
    ours: bool = True  # False: another enrollment's or another database's
    suspend_expired: bool = False  # failed because a suspend with a timeout (the UI's Pause) ran out
    stopped_by_runner: bool = False  # Cancelled by its runner shutting down, which nobody asked for
    resumed: bool = False  # its history shows a resume after its last suspend
    suspended_itself: bool = False  # suspended by its own flow (only ever for a PAUSED enrollment)
    cancel_requested: bool = False  # an operator cancelled it since it was last scheduled
    resumes_in_place: bool = False  # suspended without a reschedule (Prefect's "Paused")

    @property
    def live(self) -> bool:
        return self.state is not None and self.state not in FINAL_STATES


@dataclass(frozen=True)
class Event:
    type: EventType
    step_index: int | None
    content: dict[str, Any]
    flow_run_id: uuid.UUID | None
    extra: dict[str, Any] = field(default_factory=dict)  # status, failure_reason, dedupe_key, ...


class EffectKind(StrEnum):
    SUSPEND = "suspend"
    RESUME = "resume"
    CANCEL = "cancel"


@dataclass(frozen=True)
class RunEffect:
    """Make the pending run suspended, resumed (due at `due_at`) or cancelled."""

    kind: EffectKind
    run_id: uuid.UUID
    due_at: datetime | None = None


@dataclass(frozen=True)
class CreateRun:
    """Create the run of `step` for `epoch`, due at `due` (None: now)."""

    epoch: int
    step: int
    due: datetime | None
    message: str


@dataclass(frozen=True)
class DropRun:
    """Cancel a run nobody counts on any more (it would do nothing if it started)."""

    run_id: uuid.UUID


Effect = RunEffect | CreateRun | DropRun


@dataclass(frozen=True)
class Outcome:
    state: State
    events: tuple[Event, ...] = ()
    effects: tuple[Effect, ...] = ()
    action: str = "none"  # what an observation led to, for the sweep's report and `status`
    why: str = ""

    def then(self, command: Any) -> Outcome:
        more = apply(self.state, command)
        return Outcome(more.state, self.events + more.events, self.effects + more.effects, self.action, self.why)


# -- commands ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Move:
    """A status change: the investor's pause, resume or cancel, a stop for a reply or a deal
    event, the flow's end. `follow` (default: unless it comes from Prefect or the flow) makes
    the pending run agree; `run`: the pending run as read before the lock, needed for a resume."""

    to: EnrollmentStatus
    actor: Actor
    now: datetime
    content: dict[str, Any] = field(default_factory=dict)
    event_type: EventType | None = None
    follow: bool | None = None
    run: Run | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # step_index, flow_run_id, dedupe_key, ...


@dataclass(frozen=True)
class Advance:
    """Step `step` is done (sent, skipped, waited, outcome unknown): on to the next."""

    step: int
    event: Event | None = None


@dataclass(frozen=True)
class Fail:
    step: int
    reason: str
    now: datetime
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Reschedule:
    """A new pending run at `due` (None: now): a wait, a deferral, a repair."""

    due: datetime | None
    actor: Actor
    why: str | None = None
    event_type: EventType | None = None
    content: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)  # the event's status, flow_run_id, ...


@dataclass(frozen=True)
class Adopt:
    """A run started in Prefect carries the enrollment on (`take_back`: it was the pending run,
    and the run it handed over to is dropped)."""

    run_id: uuid.UUID
    content: dict[str, Any]
    take_back: bool = False


@dataclass(frozen=True)
class RecordRun:
    """The run of the current epoch started before its id was written back: it records itself."""

    run_id: uuid.UUID


@dataclass(frozen=True)
class Observe:
    """What Prefect showed of the pending run; `starting_run_id`: a run starting now."""

    run: Run
    now: datetime
    starting_run_id: uuid.UUID | None = None


@dataclass(frozen=True)
class Unscheduled:
    """The sweep found an ACTIVE enrollment without a pending run for `idle` s (its enroller died
    between the commit and creating the first run)."""

    idle: float
    grace: float


Command = Move | Advance | Fail | Reschedule | Adopt | RecordRun | Observe | Unscheduled


# -- the machine ------------------------------------------------------------------------------


def apply(state: State, command: Command) -> Outcome:
    """The new state, its events and its effects. Raises InvalidStateError for a change the
    transition table (`transitions.TRANSITIONS`) does not allow."""
    if isinstance(command, Move):
        return _move(state, command)
    if isinstance(command, Advance):
        check(state.enrollment_id, state.status, ACTIVE, Actor.FLOW)
        if state.step != command.step:
            raise InvalidStateError(f"enrollment {state.enrollment_id} is at step {state.step}, not {command.step}")
        events = (command.event,) if command.event is not None else ()
        return Outcome(dataclasses.replace(state, step=command.step + 1, due_at=None), events)
    if isinstance(command, Fail):
        failed = Event(EventType.STEP_FAILED, command.step, command.extra.get("content", {}), command.extra.get("flow_run_id"),
                       {"status": "failed", "failure_reason": command.reason,
                        **{k: v for k, v in command.extra.items() if k not in ("content", "flow_run_id")}})
        move = Move(EnrollmentStatus.FAILED, Actor.FLOW, command.now,
                    extra={"step_index": command.step, "flow_run_id": command.extra.get("flow_run_id"), "failure_reason": command.reason})
        return Outcome(state, (failed,)).then(move)
    if isinstance(command, Reschedule):
        return _reschedule(state, command)
    if isinstance(command, Adopt):
        check(state.enrollment_id, state.status, ACTIVE, Actor.RECONCILER)
        event = Event(EventType.RECONCILED, state.step_index, {"source": Actor.PREFECT.value, **command.content}, command.run_id)
        dropped = (DropRun(state.run_id),) if command.take_back and state.run_id not in (None, command.run_id) else ()
        return Outcome(dataclasses.replace(state, run_id=command.run_id, epoch=state.epoch + 1), (event,), dropped)  # type: ignore[arg-type]
    if isinstance(command, RecordRun):
        if not state.is_open or state.run_id is not None:
            return Outcome(state)  # a finished enrollment's run only stops; a recorded one stays
        return Outcome(dataclasses.replace(state, run_id=command.run_id))
    if isinstance(command, Observe):
        return _observe(state, command)
    if isinstance(command, Unscheduled):
        if state.run_id is None and state.status == ACTIVE and command.idle > command.grace:
            why = "the enrollment never got its first run"
            return _repair(state, "schedule", why, Reschedule(
                state.due_at, Actor.RECONCILER, f"due (repaired: {why})", EventType.RECONCILED,
                {"reason": why, "run_state": None, "previous_run_id": None},
            ))
        return Outcome(state)
    raise TypeError(f"not a command: {command!r}")


def _move(state: State, command: Move) -> Outcome:
    to = command.to
    check(state.enrollment_id, state.status, to, command.actor, change=True)
    content = {"source": command.actor.value, **command.content}
    moved = dataclasses.replace(state, status=to)
    if to in FINISHED_STATUSES:
        moved = dataclasses.replace(moved, due_at=None)
    elif to == ACTIVE and state.status == PAUSED:
        due = due_after_pause(state, command.now)
        if due != state.due_at:
            moved = dataclasses.replace(moved, due_at=due)
            content["due_at"] = due.isoformat() if due else None
    extra = dict(command.extra)
    event = Event(
        command.event_type or STATUS_EVENTS[to], extra.pop("step_index", state.step_index), content,
        extra.pop("flow_run_id", state.run_id), extra,
    )
    outcome = Outcome(moved, (event,))
    # Prefect already shows an operator's change, and the flow's own run simply ends.
    follow = command.follow if command.follow is not None else command.actor not in (Actor.PREFECT, Actor.FLOW)
    if not follow:
        return outcome
    run_id = state.run_id
    resuming = to == ACTIVE and state.status == PAUSED
    go_on = Reschedule(_not_past(moved.due_at, command.now), Actor.API)
    if run_id is None:
        # Paused while its next run was being created, which never was: go on in a new one.
        # Otherwise the run on its way is suspended or cancelled as it is delivered.
        return outcome.then(go_on) if resuming and state.epoch > 0 else outcome
    if to in FINISHED_STATUSES:
        return _with(outcome, RunEffect(EffectKind.CANCEL, run_id))
    if to == PAUSED:
        return _with(outcome, RunEffect(EffectKind.SUSPEND, run_id))
    if resuming:
        if command.run is not None and command.run.live:
            return _with(outcome, RunEffect(EffectKind.RESUME, run_id, moved.due_at))
        # The run ended or vanished while paused (a suspend that timed out): go on in a new one.
        return outcome.then(go_on)
    return outcome


def due_after_pause(state: State, now: datetime) -> datetime | None:
    """When a resumed enrollment's pending run is due: a pause keeps what was left of a WAIT, so a
    3-day wait paused for a day ends a day later. Any other due time is a moment, not a wait (a
    start time, a send window opening) and stays as it was, as does a wait that had ended when it
    was paused (the run is due at once)."""
    if state.due_at is None or state.finished_steps or state.step_types[state.step] != "WAIT":
        return state.due_at
    if state.paused_at is None or state.due_at <= state.paused_at:
        return state.due_at
    return state.due_at + (now - state.paused_at)


def _reschedule(state: State, command: Reschedule) -> Outcome:
    # A move within ACTIVE: the table's PAUSED -> ACTIVE is a resume, not a new run.
    check(state.enrollment_id, state.status, ACTIVE, command.actor)
    if state.status != ACTIVE:
        raise InvalidStateError(f"enrollment {state.enrollment_id} is {state.status}; only an ACTIVE enrollment gets a new run")
    events = ()
    if command.event_type is not None:
        extra = dict(command.extra)
        events = (Event(command.event_type, state.step_index, command.content, extra.pop("flow_run_id", None), extra),)
    epoch = state.epoch + 1
    order = CreateRun(epoch, state.step, command.due, why_scheduled(state, command.why))
    return Outcome(dataclasses.replace(state, due_at=command.due, run_id=None, epoch=epoch), events, (order,))


def why_scheduled(state: State, why: str | None) -> str:
    """A scheduled run's state message: what an operator sees on its page in the Prefect UI."""
    if state.finished_steps:
        what = "every step done"
    else:
        kind = state.step_types[state.step]
        what = f"step {state.step} ({kind})"
        why = why or ("the wait ends" if kind == "WAIT" else "its time comes")
    return f"enrollment {state.enrollment_id}, {what}: runs when {why}" if why else f"enrollment {state.enrollment_id}, {what}"


def judge(status: str, run_id: uuid.UUID | None, run: Run, starting_run_id: uuid.UUID | None = None) -> tuple[str, str]:
    """(action, why): what the enrollment must do about what Prefect showed of its pending run.
    Actions: none, pause, resume, cancel, resume-run (the run suspended itself for a pause that a
    resume has since undone), adopt (a run started by hand takes over from an ended one),
    reschedule (the pending run cannot go on)."""
    if run_id is None or EnrollmentStatus(status) not in OPEN_STATUSES:
        return "none", ""
    gone = run.state is None or run.state in ENDED_STATES or run.stopped_by_runner or not run.ours
    if starting_run_id is not None and starting_run_id != run_id:
        # Someone started a fresh run (e.g. `prefect deployment run`): it carries the enrollment
        # on when the pending run cannot; otherwise the pending run keeps it.
        if gone:
            return "adopt", "a new run was started in Prefect and the pending run had ended"
        starting_run_id = None
    if status == ACTIVE:
        if run.cancel_requested and starting_run_id is not None:
            return "cancel", "the run was cancelled in Prefect before it started"
        if run.cancel_requested and run.state in KILLED_STATES:
            return "cancel", f"the run was cancelled in Prefect and its process ended {run.state}"
        if not run.ours:
            return "reschedule", "the pending run belongs to another enrollment or database"
        if run.state is None:
            return "reschedule", "the pending run is missing (deleted in Prefect)"
        if run.state == "PAUSED":
            if run.suspended_itself:
                return "resume-run", "the run suspended itself for a pause that a resume has since undone"
            return "pause", "the pending run was suspended in Prefect"
        if run.suspend_expired:
            return "pause", "the pending run was suspended in Prefect and its suspend expired"
        if run.stopped_by_runner:
            return "reschedule", "the pending run was stopped by its runner shutting down"
        if run.state in CANCELLED_STATES:
            return "cancel", "the pending run was cancelled in Prefect"
        if run.state in ENDED_STATES:
            return "reschedule", f"the pending run ended {run.state} without finishing its step"
        return "none", ""
    if starting_run_id is not None:
        # Without a resume in its history, a worker claimed the run before the pause suspended it
        # (Prefect lets a claimed run start from Suspended): the flow suspends itself again.
        return ("resume", "the suspended run was resumed in Prefect") if run.resumed else ("none", "")
    if run.stopped_by_runner:
        return "none", ""  # like an ended run: stays PAUSED; resuming starts a new run
    if run.state in NOT_STARTED and run.ours:
        # Our pause keeps the run Suspended; Scheduled again means someone resumed it.
        return "resume", "the suspended run was resumed in Prefect"
    if run.state in CANCELLED_STATES:
        return "cancel", "the suspended run was cancelled in Prefect"
    # RUNNING: the step in flight when the pause came finishes, then the flow suspends itself.
    # Gone or ended (e.g. an expired suspend): stays PAUSED; resuming starts a new run.
    return "none", ""


def _observe(state: State, command: Observe) -> Outcome:
    outcome = _judged(state, command)
    if outcome.state.status == PAUSED and command.run.resumes_in_place and outcome.state.run_id == state.run_id is not None:
        # Paused without a reschedule (Prefect's "Paused"): its Resume would leave it Running
        # with no process behind it. Suspended instead, its Resume reschedules it and reaches us
        # as a resume.
        outcome = _with(outcome, RunEffect(EffectKind.SUSPEND, state.run_id))
    return outcome


def _judged(state: State, command: Observe) -> Outcome:
    run, now = command.run, command.now
    action, why = judge(state.status, state.run_id, run, command.starting_run_id)
    content = {"reason": why, "run_state": run.state}
    by_prefect = {"actor": Actor.PREFECT, "now": now, "content": content}
    if action == "none":
        return Outcome(state)
    if action == "resume-run":
        event = Event(EventType.RECONCILED, state.step_index,
                      {"source": Actor.PREFECT.value, "action": "resume-run", "reason": why, "run_state": "PAUSED"}, state.run_id)
        assert state.run_id is not None
        return Outcome(state, (event,), (RunEffect(EffectKind.RESUME, state.run_id, state.due_at),), action, why)
    if action == "pause":
        return dataclasses.replace(_move(state, Move(PAUSED, **by_prefect)), action=action, why=why)
    if action == "resume":
        outcome = _move(state, Move(ACTIVE, **by_prefect))
        due = outcome.state.due_at
        if run.state in NOT_STARTED and due is not None and due > now:
            # Prefect's Resume makes the run due now: what was left of the wait is kept instead.
            outcome = _with(outcome, RunEffect(EffectKind.RESUME, state.run_id, due))  # type: ignore[arg-type]
        return dataclasses.replace(outcome, action=action, why=why)
    if action == "cancel":
        return dataclasses.replace(_move(state, Move(CANCELLED, **by_prefect)), action=action, why=why)
    previous = {"previous_run_id": str(state.run_id)}
    if action == "adopt":
        assert command.starting_run_id is not None
        outcome = _move(state, Move(ACTIVE, **by_prefect)) if state.status == PAUSED else Outcome(state)
        outcome = outcome.then(Adopt(command.starting_run_id, {**content, **previous}))
        return dataclasses.replace(outcome, action=action, why=why)
    due = _not_past(state.due_at, now)
    if state.repairs:
        # A run that keeps failing (a bug, the database down) is not replaced in a tight loop.
        backoff = now + timedelta(seconds=min(REPAIR_BACKOFF_SECONDS * 2 ** (state.repairs - 1), MAX_REPAIR_BACKOFF))
        due = max(due, backoff) if due else backoff
    return _repair(state, action, why, Reschedule(
        due, Actor.RECONCILER, f"due (repaired: {why})", EventType.RECONCILED, {**content, **previous},
    ))


def _repair(state: State, action: str, why: str, command: Reschedule) -> Outcome:
    outcome = _reschedule(state, command)
    return dataclasses.replace(outcome, action=action, why=why)


def _with(outcome: Outcome, effect: Effect) -> Outcome:
    return dataclasses.replace(outcome, effects=outcome.effects + (effect,))


def _not_past(due: datetime | None, now: datetime) -> datetime | None:
    return due if due and due > now else None
