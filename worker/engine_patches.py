"""The one place where the fast worker replaces private Prefect names.

Only the fast worker process applies these (`apply()`); the stock runner and every flow-run
process it starts run Prefect unmodified. pyproject.toml pins prefect to one minor (3.9.x);
tests/test_fast_worker.py::test_patched_prefect_names_still_exist fails loudly when a name
below disappears or changes shape, so an upgrade cannot silently turn a patch into a no-op.

What is patched, and why no public setting does it:

- `prefect.flow_engine.observe_flow_run_suspension` (replaced): the flow engine opens, for every
  flow run of a deployment, a thread with its own event loop and events websocket that listens
  for an external "Suspended" state. There is no setting to turn it off. The product does not
  need it: the `follow-up-sequence` flow reads its own Prefect run state and the enrollment's
  status at every step boundary, so a suspend from the Prefect UI/API or a pause through our
  API still stops the run at the next step, where Prefect's observer would have raised.

- `prefect.task_engine._concurrency` / `_aconcurrency` (wrapped): see concurrency_patches.py.

Everything else the fast path saves is done with public settings or APIs (see polling.py).
"""

from __future__ import annotations

import contextlib
import importlib
import inspect
import threading
from collections.abc import Callable, Generator
from typing import Any
from uuid import UUID

from followups.worker.concurrency_patches import make_tag_filtering_concurrency, verify_concurrency_service

# module name -> attribute name -> the parameters its callers pass (checked by verify())
PATCHED_NAMES: dict[str, dict[str, tuple[str, ...]]] = {
    "prefect.flow_engine": {"observe_flow_run_suspension": ("flow_run_id", "suspension_request")},
    "prefect.task_engine": {
        "_concurrency": ("names", "occupy", "holder", "lease_duration", "suppress_warnings"),
        "_aconcurrency": ("names", "occupy", "holder", "lease_duration", "suppress_warnings"),
    },
}

_lock = threading.Lock()
_originals: dict[tuple[str, str], Any] = {}


@contextlib.contextmanager
def _no_suspension_observer(
    flow_run_id: UUID, suspension_request: Any, polling_interval: float = 10
) -> Generator[None, None, None]:
    """Stand-in for prefect._flow_run_suspension.observe_flow_run_suspension: observe nothing.

    The engine still registers the run's suspension request
    (`register_flow_run_suspension_request`), so in-process suspension (`suspend_flow_run`,
    `pause_flow_run`) works as before; only the per-run websocket observer is skipped.
    """
    yield


_REPLACEMENTS: dict[tuple[str, str], Callable[..., Any]] = {
    ("prefect.flow_engine", "observe_flow_run_suspension"): _no_suspension_observer,
}
# wrappers around the original (built at apply time)
_WRAPPERS: dict[tuple[str, str], Callable[[Callable[..., Any]], Callable[..., Any]]] = {
    ("prefect.task_engine", "_concurrency"): make_tag_filtering_concurrency,
    ("prefect.task_engine", "_aconcurrency"): make_tag_filtering_concurrency,
}


def verify() -> None:
    """Raise if a patched name is gone or no longer takes the parameters the engine passes,
    or if the private state the fast worker cleans up has changed shape."""
    verify_concurrency_service()
    for module_name, names in PATCHED_NAMES.items():
        module = importlib.import_module(module_name)
        for name, params in names.items():
            original = _originals.get((module_name, name), getattr(module, name, None))
            if original is None:
                raise RuntimeError(
                    f"{module_name}.{name} no longer exists: worker/engine_patches.py must be "
                    "updated for this Prefect version"
                )
            signature = inspect.signature(inspect.unwrap(original))
            missing = [p for p in params if p not in signature.parameters]
            if missing:
                raise RuntimeError(
                    f"{module_name}.{name} no longer takes {missing}: worker/engine_patches.py "
                    "must be updated for this Prefect version"
                )


def apply() -> None:
    """Install the replacements in this process (idempotent)."""
    with _lock:
        verify()
        for (module_name, name), replacement in _REPLACEMENTS.items():
            module = importlib.import_module(module_name)
            if (module_name, name) not in _originals:
                _originals[(module_name, name)] = getattr(module, name)
            setattr(module, name, replacement)
        for (module_name, name), make in _WRAPPERS.items():
            module = importlib.import_module(module_name)
            if (module_name, name) not in _originals:
                _originals[(module_name, name)] = getattr(module, name)
                setattr(module, name, make(_originals[(module_name, name)]))


def restore() -> None:
    """Put the original names back (tests)."""
    with _lock:
        for (module_name, name), original in _originals.items():
            setattr(importlib.import_module(module_name), name, original)
        _originals.clear()


def applied() -> bool:
    replaced = all(getattr(importlib.import_module(m), n) is r for (m, n), r in _REPLACEMENTS.items())
    wrapped = all(
        getattr(getattr(importlib.import_module(m), n), "__wrapped_original__", None) is not None for (m, n) in _WRAPPERS
    )
    return replaced and wrapped
