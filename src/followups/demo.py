"""`followups demo`: one sample sequence, end to end, on embedded defaults.

Migrates the database, finds or starts a Prefect server (and leaves it the active Prefect
profile), serves the deployment with the stock runner (one process per flow run), enrolls a
sample deal of the CLI's default owner in EMAIL → WAIT 3 s → EMAIL → WAIT 3 s → SMS, prints the
event log when the sequence ends and the commands that show more.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid

from rich.console import Console
from rich.markup import escape

from followups.db.migrate import upgrade
from followups.db.session import session_scope
from followups.deals import DealInput
from followups.control import enroll_deal, get_enrollment
from followups.event_table import events_table
from followups.identity import database_tag
from followups.lifecycle.plan import load_plan
from followups.prefect_links import runs_list_link
from followups.prefect_server import ensure_prefect_api, wait_for_deployment
from followups.sequences import create_sequence
from followups.settings import Settings, get_settings
from followups.users import ensure_user

DEMO_STEPS = [
    {
        "type": "EMAIL",
        "subject": "Our offer on {{ deal.property_address }}",
        "text": "Hi {{ seller.first_name }},\n\nWe offered {{ offer.amount }} for {{ deal.property_address }}. "
        "Happy to answer any question.",
    },
    {"type": "WAIT", "seconds": 3},
    {"type": "EMAIL", "subject": "Following up on {{ deal.property_address }}", "text": "Hi {{ seller.first_name }}, any thoughts on our offer?"},
    {"type": "WAIT", "seconds": 3},
    {"type": "SMS", "body": "Hi {{ seller.first_name }}, still interested in selling {{ deal.property_address }}? Reply STOP to opt out."},
]

TERMINAL = {"COMPLETED", "FAILED", "CANCELLED", "STOPPED"}
DEFAULT_OWNER = "default"  # the CLI's --owner default (FOLLOWUPS_OWNER there too)


def run_demo(console: Console, timeout: float = 180) -> str:
    from prefect.settings import PREFECT_API_URL, temporary_settings

    settings = get_settings()
    console.print(f"[bold]1/4[/] Migrating [cyan]{settings.database_url.split('@')[-1]}[/]")
    upgrade()
    notes: list[str] = []
    api_url, started = ensure_prefect_api(say=notes.append)
    console.print(f"[bold]2/4[/] Prefect API at [cyan]{api_url}[/]" + (" (started for you, left running)" if started else ""))
    for note in notes:
        console.print(f"    {escape(note)}", highlight=False, soft_wrap=True)
    # The runner inherits it; this process's Prefect settings were read at import, before a
    # server was chosen.
    os.environ["PREFECT_API_URL"] = api_url
    with temporary_settings(updates={PREFECT_API_URL: api_url}):
        return _run(console, settings, api_url, timeout)


def _run(console: Console, settings: Settings, api_url: str, timeout: float) -> str:
    console.print("[bold]3/4[/] Serving the follow-up-sequence deployment (stock runner, 1 s poll)")
    # The demo must finish at any hour, so its SMS ignores the seller's quiet hours and state law.
    env = {
        **os.environ,
        "PREFECT_RUNNER_POLL_FREQUENCY": "1",
        "PREFECT_LOGGING_LEVEL": "WARNING",
        "FOLLOWUPS_QUIET_HOURS_ENABLED": "false",
        "FOLLOWUPS_STATE_LAWS_ENABLED": "false",
        # `python -m` (the runner, and each flow run it starts) must import the installed
        # package even when started from a checkout of this repository.
        "PYTHONSAFEPATH": "1",
    }
    runner = subprocess.Popen([sys.executable, "-m", "followups.cli", "serve", "--limit", "4"], env=env, start_new_session=True)
    try:
        wait_for_deployment(settings.deployment_name)
        with session_scope() as session:
            # The CLI's owner, so `followups list` and `followups sequences list` show the demo.
            owner = ensure_user(session, os.environ.get("FOLLOWUPS_OWNER") or DEFAULT_OWNER)
            sequence = create_sequence(session, owner, name=f"demo-{uuid.uuid4().hex[:6]}", steps=DEMO_STEPS)
        deal = DealInput(
            external_id=f"DEMO-{uuid.uuid4().hex[:6].upper()}",
            property_address="42 Harbor Lane, Portland",
            seller_name="Jordan Rivers",
            seller_email="jordan@example.com",
            seller_phone="+15035550142",
            offer_amount="315000",
        )
        enrollment = enroll_deal(owner, deal, sequence.id)
        console.print(
            f"[bold]4/4[/] Enrolled deal [cyan]{deal.external_id}[/] as enrollment [cyan]{enrollment.id}[/]; "
            f"watch it in the Prefect UI ({api_url.removesuffix('/api')}/runs)"
        )
        deadline = time.monotonic() + timeout
        status = "ACTIVE"
        while time.monotonic() < deadline:
            with session_scope() as session:
                status = load_plan(session, enrollment.id).status
            if status in TERMINAL:
                break
            time.sleep(0.5)
        console.print(events_table(enrollment.id, title=f"Event log of enrollment {enrollment.id} — {status}"))
    finally:
        os.killpg(runner.pid, signal.SIGTERM)
        try:
            runner.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(runner.pid, signal.SIGKILL)
    link = runs_list_link(get_enrollment(enrollment.id), database_tag())
    console.print("Look further:", highlight=False)
    for command, what in (("followups list", "the enrollments"), (f"followups status {enrollment.id}", "this one's steps and events"),
                          (link, "its runs in the Prefect UI")):
        console.print(f"  {escape(command)}  [dim]# {what}[/]", highlight=False, soft_wrap=True)
    return status
