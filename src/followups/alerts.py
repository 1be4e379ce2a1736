"""Alerts through Prefect automations: the events the product emits when something needs a
person, and the automations (`followups automations apply`) that notify through a Prefect
notification block.

Three things page an operator:
- a follow-up run of this database Failed or Crashed (Prefect's own flow-run events);
- an enrollment FAILED (a step failed for good; its run itself ends Completed, "Enrollment
  failed", so Prefect alone would not notice);
- the reconciler found stranded enrollments (their pending run was deleted, cancelled or crashed).

Names and matches carry the database's tag, so two followups databases on one Prefect server
keep separate automations and never alert on each other's runs. Events carry ids, never a
seller's details.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from followups.errors import InvalidInputError
from followups.identity import database_tag

if TYPE_CHECKING:
    from prefect.automations import Automation

ENROLLMENT_FAILED = "followups.enrollment.failed"
STRANDED_FOUND = "followups.reconciler.stranded"
RUN_FAILED_EVENTS = ("prefect.flow-run.Failed", "prefect.flow-run.Crashed")


def _emit(event: str, resource: dict[str, str], payload: dict[str, Any]) -> None:
    from prefect.events import emit_event

    emit_event(event=event, resource=resource, payload=payload)


def enrollment_failed(enrollment_id: int, deal_ref: str, step_index: int, reason: str) -> None:
    """Announce an enrollment that ended FAILED (called by the flow that failed it)."""
    db_tag = database_tag()
    _emit(
        ENROLLMENT_FAILED,
        {
            "prefect.resource.id": f"followups.enrollment.{db_tag.split(':')[1]}.{enrollment_id}",
            "prefect.resource.name": f"enrollment {enrollment_id} (deal {deal_ref})",
            "followups.database": db_tag,
        },
        {"enrollment_id": enrollment_id, "deal": deal_ref, "step": step_index, "reason": reason[:300]},
    )


def stranded_found(repaired: dict[str, int], enrollment_ids: list[int]) -> None:
    """Announce that a reconcile sweep found (and repaired, unless a dry run) stranded enrollments."""
    db_tag = database_tag()
    _emit(
        STRANDED_FOUND,
        {
            "prefect.resource.id": f"followups.reconciler.{db_tag.split(':')[1]}",
            "prefect.resource.name": "reconcile enrollments",
            "followups.database": db_tag,
        },
        {"count": len(enrollment_ids), "actions": repaired, "enrollment_ids": enrollment_ids[:50]},
    )


def announce_if_failed(enrollment_id: int, step_index: int) -> bool:
    """After a step raised: if it failed the enrollment for good, announce it. A step that raised
    for another reason (the database went away) leaves the enrollment open and says nothing."""
    from sqlalchemy import select

    from followups.db.models import Deal, Enrollment, EnrollmentStatus, EventType, FollowUpEvent
    from followups.db.session import session_scope

    with session_scope(read_only=True) as session:
        row = session.execute(
            select(Enrollment.status, Deal.external_id).join(Deal, Deal.id == Enrollment.deal_id)
            .where(Enrollment.id == enrollment_id)
        ).first()
        if row is None or row.status != EnrollmentStatus.FAILED:
            return False
        reason = session.scalar(
            select(FollowUpEvent.failure_reason)
            .where(FollowUpEvent.enrollment_id == enrollment_id, FollowUpEvent.event_type == EventType.STEP_FAILED)
            .order_by(FollowUpEvent.id.desc()).limit(1)
        )
    enrollment_failed(enrollment_id, row.external_id, step_index, reason or "step failed")
    return True


@dataclass(frozen=True)
class Applied:
    name: str
    action: str  # created | updated

    def as_dict(self) -> dict[str, str]:
        return {"name": self.name, "action": self.action}


def _block_document_id(client: Any, reference: str) -> Any:
    from prefect.exceptions import ObjectNotFound

    slug, _, name = reference.partition("/")
    try:
        return client.read_block_document_by_name(name=name, block_type_slug=slug).id
    except ObjectNotFound:
        raise InvalidInputError(
            f"no Prefect block '{reference}'; create it in the Prefect UI (Blocks) or with the Python API",
            "notification_block",
        ) from None


def zombie_rule(db_tag: str, silent_seconds: int) -> Automation:
    """A running follow-up run whose heartbeats stopped (its runner was killed, its machine
    lost) is marked Crashed, Prefect's own recipe for such runs; the sync trigger then repairs
    its enrollment. Without it the run would stay Running for ever and hold the enrollment.

    A claimed run is the same case one step earlier: Prefect's runner claims a run (Pending, then
    Pending named "Submitting") up to 10 s before it is due and starts its process then, and a
    process killed just after it proposed Running may never deliver its first heartbeat. So these
    states start the silence too; every executor the product ships sends heartbeats (`followups
    serve`, the fast worker, prefect.yaml's process pool). InfrastructurePending does not: a
    container platform may take minutes to start a run, legitimately."""
    from prefect.automations import Automation
    from prefect.client.schemas.objects import StateType
    from prefect.events.actions import ChangeFlowRunState
    from prefect.events.schemas.automations import EventTrigger, Posture

    return Automation(
        name=f"followups {db_tag.split(':')[1]}: crash follow-up runs whose heartbeat stopped",
        description=f"No heartbeat nor state change for {silent_seconds} s from a running or claimed (Pending) "
        "follow-up run: its process or runner is gone. Marked Crashed so that its enrollment is repaired.",
        trigger=EventTrigger(
            # Events are named after the state's name, not its type.
            after={
                "prefect.flow-run.heartbeat", "prefect.flow-run.Pending", "prefect.flow-run.Submitting",
                "prefect.flow-run.Running",
            },
            # Any later event of the run (a heartbeat, any state: our runs end in states named
            # "Waiting", "Stopped", ...) shows it alive or finished.
            expect={"prefect.flow-run.*"},
            match={"prefect.resource.id": "prefect.flow-run.*"},
            match_related=[
                {"prefect.resource.role": "flow", "prefect.resource.name": "follow-up-sequence"},
                {"prefect.resource.id": f"prefect.tag.{db_tag}"},
            ],
            for_each={"prefect.resource.id"},
            posture=Posture.Proactive,
            threshold=1,
            within=silent_seconds,
        ),
        actions=[ChangeFlowRunState(
            state=StateType.CRASHED,
            message=f"no heartbeat nor state change for {silent_seconds} s: the process or runner holding it is gone",
        )],
    )


def automations(db_tag: str, block_document_id: Any, silent_seconds: int = 90) -> list[Automation]:
    """The automations of this database, as Prefect objects (pure: nothing is sent). Without a
    notification block only the zombie-run rule, which needs none."""
    from prefect.automations import Automation
    from prefect.events.actions import SendNotification
    from prefect.events.schemas.automations import EventTrigger, Posture

    prefix = f"followups {db_tag.split(':')[1]}"
    if block_document_id is None:
        return [zombie_rule(db_tag, silent_seconds)]

    def notify(subject: str, body: str) -> list[SendNotification]:
        return [SendNotification(block_document_id=block_document_id, subject=f"[{prefix}] {subject}", body=body)]

    def reactive(expect: set[str], **matches: Any) -> EventTrigger:
        return EventTrigger(expect=expect, posture=Posture.Reactive, threshold=1, within=0, **matches)

    return [
        zombie_rule(db_tag, silent_seconds),
        Automation(
            name=f"{prefix}: follow-up run failed or crashed",
            description="A follow-up-sequence run of this database ended Failed or Crashed; the reconciler "
            "repairs its enrollment, but the cause (a bug, a lost worker) needs a person.",
            trigger=reactive(
                set(RUN_FAILED_EVENTS),
                match={"prefect.resource.id": "prefect.flow-run.*"},
                match_related=[
                    {"prefect.resource.role": "flow", "prefect.resource.name": "follow-up-sequence"},
                    {"prefect.resource.id": f"prefect.tag.{db_tag}"},
                ],
            ),
            actions=notify(
                "follow-up run {{ event.resource['prefect.resource.name'] }} {{ event.event.split('.')[-1] }}",
                "Flow run {{ event.resource['prefect.resource.name'] }} ended {{ event.event.split('.')[-1] }} "
                "at {{ event.occurred }}.\nRun id: {{ event.resource.id.split('.')[-1] }}",
            ),
        ),
        Automation(
            name=f"{prefix}: enrollment failed",
            description="A step failed for good (permanent provider error, or every retry used): the "
            "enrollment is FAILED and its seller gets nothing more.",
            trigger=reactive({ENROLLMENT_FAILED}, match={"followups.database": db_tag}),
            actions=notify(
                "{{ event.resource['prefect.resource.name'] }} failed",
                "{{ event.resource['prefect.resource.name'] }} failed at step {{ event.payload.step }}: "
                "{{ event.payload.reason }}\nSee: followups status {{ event.payload.enrollment_id }}",
            ),
        ),
        Automation(
            name=f"{prefix}: reconciler found stranded enrollments",
            description="Enrollments whose pending run was deleted, cancelled or crashed in Prefect; the "
            "reconciler repaired them. Repeated alerts point at an operator or worker problem.",
            trigger=reactive({STRANDED_FOUND}, match={"followups.database": db_tag}),
            actions=notify(
                "{{ event.payload.count }} stranded enrollments",
                "The reconciler found {{ event.payload.count }} stranded enrollments "
                "({{ event.payload.actions }}): {{ event.payload.enrollment_ids }}",
            ),
        ),
    ]


def apply_automations(block: str | None = None) -> list[Applied]:
    """Create or update this database's automations (idempotent: found by name): the zombie-run
    rule, and the three alerts when a notification block is named (argument or setting)."""
    from prefect.client.orchestration import get_client
    from prefect.events.schemas.automations import AutomationCore

    from followups.settings import get_settings

    settings = get_settings()
    reference = block or settings.notification_block
    if reference is not None and "/" not in reference:
        raise InvalidInputError("expected <block-type-slug>/<name>, e.g. custom-webhook/alerts", "notification_block")
    db_tag = database_tag()
    applied: list[Applied] = []
    with get_client(sync_client=True) as client:
        block_id = _block_document_id(client, reference) if reference else None
        for automation in automations(db_tag, block_id, settings.zombie_run_seconds):
            existing = client.read_automations_by_name(automation.name)
            body = automation.model_dump(exclude={"id"})
            if existing:
                # The update endpoint refuses `owner_resource` (Prefect's own Automation.update drops it too).
                update = {key: value for key, value in body.items() if key != "owner_resource"}
                client.update_automation(existing[0].id, AutomationCore(**update))
                for duplicate in existing[1:]:  # left by a concurrent apply: keep one
                    client.delete_automation(duplicate.id)
                applied.append(Applied(automation.name, "updated"))
            else:
                client.create_automation(AutomationCore(**body))
                applied.append(Applied(automation.name, "created"))
    return applied
