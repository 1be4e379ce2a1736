"""Send caps in Prefect: the global concurrency limits behind them, `followups limits apply`,
and the gate the flow takes a slot from before each send (rules: `followups.scheduling.caps`).

Limit names carry this database's identity, so two databases on one Prefect server never share
a count. Per second: one limit per provider account (the SendGrid key, the Twilio account).
Per day: one limit per sending identity (from address; SMS number or Messaging Service) and UTC
day, e.g. `followups-3f2a9c1e-email-daily-a@b.c~2026-06-10`; an owner's own cap
(users.email_daily_cap / sms_daily_cap) overrides the setting, and where owners share an
identity `limits apply` writes the smallest cap.

A day's limit has no slot decay and its slots are taken with Prefect's plain increment (no
lease, never released), so nothing returns a slot before the day is over: a lease would be
revoked when it expires, and a rate limit's decay would refill the day. `limits apply` writes
today's and tomorrow's limits and deletes days before yesterday; a worker creates a missing
day's limit itself (create, or take the one another worker just made), so a new day never
waits for an operator.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from types import EllipsisType
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from followups.db.models import User
from followups.errors import FollowupsError, InvalidInputError
from followups.inputs import SenderIdentity, check_id, require_owner
from followups.scheduling.caps import (
    CapDecision,
    CapLimit,
    LimitState,
    cap_day,
    daily_cap_spec,
    day_of_limit,
    deferral_for,
    limit_name,
    rate_limit_spec,
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


def step_limits(
    channel: str, sender: Sender, settings: Settings, db_id: uuid.UUID, *, daily_cap: int | None = None
) -> list[CapLimit]:
    """The limits one send on `channel` from `sender` counts against (the configured values:
    what `limits apply` writes and what a preview shows)."""
    prefix = _prefix(db_id)
    if channel == "email":
        account, identity = email_account(settings), sender.email_from
        rate, per_day = settings.email_rate_per_second, settings.email_daily_cap
    else:
        account, identity = sms_account(settings), sms_identity(sender) or "default"
        rate, per_day = settings.sms_rate_per_second, settings.sms_daily_cap
    per_day = per_day if daily_cap is None else daily_cap
    found = [
        rate_limit_spec(limit_name(prefix, "rate", channel, account), account, rate),
        daily_cap_spec(limit_name(prefix, "daily", channel, identity), identity, per_day),
    ]
    return [cap for cap in found if cap is not None]


def owner_daily_cap(session: Session, owner_id: int, channel: str) -> int | None:
    column = User.email_daily_cap if channel == "email" else User.sms_daily_cap
    return session.scalar(select(column).where(User.id == owner_id))


def set_daily_caps(
    session: Session, owner_id: int, *, email: int | None | EllipsisType = ..., sms: int | None | EllipsisType = ...
) -> dict[str, int | None]:
    """Set an owner's own daily caps: a number (0: no cap), None (the setting applies again) or
    left out (unchanged). Returns both as they now are."""
    owner_id = check_id(owner_id, "owner_id")
    changes = {field: value for field, value in (("email_daily_cap", email), ("sms_daily_cap", sms)) if value is not ...}
    for field, value in changes.items():
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_DAILY_CAP):
            raise InvalidInputError(f"must be an integer between 0 and {MAX_DAILY_CAP}", field=field)
    require_owner(session, owner_id)
    if changes:
        session.execute(update(User).where(User.id == owner_id).values(**changes))
    row = session.execute(select(User.email_daily_cap, User.sms_daily_cap).where(User.id == owner_id)).one()
    return {"email_daily_cap": row.email_daily_cap, "sms_daily_cap": row.sms_daily_cap}


def configured_limits(session: Session, settings: Settings, db_id: uuid.UUID) -> list[CapLimit]:
    """Every limit this database needs: the global identities and each owner's."""
    rows = session.execute(
        select(User.email_from, User.email_from_name, User.sms_from, User.messaging_service_sid,
               User.email_daily_cap, User.sms_daily_cap)
    ).all()
    wanted: dict[str, CapLimit] = {}

    def add(caps: list[CapLimit]) -> None:
        for cap in caps:
            known = wanted.get(cap.name)
            # Owners sharing an identity: the smallest daily cap is the one nobody exceeds.
            if known is None or cap.limit < known.limit:
                wanted[cap.name] = cap

    for channel in ("email", "sms"):
        add(step_limits(channel, resolve_sender(SenderIdentity(), settings), settings, db_id))
    for row in rows:
        identity = SenderIdentity.model_construct(
            email_from=row.email_from, email_from_name=row.email_from_name,
            sms_from=row.sms_from, messaging_service_sid=row.messaging_service_sid,
        )
        sender = resolve_sender(identity, settings)
        add(step_limits("email", sender, settings, db_id, daily_cap=row.email_daily_cap))
        add(step_limits("sms", sender, settings, db_id, daily_cap=row.sms_daily_cap))
    return sorted(wanted.values(), key=lambda cap: cap.name)


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


