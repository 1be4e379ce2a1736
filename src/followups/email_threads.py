"""Threaded follow-ups: our own Message-IDs, the headers and subject of a reply-threaded email,
and the Message-IDs of ours an inbound email answers.

A Message-ID is `<followups.{enrollment}.{step}.{tag}@{domain}>`. The tag hashes this database's
identity with the enrollment's reply token: the same on every retry of the step, different in
another database (its ids never match here), and not derivable from another enrollment's ids,
since an unsigned inbound email that names one stops that enrollment.
"""

from __future__ import annotations

import hashlib
import re
import uuid
from dataclasses import dataclass
from email.parser import HeaderParser

from sqlalchemy import select
from sqlalchemy.orm import Session

from followups.db.models import EventType, FollowUpEvent
from followups.identity import database_id

# Our ids among those an inbound email names: (full id, enrollment id, step index).
_OURS = re.compile(r"<(followups\.([0-9]{1,18})\.([0-9]{1,6})\.[0-9a-f]{16}@[^<>\s@]{1,253})>")
MAX_REFERENCED = 20
# References keeps the thread's first id and its latest ones, so a long sequence keeps a short header.
MAX_REFERENCES = 10


@dataclass(frozen=True)
class EmailThread:
    message_id: str
    in_reply_to: str | None = None
    references: tuple[str, ...] = ()
    previous_subject: str | None = None  # the subject of the email replied to, as sent

    def headers(self) -> dict[str, str]:
        headers = {"Message-ID": self.message_id}
        if self.in_reply_to:
            headers["In-Reply-To"] = self.in_reply_to
            headers["References"] = " ".join(self.references)
        return headers


def message_id(enrollment_id: int, step_index: int, reply_token: str, db_id: uuid.UUID, domain: str) -> str:
    tag = hashlib.sha256(f"{db_id}:{reply_token}:{enrollment_id}:{step_index}".encode()).hexdigest()[:16]
    return f"<followups.{enrollment_id}.{step_index}.{tag}@{domain}>"


def reply_subject(previous: str) -> str:
    return previous if previous[:3].lower() == "re:" else f"Re: {previous}"


def thread_for(
    session: Session, enrollment_id: int, step_index: int, reply_token: str, domain: str, *, reply: bool
) -> EmailThread:
    """The step's Message-ID and, for a reply, the enrollment's previous email actually sent
    (none sent, e.g. skipped or suppressed: a new thread)."""
    own = message_id(enrollment_id, step_index, reply_token, database_id(), domain)
    if not reply:
        return EmailThread(own)
    previous = session.scalars(
        select(FollowUpEvent)
        .where(
            FollowUpEvent.enrollment_id == enrollment_id,
            FollowUpEvent.event_type == EventType.EMAIL_SENT.value,
            FollowUpEvent.step_index < step_index,
        )
        .order_by(FollowUpEvent.step_index.desc())
        .limit(1)
    ).first()
    if previous is None:
        return EmailThread(own)
    content = previous.content or {}
    parent = content.get("message_id")
    if not parent:  # sent before emails had our Message-ID: same subject, no headers
        return EmailThread(own, previous_subject=content.get("subject"))
    chain = [*(content.get("references") or "").split(), parent]
    chain = chain[:1] + chain[1:][-(MAX_REFERENCES - 1):]
    return EmailThread(own, parent, tuple(chain), content.get("subject"))


def referenced_ids(raw_headers: str) -> list[str]:
    """Our Message-IDs in an email's In-Reply-To and References (the replied-to one first)."""
    parsed = HeaderParser().parsestr(raw_headers or "", headersonly=True)
    names = [*(parsed.get_all("In-Reply-To") or []), *reversed(parsed.get_all("References") or [])]
    found: dict[str, None] = {}
    for value in names:
        for match in reversed(_OURS.findall(str(value))):
            found.setdefault(f"<{match[0]}>")
            if len(found) == MAX_REFERENCED:
                return list(found)
    return list(found)


def parse_id(value: str) -> tuple[int, int] | None:
    """(enrollment id, step index) that one of our Message-IDs names."""
    match = _OURS.fullmatch(value)
    return (int(match.group(2)), int(match.group(3))) if match else None
