"""Send caps: a rolling 24 h and an hourly window per sending identity, counted in PostgreSQL,
and a rate per provider account, a Prefect global concurrency limit. A capped step is deferred
to a scheduled run for the moment a slot frees (STEP_DEFERRED, reason cap), never dropped and
never sent over the cap, whatever the number of workers."""

from __future__ import annotations

import contextvars
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, time, timedelta

from hypothesis import given, settings as hypothesis_settings, strategies as st

from followups.scheduling.caps import (
    DAY_SECONDS,
    HOUR_SECONDS,
    fits,
    limit_name,
    place,
    rate_deferral,
    rate_limit_spec,
    window_cap_spec,
)

T0 = datetime(2026, 6, 10, 9, tzinfo=UTC)
DAY, HOUR = timedelta(days=1), timedelta(hours=1)


# -- the rule, without a server ---------------------------------------------------------------


def _ask_all(asks, windows, handed_back=frozenset()):
    """Each ask placed in turn; the ones in `handed_back` give their slot back at once (a step
    that failed or was skipped)."""
    placed = []
    for index, moment in enumerate(asks):
        at = place(placed, moment, windows)
        if index not in handed_back:
            placed.append(at)
    return placed


def test_a_cap_of_5_per_24_h_with_12_asks_sends_5_now_and_promises_the_rest_the_moments_slots_free():
    cap = window_cap_spec("email:a@example.com", "a@example.com", 5, DAY_SECONDS)
    asks = [T0 + timedelta(minutes=i) for i in range(12)]
    placed = []
    for moment in asks:
        placed.append(place(placed, moment, [cap]))
    assert placed[:5] == asks[:5]
    # Each of the next five goes when one of the first five leaves the window: 24 h after it.
    assert placed[5:10] == [moment + DAY for moment in asks[:5]]
    assert placed[10:] == [moment + 2 * DAY for moment in asks[:2]]
    assert cap.describe() == "5 per 24 h for a@example.com"


def test_a_send_at_the_same_instant_as_a_full_window_goes_when_the_window_has_moved_past_it():
    cap = window_cap_spec("k", "a", 2, DAY_SECONDS)
    placed = _ask_all([T0] * 5, [cap])
    # The window is (t - 24 h, t]: the two at T0 are out of it at exactly T0 + 24 h.
    assert placed == [T0, T0, T0 + DAY, T0 + DAY, T0 + 2 * DAY]


def test_a_promised_moment_is_kept_while_it_is_ahead_and_a_send_that_fits_now_is_not_held_back():
    daily = window_cap_spec("k", "a", 3, DAY_SECONDS)
    assert place([T0, T0], T0 + HOUR, [daily], promised=T0 + DAY) == T0 + DAY
    assert place([T0, T0], T0 + DAY, [daily], promised=T0 + DAY) == T0 + DAY
    assert place([T0], T0 + HOUR, [daily]) == T0 + HOUR


def test_an_hourly_cap_inside_a_daily_one():
    daily = window_cap_spec("k", "a", 5, DAY_SECONDS)
    hourly = window_cap_spec("k", "a", 2, HOUR_SECONDS)
    placed = _ask_all([T0] * 6, [daily, hourly])
    assert placed == [T0, T0, T0 + HOUR, T0 + HOUR, T0 + 2 * HOUR, T0 + DAY]
    assert hourly.describe() == "2 per hour for a"


def test_nothing_to_count_goes_now():
    assert place([], T0, []) == T0
    assert place([], T0, [window_cap_spec("k", "a", 1, DAY_SECONDS)]) == T0


