"""The one place where the fast worker replaces a private Prefect name (issue 5).

Only the fast worker process applies these (`apply()`); the stock runner and every flow-run
process it starts run Prefect unmodified. pyproject.toml pins prefect to one minor (3.9.x);
tests/test_fast_worker.py::test_patched_prefect_names_still_exist fails loudly when a name
below disappears or changes shape, so an upgrade cannot silently turn a patch into a no-op.

What is patched, and why no public setting does it:

- `prefect.flow_engine.observe_flow_run_suspension`: the flow engine opens, for every flow run
  of a deployment, a thread with its own event loop and events websocket that listens for an
  external "Suspended" state (measured as one of four per-run costs on the fast path). There is
  no setting to turn it off. The product does not need it: the `follow-up-sequence` flow reads
  its own Prefect run state and the enrollment's status at every step boundary
  (`_honour_prefect_controls`), so a suspend from the Prefect UI/API or a pause through our API
  still stops the run at the next step, exactly where Prefect's observer would have raised.

- `prefect.task_engine._concurrency` / `_aconcurrency` (wrapped, not replaced): the task engine
  asks the server for a concurrency slot of every tag of every task run, and Prefect keeps one
  service instance (thread + API client) per distinct tag set for the life of the process. Our
  task runs carry per-deal/enrollment/step tags, so that is one API call, one client and one
  leaked thread per task run in a long-lived process. The wrapper passes on only the tag names
  that have a limit on the server (`TAG_LIMITS`, refreshed by the worker every few seconds), so
  limits that exist are enforced exactly as before; a limit created meanwhile is enforced from
  the next refresh on.

Private state read (not patched), guarded the same way: the instances of
`prefect.concurrency.services.ConcurrencySlotAcquisitionWithLeaseService`, so the worker can
drain the ones no run in flight can use (`drain_idle_concurrency_services`): a safety net for
tag sets that do have limits.

Everything else the fast path saves is done with public settings or APIs (see fast_worker.py):
one API client per worker thread (`SyncClientContext`), `PREFECT_FLOWS_HEARTBEAT_FREQUENCY`
None per run (one heartbeat thread for the whole worker instead), an explicit result storage on
the flow (`Flow.with_options(result_storage=...)`) so the engine does not GET the server's
default result-storage block per run, and `PREFECT_CLIENT_CSRF_SUPPORT_ENABLED` off when the
server does not enforce CSRF.
"""

from __future__ import annotations

import contextlib
import inspect
import threading
from collections.abc import Callable, Generator
from typing import Any
from uuid import UUID

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


class TagLimitNames:
    """The names of the tag concurrency limits that exist on the server ("tag:<tag>"; Prefect 3
    keeps v1 tag limits as v2 limits with that prefix), refreshed by the fast worker's main loop.
    None until the first refresh: then nothing is filtered."""

    def __init__(self) -> None:
        self._names: frozenset[str] | None = None
        self._lock = threading.Lock()

    def get(self) -> frozenset[str] | None:
        with self._lock:
            return self._names

    def set(self, names: frozenset[str] | None) -> None:
        with self._lock:
            self._names = names

    def refresh(self, client: Any, page: int = 200, max_pages: int = 50) -> frozenset[str]:
        names: set[str] = set()
        for i in range(max_pages):
            limits = client.read_global_concurrency_limits(limit=page, offset=i * page)
            names.update(limit.name for limit in limits if limit.name.startswith("tag:"))
            if len(limits) < page:
                break
        frozen = frozenset(names)
        self.set(frozen)
        return frozen


TAG_LIMITS = TagLimitNames()


def _keep_existing(names: Any) -> Any:
    known = TAG_LIMITS.get()
    if known is None or not isinstance(names, list):
        return names
    return [name for name in names if name in known]


def _make_concurrency(original: Callable[..., Any]) -> Callable[..., Any]:
    def concurrency(names: Any, *args: Any, **kwargs: Any) -> Any:
        """prefect.task_engine._concurrency, asking only for tag limits that exist.

        Prefect's task engine asks the server for a slot of every tag of every task run
        ("tag:<tag>"); the server answers "no such limit" for tags without one (here: all of
        them, per deal/enrollment/step). Each distinct tag set also costs a new service
        instance (a thread and an API client). Filtering the names against the server's tag
        limits (refreshed every few seconds) keeps the enforcement of the limits that exist and
        drops the rest; with nothing left, Prefect's own `concurrency([])` is a no-op."""
        return original(_keep_existing(names), *args, **kwargs)

    concurrency.__wrapped_original__ = original  # type: ignore[attr-defined]
    return concurrency


