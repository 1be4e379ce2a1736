"""What every fault scenario shares: a seeded schedule (printed, so a failure can be replayed
with FOLLOWUPS_FAULT_SEED=<seed>), the three final assertions, and a one-line report per run.

The assertions read only the event log and the fake provider's own record of calls, never
what the product says about itself:
1. `wait_final_states`: every enrollment reaches its expected status within a bound;
2. `check_sends`: per send step, at most one accepted provider call and exactly one outcome
   event; an outcome-unknown only where the scenario says a kill landed between call and commit;
3. `EventLedger`: no row of `follow_up_events` changed or vanished between checkpoints.
"""

from __future__ import annotations

import json
import os
import random
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import pytest
from sqlalchemy import text
from sqlalchemy.orm import Session, sessionmaker

REPORT_PATH = Path(os.environ.get("FOLLOWUPS_FAULTS_REPORT", "/tmp/faults_report.jsonl"))
FULL = os.environ.get("FOLLOWUPS_FAULTS_SCALE", "").lower() == "full"
OUTCOME_TYPES = ("EMAIL_SENT", "SMS_SENT", "STEP_FAILED", "STEP_SKIPPED", "STEP_OUTCOME_UNKNOWN")
SENT_TYPES = ("EMAIL_SENT", "SMS_SENT")


def scale(ci: int, full: int) -> int:
    """The scenario's size: small in CI, bigger with FOLLOWUPS_FAULTS_SCALE=full."""
    return full if FULL else ci


# The stock runner's variants of the slow scenarios (a runner per round, process start-up) keep
# CI under its time budget by running at full scale only; the fast worker's run in CI too.
full_only = pytest.mark.skipif(not FULL, reason="stock-runner variant: runs with FOLLOWUPS_FAULTS_SCALE=full")


# -- the seeded schedule ------------------------------------------------------------------


class Schedule(random.Random):
    """A random.Random whose seed is known, so any run can be replayed exactly."""

    def __init__(self, seed: int) -> None:
        super().__init__(seed)
        self.seed_value = seed

    def moments(self, count: int, kinds: Iterable[str]) -> list[str]:
        """`count` fault moments covering every kind at least once (when count allows), shuffled."""
        kinds = list(kinds)
        chosen = self.sample(kinds, min(count, len(kinds))) + [self.choice(kinds) for _ in range(count - len(kinds))]
        self.shuffle(chosen)
        return chosen


def fault_seed() -> int:
    value = os.environ.get("FOLLOWUPS_FAULT_SEED")
    return int(value) if value else random.SystemRandom().randrange(1, 2**31)


@pytest.fixture
def fault_schedule(request) -> Schedule:
    seed = fault_seed()
    # Printed in the captured setup output and on the terminal: what replays a failure.
    line = f"FOLLOWUPS_FAULT_SEED={seed}  # replays {request.node.nodeid}"
    print(line)
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        reporter.write_line(f"\n{line}")
    request.node.user_properties.append(("fault_seed", seed))
    return Schedule(seed)


# -- database access (the settings' database, or another one by URL) ----------------------


def _session(url: str | None = None) -> Session:
    from followups.db.session import get_engine, session_factory

    return (sessionmaker(get_engine(url)) if url else session_factory())()


def statuses(enrollment_ids: Iterable[int], url: str | None = None) -> dict[int, str]:
    ids = sorted(set(enrollment_ids))
    with _session(url) as session:
        rows = session.execute(
            text("SELECT id, status FROM enrollments WHERE id = ANY(:ids)"), {"ids": ids}
        ).all()
    return {row.id: row.status for row in rows}


def _event_count(enrollment_ids: Iterable[int], url: str | None = None) -> int:
    with _session(url) as session:
        return session.execute(
            text("SELECT count(*) FROM follow_up_events WHERE enrollment_id = ANY(:ids)"), {"ids": sorted(set(enrollment_ids))}
        ).scalar_one()


def describe(enrollment_ids: list[int], url: str | None = None) -> str:
    """Why enrollments are stuck, for a failure message: each one's row, its last events, and its
    pending run's state history in Prefect (the context's Prefect server)."""
    lines = []
    with _session(url) as session:
        for enrollment_id in enrollment_ids:
            row = session.execute(
                text("SELECT status, current_step, next_due_at, prefect_flow_run_id FROM enrollments WHERE id = :i"),
                {"i": enrollment_id},
            ).one()
            events = session.execute(
                text("SELECT event_type, step_index FROM follow_up_events WHERE enrollment_id = :i "
                     "ORDER BY id DESC LIMIT 6"), {"i": enrollment_id},
            ).all()
            lines.append(f"enrollment {enrollment_id}: {row.status} at step {row.current_step}, due {row.next_due_at}, "
                         f"pending run {row.prefect_flow_run_id}; last events (newest first): "
                         + ", ".join(f"{e.event_type}@{e.step_index}" for e in events))
            if row.prefect_flow_run_id is not None:
                lines.append("  run states: " + _run_history(row.prefect_flow_run_id))
    return "\n".join(lines)


