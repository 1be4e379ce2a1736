"""`followups`: the command line. Errors exit non-zero with one line, never a traceback."""

from __future__ import annotations

import sys
from typing import Annotated

import typer
from rich.console import Console

from followups.errors import FollowupsError

app = typer.Typer(help="Offer follow-up sequences on Prefect.", no_args_is_help=True, pretty_exceptions_enable=False)
db_app = typer.Typer(help="Database schema.", no_args_is_help=True)
app.add_typer(db_app, name="db")

console = Console()
err_console = Console(stderr=True)


@db_app.command("upgrade")
def db_upgrade() -> None:
    """Create the database if needed and apply every migration."""
    from followups.db.migrate import upgrade

    upgrade()
    console.print("database is up to date")


@app.command()
def serve(limit: Annotated[int, typer.Option(min=1, help="Flow runs at once")] = 4) -> None:
    """Serve the deployments with Prefect's stock runner (one process per flow run)."""
    from followups.deployments.serve import serve_deployments

    serve_deployments(limit=limit)


@app.command()
def demo() -> None:
    """Run one sample sequence end to end on embedded defaults and print its event log."""
    from followups.demo import run_demo

    status = run_demo(console)
    if status != "COMPLETED":
        raise FollowupsError(f"the demo sequence ended {status}")


def main() -> None:
    try:
        app()
    except FollowupsError as exc:
        err_console.print(f"error: {exc}", markup=False, highlight=False)
        sys.exit(1)


if __name__ == "__main__":
    main()
