"""Engine and session factory. Sessions are opened at the edges (`with session_scope() as s:`)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import Engine, create_engine, text
from sqlalchemy.orm import Session, sessionmaker

from followups.settings import get_settings

_engines: dict[str, Engine] = {}
_factories: dict[str, sessionmaker[Session]] = {}


def get_engine(url: str | None = None) -> Engine:
    settings = get_settings()
    url = url or settings.database_url
    engine = _engines.get(url)
    if engine is None:
        engine = _engines[url] = create_engine(
            url, pool_size=settings.database_pool_size, max_overflow=20, pool_pre_ping=True
        )
    return engine


def session_factory() -> sessionmaker[Session]:
    url = get_settings().database_url
    factory = _factories.get(url)
    if factory is None:
        factory = _factories[url] = sessionmaker(get_engine(url), expire_on_commit=False)
    return factory


@contextmanager
def session_scope(*, read_only: bool = False) -> Iterator[Session]:
    """One transaction: committed on success, rolled back on error. `read_only=True` makes
    PostgreSQL refuse any write in it, so a read can never change state by accident."""
    with session_factory().begin() as session:
        if read_only:
            session.execute(text("SET TRANSACTION READ ONLY"))
        yield session


def dispose_engines() -> None:
    for engine in _engines.values():
        engine.dispose()
    _engines.clear()
    _factories.clear()
