"""`followups prefect-server`: the Prefect server as N API processes + a services process on
PostgreSQL and Redis (see `followups.scaled_server`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.markup import escape


def register(app: typer.Typer, console: Console) -> None:
    @app.command("prefect-server")
    def prefect_server(
        workers: Annotated[int, typer.Option("--workers", help="API processes (uvicorn workers)")] = 2,
        redis_url: Annotated[Optional[str], typer.Option(
            "--redis-url", help="Redis for messaging, cache, causal ordering and leases (default: PREFECT_REDIS_MESSAGING_URL, else redis://127.0.0.1:6379/0)",
        )] = None,
        docket_url: Annotated[Optional[str], typer.Option(
            "--docket-url", help="Redis for docket's task queue (default: PREFECT_SERVER_DOCKET_URL, else the next database number of --redis-url)",
        )] = None,
        database_url: Annotated[Optional[str], typer.Option(
            "--database-url", help="PostgreSQL for Prefect (default: PREFECT_SERVER_DATABASE_CONNECTION_URL, else database 'prefect' on FOLLOWUPS_DATABASE_URL's server; created if missing)",
        )] = None,
        host: Annotated[str, typer.Option("--host")] = "127.0.0.1",
        port: Annotated[int, typer.Option("--port")] = 4200,
        ui: Annotated[bool, typer.Option("--ui/--no-ui", help="Serve the Prefect UI")] = True,
        start_redis: Annotated[bool, typer.Option(
            "--start-redis/--no-start-redis", help="Start a local redis-server when Redis on 127.0.0.1 does not answer",
        )] = True,
        log_dir: Annotated[Optional[Path], typer.Option(
            "--log-dir", help="Write api.log and services.log here instead of to this terminal",
        )] = None,
    ) -> None:
        """Run the Prefect server scaled out: `prefect server start --workers N --no-services` plus
        `prefect server services start`, on PostgreSQL and Redis, after `prefect server database
        upgrade -y`. Waits for /api/health, then makes it the active Prefect profile `followups`
        (unless PREFECT_API_URL or another profile's API URL is chosen); Ctrl-C or SIGTERM stops both."""
        from followups.scaled_server import build_config, run_until_stopped

        config = build_config(
            workers=workers, redis_url=redis_url, docket_url=docket_url, database_url=database_url,
            host=host, port=port, ui=ui, start_redis=start_redis, log_dir=log_dir,
        )
        run_until_stopped(config, echo=lambda message: console.print(escape(message), highlight=False, soft_wrap=True))
