"""`followups deal-event DEAL accepted|rejected|closed` and `followups analytics SEQUENCE`."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from followups.cli_output import print_json

JsonFlag = Annotated[bool, typer.Option("--json", help="Print JSON for scripts")]
Owner = Annotated[str, typer.Option("--owner", envvar="FOLLOWUPS_OWNER", help="User who owns the deal or sequence")]
COUNTERS = ("sent", "delivered", "opened", "bounced", "replied", "unsubscribed")


def _owner_id(name: str) -> int:
    from followups.db.session import session_scope
    from followups.users import user_id_by_name

    with session_scope(read_only=True) as session:
        return user_id_by_name(session, name)


def _stops(stopped: dict[str, int]) -> str:
    return ", ".join(f"{reason} {count}" for reason, count in stopped.items()) or "-"


def register(app: typer.Typer, console: Console) -> None:
    @app.command("deal-event")
    def deal_event(
        deal: Annotated[str, typer.Argument(help="The deal's external id")],
        event: Annotated[str, typer.Argument(help="accepted | rejected | closed (or offer_accepted, offer_rejected, deal_closed)")],
        owner: Owner = "default",
        via_event: Annotated[bool, typer.Option("--via-event", help="Emit the Prefect event instead")] = False,
        as_json: JsonFlag = False,
    ) -> None:
        """An offer was accepted or rejected, or the deal closed: stop the deal's open follow-ups."""
        from followups.deal_events import EVENT_NAMES, deal_event_type
        from followups.inputs import check_external_id

        kind = deal_event_type(event, "event")
        check_external_id(deal, "deal")
        owner_id = _owner_id(owner)
        if via_event:
            from followups.cli_output import PREFECT_UNREACHABLE
            from followups.deal_events import emit_deal_event
            from followups.errors import FollowupsError
            from followups.prefect_server import api_is_healthy, configured_api_url

            api_url = configured_api_url()
            if not api_url or not api_is_healthy(api_url):
                raise FollowupsError(PREFECT_UNREACHABLE)
            emitted = emit_deal_event(owner_id, deal, kind)
            if as_json:
                print_json({"event_id": str(emitted.id) if emitted else None})
            else:
                console.print(f"emitted {EVENT_NAMES[kind]} for deal {escape(deal)}")
            return
        from followups.deal_events import record_deal_event

        result = record_deal_event(owner_id, deal, kind)
        if as_json:
            print_json(result.as_dict())
            return
        console.print(
            f"deal {escape(result.deal_external_id)} {result.event}: stopped {result.stopped or 'none'}"
            + (f"; kept {result.kept} (their sequences do not stop on {result.event})" if result.kept else "")
        )

    @app.command()
    def analytics(sequence: int, owner: Owner = "default", as_json: JsonFlag = False) -> None:
        """Sent, delivered, opened, bounced, replied, unsubscribed and stops by reason, per step."""
        from followups.analytics import sequence_analytics
        from followups.inputs import check_id

        check_id(sequence, "sequence")
        report = sequence_analytics(_owner_id(owner), sequence)
        if as_json:
            print_json(report.as_dict())
            return
        table = Table(title=f"Sequence {sequence}")
        for column in ("step", "type", *COUNTERS, "stopped"):
            table.add_column(column)
        rows = [(str(s.step_index), s.type or "", s) for s in report.steps]
        rows += [("before first", "", report.before_first_message), ("total", "", report.totals)]
        for step, kind, counts in rows:
            table.add_row(step, kind, *(str(getattr(counts, name)) for name in COUNTERS), escape(_stops(counts.stopped)))
        console.print(table)
