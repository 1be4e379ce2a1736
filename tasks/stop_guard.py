"""A stop that arrives while a step is being sent waits until the step's outcome is committed.

Prefect's stock runner stops its flow-run processes with SIGTERM (then SIGKILL 30 s later) when
it shuts down or a run is cancelled, and a supervisor that signals the whole process group
(`kill -TERM -<pgid>`, a terminal's Ctrl-C) reaches them directly. The fast worker stops a run
cancelled in Prefect by raising in the run's thread. Either way the stop lands wherever the
code is; during a send that leaves a committed STEP_ATTEMPT without an outcome, which is
recorded as STEP_OUTCOME_UNKNOWN at best and, when the run was cancelled, never at all.
Holding the stop for the length of one send (bounded by the provider's timeout) lets the step
finish, or fail, cleanly; the stop is then delivered as it would have been.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Callable, Iterator

_lock = threading.Lock()
# Threads inside a send -> the stops to deliver to each when its send ends.
_held: dict[int, list[Callable[[], object]]] = {}


@contextlib.contextmanager
def stops_held() -> Iterator[None]:
    """Defer SIGTERM (main thread) and `stop_thread_when_safe` (any thread) for the body."""
    ident = threading.get_ident()
    try:
        with _lock:
            _held[ident] = []
        with _sigterm_held():
            yield
    finally:
        with _lock:
            pending = _held.pop(ident, [])
        for stop in pending:
            stop()


def stop_thread_when_safe(thread_ident: int, stop: Callable[[], object]) -> bool:
    """Call `stop` now, or when the thread's send ends if it is in one. True if called now.

    The lock is held while `stop` runs, so a thread cannot enter a send between the check and
    the stop: a stop that lands on its way in leaves before the attempt is committed."""
    with _lock:
        pending = _held.get(thread_ident)
        if pending is not None:
            pending.append(stop)
            return False
        stop()
        return True


@contextlib.contextmanager
def _sigterm_held() -> Iterator[None]:
    """Python runs signal handlers in the main thread only: elsewhere there is nothing to hold."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[int] = []
    previous = signal.signal(signal.SIGTERM, lambda signum, _frame: received.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)
        if received:
            signal.raise_signal(signal.SIGTERM)
