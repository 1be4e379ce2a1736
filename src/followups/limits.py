"""Send caps: the per-second rate limits in Prefect (`followups limits apply`), the rolling 24 h
and hourly windows in PostgreSQL, and `take_slot`, which the flow calls before each send (the
rule: `followups.scheduling.caps`).

Rates are Prefect global concurrency limits whose names carry this database's identity, so two
databases on one Prefect server never share a count: one per provider account (the SendGrid key,
the Twilio account).

Windows count per sending identity (from address; SMS number or Messaging Service): a row of
`send_slots` per send, in this database. Taking one is a short transaction that holds the
identity's advisory lock, so two workers never both take the last slot, and no Prefect call is
made inside it. An owner's own caps (users.*_daily_cap, *_hourly_cap) override the settings;
owners sharing an identity share its count, each held to its own cap.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, delete, exists, func, or_, select, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import Session

from followups.db.models import Enrollment, EnrollmentStatus, EventType, FollowUpEvent, SendSlot, User
from followups.db.session import session_scope
from followups.errors import FollowupsError, InvalidInputError
from followups.inputs import SenderIdentity, check_id, require_owner
from followups.scheduling.caps import (
    DAY_SECONDS,
    HOUR_SECONDS,
    CapDecision,
    CapLimit,
    limit_name,
    place,
    rate_deferral,
    rate_limit_spec,
    slot_key,
    window_cap_spec,
    window_deferral,
)
from followups.settings import Settings
from followups.users import Sender, resolve_sender

MAX_DAILY_CAP = 10_000_000
log = logging.getLogger(__name__)


def _prefix(db_id: uuid.UUID) -> str:
    return db_id.hex[:8]


def email_account(settings: Settings) -> str:
    # One SendGrid key per install: its rate limit is the account's.
    return "sendgrid"


def sms_account(settings: Settings) -> str:
    return settings.twilio_account_sid or "twilio"


def sms_identity(sender: Sender) -> str | None:
    return sender.messaging_service_sid or sender.sms_from


@dataclass(frozen=True)
class OwnerCaps:
    """An owner's own caps for one channel (None: the setting applies)."""

    daily: int | None = None
    hourly: int | None = None


CAP_FIELDS = ("email_daily_cap", "email_hourly_cap", "sms_daily_cap", "sms_hourly_cap")


def step_limits(channel: str, sender: Sender, settings: Settings, db_id: uuid.UUID, *, caps: OwnerCaps = OwnerCaps()) -> list[CapLimit]:
    """The limits one send on `channel` from `sender` counts against: the account's rate, and the
    identity's rolling 24 h and hourly windows."""
    if channel == "email":
        account, identity = email_account(settings), sender.email_from
        rate, per_day, per_hour = settings.email_rate_per_second, settings.email_daily_cap, settings.email_hourly_cap
    else:
        account, identity = sms_account(settings), sms_identity(sender) or "default"
        rate, per_day, per_hour = settings.sms_rate_per_second, settings.sms_daily_cap, settings.sms_hourly_cap
    per_day = per_day if caps.daily is None else caps.daily
    per_hour = per_hour if caps.hourly is None else caps.hourly
    key = slot_key(channel, identity)
    found = [
        rate_limit_spec(limit_name(_prefix(db_id), "rate", channel, account), account, rate),
        window_cap_spec(key, identity, per_day, DAY_SECONDS),
        window_cap_spec(key, identity, per_hour, HOUR_SECONDS),
    ]
    return [cap for cap in found if cap is not None]


def owner_caps(session: Session, owner_id: int, channel: str) -> OwnerCaps:
    daily, hourly = (User.email_daily_cap, User.email_hourly_cap) if channel == "email" else (User.sms_daily_cap, User.sms_hourly_cap)
    row = session.execute(select(daily, hourly).where(User.id == owner_id)).first()
    return OwnerCaps(*row) if row else OwnerCaps()


