"""The product's Prefect deployments, defined once for every way of running them.

`prefect.yaml` declares the same deployments (and triggers) for `prefect deploy --all` + a
process work pool (tests/test_deployments.py keeps the two in step); `local_deployments()`
builds them for `serve` and for the fast worker (followups.worker).
"""

from __future__ import annotations

from prefect.deployments.runner import RunnerDeployment
from prefect.events import DeploymentEventTrigger
from prefect.types.entrypoint import EntrypointType

from followups.flows.enroll_on_offer import enroll_on_offer
from followups.flows.follow_up_sequence import follow_up_sequence
from followups.flows.sync_enrollment_state import sync_enrollment_state
from followups.offer_events import EVENT_NAME

DEPLOYMENT_NAME = "followups"
TAGS = ["followups"]


def offer_sent_trigger() -> DeploymentEventTrigger:
    return DeploymentEventTrigger(
        name="enroll when an offer is sent",
        expect={EVENT_NAME},
        match={"prefect.resource.id": "deal.*"},
        parameters={"offer": "{{ event.payload.offer }}"},
    )


def prefect_controls_trigger() -> DeploymentEventTrigger:
    """A follow-up run suspended or resumed in Prefect (UI, CLI): sync the enrollment."""
    return DeploymentEventTrigger(
        name="sync enrollment on suspend or resume",
        expect={"prefect.flow-run.Suspended", "prefect.flow-run.Resuming"},
        match_related={"prefect.resource.role": "flow", "prefect.resource.name": "follow-up-sequence"},
        parameters={"flow_run_id": "{{ event.resource.id }}"},
    )


def sequence_deployment(**overrides) -> RunnerDeployment:
    """follow-up-sequence/followups, with a module-path entrypoint (works from any directory)."""
    options = dict(
        name=DEPLOYMENT_NAME,
        tags=TAGS,
        description="Runs one enrolled follow-up sequence from its current step.",
        entrypoint_type=EntrypointType.MODULE_PATH,
    )
    options.update(overrides)
    return follow_up_sequence.to_deployment(**options)


def local_deployments() -> list[RunnerDeployment]:
    return [
        sequence_deployment(),
        enroll_on_offer.to_deployment(
            name=DEPLOYMENT_NAME,
            description="Enrolls a deal when a deal.offer.sent event arrives.",
            entrypoint_type=EntrypointType.MODULE_PATH,
            triggers=[offer_sent_trigger()],
        ),
        sync_enrollment_state.to_deployment(
            name=DEPLOYMENT_NAME,
            description="Brings an enrollment along when its run is suspended or resumed in Prefect.",
            entrypoint_type=EntrypointType.MODULE_PATH,
            triggers=[prefect_controls_trigger()],
        ),
    ]
