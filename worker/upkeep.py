"""The fast worker's periodic chores besides claiming: heartbeats for the runs in flight, and
keeping tag concurrency cheap (concurrency_patches.py)."""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable

from prefect.client.orchestration import SyncPrefectClient
from prefect.client.schemas.objects import FlowRun
from prefect.events import emit_event

from followups import prefect_private
from followups.worker import concurrency_patches

logger = logging.getLogger("followups.fast_worker")

# Task-run tags naming one enrollment or deal (followups.tasks.send_step).
PER_ENTITY_TAG_PREFIXES = ("tag:enrollment:", "tag:deal:")


def emit_heartbeats(in_flight: Callable[[], list[FlowRun]], stop: threading.Event, frequency: int) -> None:
    """Prefect's `prefect.flow-run.heartbeat` for every run in flight, from one thread (the
    runs themselves have PREFECT_FLOWS_HEARTBEAT_FREQUENCY off)."""
    from prefect import __version__

    while not stop.wait(frequency):
        for flow_run in in_flight():
            with contextlib.suppress(Exception):
                related = [{"prefect.resource.id": f"prefect.flow.{flow_run.flow_id}", "prefect.resource.role": "flow"}]
                if flow_run.deployment_id:
                    related.append(
                        {
                            "prefect.resource.id": f"prefect.deployment.{flow_run.deployment_id}",
                            "prefect.resource.role": "deployment",
                        }
                    )
                emit_event(
                    event="prefect.flow-run.heartbeat",
                    resource={
                        "prefect.resource.id": f"prefect.flow-run.{flow_run.id}",
                        "prefect.resource.name": flow_run.name or "",
                        "prefect.version": __version__,
                    },
                    related=related,
                )


def refresh_tag_limits(client: SyncPrefectClient) -> None:
    try:
        concurrency_patches.TAG_LIMITS.refresh(client)
    except Exception:  # noqa: BLE001 - unknown: ask the server for every tag, as Prefect does
        logger.warning("Could not read the tag concurrency limits; not filtering tags", exc_info=True)
        concurrency_patches.TAG_LIMITS.set(None)


def drain_idle_services(in_flight: list[FlowRun]) -> None:
    """Stop the per-tag-set concurrency services that no run in flight can use."""
    busy = {f"tag:{tag}" for run in in_flight for tag in (run.tags or [])}

    def in_use(names: frozenset[str]) -> bool:
        per_entity = {n for n in names if n.startswith(PER_ENTITY_TAG_PREFIXES)}
        return not per_entity or bool(per_entity & busy)

    prefect_private.drain_concurrency_services(in_use)
