"""`followups`: the command line. Errors exit non-zero with one line, never a traceback."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
import yaml
from rich.console import Console
from rich.table import Table

from followups.errors import FollowupsError, InvalidInputError

app = typer.Typer(help="Offer follow-up sequences on Prefect.", no_args_is_help=True, pretty_exceptions_enable=False)
db_app = typer.Typer(help="Database schema.", no_args_is_help=True)
sequences_app = typer.Typer(help="Sequence templates (per owner).", no_args_is_help=True)
users_app = typer.Typer(help="Users of the HTTP API.", no_args_is_help=True)
tokens_app = typer.Typer(help="API tokens.", no_args_is_help=True)
app.add_typer(db_app, name="db")
app.add_typer(sequences_app, name="sequences")
app.add_typer(users_app, name="users")
app.add_typer(tokens_app, name="tokens")

# Piped output (scripts, CI logs) gets wide tables instead of rich's 80-column default.
console = Console(width=None if sys.stdout.isatty() else 160)

Owner = Annotated[str, typer.Option("--owner", envvar="FOLLOWUPS_OWNER", help="User who owns the sequences and deals")]
JsonFlag = Annotated[bool, typer.Option("--json", help="Print JSON for scripts")]
FileArg = Annotated[Path, typer.Option("-f", "--file", help="YAML or JSON file")]


def _print_json(data: Any) -> None:
    print(json.dumps(data, indent=2, default=str))


def _load_file(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text()
    except OSError as exc:
        raise InvalidInputError(f"cannot read {path}: {exc.strerror}") from exc
    try:
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as exc:
        kind = "JSON" if path.suffix == ".json" else "YAML"
        raise InvalidInputError(f"{path} is not valid {kind}: {str(exc).splitlines()[0]}") from exc
    if not isinstance(data, dict):
        raise InvalidInputError(f"{path} must hold a mapping of fields")
    return data


def _owner_id(name: str, *, create: bool = False) -> int:
    from followups.db.session import session_scope
    from followups.users import ensure_user, user_id_by_name

    with session_scope() as session:
        return ensure_user(session, name) if create else user_id_by_name(session, name)


# -- db, demo, serving --------------------------------------------------------------------


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


@app.command()
def api(
    host: Annotated[str, typer.Option(help="Interface to listen on")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535)] = 8000,
) -> None:
    """Run the HTTP API (uvicorn); OpenAPI at /openapi.json, docs at /docs."""
    from followups.api.app import run_api

    run_api(host, port)


@users_app.command("create")
def users_create(name: str, as_json: JsonFlag = False) -> None:
    """Create a user (no-op if it exists)."""
    from followups.api_tokens import create_user

    user_id = create_user(name)
    _print_json({"id": user_id, "name": name}) if as_json else console.print(f"user {name} has id {user_id}")


@tokens_app.command("create")
def tokens_create(user: str, label: Annotated[str, typer.Option(help="What the token is for")] = "") -> None:
    """Create an API token for USER (created if missing). It is printed once, stored hashed."""
    from followups.api_tokens import create_token

    print(create_token(user, label))


@tokens_app.command("revoke")
def tokens_revoke(user: str, label: Annotated[Optional[str], typer.Option(help="Only tokens with this label")] = None) -> None:
    """Revoke USER's tokens."""
    from followups.api_tokens import revoke_tokens

    console.print(f"revoked {revoke_tokens(user, label)} token(s)")


# -- sequences ----------------------------------------------------------------------------


def _sequence_table(items: list) -> Table:
    table = Table(title="Sequences")
    for column in ("id", "name", "version", "enabled", "default", "steps"):
        table.add_column(column)
    for item in items:
        steps = " → ".join(step["type"] for step in item.steps)
        table.add_row(str(item.id), item.name, str(item.version), str(item.enabled), str(item.is_default), steps)
    return table


@sequences_app.command("list")
def sequences_list(owner: Owner = "default", as_json: JsonFlag = False) -> None:
    """The owner's sequences, newest first."""
    from followups.db.session import session_scope
    from followups.sequences import list_sequences

    owner_id = _owner_id(owner, create=True)
    with session_scope() as session:
        items = list_sequences(session, owner_id, limit=1000)
    if as_json:
        _print_json([item.as_dict() for item in items])
    else:
        console.print(_sequence_table(items))


@sequences_app.command("show")
def sequences_show(sequence_id: int, owner: Owner = "default", as_json: JsonFlag = False) -> None:
    """One sequence with its steps."""
    from followups.db.session import session_scope
    from followups.sequences import get_sequence

    with session_scope() as session:
        item = get_sequence(session, _owner_id(owner), sequence_id)
    if as_json:
        _print_json(item.as_dict())
        return
    console.print(f"[bold]{item.name}[/] (id {item.id}, version {item.version}){' — default' if item.is_default else ''}")
    if item.description:
        console.print(item.description)
    for index, step in enumerate(item.steps):
        details = {k: v for k, v in step.items() if k != "type" and v not in (None, 0, 0.0)}
        console.print(f"  {index}. {step['type']} {details}", markup=False)


