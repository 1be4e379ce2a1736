"""The one private Prefect name `followups serve` (the stock runner) replaces, and why.

The runner polls runs due within its prefetch window (10 s) and proposes Pending for each at
once. When an operator pauses such a run in between (our pause, or Pause in the Prefect UI),
the server rejects Pending with the Paused state, and `propose_state` raises
`prefect.exceptions.Pause`. That is a BaseException: the runner's `except Exception` around the
submission does not catch it, it ends the runner's task group, and the runner stops serving
every deployment, for good, with the process still alive. The fast worker met the same signal
(worker/polling.py skips such a run).

`prefect.runner._state_proposer.propose_state` is wrapped so that, in the runner process only,
a Pause on a proposal turns into the `Abort` the proposer already handles ("aborted
submission": the run stays paused until it is resumed). Flow-run processes are untouched.
tests/test_runner_patches.py fails loudly if the name disappears in a Prefect upgrade.
"""

from __future__ import annotations

import functools
import importlib
from typing import Any

from prefect.exceptions import Abort, Pause

MODULE = "prefect.runner._state_proposer"
NAME = "propose_state"


def _pause_as_abort(propose: Any) -> Any:
    @functools.wraps(propose)
    async def propose_state(*args: Any, **kwargs: Any) -> Any:
        try:
            return await propose(*args, **kwargs)
        except Pause as exc:
            raise Abort(f"the run is paused: {exc}") from exc

    propose_state.followups_patched = True  # type: ignore[attr-defined]
    return propose_state


def apply() -> None:
    """Idempotent; raises if Prefect no longer has the name (a pinned-minor upgrade broke it)."""
    module = importlib.import_module(MODULE)
    current = getattr(module, NAME)  # AttributeError here means the patch must be revisited
    if not getattr(current, "followups_patched", False):
        setattr(module, NAME, _pause_as_abort(current))
