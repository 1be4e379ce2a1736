"""API users and their bearer tokens.

A token is shown once, when it is created; the database keeps only its SHA-256 hex digest, so
a leaked database does not leak working tokens. Tokens are 256-bit random strings, so a plain
(unsalted) hash is enough: there is nothing to brute-force.
"""

from __future__ import annotations

import hashlib
import secrets

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from followups.db.models import ApiToken
from followups.db.session import session_scope
from followups.inputs import check_label, require_owner
from followups.users import ensure_user, user_id_by_name

TOKEN_PREFIX = "fu_"
# Bearer tokens longer than this are rejected before hashing (nothing we issue is that long).
MAX_TOKEN_LENGTH = 200


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def new_token() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def create_user(user_name: str) -> int:
    """Create the user if missing; return its id."""
    with session_scope() as session:
        return ensure_user(session, user_name)


def issue_token(session: Session, user_id: int, label: str = "") -> str:
    label = check_label(label or "", "label")
    user_id = require_owner(session, user_id)
    token = new_token()
    session.add(ApiToken(user_id=user_id, token_hash=hash_token(token), label=label))
    session.flush()
    return token


def create_token(user_name: str, label: str = "") -> str:
    """Create a token for `user_name` (creating the user if missing). The token is returned
    once and never stored in clear."""
    label = check_label(label or "", "label")
    with session_scope() as session:
        user_id = ensure_user(session, user_name)
        return issue_token(session, user_id, label)


def revoke_tokens(user_name: str, label: str | None = None) -> int:
    """Revoke the user's live tokens (only those with `label`, when given). Returns how many."""
    if label is not None:
        label = check_label(label, "label")
    with session_scope() as session:
        user_id = user_id_by_name(session, user_name)
        statement = update(ApiToken).where(ApiToken.user_id == user_id, ApiToken.revoked_at.is_(None))
        if label is not None:
            statement = statement.where(ApiToken.label == label)
        return session.execute(statement.values(revoked_at=func.now())).rowcount or 0


def _well_formed(token: object) -> bool:
    # Every token we issue is short ASCII; anything else cannot match and is not worth hashing.
    return isinstance(token, str) and 0 < len(token) <= MAX_TOKEN_LENGTH and token.isascii()


def user_for_token(session: Session, token: str | None) -> int | None:
    """The id of the user owning this live token, or None."""
    if not _well_formed(token):
        return None
    return session.scalars(
        select(ApiToken.user_id).where(ApiToken.token_hash == hash_token(token), ApiToken.revoked_at.is_(None))
    ).first()


def verify_token(token: str | None) -> int | None:
    """The id of the user owning this live token, or None (unknown, revoked or malformed)."""
    if not _well_formed(token):
        return None
    with session_scope() as session:
        return user_for_token(session, token)
