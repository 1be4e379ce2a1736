"""Send caps: Prefect global concurrency limits per provider account (per second) and per sending
identity (per UTC day). A capped step is deferred to a scheduled run (STEP_DEFERRED, reason
cap), never dropped and never sent over the cap, with the count kept in the Prefect server."""

from __future__ import annotations

import contextvars
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, date, datetime, time, timedelta, timezone

from followups.scheduling.caps import (
    NEXT_DAY_SPREAD_SECONDS,
    MemoryCapGate,
    daily_cap_spec,
    day_of_limit,
    limit_name,
    next_day_start,
    rate_limit_spec,
)


# -- the rule, without a server ---------------------------------------------------------------


def test_a_daily_cap_of_5_with_12_due_sends_5_today_and_7_from_tomorrows_start():
    gate = MemoryCapGate()
    cap = daily_cap_spec("daily-x", "a@example.com", 5)
    now = datetime(2026, 6, 10, 9, tzinfo=UTC)
    decisions = [gate.acquire([cap], now + timedelta(minutes=i), spread_key=i) for i in range(12)]
    assert [d.granted for d in decisions] == [True] * 5 + [False] * 7
    refused = [d for d in decisions if not d.granted]
    tomorrow = datetime(2026, 6, 11, tzinfo=UTC)
    assert all(tomorrow <= d.until < tomorrow + timedelta(seconds=NEXT_DAY_SPREAD_SECONDS) for d in refused)
    assert len({d.until for d in refused}) == 7  # spread: not all at one instant
    assert all(d.blocking == cap and "5/day" in d.detail for d in refused)
    # Later the same day (23:59:59) is still the same day: nothing refills.
    assert not gate.acquire([cap], datetime(2026, 6, 10, 23, 59, 59, tzinfo=UTC)).granted
    # Tomorrow: 5 of the 7 go, 2 wait for the day after.
    second = [gate.acquire([cap], d.until) for d in refused]
    assert [d.granted for d in second] == [True] * 5 + [False] * 2
    assert all(d.until >= datetime(2026, 6, 12, tzinfo=UTC) for d in second if not d.granted)


def test_the_day_is_a_utc_day():
    cap = daily_cap_spec("d", "a", 1)
    evening = datetime(2026, 6, 10, 23, 30, tzinfo=timezone(timedelta(hours=-5)))  # 04:30 UTC the 11th
    assert cap.slot_name(evening) == "d~2026-06-11"
    assert next_day_start(evening) == datetime(2026, 6, 12, tzinfo=UTC)
    assert day_of_limit("followups-3f2a9c1e-email-daily-a@b.c~2026-06-11") == ("followups-3f2a9c1e-email-daily-a@b.c", date(2026, 6, 11))
    assert day_of_limit("followups-3f2a9c1e-email-rate-sendgrid") is None


def test_a_rate_limit_refuses_only_for_a_moment():
    gate = MemoryCapGate()
    rate = rate_limit_spec("rate-x", "sendgrid", 2)
    now = datetime(2026, 6, 10, 9, tzinfo=UTC)
    assert gate.acquire([rate], now).granted and gate.acquire([rate], now).granted
    refused = gate.acquire([rate], now)
    assert not refused.granted and refused.until <= now + timedelta(seconds=2)
    assert gate.acquire([rate], now + timedelta(seconds=0.5)).granted


def test_all_or_nothing_across_limits():
    gate = MemoryCapGate()
    now = datetime(2026, 6, 10, 9, tzinfo=UTC)
    daily, rate = daily_cap_spec("d", "a", 1), rate_limit_spec("r", "acct", 10)
    assert gate.acquire([rate, daily], now).granted
    assert not gate.acquire([rate, daily], now).granted
    assert gate.slots["r"] == 1  # the refused send took no rate slot


def test_limit_names_are_unique_to_the_database_and_safe():
    name = limit_name("3f2a9c1e", "daily", "email", "Pat/Lee%@Example.com")
    assert name == "followups-3f2a9c1e-email-daily-pat_lee_@example.com"
    assert not any(char in name for char in "/%&<>")


