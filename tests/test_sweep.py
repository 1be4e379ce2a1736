"""The reconciler's sweep and an enrollment that never got its first run (its enroller died
between committing the row and creating the run)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from prefect.client.orchestration import get_client
from prefect.states import Cancelled
from sqlalchemy import text

from followups.db.session import session_scope
from followups.lifecycle.sweep import sweep
from followups.prefect_runs import run_key, schedule_sequence_run
from support import enrollment_row, events_of, new_enrollment, new_owner, new_sequence


def _strand(enrollment_id: int, seconds_ago: int) -> None:
    """What a crash between the enroller's commit and its run leaves behind."""
    with session_scope() as session:
        session.execute(
            text("UPDATE enrollments SET prefect_flow_run_id = NULL, updated_at = now() - make_interval(secs => :s) WHERE id = :id"),
            {"s": seconds_ago, "id": enrollment_id},
        )


def test_the_sweep_gives_a_stranded_new_enrollment_its_first_run_once(prefect_api):
    from followups.deployments.definitions import sequence_deployment

    sequence_deployment().apply()
    owner = new_owner()
    sequence = new_sequence(owner, [{"type": "EMAIL", "subject": "s", "text": "t"}])
    stranded, fresh = new_enrollment(owner, sequence), new_enrollment(owner, sequence)
    # The enroller created the first run, then died before storing its id.
    # (An hour ahead: no runner of the session may run it during the test.)
    first_run = schedule_sequence_run(stranded, "D-stranded", 0, scheduled_time=datetime.now(UTC) + timedelta(hours=1))
    from followups.settings import get_settings

    _strand(stranded, get_settings().unscheduled_grace_seconds + 60)
    _strand(fresh, 5)  # its enroller may still be creating the run: left alone

    report = sweep()
    assert (stranded, "schedule", "the enrollment never got its first run") in report.found
    assert fresh not in [found[0] for found in report.found]
    # The first run's key: the run the enroller did create is found again, not doubled.
    assert enrollment_row(stranded).prefect_flow_run_id == first_run
    assert enrollment_row(fresh).prefect_flow_run_id is None
    assert [e.event_type for e in events_of(stranded)][-1] == "RECONCILED"
    assert stranded not in [found[0] for found in sweep().found]  # repaired once
    with get_client(sync_client=True) as client:
        run = client.read_flow_run(first_run)
        assert run.idempotency_key == run_key(stranded, 0)
        for run_id in (first_run,):
            client.set_flow_run_state(run_id, Cancelled(), force=True)
