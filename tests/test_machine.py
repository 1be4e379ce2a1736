"""The enrollment machine, alone: no PostgreSQL, no Prefect. The reconciliation rule for every
run state an operator can set, every (state, command) pair, and random command sequences that
must keep the invariants: at most one live run, a finished enrollment never gets a new run, no
step is done twice, every effect names the current epoch or run."""

from __future__ import annotations

import dataclasses
import itertools
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from followups.db.models import FINISHED_STATUSES, EnrollmentStatus, EventType
from followups.errors import InvalidStateError
from followups.lifecycle import machine
from followups.lifecycle.machine import (
    Adopt, Advance, CreateRun, DropRun, Fail, Move, Observe, RecordRun, Reschedule, Run, RunEffect, State, Unscheduled,
)
from followups.lifecycle.transitions import Actor


class Action:
    NONE, PAUSE, RESUME, CANCEL, RESCHEDULE, ADOPT = "none", "pause", "resume", "cancel", "reschedule", "adopt"
    RESUME_RUN, SCHEDULE = "resume-run", "schedule"


def decide(status, run_id, run_state, *, starting_run_id=None, run_is_ours=True, resumed_in_prefect=False, **facts):
    """The rule as the callers see it: what Prefect showed of the pending run -> the action."""
    run = Run(run_state, ours=run_is_ours, resumed=resumed_in_prefect, **facts)
    return machine.judge(status, run_id, run, starting_run_id)[0]


RUN = uuid.uuid4()
OTHER_RUN = uuid.uuid4()


@pytest.mark.parametrize(
    "status,run_state,starting,expected",
    [
        ("ACTIVE", "SCHEDULED", None, Action.NONE),
        ("ACTIVE", "RUNNING", None, Action.NONE),
        ("ACTIVE", "PENDING", None, Action.NONE),
        ("ACTIVE", "PAUSED", None, Action.PAUSE),
        ("ACTIVE", "CANCELLED", None, Action.CANCEL),
        ("ACTIVE", "CANCELLING", None, Action.CANCEL),
        ("ACTIVE", None, None, Action.RESCHEDULE),
        ("ACTIVE", "COMPLETED", None, Action.RESCHEDULE),
        ("ACTIVE", "FAILED", None, Action.RESCHEDULE),
        ("ACTIVE", "CRASHED", None, Action.RESCHEDULE),
        ("PAUSED", "PAUSED", None, Action.NONE),
        ("PAUSED", "SCHEDULED", None, Action.RESUME),
        ("PAUSED", "PENDING", None, Action.RESUME),
        ("PAUSED", "RUNNING", None, Action.NONE),
        ("PAUSED", "RUNNING", RUN, Action.NONE),  # no resume in its history: claimed before the suspend
        ("PAUSED", "RUNNING", OTHER_RUN, Action.NONE),
        ("PAUSED", "CANCELLED", None, Action.CANCEL),
        ("PAUSED", "FAILED", None, Action.NONE),  # an expired suspend: stays paused
        ("PAUSED", None, None, Action.NONE),  # deleted while paused: resume starts a new run
        *[(s.value, state, None, Action.NONE) for s in sorted(FINISHED_STATUSES) for state in ("SCHEDULED", "PAUSED", None)],
    ],
)
def test_the_reconciliation_rule(status, run_state, starting, expected):
    assert decide(status, RUN, run_state, starting_run_id=starting) == expected


def test_an_expired_suspend_pauses_an_active_enrollment_and_leaves_a_paused_one():
    assert decide("ACTIVE", RUN, "FAILED", suspend_expired=True) == Action.PAUSE
    assert decide("PAUSED", RUN, "FAILED", suspend_expired=True) == Action.NONE
    assert decide("PAUSED", RUN, "FAILED", starting_run_id=OTHER_RUN, suspend_expired=True) == Action.ADOPT


def test_a_run_that_suspended_itself_is_resumed_when_its_enrollment_is_active_again():
    # The flow suspends itself only for a PAUSED enrollment: ACTIVE now means a resume came after.
    assert decide("ACTIVE", RUN, "PAUSED", suspended_itself=True) == Action.RESUME_RUN
    assert decide("ACTIVE", RUN, "PAUSED") == Action.PAUSE  # an operator's suspend
    assert decide("PAUSED", RUN, "PAUSED", suspended_itself=True) == Action.NONE


