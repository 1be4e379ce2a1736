"""What the CLI prints: JSON for scripts, tables for people, input files, one line per error.

An error is one line on stderr naming what to do. Driver messages, SQL and tracebacks stay
out of it: they can carry statements, data and the installation's paths. Exception classes are
recognised by module name, so that no driver or Prefect module is imported just to print an
error (a command that never talked to Prefect must not pay for importing it).
"""

from __future__ import annotations

import json
import re
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from followups.errors import FollowupsError, InvalidInputError

MAX_LINE = 500
DB_MISSING = "the database does not exist yet; create it with `followups db upgrade`"
SCHEMA_MISSING = "the database has no or outdated tables; run `followups db upgrade`"
DB_UNREACHABLE = "cannot connect to PostgreSQL; check FOLLOWUPS_DATABASE_URL and that the server is running"
DB_URL_INVALID = "FOLLOWUPS_DATABASE_URL is not a valid database URL (postgresql+psycopg://user@host:5432/name)"
PREFECT_UNREACHABLE = (
    "cannot reach the Prefect API; start one with `prefect server start` and set PREFECT_API_URL "
    "(e.g. http://127.0.0.1:4200/api)"
)
PREFECT_REFUSED = "the Prefect API refused the request ({name}); check PREFECT_API_URL and that `followups serve` runs"
_MISSING_DATABASE = re.compile(r'database "[^"]*" does not exist')
_SCHEMA_STATES = {"42P01", "42703", "42883"}  # undefined table, column, function


def print_json(data: Any) -> None:
    print(json.dumps(data, indent=2, default=str))


def load_file(path: Path) -> dict[str, Any]:
    """The mapping in a YAML or JSON file; InvalidInputError naming the file otherwise."""
    import yaml

    kind = "JSON" if path.suffix == ".json" else "YAML"
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise InvalidInputError(f"{path} is not UTF-8 text") from None
    except OSError as exc:
        raise InvalidInputError(f"cannot read {path}: {exc.strerror or type(exc).__name__}") from None
    try:
        data = json.loads(text) if kind == "JSON" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as exc:
        raise InvalidInputError(f"{path} is not valid {kind}: {str(exc).splitlines()[0]}") from None
    except RecursionError:
        raise InvalidInputError(f"{path} is nested too deeply") from None
    if not isinstance(data, dict):
        raise InvalidInputError(f"{path} must hold a mapping of fields")
    return data


DealFile = Annotated[Optional[Path], typer.Option("--deal-file", help="YAML/JSON file with the deal's fields")]
ExternalId = Annotated[Optional[str], typer.Option("--deal", help="The deal's external id")]
Address = Annotated[Optional[str], typer.Option("--address")]
SellerName = Annotated[Optional[str], typer.Option("--seller-name")]
SellerEmail = Annotated[Optional[str], typer.Option("--seller-email")]
SellerPhone = Annotated[Optional[str], typer.Option("--seller-phone", help="E.164, e.g. +15035550142")]
Amount = Annotated[Optional[str], typer.Option("--amount", help="Offer amount")]
AgainFlag = Annotated[bool, typer.Option("--again", help=(
    "Enroll the deal anew if it was enrolled in this sequence before and those enrollments have all finished "
    "(without it, a deal ever enrolled in the sequence is not enrolled again; an open enrollment never is)"))]


def deal_from_options(
    deal_file: Path | None,
    external_id: str | None,
    address: str | None,
    seller_name: str | None,
    seller_email: str | None,
    seller_phone: str | None,
    amount: str | None,
) -> dict[str, Any]:
    """The deal's fields: the file's, overridden by any option given on the command line."""
    deal = load_file(deal_file) if deal_file else {}
    options = {
        "external_id": external_id, "property_address": address, "seller_name": seller_name,
        "seller_email": seller_email, "seller_phone": seller_phone, "offer_amount": amount,
    }
    deal.update({k: v for k, v in options.items() if v is not None})
    return deal


# -- tables (rich renders markup: text from users is escaped) ---------------------------


def sequence_table(items: list) -> Table:
    table = Table(title="Sequences")
    for column in ("id", "name", "version", "enabled", "default", "steps"):
        table.add_column(column)
    for item in items:
        steps = " → ".join(step["type"] for step in item.steps)
        table.add_row(str(item.id), escape(item.name), str(item.version), str(item.enabled), str(item.is_default), steps)
    return table


def utc_time(at: datetime) -> str:
    """A time as status shows it: in UTC, and saying so (a WAIT's due time is stored in the
    seller's offset, a send's in UTC: shown as they are, they would not compare)."""
    return (at if at.tzinfo else at.replace(tzinfo=UTC)).astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def status_output(console: Console, details: Any, as_json: bool) -> None:
    if as_json:
        print_json(details.as_dict())
        return
    console.print(
        f"enrollment {details.id} · deal {details.deal_external_id} · sequence {details.sequence_id} "
        f"v{details.sequence_version} · [bold]{details.status}[/] · step {details.current_step}"
        + (f" · next due {utc_time(details.next_due_at)}" if details.next_due_at else "")
        + (f" · run {escape(details.run_state)}" if getattr(details, "run_state", None) else "")
    )
    if getattr(details, "in_prefect", None):
        console.print(f"[bold]in Prefect:[/] {escape(details.in_prefect)}")
    table = Table()
    for column in ("step", "type", "state", "at", "message"):
        table.add_column(column)
    for step in details.timeline:
        state = f"{step.state} ({step.deferred_by})" if getattr(step, "deferred_by", None) else step.state
        table.add_row(
            str(step.index), step.type, state, utc_time(step.at) if step.at else "",
            escape(one_line(step.message or "", 60)),
        )
    console.print(table)
    prefect_links_output(console, details)