def _describe_safely(enrollment_ids: list[int], url: str | None) -> str:
    try:
        return describe(enrollment_ids, url)
    except Exception as exc:  # a diagnosis must not hide the failure it explains
        return f"(no diagnosis: {type(exc).__name__}: {exc})"


def _run_history(run_id) -> str:
    try:
        from prefect.client.orchestration import get_client

        with get_client(sync_client=True) as client:
            states = sorted(client.read_flow_run_states(run_id), key=lambda s: s.timestamp)
        return " -> ".join(f"{s.name}({s.timestamp:%H:%M:%S}{': ' + s.message[:80] if s.message else ''})" for s in states) or "none"
    except Exception as exc:  # a diagnosis must not hide the failure it explains
        return f"unreadable ({type(exc).__name__}: {exc})"


# -- assertion 1: every enrollment reaches its final state --------------------------------


def wait_final_states(
    expected: dict[int, str | set[str]],
    timeout: float,
    *,
    url: str | None = None,
    repair: Callable[[], Any] | None = None,
    repair_every: float = 10.0,
    interval: float = 0.5,
    on_timeout: Callable[[], str] | None = None,
) -> dict[int, str]:
    """Poll until every enrollment has its expected status (a status or a set of accepted ones).
    `repair` (e.g. running `followups reconcile`) is called every `repair_every` seconds while
    some are still missing, as an operator or the scheduled sweep would. `on_timeout` adds what
    it returns (e.g. the executors' thread stacks) to the failure.

    The bound follows progress, so that a busy machine only makes it slower: it fails when none of
    these enrollments has logged an event for `timeout` seconds (and in any case after three
    times that)."""
    wanted = {e: {s} if isinstance(s, str) else set(s) for e, s in expected.items()}
    started = time.monotonic()
    deadline = started + timeout
    seen_events = -1
    next_repair = time.monotonic() + repair_every
    while True:
        now = statuses(wanted, url)
        missing = {e: now.get(e) for e, accepted in wanted.items() if now.get(e) not in accepted}
        if not missing:
            return now
        logged = _event_count(wanted, url)
        if logged != seen_events:
            seen_events, deadline = logged, min(time.monotonic() + timeout, started + 3 * timeout)
        if time.monotonic() > deadline:
            sample = dict(list(missing.items())[:20])
            raise AssertionError(
                f"{len(missing)} of {len(wanted)} enrollments not in their final state, and none logged an "
                f"event for {timeout}s ({time.monotonic() - started:.0f}s in all) "
                f"(id: status now): {sample}; expected e.g. {[sorted(wanted[e]) for e in list(sample)[:3]]}\n"
                + _describe_safely(list(sample)[:5], url)
                + (on_timeout() if on_timeout is not None else "")
            )
        if repair is not None and time.monotonic() >= next_repair:
            repair()
            next_repair = time.monotonic() + repair_every
        time.sleep(interval)


# -- assertion 2: at most one provider call and exactly one outcome per send step ---------


@dataclass
class SendCheck:
    enrollments: int = 0
    send_steps_reached: int = 0
    provider_requests: int = 0  # every request the fake provider received for these enrollments
    provider_calls: int = 0  # the accepted ones (2xx): what a real provider would have delivered
    sent_events: int = 0
    outcome_unknown: int = 0
    failed_events: int = 0
    skipped_events: int = 0
    violations: list[str] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        return {k: v for k, v in asdict(self).items() if k != "violations"}


def _find_custom_args(node: Any) -> dict | None:
    if isinstance(node, dict):
        if isinstance(node.get("custom_args"), dict):
            return node["custom_args"]
        node = list(node.values())
    if isinstance(node, list):
        for item in node:
            found = _find_custom_args(item)
            if found is not None:
                return found
    return None


def _email_recipients(node: Any) -> set[str]:
    found: set[str] = set()
    if isinstance(node, dict):
        if "to" in node and isinstance(node["to"], list):
            found |= {str(t.get("email", "")).lower() for t in node["to"] if isinstance(t, dict)}
        for value in node.values():
            found |= _email_recipients(value)
    elif isinstance(node, list):
        for item in node:
            found |= _email_recipients(item)
    return found


