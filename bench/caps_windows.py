"""The rolling caps' cost: one send taking its place in its identity's 24 h window, by how full
the window is, and the same from several threads at once (one identity: they queue on its lock).

    python bench/caps_windows.py [--fills 0,1000,10000] [--asks 200] [--threads 4]

A fresh followups database; per fill, that many sends already counted in the last 24 h (spread
over it, their steps sent), a cap above the fill so every ask is granted, then `--asks` asks,
one at a time, then `--asks` from `--threads` threads. Prints the median and p95 per ask (ms)
and the asks/s of the threaded run; writes bench/results/caps-windows-*.json. No Prefect: the
windows are counted in PostgreSQL only (the per-second rate, a Prefect limit, is not measured).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _harness as h  # noqa: E402


def _enrollments(owner: int, sequence_id: int, count: int, prefix: str) -> list[int]:
    """ACTIVE enrollments at step 0, without runs (no Prefect here)."""
    from sqlalchemy import select

    from followups.db.models import SequenceVersion
    from followups.db.session import session_scope
    from followups.deals import upsert_deal
    from followups.lifecycle import store

    with session_scope() as session:
        version_id = session.scalar(
            select(SequenceVersion.id).where(SequenceVersion.sequence_id == sequence_id).order_by(SequenceVersion.version.desc())
        )
        rows = [
            {"deal_id": upsert_deal(session, owner, h.deal(i, prefix)), "sequence_id": sequence_id,
             "sequence_version_id": version_id, "content": {"deal": f"{prefix}-{i}"}}
            for i in range(count)
        ]
        made: list[int] = []
        for start in range(0, len(rows), 2000):  # PostgreSQL takes at most 65,535 parameters
            made += store.create_many(session, rows[start:start + 2000]).values()
        return made


def _fill(enrollment_ids: list[int], key: str, now: datetime) -> None:
    """Sends already made: a slot each, spread over the last 24 h, the step sent."""
    from sqlalchemy import insert

    from followups.db.models import EventType, FollowUpEvent, SendSlot
    from followups.db.session import session_scope

    if not enrollment_ids:
        return
    step = timedelta(hours=23) / len(enrollment_ids)
    with session_scope() as session:
        session.execute(insert(SendSlot), [
            {"enrollment_id": e, "step_index": 0, "identity": key, "taken_at": now - timedelta(hours=23, minutes=30) + i * step}
            for i, e in enumerate(enrollment_ids)
        ])
        session.execute(insert(FollowUpEvent), [
            {"enrollment_id": e, "event_type": EventType.EMAIL_SENT.value, "step_index": 0, "status": "sent",
             "dedupe_key": f"bench:{e}:sent"}
            for e in enrollment_ids
        ])


def measure(fill: int, asks: int, threads: int, owner: int, sequence_id: int) -> dict:
    from followups.limits import _take_window_slot
    from followups.scheduling.caps import DAY_SECONDS, window_cap_spec

    key = f"email:bench-{uuid.uuid4().hex[:8]}@example.com"
    cap = window_cap_spec(key, key, fill + 2 * asks + 10, DAY_SECONDS)
    now = datetime.now(UTC)
    _fill(_enrollments(owner, sequence_id, fill, f"fill{fill}"), key, now)
    serial_ids = _enrollments(owner, sequence_id, asks, f"serial{fill}")
    threaded_ids = _enrollments(owner, sequence_id, asks, f"threaded{fill}")

    def ask(enrollment_id: int) -> float:
        began = time.perf_counter()
        at, _ = _take_window_slot([cap], datetime.now(UTC), enrollment_id, 0)
        assert at <= datetime.now(UTC)
        return (time.perf_counter() - began) * 1000

    serial = [ask(e) for e in serial_ids]
    began = time.perf_counter()
    with ThreadPoolExecutor(max_workers=threads) as pool:
        threaded = list(pool.map(ask, threaded_ids))
    wall = time.perf_counter() - began
    return {
        "fill": fill, "serial_ms": h.summary(serial), "threaded_ms": h.summary(threaded),
        "threaded_asks_per_second": asks / wall,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fills", default="0,1000,10000")
    parser.add_argument("--asks", type=int, default=200)
    parser.add_argument("--threads", type=int, default=4)
    args = parser.parse_args()
    from followups.db.migrate import upgrade
    from followups.db.session import dispose_engines
    from followups.settings import reset_settings

    name = f"bench_caps_{uuid.uuid4().hex[:8]}"
    url = h.with_database(h.PG_ADMIN_URL, name)
    upgrade(url)
    os.environ["FOLLOWUPS_DATABASE_URL"] = url
    reset_settings()
    try:
        owner, sequence_id = h.new_owner_and_sequence([{"type": "EMAIL", "subject": "s", "text": "t"}])
        rows = []
        for fill in (int(value) for value in args.fills.split(",")):
            row = measure(fill, args.asks, args.threads, owner, sequence_id)
            rows.append(row)
            h.log(
                f"{fill:>6} in the window: one at a time {h.fmt(row['serial_ms'], ' ms')}; "
                f"{args.threads} threads {h.fmt(row['threaded_ms'], ' ms')}, {row['threaded_asks_per_second']:.0f} asks/s"
            )
        if len(rows) > 1:
            first, last = rows[0]["serial_ms"]["median"], rows[-1]["serial_ms"]["median"]
            h.log(f"median per ask, {rows[-1]['fill']} vs {rows[0]['fill']} in the window: {h.ratio(last, first):.2f}x")
        path = h.write_results("caps-windows", {"machine": h.machine_info(), "asks": args.asks, "threads": args.threads, "rows": rows})
        h.log(f"wrote {path}")
    finally:
        dispose_engines()
        h.drop_database(name)


if __name__ == "__main__":
    main()
