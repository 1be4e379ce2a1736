"""Users own sequences and deals, and send from their own identity. Token handling lives in
followups.api_tokens.

A sending identity (`SenderIdentity`: from address and display name, SMS number or Twilio
Messaging Service) is stored on the user's row; whatever is not set falls back to the global
settings. `Sender` is the identity with those defaults applied: what messages go out with.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import Session

from followups.db.models import User
from followups.db.session import session_scope
from followups.errors import NotFoundError
from followups.inputs import SenderIdentity, check_id, check_name, require_owner, validate
from followups.settings import Settings

IDENTITY_FIELDS = ("email_from", "email_from_name", "sms_from", "messaging_service_sid", "timezone")


def ensure_user(session: Session, name: str) -> int:
    """Return the id of the user called `name` (1-200 characters, one line), creating it if needed."""
    name = check_name(name, "name")
    session.execute(insert(User).values(name=name).on_conflict_do_nothing(index_elements=["name"]))
    return session.scalars(select(User.id).where(User.name == name)).one()


def user_id_by_name(session: Session, name: str) -> int:
    name = check_name(name, "name")
    user_id = session.scalars(select(User.id).where(User.name == name)).first()
    if user_id is None:
        raise NotFoundError("user", name)
    return user_id


# -- sending identity ---------------------------------------------------------------------


@dataclass(frozen=True)
class Sender:
    """What an owner's messages go out with, defaults applied. An SMS goes either from
    `sms_from` or through `messaging_service_sid` (then Twilio picks the number)."""

    email_from: str
    email_from_name: str | None
    sms_from: str | None
    messaging_service_sid: str | None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def get_sender_identity(session: Session, owner_id: int) -> SenderIdentity:
    """The owner's own identity as stored (None fields use the global settings)."""
    owner_id = check_id(owner_id, "owner_id")
    row = session.execute(select(*(getattr(User, name) for name in IDENTITY_FIELDS)).where(User.id == owner_id)).first()
    if row is None:
        raise NotFoundError("owner", owner_id)
    # Stored values were validated on the way in; constructed, not validated again.
    return SenderIdentity.model_construct(**row._asdict())


def set_sender_identity(session: Session, owner_id: int, identity: SenderIdentity | dict[str, Any] | None) -> SenderIdentity:
    """Replace the owner's identity (None or {} clears it). Validated as a whole before the one
    UPDATE: InvalidInputError naming the field, NotFoundError for an unknown owner."""
    owner_id = check_id(owner_id, "owner_id")
    checked = validate(SenderIdentity, {} if identity is None else identity)
    require_owner(session, owner_id)
    session.execute(update(User).where(User.id == owner_id).values(**checked.model_dump()))
    return checked


def change_sender_identity(
    session: Session, owner_id: int, changes: dict[str, Any], *, clear: bool = False
) -> SenderIdentity:
    """Set the given fields (None = leave as is), keeping the others unless `clear`. A number
    replaces a messaging service and the other way round: an SMS has one sender. Nothing given
    and no `clear`: the identity as it is, nothing written."""
    given = {name: value for name, value in changes.items() if value is not None}
    current = get_sender_identity(session, owner_id)
    if not given and not clear:
        return current
    merged = {} if clear else current.model_dump()
    if "sms_from" in given:
        merged["messaging_service_sid"] = None
    if "messaging_service_sid" in given:
        merged["sms_from"] = None
    return set_sender_identity(session, owner_id, {**merged, **given})


def change_identity_of(user_name: str, changes: dict[str, Any], *, clear: bool = False) -> SenderIdentity:
    """`change_sender_identity` for the user called `user_name`, in one transaction."""
    with session_scope() as session:
        return change_sender_identity(session, user_id_by_name(session, user_name), changes, clear=clear)


def resolve_sender(identity: SenderIdentity, settings: Settings) -> Sender:
    """The identity with the global settings filling what it leaves unset."""
    service = identity.messaging_service_sid
    return Sender(
        email_from=identity.email_from or settings.sendgrid_from_email,
        email_from_name=identity.email_from_name or settings.sendgrid_from_name or None,
        sms_from=None if service else (identity.sms_from or settings.twilio_from_number or None),
        messaging_service_sid=service,
    )


def load_sender(session: Session, owner_id: int, settings: Settings) -> Sender:
    return resolve_sender(get_sender_identity(session, owner_id), settings)


def describe_sender_identity(identity: SenderIdentity, settings: Settings) -> dict[str, Any]:
    """The stored identity and, under `effective`, what is actually sent with."""
    return {**identity.model_dump(), "effective": resolve_sender(identity, settings).as_dict()}
