"""`followups`: the command line. Errors exit 1 with one line on stderr, never a traceback.

Commands import what they need inside their body: `--help` and the commands that never talk to
Prefect (sequences, users, tokens, events, db) must not pay for importing it.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.markup import escape

from followups.cli_output import (PREFECT_UNREACHABLE, Address, AgainFlag, Amount, DealFile, ExternalId, SellerEmail,
                                  SellerName, SellerPhone, deal_from_options, error_line, events_table, fail, load_file,
                                  one_line, print_json, sequence_table, status_output)
from followups.cli_bulk_controls import register as register_bulk_controls
from followups.cli_deploy import register as register_deploy_command
from followups.cli_ops import register as register_operator_commands
from followups.errors import FollowupsError

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


def _check_id(value: int, field: str) -> int:
    # Imported here: followups.inputs brings SQLAlchemy and pydantic, which `--help` does not need.
    from followups.inputs import check_id

    return check_id(value, field)


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
    print_json({"id": user_id, "name": name}) if as_json else console.print(f"user {name} has id {user_id}", markup=False)


@users_app.command("identity")
def users_identity(
    name: str,
    email_from: Annotated[Optional[str], typer.Option(help="From address of the user's emails")] = None,
    email_from_name: Annotated[Optional[str], typer.Option(help="Display name of that address")] = None,
    sms_from: Annotated[Optional[str], typer.Option(help="E.164 number the user's SMS come from")] = None,
    messaging_service: Annotated[Optional[str], typer.Option(help="Twilio Messaging Service SID (MG…) instead")] = None,
    timezone: Annotated[Optional[str], typer.Option(help="The user's IANA zone, for deals and phones without one")] = None,
    clear: Annotated[bool, typer.Option("--clear", help="Forget the identity first (back to the settings)")] = False,
    as_json: JsonFlag = False,
) -> None:
    """Show or set NAME's sending identity; what is not set comes from the global settings."""
    from followups.cli_output import sender_identity_output
    from followups.users import change_identity_of

    changes = {"email_from": email_from, "email_from_name": email_from_name, "sms_from": sms_from, "timezone": timezone}
    identity = change_identity_of(name, {**changes, "messaging_service_sid": messaging_service}, clear=clear)
    sender_identity_output(console, name, identity, as_json)


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


@sequences_app.command("list")
def sequences_list(owner: Owner = "default", as_json: JsonFlag = False) -> None:
    """The owner's sequences, newest first."""
    from followups.db.session import session_scope
    from followups.sequences import list_sequences

    owner_id = _owner_id(owner, create=True)
    with session_scope() as session:
        items = list_sequences(session, owner_id, limit=1000)
    if as_json:
        print_json([item.as_dict() for item in items])
    else:
        console.print(sequence_table(items))


@sequences_app.command("show")
def sequences_show(sequence_id: int, owner: Owner = "default", as_json: JsonFlag = False) -> None:
    """One sequence with its steps."""
    _check_id(sequence_id, "sequence_id")
    from followups.db.session import session_scope
    from followups.sequences import get_sequence

    with session_scope() as session:
        item = get_sequence(session, _owner_id(owner), sequence_id)
    if as_json:
        print_json(item.as_dict())
        return
    console.print(f"[bold]{escape(item.name)}[/] (id {item.id}, version {item.version}){' — default' if item.is_default else ''}")
    if item.description:
        console.print(item.description, markup=False)
    for index, step in enumerate(item.steps):
        details = {k: v for k, v in step.items() if k != "type" and v not in (None, 0, 0.0)}
        console.print(f"  {index}. {step['type']} {details}", markup=False)


@sequences_app.command("create")
def sequences_create(file: FileArg, owner: Owner = "default", as_json: JsonFlag = False) -> None:
    """Create a sequence from a file with name, description, steps (and is_default)."""
    from followups.db.session import session_scope
    from followups.sequences import create_sequence
    from followups.users import ensure_user

    data = load_file(file)
    # One transaction: a new owner is not left behind when the file is refused.
    with session_scope() as session:
        item = create_sequence(session, ensure_user(session, owner), data)
    print_json(item.as_dict()) if as_json else console.print(f"created sequence {item.id} ({item.name})", markup=False)


@sequences_app.command("update")
def sequences_update(sequence_id: int, file: FileArg, owner: Owner = "default", as_json: JsonFlag = False) -> None:
    """Edit a sequence; new steps make a new version (running enrollments keep theirs)."""
    _check_id(sequence_id, "sequence_id")
    from followups.db.session import session_scope
    from followups.sequences import update_sequence
    from followups.users import user_id_by_name

    data = load_file(file)
    with session_scope() as session:
        item = update_sequence(session, user_id_by_name(session, owner), sequence_id, data)
    print_json(item.as_dict()) if as_json else console.print(f"sequence {item.id} is at version {item.version}")


@sequences_app.command("delete")
def sequences_delete(
    sequence_id: int,
    owner: Owner = "default",
    archive: Annotated[bool, typer.Option(help="Archive even with open enrollments (they finish)")] = False,
) -> None:
    """Delete a sequence (archived instead when it was ever used)."""
    _check_id(sequence_id, "sequence_id")
    from followups.db.session import session_scope
    from followups.sequences import delete_sequence

    with session_scope() as session:
        outcome = delete_sequence(session, _owner_id(owner), sequence_id, archive=archive)
    console.print(f"sequence {sequence_id} {outcome}")


