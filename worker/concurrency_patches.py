"""Tag concurrency in a long-lived process: ask only for the tag limits that exist.

Prefect's task engine asks the server for a concurrency slot of every tag of every task run
("tag:<tag>"; Prefect 3 keeps v1 tag limits as v2 limits with that prefix), and keeps one
`ConcurrencySlotAcquisitionWithLeaseService` instance (a thread, an event-loop task and an API
client) per distinct tag set for the life of the process. In a process per flow run that is
harmless; our task runs are tagged per deal, enrollment and step, so a long-lived worker would
make one API call and keep one client and one thread per task run ever executed.

- The wrapper around `prefect.task_engine._concurrency` / `_aconcurrency` (installed by
  prefect_private.apply_fast_worker) passes on only the names that have a limit on the server
  (`TAG_LIMITS`, refreshed by the worker every few seconds): limits that exist are enforced as
  before, a limit created meanwhile from the next refresh on; with nothing left, Prefect's own
  `concurrency([])` is a no-op.
- The service instances of tag sets that do have limits are stopped when idle
  (`prefect_private.drain_concurrency_services`, called by upkeep.py).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any


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

    return concurrency