def test_a_run_cancelled_before_its_claimed_start_cancels_the_enrollment():
    assert decide("ACTIVE", RUN, "RUNNING", starting_run_id=RUN, cancel_requested=True) == Action.CANCEL
    assert decide("ACTIVE", RUN, "RUNNING", starting_run_id=RUN) == Action.NONE
    # A run killed for a cancel may report Crashed (or Failed) before its runner reports Cancelled.
    assert decide("ACTIVE", RUN, "CRASHED", cancel_requested=True) == Action.CANCEL
    assert decide("ACTIVE", RUN, "FAILED", cancel_requested=True) == Action.CANCEL
    assert decide("ACTIVE", RUN, "CRASHED") == Action.RESCHEDULE
    # Read only for the pending run starting: a run started by hand beside it only goes along.
    assert decide("ACTIVE", RUN, "RUNNING", starting_run_id=OTHER_RUN, cancel_requested=True) == Action.NONE


def test_a_run_knows_its_own_suspend_from_an_operators():
    from types import SimpleNamespace

    from prefect.states import Running, Suspended

    from followups.prefect_runs import self_pause_key, suspended_itself

    def run(state):
        return SimpleNamespace(state=state)

    assert suspended_itself(run(Suspended(pause_key=self_pause_key(3))))
    assert suspended_itself(run(Suspended(pause_key="pause-1-1764194738000000000")))  # the older key
    assert not suspended_itself(run(Suspended(pause_key="followups-1a2b3c4d")))  # our API, from outside
    assert not suspended_itself(run(Suspended()))
    assert not suspended_itself(run(Running()))
    assert not suspended_itself(None)


@pytest.mark.parametrize("run_state", ["RUNNING", "PAUSED"])
def test_a_paused_enrollments_run_goes_on_only_when_its_history_shows_a_resume(run_state):
    # A worker that claimed the run before the pause suspended it starts it anyway: that is no
    # resume, and the flow must suspend itself again rather than turn the enrollment ACTIVE.
    assert decide("PAUSED", RUN, run_state, starting_run_id=RUN) == Action.NONE
    assert decide("PAUSED", RUN, run_state, starting_run_id=RUN, resumed_in_prefect=True) == Action.RESUME
    # A run started by hand alongside a live pending run only goes along, resumed or not.
    assert decide("PAUSED", RUN, run_state, starting_run_id=OTHER_RUN, resumed_in_prefect=True) == Action.NONE


def test_a_run_stopped_by_its_runner_shutting_down_is_repaired_not_cancelled():
    assert decide("ACTIVE", RUN, "CANCELLED", stopped_by_runner=True) == Action.RESCHEDULE
    assert decide("ACTIVE", RUN, "CANCELLED") == Action.CANCEL  # an operator's cancel
    assert decide("PAUSED", RUN, "CANCELLED", stopped_by_runner=True) == Action.NONE  # stays paused
    assert decide("PAUSED", RUN, "CANCELLED") == Action.CANCEL
    # Like an ended run, it lets a run started by hand take the enrollment over.
    assert decide("ACTIVE", RUN, "CANCELLED", starting_run_id=OTHER_RUN, stopped_by_runner=True) == Action.ADOPT
    assert decide("ACTIVE", RUN, "CANCELLED", starting_run_id=OTHER_RUN) == Action.CANCEL


@pytest.mark.parametrize("status", list(EnrollmentStatus))
def test_an_enrollment_without_a_pending_run_has_nothing_to_reconcile(status):
    assert decide(status, None, None) == Action.NONE


NOW = datetime(2026, 3, 8, 6, 30, tzinfo=UTC)  # hours before a DST change in the US
STEPS = ("EMAIL", "WAIT", "EMAIL", "WAIT", "SMS")
RUN_STATES = (None, "SCHEDULED", "PENDING", "RUNNING", "PAUSED", "CANCELLING", "CANCELLED", "COMPLETED", "FAILED", "CRASHED")


def state(status=EnrollmentStatus.ACTIVE, step=0, due=None, run_id=RUN, epoch=1, **more) -> State:
    return State(1, EnrollmentStatus(status), step, STEPS, due, run_id, epoch, **more)


def test_an_active_enrollment_without_a_run_is_scheduled_only_after_its_grace():
    idle = state(run_id=None, epoch=0)
    assert machine.apply(idle, Unscheduled(301, 300)).action == Action.SCHEDULE
    assert machine.apply(idle, Unscheduled(299, 300)).action == Action.NONE
    assert machine.apply(state(EnrollmentStatus.PAUSED, run_id=None), Unscheduled(10**6, 300)).action == Action.NONE
    assert machine.apply(state(EnrollmentStatus.COMPLETED, run_id=None), Unscheduled(10**6, 300)).action == Action.NONE
    assert machine.apply(state(), Unscheduled(10**6, 300)).action == Action.NONE  # it has its run


