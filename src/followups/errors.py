"""The product's small exception tree. Provider errors live in followups.tasks.provider_errors."""

from __future__ import annotations


class FollowupsError(Exception):
    """Base class of every error this product raises on purpose."""


class NotFoundError(FollowupsError):
    """The object does not exist, or belongs to another user (never tell the difference)."""

    def __init__(self, kind: str, ident: object):
        super().__init__(f"{kind} {ident} not found")
        self.kind = kind
        self.ident = ident


class InvalidStateError(FollowupsError):
    """The object exists but its state does not allow the operation."""


class InvalidInputError(FollowupsError):
    """Input that fails validation; `field` names the offending field (dotted path)."""

    def __init__(self, message: str, field: str | None = None):
        super().__init__(f"{field}: {message}" if field else message)
        self.field = field
        self.message = message