@hypothesis_settings(max_examples=300, deadline=None)
@given(
    daily=st.integers(1, 6),
    hourly=st.one_of(st.none(), st.integers(1, 3)),
    gaps=st.lists(st.integers(0, 6 * 3600), min_size=1, max_size=40),
    handed_back=st.sets(st.integers(0, 39), max_size=10),
)
def test_no_window_ever_holds_more_than_its_cap_and_nothing_goes_before_it_asked(daily, hourly, gaps, handed_back):
    windows = [window_cap_spec("k", "a", daily, DAY_SECONDS)]
    if hourly:
        windows.append(window_cap_spec("k", "a", hourly, HOUR_SECONDS))
    asks, moment = [], T0
    for gap in gaps:
        moment += timedelta(seconds=gap)
        asks.append(moment)
    placed, kept = [], []
    for index, ask in enumerate(asks):
        at = place(kept, ask, windows)
        assert at >= ask
        placed.append(at)
        if index not in handed_back:
            kept.append(at)
    kept.sort()
    for cap in windows:
        span = timedelta(seconds=cap.window_seconds)
        for end in kept:
            assert sum(1 for moment in kept if end - span < moment <= end) <= cap.limit
    # First come, first served: an ask that had to wait never goes before an earlier waiting one.
    waited = [at for index, (at, ask) in enumerate(zip(placed, asks, strict=True)) if at > ask and index not in handed_back]
    assert waited == sorted(waited)


def test_fits_looks_at_windows_that_end_after_the_send_too():
    cap = window_cap_spec("k", "a", 2, DAY_SECONDS)
    # One sent an hour ago and one promised in two hours: a send now would make three in the
    # window ending at the promised one.
    assert not fits([T0 - HOUR, T0 + 2 * HOUR], T0, [cap])
    assert fits([T0 - HOUR, T0 + 2 * HOUR], T0 - 2 * DAY, [cap])


def test_a_rate_limit_refuses_only_for_a_moment():
    rate = rate_limit_spec("rate-x", "sendgrid", 2)
    refused = rate_deferral(rate, 2.0, T0)
    assert not refused.granted and T0 < refused.until <= T0 + timedelta(seconds=2)
    assert rate.describe() == "2/s for sendgrid"


def test_limit_names_are_unique_to_the_database_and_safe():
    name = limit_name("3f2a9c1e", "rate", "email", "Pat/Lee%@Example.com")
    assert name == "followups-3f2a9c1e-email-rate-pat_lee_@example.com"
    assert not any(char in name for char in "/%&<>")


def test_the_windows_count_per_identity_and_the_rates_per_database():
    from followups.limits import OwnerCaps, step_limits
    from followups.settings import Settings
    from followups.users import Sender

    settings = Settings(email_daily_cap=5, email_hourly_cap=2)

    def limits(db_id: uuid.UUID, address: str, caps=OwnerCaps()):
        return step_limits("email", Sender(address, None, None, None), settings, db_id, caps=caps)

    one, two = uuid.UUID(int=1 << 100), uuid.UUID(int=2 << 100)
    rates = {cap.name for db in (one, two) for cap in limits(db, "a@example.com") if cap.kind == "rate"}
    assert len(rates) == 2
    keys = {cap.name for address in ("a@example.com", "B@example.com") for cap in limits(one, address) if cap.kind == "window"}
    assert keys == {"email:a@example.com", "email:b@example.com"}
    found = {(cap.window_seconds, cap.limit) for cap in limits(one, "a@example.com") if cap.kind == "window"}
    assert found == {(DAY_SECONDS, 5), (HOUR_SECONDS, 2)}
    mine = {(cap.window_seconds, cap.limit) for cap in limits(one, "a@example.com", OwnerCaps(daily=9, hourly=0)) if cap.kind == "window"}
    assert mine == {(DAY_SECONDS, 9)}  # 0: no hourly cap for this owner


# -- against a real Prefect server --------------------------------------------------------------


def _in_this_context(fn):
    """`fn` for a worker thread, seeing this test's Prefect settings (they live in context vars)."""
    parent = contextvars.copy_context()

    def run(arg):
        return parent.copy().run(fn, arg)

    return run


def _identity_owner(daily: int) -> tuple[int, str]:
    from followups.db.session import session_scope
    from followups.limits import set_caps
    from followups.users import set_sender_identity
    from support import new_owner, unique

    owner = new_owner()
    address = f"{unique('sender')}@example.com"
    with session_scope() as session:
        set_sender_identity(session, owner, {"email_from": address})
        set_caps(session, owner, email_daily_cap=daily)
    return owner, address


