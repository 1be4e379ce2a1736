"""A SIGTERM that arrives while a step is being sent waits until the step's outcome is committed.

Prefect's stock runner stops its flow-run processes with SIGTERM (then SIGKILL 30 s later) when
it shuts down or a run is cancelled, and a supervisor that signals the whole process group
(`kill -TERM -<pgid>`, a terminal's Ctrl-C) reaches them directly. Prefect turns the signal
into an exception wherever the process is; during a send that leaves a committed STEP_ATTEMPT
without an outcome, which the next run must record as STEP_OUTCOME_UNKNOWN and never send.
Holding the signal for the length of one send (bounded by the provider's timeout) lets the step
finish, or fail, cleanly; the process then stops as it would have, and the run is repaired.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator


@contextlib.contextmanager
def sigterm_held() -> Iterator[None]:
    """Defer SIGTERM for the body, then deliver it to whichever handler was there before.

    Only in a process's main thread (where Python runs signal handlers): the fast worker runs
    steps on other threads, and stops gracefully by itself."""
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