def _stale(client: Any, db_id: uuid.UUID, today: date) -> list[Any]:
    """This database's day limits older than yesterday (yesterday stays for workers whose clock
    lags), and its daily limits from before caps were counted per day."""
    prefix = f"followups-{_prefix(db_id)}-"
    found, offset = [], 0
    while True:
        page = client.read_global_concurrency_limits(limit=200, offset=offset)
        for item in page:
            if not item.name.startswith(prefix):
                continue
            dated = day_of_limit(item.name)
            if dated is not None and dated[1] < today - timedelta(days=1):
                found.append(item)
            elif dated is None and "-daily-" in item.name and item.slot_decay_per_second > 0:
                found.append(item)
        if len(page) < 200:
            return found
        offset += len(page)


def apply_limits(
    limits: Sequence[CapLimit], *, db_id: uuid.UUID | None = None, now: datetime | None = None
) -> list[AppliedLimit]:
    """Create or update each limit in Prefect (idempotent: an equal limit is left alone). A daily
    cap is written for today and tomorrow; with `db_id`, this database's old days are deleted."""
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    today = cap_day(now or datetime.now(UTC))
    applied = []
    with get_client(sync_client=True) as client:
        for cap in limits:
            if cap.kind == "daily":
                for day in (today, today + timedelta(days=1)):
                    name = cap.day_name(day)
                    applied.append(AppliedLimit(name, cap.limit, 0.0, _written(client, name, cap.limit, 0.0)))
                    _remember(day, name)
            else:
                action = _written(client, cap.name, cap.limit, cap.decay_per_second)
                applied.append(AppliedLimit(cap.name, cap.limit, cap.decay_per_second, action))
        for old in _stale(client, db_id, today) if db_id is not None else []:
            try:
                client.delete_global_concurrency_limit_by_name(old.name)
            except ObjectNotFound:  # another `limits apply` deleted it
                continue
            applied.append(AppliedLimit(old.name, old.limit, old.slot_decay_per_second, "deleted"))
    return applied


# Day limits known to exist in this process, by day: one create per identity and day at most.
_known: dict[date, set[str]] = {}
_known_lock = threading.Lock()


def _remember(day: date, name: str) -> None:
    with _known_lock:
        for old in [known for known in _known if known < day - timedelta(days=1)]:
            del _known[old]
        _known.setdefault(day, set()).add(name)


def _forget(day: date, names: Sequence[str]) -> None:
    with _known_lock:
        _known.get(day, set()).difference_update(names)