def _limits_of(owner: int, channel: str = "email"):
    from followups.db.session import session_scope
    from followups.identity import database_id
    from followups.limits import owner_caps, step_limits
    from followups.settings import get_settings
    from followups.users import load_sender

    with session_scope() as session:
        sender = load_sender(session, owner, get_settings())
        return step_limits(channel, sender, get_settings(), database_id(), caps=owner_caps(session, owner, channel))


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


def test_limits_apply_writes_the_rates_and_deletes_old_per_day_limits(prefect_api, cli):
    import json

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate

    from followups.identity import database_id

    _identity_owner(daily=7)
    old = f"followups-{database_id().hex[:8]}-email-daily-someone@example.com~2026-01-01"
    with get_client(sync_client=True) as client:
        client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=old, limit=7))
    code, out, err = cli("limits", "apply", "--json")
    assert code == 0, err
    first = {item["name"]: item for item in json.loads(out)}
    assert first[old]["action"] == "deleted"
    rates = [name for name in first if name != old]
    assert rates and all("-rate-" in name for name in rates)
    assert any(name.endswith("email-rate-sendgrid") for name in rates)
    code, out, err = cli("limits", "apply", "--json")
    assert code == 0 and {item["action"] for item in json.loads(out)} == {"unchanged"}
    with get_client(sync_client=True) as client:
        names = {item.name for item in client.read_global_concurrency_limits(limit=200)}
    assert old not in names
    code, out, err = cli("limits", "set", "no-such-user-here", "--email-daily", "3")
    assert code == 1 and err.count("\n") == 1


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


def _deferred_until(enrollment_id: int, reason: str = "cap") -> datetime:
    from prefect.client.orchestration import get_client

    from support import enrollment_row, events_of

    event = events_of(enrollment_id)[-1]
    assert event.event_type == "STEP_DEFERRED" and event.content["reason"] == reason
    assert reason != "cap" or "5 per 24 h" in event.content["detail"]
    until = datetime.fromisoformat(event.content["until"])
    row = enrollment_row(enrollment_id)
    assert row.status == "ACTIVE" and row.current_step == 0 and row.next_due_at == until
    with get_client(sync_client=True) as client:
        run = client.read_flow_run(row.prefect_flow_run_id)
    assert run.state.is_scheduled() and run.state.state_details.scheduled_time == until
    return until


def test_a_cap_of_5_per_24_h_with_12_due_sends_5_now_and_the_rest_as_slots_free_across_two_workers(prefect_api, fake_providers, monkeypatch):
    """Two workers, a cap of 5 per 24 h, 12 emails due at once: 5 sent, 5 promised the moment the
    first five leave the window (24 h later), 2 the moment after that. Each goes then; none lost,
    never over the cap."""
    from followups.deployments.definitions import sequence_deployment
    from followups.settings import reset_settings
    from support import event_types, new_enrollment, new_sequence

    sequence_deployment().apply()
    owner, _ = _identity_owner(daily=5)
    # Weeks ahead: the deferred runs are scheduled in the future, where no runner picks them up.
    start = datetime.combine(datetime.now(UTC).date() + timedelta(days=40), time(10), tzinfo=UTC)
    sequence_id = new_sequence(owner, [{"type": "EMAIL", "subject": "s", "text": "t"}])
    enrollments = [new_enrollment(owner, sequence_id) for _ in range(12)]
    monkeypatch.setenv("FOLLOWUPS_CAP_WAIT_SECONDS", "5")
    reset_settings()
    try:
        outcomes = _run_flows(enrollments, start, monkeypatch)
        assert sorted(outcomes) == ["COMPLETED"] * 5 + ["WAITING"] * 7
        sent = [e for e in enrollments if "EMAIL_SENT" in event_types(e)]
        waiting = [e for e in enrollments if e not in sent]
        untils = {e: _deferred_until(e) for e in waiting}
        assert sorted(untils.values()) == [start + DAY] * 5 + [start + 2 * DAY] * 2

        # A day later, the five promised then go; the other two, started early, keep their place.
        outcomes = _run_flows(waiting, start + DAY, monkeypatch)
        sent_then = [e for e in waiting if "EMAIL_SENT" in event_types(e)]
        assert sorted(sent_then) == sorted(e for e in waiting if untils[e] == start + DAY)
        later = [e for e in waiting if e not in sent_then]
        assert all(_deferred_until(e, "due time") == start + 2 * DAY for e in later)
        assert sorted(_run_flows(later, start + 2 * DAY, monkeypatch)) == ["COMPLETED"] * 2
        assert all(event_types(e).count("EMAIL_SENT") == 1 for e in enrollments)
    finally:
        monkeypatch.undo()
        reset_settings()
        _cancel_pending(enrollments)


