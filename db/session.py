"""Engine and session factory. Sessions are opened at the edges (`with session_scope() as s:`).

A transaction can leave work for after its commit (`after_commit`): calls to Prefect, which must
never be made while a transaction or a row lock is open. `in_transaction()` tells whether this
thread is inside one, so the module that calls Prefect can refuse (see `forbid_calls_in_transaction`).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from sqlalchemy import Engine, create_engine, text
from sqlalchemy import exc as sa_exc
from sqlalchemy.orm import Session, sessionmaker

from followups.errors import BusyError
from followups.settings import get_settings

log = logging.getLogger(__name__)

_engines: dict[str, Engine] = {}
_factories: dict[str, sessionmaker[Session]] = {}
_local = threading.local()
# PostgreSQL's "too many connections" (53300): saturated like a pool timeout, not down.
_SATURATED_STATES = {"53300"}


def get_engine(url: str | None = None) -> Engine:
    settings = get_settings()
    url = url or settings.database_url
    engine = _engines.get(url)
    if engine is None:
        engine = _engines[url] = create_engine(
            url, pool_size=settings.database_pool_size, max_overflow=settings.database_max_overflow,
            pool_timeout=settings.database_pool_timeout_seconds, pool_pre_ping=True,
        )
    return engine


def session_factory() -> sessionmaker[Session]:
    url = get_settings().database_url
    factory = _factories.get(url)
    if factory is None:
        factory = _factories[url] = sessionmaker(get_engine(url), expire_on_commit=False)
    return factory


def in_transaction() -> bool:
    """Whether this thread is inside a `session_scope`."""
    return getattr(_local, "depth", 0) > 0


def current_session() -> Session | None:
    """The innermost open `session_scope` of this thread, if any: a helper that reads (this
    database's identity, say) uses it rather than taking a second connection from the pool while
    its caller holds one, which under load can leave every thread waiting for a connection."""
    sessions = getattr(_local, "sessions", None)
    return sessions[-1] if sessions else None


def after_commit(session: Session, work: Callable[[], None]) -> None:
    """Run `work` once the session's transaction has committed and its connection is back in the
    pool (in this thread, before `session_scope` returns). Nothing runs if it rolls back."""
    session.info.setdefault("after_commit", []).append(work)


def _saturated(exc: BaseException) -> bool:
    if isinstance(exc, sa_exc.TimeoutError):
        return True
    orig = getattr(exc, "orig", None)
    return isinstance(exc, sa_exc.OperationalError) and getattr(orig, "sqlstate", None) in _SATURATED_STATES


@contextmanager
def session_scope(*, read_only: bool = False) -> Iterator[Session]:
    """One transaction: committed on success, rolled back on error. `read_only=True` makes
    PostgreSQL refuse any write in it, so a read can never change state by accident. A database
    with no connection to spare raises BusyError: nothing was done.

    Work left with `after_commit` runs once this transaction has committed and no other
    transaction of this thread is still open (a scope opened inside another one hands its work to
    the outermost)."""
    _local.depth = getattr(_local, "depth", 0) + 1
    try:
        with session_factory().begin() as session:
            if read_only:
                session.execute(text("SET TRANSACTION READ ONLY"))
            _sessions().append(session)
            try:
                yield session
            finally:
                _sessions().pop()
            work = session.info.pop("after_commit", [])
        _deferred().extend(work)
    except (sa_exc.TimeoutError, sa_exc.OperationalError) as exc:
        if _saturated(exc):
            raise BusyError() from exc
        raise
    finally:
        _local.depth -= 1
        if _local.depth == 0:
            _run_deferred()


def _sessions() -> list[Session]:
    if not hasattr(_local, "sessions"):
        _local.sessions = []
    return _local.sessions


def _deferred() -> list[Callable[[], None]]:
    if not hasattr(_local, "deferred"):
        _local.deferred = []
    return _local.deferred


def _run_deferred() -> None:
    while _deferred():
        work = _deferred().pop(0)
        try:
            work()
        except Exception:  # committed work stands; what follows it is retried by the sweep
            log.exception("work after a commit failed")


def dispose_engines() -> None:
    for engine in _engines.values():
        engine.dispose()
    _engines.clear()
    _factories.clear()
