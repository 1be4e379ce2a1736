"""Helpers for the HTTP API tests: the app in a TestClient, users with tokens, signed webhooks."""

from __future__ import annotations

import base64
import json
import time
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from fastapi.testclient import TestClient
from sqlalchemy import select

from followups.api.app import create_app
from followups.api_tokens import create_token
from followups.db.models import Enrollment, FollowUpEvent, User
from followups.db.session import session_scope
from support import unique

SG_SIGNATURE = "X-Twilio-Email-Event-Webhook-Signature"
SG_TIMESTAMP = "X-Twilio-Email-Event-Webhook-Timestamp"


def make_client() -> TestClient:
    # raise_server_exceptions=False: the test sees the HTTP answer a real client would.
    return TestClient(create_app(), raise_server_exceptions=False)


@dataclass
class ApiUser:
    id: int
    name: str
    token: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


def new_api_user() -> ApiUser:
    name = unique("apiuser")
    token = create_token(name, label="tests")
    with session_scope() as session:
        user_id = session.scalars(select(User.id).where(User.name == name)).one()
    return ApiUser(user_id, name, token)


def enrollment_status(enrollment_id: int) -> str:
    with session_scope() as session:
        return session.get(Enrollment, enrollment_id).status


def event_count(enrollment_id: int | None = None, **filters: Any) -> int:
    with session_scope() as session:
        statement = select(FollowUpEvent.id)
        if enrollment_id is not None:
            statement = statement.where(FollowUpEvent.enrollment_id == enrollment_id)
        for name, value in filters.items():
            statement = statement.where(getattr(FollowUpEvent, name) == value)
        return len(session.scalars(statement).all())


def events_with_key_prefix(prefix: str) -> list[FollowUpEvent]:
    with session_scope() as session:
        rows = session.scalars(
            select(FollowUpEvent).where(FollowUpEvent.dedupe_key.startswith(prefix)).order_by(FollowUpEvent.id)
        ).all()
        for row in rows:
            session.expunge(row)
        return list(rows)


# --- SendGrid signing --------------------------------------------------------------------------


class SendGridSigner:
    """A P-256 key pair made in the test; `public_key` is what SendGrid shows in its settings."""

    def __init__(self) -> None:
        self.private_key = ec.generate_private_key(ec.SECP256R1())
        der = self.private_key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        self.public_key = base64.b64encode(der).decode()

    def sign(self, body: bytes, timestamp: str) -> str:
        signature = self.private_key.sign(timestamp.encode() + body, ec.ECDSA(hashes.SHA256()))
        return base64.b64encode(signature).decode()

    def headers(self, body: bytes, *, timestamp: int | None = None) -> dict[str, str]:
        stamp = str(int(time.time()) if timestamp is None else timestamp)
        return {"Content-Type": "application/json", SG_SIGNATURE: self.sign(body, stamp), SG_TIMESTAMP: stamp}


def sg_body(events: list[dict[str, Any]]) -> bytes:
    return json.dumps(events).encode()


def multipart(fields: dict[str, str], boundary: str = "xYzZY") -> tuple[bytes, str]:
    """A multipart/form-data body as SendGrid Inbound Parse posts it."""
    lines: list[bytes] = []
    for name, value in fields.items():
        lines += [
            f"--{boundary}".encode(),
            f'Content-Disposition: form-data; name="{name}"'.encode(),
            b"",
            value.encode("utf-8"),
        ]
    lines += [f"--{boundary}--".encode(), b""]
    return b"\r\n".join(lines), f"multipart/form-data; boundary={boundary}"
