"""Scale: many enrollments parked in a WAIT.

    python bench/scale.py [--n 500] [--stock-n 20] [--bulk 1500] [--samples 100]
    python bench/scale.py --import 100000 [--burst 1000] [--samples 100]

`--import N` parks N enrollments through the bulk path users have (`followups import`, the batch
API: `bulk.enroll_batch`, 1,000 per call) with a start 30 days ahead, the fast worker serving:
each one is an ACTIVE enrollment with one Scheduled Prefect run, as a WAIT leaves it (fewer rows
in our database: no sent step yet). Then, with all N waiting: rows and bytes per enrollment in
both databases, memory (PSS) of every process, the idle CPU of the Prefect server and
PostgreSQL, runs marked Late, and the latency of the worker's poll, the Prefect UI's flow-run
list, `followups status` and GET /api/enrollments. `--burst M` then imports M more due in the
same minute and times them until the last is sent. The other phases below are skipped.

The issue asks for 100,000 waiting enrollments; at the ~9 flow runs/s this machine executes
(and ~50 runs/s it creates), that is hours of setup, so N is a flag and the default is smaller;
the printed figures and the JSON say exactly what was run.

Sequence: EMAIL, WAIT 30 days, EMAIL. Phases, in one Prefect server:

1. the stock runner parks `--stock-n` enrollments (enroll_deal; the first run sends the EMAIL,
   starts the WAIT, schedules the next run for the due time and ends);
2. the fast worker parks `--n` more the same way;
3. optionally `--bulk` more are parked directly, without executing a flow: create_enrollment +
   WAIT_STARTED + one run scheduled 30 days ahead (what a WAIT leaves behind; used only to load
   the Prefect and followups databases with more waiting enrollments quickly);
4. with everything parked and the fast worker serving, API latency: /api/health, the poll
   query every executor makes (get_scheduled_flow_runs_for_deployments, scheduled_before=now),
   read_deployment_by_name, counting the scheduled runs, and enroll_deal; the same calls are
   measured once before anything was parked, for comparison.

Per parked enrollment: Prefect runs left Scheduled, flow runs Running/Pending (must be 0),
executor processes held (child processes of the executor, must be 0), rows and bytes in the
followups database (by table) and in the Prefect database (by table).

Writes bench/results/scale-<time>.json.
"""

from __future__ import annotations

import argparse
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _harness as h  # noqa: E402
import _scale_probes as probes  # noqa: E402

PARK_SEQUENCE = [
    {"type": "EMAIL", "subject": "Offer on {{ deal.property_address }}", "text": "Hi {{ seller.first_name }}."},
    {"type": "WAIT", "days": 30},
    {"type": "EMAIL", "subject": "Following up", "text": "Still interested?"},
]


def table_stats(url: str) -> dict[str, dict[str, int]]:
    from sqlalchemy import create_engine, text

    engine = create_engine(url)
    out: dict[str, dict[str, int]] = {}
    with engine.connect() as conn:
        tables = conn.execute(
            text("SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY tablename")
        ).scalars().all()
        for table in tables:
            rows = conn.scalar(text(f'SELECT count(*) FROM "{table}"'))
            size = conn.scalar(text("SELECT pg_total_relation_size(:t)"), {"t": f'public."{table}"'})
            out[table] = {"rows": rows, "bytes": size}
    engine.dispose()
    return out


def per_enrollment(before: dict, after: dict, n: int) -> dict:
    tables = {}
    for table, stats in after.items():
        base = before.get(table, {"rows": 0, "bytes": 0})
        rows = stats["rows"] - base["rows"]
        size = stats["bytes"] - base["bytes"]
        if rows or size > 0:
            tables[table] = {"rows": rows / n, "bytes": size / n}
    return {
        "rows": sum(t["rows"] for t in tables.values()),
        "bytes": sum(t["bytes"] for t in tables.values()),
        "by_table": dict(sorted(tables.items(), key=lambda kv: -kv[1]["rows"])),
    }


