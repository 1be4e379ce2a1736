"""One-click unsubscribe (RFC 8058) and the CAN-SPAM footer.

Every email carries `List-Unsubscribe: <https://…/u/TOKEN>, <mailto:…>` and
`List-Unsubscribe-Post: List-Unsubscribe=One-Click`. The token is stateless and names ids only
(no address in URLs or access logs): `v1.<owner>.<enrollment>.<step>.<day issued>.<mac>`. The
mac is two HMAC-SHA256 tags (`FOLLOWUPS_UNSUBSCRIBE_SECRET`), 8 bytes each: one over those ids,
checked before any database read (a forged token learns nothing about which owners and
enrollments exist), and one over the ids *and the address the mail went to*, checked against
the addresses that enrollment mailed in constant time. So a token is bound to its owner and
address and cannot be made or altered without the secret.

The mailto unsubscribe is the enrollment's own reply address with the subject "unsubscribe",
which the inbound email webhook records as an opt-out.

`POST /u/TOKEN` opts the address out for that owner (an OPTED_OUT fact, which
`replies.suppression.email_opted_out` honours: later email steps are skipped) and stops the
owner's open enrollments for it (STOPPED, reason "unsubscribed"); other owners' mail to the
same address is not affected. `GET` only shows a page with a button (mail scanners fetch links).
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import hmac
import html
import re
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import select

from followups.db.models import Deal, Enrollment, EventType, FollowUpEvent
from followups.db.session import session_scope
from followups.errors import InvalidInputError
from followups.providers.messages import OutgoingEmail
from followups.replies.delivery import Outcome, deliver, dedupe_key
from followups.replies.routing import open_enrollments_for_email
from followups.settings import Settings, get_settings

VERSION = "v1"
TOKEN_PATTERN = re.compile(r"v1\.([0-9]{1,19})\.([0-9]{1,19})\.([0-9]{1,6})\.([0-9]{1,7})\.([A-Za-z0-9_-]{22})")
MAX_TOKEN = 120
MAX_ID = 2**63 - 1
REASON = "unsubscribed"
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class InvalidTokenError(InvalidInputError):
    """A token that is malformed, forged, expired or names nothing we sent."""

    def __init__(self, message: str = "this unsubscribe link is not valid", *, expired: bool = False):
        super().__init__(message, field="token")
        self.expired = expired


@dataclass(frozen=True)
class UnsubscribeTarget:
    owner_id: int
    enrollment_id: int
    step_index: int
    email: str


def _today() -> int:
    return (datetime.now(UTC) - _EPOCH).days


def _tag(secret: bytes, message: str) -> bytes:
    return hmac.new(secret, message.encode("utf-8"), hashlib.sha256).digest()[:8]


def _ids_tag(secret: bytes, owner_id: int, enrollment_id: int, step_index: int, day: int) -> bytes:
    return _tag(secret, f"followups-unsubscribe-ids:{VERSION}:{owner_id}:{enrollment_id}:{step_index}:{day}")


def _address_tag(secret: bytes, owner_id: int, enrollment_id: int, step_index: int, day: int, email: str) -> bytes:
    message = f"followups-unsubscribe:{VERSION}:{owner_id}:{enrollment_id}:{step_index}:{day}:{email.strip().lower()}"
    return _tag(secret, message)


def _mac(secret: bytes, owner_id: int, enrollment_id: int, step_index: int, day: int, email: str) -> str:
    ids = (owner_id, enrollment_id, step_index, day)
    digest = _ids_tag(secret, *ids) + _address_tag(secret, *ids, email)
    return base64.urlsafe_b64encode(digest).decode("ascii").rstrip("=")


def _mac_bytes(mac: str) -> bytes | None:
    digest = base64.urlsafe_b64decode(mac + "==")
    # The last character's spare bits must be zero: one token per mac, not several.
    return digest if base64.urlsafe_b64encode(digest).decode("ascii").rstrip("=") == mac else None


def _secret(settings: Settings) -> bytes:
    return settings.unsubscribe_secret.get_secret_value().encode("utf-8")


def make_token(owner_id: int, enrollment_id: int, step_index: int, email: str, *, settings: Settings | None = None, day: int | None = None) -> str:
    settings = settings or get_settings()
    secret = _secret(settings)
    if not secret:
        raise InvalidInputError("FOLLOWUPS_UNSUBSCRIBE_SECRET is not set", field="unsubscribe_secret")
    day = _today() if day is None else day
    mac = _mac(secret, owner_id, enrollment_id, step_index, day, email)
    return f"{VERSION}.{owner_id}.{enrollment_id}.{step_index}.{day}.{mac}"


def unsubscribe_url(token: str, settings: Settings) -> str:
    return f"{settings.public_base_url.rstrip('/')}/u/{token}"


def _one_click_enabled(settings: Settings) -> bool:
    return bool(_secret(settings) and settings.public_base_url.strip())


# -- the outgoing email -----------------------------------------------------------------------


def _footer(settings: Settings, url: str | None) -> tuple[str, str] | None:
    address = settings.email_physical_address.strip()
    if not address:
        return None
    text = "\n\n--\n" + address + (f"\nUnsubscribe: {url}" if url else "")
    link = f' · <a href="{html.escape(url, quote=True)}">Unsubscribe</a>' if url else ""
    markup = f'<p style="font-size:12px;color:#666">{html.escape(address).replace(chr(10), "<br>")}{link}</p>'
    return text, markup


def _with_footer_html(body: str, footer: str) -> str:
    closing = body.lower().rfind("</body>")
    return body[:closing] + footer + body[closing:] if closing >= 0 else body + footer


def with_unsubscribe(
    email: OutgoingEmail, *, owner_id: int, enrollment_id: int, step_index: int, reply_token: str, settings: Settings
) -> OutgoingEmail:
    """The email with its List-Unsubscribe headers and, when configured, the postal-address footer."""
    url = None
    if _one_click_enabled(settings):
        token = make_token(owner_id, enrollment_id, step_index, email.to_email, settings=settings)
        url = unsubscribe_url(token, settings)
    # The reply address is a mailbox we read: its inbound webhook opts the sender out.
    mailto = f"mailto:reply+{reply_token}@{settings.reply_domain}?subject=unsubscribe"
    headers = {"List-Unsubscribe": f"<{url}>, <{mailto}>" if url else f"<{mailto}>"}
    if url:
        headers["List-Unsubscribe-Post"] = "List-Unsubscribe=One-Click"
    changes: dict = {"headers": {**email.headers, **headers}}
    footer = _footer(settings, url)
    if footer is not None:
        if email.text:
            changes["text"] = email.text + footer[0]
        if email.html:
            changes["html"] = _with_footer_html(email.html, footer[1])
    return dataclasses.replace(email, **changes)


# -- checking a token and opting out ------------------------------------------------------------


def verify_token(token: str, *, settings: Settings | None = None) -> UnsubscribeTarget:
    """The owner, enrollment, step and address a token was made for; InvalidTokenError when it
    is malformed, forged, expired, or names an enrollment that owner never mailed that way."""
    settings = settings or get_settings()
    secret = _secret(settings)
    match = TOKEN_PATTERN.fullmatch(token) if isinstance(token, str) and len(token) <= MAX_TOKEN else None
    if match is None or not secret:
        raise InvalidTokenError()
    owner_id, enrollment_id, step_index, day = (int(match.group(i)) for i in range(1, 5))
    if owner_id > MAX_ID or enrollment_id > MAX_ID:
        raise InvalidTokenError()
    given = _mac_bytes(match.group(5))
    # The ids tag first, with no database read: a forged token costs the same whatever it names.
    if given is None or not hmac.compare_digest(_ids_tag(secret, owner_id, enrollment_id, step_index, day), given[:8]):
        raise InvalidTokenError()
    # Only a genuine link is ever called expired.
    max_age = settings.unsubscribe_link_max_age_days
    if day > _today() + 1 or (max_age and _today() - day > max_age):
        raise InvalidTokenError("this unsubscribe link has expired", expired=True)
    with session_scope(read_only=True) as session:
        owned = session.execute(
            select(Deal.seller_email)
            .join(Enrollment, Enrollment.deal_id == Deal.id)
            .where(Enrollment.id == enrollment_id, Deal.owner_id == owner_id)
        ).first()
        if owned is None:
            raise InvalidTokenError()
        deal_email = owned.seller_email
        # The address the mail went to (the deal's address may have changed since).
        sent_to = session.scalars(
            select(FollowUpEvent.content["to"].astext).where(
                FollowUpEvent.enrollment_id == enrollment_id,
                FollowUpEvent.event_type == EventType.EMAIL_SENT.value,
            )
        ).all()
    found = None
    for candidate in dict.fromkeys(a.strip().lower() for a in [deal_email, *sent_to] if a):
        # Every candidate is compared (no early exit), each in constant time.
        if hmac.compare_digest(_address_tag(secret, owner_id, enrollment_id, step_index, day, candidate), given[8:]):
            found = candidate
    if found is None:
        raise InvalidTokenError()
    return UnsubscribeTarget(owner_id, enrollment_id, step_index, found)


def unsubscribe(token: str) -> dict[str, int | str]:
    """Opt the token's address out of its owner's mail and stop the owner's open enrollments
    for it. Idempotent: a second POST stores nothing more."""
    target = verify_token(token)
    address_key = hashlib.sha256(target.email.encode("utf-8")).hexdigest()[:32]
    key = dedupe_key("unsub", target.owner_id, address_key)
    content = {"channel": "email", "provider_event": "list_unsubscribe", "email": target.email}
    outcome = Outcome(received=1)
    deliver(
        outcome, [target.enrollment_id], event_type=EventType.OPTED_OUT, key=key, reason=REASON,
        content=content, step_index=target.step_index,
    )
    with session_scope(read_only=True) as session:
        others = [e for e in open_enrollments_for_email(session, target.email, target.owner_id) if e != target.enrollment_id]
    if others:
        deliver(outcome, others, event_type=EventType.OPTED_OUT, key=key, reason=REASON, content=content)
    return {"stopped": outcome.stopped, "recorded": outcome.stored}
