"""Analytics of one sequence, in total, per step and per variant, computed from the event log alone.

Counted (all versions of the sequence together), each once per message (enrollment and step):
- sent: EMAIL_SENT / SMS_SENT;
- delivered, opened, clicked, bounced: messages with such a provider callback (opens and clicks
  repeat: counted once; a callback stored before its send was committed is joined through the
  provider message id);
- failed, outcome_unknown: steps that ended STEP_FAILED / STEP_OUTCOME_UNKNOWN (never sent, or
  perhaps sent by a worker that died);
- replied, unsubscribed: enrollments with a REPLY_RECEIVED / OPTED_OUT, once each;
- stopped: STOPPED events by reason (offer_accepted, offer_rejected, deal_closed, replied,
  unsubscribed, or the stored text of older stops).

Rates (None when their denominator is 0): delivery = delivered/sent, open = opened/delivered,
click = clicked/delivered, reply = replied/sent, bounce = bounced/sent, unsubscribe =
unsubscribed/sent.

Per step, a reply, an opt-out or a stop counts for the last message the seller had been sent
before it (an opt-out that names its message, as a one-click link does, counts for that one);
those that came before any message are under `before_first_message`. Per variant (an A/B step):
the variant the sent, failed and outcome-unknown events name (`followups.steps.draw_variant`).
Reading runs in a read-only transaction: two queries (counts, stops by reason).
"""

from __future__ import annotations

import uuid
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from sqlalchemy import select, text
from sqlalchemy.orm import Session

from followups.db.models import Sequence
from followups.db.session import session_scope
from followups.errors import NotFoundError
from followups.inputs import check_id
from followups.steps import load_stored_steps

# Provider callbacks, as stored in content->>'event' of PROVIDER_EVENT rows (SendGrid, Twilio).
DELIVERED = ("delivered",)
OPENED = ("open",)
CLICKED = ("click",)
BOUNCED = ("bounce", "dropped", "undelivered", "failed")

ENROLLMENT_COUNTS = text(
    """
    SELECT count(*) AS enrolled,
           count(*) FILTER (WHERE status = 'ACTIVE') AS active,
           count(*) FILTER (WHERE status = 'PAUSED') AS paused,
           count(*) FILTER (WHERE status = 'COMPLETED') AS completed,
           count(*) FILTER (WHERE status = 'STOPPED') AS stopped,
           count(*) FILTER (WHERE status = 'CANCELLED') AS cancelled,
           count(*) FILTER (WHERE status = 'FAILED') AS failed
    FROM enrollments
    WHERE sequence_id = :sequence_id
    """
)

_ATTRIBUTED = """
    WITH en AS (SELECT id FROM enrollments WHERE sequence_id = :sequence_id),
    ev AS (
        SELECT e.id, e.enrollment_id, e.step_index, e.event_type, e.content->>'event' AS provider_event,
               coalesce(e.content->>'reason_code', e.content->>'reason', 'unknown') AS reason,
               e.content->>'variant' AS variant
        FROM follow_up_events e JOIN en ON en.id = e.enrollment_id
        WHERE e.event_type IN ('EMAIL_SENT', 'SMS_SENT', 'PROVIDER_EVENT', 'REPLY_RECEIVED', 'OPTED_OUT', 'STOPPED',
                               'STEP_FAILED', 'STEP_OUTCOME_UNKNOWN')
        UNION ALL
        SELECT p.id, s.enrollment_id, s.step_index, p.event_type, p.content->>'event', NULL, NULL
        FROM follow_up_events s
        JOIN en ON en.id = s.enrollment_id
        JOIN follow_up_events p
          ON p.provider_message_id = s.provider_message_id
         AND p.event_type = 'PROVIDER_EVENT'
         AND p.enrollment_id IS NULL
        WHERE s.event_type IN ('EMAIL_SENT', 'SMS_SENT') AND s.provider_message_id IS NOT NULL
    ),
    attributed AS (
        SELECT ev.enrollment_id, ev.event_type, ev.provider_event, ev.reason, ev.variant,
               CASE WHEN ev.event_type IN ('REPLY_RECEIVED', 'STOPPED') THEN last_sent.step_index
                    WHEN ev.event_type = 'OPTED_OUT' THEN coalesce(ev.step_index, last_sent.step_index)
                    ELSE ev.step_index END AS step
        FROM ev
        LEFT JOIN LATERAL (
            SELECT s.step_index FROM follow_up_events s
            WHERE s.enrollment_id = ev.enrollment_id AND s.event_type IN ('EMAIL_SENT', 'SMS_SENT') AND s.id < ev.id
            ORDER BY s.id DESC LIMIT 1
        ) last_sent ON ev.event_type IN ('REPLY_RECEIVED', 'OPTED_OUT', 'STOPPED')
    )
"""

