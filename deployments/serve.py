"""Serve the deployments from this machine: `followups serve` (no work pool needed).

Each flow run is a new process (Prefect's stock runner). `limit` bounds how many run at once.
"""

from __future__ import annotations

from prefect import serve

from followups.deployments.definitions import local_deployments


def serve_deployments(limit: int = 4) -> None:
    serve(*local_deployments(), limit=limit)


if __name__ == "__main__":
    serve_deployments()