def _slot_asks(owner: int, count: int, cap: int, moment: datetime, threads: int = 2):
    """`count` sends of one identity asking for a slot at `moment`, from `threads` workers."""
    from followups.limits import _take_window_slot
    from support import new_enrollment, new_sequence

    sequence_id = new_sequence(owner, [{"type": "EMAIL", "subject": "s", "text": "t"}])
    enrollments = [new_enrollment(owner, sequence_id) for _ in range(count)]
    key = f"email:{uuid.uuid4().hex}@example.com"
    windows = [window_cap_spec(key, key, cap, DAY_SECONDS)]
    barrier = threading.Barrier(threads)

    def ask(enrollment_id: int) -> datetime:
        if enrollment_id in enrollments[:threads]:
            barrier.wait()
        return _take_window_slot(windows, moment, enrollment_id, 0)[0]

    with ThreadPoolExecutor(max_workers=threads) as pool:
        return enrollments, dict(zip(enrollments, pool.map(_in_this_context(ask), enrollments), strict=True)), windows


def test_two_workers_racing_for_the_last_slots_never_both_get_one(database_url):
    from support import new_owner

    moment = T0 + timedelta(days=3000)
    _, placed, _ = _slot_asks(new_owner(), 12, 5, moment, threads=4)
    assert sorted(placed.values()) == [moment] * 5 + [moment + DAY] * 5 + [moment + 2 * DAY] * 2


def test_a_slot_whose_send_does_not_go_out_is_given_back_without_a_write(database_url):
    """A slot counts while its step is pending and once it was sent; a failed step's, or a
    cancelled enrollment's promised one, counts for nothing, so the next send has its place."""
    from followups.db.models import EnrollmentStatus
    from followups.db.session import session_scope
    from followups.lifecycle import load_plan, store
    from followups.lifecycle.transitions import Actor
    from followups.limits import _take_window_slot
    from support import new_enrollment, new_owner, new_sequence

    moment = T0 + timedelta(days=3100)
    owner = new_owner()
    enrollments, placed, windows = _slot_asks(owner, 3, 2, moment)
    assert sorted(placed.values()) == [moment, moment, moment + DAY]
    granted = [e for e in enrollments if placed[e] == moment]
    promised = next(e for e in enrollments if placed[e] == moment + DAY)
    sequence_id = new_sequence(owner, [{"type": "EMAIL", "subject": "s", "text": "t"}])
    with session_scope() as session:
        store.fail(session, load_plan(session, granted[0], lock=True), 0, "provider refused")
    # The failed send's slot is back: a new send goes now.
    assert _take_window_slot(windows, moment + timedelta(minutes=1), new_enrollment(owner, sequence_id), 0)[0] == moment + timedelta(minutes=1)
    with session_scope() as session:
        store.move(session, load_plan(session, promised, lock=True), EnrollmentStatus.CANCELLED, actor=Actor.API)
    # The cancelled enrollment's promised place goes to the next send that has to wait.
    assert _take_window_slot(windows, moment + timedelta(minutes=2), new_enrollment(owner, sequence_id), 0)[0] == moment + DAY


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