# GROUPING(step) = 1 marks the row over all steps, GROUPING(variant) = 1 a step's row over its
# variants; step NULL otherwise is "before the first message". Replies and opt-outs count
# enrollments, so the total is not the sum of the steps.
COUNTS = text(
    _ATTRIBUTED
    + """,
    -- One row per message (enrollment and step): what happened to it, once each.
    messages AS (
        SELECT enrollment_id, step, max(variant) AS variant,
               bool_or(event_type IN ('EMAIL_SENT', 'SMS_SENT')) AS sent,
               bool_or(event_type = 'PROVIDER_EVENT' AND provider_event = ANY(:delivered)) AS delivered,
               bool_or(event_type = 'PROVIDER_EVENT' AND provider_event = ANY(:opened)) AS opened,
               bool_or(event_type = 'PROVIDER_EVENT' AND provider_event = ANY(:clicked)) AS clicked,
               bool_or(event_type = 'PROVIDER_EVENT' AND provider_event = ANY(:bounced)) AS bounced,
               bool_or(event_type = 'STEP_FAILED') AS failed,
               bool_or(event_type = 'STEP_OUTCOME_UNKNOWN') AS outcome_unknown,
               bool_or(event_type = 'REPLY_RECEIVED') AS replied,
               bool_or(event_type = 'OPTED_OUT') AS unsubscribed
        FROM attributed
        GROUP BY enrollment_id, step
    )
    SELECT GROUPING(step) AS total, GROUPING(variant) AS all_variants, step, variant,
           count(*) FILTER (WHERE sent) AS sent,
           count(*) FILTER (WHERE delivered) AS delivered,
           count(*) FILTER (WHERE opened) AS opened,
           count(*) FILTER (WHERE clicked) AS clicked,
           count(*) FILTER (WHERE bounced) AS bounced,
           count(*) FILTER (WHERE failed) AS failed,
           count(*) FILTER (WHERE outcome_unknown) AS outcome_unknown,
           count(DISTINCT enrollment_id) FILTER (WHERE replied) AS replied,
           count(DISTINCT enrollment_id) FILTER (WHERE unsubscribed) AS unsubscribed
    FROM messages
    GROUP BY GROUPING SETS ((step, variant), (step), ())
    """
)

# A stop's variant is that of the message it counts for (its sent event, by the unique index).
STOPS = text(
    _ATTRIBUTED
    + """
    SELECT GROUPING(a.step) AS total, GROUPING(m.variant) AS all_variants, a.step, m.variant, a.reason,
           count(*) AS stops
    FROM attributed a
    LEFT JOIN LATERAL (
        SELECT s.content->>'variant' AS variant FROM follow_up_events s
        WHERE s.enrollment_id = a.enrollment_id AND s.step_index = a.step AND s.event_type IN ('EMAIL_SENT', 'SMS_SENT')
        LIMIT 1
    ) m ON true
    WHERE a.event_type = 'STOPPED'
    GROUP BY GROUPING SETS ((a.step, m.variant, a.reason), (a.step, a.reason), (a.reason))
    """
)

