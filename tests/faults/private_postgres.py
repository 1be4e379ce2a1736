"""A PostgreSQL cluster of a test's own, for scenarios that stop or restart PostgreSQL: the
machine's cluster serves every other test and is never touched. Made with the installed
`initdb` and `pg_ctl` in a temp directory, on a free port of 127.0.0.1, with trust auth; stopped
and deleted when the block ends, whatever happened."""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from prefect_servers import free_port


def _bindir() -> Path | None:
    """The newest installed server binaries (Debian keeps them off PATH)."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: float(Path(p).parts[-3]))
    found = found or [p for p in [shutil.which("initdb")] if p]
    return Path(found[-1]).parent if found and (Path(found[-1]).parent / "pg_ctl").exists() else None


def _unavailable(reason: str) -> None:
    # CI must run the scenario; a developer's machine without the binaries only skips it.
    (pytest.fail if os.environ.get("CI") else pytest.skip)(f"no private PostgreSQL cluster: {reason}")


class PrivatePostgres:
    def __init__(self, bindir: Path, root: Path, as_user: list[str]) -> None:
        self.bindir, self.root, self.as_user = bindir, root, as_user
        self.data, self.log = root / "data", root / "server.log"
        self.port = free_port()

    @property
    def admin_url(self) -> str:
        return self.url("postgres")

    def url(self, database: str) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{database}"

    def _run(self, tool: str, *args: str, timeout: float = 120) -> None:
        done = subprocess.run([*self.as_user, str(self.bindir / tool), *args], cwd=self.root,
                              capture_output=True, text=True, timeout=timeout)
        if done.returncode:
            log = self.log.read_text(errors="replace")[-3000:] if self.log.exists() else ""
            raise AssertionError(f"{tool} {' '.join(args)} failed:\n{done.stdout}{done.stderr}\n{log}")

    def _pg_ctl(self, action: str, *args: str) -> None:
        # -l always: without it the postmaster keeps our captured stdout open and run() never returns.
        self._run("pg_ctl", action, "-D", str(self.data), "-l", str(self.log), "-w", "-t", "90", *args)

    def init(self) -> None:
        socket_dir = self.root / "socket"
        socket_dir.mkdir()
        if self.as_user:
            shutil.chown(socket_dir, "postgres", "postgres")
        self._run("initdb", "-D", str(self.data), "-U", "postgres", "-A", "trust", "-E", "UTF8",
                  "--locale=C.UTF-8", "--no-sync")
        with open(self.data / "postgresql.conf", "a") as conf:
            # fsync off: a throwaway cluster; a restart still loses every connection.
            conf.write(f"listen_addresses = '127.0.0.1'\nport = {self.port}\n"
                       f"unix_socket_directories = '{socket_dir}'\nfsync = off\n")

    def start(self) -> None:
        self._pg_ctl("start")

    def restart(self) -> None:
        self._pg_ctl("restart", "-m", "fast")

    def ready(self) -> bool:
        command = [str(self.bindir / "pg_isready"), "-h", "127.0.0.1", "-p", str(self.port), "-t", "2"]
        return subprocess.run(command, capture_output=True).returncode == 0

    def destroy(self) -> None:
        pid_file = self.data / "postmaster.pid"
        if pid_file.exists():
            with contextlib.suppress(Exception):
                self._pg_ctl("stop", "-m", "immediate")
        if pid_file.exists():  # pg_ctl could not stop it: its children follow the postmaster
            with contextlib.suppress(Exception):
                os.kill(int(pid_file.read_text().split()[0]), signal.SIGKILL)
                time.sleep(1)
        shutil.rmtree(self.root, ignore_errors=True)


@contextlib.contextmanager
def private_postgres() -> Iterator[PrivatePostgres]:
    bindir = _bindir()
    if bindir is None:
        _unavailable("no initdb/pg_ctl in /usr/lib/postgresql/*/bin or on PATH")
    as_user: list[str] = []
    if os.geteuid() == 0:  # initdb refuses root: the cluster runs as the postgres OS user
        try:
            owner = pwd.getpwnam("postgres")
        except KeyError:
            _unavailable("running as root and there is no postgres OS user")
        as_user = ["runuser", "-u", "postgres", "--"]
    root = Path(tempfile.mkdtemp(prefix="followups-pg-"))
    if as_user:
        os.chown(root, owner.pw_uid, owner.pw_gid)
    cluster = PrivatePostgres(bindir, root, as_user)
    try:
        cluster.init()
        cluster.start()
        yield cluster
    finally:
        cluster.destroy()
