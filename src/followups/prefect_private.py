"""Every private Prefect name and message the product relies on, each with the reason no public
API does the job: the only module that touches them.

pyproject.toml pins prefect to one minor (3.9.x). `verify` checks that a name still exists and
still takes what the product passes; tests/test_prefect_private.py runs it for every name and
looks for every message in Prefect's source, so an upgrade cannot silently turn a patch into a
no-op. A patch is applied only in the process named; every other process (each flow-run process
the stock runner starts, the API, the CLI) runs Prefect unmodified.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import inspect
import threading
from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import Any

_CLAIM_WHY = (
    "a run suspended between the poll and the claim (an enrollment paused at that moment) answers the "
    "Pending proposal with `Pause`, a BaseException that ends the runner's or worker's task group for good; "
    "wrapped, it is the `Abort` Prefect already handles, and the run stays suspended until it is resumed"
)
_DRAIN_WHY = (
    "the service instances of tag sets that do have limits outlive their task runs: the fast worker stops "
    "the idle ones"
)
_CONCURRENCY_WHY = (
    "the task engine asks the server for a slot of every tag of every task run and keeps a service thread "
    "per tag set for the life of the process; ours are tagged per deal, enrollment and step, so the wrapper "
    "asks only for the tag limits that exist"
)
_CONCURRENCY_PARAMS = ("names", "occupy", "holder", "lease_duration", "suppress_warnings")
_SERVICE = "prefect.concurrency.services"


@dataclass(frozen=True)
class Private:
    module: str
    name: str  # dotted for a class attribute
    use: str
    why: str
    params: tuple[str, ...] = ()


NAMES = (
    Private("prefect.flow_engine", "observe_flow_run_suspension", "replaced (a no-op) in the fast worker",
            "the engine opens, for every flow run, a thread with its own event loop and events websocket that "
            "watches for a Suspended state, and no setting turns it off; the flow checks its own run state "
            "at every step boundary instead", ("flow_run_id", "suspension_request")),
    Private("prefect.task_engine", "_concurrency", "wrapped in the fast worker", _CONCURRENCY_WHY, _CONCURRENCY_PARAMS),
    Private("prefect.task_engine", "_aconcurrency", "wrapped in the fast worker", _CONCURRENCY_WHY, _CONCURRENCY_PARAMS),
    Private(_SERVICE, "ConcurrencySlotAcquisitionWithLeaseService._instances", "read in the fast worker", _DRAIN_WHY),
    Private(_SERVICE, "ConcurrencySlotAcquisitionWithLeaseService._instance_cache_lock", "held in the fast worker", _DRAIN_WHY),
    Private(_SERVICE, "ConcurrencySlotAcquisitionWithLeaseService._drain", "called in the fast worker", _DRAIN_WHY),
    Private("prefect.runner._state_proposer", "propose_state", "wrapped in the stock runner (`followups serve`)", _CLAIM_WHY),
    Private("prefect.workers.base", "propose_state", "wrapped in the pool worker (`followups` worker type)", _CLAIM_WHY),
)

# Prefect's own words, matched because no field of a state carries the fact: where each is said.
RUNNER_SHUTDOWN_MESSAGE = "Runner is shutting down."  # a run cancelled by its runner's shutdown, not by anyone
SUSPEND_EXPIRED_TEXT = "never resumed"  # the Failed state of a suspend whose timeout ran out
MESSAGES = {
    RUNNER_SHUTDOWN_MESSAGE: "prefect.runner._cancellation_manager",
    SUSPEND_EXPIRED_TEXT: "prefect.server.orchestration.core_policy",
}


def resolve(private: Private) -> Any:
    found: Any = importlib.import_module(private.module)
    for part in private.name.split("."):
        found = getattr(found, part)
    return found


def verify(private: Private) -> None:
    """Raise RuntimeError if the name is gone or no longer takes the parameters passed to it."""
    try:
        found = _originals.get((private.module, private.name)) or resolve(private)
    except AttributeError:
        raise RuntimeError(f"{private.module}.{private.name} no longer exists: update prefect_private.py") from None
    if private.params:
        missing = [p for p in private.params if p not in inspect.signature(inspect.unwrap(found)).parameters]
        if missing:
            raise RuntimeError(f"{private.module}.{private.name} no longer takes {missing}: update prefect_private.py")


def pause_as_abort(propose: Callable[..., Any]) -> Callable[..., Any]:
    """The one fix for a claim that meets a suspended run: its `Pause` becomes an `Abort`."""
    from prefect.exceptions import Abort, Pause

    if inspect.iscoroutinefunction(propose):
        @functools.wraps(propose)
        async def wrapper(*args: Any, **kwargs: Any) -> Any:
            try:
                return await propose(*args, **kwargs)
            except Pause as exc:
                raise Abort(f"the run is paused: {exc}") from exc
    else:
        @functools.wraps(propose)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            try:
                return propose(*args, **kwargs)
            except Pause as exc:
                raise Abort(f"the run is paused: {exc}") from exc

    wrapper.followups_patched = True  # type: ignore[attr-defined]
    return wrapper


@contextlib.contextmanager
def _no_suspension_observer(flow_run_id: Any, suspension_request: Any, polling_interval: float = 10) -> Generator[None, None, None]:
    """observe nothing; in-process suspension (`suspend_flow_run`) works as before."""
    yield


_lock = threading.Lock()
_originals: dict[tuple[str, str], Any] = {}


def _install(module_name: str, name: str, make: Callable[[Any], Any]) -> None:
    module = importlib.import_module(module_name)
    if (module_name, name) not in _originals:
        _originals[(module_name, name)] = getattr(module, name)
        setattr(module, name, make(_originals[(module_name, name)]))


def apply_runner() -> None:
    """In the stock runner's process (idempotent)."""
    with _lock:
        verify(next(p for p in NAMES if p.module == "prefect.runner._state_proposer"))
        _install("prefect.runner._state_proposer", "propose_state", pause_as_abort)


def apply_fast_worker(wrap_concurrency: Callable[[Any], Any], *, pool: bool = False) -> None:
    """In the fast worker's process (idempotent); `pool`: it runs as the Prefect worker type."""
    with _lock:
        for private in NAMES:
            verify(private)
        _install("prefect.flow_engine", "observe_flow_run_suspension", lambda _original: _no_suspension_observer)
        _install("prefect.task_engine", "_concurrency", wrap_concurrency)
        _install("prefect.task_engine", "_aconcurrency", wrap_concurrency)
        if pool:
            _install("prefect.workers.base", "propose_state", pause_as_abort)


def applied() -> bool:
    return bool(_originals) and all(
        getattr(importlib.import_module(module), name) is not original for (module, name), original in _originals.items()
    )


def restore() -> None:
    """Put the original names back (tests)."""
    with _lock:
        for (module_name, name), original in _originals.items():
            setattr(importlib.import_module(module_name), name, original)
        _originals.clear()


def drain_concurrency_services(in_use: Callable[[frozenset[str]], bool]) -> int:
    """Stop the concurrency service instances for which `in_use(names)` is False; how many were
    stopped. Never raises (a Prefect change only costs the clean-up)."""
    try:
        cls = getattr(importlib.import_module(_SERVICE), "ConcurrencySlotAcquisitionWithLeaseService")
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
