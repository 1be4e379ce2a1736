"""Mapping errors to HTTP answers. No request is allowed to end in a 500.

- NotFoundError → 404 (also for another user's objects: never 403, never their data)
- InvalidStateError → 409 (AlreadyEnrolledError with the field naming the deal, and the existing
  enrollment's id and status), InvalidInputError and request validation → 422 with the field path
- BusyError (no database connection free in time) → 503 with Retry-After
- an unreachable database or Prefect API → 503; anything else unexpected → 503 as well, logged
  with its traceback (a last resort: every error the product raises on purpose is mapped above)
"""

from __future__ import annotations

import json
import logging
from typing import Any

import httpx
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from sqlalchemy.exc import DataError, DBAPIError, IntegrityError, OperationalError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from followups.errors import AlreadyEnrolledError, BusyError, FollowupsError, InvalidInputError, InvalidStateError, NotFoundError

log = logging.getLogger("followups.api")

UNION_TAGS = {"EMAIL", "SMS", "WAIT"}
BODY_PARSE_ERROR = "There was an error parsing the body"


class ErrorBody(BaseModel):
    detail: str


class ConflictBody(BaseModel):
    detail: str
    field: str | None = Field(None, description="The input the conflict is about (a deal already enrolled: deal.external_id)")
    enrollment_id: int | None = Field(None, description="A deal already enrolled: its enrollment in the sequence")
    enrollment_status: str | None = Field(None, description="...and that enrollment's status")


class FieldError(BaseModel):
    field: str
    location: str
    message: str
    type: str


class ValidationErrorBody(BaseModel):
    detail: str
    errors: list[FieldError]


