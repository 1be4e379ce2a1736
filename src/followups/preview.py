"""What a sequence would do for a deal, without enrolling it: every step's planned time (send
window, quiet hours, holidays, business days and the steps' own send times applied), the caps
its sends count against, and the rendered text of each message. Reads only; nothing is written,
nothing reaches Prefect.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from sqlalchemy.orm import Session

from followups.email_threads import reply_subject
from followups.errors import InvalidInputError
from followups.inputs import DealInput, validate
from followups.scheduling.planning import Recipient, plan_times, quiet_hours_of
from followups.sequence_options import load_stored_options
from followups.sequences import get_sequence
from followups.settings import get_settings
from followups.steps import EmailStep, SmsStep, channel_of, load_stored_steps, with_variant
from followups.templating import DealView, SellerView, TemplateRenderError, build_context, render

# Far enough for any plan, near enough that date arithmetic cannot overflow.
_START_RANGE = (datetime(2000, 1, 1, tzinfo=UTC), datetime(2200, 1, 1, tzinfo=UTC))


def parse_start(value: Any, field: str = "start") -> datetime:
    """An ISO 8601 moment; without an offset it is read as UTC."""
    if isinstance(value, datetime):
        moment = value
    elif isinstance(value, str) and len(value) <= 64 and "\x00" not in value:
        try:
            moment = datetime.fromisoformat(value.strip())
        except ValueError:
            raise InvalidInputError("must be an ISO 8601 date and time, e.g. 2026-12-01T09:30:00-05:00", field=field) from None
    else:
        raise InvalidInputError("must be an ISO 8601 date and time, e.g. 2026-12-01T09:30:00-05:00", field=field)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    if not _START_RANGE[0] <= moment <= _START_RANGE[1]:
        raise InvalidInputError("must be between the years 2000 and 2200", field=field)
    return moment.astimezone(UTC)


def _rendered(step: EmailStep | SmsStep, context: dict[str, Any], previous_subject: str | None = None) -> dict[str, Any]:
    try:
        if isinstance(step, EmailStep):
            # A reply step without a subject answers the previous email: "Re: <its subject>".
            subject = render(step.subject, context) if step.subject else reply_subject(previous_subject or "")
            return {
                "subject": subject,
                "text": render(step.text, context) if step.text else None,
                "html": render(step.html, context, html=True) if step.html else None,
            }
        return {"body": render(step.body, context, max_chars=1600)}
    except TemplateRenderError as exc:  # e.g. output over the limit for this deal's values
        return {"error": str(exc)}


def preview_sequence(
    session: Session, owner_id: int, sequence_id: int, deal: DealInput | Mapping[str, Any], start: Any
) -> dict[str, Any]:
    """The plan of the caller's sequence (its newest version) for `deal`, first step due at `start`.

    Raises InvalidInputError (`deal.*`, `start`) or NotFoundError (another owner's sequence).
    """
    from followups.identity import database_id
    from followups.limits import owner_caps, step_limits
    from followups.users import load_sender

    checked = validate(DealInput, deal.model_dump() if isinstance(deal, DealInput) else deal, prefix="deal")
    moment = parse_start(start)
    sequence = get_sequence(session, owner_id, sequence_id)
    steps = load_stored_steps(sequence.steps)
    options = load_stored_options(sequence.options)
    settings = get_settings()
    quiet = quiet_hours_of(settings)
    from followups.users import get_sender_identity

    recipient = Recipient(
        checked.seller_timezone, checked.seller_phone, get_sender_identity(session, owner_id).timezone, checked.property_state
    )
    planned = plan_times(steps, moment, options, recipient, quiet, state_laws=settings.state_laws_enabled)
    context = build_context(
        DealView(checked.external_id, checked.property_address, checked.offer_amount, checked.context),
        SellerView(checked.seller_name, checked.seller_email, checked.seller_phone, checked.seller_timezone),
    )
    sender = load_sender(session, owner_id, settings)
    caps: dict[str, list[dict[str, Any]]] = {}
    if settings.caps_enabled:
        db_id = database_id()
        for channel in ("email", "sms"):
            limits = step_limits(channel, sender, settings, db_id, caps=owner_caps(session, owner_id, channel))
            caps[channel] = [
                {"name": cap.name, "kind": cap.kind, "limit": cap.limit, "window_seconds": cap.window_seconds or None,
                 "describe": cap.describe()}
                for cap in limits
            ]
    rows = []
    previous_subject = None
    for item in planned:
        row = item.as_dict()
        step = steps[item.index]
        if isinstance(step, EmailStep | SmsStep):
            channel = channel_of(step)
            row["at"] = step.at  # its own send time, local to `timezone`; None: as soon as allowed
            reachable = checked.seller_email if channel == "email" else checked.seller_phone
            # A step with variants shows each (an enrollment gets one of them); `message` is the first.
            variants = [(v, _rendered(with_variant(step, v), context, previous_subject)) for v in step.variants or ()]
            if variants:
                total = sum(v.weight for v, _ in variants)
                row["variants"] = [
                    {"name": v.name, "weight": v.weight, "share": round(v.weight / total, 4), "message": message if reachable else None}
                    for v, message in variants
                ]
            row["message"] = (variants[0][1] if variants else _rendered(step, context, previous_subject)) if reachable else None
            if isinstance(step, EmailStep) and row["message"] and row["message"].get("subject"):
                previous_subject = row["message"]["subject"]
            row["skipped"] = None if reachable else f"the deal has no seller {'email' if channel == 'email' else 'phone'}"
            row["caps"] = caps.get(channel, [])
            if channel == "sms" and settings.state_laws_enabled and (law := recipient.text_cap(item.send_at or item.due_at)):
                # The preview has no send history: it can only say the cap may hold the text back.
                row["state_cap"] = f"{law.describe_cap()}; may defer this text after other texts to this number"
        rows.append(row)
    return {
        "sequence_id": sequence.id,
        "sequence_version": sequence.version,
        "start": moment.isoformat(),
        "options": options.to_json(),
        "steps": rows,
    }
