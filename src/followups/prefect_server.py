"""Find a Prefect API to talk to, or start a local Prefect server for the demo.

Order: PREFECT_API_URL if it answers; else a server already on 127.0.0.1:4200; else
`prefect server start` detached (left running so the runs stay visible in the UI; its log is
~/.followups/prefect-server.log).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import httpx

LOCAL_API_URL = "http://127.0.0.1:4200/api"

# What keeps the Prefect database bounded, for the servers this product starts (a value already
# in the environment wins). Each enrollment leaves ~80 event rows (~60 KiB) and, per step, a
# finished flow run with its states and logs. Events are only what the UI's event feed and the
# automations look back on: 2 days (Prefect's docs suggest 1-2 above 1,000 runs a day; its
# default is 7). Finished runs are deleted 30 days after they end (Prefect keeps them forever
# unless the db-vacuum service is told to); a waiting enrollment's run is Scheduled, never
# finished, so it is never deleted, and the event log in our database keeps the full history.
RETENTION_DEFAULTS = {
    "PREFECT_SERVER_EVENTS_RETENTION_PERIOD": "P2D",
    "PREFECT_SERVER_SERVICES_DB_VACUUM_ENABLED": "events,flow_runs",
    "PREFECT_SERVER_SERVICES_DB_VACUUM_RETENTION_PERIOD": str(30 * 86400),
}


def with_retention(env: dict[str, str]) -> dict[str, str]:
    """`env` with the retention defaults added where it sets none."""
    return {**RETENTION_DEFAULTS, **env}


def api_is_healthy(api_url: str | None, timeout: float = 2.0) -> bool:
    if not api_url:
        return False
    try:
        return httpx.get(f"{api_url.rstrip('/')}/health", timeout=timeout).status_code == 200
    except httpx.HTTPError:
        return False


def configured_api_url() -> str | None:
    from prefect.settings import PREFECT_API_URL

    return os.environ.get("PREFECT_API_URL") or PREFECT_API_URL.value() or None


def ensure_prefect_api(start_timeout: float = 90) -> tuple[str, bool]:
    """Return (api_url, started_here)."""
    configured = configured_api_url()
    if configured:
        if api_is_healthy(configured):
            return configured, False
        raise RuntimeError(f"PREFECT_API_URL={configured} does not answer; start that server or unset it")
    if api_is_healthy(LOCAL_API_URL):
        return LOCAL_API_URL, False
    log_path = Path.home() / ".followups" / "prefect-server.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    env = with_retention({**os.environ, "PREFECT_SERVER_ANALYTICS_ENABLED": "false"})
    with open(log_path, "ab") as log:
        subprocess.Popen(
            [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", "4200"],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            start_new_session=True,  # outlives the demo: the UI keeps showing its runs
        )
    deadline = time.monotonic() + start_timeout
    while not api_is_healthy(LOCAL_API_URL):
        if time.monotonic() > deadline:
            raise RuntimeError(f"the local Prefect server did not start; see {log_path}")
        time.sleep(0.5)
    return LOCAL_API_URL, True


def wait_for_deployment(name: str, timeout: float = 90) -> None:
    """Block until a runner or worker has registered deployment `name` (e.g. right after `serve`)."""
    from prefect.client.orchestration import get_client

    deadline = time.monotonic() + timeout
    with get_client(sync_client=True) as client:
        while True:
            try:
                client.read_deployment_by_name(name)
                return
            except Exception:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"deployment {name} was not registered within {timeout:.0f}s") from None
                time.sleep(0.5)
