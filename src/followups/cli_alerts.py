"""`followups automations apply`: this database's Prefect automations (see `followups.alerts`)."""

from __future__ import annotations

from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.markup import escape

from followups.cli_output import print_json


def register(app: typer.Typer, console: Console) -> None:
    automations_app = typer.Typer(help="Prefect automations that notify an operator.", no_args_is_help=True)
    app.add_typer(automations_app, name="automations")

    @automations_app.command("apply")
    def apply(
        block: Annotated[Optional[str], typer.Option(
            "--block", help="Notification block as <block-type-slug>/<name> (default: FOLLOWUPS_NOTIFICATION_BLOCK)",
        )] = None,
        as_json: Annotated[bool, typer.Option("--json", help="Print JSON for scripts")] = False,
    ) -> None:
        """Create or update (idempotently) the automations: follow-up runs whose heartbeat stopped
        are marked Crashed; with a notification block, alerts on a follow-up run that Failed or
        Crashed, an enrollment that FAILED, and stranded enrollments found by the reconciler."""
        from followups.alerts import apply_automations

        applied = apply_automations(block)
        if as_json:
            print_json([item.as_dict() for item in applied])
            return
        for item in applied:
            console.print(f"{item.action}: {escape(item.name)}")
        if len(applied) == 1:
            console.print("no notification block (--block or FOLLOWUPS_NOTIFICATION_BLOCK): no alerts were applied")
