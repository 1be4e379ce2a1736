"""Console mode: print each message instead of sending it, for demos and local runs."""

from __future__ import annotations

import uuid

from rich.console import Console, Group
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from followups.providers.messages import OutgoingEmail, OutgoingSms, ProviderReceipt

PROVIDER = "console"


def send_email_console(email: OutgoingEmail, console: Console | None = None) -> ProviderReceipt:
    to = f"{email.to_name} <{email.to_email}>" if email.to_name else email.to_email
    fields: list[tuple[str, str]] = [("To", to), ("Subject", email.subject)]
    if email.from_email:
        fields.insert(0, ("From", f"{email.from_name} <{email.from_email}>" if email.from_name else email.from_email))
    if email.reply_to:
        fields.append(("Reply-To", email.reply_to))
    if email.categories:
        fields.append(("Categories", ", ".join(email.categories)))
    fields.extend((name, value) for name, value in email.headers.items())
    if email.custom_args:
        fields.append(("Custom args", ", ".join(f"{k}={v}" for k, v in email.custom_args.items())))
    # The text part is what a person reads; fall back to the raw html when there is none.
    body = email.text if email.text else (email.html or "")
    receipt = _receipt({"to": email.to_email})
    _print(console, "EMAIL", fields, body, receipt.message_id)
    return receipt


def send_sms_console(sms: OutgoingSms, console: Console | None = None) -> ProviderReceipt:
    fields: list[tuple[str, str]] = [("To", sms.to)]
    if sms.messaging_service_sid or sms.from_number:
        fields.insert(0, ("From", sms.messaging_service_sid or sms.from_number or ""))
    if sms.status_callback:
        fields.append(("Status callback", sms.status_callback))
    receipt = _receipt({"to": sms.to})
    _print(console, "SMS", fields, sms.body, receipt.message_id)
    return receipt


def _receipt(details: dict[str, str]) -> ProviderReceipt:
    return ProviderReceipt(
        provider=PROVIDER,
        message_id=f"console-{uuid.uuid4().hex}",
        status_code=200,
        details=details,
    )


def _print(console: Console | None, kind: str, fields: list[tuple[str, str]], body: str, message_id: str) -> None:
    # Everything user-supplied goes in as Text, never as markup: a "[b]" in a body stays literal.
    header = Table.grid(padding=(0, 1))
    header.add_column(style="bold")
    header.add_column()
    for name, value in [*fields, ("Id", message_id)]:
        header.add_row(Text(name), Text(value))
    panel = Panel(
        Group(header, Text(""), Text(body)),
        title=Text(f"{kind} (console, not sent)"),
        expand=False,
    )
    (console or Console()).print(panel)
