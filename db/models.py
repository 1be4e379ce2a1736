"""SQLAlchemy 2 typed models. The schema itself is created by the Alembic migrations."""

from __future__ import annotations

import uuid
from datetime import datetime
from decimal import Decimal
from enum import StrEnum
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    Numeric,
    String,
    Text,
    Uuid,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship


class Base(DeclarativeBase):
    type_annotation_map = {dict[str, Any]: JSONB, list[dict[str, Any]]: JSONB}


class EnrollmentStatus(StrEnum):
    ACTIVE = "ACTIVE"
    PAUSED = "PAUSED"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"
    STOPPED = "STOPPED"  # the seller replied or opted out

    @property
    def is_open(self) -> bool:
        return self in OPEN_STATUSES


# The one definition of which statuses still run (or may run again) and which are final.
OPEN_STATUSES = frozenset({EnrollmentStatus.ACTIVE, EnrollmentStatus.PAUSED})
FINISHED_STATUSES = frozenset(EnrollmentStatus) - OPEN_STATUSES


class EventType(StrEnum):
    ENROLLED = "ENROLLED"
    STEP_ATTEMPT = "STEP_ATTEMPT"  # written before the provider call; an attempt with no result is a trace
    EMAIL_SENT = "EMAIL_SENT"
    SMS_SENT = "SMS_SENT"
    STEP_RETRY = "STEP_RETRY"
    STEP_FAILED = "STEP_FAILED"
    STEP_SKIPPED = "STEP_SKIPPED"  # e.g. no email address on the deal
    STEP_OUTCOME_UNKNOWN = "STEP_OUTCOME_UNKNOWN"  # a worker died mid-send: not resent
    STEP_DEFERRED = "STEP_DEFERRED"  # an SMS held back by quiet hours in the seller's time zone
    RECONCILED = "RECONCILED"  # the pending Prefect run was gone or final: a new one was scheduled
    WAIT_STARTED = "WAIT_STARTED"
    WAIT_COMPLETED = "WAIT_COMPLETED"
    PAUSED = "PAUSED"
    RESUMED = "RESUMED"
    CANCELLED = "CANCELLED"
    STOPPED = "STOPPED"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    PROVIDER_EVENT = "PROVIDER_EVENT"  # webhook callbacks (delivered, opened, bounced, ...)
    REPLY_RECEIVED = "REPLY_RECEIVED"
    OPTED_OUT = "OPTED_OUT"
    # The address bounced, was blocked, or soft-bounced too often: no more mail to it from that owner.
    BOUNCED = "BOUNCED"


SENT_EVENT_TYPES = (EventType.EMAIL_SENT, EventType.SMS_SENT)


class User(Base):
    __tablename__ = "users"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    # The owner's sending identity; None falls back to the global settings.
    email_from: Mapped[str | None] = mapped_column(String(320))
    email_from_name: Mapped[str | None] = mapped_column(String(200))
    sms_from: Mapped[str | None] = mapped_column(String(32))
    messaging_service_sid: Mapped[str | None] = mapped_column(String(64))
    # The owner's zone: a message's zone when the deal and the phone number give none.
    timezone: Mapped[str | None] = mapped_column(String(64))
    # Sends allowed from this owner's identity per rolling 24 h and hour (NULL: settings; 0:
    # none); see followups.limits.
    email_daily_cap: Mapped[int | None] = mapped_column(Integer)
    sms_daily_cap: Mapped[int | None] = mapped_column(Integer)
    email_hourly_cap: Mapped[int | None] = mapped_column(Integer)
    sms_hourly_cap: Mapped[int | None] = mapped_column(Integer)


class OfferInbox(Base):
    """An offer announced through a Prefect event; the event names only this row."""

    __tablename__ = "offer_inbox"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    owner_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    payload: Mapped[dict[str, Any]] = mapped_column(JSONB)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class Installation(Base):
    """One row: this database's identity, made when the schema was created."""

    __tablename__ = "installation"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True)
    singleton: Mapped[bool] = mapped_column(Boolean, default=True, unique=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class ApiToken(Base):
    __tablename__ = "api_tokens"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)  # sha256 hex of the token
    label: Mapped[str] = mapped_column(String(200), default="")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class Sequence(Base):
    __tablename__ = "sequences"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    owner_id: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True)
    name: Mapped[str] = mapped_column(String(200))
    description: Mapped[str] = mapped_column(Text, default="")
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    is_default: Mapped[bool] = mapped_column(Boolean, default=False)
    version: Mapped[int] = mapped_column(Integer, default=1)
    steps: Mapped[list[dict[str, Any]]] = mapped_column(JSONB)
    # followups.sequence_options.SequenceOptions as JSON; each version keeps its own copy.
    options: Mapped[dict[str, Any]] = mapped_column(JSONB, default=dict, server_default=text("'{}'"))
    archived_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now(), onupdate=func.now()
    )

    versions: Mapped[list[SequenceVersion]] = relationship(back_populates="sequence", order_by="SequenceVersion.version")


class SequenceVersion(Base):
    __tablename__ = "sequence_versions"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    sequence_id: Mapped[int] = mapped_column(ForeignKey("sequences.id"))
    version: Mapped[int] = mapped_column(Integer)
    steps: Mapped[list[dict[str, Any]]] = mapped_column(JSONB)
    options: Mapped[dict[str, Any]] = mapped_column(JSONB, default=dict, server_default=text("'{}'"))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())

    sequence: Mapped[Sequence] = relationship(back_populates="versions")


