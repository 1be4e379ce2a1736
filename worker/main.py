"""`python -m followups.worker --concurrency 8 --poll 0.5`: the fast worker's command line.

The first SIGTERM or SIGINT stops claiming and lets the runs in flight finish; a second one
exits at once (the runs it abandons are recovered by the next worker, see recovery.py).
SIGUSR1 writes every thread's stack to stderr (`kill -USR1 <pid>`): what a stuck run is doing.
"""

from __future__ import annotations

import argparse
import faulthandler
import logging
import os
import signal
import threading
from typing import Any

from followups.worker.polling import DEFAULT_CONCURRENCY, DEFAULT_POLL_SECONDS, FastWorker

logger = logging.getLogger("followups.fast_worker")


def run_fast_worker(
    concurrency: int = DEFAULT_CONCURRENCY,
    poll_seconds: float = DEFAULT_POLL_SECONDS,
    stop_event: threading.Event | None = None,
    **options: Any,
) -> None:
    """Run the deployments' flow runs in this process until stopped (SIGTERM/SIGINT/stop_event)."""
    stop = stop_event or threading.Event()
    worker = FastWorker(concurrency, poll_seconds, stop, **options)
    previous: dict[int, Any] = {}
    if threading.current_thread() is threading.main_thread():

        def on_signal(signum: int, frame: Any) -> None:
            if stop.is_set():
                logger.warning("Second %s: exiting now", signal.Signals(signum).name)
                os._exit(128 + signum)
            logger.info("%s: no new flow runs; finishing the ones in flight", signal.Signals(signum).name)
            stop.set()

        for sig in (signal.SIGTERM, signal.SIGINT):
            previous[sig] = signal.signal(sig, on_signal)
        faulthandler.register(signal.SIGUSR1, all_threads=True)
    try:
        worker.run()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if previous:
            faulthandler.unregister(signal.SIGUSR1)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m followups.worker",
        description="Run the deployments' flow runs in one long-lived process (Prefect's flow engine on N threads).",
    )
    parser.add_argument("--concurrency", type=int, default=DEFAULT_CONCURRENCY, help="flow runs at once (threads)")
    parser.add_argument("--poll", type=float, default=DEFAULT_POLL_SECONDS, help="seconds between polls for due runs")
    parser.add_argument(
        "--hang-seconds", type=float, default=600.0, help="a run in flight longer than this gets its slot replaced"
    )
    parser.add_argument(
        "--shutdown-grace",
        type=float,
        default=None,
        help="seconds to wait for runs in flight after SIGTERM (default: as long as they take)",
    )
    parser.add_argument("--log-level", default=os.environ.get("FOLLOWUPS_FAST_WORKER_LOG_LEVEL", "INFO"))
    args = parser.parse_args(argv)
    if args.concurrency < 1:
        parser.error("--concurrency must be at least 1")
    if args.poll <= 0:
        parser.error("--poll must be positive")
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logger.setLevel(args.log_level.upper())
    run_fast_worker(
        concurrency=args.concurrency,
        poll_seconds=args.poll,
        hang_seconds=args.hang_seconds,
        shutdown_grace_seconds=args.shutdown_grace,
    )
