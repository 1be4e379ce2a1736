"""The product's Prefect deployments, defined once for every way of running them.

`prefect.yaml` declares the same deployments (and triggers and schedule) for `prefect deploy
--all` + a process work pool (tests/test_deployments.py keeps the two in step);
`local_deployments()` builds them for `serve` and for the fast worker (followups.worker).

Every deployment is named after FOLLOWUPS_DEPLOYMENT_NAME (`follow-up-sequence/<name>`: all of
them `<name>`), so two followups databases sharing one Prefect server each serve their own.
"""

from __future__ import annotations

from datetime import timedelta

from prefect.client.schemas.actions import DeploymentScheduleCreate
from prefect.client.schemas.schedules import IntervalSchedule
from prefect.deployments.runner import RunnerDeployment
from prefect.events import DeploymentEventTrigger
from prefect.types.entrypoint import EntrypointType

from followups.flows.enroll_on_offer import enroll_on_offer
from followups.flows.follow_up_sequence import follow_up_sequence
from followups.flows.pause_enrollment import cancel_enrollment, pause_enrollment, resume_enrollment
from followups.flows.reconcile_enrollments import reconcile_enrollments
from followups.flows.stop_on_deal_event import stop_on_deal_event
from followups.flows.sync_enrollment_state import sync_enrollment_state
from followups.deal_events import EVENT_NAMES as DEAL_EVENT_NAMES
from followups.offer_events import EVENT_NAME
from followups.settings import Settings, get_settings

TAGS = ["followups"]
# Run states an operator (or a crash) gives a follow-up run that the enrollment must follow.
SYNCED_RUN_EVENTS = {
    "prefect.flow-run.Suspended",
    # A pause set through Prefect's API (type PAUSED, name "Paused") rather than the UI's Suspend.
    "prefect.flow-run.Paused",
    # Not "Resuming": a resumed run is due at once and records the resume itself when it starts
    # (a sync run beside it would cost a third flow run per resume); the sweep catches the rest.
    "prefect.flow-run.Cancelling",
    "prefect.flow-run.Cancelled",
    "prefect.flow-run.Failed",
    "prefect.flow-run.Crashed",
}


def deployment_name() -> str:
    """The name of every deployment served here: FOLLOWUPS_DEPLOYMENT_NAME after the `/`."""
    return get_settings().served_deployment_name


def offer_sent_trigger() -> DeploymentEventTrigger:
    return DeploymentEventTrigger(
        name="enroll when an offer is sent",
        expect={EVENT_NAME},
        match={"prefect.resource.id": "deal.*"},
        parameters={"offer": "{{ event.payload.offer }}"},
    )


def deal_event_trigger() -> DeploymentEventTrigger:
    return DeploymentEventTrigger(
        name="stop follow-ups when an offer is accepted or rejected or the deal closes",
        expect=set(DEAL_EVENT_NAMES.values()),
        match={"prefect.resource.id": "deal.*"},
        parameters={"deal_event": "{{ event.payload.deal_event }}", "event": "{{ event.event }}"},
    )


def prefect_controls_trigger(name: str) -> DeploymentEventTrigger:
    """A follow-up run of this install's deployment suspended or cancelled in Prefect
    (UI, CLI), or failed or crashed: sync its enrollment now rather than at the next sweep.
    Matching the deployment's name keeps another database's runs to its own sync deployment."""
    return DeploymentEventTrigger(
        name="sync enrollment when its run is suspended, cancelled or fails",
        expect=SYNCED_RUN_EVENTS,
        match_related=[
            {"prefect.resource.role": "flow", "prefect.resource.name": "follow-up-sequence"},
            {"prefect.resource.role": "deployment", "prefect.resource.name": name},
        ],
        parameters={"flow_run_id": "{{ event.resource.id }}"},
    )


def reconcile_schedule(interval_seconds: int) -> DeploymentScheduleCreate:
    """0 keeps the schedule, switched off: re-serving then turns it off in Prefect as well
    (an empty schedule list would leave the one registered before)."""
    seconds = interval_seconds or Settings.model_fields["reconcile_interval_seconds"].default
    return DeploymentScheduleCreate(schedule=IntervalSchedule(interval=timedelta(seconds=seconds)), active=interval_seconds > 0)


def sequence_deployment(**overrides) -> RunnerDeployment:
    """follow-up-sequence/<name>, with a module-path entrypoint (works from any directory)."""
    options = dict(
        name=deployment_name(),
        tags=TAGS,
        description="Runs one enrolled follow-up sequence from its current step.",
        entrypoint_type=EntrypointType.MODULE_PATH,
    )
    options.update(overrides)
    return follow_up_sequence.to_deployment(**options)


def local_deployments() -> list[RunnerDeployment]:
    name = deployment_name()
    module = EntrypointType.MODULE_PATH
    return [
        sequence_deployment(),
        enroll_on_offer.to_deployment(
            name=name,
            description="Enrolls a deal when a deal.offer.sent event arrives.",
            entrypoint_type=module,
            triggers=[offer_sent_trigger()],
        ),
        stop_on_deal_event.to_deployment(
            name=name,
            description="Stops a deal's open follow-ups when deal.offer.accepted, deal.offer.rejected or deal.closed arrives.",
            entrypoint_type=module,
            triggers=[deal_event_trigger()],
        ),
        sync_enrollment_state.to_deployment(
            name=name,
            description="Brings an enrollment along when its run is suspended, cancelled, fails or crashes in Prefect.",
            entrypoint_type=module,
            triggers=[prefect_controls_trigger(name)],
        ),
        reconcile_enrollments.to_deployment(
            name=name,
            description="Checks every open enrollment against its pending Prefect run and repairs what disagrees (a run deleted, cancelled or crashed in Prefect).",
            entrypoint_type=module,
            schedules=[reconcile_schedule(get_settings().reconcile_interval_seconds)],
        ),
        pause_enrollment.to_deployment(
            name=name,
            description="Pauses an enrollment (waiting or running): its pending run is suspended until resumed.",
            entrypoint_type=module,
        ),
        resume_enrollment.to_deployment(
            name=name,
            description="Resumes a paused enrollment; what is left of its wait is kept.",
            entrypoint_type=module,
        ),
        cancel_enrollment.to_deployment(
            name=name,
            description="Cancels an enrollment for good: its pending run is cancelled, nothing more is sent.",
            entrypoint_type=module,
        ),
    ]
