"""`followups serve` survives a run paused just as the runner picks it up (deployments/runner_patches.py),
against the session's real Prefect server."""

from __future__ import annotations

import asyncio
import importlib

import pytest
from prefect import flow
from prefect.client.orchestration import get_client
from prefect.exceptions import Pause
from prefect.runner._state_proposer import StateProposer
from prefect.states import Scheduled, Suspended

from followups.deployments import runner_patches


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


def test_the_patched_name_still_exists_and_apply_is_idempotent():
    module = importlib.import_module(runner_patches.MODULE)
    assert callable(getattr(module, runner_patches.NAME))
    runner_patches.apply()
    once = getattr(module, runner_patches.NAME)
    runner_patches.apply()
    assert getattr(module, runner_patches.NAME) is once and once.followups_patched


def test_a_paused_run_is_skipped_by_the_runner_instead_of_stopping_it(prefect_api):
    module = importlib.import_module(runner_patches.MODULE)
    unpatched = getattr(module, runner_patches.NAME)
    unpatched = getattr(unpatched, "__wrapped__", unpatched)
    run = _paused_run()
    # Unpatched, Prefect's proposer lets the server's Pause out: a BaseException that ends the
    # runner's task group (this is what stopped `followups serve`).
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(module, runner_patches.NAME, unpatched)
        with pytest.raises(Pause):
            asyncio.run(_propose_pending(run))
    runner_patches.apply()
    assert asyncio.run(_propose_pending(run)) is False  # "aborted submission": the run is skipped
    with get_client(sync_client=True) as client:
        assert client.read_flow_run(run.id).state.is_paused()  # and stays paused for a resume