class Deal(Base):
    __tablename__ = "deals"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    owner_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    external_id: Mapped[str] = mapped_column(String(200))
    property_address: Mapped[str] = mapped_column(Text)
    seller_name: Mapped[str] = mapped_column(String(200))
    seller_email: Mapped[str | None] = mapped_column(String(320))
    seller_phone: Mapped[str | None] = mapped_column(String(32))
    seller_timezone: Mapped[str] = mapped_column(String(64), default="UTC")
    # USPS code of the property's state: its texting law applies to the seller's SMS.
    property_state: Mapped[str | None] = mapped_column(String(2))
    offer_amount: Mapped[Decimal | None] = mapped_column(Numeric(14, 2))
    context: Mapped[dict[str, Any]] = mapped_column(JSONB, default=dict)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now(), onupdate=func.now()
    )


class Offer(Base):
    """An offer sent on a deal; its external id makes `record_offer_sent` idempotent."""

    __tablename__ = "offers"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    owner_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    external_id: Mapped[str] = mapped_column(String(200))
    deal_id: Mapped[int] = mapped_column(ForeignKey("deals.id"))
    amount: Mapped[Decimal | None] = mapped_column(Numeric(14, 2))
    enrollment_id: Mapped[int | None] = mapped_column(ForeignKey("enrollments.id"))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class Enrollment(Base):
    __tablename__ = "enrollments"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    deal_id: Mapped[int] = mapped_column(ForeignKey("deals.id"), index=True)
    sequence_id: Mapped[int] = mapped_column(ForeignKey("sequences.id"), index=True)
    sequence_version_id: Mapped[int] = mapped_column(ForeignKey("sequence_versions.id"))
    status: Mapped[str] = mapped_column(String(16), default=EnrollmentStatus.ACTIVE.value)
    current_step: Mapped[int] = mapped_column(Integer, default=0)
    next_due_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    prefect_flow_run_id: Mapped[uuid.UUID | None] = mapped_column(Uuid)
    # Goes up each time the enrollment gets a new pending run, which carries it: a run with
    # another epoch is stale. NULL prefect_flow_run_id with epoch > 0: the run is being created.
    epoch: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    reply_token: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now(), onupdate=func.now()
    )

    deal: Mapped[Deal] = relationship()
    sequence_version: Mapped[SequenceVersion] = relationship()


class FollowUpEvent(Base):
    """One immutable row per thing that happened. The database rejects UPDATE/DELETE/TRUNCATE."""

    __tablename__ = "follow_up_events"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    enrollment_id: Mapped[int | None] = mapped_column(ForeignKey("enrollments.id"), index=True)
    step_index: Mapped[int | None] = mapped_column(Integer)
    event_type: Mapped[str] = mapped_column(String(32))
    status: Mapped[str] = mapped_column(String(32), default="ok")
    content: Mapped[dict[str, Any]] = mapped_column(JSONB, default=dict)
    failure_reason: Mapped[str | None] = mapped_column(Text)
    provider_message_id: Mapped[str | None] = mapped_column(String(200))
    attempt: Mapped[int | None] = mapped_column(Integer)
    flow_run_id: Mapped[uuid.UUID | None] = mapped_column(Uuid)
    task_run_id: Mapped[uuid.UUID | None] = mapped_column(Uuid)
    # Events that must happen once (a step sent, a wait started, a webhook delivery) carry a
    # key with a unique index: a second writer's insert is a no-op instead of a duplicate.
    dedupe_key: Mapped[str | None] = mapped_column(String(300), unique=True)
    occurred_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.clock_timestamp())


class RunEffect(Base):
    """What Prefect must do to an enrollment's pending run (suspend, resume, cancel), written in
    the transaction of the change that calls for it and carried out after its commit
    (`followups.lifecycle.effects`). The latest effect of an enrollment replaces the earlier one."""

    __tablename__ = "run_effects"

    enrollment_id: Mapped[int] = mapped_column(ForeignKey("enrollments.id"), primary_key=True)
    seq: Mapped[int] = mapped_column(BigInteger, default=0)
    delivered_seq: Mapped[int] = mapped_column(BigInteger, default=0)
    kind: Mapped[str] = mapped_column(String(16))
    flow_run_id: Mapped[uuid.UUID] = mapped_column(Uuid)
    due_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    recorded_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.clock_timestamp())
    claimed_until: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    last_error: Mapped[str | None] = mapped_column(Text)


class SendSlot(Base):
    """A send's place in its sending identity's rolling caps (`followups.limits`): taken when the
    send may go, or promised for the moment a slot frees. One per enrollment and step; it counts
    while the step is pending or once it was sent (or perhaps sent), so a send that does not go
    out gives its slot back without a write."""

    __tablename__ = "send_slots"
    __table_args__ = (Index("ix_send_slots_identity_taken_at", "identity", "taken_at"),)

    enrollment_id: Mapped[int] = mapped_column(ForeignKey("enrollments.id", ondelete="CASCADE"), primary_key=True)
    step_index: Mapped[int] = mapped_column(Integer, primary_key=True)
    identity: Mapped[str] = mapped_column(String(320))
    taken_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
