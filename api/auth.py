"""Bearer-token authentication: every /api request acts as exactly one user."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, HTTPException
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from followups.api_tokens import verify_token

bearer = HTTPBearer(auto_error=False, description="An API token from `followups tokens create`")

UNAUTHORIZED_HEADERS = {"WWW-Authenticate": "Bearer"}


def current_user(credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]) -> int:
    """The id of the user the bearer token belongs to; 401 when missing, unknown or revoked."""
    if credentials is None or credentials.scheme.lower() != "bearer":
        raise HTTPException(status_code=401, detail="missing bearer token", headers=UNAUTHORIZED_HEADERS)
    user_id = verify_token(credentials.credentials)
    if user_id is None:
        raise HTTPException(status_code=401, detail="invalid or revoked token", headers=UNAUTHORIZED_HEADERS)
    return user_id


CurrentUser = Annotated[int, Depends(current_user)]
