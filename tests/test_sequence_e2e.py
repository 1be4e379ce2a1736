"""A whole sequence through the deployment, executed by the session's executor in its own process
(tests/test_stock_runner.py runs it on the stock runner too)."""

from __future__ import annotations

from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowFilter, FlowFilterName, FlowRunFilter, FlowRunFilterTags

from followups.control import enroll_deal
from support import FAST_SEQUENCE, deal_input, enrollment_row, event_types, events_of, new_owner, new_sequence, wait_for


def test_email_wait_email_wait_sms_runs_through_the_deployment(sequence_runner, fake_providers):
    owner = new_owner()
    deal = deal_input()
    enrollment = enroll_deal(owner, deal, new_sequence(owner, FAST_SEQUENCE))

    wait_for(lambda: enrollment_row(enrollment.id).status == "COMPLETED", timeout=90, what="COMPLETED")

    assert [t for t in event_types(enrollment.id) if t != "STEP_ATTEMPT"] == [
        "ENROLLED", "EMAIL_SENT", "WAIT_STARTED", "WAIT_COMPLETED", "EMAIL_SENT",
        "WAIT_STARTED", "WAIT_COMPLETED", "SMS_SENT", "COMPLETED",
    ]
    events = events_of(enrollment.id)
    assert len(fake_providers.for_recipient(str(deal.seller_email))) == 2
    assert len(fake_providers.for_recipient(deal.seller_phone)) == 1

    # Each wait ended its run; the next part was a separate run scheduled for the due time.
    def sequence_runs():
        with get_client(sync_client=True) as client:
            return client.read_flow_runs(
                flow_filter=FlowFilter(name=FlowFilterName(any_=["follow-up-sequence"])),
                flow_run_filter=FlowRunFilter(tags=FlowRunFilterTags(all_=[f"enrollment:{enrollment.id}"])),
            )

    # The enrollment's COMPLETED row commits before the last run reports its final state.
    runs = wait_for(lambda: (found := sequence_runs()) and len(found) == 3
                    and all(r.state is not None and r.state.is_final() for r in found) and found,
                    timeout=30, what="the three runs in a final state")
    assert all(run.state.is_completed() for run in runs)
    assert all(f"deal:{deal.external_id}" in run.tags for run in runs)
    started = [e for e in events if e.event_type == "WAIT_STARTED"]
    run_by_id = {run.id: run for run in runs}
    for wait in started:
        due = wait.content["due_at"]
        scheduled = [r for r in runs if r.expected_start_time and r.expected_start_time.isoformat()[:19] == due[:19]]
        assert scheduled, f"no run scheduled for {due}"
    sent_runs = {e.flow_run_id for e in events if e.event_type.endswith("_SENT")}
    assert len(sent_runs) == 3 and sent_runs <= set(run_by_id)
    completed = [e for e in events if e.event_type == "WAIT_COMPLETED"]
    for wait, done in zip(started, completed):
        assert done.occurred_at >= wait.occurred_at.replace(microsecond=0)
        assert (done.occurred_at - wait.occurred_at).total_seconds() >= 1.9
