"""Operator commands: `followups doctor` and `followups reconcile`, and (from `cli_schedule`)
`followups limits` and `followups preview`."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from followups.cli_output import print_json

JsonFlag = Annotated[bool, typer.Option("--json", help="Print JSON for scripts")]


def register(app: typer.Typer, console: Console) -> None:
    # cli.py is at its size limit: the newer command groups register through here.
    from followups.cli_alerts import register as register_alert_commands
    from followups.cli_bulk import register as register_bulk_commands
    from followups.cli_deals import register as register_deal_commands
    from followups.cli_scaled import register as register_scaled_commands
    from followups.cli_schedule import register as register_schedule_commands

    for register_commands in (register_schedule_commands, register_alert_commands, register_bulk_commands, register_deal_commands, register_scaled_commands):
        register_commands(app, console)

    @app.command()
    def doctor(as_json: JsonFlag = False) -> None:
        """Check the database, the Prefect API, the deployments, the workers and stranded
        enrollments; name the fix for each problem. Exits 1 when something is wrong."""
        from followups.doctor import diagnose

        checks = diagnose()
        if as_json:
            print_json([check.as_dict() for check in checks])
        else:
            table = Table(title="followups doctor")
            for column in ("check", "state", "detail", "fix"):
                table.add_column(column)
            for check in checks:
                state = "[green]ok[/]" if check.ok else "[red]problem[/]"
                table.add_row(escape(check.name), state, escape(check.detail), escape(check.fix))
            console.print(table)
        if not all(check.ok for check in checks):
            raise typer.Exit(1)

    @app.command()
    def reconcile(
        dry_run: Annotated[bool, typer.Option("--dry-run", help="Only report what disagrees")] = False,
        as_json: JsonFlag = False,
    ) -> None:
        """Check every open enrollment against its Prefect run now and repair what disagrees
        (what the scheduled reconcile-enrollments deployment does)."""
        from followups.lifecycle.sweep import sweep

        report = sweep(repair=not dry_run)
        if as_json:
            print_json(report.as_dict())
            return
        for enrollment_id, action, why in report.found:
            console.print(f"enrollment {enrollment_id}: {action} ({escape(why)})")
        if report.undelivered:
            done = f"; {report.redelivered} delivered now" if not dry_run else ""
            console.print(f"{len(report.undelivered)} suspend/resume/cancel effect(s) had not reached Prefect{done}")
        if report.undelivered_runs:
            done = f"; {report.created_runs} created now" if not dry_run else ""
            console.print(f"{len(report.undelivered_runs)} next run(s) had not been created in Prefect{done}")
        console.print(f"checked {report.checked} open enrollment(s); repaired {dict(report.repaired) or 'none'}")