def run_counts(deployment_id) -> dict[str, int]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId, FlowRunFilter, FlowRunFilterState, FlowRunFilterStateType
    from prefect.client.schemas.objects import StateType

    counts = {}
    with get_client(sync_client=True) as client:
        for state in (StateType.SCHEDULED, StateType.PENDING, StateType.RUNNING, StateType.COMPLETED, StateType.FAILED, StateType.CRASHED):
            counts[state.value] = client.count_flow_runs(
                flow_run_filter=FlowRunFilter(state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[state]))),
                deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment_id])),
            )
    return counts


def waiting_count(enrollment_ids: list[int]) -> int:
    from sqlalchemy import text

    from followups.db.session import session_scope

    with session_scope() as session:
        return session.scalar(
            text(
                "SELECT count(DISTINCT enrollment_id) FROM follow_up_events "
                "WHERE enrollment_id = ANY(:ids) AND event_type = 'WAIT_STARTED'"
            ),
            {"ids": enrollment_ids},
        )


def park_with_flows(world, ex, owner: int, sequence_id: int, n: int, label: str, timeout: float) -> dict:
    from followups.control import enroll_deal

    started = time.perf_counter()
    prefix = f"park-{label}-{time.time_ns()}"
    refs = h.parallel(lambda i: enroll_deal(owner, h.deal(i, prefix), sequence_id), n, threads=4)
    ids = [r.id for r in refs]
    ok = h.wait_until(lambda: waiting_count(ids) >= n, timeout=timeout, interval=1)
    elapsed = time.perf_counter() - started
    # processes held while they wait: sample for a few seconds, once the last runs ended
    time.sleep(2)
    children = []
    for _ in range(6):
        children.append(ex.children())
        time.sleep(0.5)
    h.log(f"  {label}: parked {waiting_count(ids)}/{n} in {elapsed:.1f}s ({n / elapsed:.1f}/s){'' if ok else ' TIMED OUT'}")
    return {"n": n, "ids": ids, "seconds": elapsed, "parked_per_second": n / elapsed, "executor_child_processes_max": max(children)}


def park_directly(owner: int, sequence_id: int, n: int) -> dict:
    """What a WAIT leaves behind, without executing the flow (to reach large N quickly)."""
    from followups.db.events import record_event
    from followups.db.models import Enrollment, EventType
    from followups.db.session import session_scope
    from followups.control import create_enrollment
    from followups.inputs import DealInput
    from followups.prefect_runs import schedule_sequence_run

    due = datetime.now(UTC) + timedelta(days=30)
    prefix = f"bulk-{time.time_ns()}"

    def one(i: int) -> int:
        deal_in = DealInput.model_validate(h.deal(i, prefix))
        with session_scope() as session:
            enrollment = create_enrollment(session, owner, deal_in, sequence_id)
            enrollment.current_step = 1
            record_event(
                session,
                enrollment_id=enrollment.id,
                event_type=EventType.WAIT_STARTED,
                step_index=1,
                content={"due_at": due.isoformat(), "duration_seconds": 30 * 86400},
                dedupe_key=f"enrollment:{enrollment.id}:wait-started:1",
            )
            run_id = schedule_sequence_run(enrollment.id, deal_in.external_id, 1, scheduled_time=due)
            session.query(Enrollment).filter(Enrollment.id == enrollment.id).update(
                {"prefect_flow_run_id": run_id, "next_due_at": due}
            )
            return enrollment.id

    started = time.perf_counter()
    ids = h.parallel(one, n, threads=4, timeout=3600)
    elapsed = time.perf_counter() - started
    h.log(f"  bulk: parked {n} directly in {elapsed:.1f}s ({n / elapsed:.1f}/s)")
    return {"n": n, "seconds": elapsed, "parked_per_second": n / elapsed}