def test_limits_set_changes_only_what_it_is_given(database_url, cli, monkeypatch):
    from followups.db.session import session_scope
    from followups.users import ensure_user
    from support import unique

    name = unique("capper")
    with session_scope() as session:
        ensure_user(session, name)
    assert cli("limits", "set", name, "--email-daily", "5", "--sms-daily", "0")[0] == 0
    code, out, err = cli("limits", "set", name, "--email-daily", "7", "--email-hourly", "2")
    assert code == 0, err
    # The SMS cap was left alone.
    assert out.strip() == f"{name}: email 7/24 h, 2/hour; sms no cap, no cap (the setting)"
    code, out, _ = cli("limits", "set", name, "--reset")
    assert out.strip() == (
        f"{name}: email 1000/24 h (the setting), no cap (the setting); sms 500/24 h (the setting), no cap (the setting)"
    )
    code, out, err = cli("limits", "set", name, "--email-hourly", "-1")
    assert code == 1 and err.strip() == "error: email_hourly_cap: must be an integer between 0 and 10000000"


def test_limits_show_counts_each_window(database_url, cli):
    import json

    from followups.db.session import session_scope
    from followups.limits import _take_window_slot, owner_caps, step_limits
    from followups.settings import get_settings
    from followups.identity import database_id
    from followups.users import load_sender
    from support import new_enrollment, new_sequence

    owner, address = _identity_owner(daily=2)
    sequence_id = new_sequence(owner, [{"type": "EMAIL", "subject": "s", "text": "t"}])
    with session_scope() as session:
        sender = load_sender(session, owner, get_settings())
        windows = [cap for cap in step_limits("email", sender, get_settings(), database_id(), caps=owner_caps(session, owner, "email"))
                   if cap.kind == "window"]
    now = datetime.now(UTC)
    for _ in range(3):
        _take_window_slot(windows, now, new_enrollment(owner, sequence_id), 0)
    code, out, err = cli("limits", "show", "--json")
    assert code == 0, err
    mine = [row for row in json.loads(out)["windows"] if row["identity"] == address]
    assert len(mine) == 1 and mine[0]["limit"] == 2 and mine[0]["used"] == 2 and mine[0]["promised"] == 1
    assert datetime.fromisoformat(mine[0]["next_free"]) > now + timedelta(hours=23)
    code, out, err = cli("limits", "show")
    assert code == 0 and address in out and "2 per 24 h" in out


def test_limits_apply_without_a_prefect_api_is_one_line(database_url, cli, monkeypatch):
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    monkeypatch.setattr("followups.prefect_server.configured_api_url", lambda: None)
    code, out, err = cli("limits", "apply")
    assert code == 1 and out == "" and len(err.strip().splitlines()) == 1 and "PREFECT_API_URL" in err


def test_window_slots_of_sends_that_get_no_rate_slot_are_handed_back_under_contention(prefect_api):
    from followups.db.session import session_scope
    from followups.limits import _counted_slots, take_slot
    from support import new_enrollment, new_owner, new_sequence, unique

    owner = new_owner()
    sequence_id = new_sequence(owner, [{"type": "EMAIL", "subject": "s", "text": "t"}])
    enrollments = [new_enrollment(owner, sequence_id) for _ in range(9)]
    key = f"email:{unique('x')}@example.com"
    daily = window_cap_spec(key, key, 6, DAY_SECONDS)
    rate = rate_limit_spec(f"followups-test-{unique('rate')}", "acct", 0.01)  # 1 slot, back in 100 s
    moment = datetime.now(UTC)
    barrier = threading.Barrier(6)

    def send(enrollment_id: int) -> bool:
        barrier.wait()
        return take_slot([daily, rate], moment, enrollment_id=enrollment_id, step_index=0, wait_seconds=0.5, strict=False).granted

    with ThreadPoolExecutor(max_workers=6) as pool:
        allowed = list(pool.map(_in_this_context(send), enrollments[:6]))
    assert allowed.count(True) == 1  # the rate limit lets one through; five time out
    assert [send_alone for send_alone in (
        take_slot([daily, rate], moment, enrollment_id=e, step_index=0, wait_seconds=0.1, strict=False).granted for e in enrollments[6:]
    )] == [False] * 3
    with session_scope() as session:
        counted = session.execute(_counted_slots(session, key, moment - DAY)).all()
    assert len(counted) == 1  # only the send that went out holds a window slot