def test_a_pause_keeps_what_is_left_of_a_wait():
    # Paused a day into a 3-day wait, resumed 5 hours later: the wait ends 5 hours later too.
    waiting = state(EnrollmentStatus.PAUSED, step=1, due=NOW + timedelta(days=2), paused_at=NOW)
    resumed = machine.apply(waiting, Move(EnrollmentStatus.ACTIVE, Actor.API, NOW + timedelta(hours=5), run=Run("PAUSED")))
    assert resumed.state.due_at == NOW + timedelta(days=2, hours=5)
    assert resumed.effects == (RunEffect(machine.EffectKind.RESUME, RUN, NOW + timedelta(days=2, hours=5)),)
    # A send time is a moment, not a wait: it stays.
    sending = dataclasses.replace(waiting, step=2)
    assert machine.apply(sending, Move(EnrollmentStatus.ACTIVE, Actor.API, NOW + timedelta(hours=5), run=Run("PAUSED"))).state.due_at == waiting.due_at


def test_a_resume_whose_run_ended_while_paused_goes_on_in_a_new_run_of_a_new_epoch():
    paused = state(EnrollmentStatus.PAUSED, step=2, epoch=4)
    for run in (Run("FAILED", suspend_expired=True), Run(None)):
        outcome = machine.apply(paused, Move(EnrollmentStatus.ACTIVE, Actor.API, NOW, run=run))
        assert (outcome.state.status, outcome.state.run_id, outcome.state.epoch) == (EnrollmentStatus.ACTIVE, None, 5)
        assert outcome.effects == (CreateRun(5, 2, None, "enrollment 1, step 2 (EMAIL): runs when its time comes"),)


def test_an_operators_pause_of_a_run_that_would_resume_in_place_is_made_a_suspend():
    outcome = machine.apply(state(), Observe(Run("PAUSED", resumes_in_place=True), NOW))
    assert outcome.state.status == EnrollmentStatus.PAUSED
    assert [event.type for event in outcome.events] == [EventType.PAUSED]
    assert outcome.effects == (RunEffect(machine.EffectKind.SUSPEND, RUN),)
    assert machine.apply(state(), Observe(Run("PAUSED"), NOW)).effects == ()  # a Suspended run resumes properly
    # Already PAUSED through the API when an operator made the run "Paused": the same.
    paused = machine.apply(state(EnrollmentStatus.PAUSED), Observe(Run("PAUSED", resumes_in_place=True), NOW))
    assert paused.state == state(EnrollmentStatus.PAUSED) and paused.effects == (RunEffect(machine.EffectKind.SUSPEND, RUN),)


def test_repairs_of_one_step_back_off():
    gone = Observe(Run(None), NOW)
    assert machine.apply(state(), gone).state.due_at is None  # the first repair is due at once
    assert machine.apply(state(repairs=1), gone).state.due_at == NOW + timedelta(seconds=30)
    assert machine.apply(state(repairs=3), gone).state.due_at == NOW + timedelta(seconds=120)
    assert machine.apply(state(repairs=30), gone).state.due_at == NOW + timedelta(seconds=3600)


def test_a_run_started_by_hand_takes_over_only_from_an_ended_pending_run():
    mine = uuid.uuid4()
    adopted = machine.apply(state(EnrollmentStatus.PAUSED), Observe(Run("COMPLETED"), NOW, starting_run_id=mine))
    assert (adopted.state.status, adopted.state.run_id, adopted.state.epoch) == (EnrollmentStatus.ACTIVE, mine, 2)
    assert [event.type for event in adopted.events] == [EventType.RESUMED, EventType.RECONCILED]
    assert machine.apply(state(), Observe(Run("SCHEDULED"), NOW, starting_run_id=mine)).state == state()


def test_a_handover_suspended_by_an_operator_takes_its_run_back_and_drops_the_next():
    handed_over = uuid.uuid4()
    outcome = machine.Outcome(state(run_id=handed_over, epoch=3)).then(Adopt(RUN, {}, take_back=True))
    outcome = outcome.then(Move(EnrollmentStatus.PAUSED, Actor.PREFECT, NOW, follow=False))
    assert (outcome.state.status, outcome.state.run_id, outcome.state.epoch) == (EnrollmentStatus.PAUSED, RUN, 4)
    assert outcome.effects == (DropRun(handed_over),)


# -- every (state, command) pair, and random sequences --------------------------------------------