def test_limit_names_differ_between_databases_and_identities():
    from followups.limits import step_limits
    from followups.settings import Settings
    from followups.users import Sender

    settings = Settings(email_daily_cap=5)

    def daily_name(db_id: uuid.UUID, address: str) -> str:
        sender = Sender(address, None, None, None)
        caps = step_limits("email", sender, settings, db_id)
        return next(cap for cap in caps if cap.kind == "daily").day_name(date(2026, 6, 10))

    one, two = uuid.UUID(int=1 << 100), uuid.UUID(int=2 << 100)
    names = {daily_name(db, address) for db in (one, two) for address in ("a@example.com", "b@example.com")}
    assert len(names) == 4
    assert all(name.endswith("~2026-06-10") for name in names)


# -- against a real Prefect server --------------------------------------------------------------


def _in_this_context(fn):
    """`fn` for a worker thread, seeing this test's Prefect settings (they live in context vars)."""
    parent = contextvars.copy_context()

    def run(arg):
        return parent.copy().run(fn, arg)

    return run


def _identity_owner(daily: int) -> tuple[int, str]:
    from followups.db.session import session_scope
    from followups.limits import set_daily_caps
    from followups.users import set_sender_identity
    from support import new_owner, unique

    owner = new_owner()
    address = f"{unique('sender')}@example.com"
    with session_scope() as session:
        set_sender_identity(session, owner, {"email_from": address})
        set_daily_caps(session, owner, email=daily, sms=None)
    return owner, address


def _limits_of(owner: int, channel: str = "email"):
    from followups.db.session import session_scope
    from followups.identity import database_id
    from followups.limits import owner_daily_cap, step_limits
    from followups.settings import get_settings
    from followups.users import load_sender

    with session_scope() as session:
        sender = load_sender(session, owner, get_settings())
        return step_limits(channel, sender, get_settings(), database_id(), daily_cap=owner_daily_cap(session, owner, channel))


def _cancel_pending(enrollment_ids) -> None:
    """Tidy: the test's deferred runs are scheduled days ahead; nothing is to run them."""
    from prefect.client.orchestration import get_client
    from prefect.states import Cancelled

    from support import enrollment_row

    with get_client(sync_client=True) as client:
        for enrollment_id in enrollment_ids:
            run_id = enrollment_row(enrollment_id).prefect_flow_run_id
            if run_id is not None and client.read_flow_run(run_id).state.is_scheduled():
                client.set_flow_run_state(run_id, Cancelled(), force=True)


def test_limits_apply_is_idempotent(prefect_api, cli):
    import json

    from prefect.client.orchestration import get_client

    owner, address = _identity_owner(daily=7)
    code, out, err = cli("limits", "apply", "--json")
    assert code == 0, err
    first = {item["name"]: item for item in json.loads(out)}
    today = datetime.now(UTC).date()
    days = sorted(name for name in first if address.lower() in name)
    base = days[0].split("~")[0]
    # Today's and tomorrow's limit: 7 slots that never decay.
    assert days == [f"{base}~{today.isoformat()}", f"{base}~{(today + timedelta(days=1)).isoformat()}"]
    assert all(first[name]["limit"] == 7 and first[name]["slot_decay_per_second"] == 0 for name in days)
    assert any(name.endswith("email-rate-sendgrid") for name in first)
    code, out, err = cli("limits", "apply", "--json")
    assert code == 0 and all(action == "unchanged" for name, action in
                             ((i["name"], i["action"]) for i in json.loads(out)) if name in days)
    code, out, err = cli("limits", "set", "no-such-user-here", "--email-daily", "3")
    assert code == 1 and err.count("\n") == 1
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate

    from followups.db.session import session_scope
    from followups.limits import set_daily_caps

    with session_scope() as session:
        set_daily_caps(session, owner, email=9, sms=None)
    old = f"{base}~{(today - timedelta(days=2)).isoformat()}"
    with get_client(sync_client=True) as client:
        client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=old, limit=7))
    code, out, err = cli("limits", "apply", "--json")
    actions = {item["name"]: item["action"] for item in json.loads(out)}
    assert actions[days[0]] == actions[days[1]] == "updated" and actions[old] == "deleted"
    with get_client(sync_client=True) as client:
        stored = client.read_global_concurrency_limit_by_name(days[0])
        assert stored.limit == 9 and stored.active
        names = {item.name for item in client.read_global_concurrency_limits(limit=200)}
    assert old not in names


