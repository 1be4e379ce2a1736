"""`followups deal-event DEAL accepted|rejected|closed` and `followups analytics SEQUENCE [--publish]`."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from followups.cli_output import print_json

JsonFlag = Annotated[bool, typer.Option("--json", help="Print JSON for scripts")]
Owner = Annotated[str, typer.Option("--owner", envvar="FOLLOWUPS_OWNER", help="User who owns the deal or sequence")]
COUNTERS = ("sent", "delivered", "opened", "clicked", "bounced", "replied", "unsubscribed", "failed", "outcome_unknown")
# A counter's rate is shown in its cell, e.g. "3 (50.0%)": counter -> rate.
RATE_OF = {"delivered": "delivery_rate", "opened": "open_rate", "clicked": "click_rate", "replied": "reply_rate",
           "bounced": "bounce_rate", "unsubscribed": "unsubscribe_rate"}
RATES_CAPTION = "rates: delivered, replied, bounced, unsubscribed per sent; opened, clicked per delivered"


def _owner_id(name: str) -> int:
    from followups.db.session import session_scope
    from followups.users import user_id_by_name

    with session_scope(read_only=True) as session:
        return user_id_by_name(session, name)


def _stops(stopped: dict[str, int]) -> str:
    return ", ".join(f"{reason} {count}" for reason, count in stopped.items()) or "-"


def _cell(counts, name: str) -> str:
    rate = counts.rates.get(RATE_OF.get(name, ""))
    return str(getattr(counts, name)) + ("" if rate is None else f" ({rate:.1%})")


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
    def analytics(
        sequence: int,
        owner: Owner = "default",
        as_json: JsonFlag = False,
        publish: Annotated[bool, typer.Option("--publish", help="Also publish it as a Prefect table artifact")] = False,
    ) -> None:
        """Sent, delivered, opened, clicked, bounced, replied, unsubscribed, failed, outcome-unknown,
        their rates and stops by reason, per step and per variant of an A/B step."""
        from followups.analytics import sequence_analytics
        from followups.inputs import check_id

        check_id(sequence, "sequence")
        owner_id = _owner_id(owner)
        report = sequence_analytics(owner_id, sequence)
        key = _publish(owner_id, sequence) if publish else None
        if as_json:
            print_json({**report.as_dict(), **({"artifact_key": key} if key else {})})
            return
        table = Table(title=f"Sequence {sequence}", caption=RATES_CAPTION)
        for column in ("step", "type", "variant", *COUNTERS, "stopped"):
            table.add_column(column.replace("outcome_", ""))
        rows = []
        for s in report.steps:
            rows.append((str(s.step_index), s.type or "", "", s))
            rows += [("", "", v.name, v) for v in s.variants]
        rows += [("before first", "", "", report.before_first_message), ("total", "", "", report.totals)]
        for step, kind, variant, counts in rows:
            table.add_row(
                step, kind, escape(variant), *(_cell(counts, name) for name in COUNTERS), escape(_stops(counts.stopped))
            )
        console.print(table)
        if key:
            console.print(f"published Prefect artifact {key}")

    def _publish(owner_id: int, sequence: int) -> str:
        from followups.analytics import publish_stats
        from followups.cli_output import PREFECT_UNREACHABLE
        from followups.errors import FollowupsError
        from followups.prefect_server import api_is_healthy, configured_api_url

        api_url = configured_api_url()
        if not api_url or not api_is_healthy(api_url):
            raise FollowupsError(PREFECT_UNREACHABLE)
        return publish_stats(owner_id, sequence)