def _create_if_missing(client: Any, name: str, limit: int, decay: float) -> None:
    """Limit `name`, made from these values unless it exists. Read first: the Prefect server
    answers a duplicate create with 409 but also logs it as an ERROR with a traceback, and with
    a process per flow run (the stock runner) most sends find their day's limit made already. A
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


def _ensure_day_limits(client: Any, caps: Sequence[CapLimit], day: date) -> list[str]:
    """The day's limit of each daily cap, created if missing (by whichever worker gets there
    first; the others use it: the same name, so the same count)."""
    names = []
    for cap in caps:
        name = cap.day_name(day)
        with _known_lock:
            known = name in _known.get(day, set())
        if not known:
            _create_if_missing(client, name, cap.limit, 0.0)
            _remember(day, name)
        names.append(name)
    return names


_known_rates: set[str] = set()


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


class PrefectCapGate:
    """Takes a slot of the day's limit of each daily cap (at once, all or nothing; refused means
    the day is used up), then a slot of each rate limit, waiting at most `wait_seconds`. Holds
    across any number of workers: the counts live in the Prefect server."""

    def __init__(self, wait_seconds: float, strict: bool):
        self.wait_seconds = wait_seconds
        self.strict = strict

    def acquire(self, limits: Sequence[CapLimit], now: datetime, spread_key: int = 0) -> CapDecision:
        from prefect.concurrency._asyncio import ConcurrencySlotAcquisitionError
        from prefect.concurrency.sync import rate_limit

        daily = [cap for cap in limits if cap.kind == "daily"]
        rates = [cap for cap in limits if cap.kind == "rate"]
        day = cap_day(now)
        taken = self._take_day_slots(daily, day) if daily else []
        if taken is None:
            return deferral_for([LimitState(cap, cap.limit) for cap in daily], now, spread_key)
        if not rates:
            return CapDecision(True)
        if not self.strict:
            # Made from the settings when `limits apply` has not run yet: the caps hold from the
            # first send (strict instead stops sending until they are applied).
            _ensure_rate_limits(rates)
        try:
            rate_limit([cap.name for cap in rates], occupy=1, timeout_seconds=self.wait_seconds, strict=self.strict)
        except TimeoutError:
            self._give_back(taken)
            return deferral_for(self._states(rates), now, spread_key)
        except ConcurrencySlotAcquisitionError as exc:
            self._give_back(taken)
            raise FollowupsError(f"a send cap is not set up in Prefect ({exc}); run `followups limits apply`") from exc
        return CapDecision(True)

    def _take_day_slots(self, caps: Sequence[CapLimit], day: date) -> list[str] | None:
        """The day limits a slot was taken of; None when the day is used up."""
        import httpx
        from prefect.client.orchestration import get_client

        with get_client(sync_client=True) as client:
            names = _ensure_day_limits(client, caps, day)
            wanted, taken = list(names), []
            for _ in range(3):
                try:
                    response = client.increment_concurrency_slots(names=wanted, slots=1, mode="concurrency")
                except httpx.HTTPStatusError as exc:
                    # 423: no free slot; 422: an operator set the day's limit to 0.
                    if exc.response.status_code in (422, 423):
                        self._give_back(taken)
                        return None
                    raise
                got = {item["name"] for item in response.json()}
                taken += [name for name in wanted if name in got]
                # The server skips names it does not know: a limit deleted under this process's
                # cache would count nothing. Make it again and take its slot too.
                wanted = [name for name in wanted if name not in got]
                if not wanted:
                    return taken
                _forget(day, wanted)
                _ensure_day_limits(client, [cap for cap in caps if cap.day_name(day) in wanted], day)
        self._give_back(taken)
        raise FollowupsError(f"Prefect keeps losing the day's send cap limits {wanted}")

    @staticmethod
    def _give_back(names: Sequence[str]) -> None:
        """Return day slots taken for a send that is not made. Best effort: a slot lost here only
        makes the day's cap stricter, never looser."""
        if not names:
            return
        from prefect.client.orchestration import get_client

        try:
            with get_client(sync_client=True) as client:
                # No occupancy: the slot was never used (the server refuses 0 with a 422, which
                # left the slot taken for the rest of the day).
                client.release_concurrency_slots(names=list(names), slots=1, occupancy_seconds=None)  # type: ignore[arg-type]
        except Exception as exc:  # noqa: BLE001 - see above
            log.warning("could not return day cap slots %s: %s", names, exc)

    def _states(self, limits: Sequence[CapLimit]) -> list[LimitState]:
        from prefect.client.orchestration import get_client
        from prefect.exceptions import ObjectNotFound

        states = []
        with get_client(sync_client=True) as client:
            for cap in limits:
                try:
                    found = client.read_global_concurrency_limit_by_name(cap.name)
                except ObjectNotFound:
                    continue
                if not found.active or found.limit <= 0:
                    continue
                decay = found.slot_decay_per_second or cap.decay_per_second
                states.append(LimitState(CapLimit(cap.name, cap.kind, found.limit, decay, cap.identity), float(found.active_slots)))
        return states