def check_sends(
    fake,
    enrollment_ids: Iterable[int],
    *,
    accept_unknown: Iterable[tuple[int, int]] = (),
    url: str | None = None,
    raise_on_violation: bool = True,
) -> SendCheck:
    """Match the fake provider's calls to (enrollment, step) and check each send step.

    Emails are matched by the custom args the product sends (enrollment_id, step_index) and
    their recipient; SMS by recipient phone (so scenarios give each enrollment its own phone),
    then by body when a sequence has several SMS steps. Calls for other enrollments (another
    scenario's, another database's) are ignored."""
    ids = sorted(set(enrollment_ids))
    accept = set(accept_unknown)
    result = SendCheck(enrollments=len(ids))
    with _session(url) as session:
        rows = session.execute(
            text(
                "SELECT e.id, e.current_step, v.steps, d.seller_email, d.seller_phone "
                "FROM enrollments e JOIN deals d ON d.id = e.deal_id "
                "JOIN sequence_versions v ON v.id = e.sequence_version_id WHERE e.id = ANY(:ids)"
            ),
            {"ids": ids},
        ).all()
        events = session.execute(
            text(
                "SELECT enrollment_id, step_index, event_type, content FROM follow_up_events "
                "WHERE enrollment_id = ANY(:ids) ORDER BY id"
            ),
            {"ids": ids},
        ).all()
    missing = set(ids) - {r.id for r in rows}
    assert not missing, f"enrollments not in the database: {sorted(missing)[:20]}"
    enrollment = {r.id: r for r in rows}
    by_email = {(r.seller_email or "").lower(): r.id for r in rows if r.seller_email}
    by_phone: dict[str, list[int]] = defaultdict(list)
    for r in rows:
        if r.seller_phone:
            by_phone[r.seller_phone].append(r.id)
    send_steps = {
        (r.id, i): s["type"] for r in rows for i, s in enumerate(r.steps) if s.get("type") in ("EMAIL", "SMS")
    }
    step_events: dict[tuple[int, int], list] = defaultdict(list)
    for ev in events:
        if ev.step_index is not None:
            step_events[(ev.enrollment_id, ev.step_index)].append(ev)

    calls: Counter = Counter()
    requests: Counter = Counter()
    for req in list(fake.requests):
        key = _attribute(req, enrollment, by_email, by_phone, send_steps, step_events, result)
        if key is None:
            continue
        requests[key] += 1
        if 200 <= req.status < 300:
            calls[key] += 1
    result.provider_requests = sum(requests.values())
    result.provider_calls = sum(calls.values())

    for key, channel in sorted(send_steps.items()):
        enrollment_id, step_index = key
        evs = step_events.get(key, [])
        outcomes = [e.event_type for e in evs if e.event_type in OUTCOME_TYPES]
        reached = bool(evs) or enrollment[enrollment_id].current_step > step_index
        result.sent_events += sum(t in SENT_TYPES for t in outcomes)
        result.outcome_unknown += outcomes.count("STEP_OUTCOME_UNKNOWN")
        result.failed_events += outcomes.count("STEP_FAILED")
        result.skipped_events += outcomes.count("STEP_SKIPPED")
        if calls[key] > 1:
            result.violations.append(f"{key} {channel}: {calls[key]} accepted provider calls (duplicate send)")
        if not reached:
            if outcomes or calls[key]:
                result.violations.append(f"{key}: not reached but has outcomes {outcomes} / {calls[key]} calls")
            continue
        result.send_steps_reached += 1
        if len(outcomes) != 1:
            result.violations.append(f"{key} {channel}: {len(outcomes)} outcome events {outcomes} (expected one)")
            continue
        outcome = outcomes[0]
        if outcome in SENT_TYPES and calls[key] != 1:
            result.violations.append(f"{key}: {outcome} recorded but {calls[key]} accepted provider calls")
        if outcome in ("STEP_FAILED", "STEP_SKIPPED") and calls[key]:
            result.violations.append(f"{key}: {outcome} recorded but the provider accepted {calls[key]} call(s)")
        if outcome == "STEP_OUTCOME_UNKNOWN" and key not in accept:
            result.violations.append(f"{key}: STEP_OUTCOME_UNKNOWN where no kill landed between call and commit")
        attempts = sum(e.event_type == "STEP_ATTEMPT" for e in evs)
        if requests[key] > attempts:
            result.violations.append(f"{key}: {requests[key]} provider requests but only {attempts} STEP_ATTEMPT rows")
    if raise_on_violation and result.violations:
        raise AssertionError(f"{len(result.violations)} send-step violations:\n" + "\n".join(result.violations[:40]))
    return result