def _run_flows(enrollments, day_clock, monkeypatch) -> list[str]:
    """The flow for each enrollment on two worker threads, at the time `day_clock` says."""
    from followups.execution import deferral
    from followups.flows.follow_up_sequence import follow_up_sequence

    monkeypatch.setattr(deferral, "clock", lambda: day_clock)

    def run(enrollment_id: int):
        # As an executor would: the enrollment's pending run (a deferred one is due "now" by
        # the clock above), or a first run when it has none.
        from prefect.client.orchestration import get_client
        from prefect.flow_engine import run_flow
        from prefect.states import Pending

        from support import enrollment_row

        run_id = enrollment_row(enrollment_id).prefect_flow_run_id
        if run_id is None:
            return follow_up_sequence(enrollment_id)
        with get_client(sync_client=True) as client:
            client.set_flow_run_state(run_id, Pending(message="claimed by a worker"), force=True)
            return run_flow(follow_up_sequence, flow_run=client.read_flow_run(run_id), return_type="result")

    with ThreadPoolExecutor(max_workers=2) as pool:
        return list(pool.map(_in_this_context(run), enrollments))


def _deferred_until(enrollment_id: int) -> datetime:
    from prefect.client.orchestration import get_client

    from support import enrollment_row, events_of

    event = events_of(enrollment_id)[-1]
    assert event.event_type == "STEP_DEFERRED" and event.content["reason"] == "cap"
    assert "5/day" in event.content["detail"]
    until = datetime.fromisoformat(event.content["until"])
    row = enrollment_row(enrollment_id)
    assert row.status == "ACTIVE" and row.current_step == 0 and row.next_due_at == until
    with get_client(sync_client=True) as client:
        run = client.read_flow_run(row.prefect_flow_run_id)
    assert run.state.is_scheduled() and run.state.state_details.scheduled_time == until
    return until


def test_a_daily_cap_of_5_with_12_due_sends_5_today_and_7_tomorrow_across_two_workers(prefect_api, fake_providers, monkeypatch):
    """Two workers, a cap of 5 a day, 12 due emails: 5 sent today, 7 deferred to tomorrow's start;
    tomorrow 5 of them go and 2 wait for the day after. None lost, never over the cap."""
    from prefect.client.orchestration import get_client

    from followups.deployments.definitions import sequence_deployment
    from followups.settings import reset_settings
    from support import event_types, new_enrollment, new_sequence

    sequence_deployment().apply()
    owner, _ = _identity_owner(daily=5)
    limits = _limits_of(owner)
    daily = next(cap for cap in limits if cap.kind == "daily")
    # Weeks ahead: the deferred runs are scheduled in the future, where no runner picks them up.
    today = datetime.now(UTC).date() + timedelta(days=40)
    day1, day2, day3 = (datetime.combine(today + timedelta(days=n), time(0), tzinfo=UTC) for n in range(3))
    spread = timedelta(seconds=NEXT_DAY_SPREAD_SECONDS)
    # No `limits apply`: each day's limit is made by that day's first sends (two workers racing).
    sequence_id = new_sequence(owner, [{"type": "EMAIL", "subject": "s", "text": "t"}])
    enrollments = [new_enrollment(owner, sequence_id) for _ in range(12)]
    monkeypatch.setenv("FOLLOWUPS_CAP_WAIT_SECONDS", "5")
    reset_settings()
    try:
        outcomes = _run_flows(enrollments, day1 + timedelta(hours=10), monkeypatch)
        assert sorted(outcomes) == ["COMPLETED"] * 5 + ["WAITING"] * 7
        sent = [e for e in enrollments if "EMAIL_SENT" in event_types(e)]
        waiting = [e for e in enrollments if e not in sent]
        assert len(sent) == 5 and len(waiting) == 7
        untils = [_deferred_until(e) for e in waiting]
        assert all(day2 <= until < day2 + spread for until in untils)
        with get_client(sync_client=True) as client:
            counted = client.read_global_concurrency_limit_by_name(daily.day_name(day1.date()))
        assert counted.limit == 5 and counted.active_slots == 5

        # Tomorrow, after the spread: a fresh day's limit.
        outcomes = _run_flows(waiting, day2 + spread, monkeypatch)
        assert sorted(outcomes) == ["COMPLETED"] * 5 + ["WAITING"] * 2
        sent_tomorrow = [e for e in waiting if "EMAIL_SENT" in event_types(e)]
        still = [e for e in waiting if e not in sent_tomorrow]
        assert len(sent_tomorrow) == 5 and len(still) == 2
        assert all(day3 <= _deferred_until(e) < day3 + spread for e in still)
        assert all(event_types(e).count("EMAIL_SENT") == 1 for e in sent + sent_tomorrow)
        with get_client(sync_client=True) as client:
            counted = client.read_global_concurrency_limit_by_name(daily.day_name(day2.date()))
        assert counted.limit == 5 and counted.active_slots == 5
    finally:
        monkeypatch.undo()
        reset_settings()
        _cancel_pending(enrollments)