def _sequence_fields(data: dict[str, Any]) -> dict[str, Any]:
    allowed = {"name", "description", "steps", "enabled", "is_default"}
    unknown = set(data) - allowed
    if unknown:
        raise InvalidInputError(f"unknown field(s) {', '.join(sorted(unknown))}", field=sorted(unknown)[0])
    return data


@sequences_app.command("create")
def sequences_create(file: FileArg, owner: Owner = "default", as_json: JsonFlag = False) -> None:
    """Create a sequence from a file with name, description, steps (and is_default)."""
    from followups.db.session import session_scope
    from followups.sequences import create_sequence

    data = _sequence_fields(_load_file(file))
    owner_id = _owner_id(owner, create=True)
    with session_scope() as session:
        item = create_sequence(session, owner_id, **{"name": "", "steps": None, **data})
    _print_json(item.as_dict()) if as_json else console.print(f"created sequence {item.id} ({item.name})")


@sequences_app.command("update")
def sequences_update(sequence_id: int, file: FileArg, owner: Owner = "default", as_json: JsonFlag = False) -> None:
    """Edit a sequence; new steps make a new version (running enrollments keep theirs)."""
    from followups.db.session import session_scope
    from followups.sequences import update_sequence

    data = _sequence_fields(_load_file(file))
    with session_scope() as session:
        item = update_sequence(session, _owner_id(owner), sequence_id, **data)
    _print_json(item.as_dict()) if as_json else console.print(f"sequence {item.id} is at version {item.version}")


@sequences_app.command("delete")
def sequences_delete(
    sequence_id: int,
    owner: Owner = "default",
    archive: Annotated[bool, typer.Option(help="Archive even with open enrollments (they finish)")] = False,
) -> None:
    """Delete a sequence (archived instead when it was ever used)."""
    from followups.db.session import session_scope
    from followups.sequences import delete_sequence

    with session_scope() as session:
        outcome = delete_sequence(session, _owner_id(owner), sequence_id, archive=archive)
    console.print(f"sequence {sequence_id} {outcome}")


# -- enrollments --------------------------------------------------------------------------


def _deal_from_options(
    deal_file: Path | None,
    external_id: str | None,
    address: str | None,
    seller_name: str | None,
    seller_email: str | None,
    seller_phone: str | None,
    amount: str | None,
) -> dict[str, Any]:
    """The deal's fields: the file's, overridden by any option given on the command line."""
    deal = _load_file(deal_file) if deal_file else {}
    options = {
        "external_id": external_id, "property_address": address, "seller_name": seller_name,
        "seller_email": seller_email, "seller_phone": seller_phone, "offer_amount": amount,
    }
    deal.update({k: v for k, v in options.items() if v is not None})
    return deal


DealFile = Annotated[Optional[Path], typer.Option("--deal-file", help="YAML/JSON file with the deal's fields")]
ExternalId = Annotated[Optional[str], typer.Option("--deal", help="The deal's external id")]
Address = Annotated[Optional[str], typer.Option("--address")]
SellerName = Annotated[Optional[str], typer.Option("--seller-name")]
SellerEmail = Annotated[Optional[str], typer.Option("--seller-email")]
SellerPhone = Annotated[Optional[str], typer.Option("--seller-phone", help="E.164, e.g. +15035550142")]
Amount = Annotated[Optional[str], typer.Option("--amount", help="Offer amount")]


@app.command()
def enroll(
    sequence: Annotated[int, typer.Option("--sequence", help="Sequence id")],
    owner: Owner = "default",
    deal_file: DealFile = None,
    deal: ExternalId = None,
    address: Address = None,
    seller_name: SellerName = None,
    seller_email: SellerEmail = None,
    seller_phone: SellerPhone = None,
    amount: Amount = None,
    as_json: JsonFlag = False,
) -> None:
    """Enroll a deal's seller in a sequence and start it."""
    from followups.control import enroll_deal

    fields = _deal_from_options(deal_file, deal, address, seller_name, seller_email, seller_phone, amount)
    ref = enroll_deal(_owner_id(owner), fields, sequence)
    if as_json:
        _print_json({"enrollment_id": ref.id, "deal": ref.deal_external_id, "flow_run_id": str(ref.flow_run_id)})
    else:
        console.print(f"enrollment {ref.id} started for deal {ref.deal_external_id} (flow run {ref.flow_run_id})")


