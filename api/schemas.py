"""Request and response bodies. Every request body rejects unknown fields (extra="forbid")."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

# Request bodies are the core's own input models: HTTP, the CLI and the Python API accept
# exactly the same values and name a wrong one by the same field path.
from followups.inputs import MAX_ID as MAX_ID
from followups.inputs import EnrollRequest as EnrollRequest
from followups.inputs import Id, OfferInput, SequenceInput, SequencePatch

SequenceCreate = SequenceInput
SequenceUpdate = SequencePatch
OfferRequest = OfferInput


class EnrollBody(EnrollRequest):
    start_at: AwareDatetime | None = Field(
        None, description="When the sequence starts (ISO 8601 with its UTC offset, up to a year ahead); default: now",
    )


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)


class _Response(BaseModel):
    """Base of every response body (lenient: responses are built by us, not parsed)."""


# --- sequences -------------------------------------------------------------------------------


class SequenceAction(_Request):
    action: Literal["pause", "resume"]
    enrollment_id: Id = Field(description="An enrollment of this sequence, owned by the caller")


class SequenceOut(_Response):
    id: int
    name: str
    description: str
    enabled: bool
    is_default: bool
    version: int
    steps: list[dict[str, Any]]
    options: dict[str, Any] = Field(description="Send window, holidays and what stops the sequence")
    created_at: datetime
    updated_at: datetime


class EnrollmentSummary(_Response):
    id: int
    deal_external_id: str
    status: str
    current_step: int
    sequence_version: int
    next_due_at: datetime | None
    created_at: datetime


class SequenceDetail(SequenceOut):
    active_enrollments: list[EnrollmentSummary] = Field(description="ACTIVE and PAUSED enrollments")


class SequencePage(_Response):
    items: list[SequenceOut]
    total: int
    limit: int
    offset: int


class DeleteResult(_Response):
    id: int
    result: Literal["deleted", "archived"]


class RatesOut(_Response):
    """Ratios from 0 to 1 (4 decimals); null when the denominator is 0."""

    delivery_rate: float | None = Field(description="delivered / sent")
    open_rate: float | None = Field(description="opened / delivered")
    click_rate: float | None = Field(description="clicked / delivered")
    reply_rate: float | None = Field(description="replied / sent")
    bounce_rate: float | None = Field(description="bounced / sent")
    unsubscribe_rate: float | None = Field(description="unsubscribed / sent")


class SequenceStats(_Response):
    sequence_id: int
    enrolled: int = Field(description="Enrollments ever made")
    active: int = Field(description="ACTIVE enrollments")
    paused: int
    completed: int
    stopped: int = Field(description="Stopped by a reply or an opt-out")
    cancelled: int
    failed: int
    sent: int = Field(description="Emails and SMS sent")
    delivered: int = Field(description="Messages the provider reported delivered")
    opened: int = Field(description="Emails opened at least once")
    bounced: int = Field(description="Bounced, dropped, undelivered or failed messages")
    replied: int = Field(description="Enrollments whose seller replied")
    unsubscribed: int = Field(description="Enrollments whose seller opted out")
    clicked: int = Field(description="Emails with a link clicked at least once")
    failed_sends: int = Field(description="Message steps that failed (not sent)")
    outcome_unknown: int = Field(description="Message steps whose send was interrupted: perhaps sent, never resent")
    rates: RatesOut


# --- enrollments and offers ------------------------------------------------------------------


class TimelineStepOut(_Response):
    index: int
    type: str
    state: str = Field(description="done, skipped, failed, unknown, waiting or pending")
    at: datetime | None = Field(description="When it happened, or when it is planned")


class EnrollmentOut(_Response):
    id: int
    deal_id: int
    deal_external_id: str
    sequence_id: int
    sequence_version: int
    status: str = Field(description="ACTIVE, PAUSED, COMPLETED, FAILED, CANCELLED or STOPPED")
    current_step: int
    next_due_at: datetime | None
    flow_run_id: str | None
    timeline: list[TimelineStepOut]
    run_state: str | None = Field(None, description="The pending run's state in Prefect (GET only)")
    in_prefect: str | None = Field(
        None, description="What Prefect shows that the enrollment has not recorded yet, e.g. an operator's suspend (GET only)"
    )


class EnrollmentSummaryOut(_Response):
    id: int
    deal_external_id: str
    sequence_id: int
    sequence_version: int
    status: str = Field(description="ACTIVE, PAUSED, COMPLETED, FAILED, CANCELLED or STOPPED")
    current_step: int
    next_due_at: datetime | None
    updated_at: datetime


class EnrollmentPageOut(_Response):
    items: list[EnrollmentSummaryOut]
    next_before: int | None = Field(description="Pass as `before` to get the next page; null on the last page")


class EventOut(_Response):
    id: int
    enrollment_id: int | None
    deal: str
    step_index: int | None
    event_type: str
    status: str
    content: dict[str, Any]
    failure_reason: str | None
    provider_message_id: str | None
    attempt: int | None
    flow_run_id: str | None
    task_run_id: str | None
    occurred_at: datetime


class OfferOut(_Response):
    offer_id: str
    deal_external_id: str
    enrollment_id: int | None
    created: bool = Field(description="False when this offer had been recorded before")
    enrolled: bool = Field(description="False when the deal was already enrolled in that sequence (see `reason`) or the offer was known")
    reason: str


# --- webhooks --------------------------------------------------------------------------------


class WebhookResult(_Response):
    received: int = Field(description="Events or messages in the request")
    stored: int = Field(description="Newly stored events (repeats of a delivery are not stored again)")
    duplicates: int
    stopped: int = Field(description="Enrollments stopped by a reply or an opt-out")


class Health(_Response):
    status: Literal["ok", "unavailable"]
    database: str
    prefect: str