def test_a_rate_limit_of_2_per_second_spreads_10_sends_over_4_seconds(prefect_api, fake_providers, monkeypatch):
    """10 due emails on two workers through a 2/s limit of their own provider account: the sent
    events, in order, span at least 4 s and never more than 2 + 2/s."""
    from followups import limits as limits_module
    from followups.deployments.definitions import sequence_deployment
    from followups.settings import reset_settings
    from support import event_types, events_of, new_enrollment, new_sequence, unique

    sequence_deployment().apply()
    # An account of its own, so no other test's sends count and no other test is slowed.
    monkeypatch.setattr(limits_module, "email_account", lambda settings, account=unique("acct"): account)
    monkeypatch.setenv("FOLLOWUPS_EMAIL_RATE_PER_SECOND", "2")
    monkeypatch.setenv("FOLLOWUPS_CAP_WAIT_SECONDS", "30")
    monkeypatch.setenv("FOLLOWUPS_CAPS_STRICT", "true")
    reset_settings()
    owner, _ = _identity_owner(daily=100)
    sequence_id = new_sequence(owner, [{"type": "EMAIL", "subject": "s", "text": "t"}])
    enrollments = [new_enrollment(owner, sequence_id) for _ in range(10)]
    try:
        limits_module.apply_limits(_limits_of(owner))
        with ThreadPoolExecutor(max_workers=2) as pool:
            from followups.flows.follow_up_sequence import follow_up_sequence

            outcomes = list(pool.map(_in_this_context(follow_up_sequence), enrollments))
    finally:
        monkeypatch.undo()
        reset_settings()
    assert outcomes == ["COMPLETED"] * 10
    assert all("STEP_DEFERRED" not in event_types(e) for e in enrollments)
    times = []
    for enrollment_id in enrollments:
        events = events_of(enrollment_id)
        kinds = [event.event_type for event in events]
        # Order: the attempt is recorded before the send, and each is sent once.
        assert kinds.index("STEP_ATTEMPT") < kinds.index("EMAIL_SENT") and kinds.count("EMAIL_SENT") == 1
        times.append(next(event.occurred_at for event in events if event.event_type == "STEP_ATTEMPT"))
    times.sort()
    span = lambda a, b: (times[b] - times[a]).total_seconds()  # noqa: E731
    # 2 slots at once, then 2 a second: the 10th slot is free (10 - 2) / 2 = 4 s after the first.
    # The tolerance covers the time between taking a slot and recording the attempt.
    tolerance = 0.5
    assert span(0, 9) >= 4 - tolerance
    # Any 5 in a row: at most 2 slots free at the first, 3 refilled at 2/s: at least 1.5 s.
    for index in range(4, len(times)):
        assert span(index - 4, index) >= 1.5 - tolerance