def commands(now: datetime = NOW) -> list[machine.Command]:
    other = uuid.UUID(int=7)
    found: list[machine.Command] = []
    for to, actor in itertools.product(EnrollmentStatus, Actor):
        found += [Move(to, actor, now, run=run) for run in (None, Run("PAUSED"), Run(None))]
    for run_state in RUN_STATES:
        for facts in ({}, {"ours": False}, {"suspend_expired": True}, {"stopped_by_runner": True}, {"resumed": True},
                      {"suspended_itself": True}, {"cancel_requested": True}, {"resumes_in_place": True}):
            run = Run(run_state, **facts)
            found += [Observe(run, now), Observe(run, now, starting_run_id=RUN), Observe(run, now, starting_run_id=other)]
    found += [Advance(step) for step in range(len(STEPS) + 1)]
    found += [Fail(step, "boom", now) for step in range(len(STEPS))]
    found += [Reschedule(now + timedelta(days=3), actor) for actor in Actor] + [Reschedule(None, Actor.FLOW)]
    found += [Adopt(other, {}), Adopt(other, {}, take_back=True), RecordRun(other), Unscheduled(10**6, 300)]
    return found


STATES = [
    state(status, step, due, run_id, epoch, paused_at=NOW - timedelta(hours=1), repairs=repairs)
    for status in EnrollmentStatus
    for step in (0, 1, len(STEPS))
    for due, run_id, epoch in ((None, None, 0), (NOW + timedelta(days=1), RUN, 3), (NOW - timedelta(hours=1), None, 3))
    for repairs in (0, 2)
]

# What each command may change: anything else it changes is a defect.
CHANGES = {
    Move: {"status", "due_at", "run_id", "epoch"},  # a new run (and epoch) only when a resume must go on in one
    Advance: {"step", "due_at"},
    Fail: {"status", "due_at"},
    Reschedule: {"due_at", "run_id", "epoch"},
    Adopt: {"run_id", "epoch"},
    RecordRun: {"run_id"},
    Observe: {"status", "due_at", "run_id", "epoch"},
    Unscheduled: {"due_at", "run_id", "epoch"},
}


def check_invariants(before: State, command: machine.Command, outcome: machine.Outcome) -> None:
    after = outcome.state
    changed = {f.name for f in dataclasses.fields(State) if getattr(before, f.name) != getattr(after, f.name)}
    assert changed <= CHANGES[type(command)], (command, changed)
    assert after.epoch >= before.epoch
    assert after.step >= before.step
    if before.status in FINISHED_STATUSES:
        assert after == before and not outcome.effects  # a finished enrollment never moves again
    creates = [effect for effect in outcome.effects if isinstance(effect, CreateRun)]
    assert len(creates) <= 1  # at most one new run
    for effect in creates:
        # A new run only for an ACTIVE enrollment, named by its new epoch, for its current step.
        assert after.status == EnrollmentStatus.ACTIVE and after.run_id is None
        assert effect.epoch == after.epoch > before.epoch and effect.step == after.step
    if after.run_id != before.run_id and after.run_id is not None and not isinstance(command, RecordRun):
        assert after.epoch > before.epoch  # another run holds the enrollment: the old one is stale
    for effect in outcome.effects:
        if isinstance(effect, RunEffect):
            assert effect.run_id == after.run_id is not None  # only the current run is acted on
            if effect.kind is machine.EffectKind.CANCEL:
                assert after.status in FINISHED_STATUSES
        if isinstance(effect, DropRun):
            assert effect.run_id != after.run_id
    for event in outcome.events:
        assert isinstance(event.type, EventType)
    if before.status != after.status:
        assert outcome.events, "every status change writes its event"


@pytest.mark.parametrize("before", STATES, ids=lambda s: f"{s.status}-{s.step}-{s.epoch}-{s.run_id is not None}-{s.repairs}")
def test_every_state_and_command_pair_keeps_the_invariants(before):
    for command in commands():
        try:
            outcome = machine.apply(before, command)
        except InvalidStateError:
            continue
        check_invariants(before, command, outcome)


def test_the_machine_refuses_exactly_what_the_transition_table_refuses():
    from followups.lifecycle.transitions import allowed

    for before, to, actor in itertools.product(STATES, EnrollmentStatus, Actor):
        command = Move(to, actor, NOW)
        legal = allowed(before.status, to, actor) and before.status != to
        try:
            machine.apply(before, command)
        except InvalidStateError:
            assert not legal
        else:
            assert legal


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(commands()), max_size=25), st.sampled_from(STATES))
def test_random_command_sequences_keep_the_invariants(sequence, start):
    current = start
    done_steps: set[int] = set()
    epochs_created: set[int] = set()
    for command in sequence:
        try:
            outcome = machine.apply(current, command)
        except InvalidStateError:
            continue
        check_invariants(current, command, outcome)
        if isinstance(command, Advance):
            assert command.step not in done_steps  # no step is done twice
            done_steps.add(command.step)
        for effect in outcome.effects:
            if isinstance(effect, CreateRun):
                assert effect.epoch not in epochs_created  # one run per epoch: at most one live
                epochs_created.add(effect.epoch)
        current = outcome.state
