"""`followups doctor`: is everything in place, and if not, what fixes it.

Each check answers ok or a problem with the command or setting that fixes it: the database and
its schema, the Prefect API (which one, and where it was chosen; none configured is a problem,
never a throwaway server), the deployments, whether anything is polling them (a runner, the
fast worker or a work-pool worker), and enrollments stranded by changes made in Prefect.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from followups.settings import get_settings

FLOWS = (
    "follow-up-sequence", "sync-enrollment-state", "enroll-on-offer", "reconcile-enrollments",
    "pause-enrollment", "resume-enrollment", "cancel-enrollment", "stop-on-deal-event",
)
POLL_GRACE = timedelta(seconds=90)  # a deployment polled this recently has something serving it


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str
    fix: str = ""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _database() -> list[Check]:
    from alembic.runtime.migration import MigrationContext
    from alembic.script import ScriptDirectory

    from followups.db.migrate import alembic_config
    from followups.db.session import get_engine

    url = get_settings().database_url
    try:
        with get_engine().connect() as conn:
            current = MigrationContext.configure(conn).get_current_revision()
    except Exception as exc:  # any driver error: unreachable, missing database, bad credentials
        missing = "does not exist" in str(exc)
        return [Check("database", False, "the database does not exist" if missing else "cannot connect to PostgreSQL",
                      "followups db upgrade" if missing else "check FOLLOWUPS_DATABASE_URL and that PostgreSQL runs")]
    head = ScriptDirectory.from_config(alembic_config(url)).get_current_head()
    if current != head:
        return [Check("database", True, "reachable"), Check("schema", False, f"at {current or 'nothing'}, code expects {head}", "followups db upgrade")]
    return [Check("database", True, "reachable"), Check("schema", True, f"at {head}")]


def _prefect() -> list[Check]:
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    from followups.prefect_server import api_url_source

    url, source = api_url_source()
    if url is None:
        # Without an API URL Prefect's client starts a throwaway server in this process: it would
        # answer, but no runner or worker ever talks to it.
        return [Check("prefect", False, f"no Prefect server configured: {source}",
                      "followups prefect-server or followups demo (either makes its server the active profile), "
                      "or prefect config set PREFECT_API_URL=http://HOST:4200/api")]
    api = f"{url} (from {source})"
    checks: list[Check] = []
    with get_client(sync_client=True) as client:
        try:
            client.api_healthcheck()
            client.read_flow_runs(limit=1)
        except Exception:
            return [Check("prefect", False, f"cannot reach the Prefect API at {api}",
                          "start that server (followups prefect-server), or point PREFECT_API_URL at a running one")]
        checks.append(Check("prefect", True, f"API at {api}"))
        name = get_settings().served_deployment_name
        now = datetime.now(UTC)
        for flow_name in FLOWS:
            full = f"{flow_name}/{name}"
            try:
                deployment = client.read_deployment_by_name(full)
            except ObjectNotFound:
                checks.append(Check(f"deployment {full}", False, "not registered", "followups serve (or prefect deploy --all)"))
                continue
            polled = deployment.last_polled
            if polled is None or now - polled > POLL_GRACE:
                when = f"last polled {polled:%Y-%m-%d %H:%M:%S} UTC" if polled else "never polled"
                checks.append(Check(f"deployment {full}", False, f"registered, but nothing serves it ({when})",
                                    "followups serve, python -m followups.worker, or prefect worker start --pool followups"))
            else:
                checks.append(Check(f"deployment {full}", True, "registered and served"))
    return checks


def _stranded() -> list[Check]:
    from followups.lifecycle.sweep import sweep

    report = sweep(repair=False)
    fix = "followups reconcile (the reconcile-enrollments deployment does it on a schedule)"
    checks = [_undelivered(report.undelivered, fix), _unmade_runs(report.undelivered_runs, fix)]
    if not report.found:
        return checks + [Check("enrollments", True, f"{report.checked} open enrollment(s) agree with their Prefect runs")]
    examples = "; ".join(f"{e}: {why}" for e, _, why in report.found[:5])
    return checks + [Check("enrollments", False, f"{len(report.found)} of {report.checked} stranded ({examples})", fix)]


def _undelivered(undelivered: list[tuple[int, datetime, str | None]], fix: str) -> Check:
    """Pauses, resumes and cancels committed but not yet carried out in Prefect."""
    bound = get_settings().effect_overdue_seconds
    if not undelivered:
        return Check("run effects", True, f"every suspend, resume and cancel older than {bound} s reached Prefect")
    examples = "; ".join(
        f"enrollment {e} since {at:%Y-%m-%d %H:%M:%S} UTC" + (f" ({error[:80]})" if error else "") for e, at, error in undelivered[:5]
    )
    return Check("run effects", False, f"{len(undelivered)} not yet carried out in Prefect: {examples}", fix)


def _unmade_runs(enrollment_ids: list[int], fix: str) -> Check:
    """Next runs committed (a wait's, a deferral's, a repair's) but not created in Prefect."""
    bound = get_settings().effect_overdue_seconds
    if not enrollment_ids:
        return Check("pending runs", True, f"every next run committed more than {bound} s ago exists in Prefect")
    examples = ", ".join(str(e) for e in enrollment_ids[:10])
    return Check("pending runs", False, f"{len(enrollment_ids)} enrollment(s) wait for a run Prefect has not created yet: {examples}", fix)


def diagnose() -> list[Check]:
    checks = _database()
    if not all(check.ok for check in checks):
        return checks
    checks += _prefect()
    if checks[-1].name == "prefect" and not checks[-1].ok:
        return checks
    return checks + _stranded()
