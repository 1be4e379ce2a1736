"""`followups import FILE --sequence N`: enroll a deal list (CSV or JSON Lines) in one sequence.

Idempotent on each deal's external id, so it is resumable: run it again after an interruption
and only what is missing is enrolled (and any first run that was not scheduled yet). Bad rows are
reported with their line number and never stop the others. Exit 1 only when the file cannot be
read at all or something fatal happened (no such owner or sequence, Prefect refusing the runs).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

from followups.cli_output import one_line, print_json

BATCH_ROWS = 1000  # rows handed to the core at a time (memory stays flat on any file size)
SHOWN_ERRORS = 50


def register(app: typer.Typer, console: Console) -> None:
    @app.command("import")
    def import_deals(
        file: Annotated[Path, typer.Argument(help="CSV with a header row (external_id, property_address, seller_name, seller_email, seller_phone, seller_timezone, offer_amount, context.NAME) or JSON Lines (one deal object per line)")],
        sequence: Annotated[int, typer.Option("--sequence", help="Sequence id")],
        owner: Annotated[str, typer.Option("--owner", envvar="FOLLOWUPS_OWNER", help="User who owns the sequence and deals")] = "default",
        as_json: Annotated[bool, typer.Option("--json", help="Print JSON for scripts")] = False,
    ) -> None:
        """Enroll every deal of FILE in a sequence and start each one; resumable and idempotent."""
        from followups.bulk import check_request, enroll_batch
        from followups.db.session import session_scope
        from followups.errors import FollowupsError
        from followups.import_file import Reader
        from followups.inputs import check_id
        from followups.users import user_id_by_name

        check_id(sequence, "sequence")
        with session_scope(read_only=True) as session:
            owner_id = user_id_by_name(session, owner)
            check_request(session, owner_id, sequence)  # before reading: a wrong sequence is fatal
        reader = Reader(file)
        counts = {"ok": 0, "exists": 0, "error": 0}
        bad: list[tuple[int, str, str]] = []  # (line, field, message)
        unscheduled = 0
        rows_read = 0

        def flush(pending: list) -> None:
            nonlocal unscheduled
            if not pending:
                return
            outcome = enroll_batch(owner_id, [row.data for row in pending], sequence)
            for row, result in zip(pending, outcome.results, strict=True):
                counts[result.status] += 1
                if result.status == "error":
                    unscheduled += result.field == "prefect"
                    bad.append((row.line, result.field or "", result.message))

        from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn

        columns = [TextColumn("importing"), BarColumn(), DownloadColumn(), TimeRemainingColumn(), TextColumn("{task.fields[done]} rows")]
        with Progress(*columns, console=console, disable=as_json, transient=False) as progress:
            task = progress.add_task("import", total=None, done=0)
            pending = []
            for row in reader.rows():
                progress.update(task, total=reader.size or None)
                rows_read += 1
                if row.data is None:
                    counts["error"] += 1
                    bad.append((row.line, row.field or "", row.error))
                else:
                    pending.append(row)
                if len(pending) >= BATCH_ROWS:
                    flush(pending)
                    pending = []
                progress.update(task, completed=reader.position(), done=rows_read)
            flush(pending)
            progress.update(task, completed=reader.size, done=rows_read)
        bad.sort()
        if as_json:
            print_json({
                "file": str(file), "format": reader.kind, "rows": rows_read, "enrolled": counts["ok"],
                "already_there": counts["exists"], "bad_rows": [{"line": line, "field": f or None, "message": m} for line, f, m in bad],
            })
        else:
            console.print(
                f"{rows_read} row(s) read ({reader.kind}): {counts['ok']} enrolled, {counts['exists']} already there, "
                f"{counts['error']} bad"
            )
            for line, field_name, message in bad[:SHOWN_ERRORS]:
                where = f"{field_name}: " if field_name else ""
                console.print(f"  line {line}: {escape(one_line(where + message, 200))}", soft_wrap=True)
            if len(bad) > SHOWN_ERRORS:
                console.print(f"  … and {len(bad) - SHOWN_ERRORS} more (--json lists them all)")
        if rows_read == 0:
            raise FollowupsError(f"{file.name} has no rows to import")
        if unscheduled:
            raise FollowupsError(
                f"{unscheduled} enrollment(s) stored but their first run could not be scheduled in Prefect; "
                "run the same import again to schedule them"
            )