@app.command("offer-sent")
def offer_sent(
    offer_id: str,
    owner: Owner = "default",
    sequence: Annotated[Optional[int], typer.Option("--sequence", help="Sequence id (default: the owner's default)")] = None,
    via_event: Annotated[bool, typer.Option("--via-event", help="Emit deal.offer.sent to Prefect instead")] = False,
    deal_file: DealFile = None,
    deal: ExternalId = None,
    address: Address = None,
    seller_name: SellerName = None,
    seller_email: SellerEmail = None,
    seller_phone: SellerPhone = None,
    amount: Amount = None,
    as_json: JsonFlag = False,
) -> None:
    """Record that an offer was sent: enrolls the seller (once per offer)."""
    from followups.control import record_offer_sent
    from followups.enrollment import as_deal_input

    fields = _deal_from_options(deal_file, deal, address, seller_name, seller_email, seller_phone, amount)
    owner_id = _owner_id(owner)
    if via_event:
        from followups.offer_events import emit_offer_sent

        event = emit_offer_sent(owner_id, offer_id, as_deal_input(fields), sequence)
        _print_json({"event_id": str(event.id) if event else None}) if as_json else console.print(
            f"emitted deal.offer.sent for offer {offer_id}"
        )
        return
    result = record_offer_sent(owner_id, offer_id, fields, sequence_id=sequence)
    if as_json:
        _print_json(result.as_dict())
    elif result.enrolled:
        console.print(f"offer {offer_id}: enrollment {result.enrollment_id} started")
    else:
        console.print(f"offer {offer_id}: {result.reason} (enrollment {result.enrollment_id})")


def _status_output(details, as_json: bool) -> None:
    if as_json:
        _print_json(details.as_dict())
        return
    console.print(
        f"enrollment {details.id} · deal {details.deal_external_id} · sequence {details.sequence_id} "
        f"v{details.sequence_version} · [bold]{details.status}[/] · step {details.current_step}"
        + (f" · next due {details.next_due_at:%Y-%m-%d %H:%M:%S %Z}" if details.next_due_at else "")
    )
    table = Table()
    for column in ("step", "type", "state", "at"):
        table.add_column(column)
    for step in details.timeline:
        table.add_row(str(step.index), step.type, step.state, step.at.strftime("%Y-%m-%d %H:%M:%S") if step.at else "")
    console.print(table)


@app.command()
def status(enrollment: int, as_json: JsonFlag = False) -> None:
    """Status, next due time and the timeline of an enrollment."""
    from followups.control import get_enrollment

    _status_output(get_enrollment(enrollment), as_json)


@app.command()
def pause(enrollment: int, as_json: JsonFlag = False) -> None:
    """Pause an enrollment (its pending Prefect run is suspended)."""
    from followups.control import pause_enrollment

    _status_output(pause_enrollment(enrollment), as_json)


@app.command()
def resume(enrollment: int, as_json: JsonFlag = False) -> None:
    """Resume a paused enrollment, keeping what is left of its wait."""
    from followups.control import resume_enrollment

    _status_output(resume_enrollment(enrollment), as_json)


@app.command()
def cancel(enrollment: int, as_json: JsonFlag = False) -> None:
    """Cancel an enrollment for good."""
    from followups.control import cancel_enrollment

    _status_output(cancel_enrollment(enrollment), as_json)


@app.command()
def events(
    deal: Annotated[Optional[str], typer.Option("--deal", help="A deal's external id")] = None,
    enrollment: Annotated[Optional[int], typer.Option("--enrollment", help="An enrollment id")] = None,
    as_json: JsonFlag = False,
) -> None:
    """The event log of an enrollment or of a deal."""
    from followups.control import list_events

    items = list_events(enrollment_id=enrollment, deal_external_id=deal)
    if as_json:
        _print_json(items)
        return
    table = Table(title=f"Events of {'deal ' + deal if deal else f'enrollment {enrollment}'}")
    for column in ("#", "at", "enrollment", "step", "event", "status", "message id", "reason"):
        table.add_column(column)
    for item in items:
        table.add_row(
            str(item["id"]), item["occurred_at"][11:23], str(item["enrollment_id"]),
            "" if item["step_index"] is None else str(item["step_index"]), item["event_type"],
            item["status"], item["provider_message_id"] or "", item["failure_reason"] or "",
        )
    console.print(table)


def main() -> None:
    try:
        app()
    except FollowupsError as exc:
        _fail(str(exc))
    except Exception as exc:  # one line for the user; the details are in Prefect/the DB logs
        _fail(f"{type(exc).__name__}: {exc}")


def _fail(message: str) -> None:
    one_line = " ".join(message.split())
    print(f"error: {one_line}", file=sys.stderr)
    sys.exit(1)


if __name__ == "__main__":
    main()