_REPLACEMENTS: dict[tuple[str, str], Callable[..., Any]] = {
    ("prefect.flow_engine", "observe_flow_run_suspension"): _no_suspension_observer,
}
# wrappers around the original (built at apply time)
_WRAPPERS: dict[tuple[str, str], Callable[[Callable[..., Any]], Callable[..., Any]]] = {
    ("prefect.task_engine", "_concurrency"): _make_concurrency,
    ("prefect.task_engine", "_aconcurrency"): _make_concurrency,
}


def verify() -> None:
    """Raise if a patched name is gone or no longer takes the parameters the engine passes,
    or if the private state the fast worker cleans up has changed shape."""
    import importlib

    verify_concurrency_service()

    for module_name, names in PATCHED_NAMES.items():
        module = importlib.import_module(module_name)
        for name, params in names.items():
            original = _originals.get((module_name, name), getattr(module, name, None))
            if original is None:
                raise RuntimeError(
                    f"{module_name}.{name} no longer exists: deployments/engine_patches.py must be "
                    "updated for this Prefect version"
                )
            signature = inspect.signature(inspect.unwrap(original))
            missing = [p for p in params if p not in signature.parameters]
            if missing:
                raise RuntimeError(
                    f"{module_name}.{name} no longer takes {missing}: deployments/engine_patches.py "
                    "must be updated for this Prefect version"
                )


def apply() -> None:
    """Install the replacements in this process (idempotent)."""
    import importlib

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
    import importlib

    with _lock:
        for (module_name, name), original in _originals.items():
            setattr(importlib.import_module(module_name), name, original)
        _originals.clear()


def applied() -> bool:
    import importlib

    replaced = all(getattr(importlib.import_module(m), n) is r for (m, n), r in _REPLACEMENTS.items())
    wrapped = all(
        getattr(getattr(importlib.import_module(m), n), "__wrapped_original__", None) is not None for (m, n) in _WRAPPERS
    )
    return replaced and wrapped


# --- private state the fast worker cleans up (not patched, but read: guarded the same way) ---

# Prefect's task engine acquires tag-based concurrency slots for every task run through
# ConcurrencySlotAcquisitionWithLeaseService.instance(frozenset(tag names)): one service
# instance (a thread, an event-loop task and an API client) per distinct tag set, kept for the
# life of the process. In a process per flow run that is harmless; our task runs are tagged per
# enrollment and step, so a long-lived worker would keep one thread per task run ever executed.
# The fast worker drains the instances that no run in flight can use any more.
CONCURRENCY_SERVICE = ("prefect.concurrency.services", "ConcurrencySlotAcquisitionWithLeaseService")
CONCURRENCY_SERVICE_ATTRIBUTES = ("_instances", "_instance_cache_lock", "concurrency_limit_names", "_drain", "_stopped")


def _concurrency_service_class() -> Any:
    import importlib

    module_name, class_name = CONCURRENCY_SERVICE
    return getattr(importlib.import_module(module_name), class_name)


def verify_concurrency_service() -> None:
    cls = _concurrency_service_class()
    for attr in ("_instances", "_instance_cache_lock", "_drain"):
        if not hasattr(cls, attr):
            raise RuntimeError(f"{CONCURRENCY_SERVICE[1]}.{attr} no longer exists: update deployments/engine_patches.py")
    if not isinstance(cls._instances, dict):
        raise RuntimeError(f"{CONCURRENCY_SERVICE[1]}._instances is no longer a dict: update deployments/engine_patches.py")


def drain_idle_concurrency_services(in_use: Callable[[frozenset[str]], bool]) -> int:
    """Stop the tag-concurrency service instances for which `in_use(names)` is False.

    Returns how many were stopped. Never raises (a Prefect change only costs the clean-up).
    """
    try:
        cls = _concurrency_service_class()
        with cls._instance_cache_lock:
            instances = list(cls._instances.values())
        stopped = 0
        for instance in instances:
            names = frozenset(getattr(instance, "concurrency_limit_names", ()) or ())
            if getattr(instance, "_stopped", False) or in_use(names):
                continue
            instance._drain()  # stop; the remaining work finishes on Prefect's loop thread
            stopped += 1
        return stopped
    except Exception:  # noqa: BLE001
        return 0
