"""`pause-enrollment`, `resume-enrollment`, `cancel-enrollment`: the Python API's controls as
flows, so an operator can act on an enrollment from Prefect ("Run" on the deployment).

The Prefect UI offers Pause only on a running run; an enrollment that is waiting has a
Scheduled run, so pausing it from Prefect means running `pause-enrollment` with its id. Each
flow does exactly what `followups pause|resume|cancel` does (`followups.control`), so the
enrollment and its pending run change together. A refused control (e.g. pausing a paused
enrollment, an unknown id) fails the run with the reason.

The `Args:` sections are what the Prefect UI shows under the parameter.
"""

from __future__ import annotations

from typing import Annotated

from prefect import flow, get_run_logger
from pydantic import Field

from followups import control

EnrollmentId = Annotated[int, Field(gt=0)]


def _done(action: str, enrollment_id: int, status: str) -> str:
    get_run_logger().info("enrollment %s %s: now %s", enrollment_id, action, status)
    return status


@flow(name="pause-enrollment", flow_run_name="pause enrollment {enrollment_id}", persist_result=False)
def pause_enrollment(enrollment_id: EnrollmentId) -> str:
    """Pause an enrollment: its pending run is suspended and nothing is sent until it is
    resumed. A step being sent finishes first.

    Args:
        enrollment_id: The enrollment's id: `followups status`, the `enrollment:<id>` tag on its runs.
    """
    return _done("paused", enrollment_id, control.pause_enrollment(enrollment_id).status)


@flow(name="resume-enrollment", flow_run_name="resume enrollment {enrollment_id}", persist_result=False)
def resume_enrollment(enrollment_id: EnrollmentId) -> str:
    """Resume a paused enrollment; what is left of its wait is kept.

    Args:
        enrollment_id: The enrollment's id: `followups status`, the `enrollment:<id>` tag on its runs.
    """
    return _done("resumed", enrollment_id, control.resume_enrollment(enrollment_id).status)


@flow(name="cancel-enrollment", flow_run_name="cancel enrollment {enrollment_id}", persist_result=False)
def cancel_enrollment(enrollment_id: EnrollmentId) -> str:
    """Cancel an enrollment for good: its pending run is cancelled and nothing more is sent.

    Args:
        enrollment_id: The enrollment's id: `followups status`, the `enrollment:<id>` tag on its runs.
    """
    return _done("cancelled", enrollment_id, control.cancel_enrollment(enrollment_id).status)