def api_latency(deployment_id, owner: int, sequence_id: int, samples: int, ex: h.Executor | None = None) -> dict:
    """Read-only API calls first (the executor, if any, is idle but polling), then enroll_deal
    with the executor paused (so the runs the samples create do not load the server while it
    is measured); those enrollments are cancelled afterwards."""
    import httpx
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId, FlowRunFilter, FlowRunFilterState, FlowRunFilterStateType
    from prefect.client.schemas.objects import StateType
    from prefect.settings import PREFECT_API_URL

    from followups.control import cancel_enrollment
    from followups.control import enroll_deal

    api = PREFECT_API_URL.value()
    enrolled: list[int] = []
    timings: dict[str, list[float]] = {}

    def timed(name: str, call) -> None:
        t = time.perf_counter()
        call()
        timings.setdefault(name, []).append(time.perf_counter() - t)

    prefix = f"api-{time.time_ns()}"
    with get_client(sync_client=True) as client, httpx.Client() as http:
        for i in range(samples):
            timed("GET /health", lambda: http.get(f"{api}/health").raise_for_status())
            timed(
                "executor poll (get_scheduled_flow_runs_for_deployments, due now)",
                lambda: client.get_scheduled_flow_runs_for_deployments(
                    deployment_ids=[deployment_id], scheduled_before=datetime.now(UTC), limit=8
                ),
            )
            timed("read_deployment_by_name", lambda: client.read_deployment_by_name("follow-up-sequence/followups"))
            timed(
                "count scheduled runs of the deployment",
                lambda: client.count_flow_runs(
                    flow_run_filter=FlowRunFilter(
                        state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.SCHEDULED]))
                    ),
                    deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment_id])),
                ),
            )
    if ex is not None:
        ex.pause()
    try:
        for i in range(max(10, samples // 2)):
            timed("enroll_deal", lambda: enrolled.append(enroll_deal(owner, h.deal(i, prefix), sequence_id).id))
        for enrollment_id in enrolled:  # not part of the parked population
            cancel_enrollment(enrollment_id)
    finally:
        if ex is not None:
            ex.resume()
    return {name: h.summary(values) for name, values in timings.items()}


def park_via_import(owner: int, sequence_id: int, n: int, start: datetime, prefix: str, max_seconds: float = 1e9) -> dict:
    """N enrollments through `enroll_batch` (what `followups import` calls), 1,000 per call;
    fewer if `max_seconds` runs out first (the figures say how many)."""
    from followups.bulk import enroll_batch

    ids: list[int] = []
    calls: list[float] = []
    started = time.perf_counter()
    for first in range(0, n, 1000):
        if time.perf_counter() - started > max_seconds:
            h.log(f"  import: stopped at {len(ids)} after {max_seconds:.0f}s (--import-minutes)")
            break
        items = [h.deal(i, prefix) for i in range(first, min(n, first + 1000))]
        t = time.perf_counter()
        outcome = enroll_batch(owner, items, sequence_id, start_at=start)
        calls.append(time.perf_counter() - t)
        ids += [r.enrollment_id for r in outcome.results if r.status == "ok"]
        if outcome.counts.get("error"):
            h.log(f"  import: {outcome.counts['error']} errors in the call at {first}: {outcome.results[0].message}")
        if (first // 1000) % 10 == 9:
            h.log(f"  import: {len(ids)} parked, {len(ids) / (time.perf_counter() - started):.1f}/s")
    elapsed = time.perf_counter() - started
    h.log(f"  import: parked {len(ids)}/{n} in {elapsed:.0f}s ({len(ids) / elapsed:.1f}/s)")
    return {"n": len(ids), "ids": ids, "seconds": round(elapsed, 1), "parked_per_second": round(len(ids) / elapsed, 1),
            "seconds_per_1000_call": h.summary(calls)}


def import_scale(args: argparse.Namespace, results: dict) -> None:
    from followups.api_tokens import create_token
    from followups.db.session import session_scope
    from followups.sequences import create_sequence
    from followups.users import ensure_user

    with h.BenchWorld("scale") as world:
        deployment_id = h.register_deployment()
        name = f"bench-{time.time_ns()}"
        with session_scope() as session:
            owner = ensure_user(session, name)
        token = create_token(name, label="bench")
        with session_scope() as session:
            park_id = create_sequence(session, owner, name="park", steps=PARK_SEQUENCE).id
            burst_id = create_sequence(session, owner, name="burst", steps=h.ONE_EMAIL).id
        followups_url = h.with_database(h.PG_ADMIN_URL, world.followups_db)
        prefect_url = h.with_database(h.PG_ADMIN_URL, world.prefect_db)
        start = datetime.now(UTC) + timedelta(days=30)
        with h.executor("fast", world, concurrency=args.concurrency, poll=args.poll) as ex:
            few = park_via_import(owner, park_id, 20, start, f"few-{time.time_ns()}")
            h.log("latency with 20 waiting")
            results["latency_20_waiting"] = probes.call_latency(deployment_id, few["ids"], token, args.samples)
            results["memory_20_waiting"] = probes.memory(world, ex)
            f0, p0 = table_stats(followups_url), table_stats(prefect_url)
            h.log(f"parking {args.import_n} through the bulk path")
            parked = park_via_import(owner, park_id, args.import_n, start, f"park-{time.time_ns()}", args.import_minutes * 60)
            time.sleep(5)  # the runs' events reach the event persister
            f1, p1 = table_stats(followups_url), table_stats(prefect_url)
            n = parked["n"]
            results["import"] = {k: v for k, v in parked.items() if k != "ids"}
            results["followups_db_per_enrollment"] = per_enrollment(f0, f1, n)
            results["prefect_db_per_enrollment"] = per_enrollment(p0, p1, n)
            results["followups_db_bytes_total"] = sum(t["bytes"] for t in f1.values())
            results["prefect_db_bytes_total"] = sum(t["bytes"] for t in p1.values())
            results["flow_runs_by_state"] = run_counts(deployment_id)
            h.log(f"idle with {n} waiting ({args.idle_seconds:.0f}s)")
            results["idle"] = probes.idle_server_cpu(world, args.idle_seconds)
            results["late_runs"] = probes.late_runs(deployment_id)
            results["memory_parked"] = probes.memory(world, ex)
            h.log("latency with everything waiting")
            results["latency_parked"] = probes.call_latency(deployment_id, parked["ids"], token, args.samples)
            if args.burst:
                h.log(f"burst: {args.burst} due in the same minute")
                results["burst"] = probes.burst(owner, burst_id, args.burst, args.burst_lead, timeout=args.burst_timeout, prefect_url=prefect_url)
                results["memory_after_burst"] = probes.memory(world, ex)
                results["late_runs_after_burst"] = probes.late_runs(deployment_id)
            results["executor_log_tail"] = ex.tail(1500)
    _print_import(results)


def _print_import(results: dict) -> None:
    imp = results["import"]
    print(f"\n== scale: {imp['n']} enrollments waiting, parked through the bulk path ==")
    print(f"import: {imp['parked_per_second']}/s ({imp['seconds']} s); per 1,000-item call {h.fmt(imp['seconds_per_1000_call'], 's')}")
    for label, key in (("followups DB", "followups_db_per_enrollment"), ("Prefect DB", "prefect_db_per_enrollment")):
        db = results[key]
        print(f"  {label} per enrollment: {db['rows']:.2f} rows, {db['bytes'] / 1024:.2f} KiB  "
              + ", ".join(f"{t} {v['rows']:.2f}/{v['bytes'] / 1024:.2f}K" for t, v in list(db["by_table"].items())[:8]))
    print(f"  totals: followups DB {results['followups_db_bytes_total'] / 2**20:.0f} MiB, Prefect DB {results['prefect_db_bytes_total'] / 2**20:.0f} MiB")
    print(f"flow runs by state: {results['flow_runs_by_state']}; marked Late: {results['late_runs']}")
    print(f"idle: {results['idle']}")
    print(f"memory MiB (PSS), 20 waiting -> all waiting: {results['memory_20_waiting']} -> {results['memory_parked']}")
    print("latency (20 waiting -> all waiting):")
    for name, stats in results["latency_parked"].items():
        few = results["latency_20_waiting"][name]
        print(f"  {name:<72} p50 {few['median'] * 1000:.1f} ms p95 {few['p95'] * 1000:.1f} ms -> "
              f"p50 {stats['median'] * 1000:.1f} ms p95 {stats['p95'] * 1000:.1f} ms")
    if "burst" in results:
        b = results["burst"]
        print(f"burst of {b['n']} due in the same minute: imported in {b['import_seconds']} s; first sent {b['seconds_from_due_to_first_send']} s "
              f"after the due time, last {b['seconds_from_due_to_last_send']} s ({b['sent']} sent, {b['sends_per_second']}/s); "
              f"memory after {results['memory_after_burst']}; Late {results['late_runs_after_burst']}")
        print(f"  Prefect events per run: {b['prefect_events_per_run_total']} {b['prefect_events_per_run']}; "
              f"each checked against {b['enabled_automations_each_event_is_checked_against']} enabled automations")


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=500, help="enrollments parked by the fast worker (flows executed)")
    parser.add_argument("--stock-n", type=int, default=20, help="enrollments parked by the stock runner")
    parser.add_argument("--bulk", type=int, default=1500, help="more enrollments parked directly (no flow executed)")
    parser.add_argument("--samples", type=int, default=100, help="API latency samples per call")
    parser.add_argument("--concurrency", type=int, default=h.FAST_CONCURRENCY)
    parser.add_argument("--poll", type=float, default=h.FAST_POLL_SECONDS)
    parser.add_argument("--import", dest="import_n", type=int, default=0, help="park this many through the bulk path instead")
    parser.add_argument("--burst", type=int, default=0, help="with --import: this many more due in the same minute")
    parser.add_argument("--burst-lead", type=float, default=90, help="seconds from the burst's import to its due time")
    parser.add_argument("--burst-timeout", type=float, default=3600)
    parser.add_argument("--idle-seconds", type=float, default=60)
    parser.add_argument("--import-minutes", type=float, default=1e6, help="stop importing after this long")
    args = parser.parse_args(argv)

    results: dict = {"command": "python bench/scale.py " + " ".join(argv if argv is not None else sys.argv[1:])}
    results["machine"] = h.machine_info()
    if args.import_n:
        import_scale(args, results)
        path = h.write_results("scale", results)
        print(f"results: {path}")
        return results
    with h.BenchWorld("scale") as world:
        deployment_id = h.register_deployment()
        owner, sequence_id = h.new_owner_and_sequence(PARK_SEQUENCE)
        followups_url = h.with_database(h.PG_ADMIN_URL, world.followups_db)
        prefect_url = h.with_database(h.PG_ADMIN_URL, world.prefect_db)

        h.log("API latency with nothing parked")
        results["api_latency_empty"] = api_latency(deployment_id, owner, sequence_id, args.samples)

        phases = {}
        for kind, n in (("stock", args.stock_n), ("fast", args.n)):
            if n <= 0:
                continue
            with h.executor(kind, world, concurrency=args.concurrency, poll=args.poll) as ex:
                h.log(f"{ex.label}: parking {n}")
                f0, p0 = table_stats(followups_url), table_stats(prefect_url)
                parked = park_with_flows(world, ex, owner, sequence_id, n, kind, timeout=60 + n / (0.3 if kind == "stock" else 2))
                time.sleep(2)  # let the last runs' final states and logs land
                f1, p1 = table_stats(followups_url), table_stats(prefect_url)
                counts = run_counts(deployment_id)
                phases[kind] = {
                    "executor": ex.label,
                    "parked": {k: v for k, v in parked.items() if k != "ids"},
                    "followups_db_per_enrollment": per_enrollment(f0, f1, n),
                    "prefect_db_per_enrollment": per_enrollment(p0, p1, n),
                    "flow_runs_by_state_after": counts,
                }
                if kind == "fast" and args.bulk > 0:
                    h.log(f"parking {args.bulk} more directly")
                    phases["bulk"] = park_directly(owner, sequence_id, args.bulk)
                if kind == "fast":
                    total_parked = args.stock_n + args.n + max(args.bulk, 0)
                    h.log(f"API latency with {total_parked} parked, the fast worker serving")
                    results["api_latency_parked"] = api_latency(deployment_id, owner, sequence_id, args.samples, ex)
                    results["total_parked"] = total_parked
                    counts = run_counts(deployment_id)
                    results["flow_runs_by_state_at_end"] = counts
                    results["scheduled_runs_per_waiting_enrollment"] = counts["SCHEDULED"] / max(total_parked, 1)
                    results["running_or_pending_runs"] = counts["RUNNING"] + counts["PENDING"]
        results["phases"] = phases
        f_end, p_end = table_stats(followups_url), table_stats(prefect_url)
        results["followups_db_bytes_total"] = sum(t["bytes"] for t in f_end.values())
        results["prefect_db_bytes_total"] = sum(t["bytes"] for t in p_end.values())

    print(f"\n== scale: enrollments parked in a 30-day WAIT (total {results.get('total_parked')}) ==")
    for kind, phase in results["phases"].items():
        if kind == "bulk":
            print(f"bulk (no flow executed): {phase['n']} at {phase['parked_per_second']:.1f}/s")
            continue
        fdb, pdb = phase["followups_db_per_enrollment"], phase["prefect_db_per_enrollment"]
        print(f"{phase['executor']}: parked {phase['parked']['n']} at {phase['parked']['parked_per_second']:.2f}/s; "
              f"executor child processes while waiting: {phase['parked']['executor_child_processes_max']}")
        print(f"  followups DB per enrollment: {fdb['rows']:.2f} rows, {fdb['bytes'] / 1024:.1f} KiB  "
              + ", ".join(f"{t} {v['rows']:.2f}" for t, v in fdb["by_table"].items()))
        print(f"  Prefect DB per enrollment:   {pdb['rows']:.2f} rows, {pdb['bytes'] / 1024:.1f} KiB  "
              + ", ".join(f"{t} {v['rows']:.2f}" for t, v in list(pdb["by_table"].items())[:8]))
    if "scheduled_runs_per_waiting_enrollment" in results:
        print(f"scheduled Prefect runs per waiting enrollment: {results['scheduled_runs_per_waiting_enrollment']:.3f}; "
              f"runs Running/Pending: {results['running_or_pending_runs']}")
    if "api_latency_parked" in results:
        print("API latency (empty -> parked):")
        for name, stats in results["api_latency_parked"].items():
            empty = results["api_latency_empty"].get(name)
            before = f"p50 {empty['median'] * 1000:.1f} ms p95 {empty['p95'] * 1000:.1f} ms" if empty else "-"
            print(f"  {name:<66} {before}  ->  p50 {stats['median'] * 1000:.1f} ms p95 {stats['p95'] * 1000:.1f} ms")
    if "stock" in results["phases"] and "fast" in results["phases"]:
        results["ratio_parking_rate_fast_over_stock"] = h.ratio(
            results["phases"]["fast"]["parked"]["parked_per_second"], results["phases"]["stock"]["parked"]["parked_per_second"]
        )
        print(f"ratio fast/stock enrollments parked per second: {results['ratio_parking_rate_fast_over_stock']:.1f}x")
    path = h.write_results("scale", results)
    print(f"results: {path}")
    return results


if __name__ == "__main__":
    main()
