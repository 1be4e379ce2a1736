"""The private Prefect names and messages the product relies on (`followups.prefect_private`):
each still exists in the pinned Prefect, each patch applies once and undoes, and the one claim
fix keeps the stock runner and the pool worker alive when a run is paused as they pick it up
(against the session's real Prefect server)."""

from __future__ import annotations

import asyncio
import importlib

import pytest
from prefect import flow
from prefect.client.orchestration import get_client
from prefect.exceptions import Pause
from prefect.runner._state_proposer import StateProposer
from prefect.states import Scheduled, Suspended

from followups import prefect_private
from followups.worker import concurrency_patches

RUNNER = ("prefect.runner._state_proposer", "propose_state")


@flow(name="runner-patch-probe")
def probe() -> None:
    pass


def _paused_run():
    with get_client(sync_client=True) as client:
        run = client.create_flow_run(probe, state=Scheduled())
        client.set_flow_run_state(run.id, Suspended(timeout_seconds=600), force=True)
        return client.read_flow_run(run.id)


async def _propose_pending(run) -> bool:
    async with get_client() as client:
        return await StateProposer(client=client).propose_pending(run)


@pytest.mark.parametrize("private", prefect_private.NAMES, ids=lambda p: f"{p.module}.{p.name}")
def test_every_private_name_still_exists_and_takes_what_is_passed(private):
    prefect_private.verify(private)
    assert private.why and private.use


@pytest.mark.parametrize("message", sorted(prefect_private.MESSAGES))
def test_every_prefect_message_the_product_matches_is_still_prefects(message):
    from importlib.util import find_spec
    from pathlib import Path

    # Read, not imported: Prefect's server modules import each other in an order of their own.
    assert message in Path(find_spec(prefect_private.MESSAGES[message]).origin).read_text()


def test_the_patches_apply_once_and_undo():
    module = importlib.import_module(RUNNER[0])
    was_applied = prefect_private.applied()
    original = getattr(module, RUNNER[1])
    prefect_private.apply_runner()
    prefect_private.apply_fast_worker(concurrency_patches.make_tag_filtering_concurrency, pool=True)
    once = getattr(module, RUNNER[1])
    prefect_private.apply_runner()
    try:
        assert getattr(module, RUNNER[1]) is once and once.followups_patched and prefect_private.applied()
    finally:
        if not was_applied:
            prefect_private.restore()
            assert getattr(module, RUNNER[1]) is original and not prefect_private.applied()


async def test_a_run_suspended_before_the_pool_workers_claim_is_skipped(monkeypatch):
    """Prefect's Pending proposal raises `Pause` (a BaseException) for a run suspended after the
    poll; wrapped, Prefect's own claim reports an aborted submission instead of ending the worker."""
    import inspect
    import uuid

    import prefect.workers.base as base
    from prefect.client.schemas.objects import FlowRun

    from followups.worker.pool_worker import FollowupsWorker

    assert "propose_state(" in inspect.getsource(base.BaseWorker._propose_pending_state)

    async def suspended(*args, **kwargs):
        raise Pause("the run is suspended")

    monkeypatch.setattr(base, "propose_state", prefect_private.pause_as_abort(suspended))
    worker = FollowupsWorker(work_pool_name="never-created", limit=1)
    worker._client = object()  # the patched proposal never uses it
    flow_run = FlowRun(id=uuid.uuid4(), flow_id=uuid.uuid4(), name="paused at the claim")
    assert await worker._propose_pending_state(flow_run) is False


def test_a_paused_run_is_skipped_by_the_runner_instead_of_stopping_it(prefect_api):
    module = importlib.import_module(RUNNER[0])
    unpatched = getattr(module, RUNNER[1])
    unpatched = getattr(unpatched, "__wrapped__", unpatched)
    run = _paused_run()
    # Unpatched, Prefect's proposer lets the server's Pause out: a BaseException that ends the
    # runner's task group (this is what stopped `followups serve`).
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(module, RUNNER[1], unpatched)
        with pytest.raises(Pause):
            asyncio.run(_propose_pending(run))
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(module, RUNNER[1], prefect_private.pause_as_abort(unpatched))
        assert asyncio.run(_propose_pending(run)) is False  # "aborted submission": the run is skipped
    with get_client(sync_client=True) as client:
        assert client.read_flow_run(run.id).state.is_paused()  # and stays paused for a resume