def set_caps(session: Session, owner_id: int, **caps: int | None) -> dict[str, int | None]:
    """Set an owner's own caps, by field name (`CAP_FIELDS`): a number (0: no cap) or None (the
    setting applies again); a field left out is unchanged. Returns all four as they now are."""
    owner_id = check_id(owner_id, "owner_id")
    for field, value in caps.items():
        if field not in CAP_FIELDS:
            raise InvalidInputError(f"is not a cap (one of {', '.join(CAP_FIELDS)})", field=field)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_DAILY_CAP):
            raise InvalidInputError(f"must be an integer between 0 and {MAX_DAILY_CAP}", field=field)
    require_owner(session, owner_id)
    if caps:
        session.execute(update(User).where(User.id == owner_id).values(**caps))
    row = session.execute(select(*(getattr(User, field) for field in CAP_FIELDS)).where(User.id == owner_id)).one()
    return dict(zip(CAP_FIELDS, row, strict=True))


def _senders(session: Session, settings: Settings) -> list[tuple[Sender, dict[str, OwnerCaps]]]:
    """The global sender and each owner's, with the owner's own caps by channel."""
    rows = session.execute(
        select(User.email_from, User.email_from_name, User.sms_from, User.messaging_service_sid, *(getattr(User, f) for f in CAP_FIELDS))
    ).all()
    found = [(resolve_sender(SenderIdentity(), settings), {"email": OwnerCaps(), "sms": OwnerCaps()})]
    for row in rows:
        identity = SenderIdentity.model_construct(
            email_from=row.email_from, email_from_name=row.email_from_name,
            sms_from=row.sms_from, messaging_service_sid=row.messaging_service_sid,
        )
        caps = {"email": OwnerCaps(row.email_daily_cap, row.email_hourly_cap), "sms": OwnerCaps(row.sms_daily_cap, row.sms_hourly_cap)}
        found.append((resolve_sender(identity, settings), caps))
    return found


def configured_limits(session: Session, settings: Settings, db_id: uuid.UUID) -> list[CapLimit]:
    """Every limit this database needs, the smallest where owners share an identity: the rates
    `limits apply` writes to Prefect, and the windows `limits show` reports."""
    wanted: dict[tuple[str, int], CapLimit] = {}
    for sender, caps in _senders(session, settings):
        for channel in ("email", "sms"):
            for cap in step_limits(channel, sender, settings, db_id, caps=caps[channel]):
                known = wanted.get((cap.name, cap.window_seconds))
                if known is None or cap.limit < known.limit:
                    wanted[(cap.name, cap.window_seconds)] = cap
    return sorted(wanted.values(), key=lambda cap: (cap.kind, cap.name, -cap.window_seconds))


@dataclass(frozen=True)
class AppliedLimit:
    name: str
    limit: int
    slot_decay_per_second: float
    action: str  # created | updated | unchanged | deleted

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "limit": self.limit, "slot_decay_per_second": self.slot_decay_per_second, "action": self.action}


def _written(client: Any, name: str, limit: int, decay: float) -> str:
    """Create or update one limit; its count of used slots is never reset."""
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate, GlobalConcurrencyLimitUpdate
    from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound

    try:
        existing = client.read_global_concurrency_limit_by_name(name)
    except ObjectNotFound:
        try:
            client.create_global_concurrency_limit(
                GlobalConcurrencyLimitCreate(name=name, limit=limit, slot_decay_per_second=decay, active=True)
            )
            return "created"
        except ObjectAlreadyExists:  # another `limits apply` or a worker got there first
            existing = client.read_global_concurrency_limit_by_name(name)
    if existing.limit == limit and abs(existing.slot_decay_per_second - decay) < 1e-12 and existing.active:
        return "unchanged"
    client.update_global_concurrency_limit(
        name, GlobalConcurrencyLimitUpdate(limit=limit, slot_decay_per_second=decay, active=True)
    )
    return "updated"


def _legacy(client: Any, db_id: uuid.UUID) -> list[Any]:
    """This database's Prefect limits for daily caps, from before the windows were counted in
    PostgreSQL: nothing takes their slots any more."""
    prefix = f"followups-{_prefix(db_id)}-"
    found, offset = [], 0
    while True:
        page = client.read_global_concurrency_limits(limit=200, offset=offset)
        found += [item for item in page if item.name.startswith(prefix) and "-daily-" in item.name]
        if len(page) < 200:
            return found
        offset += len(page)


