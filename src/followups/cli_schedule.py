"""Sending schedule commands: `followups preview` and `followups limits show|apply|set`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from followups.cli_output import load_file, print_json

JsonFlag = Annotated[bool, typer.Option("--json", help="Print JSON for scripts")]
Owner = Annotated[str, typer.Option("--owner", envvar="FOLLOWUPS_OWNER", help="User who owns the sequence")]


def _message_text(row: dict) -> str:
    message = row.get("message")
    if row.get("skipped"):
        return f"(skipped: {row['skipped']})"
    if not message:
        return ""
    if row.get("variants"):
        return "\n".join(f"[{v['name']} {v['share']:.0%}] " + _message_text({"message": v["message"]}) for v in row["variants"])
    if "error" in message:
        return f"(cannot render: {message['error']})"
    if "subject" in message:
        return f"Subject: {message['subject']}\n{message.get('text') or message.get('html') or ''}"
    return message["body"]


def register(app: typer.Typer, console: Console) -> None:
    limits_app = typer.Typer(help="Send caps: rolling 24 h and hourly windows per sending identity, rates per account.", no_args_is_help=True)
    app.add_typer(limits_app, name="limits")

    @app.command()
    def preview(
        sequence: Annotated[int, typer.Argument(help="Sequence id")],
        deal: Annotated[Path, typer.Option("--deal", help="YAML/JSON file with the deal, as `enroll --deal-file` takes")],
        start: Annotated[str, typer.Option("--start", help="When the first step falls due, ISO 8601 (no offset: UTC)")],
        owner: Owner = "default",
        as_json: JsonFlag = False,
    ) -> None:
        """Every step's planned time (send window, quiet hours, holidays, business days, the steps'
        own send times) and the rendered messages, for a deal that is not enrolled. Writes nothing."""
        from followups.db.session import session_scope
        from followups.inputs import check_id
        from followups.preview import parse_start, preview_sequence
        from followups.users import user_id_by_name

        check_id(sequence, "sequence")
        parse_start(start)  # a bad date is reported before any file or database is touched
        fields = load_file(deal)
        with session_scope(read_only=True) as session:
            plan = preview_sequence(session, user_id_by_name(session, owner), sequence, fields, start)
        if as_json:
            print_json(plan)
            return
        table = Table(title=f"sequence {plan['sequence_id']} v{plan['sequence_version']} from {plan['start']}")
        for column in ("#", "step", "planned (recipient's time)", "why later", "caps", "message"):
            table.add_column(column)
        for row in plan["steps"]:
            when = row["send_at"] or row["due_at"]
            caps = ", ".join(cap["describe"] for cap in row.get("caps", []))
            table.add_row(
                str(row["index"]), row["type"] + (f" at {row['at']}" if row.get("at") else ""),
                escape(f"{when} ({row['timezone']})"), escape(row["detail"] or ""),
                escape(caps), escape(_message_text(row)),
            )
        console.print(table)

    @limits_app.command("show")
    def limits_show(as_json: JsonFlag = False) -> None:
        """Each sending identity's rolling 24 h and hourly caps: sends counted in the window ending
        now, sends promised a later slot, and when a send asking now would go. Writes nothing."""
        from datetime import UTC, datetime

        from followups.db.session import session_scope
        from followups.identity import database_id
        from followups.limits import configured_limits, window_usage
        from followups.settings import get_settings

        with session_scope(read_only=True) as session:
            limits = configured_limits(session, get_settings(), database_id())
            usage = window_usage(session, limits, datetime.now(UTC))
        rates = [cap for cap in limits if cap.kind == "rate"]
        if as_json:
            print_json({
                "windows": [item.as_dict() for item in usage],
                "rates": [{"name": cap.name, "account": cap.identity, "per_second": cap.decay_per_second} for cap in rates],
            })
            return
        table = Table(title="send caps (rolling windows, counted in PostgreSQL)")
        for column in ("identity", "cap", "used", "promised", "next free slot (UTC)"):
            table.add_column(column)
        for item in usage:
            table.add_row(
                escape(item.cap.identity), escape(item.cap.describe().rsplit(" for ", 1)[0]), str(item.used), str(item.promised),
                item.next_free.isoformat(timespec="seconds") if item.next_free else "now",
            )
        console.print(table)
        for cap in rates:
            console.print(f"rate: {cap.describe()} (Prefect limit {cap.name})", markup=False)

    @limits_app.command("apply")
    def limits_apply(as_json: JsonFlag = False) -> None:
        """Create or update the Prefect rate limits behind the per-second caps, from the settings
        (and delete this database's old per-day limits). Safe to run again: equal limits are left
        alone. The 24 h and hourly caps need no setup: they are counted in PostgreSQL."""
        from followups.cli_output import PREFECT_UNREACHABLE
        from followups.db.session import session_scope
        from followups.errors import FollowupsError
        from followups.identity import database_id
        from followups.limits import apply_limits, configured_limits
        from followups.prefect_server import api_is_healthy, configured_api_url
        from followups.settings import get_settings

        db_id = database_id()
        with session_scope(read_only=True) as session:
            wanted = configured_limits(session, get_settings(), db_id)
        if not api_is_healthy(configured_api_url()):
            raise FollowupsError(PREFECT_UNREACHABLE)
        applied = apply_limits(wanted, db_id=db_id)
        if as_json:
            print_json([item.as_dict() for item in applied])
            return
        table = Table(title="send rate limits in Prefect")
        for column in ("limit", "slots", "decay/s", "action"):
            table.add_column(column)
        for item in applied:
            table.add_row(escape(item.name), str(item.limit), f"{item.slot_decay_per_second:.6g}", item.action)
        console.print(table)

    @limits_app.command("set")
    def limits_set(
        user: str,
        email_daily: Annotated[Optional[int], typer.Option("--email-daily", help="Emails per rolling 24 h from this owner's address")] = None,
        email_hourly: Annotated[Optional[int], typer.Option("--email-hourly", help="Emails per rolling hour from this owner's address")] = None,
        sms_daily: Annotated[Optional[int], typer.Option("--sms-daily", help="SMS per rolling 24 h from this owner's number")] = None,
        sms_hourly: Annotated[Optional[int], typer.Option("--sms-hourly", help="SMS per rolling hour from this owner's number")] = None,
        reset: Annotated[bool, typer.Option("--reset", help="Back to the settings' caps for all four")] = False,
    ) -> None:
        """Set an owner's own caps (0: no cap; a cap left out is unchanged). They hold from the next send."""
        from followups.db.session import session_scope
        from followups.limits import CAP_FIELDS, set_caps
        from followups.settings import get_settings
        from followups.users import user_id_by_name

        given = dict(zip(CAP_FIELDS, (email_daily, email_hourly, sms_daily, sms_hourly), strict=True))
        changes = dict.fromkeys(CAP_FIELDS) if reset else {field: value for field, value in given.items() if value is not None}
        with session_scope() as session:
            caps = set_caps(session, user_id_by_name(session, user), **changes)
        settings = get_settings()

        def shown(field: str, per: str) -> str:
            value = caps[field]
            if value is None:
                default = getattr(settings, field)
                return f"{f'{default}/{per}' if default else 'no cap'} (the setting)"
            return f"{value}/{per}" if value else "no cap"

        console.print(
            f"{user}: email {shown('email_daily_cap', '24 h')}, {shown('email_hourly_cap', 'hour')}; "
            f"sms {shown('sms_daily_cap', '24 h')}, {shown('sms_hourly_cap', 'hour')}", markup=False,
        )