def prefect_links_output(console: Console, details: Any) -> None:
    """The pending run's page and the enrollment's runs list in the Prefect UI, when known."""
    from followups.identity import database_tag
    from followups.prefect_links import flow_run_link, runs_list_link, ui_base

    base = ui_base()
    if not base:
        return
    run = flow_run_link(details.flow_run_id, base)
    if run:
        console.print(f"Prefect run: {run}", markup=False, soft_wrap=True)
    console.print(f"Prefect runs: {runs_list_link(details, database_tag(), base)}", markup=False, soft_wrap=True)


def sender_identity_output(console: Console, user_name: str, identity: Any, as_json: bool) -> None:
    """A user's sending identity: what is set, and what messages actually go out with."""
    from followups.settings import get_settings
    from followups.users import describe_sender_identity

    described = describe_sender_identity(identity, get_settings())
    if as_json:
        print_json({"user": user_name, **described})
        return
    effective = described["effective"]
    sms = effective["messaging_service_sid"] or effective["sms_from"]
    rows = [
        ("email from", effective["email_from"], described["email_from"]),
        ("email from name", effective["email_from_name"], described["email_from_name"]),
        ("sms from", sms, described["messaging_service_sid"] or described["sms_from"]),
        ("time zone", described["timezone"] or "UTC (deals and phones without a zone)", described["timezone"]),
    ]
    table = Table(title=f"Sending identity of {escape(user_name)}")
    for column in ("field", "value", "source"):
        table.add_column(column)
    for label, value, own in rows:
        table.add_row(label, escape(value or "-"), "user" if own else "settings")
    console.print(table)


def events_table(items: list[dict[str, Any]], title: str) -> Table:
    table = Table(title=title)
    for column in ("#", "at", "enrollment", "step", "event", "status", "message id", "reason"):
        table.add_column(column)
    for item in items:
        table.add_row(
            str(item["id"]), item["occurred_at"][11:23], str(item["enrollment_id"]),
            "" if item["step_index"] is None else str(item["step_index"]), item["event_type"],
            item["status"], escape(item["provider_message_id"] or ""), escape(item["failure_reason"] or ""),
        )
    return table


# -- errors ------------------------------------------------------------------------------


def _chain(exc: BaseException) -> list[BaseException]:
    """The exception, what it wraps (`orig` of SQLAlchemy errors) and what caused it."""
    seen: list[BaseException] = []
    todo: list[BaseException | None] = [exc]
    while todo and len(seen) < 20:
        item = todo.pop(0)
        if item is None or any(item is known for known in seen):
            continue
        seen.append(item)
        orig = getattr(item, "orig", None)
        todo += [orig if isinstance(orig, BaseException) else None, item.__cause__, item.__context__]
    return seen


def _kinds(exc: BaseException) -> set[tuple[str, str]]:
    """(top-level package, class name) of every class of `exc`: ("httpx", "TransportError")."""
    return {(cls.__module__.partition(".")[0], cls.__qualname__) for cls in type(exc).__mro__}


def _packages(exc: BaseException) -> set[str]:
    return {package for package, _ in _kinds(exc)}


def _database_problem(chain: list[BaseException]) -> str | None:
    for item in chain:
        if _packages(item) & {"psycopg", "sqlalchemy"}:
            if getattr(item, "sqlstate", None) in _SCHEMA_STATES:
                return SCHEMA_MISSING
            if getattr(item, "sqlstate", None) == "3D000" or _MISSING_DATABASE.search(str(item)):
                return DB_MISSING
    for item in chain:
        kinds = _kinds(item)
        if kinds & {("sqlalchemy", "ArgumentError"), ("sqlalchemy", "NoSuchModuleError")}:
            return DB_URL_INVALID
        if kinds & {("sqlalchemy", "OperationalError"), ("sqlalchemy", "InterfaceError"), ("psycopg", "OperationalError")}:
            return DB_UNREACHABLE
    return None


def _prefect_problem(chain: list[BaseException]) -> str | None:
    for item in chain:
        if ("httpx", "TransportError") in _kinds(item):
            return PREFECT_UNREACHABLE
    for item in chain:
        if _packages(item) & {"prefect", "httpx"}:
            return PREFECT_REFUSED.format(name=type(item).__name__)
    return None


def _settings_problem(exc: BaseException) -> str | None:
    if ("pydantic_core", "ValidationError") not in _kinds(exc) or getattr(exc, "title", "") != "Settings":
        return None
    first = exc.errors(include_url=False, include_input=False)[0]  # type: ignore[attr-defined]
    name = "FOLLOWUPS_" + str(first["loc"][0]).upper() if first["loc"] else "a FOLLOWUPS_ setting"
    return f"invalid setting {name}: {first['msg']}"


def one_line(message: str, limit: int = MAX_LINE) -> str:
    """Whitespace collapsed, unprintable characters escaped, long messages cut."""
    text = " ".join(message.split())
    text = "".join(char if char.isprintable() else repr(char)[1:-1] for char in text)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def error_line(exc: BaseException) -> str:
    """The one line the user sees for `exc`."""
    if isinstance(exc, FollowupsError):
        return one_line(str(exc))
    chain = _chain(exc)
    return (
        _database_problem(chain)
        or _prefect_problem(chain)
        or _settings_problem(exc)
        or f"unexpected error ({type(exc).__name__}); set FOLLOWUPS_DEBUG=1 to see the traceback"
    )


def fail(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)
    sys.exit(1)
