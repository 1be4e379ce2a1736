"""GET /healthz: is the database reachable, and the Prefect API? 503 when either is not."""

from __future__ import annotations

import asyncio
import logging

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from sqlalchemy import text
from starlette.concurrency import run_in_threadpool

from followups.api.schemas import Health
from followups.db.session import session_scope

log = logging.getLogger("followups.api.health")

router = APIRouter(tags=["health"])

CHECK_TIMEOUT_SECONDS = 5.0


def _database() -> None:
    with session_scope() as session:
        session.execute(text("SELECT 1"))


async def check_database() -> str:
    try:
        await asyncio.wait_for(run_in_threadpool(_database), CHECK_TIMEOUT_SECONDS)
        return "ok"
    except Exception as exc:
        log.warning("health: database unreachable: %s", exc)
        return f"unreachable: {type(exc).__name__}"


async def check_prefect() -> str:
    from prefect.client.orchestration import get_client

    try:
        async with get_client() as client:
            error = await asyncio.wait_for(client.api_healthcheck(), CHECK_TIMEOUT_SECONDS)
        if error is None:
            return "ok"
        log.warning("health: Prefect API unhealthy: %s", error)
        return f"unreachable: {type(error).__name__}"
    except Exception as exc:
        log.warning("health: Prefect API unreachable: %s", exc)
        return f"unreachable: {type(exc).__name__}"


@router.get(
    "/healthz",
    response_model=Health,
    responses={503: {"description": "The database or the Prefect API is unreachable", "model": Health}},
)
async def healthz() -> JSONResponse:
    """Checks the database (SELECT 1) and the Prefect API (its health endpoint)."""
    database, prefect = await asyncio.gather(check_database(), check_prefect())
    healthy = database == "ok" and prefect == "ok"
    body = Health(status="ok" if healthy else "unavailable", database=database, prefect=prefect)
    return JSONResponse(status_code=200 if healthy else 503, content=body.model_dump())