# -- enrollments --------------------------------------------------------------------------


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
    start_at: Annotated[Optional[str], typer.Option("--start-at", help="When it starts: ISO 8601 with its UTC offset (default: now)")] = None,
    again: AgainFlag = False,
    as_json: JsonFlag = False,
) -> None:
    """Enroll a deal's seller in a sequence and start it (now, or at --start-at; once per deal: see --again)."""
    from followups.control import enroll_deal
    from followups.inputs import check_start_at

    _check_id(sequence, "sequence")
    start = check_start_at(start_at, "--start-at")  # the error names the option the user typed
    fields = deal_from_options(deal_file, deal, address, seller_name, seller_email, seller_phone, amount)
    ref = enroll_deal(_owner_id(owner), fields, sequence, start_at=start, again=again)
    if as_json:
        print_json({"enrollment_id": ref.id, "deal": ref.deal_external_id, "flow_run_id": str(ref.flow_run_id),
                    "start_at": start.isoformat() if start else None})
    else:
        console.print(f"enrollment {ref.id} started for deal {ref.deal_external_id} (flow run {ref.flow_run_id})"
                      + (f"; its first step is due {start.isoformat()}" if start else ""))


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
    again: AgainFlag = False,
    as_json: JsonFlag = False,
) -> None:
    """Record that an offer was sent: enrolls the seller (once per offer, and once per deal: see --again)."""
    fields = deal_from_options(deal_file, deal, address, seller_name, seller_email, seller_phone, amount)
    if sequence is not None:
        _check_id(sequence, "sequence")
    owner_id = _owner_id(owner)
    if via_event:
        from followups.inputs import OfferInput, validate
        from followups.offer_events import emit_offer_sent
        from followups.prefect_server import api_is_healthy, configured_api_url

        # Nothing answers an event: what is emitted must be valid, and Prefect only logs (and
        # drops) an event it cannot deliver, so its API is checked first.
        offer = validate(OfferInput, {"offer_id": offer_id, "deal": fields, "sequence_id": sequence, "again": again})
        api_url = configured_api_url()
        if not api_url or not api_is_healthy(api_url):
            raise FollowupsError(PREFECT_UNREACHABLE)
        event = emit_offer_sent(owner_id, offer.offer_id, offer.deal, offer.sequence_id, again=offer.again)
        print_json({"event_id": str(event.id) if event else None}) if as_json else console.print(
            f"emitted deal.offer.sent for offer {offer.offer_id}"
        )
        return
    from followups.control import record_offer_sent

    result = record_offer_sent(owner_id, offer_id, fields, sequence_id=sequence, again=again)
    if as_json:
        print_json(result.as_dict())
    elif result.enrolled:
        console.print(f"offer {result.offer_id}: enrollment {result.enrollment_id} started")
    else:
        console.print(f"offer {result.offer_id}: {result.reason} (enrollment {result.enrollment_id})")


@app.command()
def status(enrollment: int, as_json: JsonFlag = False) -> None:
    """Status, next due time and the timeline of an enrollment."""
    _check_id(enrollment, "enrollment")
    from followups.control import get_enrollment

    status_output(console, get_enrollment(enrollment), as_json)


@app.command()
def pause(enrollment: int, as_json: JsonFlag = False) -> None:
    """Pause an enrollment (its pending Prefect run is suspended)."""
    _check_id(enrollment, "enrollment")
    from followups.control import pause_enrollment

    status_output(console, pause_enrollment(enrollment), as_json)


@app.command()
def resume(enrollment: int, as_json: JsonFlag = False) -> None:
    """Resume a paused enrollment, keeping what is left of its wait."""
    _check_id(enrollment, "enrollment")
    from followups.control import resume_enrollment

    status_output(console, resume_enrollment(enrollment), as_json)


@app.command()
def cancel(enrollment: int, as_json: JsonFlag = False) -> None:
    """Cancel an enrollment for good."""
    _check_id(enrollment, "enrollment")
    from followups.control import cancel_enrollment

    status_output(console, cancel_enrollment(enrollment), as_json)


@app.command()
def events(
    deal: Annotated[Optional[str], typer.Option("--deal", help="A deal's external id")] = None,
    enrollment: Annotated[Optional[int], typer.Option("--enrollment", help="An enrollment id")] = None,
    as_json: JsonFlag = False,
) -> None:
    """The event log of an enrollment or of a deal."""
    if enrollment is not None:
        _check_id(enrollment, "enrollment")
    if deal is not None:
        from followups.inputs import check_external_id

        check_external_id(deal, "deal")
    from followups.control import list_events

    items = list_events(enrollment_id=enrollment, deal_external_id=deal)
    if as_json:
        print_json(items)
        return
    console.print(events_table(items, f"Events of {'deal ' + deal if deal else f'enrollment {enrollment}'}"))


register_operator_commands(app, console)
register_deploy_command(app, console)
register_bulk_controls(app, console)


def main() -> None:
    try:  # Typer 0.2x carries its own copy of click; older ones use click itself
        from typer._click import exceptions as click_errors
    except ImportError:  # pragma: no cover
        from click import exceptions as click_errors

    try:
        code = app(standalone_mode=False)
    except click_errors.NoArgsIsHelpError as exc:
        exc.show()  # no arguments at all: the help is the answer
        sys.exit(exc.exit_code)
    except click_errors.UsageError as exc:
        # Wrong arguments are an error like any other: one line, exit 1, with where to look.
        command = exc.ctx.command_path if exc.ctx else "followups"
        fail(f"{one_line(exc.format_message())} (see '{command} --help')")
    except typer.Abort:
        fail("aborted")
    except Exception as exc:
        if os.environ.get("FOLLOWUPS_DEBUG") and not isinstance(exc, FollowupsError):
            raise
        fail(error_line(exc))
    except KeyboardInterrupt:
        fail("interrupted")
    else:
        sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
