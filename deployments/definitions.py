"""The product's Prefect deployments, defined once for every way of running them.

`prefect.yaml` declares the same deployment for `prefect deploy --all` + a process work pool;
`local_deployments()` builds it for `serve` (one command, no work pool) and for the tests.
"""

from __future__ import annotations

from prefect.deployments.runner import RunnerDeployment
from prefect.types.entrypoint import EntrypointType

from followups.flows.follow_up_sequence import follow_up_sequence

DEPLOYMENT_NAME = "followups"
TAGS = ["followups"]


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
    return [sequence_deployment()]
