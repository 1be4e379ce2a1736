"""Tag concurrency in a long-lived process: ask only for the tag limits that exist.

Prefect's task engine asks the server for a concurrency slot of every tag of every task run
("tag:<tag>"; Prefect 3 keeps v1 tag limits as v2 limits with that prefix), and keeps one
`ConcurrencySlotAcquisitionWithLeaseService` instance (a thread, an event-loop task and an API
client) per distinct tag set for the life of the process. In a process per flow run that is
harmless; our task runs are tagged per deal, enrollment and step, so a long-lived worker would
make one API call and keep one client and one thread per task run ever executed.

- The wrapper around `prefect.task_engine._concurrency` / `_aconcurrency` (installed by
  engine_patches.apply()) passes on only the names that have a limit on the server
  (`TAG_LIMITS`, refreshed by the worker every few seconds): limits that exist are enforced as
  before, a limit created meanwhile from the next refresh on; with nothing left, Prefect's own
  `concurrency([])` is a no-op.
- Private state read (not patched), guarded by the same verify test: the service's instances,
  so the worker can stop the ones no run in flight can use (`drain_idle_concurrency_services`),
  a safety net for tag sets that do have limits.
"""

from __future__ import annotations

import importlib
import threading
from collections.abc import Callable
from typing import Any

CONCURRENCY_SERVICE = ("prefect.concurrency.services", "ConcurrencySlotAcquisitionWithLeaseService")


class TagLimitNames:
    """The names of the tag concurrency limits on the server; None until the first refresh
    (then nothing is filtered)."""

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


def keep_existing(names: Any) -> Any:
    known = TAG_LIMITS.get()
    if known is None or not isinstance(names, list):
        return names
    return [name for name in names if name in known]


def make_tag_filtering_concurrency(original: Callable[..., Any]) -> Callable[..., Any]:
    def concurrency(names: Any, *args: Any, **kwargs: Any) -> Any:
        """prefect.task_engine._concurrency, asking only for tag limits that exist."""
        return original(keep_existing(names), *args, **kwargs)

    concurrency.__wrapped_original__ = original  # type: ignore[attr-defined]
    return concurrency


def concurrency_service_class() -> Any:
    module_name, class_name = CONCURRENCY_SERVICE
    return getattr(importlib.import_module(module_name), class_name)


def verify_concurrency_service() -> None:
    cls = concurrency_service_class()
    for attr in ("_instances", "_instance_cache_lock", "_drain"):
        if not hasattr(cls, attr):
            raise RuntimeError(f"{CONCURRENCY_SERVICE[1]}.{attr} no longer exists: update worker/concurrency_patches.py")
    if not isinstance(cls._instances, dict):
        raise RuntimeError(f"{CONCURRENCY_SERVICE[1]}._instances is no longer a dict: update worker/concurrency_patches.py")


def drain_idle_concurrency_services(in_use: Callable[[frozenset[str]], bool]) -> int:
    """Stop the service instances for which `in_use(names)` is False; how many were stopped.
    Never raises (a Prefect change only costs the clean-up)."""
    try:
        cls = concurrency_service_class()
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
