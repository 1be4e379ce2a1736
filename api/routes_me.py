"""/api/me: the caller's own settings. For now its sending identity: the from address (and
display name) of its emails, and the number or Twilio Messaging Service its SMS come from."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel, Field

from followups.api.auth import CurrentUser
from followups.api.errors import error_responses
from followups.db.session import session_scope
from followups.inputs import SenderIdentity
from followups.settings import get_settings
from followups.users import describe_sender_identity, get_sender_identity, set_sender_identity

router = APIRouter(prefix="/api/me", tags=["me"])


class EffectiveSender(BaseModel):
    email_from: str
    email_from_name: str | None
    sms_from: str | None = Field(description="None when SMS go through a Messaging Service")
    messaging_service_sid: str | None


class SenderIdentityOut(BaseModel):
    email_from: str | None
    email_from_name: str | None
    sms_from: str | None
    messaging_service_sid: str | None
    timezone: str | None = Field(description="The owner's zone, for deals and phones that give none")
    effective: EffectiveSender = Field(description="What messages go out with: unset fields come from the global settings")


@router.get("/sender-identity", response_model=SenderIdentityOut, responses=error_responses(401, 503))
def read_sender_identity(user_id: CurrentUser) -> dict[str, Any]:
    """The caller's sending identity; null fields use the installation's defaults."""
    with session_scope(read_only=True) as session:
        identity = get_sender_identity(session, user_id)
    return describe_sender_identity(identity, get_settings())


@router.put("/sender-identity", response_model=SenderIdentityOut, responses=error_responses(401, 413, 422, 503))
def replace_sender_identity(body: SenderIdentity, user_id: CurrentUser) -> dict[str, Any]:
    """Replace the caller's sending identity as a whole: a field left out or null goes back to
    the default. `sms_from` (E.164) and `messaging_service_sid` (MG + 32 hex) exclude each
    other. Invalid input is a 422 naming the field, and nothing is stored."""
    with session_scope() as session:
        identity = set_sender_identity(session, user_id, body)
    return describe_sender_identity(identity, get_settings())