def apply_limits(limits: Sequence[CapLimit], *, db_id: uuid.UUID | None = None) -> list[AppliedLimit]:
    """Create or update each rate limit in Prefect (idempotent: an equal limit is left alone);
    with `db_id`, delete this database's old daily-cap limits."""
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    applied = []
    with get_client(sync_client=True) as client:
        for cap in limits:
            if cap.kind == "rate":
                action = _written(client, cap.name, cap.limit, cap.decay_per_second)
                applied.append(AppliedLimit(cap.name, cap.limit, cap.decay_per_second, action))
        for old in _legacy(client, db_id) if db_id is not None else []:
            try:
                client.delete_global_concurrency_limit_by_name(old.name)
            except ObjectNotFound:  # another `limits apply` deleted it
                continue
            applied.append(AppliedLimit(old.name, old.limit, old.slot_decay_per_second, "deleted"))
    return applied


def _create_if_missing(client: Any, name: str, limit: int, decay: float) -> None:
    """Limit `name`, made from these values unless it exists. Read first: the Prefect server
    answers a duplicate create with 409 but also logs it as an ERROR with a traceback, and with
    a process per flow run (the stock runner) most sends find their limit made already. A
    create that still conflicts lost a race with another worker, whose limit is the same one."""
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
    from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound

    with contextlib.suppress(ObjectNotFound):
        client.read_global_concurrency_limit_by_name(name)
        return
    with contextlib.suppress(ObjectAlreadyExists):
        client.create_global_concurrency_limit(
            GlobalConcurrencyLimitCreate(name=name, limit=limit, slot_decay_per_second=decay, active=True)
        )


_known_rates: set[str] = set()
_known_lock = threading.Lock()


def _ensure_rate_limits(caps: Sequence[CapLimit]) -> None:
    """Each rate limit, created from its configured values if missing (once per process)."""
    from prefect.client.orchestration import get_client

    missing = [cap for cap in caps if cap.name not in _known_rates]
    if not missing:
        return
    with get_client(sync_client=True) as client:
        for cap in missing:
            _create_if_missing(client, cap.name, cap.limit, cap.decay_per_second)
            with _known_lock:
                _known_rates.add(cap.name)


# -- the rolling windows, in PostgreSQL -------------------------------------------------------

_COUNTED = (EventType.EMAIL_SENT.value, EventType.SMS_SENT.value, EventType.STEP_OUTCOME_UNKNOWN.value)


def _counted_slots(session: Session, key: str, since: datetime) -> Any:
    """The identity's slots after `since` that count: the step is still pending (its enrollment
    ACTIVE at that step), or it was sent or perhaps sent. A slot of a step that failed, was
    skipped, or whose enrollment was paused or ended before it went, counts for nothing."""
    sent = exists().where(
        FollowUpEvent.enrollment_id == SendSlot.enrollment_id,
        FollowUpEvent.step_index == SendSlot.step_index,
        FollowUpEvent.event_type.in_(_COUNTED),
    )
    pending = and_(Enrollment.status == EnrollmentStatus.ACTIVE.value, Enrollment.current_step == SendSlot.step_index)
    return (
        select(SendSlot.enrollment_id, SendSlot.step_index, SendSlot.taken_at)
        .join(Enrollment, Enrollment.id == SendSlot.enrollment_id)
        .where(SendSlot.identity == key, SendSlot.taken_at > since, or_(pending, sent))
        .order_by(SendSlot.taken_at)
    )


