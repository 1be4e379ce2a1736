"""Who claimed a flow run, and whether that process is still alive.

A claim is a `Pending` state whose message names the claiming worker (host, pid, process start
time, a random token); recovery reads it back to tell a live claimer from a dead one.
"""

from __future__ import annotations

import os
import socket
import uuid
from dataclasses import dataclass
from pathlib import Path

CLAIM_PREFIX = "claimed by fast-worker"


def _process_start_ticks(pid: int) -> str | None:
    """Field 22 of /proc/<pid>/stat: distinguishes a live process from a reused pid."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return raw[raw.rindex(")") + 2 :].split()[19]


@dataclass(frozen=True)
class WorkerIdentity:
    host: str
    pid: int
    started: str
    token: str

    @classmethod
    def current(cls) -> WorkerIdentity:
        pid = os.getpid()
        return cls(socket.gethostname(), pid, _process_start_ticks(pid) or "0", uuid.uuid4().hex[:8])

    @property
    def marker(self) -> str:
        return f"{CLAIM_PREFIX} host={self.host} pid={self.pid} started={self.started} id={self.token}"

    @classmethod
    def parse(cls, message: str | None) -> WorkerIdentity | None:
        if not message or not message.startswith(CLAIM_PREFIX):
            return None
        try:
            parts = dict(item.split("=", 1) for item in message[len(CLAIM_PREFIX) :].split())
            return cls(parts["host"], int(parts["pid"]), parts["started"], parts["id"])
        except (KeyError, ValueError):
            return None

    def is_alive_here(self) -> bool | None:
        """True/False for a worker on this host; None when it runs elsewhere (unknowable here)."""
        if self.host != socket.gethostname():
            return None
        return _process_start_ticks(self.pid) == self.started