COUNTERS = ("sent", "delivered", "opened", "clicked", "bounced", "replied", "unsubscribed", "failed", "outcome_unknown")
# rate name -> (numerator, denominator)
RATES = {
    "delivery_rate": ("delivered", "sent"),
    "open_rate": ("opened", "delivered"),
    "click_rate": ("clicked", "delivered"),
    "reply_rate": ("replied", "sent"),
    "bounce_rate": ("bounced", "sent"),
    "unsubscribe_rate": ("unsubscribed", "sent"),
}


@dataclass
class Counts:
    sent: int = 0
    delivered: int = 0
    opened: int = 0
    clicked: int = 0
    bounced: int = 0
    replied: int = 0
    unsubscribed: int = 0
    failed: int = 0
    outcome_unknown: int = 0
    stopped: dict[str, int] = field(default_factory=dict)  # reason -> stops

    @property
    def rates(self) -> dict[str, float | None]:
        return {name: _ratio(getattr(self, top), getattr(self, bottom)) for name, (top, bottom) in RATES.items()}

    def as_dict(self) -> dict[str, Any]:
        return {**{f.name: _plain(getattr(self, f.name)) for f in fields(self)}, "rates": self.rates}


@dataclass
class VariantCounts(Counts):
    name: str = ""
    weight: int | None = None  # in the sequence's current version; None for a variant it no longer has


@dataclass
class StepCounts(Counts):
    step_index: int = 0
    type: str | None = None  # the step's type in the sequence's current version
    variants: list[VariantCounts] = field(default_factory=list)  # an A/B step's, else empty


@dataclass
class SequenceAnalytics:
    sequence_id: int
    totals: Counts
    steps: list[StepCounts]
    before_first_message: Counts

    def as_dict(self) -> dict[str, Any]:
        return {
            "sequence_id": self.sequence_id,
            "totals": self.totals.as_dict(),
            "steps": [step.as_dict() for step in self.steps],
            "before_first_message": self.before_first_message.as_dict(),
        }


def _ratio(top: int, bottom: int) -> float | None:
    return round(top / bottom, 4) if bottom else None


def _plain(value: Any) -> Any:
    if isinstance(value, list):
        return [item.as_dict() for item in value]
    return dict(value) if isinstance(value, dict) else value


def sequence_analytics(owner_id: int, sequence_id: int) -> SequenceAnalytics:
    """The analytics of one of the owner's sequences (archived ones too: their history stays).
    Another owner's sequence is a NotFoundError, like a missing one."""
    check_id(owner_id, "owner_id")
    check_id(sequence_id, "sequence_id")
    with session_scope(read_only=True) as session:
        return _analytics(session, owner_id, sequence_id)


def sequence_stats(owner_id: int, sequence_id: int) -> dict[str, Any]:
    """The sequence's enrollments by status, and the totals of its analytics with their rates."""
    check_id(owner_id, "owner_id")
    check_id(sequence_id, "sequence_id")
    with session_scope(read_only=True) as session:
        totals = _analytics(session, owner_id, sequence_id).totals
        enrollments = session.execute(ENROLLMENT_COUNTS, {"sequence_id": sequence_id}).mappings().one()
    # `stopped` and `failed` there are enrollments; the steps that failed are `failed_sends`.
    events = {name: getattr(totals, name) for name in COUNTERS if name != "failed"}
    return {"sequence_id": sequence_id, **events, "failed_sends": totals.failed, **enrollments, "rates": totals.rates}


def _counts(row: Any) -> dict[str, int]:
    return {name: getattr(row, name) for name in COUNTERS}


