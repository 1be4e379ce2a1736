"""Which status changes an enrollment may make, and who may cause each one.

The table is the rule; `lifecycle.store` refuses anything it does not list. A change from a
status to itself is a move within that status (next step, a wait, a new pending run).
"""

from __future__ import annotations

from enum import StrEnum

from followups.db.models import EnrollmentStatus
from followups.errors import InvalidStateError


class Actor(StrEnum):
    API = "api"  # the investor, through the Python API, the CLI, HTTP or a deal event
    FLOW = "flow"  # the follow-up-sequence flow and its step tasks
    PREFECT = "prefect"  # an operator acting on the run in the Prefect UI, CLI or API
    SELLER = "seller"  # the seller replied or opted out (provider webhooks)
    RECONCILER = "reconciler"  # repairs an enrollment whose pending run is gone or ended


ACTIVE = EnrollmentStatus.ACTIVE
PAUSED = EnrollmentStatus.PAUSED
COMPLETED = EnrollmentStatus.COMPLETED
FAILED = EnrollmentStatus.FAILED
CANCELLED = EnrollmentStatus.CANCELLED
STOPPED = EnrollmentStatus.STOPPED

# (from, to) -> who may cause it. `None` is "not enrolled yet".
TRANSITIONS: dict[tuple[EnrollmentStatus | None, EnrollmentStatus], frozenset[Actor]] = {
    (None, ACTIVE): frozenset({Actor.API}),
    # Within ACTIVE: the flow moves on or waits; a resume or a repair gives it a new pending run.
    (ACTIVE, ACTIVE): frozenset({Actor.FLOW, Actor.API, Actor.RECONCILER}),
    (ACTIVE, PAUSED): frozenset({Actor.API, Actor.PREFECT}),
    (PAUSED, ACTIVE): frozenset({Actor.API, Actor.PREFECT}),
    (ACTIVE, COMPLETED): frozenset({Actor.FLOW}),
    (ACTIVE, FAILED): frozenset({Actor.FLOW}),
    (ACTIVE, CANCELLED): frozenset({Actor.API, Actor.PREFECT}),
    (PAUSED, CANCELLED): frozenset({Actor.API, Actor.PREFECT}),
    # The seller replied or opted out; the investor's deal moved on (offer accepted or
    # rejected, deal closed).
    (ACTIVE, STOPPED): frozenset({Actor.SELLER, Actor.API}),
    (PAUSED, STOPPED): frozenset({Actor.SELLER, Actor.API}),
}

_VERBS = {ACTIVE: "resumed", PAUSED: "paused", CANCELLED: "cancelled", STOPPED: "stopped",
          COMPLETED: "completed", FAILED: "failed"}


def allowed(from_status: EnrollmentStatus | str | None, to_status: EnrollmentStatus | str, actor: Actor) -> bool:
    key = (EnrollmentStatus(from_status) if from_status is not None else None, EnrollmentStatus(to_status))
    return actor in TRANSITIONS.get(key, frozenset())


def check(
    enrollment_id: int | None,
    from_status: EnrollmentStatus | str | None,
    to_status: EnrollmentStatus | str,
    actor: Actor,
    *,
    change: bool = False,
) -> None:
    """Raise InvalidStateError unless `actor` may move the enrollment from one status to the other.

    With `change=True` the status itself must change: pausing a paused enrollment is refused
    even though moves within a status are allowed."""
    same = from_status is not None and EnrollmentStatus(from_status) == EnrollmentStatus(to_status)
    if allowed(from_status, to_status, actor) and not (change and same):
        return
    to_status = EnrollmentStatus(to_status)
    verb = _VERBS.get(to_status, str(to_status))
    sources = [str(f) for (f, t), actors in TRANSITIONS.items() if t == to_status and f not in (None, t) and actor in actors]
    if sources:
        article = "an" if sources[0][0] in "AEIOU" else "a"
        raise InvalidStateError(
            f"enrollment {enrollment_id} is {from_status}; only {article} {' or '.join(sources)} enrollment can be {verb}"
        )
    raise InvalidStateError(f"enrollment {enrollment_id} is {from_status}; it cannot be {verb} by {actor.value}")

