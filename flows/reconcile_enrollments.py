"""`reconcile-enrollments`: the scheduled sweep that repairs enrollments stranded by changes made
in Prefect (a deleted, cancelled or crashed pending run, a suspend that expired)."""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger
from prefect.runtime import flow_run as runtime_flow_run

from followups import alerts
from followups.identity import database_tag
from followups.lifecycle.sweep import sweep
from followups.prefect_runs import label_own_run


@flow(name="reconcile-enrollments", flow_run_name="reconcile enrollments", persist_result=False)
def reconcile_enrollments(repair: bool = True) -> dict[str, Any]:
    """Check every open enrollment against its pending Prefect run and repair what disagrees."""
    label_own_run(runtime_flow_run.id, "reconcile enrollments", ["followups", database_tag()])
    report = sweep(repair=repair)
    logger = get_run_logger()
    for enrollment_id, action, why in report.found:
        logger.info("enrollment %s: %s (%s)", enrollment_id, action, why)
    if report.undelivered:
        logger.info("%s effect(s) on runs had not reached Prefect; delivered %s now", len(report.undelivered), report.redelivered)
    logger.info("checked %s open enrollments; repaired %s", report.checked, dict(report.repaired) or "none")
    if report.found:
        alerts.stranded_found(dict(report.repaired), [enrollment_id for enrollment_id, _, _ in report.found])
    return report.as_dict()
