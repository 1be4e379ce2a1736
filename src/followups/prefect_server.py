"""Find a Prefect API to talk to, or start a local Prefect server for the demo, and remember it.

Order: PREFECT_API_URL (environment or active Prefect profile) if it answers; else a server
already on 127.0.0.1:4200; else `prefect server start` detached (left running so the runs stay
visible in the UI; its log is ~/.followups/prefect-server.log), on PostgreSQL when it can be used.
A server found or started here is saved as the active Prefect profile `followups`
(`remember_api_url`), so later `followups` and `prefect` commands use it without any export.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx

from followups.errors import FollowupsError

LOCAL_API_URL = "http://127.0.0.1:4200/api"
PROFILE_NAME = "followups"

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
    """`env` with the retention defaults added where it sets none, and telemetry off (it calls
    out to the internet, and logs an ERROR with a traceback where it cannot)."""
    return {**RETENTION_DEFAULTS, **env, "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}


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


def api_url_source() -> tuple[str | None, str]:
    """The API URL this process's Prefect client uses, and where it was chosen."""
    import prefect.context
    from prefect.settings import PREFECT_API_URL

    url = PREFECT_API_URL.value() or None
    profile = prefect.context.get_settings_context().profile
    if url and os.environ.get("PREFECT_API_URL") == url:
        return url, "the PREFECT_API_URL environment variable"
    if url and profile.settings.get(PREFECT_API_URL) == url:
        return url, f"Prefect profile {profile.name!r}"
    if url:
        return url, "Prefect's settings (prefect.toml or .env)"
    return None, f"PREFECT_API_URL is unset and Prefect profile {profile.name!r} sets none"


def remember_api_url(api_url: str) -> str:
    """Make `api_url` what later commands of this PREFECT_HOME talk to: the active profile
    `followups` points at it, unless the user chose otherwise (PREFECT_API_URL in the
    environment, PREFECT_PROFILE, or an active profile with an API URL of its own). One line
    saying what was done."""
    from prefect.settings import PREFECT_API_URL, load_profiles, save_profiles

    use_it = f"`prefect config set PREFECT_API_URL={api_url}` to use this server"
    if os.environ.get("PREFECT_API_URL"):
        return f"PREFECT_API_URL is set in the environment: Prefect profiles left alone ({use_it} instead)"
    profiles = load_profiles()
    chosen = os.environ.get("PREFECT_PROFILE")
    active = chosen or profiles.active_name or "ephemeral"
    current = profiles[active].settings.get(PREFECT_API_URL) if active in profiles.names else None
    if current == api_url:
        return f"Prefect profile {active!r} already points at {api_url}"
    if active != PROFILE_NAME and (current or chosen):
        why = f"points at {current}" if current else "is chosen by PREFECT_PROFILE"
        return f"Prefect profile {active!r} {why}: left alone ({use_it})"
    profiles.update_profile(PROFILE_NAME, {PREFECT_API_URL: api_url})
    profiles.set_active(PROFILE_NAME)
    try:
        save_profiles(profiles)
    except OSError as exc:
        return f"could not save Prefect profile {PROFILE_NAME!r} ({exc}); {use_it}"
    back = f"; `prefect profile use {active}` switches back" if active != PROFILE_NAME else ""
    return f"Prefect profile {PROFILE_NAME!r} is active and points at {api_url}: later commands use this server{back}"


def server_database() -> tuple[str | None, str]:
    """(connection URL to set, one line saying which) for a local server: the environment's own
    choice; else Prefect's `prefect` database on the product's PostgreSQL (the one `followups
    prefect-server` uses too, created if missing); else None: Prefect's SQLite."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import SQLAlchemyError

    from followups.db.migrate import create_database_if_missing
    from followups.scaled_server import default_database_url

    if os.environ.get("PREFECT_SERVER_DATABASE_CONNECTION_URL") or os.environ.get("PREFECT_API_DATABASE_CONNECTION_URL"):
        return None, "Prefect's database: the one PREFECT_SERVER_DATABASE_CONNECTION_URL names"
    url = make_url(default_database_url())
    sqlite = None, "Prefect's database: SQLite in PREFECT_HOME (no PostgreSQL could be used for it)"
    if url.get_backend_name() != "postgresql":
        return sqlite
    try:
        create_database_if_missing(url.set(drivername="postgresql+psycopg").render_as_string(hide_password=False))
    except SQLAlchemyError:
        return sqlite
    where = f"{url.host}:{url.port or 5432}/{url.database}"
    return url.set(drivername="postgresql+asyncpg").render_as_string(hide_password=False), f"Prefect's database: PostgreSQL {where}"


def ensure_prefect_api(start_timeout: float = 90, say: Callable[[str], None] = lambda line: None) -> tuple[str, bool]:
    """Return (api_url, started_here); `say` is told, a line at a time, what was chosen."""
    configured = configured_api_url()
    if configured:
        source = api_url_source()[1]
        if api_is_healthy(configured):
            say(f"chosen by {source}")
            return configured, False
        raise FollowupsError(f"the Prefect API at {configured} ({source}) does not answer; start that server or unset it")
    if api_is_healthy(LOCAL_API_URL):
        say(remember_api_url(LOCAL_API_URL))
        return LOCAL_API_URL, False
    log_path = Path.home() / ".followups" / "prefect-server.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    env = with_retention(dict(os.environ))
    database, line = server_database()
    say(line)
    if database:
        env["PREFECT_SERVER_DATABASE_CONNECTION_URL"] = database
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
            raise FollowupsError(f"the local Prefect server did not start; see {log_path}")
        time.sleep(0.5)
    say(remember_api_url(LOCAL_API_URL))
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
