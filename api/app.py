"""The FastAPI application: `create_app()` for tests and servers, `run_api()` for the CLI."""

from __future__ import annotations

from fastapi import Depends, FastAPI
from starlette.types import ASGIApp, Receive, Scope, Send

from followups.api import health, routes_enrollments, routes_me, routes_preview, routes_sequences, stats, webhooks_sendgrid, webhooks_twilio
from followups.api import routes_analytics, routes_deals, routes_unsubscribe
from followups.api.errors import LastResortMiddleware, install_error_handlers
from followups.api.limits import BodySizeLimitMiddleware
from followups.api.openapi import install_openapi
from followups.api.strict_query import reject_unknown_query
from followups.settings import get_settings
from followups.steps import deferred_templates

DESCRIPTION = """
Offer follow-up sequences: sequence templates, enrollments of deals in them, and the provider
webhooks that report deliveries, bounces, unsubscribes and replies.

**Auth.** Every `/api` call needs `Authorization: Bearer <token>` (`followups tokens create`).
A missing or wrong token is a 401. Objects of another user answer 404, exactly like missing ones.

**Errors.** `{"detail": "..."}`; invalid input is a 422 whose `errors[].field` names the field
(e.g. `steps.2.body`); unknown fields are rejected; bodies over the size limit are a 413; an
operation the object's state does not allow (pause a paused enrollment) is a 409.

**Deleting a sequence** with ACTIVE or PAUSED enrollments is refused (409) unless `?archive=true`,
which archives it: hidden, no new enrollments, while the open ones finish on their pinned version.
A sequence that was ever used is archived rather than removed, since the append-only event log
refers to it.

**Webhooks** (`/webhooks/...`) take no token: SendGrid events are ECDSA-signed, Twilio requests
carry X-Twilio-Signature; a bad or missing signature is a 403 and nothing is stored. Inbound
email is matched by its per-enrollment `reply+<token>@` address. Every delivery is stored once.
"""


def create_app() -> FastAPI:
    settings = get_settings()
    app = FastAPI(
        title="followups",
        version="0.1.0",
        description=DESCRIPTION,
        openapi_url="/openapi.json",
        dependencies=[Depends(reject_unknown_query)],
    )
    install_error_handlers(app)
    install_openapi(app)
    # The batch routes come before /api/enrollments/{enrollment_id}, which would take "batch" for an id.
    app.include_router(__import__("followups.api.routes_batch", fromlist=["router"]).router)  # POST /api/enrollments/batch
    for module in (routes_sequences, routes_preview, stats, routes_enrollments, webhooks_sendgrid, webhooks_twilio, health):
        app.include_router(module.router)
    app.include_router(routes_me.router)
    for module in (routes_deals, routes_analytics, routes_unsubscribe):
        app.include_router(module.router)
    # Added last = outermost: the last-resort guard wraps the size limit, which wraps the app.
    app.add_middleware(DeferTemplateChecks)
    app.add_middleware(BodySizeLimitMiddleware, max_body_bytes=settings.api_max_body_bytes)
    app.add_middleware(LastResortMiddleware)
    return app


class DeferTemplateChecks:
    """Request bodies are parsed on the event loop: rendering a sequence's templates there would
    stall every other request, so parsing skips them and the core (in the threadpool, where
    sync routes run) renders them with its time limit."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        with deferred_templates():
            await self.app(scope, receive, send)


def run_api(host: str = "127.0.0.1", port: int = 8000) -> None:
    """Serve the API with uvicorn (blocks until stopped)."""
    import uvicorn

    uvicorn.run(create_app(), host=host, port=port, log_level="info")
