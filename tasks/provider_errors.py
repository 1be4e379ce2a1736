"""Provider errors, classified at the HTTP boundary: only transient ones are retried."""

from __future__ import annotations

from followups.errors import FollowupsError


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


class PermanentProviderError(ProviderError):
    """Bad request, bad credentials, opted-out recipient...: retrying cannot help."""