def _take_window_slot(
    windows: Sequence[CapLimit], now: datetime, enrollment_id: int, step_index: int
) -> tuple[datetime, list[datetime]]:
    """The moment the send may go (`now`, or later when its windows are full), written as the
    step's slot in one short transaction under the identity's lock; and the other slots."""
    key = windows[0].name
    longest = timedelta(seconds=max(cap.window_seconds for cap in windows))
    with session_scope() as session:
        session.execute(select(func.pg_advisory_xact_lock(func.hashtextextended(f"followups-caps:{key}", 0))))
        # Slots out of every window are of no more use (kept a day longer for `limits show`).
        session.execute(delete(SendSlot).where(SendSlot.identity == key, SendSlot.taken_at < func.now() - longest - timedelta(days=1)))
        own = session.scalar(select(SendSlot.taken_at).where(SendSlot.enrollment_id == enrollment_id, SendSlot.step_index == step_index))
        others = [
            row.taken_at for row in session.execute(_counted_slots(session, key, now - longest))
            if (row.enrollment_id, row.step_index) != (enrollment_id, step_index)
        ]
        at = place(others, now, windows, promised=own)
        session.execute(
            insert(SendSlot)
            .values(enrollment_id=enrollment_id, step_index=step_index, identity=key, taken_at=at)
            .on_conflict_do_update(index_elements=[SendSlot.enrollment_id, SendSlot.step_index], set_={"identity": key, "taken_at": at})
        )
    return at, others


def _give_back(enrollment_id: int, step_index: int) -> None:
    with session_scope() as session:
        session.execute(delete(SendSlot).where(SendSlot.enrollment_id == enrollment_id, SendSlot.step_index == step_index))


def take_slot(
    limits: Sequence[CapLimit], now: datetime, *, enrollment_id: int, step_index: int, wait_seconds: float, strict: bool
) -> CapDecision:
    """A place in every window of the send's identity, then a slot of each rate limit (waiting
    at most `wait_seconds`). Refused, until when: the moment promised to this step when its
    windows are full (it keeps that place), or a moment when a rate is."""
    from prefect.concurrency.asyncio import ConcurrencySlotAcquisitionError
    from prefect.concurrency.sync import rate_limit

    windows = [cap for cap in limits if cap.kind == "window"]
    rates = [cap for cap in limits if cap.kind == "rate"]
    if windows:
        at, others = _take_window_slot(windows, now, enrollment_id, step_index)
        if at > now:
            return window_deferral(windows, others, now, at)
    if not rates:
        return CapDecision(True)
    if not strict:
        # Made from the settings when `limits apply` has not run yet: the caps hold from the
        # first send (strict instead stops sending until they are applied).
        _ensure_rate_limits(rates)
    try:
        rate_limit([cap.name for cap in rates], occupy=1, timeout_seconds=wait_seconds, strict=strict)
    except TimeoutError:
        if windows:
            _give_back(enrollment_id, step_index)
        return rate_deferral(max(rates, key=lambda cap: 1 / cap.decay_per_second), _active_slots(rates), now)
    except ConcurrencySlotAcquisitionError as exc:
        if windows:
            _give_back(enrollment_id, step_index)
        raise FollowupsError(f"a send cap is not set up in Prefect ({exc}); run `followups limits apply`") from exc
    return CapDecision(True)


def _active_slots(rates: Sequence[CapLimit]) -> float | None:
    from prefect.client.orchestration import get_client

    try:
        with get_client(sync_client=True) as client:
            return float(client.read_global_concurrency_limit_by_name(rates[0].name).active_slots)
    except Exception:  # noqa: BLE001 - only for how long to wait; a moment will do
        return None


@dataclass(frozen=True)
class WindowUsage:
    cap: CapLimit
    used: int  # slots counted in the window ending now
    promised: int  # slots promised to deferred sends, after now
    next_free: datetime | None  # when a send asking now would go, if not now

    def as_dict(self) -> dict[str, Any]:
        return {
            "identity": self.cap.identity, "key": self.cap.name, "window_seconds": self.cap.window_seconds,
            "limit": self.cap.limit, "used": self.used, "promised": self.promised,
            "next_free": self.next_free.isoformat() if self.next_free else None,
        }


def window_usage(session: Session, limits: Sequence[CapLimit], now: datetime) -> list[WindowUsage]:
    """How full each window is now (for `followups limits show`)."""
    usage = []
    for cap in (cap for cap in limits if cap.kind == "window"):
        span = timedelta(seconds=cap.window_seconds)
        times = [row.taken_at for row in session.execute(_counted_slots(session, cap.name, now - span))]
        at = place(times, now, [cap])
        used = sum(1 for moment in times if moment <= now)
        usage.append(WindowUsage(cap, used, len(times) - used, at if at > now else None))
    return usage
