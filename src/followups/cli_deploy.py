"""`followups deploy --pool NAME`: the deployments into a Prefect work pool, from any directory
(see `followups.deployments.work_pool`)."""

from __future__ import annotations

from enum import Enum
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

from followups.cli_output import print_json


class PoolType(str, Enum):
    followups = "followups"
    process = "process"


def register(app: typer.Typer, console: Console) -> None:
    @app.command()
    def deploy(
        pool: Annotated[str, typer.Option("--pool", help="Work pool the deployments go into")],
        create_pool: Annotated[bool, typer.Option("--create-pool", help="Create the pool if it does not exist")] = False,
        pool_type: Annotated[PoolType, typer.Option(
            "--type", help="Type of a pool --create-pool creates: followups (runs on threads of one worker) or process (a process per run)",
        )] = PoolType.followups,
        as_json: Annotated[bool, typer.Option("--json", help="Print JSON for scripts")] = False,
    ) -> None:
        """Register every deployment (triggers and schedule included) into work pool POOL from the
        installed package, named after FOLLOWUPS_DEPLOYMENT_NAME, and save the "waiting" and "needs
        attention" searches in Prefect's UI. Idempotent. Then: `prefect worker start --pool POOL`."""
        from followups.cli_output import PREFECT_UNREACHABLE
        from followups.deployments.work_pool import deploy_to_pool
        from followups.errors import FollowupsError
        from followups.prefect_server import api_is_healthy, configured_api_url

        # Without a reachable API, Prefect would start a temporary server of its own and register there.
        if not api_is_healthy(configured_api_url()):
            raise FollowupsError(PREFECT_UNREACHABLE)
        deployed = deploy_to_pool(pool, pool_type.value if create_pool else None)
        if as_json:
            print_json(deployed.as_dict())
            return
        if deployed.pool_created:
            console.print(f"created work pool {escape(pool)} (type {pool_type.value})")
        for name in deployed.deployments:
            console.print(f"registered {escape(name)} in work pool {escape(pool)}")
        for item in deployed.saved_searches:
            console.print(f"saved search {item.action}: {escape(item.name)}")
        if deployed.moved_runs:
            console.print(f"moved {deployed.moved_runs} waiting flow run(s), created outside the pool, into it")
        console.print(f"start a worker with: prefect worker start --pool {escape(pool)}")
