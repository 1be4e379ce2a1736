"""Process-wide settings both fast-path front ends (the standalone worker and the work-pool
worker type) give their executor threads (public settings only)."""

from __future__ import annotations

import uuid
from typing import Any

from prefect.client.orchestration import SyncPrefectClient
from prefect.exceptions import PrefectHTTPStatusError
from prefect.settings import PREFECT_CLIENT_CSRF_SUPPORT_ENABLED, PREFECT_FLOWS_HEARTBEAT_FREQUENCY, get_current_settings

from followups.settings import get_settings


def server_uses_csrf(client: SyncPrefectClient) -> bool:
    """Whether the Prefect server enforces CSRF tokens (off by default)."""
    try:
        client.request("GET", "/csrf-token", params={"client": str(uuid.uuid4())})  # type: ignore[arg-type]
    except PrefectHTTPStatusError as exc:
        return exc.response.status_code != 422
    except Exception:  # noqa: BLE001 - keep Prefect's default when in doubt
        return True
    return True


def executor_settings(client: SyncPrefectClient) -> dict[Any, Any]:
    """Heartbeats off inside runs (one thread sends them for all, see upkeep.py), and client
    CSRF support off when the server does not enforce CSRF (a GET per new client otherwise)."""
    updates: dict[Any, Any] = {PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}
    if not server_uses_csrf(client):
        updates[PREFECT_CLIENT_CSRF_SUPPORT_ENABLED] = False
    return updates


def run_heartbeat_seconds() -> int | None:
    """Heartbeats by default, as `followups serve` sends them: the zombie-run rule takes a
    Running run that stays silent for a dead one."""
    return get_current_settings().flows.heartbeat_frequency or get_settings().run_heartbeat_seconds
