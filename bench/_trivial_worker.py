"""The fast worker (`python -m followups.worker`), serving one more deployment beside the
product's: `trivial/bench`, a flow with one task that returns. It is Prefect's floor per run on
the same worker, for bench/requests_per_step.py. Takes the fast worker's arguments."""

from __future__ import annotations

from typing import Any

from prefect import flow, task

import followups.worker.polling as polling
from followups.worker.main import main


@task(name="trivial-task", persist_result=False)
def trivial_task() -> int:
    return 1


@flow(name="trivial", persist_result=False)
def trivial() -> int:
    return trivial_task()


_product_deployments = polling.ensure_deployments


def _with_trivial(client: Any) -> dict[Any, Any]:
    found = _product_deployments(client)
    found[trivial.to_deployment(name="bench").apply()] = trivial
    return found


polling.ensure_deployments = _with_trivial

if __name__ == "__main__":
    main()
