"""`followups import FILE --sequence N`: enroll a deal list (CSV or JSON Lines) in one sequence;
`followups list`: an owner's enrollments, a page at a time.

Idempotent on each deal's external id, so it is resumable: run it again after an interruption
and only what is missing is enrolled (and any first run that was not scheduled yet). A deal that
was ever enrolled in the sequence counts as already there; `--again` enrolls anew those whose
enrollments have all finished (an open one is still there). Bad rows are
reported with their line number and never stop the others. Exit 1 only when the file cannot be
read at all or something fatal happened (no such owner or sequence, Prefect refusing the runs).
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

from followups.cli_output import one_line, print_json

BATCH_ROWS = 1000  # rows handed to the core at a time (memory stays flat on any file size)
SHOWN_ERRORS = 50


def count_lines(path: Path) -> int:
    """The file's lines, read in blocks (memory stays flat): the import's expected rows."""
    lines, last = 0, b"\n"
    try:
        with path.open("rb") as handle:
            while block := handle.read(1 << 20):
                lines += block.count(b"\n")
                last = block[-1:]
    except OSError:
        return 0  # the reader reports it
    return lines + (last != b"\n")


def register(app: typer.Typer, console: Console) -> None:
    @app.command("import")
    def import_deals(
        file: Annotated[Path, typer.Argument(help="CSV with a header row (external_id, property_address, seller_name, seller_email, seller_phone, seller_timezone, offer_amount, context.NAME) or JSON Lines (one deal object per line)")],
        sequence: Annotated[int, typer.Option("--sequence", help="Sequence id")],
        owner: Annotated[str, typer.Option("--owner", envvar="FOLLOWUPS_OWNER", help="User who owns the sequence and deals")] = "default",
        start_at: Annotated[str | None, typer.Option("--start-at", help="When the sequences start: ISO 8601 with its UTC offset, e.g. 2026-12-01T09:00:00-05:00 (default: now)")] = None,
        again: Annotated[bool, typer.Option("--again", help="Enroll anew the deals enrolled in this sequence before whose enrollments have all finished (default: they count as already there)")] = False,
        as_json: Annotated[bool, typer.Option("--json", help="Print JSON for scripts")] = False,
    ) -> None:
        """Enroll every deal of FILE in a sequence and start each one (now, or at --start-at);
        resumable and idempotent. A deal ever enrolled in the sequence is already there, unless
        --again and its enrollments have all finished."""
        from followups.bulk import ANALYZE_AFTER, check_request, enroll_batch, refresh_statistics
        from followups.db.session import session_scope
        from followups.errors import FollowupsError
        from followups.import_file import Reader
        from followups.inputs import check_id, check_start_at
        from followups.users import user_id_by_name

        check_id(sequence, "sequence")
        start = check_start_at(start_at, "--start-at")  # before reading: a bad time is fatal
        with session_scope(read_only=True) as session:
            owner_id = user_id_by_name(session, owner)
            check_request(session, owner_id, sequence)  # before reading: a wrong sequence is fatal
        reader = Reader(file)
        counts = {"ok": 0, "exists": 0, "error": 0}
        anew = 0  # enrolled again after finished enrollments (--again)
        finished_there = 0  # already there with only finished enrollments (what --again would enroll)
        bad: list[tuple[int, str, str]] = []  # (line, field, message)
        unscheduled = 0
        rows_read = 0

        def flush(pending: list) -> None:
            nonlocal unscheduled, anew, finished_there
            if not pending:
                return
            # A start that has come while importing is now (the core refuses a past one).
            when = start if start and start > datetime.now(UTC) else None
            outcome = enroll_batch(owner_id, [row.data for row in pending], sequence, start_at=when, again=again)
            for row, result in zip(pending, outcome.results, strict=True):
                counts[result.status] += 1
                anew += result.status == "ok" and result.previous_enrollment_id is not None
                finished_there += result.status == "exists" and result.enrollment_status not in (None, "ACTIVE", "PAUSED")
                if result.status == "error":
                    unscheduled += result.field == "prefect"
                    bad.append((row.line, result.field or "", result.message))

        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        # Rows enrolled out of the rows in the file: reading is instant, enrolling is the wait.
        columns = [TextColumn("importing"), BarColumn(), MofNCompleteColumn(), TextColumn("rows"), TimeRemainingColumn()]
        with Progress(*columns, console=console, disable=as_json, transient=False) as progress:
            lines = count_lines(file)
            task = progress.add_task("import", total=lines or None)
            pending = []
            for row in reader.rows():
                if rows_read == 0 and reader.kind == "csv":
                    progress.update(task, total=max(lines - 1, 1))  # the header is no row
                rows_read += 1
                if row.data is None:
                    counts["error"] += 1
                    bad.append((row.line, row.field or "", row.error))
                else:
                    pending.append(row)
                if len(pending) >= BATCH_ROWS:
                    flush(pending)
                    pending = []
                progress.update(task, completed=rows_read - len(pending))
            flush(pending)
            # Blank lines and multi-line CSV cells made the line count an estimate.
            progress.update(task, total=rows_read, completed=rows_read)
        if counts["ok"] >= ANALYZE_AFTER:
            refresh_statistics()
        bad.sort()
        if as_json:
            print_json({
                "file": str(file), "format": reader.kind, "rows": rows_read, "enrolled": counts["ok"],
                "already_there": counts["exists"], "again": again, "enrolled_anew": anew,
                "already_there_finished": finished_there,
                "start_at": start.isoformat() if start else None, "bad_rows": [{"line": line, "field": f or None, "message": m} for line, f, m in bad],
            })
        else:
            enrolled = f"{counts['ok']} enrolled" + (f" ({anew} of them anew, after finished enrollments)" if anew else "")
            there = f"{counts['exists']} already there" + (
                f" ({finished_there} of them finished: --again enrolls those anew)" if finished_there and not again else ""
            )
            console.print(
                f"{rows_read} row(s) read ({reader.kind}): {enrolled}, {there}, "
                f"{counts['error']} bad" + (f"; their sequences start at {start.isoformat()}" if start and counts["ok"] else "")
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

    @app.command("list")
    def list_command(
        owner: Annotated[str, typer.Option("--owner", envvar="FOLLOWUPS_OWNER", help="User whose enrollments to list")] = "default",
        status: Annotated[str | None, typer.Option("--status", help="ACTIVE, PAUSED, COMPLETED, FAILED, CANCELLED or STOPPED")] = None,
        sequence: Annotated[int | None, typer.Option("--sequence", help="Only this sequence's enrollments")] = None,
        limit: Annotated[int, typer.Option("--limit", help="At most this many (1-500)")] = 50,
        before: Annotated[int | None, typer.Option("--before", help="Start after this id (the previous page's next_before)")] = None,
        as_json: Annotated[bool, typer.Option("--json", help="Print JSON for scripts")] = False,
    ) -> None:
        """The owner's enrollments, newest first."""
        from rich.table import Table

        from followups.control import list_enrollments
        from followups.db.session import session_scope
        from followups.users import user_id_by_name

        with session_scope(read_only=True) as session:
            owner_id = user_id_by_name(session, owner)
        page = list_enrollments(owner_id, status=status, sequence_id=sequence, limit=limit, before=before)
        if as_json:
            print_json(page.as_dict())
            return
        table = Table(title=f"Enrollments of {escape(owner)}")
        for column in ("id", "deal", "sequence", "status", "step", "next due"):
            table.add_column(column)
        for item in page.items:
            due = f"{item.next_due_at:%Y-%m-%d %H:%M %Z}" if item.next_due_at else ""
            table.add_row(str(item.id), escape(item.deal_external_id), f"{item.sequence_id} v{item.sequence_version}", item.status, str(item.current_step), due)
        console.print(table)
        if page.next_before is not None:
            console.print(f"more: the same command with --before {page.next_before}")
