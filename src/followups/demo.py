"""`followups demo`: one sample sequence, end to end, on embedded defaults.

Migrates the database, finds or starts a Prefect server, serves the deployment with the stock
runner (one process per flow run), enrolls a sample deal in EMAIL → WAIT 3 s → EMAIL → WAIT 3 s
→ SMS and prints the event log when the sequence ends.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid

from rich.console import Console

from followups.db.migrate import upgrade
from followups.db.session import session_scope
from followups.deals import DealInput
from followups.control import enroll_deal
from followups.event_table import events_table
from followups.lifecycle.plan import load_plan
from followups.prefect_server import ensure_prefect_api, wait_for_deployment
from followups.sequences import create_sequence
from followups.settings import get_settings
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


def run_demo(console: Console, timeout: float = 180) -> str:
    settings = get_settings()
    console.print(f"[bold]1/4[/] Migrating [cyan]{settings.database_url.split('@')[-1]}[/]")
    upgrade()
    api_url, started = ensure_prefect_api()
    os.environ["PREFECT_API_URL"] = api_url
    console.print(f"[bold]2/4[/] Prefect API at [cyan]{api_url}[/]" + (" (started for you, left running)" if started else ""))

    console.print("[bold]3/4[/] Serving the follow-up-sequence deployment (stock runner, 1 s poll)")
    # The demo must finish at any hour, so its SMS ignores the seller's quiet hours.
    env = {
        **os.environ,
        "PREFECT_RUNNER_POLL_FREQUENCY": "1",
        "PREFECT_LOGGING_LEVEL": "WARNING",
        "FOLLOWUPS_QUIET_HOURS_ENABLED": "false",
        # `python -m` (the runner, and each flow run it starts) must import the installed
        # package even when started from a checkout of this repository.
        "PYTHONSAFEPATH": "1",
    }
    runner = subprocess.Popen([sys.executable, "-m", "followups.cli", "serve", "--limit", "4"], env=env, start_new_session=True)
    try:
        wait_for_deployment(settings.deployment_name)
        with session_scope() as session:
            owner = ensure_user(session, "demo")
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
        return status
    finally:
        os.killpg(runner.pid, signal.SIGTERM)
        try:
            runner.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(runner.pid, signal.SIGKILL)
