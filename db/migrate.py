"""`followups db upgrade`: create the database if needed, then apply the Alembic migrations."""

from __future__ import annotations

from alembic import command
from alembic.config import Config
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from followups.settings import get_settings


def alembic_config(database_url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", "followups.db:migrations")
    # Alembic's config is ConfigParser-based: '%' must be escaped.
    config.set_main_option("sqlalchemy.url", database_url.replace("%", "%%"))
    return config


def create_database_if_missing(database_url: str) -> bool:
    """Create the target database (connecting to `postgres`) when it does not exist yet."""
    url = make_url(database_url)
    name = url.database
    admin = create_engine(url.set(database="postgres"), isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            exists = conn.scalar(text("SELECT 1 FROM pg_database WHERE datname = :n"), {"n": name})
            if exists:
                return False
            conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
            return True
    finally:
        admin.dispose()


def upgrade(database_url: str | None = None, revision: str = "head") -> None:
    url = database_url or get_settings().database_url
    create_database_if_missing(url)
    command.upgrade(alembic_config(url), revision)