def error_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses` entries for the error codes an operation can answer with."""
    described = {
        401: ("Missing, unknown or revoked bearer token", ErrorBody),
        403: ("Missing or invalid webhook signature", ErrorBody),
        404: ("No such object for this user", ErrorBody),
        409: ("The object's state does not allow this", ConflictBody),
        413: ("Request body over the size limit", ErrorBody),
        422: ("Invalid input; `errors[].field` names the offending field", ValidationErrorBody),
        503: ("The database or the Prefect API is unreachable", ErrorBody),
    }
    return {code: {"description": described[code][0], "model": described[code][1]} for code in codes}


def _json(status: int, content: dict[str, Any], headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(status_code=status, content=content, headers=headers)


def field_path(loc: tuple[Any, ...] | list[Any]) -> tuple[str, str]:
    """("body", "steps", 0, "EMAIL", "subject") → ("steps.0.subject", "body")."""
    parts = list(loc)
    location = str(parts.pop(0)) if parts and parts[0] in ("body", "query", "path", "header", "cookie") else "body"
    path = ".".join(str(part) for part in parts if part not in UNION_TAGS)
    return path, location


def validation_body(errors: list[dict[str, Any]]) -> dict[str, Any]:
    items = []
    for error in errors:
        path, location = field_path(error.get("loc", ()))
        message = str(error.get("msg", "invalid value")).removeprefix("Value error, ")
        items.append({"field": path, "location": location, "message": message, "type": str(error.get("type", "invalid"))})
    first = items[0] if items else {"field": "", "message": "invalid input"}
    where = f"{first['field']}: " if first["field"] else ""
    return {"detail": f"invalid input: {where}{first['message']}", "errors": items}


async def _request_validation(request: Request, exc: RequestValidationError) -> JSONResponse:
    return _json(422, validation_body(list(exc.errors())))


async def _invalid_input(request: Request, exc: InvalidInputError) -> JSONResponse:
    field = exc.field or ""
    return _json(
        422,
        {
            "detail": f"invalid input: {exc}",
            "errors": [{"field": field, "location": "body", "message": exc.message, "type": "value_error"}],
        },
    )


async def _not_found(request: Request, exc: NotFoundError) -> JSONResponse:
    return _json(404, {"detail": str(exc)})


async def _invalid_state(request: Request, exc: InvalidStateError) -> JSONResponse:
    if isinstance(exc, AlreadyEnrolledError):
        return _json(409, {"detail": str(exc), "field": exc.field, "enrollment_id": exc.enrollment_id,
                           "enrollment_status": exc.enrollment_status})
    return _json(409, {"detail": str(exc)})


async def _busy(request: Request, exc: BusyError) -> JSONResponse:
    return _json(503, {"detail": str(exc)}, headers={"Retry-After": str(exc.retry_after)})


async def _followups_error(request: Request, exc: FollowupsError) -> JSONResponse:
    # A deliberate product error without a more precise class: the request could not be done.
    return _json(409, {"detail": str(exc)})


def allowed_methods(request: Request) -> list[str]:
    """Every method some route serves at this path (Starlette names only the first route's)."""
    methods: set[str] = set()
    for route in request.app.router.routes:
        match, _ = route.matches({**request.scope, "method": "GET"})
        route_methods = getattr(route, "methods", None)
        if match != Match.NONE and route_methods:
            methods |= set(route_methods)
    return sorted(methods)


async def _http_exception(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    detail = exc.detail if isinstance(exc.detail, str) else json.dumps(exc.detail, default=str)
    if exc.status_code == 400 and detail == BODY_PARSE_ERROR:
        # FastAPI's answer to a body it cannot decode: bad input, like malformed JSON.
        return _json(
            422,
            {
                "detail": "invalid input: the body cannot be decoded",
                "errors": [{"field": "", "location": "body", "message": "the body cannot be decoded", "type": "json_invalid"}],
            },
        )
    headers = dict(getattr(exc, "headers", None) or {})
    if exc.status_code == 405:
        headers["Allow"] = ", ".join(allowed_methods(request))
    return _json(exc.status_code, {"detail": detail}, headers=headers or None)


async def _database_down(request: Request, exc: Exception) -> JSONResponse:
    log.error("database error on %s %s: %s", request.method, request.url.path, exc)
    return _json(503, {"detail": "the database is unavailable; try again later"})


async def _integrity(request: Request, exc: Exception) -> JSONResponse:
    log.warning("integrity error on %s %s: %s", request.method, request.url.path, exc)
    return _json(409, {"detail": "the request conflicts with existing data"})


async def _data_error(request: Request, exc: Exception) -> JSONResponse:
    log.warning("data error on %s %s: %s", request.method, request.url.path, exc)
    return _json(
        422,
        {
            "detail": "invalid input: a value is out of range or malformed",
            "errors": [{"field": "", "location": "body", "message": "value out of range or malformed", "type": "value_error"}],
        },
    )


async def _arithmetic(request: Request, exc: ArithmeticError) -> JSONResponse:
    # e.g. a WAIT of 1e300 days: validators that overflow instead of raising ValueError.
    return _json(
        422,
        {
            "detail": f"invalid input: a number is out of range ({exc})",
            "errors": [{"field": "", "location": "body", "message": "number out of range", "type": "value_error"}],
        },
    )


async def _http_client_error(request: Request, exc: Exception) -> JSONResponse:
    log.error("upstream HTTP error on %s %s: %s", request.method, request.url.path, exc)
    return _json(503, {"detail": "the Prefect API is unavailable; try again later"})


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(RequestValidationError, _request_validation)
    app.add_exception_handler(InvalidInputError, _invalid_input)
    app.add_exception_handler(NotFoundError, _not_found)
    app.add_exception_handler(InvalidStateError, _invalid_state)
    app.add_exception_handler(BusyError, _busy)
    app.add_exception_handler(FollowupsError, _followups_error)
    app.add_exception_handler(StarletteHTTPException, _http_exception)
    app.add_exception_handler(OperationalError, _database_down)
    app.add_exception_handler(DBAPIError, _database_down)
    app.add_exception_handler(IntegrityError, _integrity)
    app.add_exception_handler(DataError, _data_error)
    app.add_exception_handler(httpx.HTTPError, _http_client_error)
    app.add_exception_handler(ArithmeticError, _arithmetic)


class LastResortMiddleware:
    """Turn any exception that escaped the handlers into a logged 503 instead of a 500."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except Exception:
            log.exception("unhandled error on %s %s", scope.get("method"), scope.get("path"))
            if started:
                raise
            response = _json(503, {"detail": "the service could not complete this request; try again later"})
            await response(scope, receive, send)
