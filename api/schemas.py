"""Request and response bodies. Every request body rejects unknown fields (extra="forbid")."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from followups.deals import DealInput
from followups.steps import Step

MAX_ID = 2**63 - 1  # bigint


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)


class _Response(BaseModel):
    """Base of every response body (lenient: responses are built by us, not parsed)."""


# --- sequences -------------------------------------------------------------------------------


class SequenceCreate(_Request):
    name: str = Field(min_length=1, max_length=200)
    description: str = Field(default="", max_length=10_000)
    steps: list[Step] = Field(min_length=1, max_length=100, description="EMAIL, SMS and WAIT steps, in order")
    enabled: bool = True
    is_default: bool = Field(default=False, description="The sequence `POST /api/offers` uses when none is named")


class SequenceUpdate(_Request):
    """Fields left out keep their value. New `steps` make a new version of the sequence; running
    enrollments keep the version they started with."""

    name: str | None = Field(default=None, min_length=1, max_length=200)
    description: str | None = Field(default=None, max_length=10_000)
    steps: list[Step] | None = Field(default=None, min_length=1, max_length=100)
    enabled: bool | None = None
    is_default: bool | None = None


class SequenceAction(_Request):
    action: Literal["pause", "resume"]
    enrollment_id: int = Field(ge=1, le=MAX_ID, description="An enrollment of this sequence, owned by the caller")


class SequenceOut(_Response):
    id: int
    name: str
    description: str
    enabled: bool
    is_default: bool
    version: int
    steps: list[dict[str, Any]]
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


# --- enrollments and offers ------------------------------------------------------------------


class EnrollRequest(_Request):
    sequence_id: int = Field(ge=1, le=MAX_ID)
    deal: DealInput


class OfferRequest(_Request):
    offer_id: str = Field(
        min_length=1, max_length=200, pattern=r"^[A-Za-z0-9._:\-]+$", description="The app's own id of the offer"
    )
    deal: DealInput
    sequence_id: int | None = Field(default=None, ge=1, le=MAX_ID, description="Defaults to the caller's default sequence")
    amount: Decimal | None = Field(default=None, ge=0, max_digits=14, decimal_places=2)


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
    enrolled: bool = Field(description="False when the deal already runs that sequence or the offer was known")
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
