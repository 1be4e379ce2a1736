"""Serve the deployments from this machine: `followups serve` (no work pool needed).

Each flow run is a new process (Prefect's stock runner). `limit` bounds how many run at once.
"""

from __future__ import annotations

import os

from prefect import serve

from followups import prefect_private
from followups.deployments.definitions import local_deployments


def serve_deployments(limit: int = 4) -> None:
    from followups.settings import get_settings

    # Each flow-run process sends heartbeats, so a run whose process dies with this runner is
    # seen (and marked Crashed by the zombie-run automation) instead of staying Running.
    os.environ.setdefault("PREFECT_FLOWS_HEARTBEAT_FREQUENCY", str(get_settings().run_heartbeat_seconds))
    # A run paused just as the runner picks it up must not stop the runner (`pause_as_abort`).
    prefect_private.apply_runner()
    serve(*local_deployments(), limit=limit)


if __name__ == "__main__":
    serve_deployments()