def _attribute(req, enrollment, by_email, by_phone, send_steps, step_events, result) -> tuple[int, int] | None:
    if req.provider == "sendgrid":
        try:
            body = json.loads(req.body)
        except ValueError:
            return None
        args = _find_custom_args(body) or {}
        try:
            key = (int(args["enrollment_id"]), int(args["step_index"]))
        except (KeyError, ValueError):
            return None
        # The same enrollment id in another database sends to another (unique) address.
        if key[0] not in enrollment or by_email.get(next(iter(_email_recipients(body)), "")) != key[0]:
            return None
        return key
    form = parse_qs(req.body.decode(errors="replace"))
    owners = by_phone.get((form.get("To") or [""])[0], [])
    if not owners:
        return None
    if len(owners) > 1:
        result.violations.append(f"SMS to {form.get('To')} cannot be attributed: enrollments {owners} share the phone")
        return None
    enrollment_id = owners[0]
    candidates = [k for k, channel in send_steps.items() if k[0] == enrollment_id and channel == "SMS"]
    if len(candidates) == 1:
        return candidates[0]
    body = (form.get("Body") or [""])[0]
    for k in candidates:
        if any(e.event_type == "SMS_SENT" and (e.content or {}).get("body") == body for e in step_events.get(k, [])):
            return k
    unsent = [k for k in candidates if not any(e.event_type == "SMS_SENT" for e in step_events.get(k, []))]
    if len(unsent) == 1:
        return unsent[0]
    result.violations.append(f"SMS for enrollment {enrollment_id} cannot be attributed to one of {candidates}")
    return None


# -- assertion 3: no event row changed or lost --------------------------------------------


class EventLedger:
    """Snapshots of (id, md5 of the whole row) of `follow_up_events`: every row seen at a
    checkpoint must still be there, identical, at every later one."""

    def __init__(self, url: str | None = None) -> None:
        self.url = url
        self.snapshots: list[tuple[str, dict[int, str]]] = []

    def snapshot(self) -> dict[int, str]:
        with _session(self.url) as session:
            rows = session.execute(text("SELECT e.id, md5(e::text) FROM follow_up_events e")).all()
        return {row[0]: row[1] for row in rows}

    def checkpoint(self, label: str = "") -> int:
        """Take a snapshot and compare it with every earlier one; return the row count."""
        now = self.snapshot()
        self._compare(now)
        self.snapshots.append((label or f"checkpoint {len(self.snapshots) + 1}", now))
        return len(now)

    def assert_unchanged(self) -> int:
        """The final check (also a checkpoint)."""
        return self.checkpoint("final")

    def _compare(self, now: dict[int, str]) -> None:
        problems = []
        for label, earlier in self.snapshots:
            lost = sorted(set(earlier) - set(now))
            changed = sorted(i for i in earlier.keys() & now.keys() if earlier[i] != now[i])
            if lost:
                problems.append(f"since {label}: {len(lost)} event rows lost, e.g. {lost[:10]}")
            if changed:
                problems.append(f"since {label}: {len(changed)} event rows changed, e.g. {changed[:10]}")
        assert not problems, "the event log was altered:\n" + "\n".join(problems)


# -- the report -------------------------------------------------------------------------


@dataclass
class Report:
    """One line per scenario run in /tmp/faults_report.jsonl (docs/reliability.md is built from it)."""

    scenario: str
    seed: int
    enrollments: int = 0
    provider_calls: int = 0
    provider_requests: int = 0
    sent_events: int = 0
    outcome_unknown: int = 0
    stranded_repaired: int = 0
    seconds: float = 0.0
    defects: list[str] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)
    completed: bool = False
    scale: str = "full" if FULL else "ci"
    _started: float = field(default_factory=time.monotonic, repr=False)

    def add_sends(self, check: SendCheck) -> None:
        """Take the counts of a `check_sends` result (added, for scenarios with several worlds)."""
        self.enrollments += check.enrollments
        self.provider_calls += check.provider_calls
        self.provider_requests += check.provider_requests
        self.sent_events += check.sent_events
        self.outcome_unknown += check.outcome_unknown

    def defect(self, description: str) -> None:
        self.defects.append(description)

    def finish(self) -> None:
        """Call when the scenario's assertions all passed; otherwise the line says completed=false."""
        self.completed = True

    def write(self) -> None:
        self.seconds = round(time.monotonic() - self._started, 1)
        line = {k: v for k, v in asdict(self).items() if not k.startswith("_")}
        with REPORT_PATH.open("a") as out:
            out.write(json.dumps(line, default=str) + "\n")


@pytest.fixture
def fault_report(request, fault_schedule: Schedule):
    """A Report for this test (named by its node id), written at teardown whatever happened."""
    report = Report(scenario=request.node.nodeid.split("::", 1)[-1], seed=fault_schedule.seed_value)
    report.extra["module"] = Path(str(request.node.fspath)).name
    yield report
    report.write()