def test_two_workers_making_the_same_days_limit_share_one(prefect_api, monkeypatch):
    from prefect.client.orchestration import get_client

    from followups import limits as limits_module
    from support import unique

    cap = daily_cap_spec(f"followups-test-{unique('day')}", "x@example.com", 3)
    day = date(2031, 1, 2)
    barrier = threading.Barrier(2)

    def make(_: int) -> list[str]:
        monkeypatch.setattr(limits_module, "_known", {})  # each "worker" starts with no cache
        barrier.wait()
        with get_client(sync_client=True) as client:
            return limits_module._ensure_day_limits(client, [cap], day)

    with ThreadPoolExecutor(max_workers=2) as pool:
        made = list(pool.map(_in_this_context(make), range(2)))
    assert made == [[cap.day_name(day)]] * 2
    # A worker that did not see it made (a fresh process, as each flow run of the stock runner)
    # uses it without a create: the server would log the duplicate as an ERROR with a traceback.
    monkeypatch.setattr(limits_module, "_known", {})
    with get_client(sync_client=True) as client:
        def create(limit):
            raise AssertionError(f"created {limit.name} again")

        monkeypatch.setattr(client, "create_global_concurrency_limit", create)
        assert limits_module._ensure_day_limits(client, [cap], day) == [cap.day_name(day)]
        stored = client.read_global_concurrency_limit_by_name(cap.day_name(day))
    assert stored.limit == 3 and stored.slot_decay_per_second == 0


def test_limits_set_changes_only_what_it_is_given(database_url, cli, monkeypatch):
    from followups.db.session import session_scope
    from followups.users import ensure_user
    from support import unique

    name = unique("capper")
    with session_scope() as session:
        ensure_user(session, name)
    assert cli("limits", "set", name, "--email-daily", "5", "--sms-daily", "0")[0] == 0
    code, out, err = cli("limits", "set", name, "--email-daily", "7")
    assert code == 0, err
    assert out.strip() == f"{name}: email 7/day, sms no cap"  # the SMS cap was left alone
    code, out, _ = cli("limits", "set", name, "--reset")
    assert out.strip() == f"{name}: email 1000/day (the setting), sms 500/day (the setting)"
    code, out, err = cli("limits", "set", name, "--email-daily", "-1")
    assert code == 1 and err.strip() == "error: email_daily_cap: must be an integer between 0 and 10000000"


def test_limits_apply_without_a_prefect_api_is_one_line(database_url, cli, monkeypatch):
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    monkeypatch.setattr("followups.prefect_server.configured_api_url", lambda: None)
    code, out, err = cli("limits", "apply")
    assert code == 1 and out == "" and len(err.strip().splitlines()) == 1 and "PREFECT_API_URL" in err


def test_day_slots_taken_for_sends_that_do_not_go_out_are_handed_back_under_contention(prefect_api):
    from prefect.client.orchestration import get_client

    from followups.limits import PrefectCapGate
    from support import unique

    daily = daily_cap_spec(f"followups-test-{unique('day')}", "x@example.com", 5)
    rate = rate_limit_spec(f"followups-test-{unique('rate')}", "acct", 0.01)  # 1 slot, back in 100 s
    day = datetime(2031, 1, 3, 12, tzinfo=UTC)
    gate = PrefectCapGate(wait_seconds=0.5, strict=False)
    barrier = threading.Barrier(6)

    def send(_: int) -> bool:
        barrier.wait()
        return gate.acquire([daily, rate], day).granted

    with ThreadPoolExecutor(max_workers=6) as pool:
        allowed = list(pool.map(_in_this_context(send), range(6)))
    assert allowed.count(True) == 1  # the rate limit lets one through; five time out
    assert [gate.acquire([daily, rate], day).granted for _ in range(3)] == [False] * 3
    with get_client(sync_client=True) as client:
        used = client.read_global_concurrency_limit_by_name(daily.day_name(day.date())).active_slots
    assert used == 1  # only the send that went out holds a day slot
