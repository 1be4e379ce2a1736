"""`followups bulk pause|resume|cancel`: every open enrollment of a sequence, of some deals, or
of the owner, with a progress bar and one answer per enrollment (`followups.bulk_controls`)."""

from __future__ import annotations

from enum import Enum
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.markup import escape

from followups.cli_output import print_json


class Action(str, Enum):
    pause = "pause"
    resume = "resume"
    cancel = "cancel"


def register(app: typer.Typer, console: Console) -> None:
    @app.command("bulk")
    def bulk(
        action: Annotated[Action, typer.Argument(help="pause, resume or cancel")],
        sequence: Annotated[Optional[int], typer.Option("--sequence", help="Every open enrollment of this sequence")] = None,
        deal: Annotated[Optional[list[str]], typer.Option("--deal", help="A deal's external id (repeat it)")] = None,
        every: Annotated[bool, typer.Option("--all", help="Every open enrollment of the owner")] = False,
        owner: Annotated[str, typer.Option("--owner", envvar="FOLLOWUPS_OWNER", help="User whose enrollments to control")] = "default",
        as_json: Annotated[bool, typer.Option("--json", help="Print JSON for scripts")] = False,
    ) -> None:
        """Pause, resume or cancel many enrollments at once; idempotent (an enrollment already so
        answers "unchanged")."""
        from rich.progress import Progress

        from followups.bulk_controls import control_many
        from followups.db.session import session_scope
        from followups.inputs import check_id
        from followups.users import user_id_by_name

        if sequence is not None:
            check_id(sequence, "--sequence")
        with session_scope(read_only=True) as session:
            owner_id = user_id_by_name(session, owner)
        with Progress(console=console, transient=True, disable=as_json) as bar:
            task = bar.add_task(f"{action.value}", total=None)
            result = control_many(
                action.value, owner_id, sequence_id=sequence, deals=deal or None, every=every,
                progress=lambda done, total: bar.update(task, completed=done, total=total),
            )
        if as_json:
            print_json(result.as_dict())
        else:
            for answer in result.answers:
                if answer.outcome == "error":
                    what = f"enrollment {answer.enrollment_id}" if answer.enrollment_id else f"deal {escape(answer.deal)}"
                    console.print(f"{what}: {escape(answer.message or 'refused')}")
            counts = result.counts()
            console.print(f"{action.value}: {counts['done']} done, {counts['unchanged']} unchanged, {counts['error']} error(s)")
        if result.counts()["error"]:
            raise typer.Exit(1)
