"""The same tests, under Prefect's stock runner: `followups serve`, a process per flow run.

The rest of the suite runs its flow runs on the fast worker (the session's executor, see
tests/conftest.py). The tests imported here are the ones whose outcome depends most on how runs
are executed (a whole sequence, an operator's suspend and cancel of a running run, which the
stock runner answers by killing the run's process, a pause during a send, a trigger's run); they run
again on a Prefect server of this module's own, served by
`followups serve`. `FOLLOWUPS_TEST_EXECUTOR=stock` runs the whole suite on the stock runner.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from conftest import executor_process
from prefect_servers import pointed_at, prefect_server
from test_control import (  # noqa: F401 - collected here, with this module's fixtures
    test_a_deal_offer_sent_event_enrolls_through_the_trigger,
    test_pause_while_a_step_is_sending_lets_it_finish_once_and_stops_before_the_next,
)
from test_prefect_ui_actions import (  # noqa: F401
    test_cancelling_a_running_run_cancels_the_enrollment_and_sends_nothing_more,
    test_suspending_a_running_run_pauses_after_the_step_and_resume_finishes,
)
from test_sequence_e2e import test_email_wait_email_wait_sms_runs_through_the_deployment  # noqa: F401


@pytest.fixture(scope="module")
def prefect_api(fake_providers, tmp_path_factory) -> Iterator[str]:
    """This module's own Prefect server, in place of the session's."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
    with prefect_server(tmp_path_factory.mktemp("stock-prefect"), name=f"stock_{worker}") as url, pointed_at(url):
        yield url


@pytest.fixture(scope="module")
def sequence_runner(prefect_api: str, tmp_path_factory):
    with executor_process(prefect_api, tmp_path_factory.mktemp("stock-runner") / "serve.log", "stock") as process:
        yield process


def test_the_runs_here_are_the_stock_runners(sequence_runner, prefect_api):
    """Guards the module's point: its runs are executed by `followups serve`, whose runner
    registers the deployments with no work pool, on this module's server."""
    from prefect.client.orchestration import get_client

    from followups.prefect_server import configured_api_url

    assert configured_api_url() == prefect_api
    with get_client(sync_client=True) as client:
        deployment = client.read_deployment_by_name("follow-up-sequence/followups")
    assert deployment.work_pool_name is None and deployment.last_polled is not None
    assert "serve" in " ".join(sequence_runner.args)