def _analytics(session: Session, owner_id: int, sequence_id: int) -> SequenceAnalytics:
    params = {
        "sequence_id": sequence_id, "delivered": list(DELIVERED), "opened": list(OPENED), "clicked": list(CLICKED),
        "bounced": list(BOUNCED),
    }
    sequence = session.scalars(select(Sequence).where(Sequence.id == sequence_id, Sequence.owner_id == owner_id)).first()
    if sequence is None:
        raise NotFoundError("sequence", sequence_id)
    current = load_stored_steps(sequence.steps)
    totals, before, by_step, by_variant = Counts(), Counts(), {}, {}
    for row in session.execute(COUNTS, params).all():
        if row.total:
            totals = Counts(**_counts(row))
        elif row.step is None:
            before = Counts(**_counts(row)) if row.all_variants else before
        elif row.all_variants:
            by_step[row.step] = Counts(**_counts(row))
        elif row.variant is not None:
            by_variant[row.step, row.variant] = VariantCounts(name=row.variant, **_counts(row))
    for row in sorted(session.execute(STOPS, params).all(), key=lambda r: r.reason):
        if row.total:
            target = totals
        elif row.step is None:
            if not row.all_variants:
                continue
            target = before
        elif row.all_variants:
            target = by_step.setdefault(row.step, Counts())
        elif row.variant is not None:
            target = by_variant.setdefault((row.step, row.variant), VariantCounts(name=row.variant))
        else:
            continue
        target.stopped[row.reason] = row.stops
    last = max([len(current) - 1, *by_step]) if (current or by_step) else -1
    steps = []
    for i in range(last + 1):
        step = current[i] if i < len(current) else None
        counts = by_step.get(i, Counts())
        steps.append(StepCounts(
            step_index=i, type=str(step.type) if step else None, variants=_variants(step, i, by_variant),
            **{f.name: getattr(counts, f.name) for f in fields(Counts)},
        ))
    return SequenceAnalytics(sequence_id=sequence_id, totals=totals, steps=steps, before_first_message=before)


def _variants(step: Any, index: int, found: dict[tuple[int, str], VariantCounts]) -> list[VariantCounts]:
    """The step's variants in the order the current version gives them (with zeros for those
    not sent yet), then those only earlier versions had."""
    weights = {v.name: v.weight for v in getattr(step, "variants", None) or ()}
    names = list(weights) + sorted(name for i, name in found if i == index and name not in weights)
    return [
        VariantCounts(**{**asdict(found.get((index, name), VariantCounts(name=name))), "weight": weights.get(name)})
        for name in names
    ]


# --- the Prefect artifact ---------------------------------------------------------------------


def stats_artifact_key(sequence_id: int, db_id: uuid.UUID | None = None) -> str:
    """Stable per sequence and database: Prefect keeps its history, and two databases on one
    Prefect server never overwrite each other's (a key takes lowercase letters, digits, dashes)."""
    from followups.identity import database_id

    return f"sequence-{(db_id or database_id()).hex[:8]}-{sequence_id}-stats"


def stats_table(report: SequenceAnalytics) -> list[dict[str, Any]]:
    """One row per step, per variant of an A/B step, and the totals: counters and rates."""

    def row(step: str, variant: str, counts: Counts) -> dict[str, Any]:
        rates = {name: "" if value is None else f"{value:.1%}" for name, value in counts.rates.items()}
        return {"step": step, "variant": variant, **_counts(counts), **rates}

    rows = []
    for step in report.steps:
        if step.type == "WAIT" and not step.sent:
            continue
        rows.append(row(f"{step.step_index} {step.type or ''}".strip(), "", step))
        rows += [row(str(step.step_index), variant.name, variant) for variant in step.variants]
    return rows + [row("total", "", report.totals)]


def publish_stats(owner_id: int, sequence_id: int) -> str:
    """Publish the sequence's analytics as a Prefect table artifact (a new version of its key);
    returns the key. Made outside any run, with the product's client (`prefect_runs`)."""
    from followups import prefect_runs

    report = sequence_analytics(owner_id, sequence_id)
    key = stats_artifact_key(sequence_id)
    prefect_runs.post_table_artifact(
        key, stats_table(report),
        f"Sequence {sequence_id}: messages per step and variant, with delivery, open, click, reply, "
        "bounce and unsubscribe rates (from the followups event log)",
    )
    return key
