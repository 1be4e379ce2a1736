"""The product's exception tree: everything it raises on purpose is a FollowupsError."""

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


class AlreadyEnrolledError(InvalidStateError):
    """The deal has, or had, an enrollment in the sequence, so it is not enrolled again.

    The rule, the same for every way in: a deal that was ever enrolled in a sequence is not
    enrolled in it again, unless `again` asks for it; and an open (ACTIVE or PAUSED) enrollment
    is never duplicated, `again` or not. `enrollment_id` and `enrollment_status` name the existing
    enrollment (the open one if there is one, else the newest); `field` is the input that names
    the deal (HTTP answers 409 with it)."""

    def __init__(self, deal: object, sequence_id: int, enrollment_id: int, status: str, *, field: str = "deal.external_id"):
        self.deal = deal
        self.sequence_id = sequence_id
        self.enrollment_id = enrollment_id
        self.enrollment_status = status
        self.field = field
        self.open = status in ("ACTIVE", "PAUSED")
        if self.open:
            message = (f"deal {deal} is already enrolled in sequence {sequence_id} (enrollment {enrollment_id}, {status}); "
                       "an open enrollment is never duplicated")
        else:
            message = (f"deal {deal} was already enrolled in sequence {sequence_id} (enrollment {enrollment_id}, {status}); "
                       "pass again=true (CLI: --again) to enroll it anew")
        super().__init__(message)


class InvalidInputError(FollowupsError):
    """Input that fails validation; `field` names the offending field (dotted path)."""

    def __init__(self, message: str, field: str | None = None):
        super().__init__(f"{field}: {message}" if field else message)
        self.field = field
        self.message = message


class BusyError(FollowupsError):
    """The database had no connection free in time (every one busy): nothing was done; try again
    in `retry_after` seconds."""

    def __init__(self, message: str = "the database is busy; nothing was changed, try again in a few seconds", *, retry_after: int = 2):
        super().__init__(message)
        self.retry_after = retry_after


class ProviderError(FollowupsError):
    def __init__(
        self,
        message: str,
        *,
        provider: str,
        status_code: int | None = None,
        code: int | str | None = None,
        retry_after: float | None = None,
    ):
        super().__init__(message)
        self.message = message
        self.provider = provider
        self.status_code = status_code
        self.code = code
        # Seconds from now before which a retry must not happen (429 reset / Retry-After).
        self.retry_after = retry_after

    def describe(self) -> str:
        parts = [self.provider]
        if self.status_code is not None:
            parts.append(str(self.status_code))
        if self.code is not None:
            parts.append(f"code {self.code}")
        return f"{' '.join(parts)}: {self.message}"


class TransientProviderError(ProviderError):
    """429, 5xx, timeouts, connection errors, Twilio 20429: worth retrying."""


class OutcomeUnknownProviderError(TransientProviderError):
    """The request went out but its answer was lost (read timeout, connection dropped): the
    provider may have sent the message. Never retried: a step is sent at most once."""


class PermanentProviderError(ProviderError):
    """Bad request, bad credentials, opted-out recipient...: retrying cannot help."""


class ScaledServerError(FollowupsError):
    """The scaled Prefect server could not be started (or one of its processes died)."""
