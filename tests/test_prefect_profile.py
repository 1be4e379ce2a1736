"""Which Prefect server the commands talk to: the server the demo or `followups prefect-server`
found or started becomes the active Prefect profile `followups` (unless the user chose another),
and `followups doctor` names the API it checked and where that was chosen, never calling a
throwaway ephemeral server ok. Each case has a PREFECT_HOME of its own, never ~/.prefect."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from conftest import PG_ADMIN_URL, _admin_engine, _with_database


def _env(home: Path, **extra: str) -> dict[str, str]:
    """The session's environment without its Prefect configuration, in PREFECT_HOME `home`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    return {**env, "PREFECT_HOME": str(home), "PYTHONSAFEPATH": "1", **extra}


def _run(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], env=env, capture_output=True, text=True, timeout=180, stdin=subprocess.DEVNULL)


def _remember(url: str, env: dict[str, str]) -> str:
    done = _run(["-c", f"from followups.prefect_server import remember_api_url as r; print(r({url!r}))"], env)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def _prefect_check(env: dict[str, str]) -> tuple[int, dict]:
    done = _run(["-m", "followups.cli", "doctor", "--json"], env)
    checks = json.loads(done.stdout)
    return done.returncode, next(check for check in checks if check["name"] == "prefect")


def test_the_server_found_becomes_the_profile_every_later_command_uses(prefect_api, tmp_path):
    env = _env(tmp_path)
    line = _remember(prefect_api, env)
    assert line.startswith(f"Prefect profile 'followups' is active and points at {prefect_api}"), line
    assert "prefect profile use ephemeral" in line  # how to go back

    # New processes of this PREFECT_HOME, with nothing exported: Prefect's own CLI and doctor.
    view = _run(["-m", "prefect", "config", "view"], env)
    assert f"PREFECT_API_URL='{prefect_api}' (from profile)" in view.stdout, view.stdout + view.stderr
    _, check = _prefect_check(env)
    assert check["ok"] and check["detail"] == f"API at {prefect_api} (from Prefect profile 'followups')", check
    assert _remember(prefect_api, env) == f"Prefect profile 'followups' already points at {prefect_api}"


def test_a_users_own_choice_of_server_is_left_alone(tmp_path, monkeypatch):
    from prefect.settings import PREFECT_PROFILES_PATH, temporary_settings

    from followups.prefect_server import remember_api_url

    profiles = tmp_path / "profiles.toml"
    monkeypatch.delenv("PREFECT_PROFILE", raising=False)
    with temporary_settings(updates={PREFECT_PROFILES_PATH: str(profiles)}):
        monkeypatch.setenv("PREFECT_API_URL", "http://prefect.internal:4200/api")
        assert remember_api_url("http://127.0.0.1:4200/api").startswith("PREFECT_API_URL is set in the environment")
        assert not profiles.exists()
        monkeypatch.delenv("PREFECT_API_URL")

        mine = 'active = "mine"\n\n[profiles.mine]\nPREFECT_API_URL = "http://prefect.internal:4200/api"\n'
        profiles.write_text(mine)
        line = remember_api_url("http://127.0.0.1:4200/api")
        assert line.startswith("Prefect profile 'mine' points at http://prefect.internal:4200/api: left alone"), line
        assert profiles.read_text() == mine

        monkeypatch.setenv("PREFECT_PROFILE", "quiet")
        profiles.write_text('[profiles.quiet]\nPREFECT_LOGGING_LEVEL = "WARNING"\n')
        assert "is chosen by PREFECT_PROFILE: left alone" in remember_api_url("http://127.0.0.1:4200/api")
        assert "followups" not in profiles.read_text()


def test_doctor_without_a_configured_server_says_so_instead_of_checking_a_throwaway_one(database_url, tmp_path):
    code, check = _prefect_check(_env(tmp_path))
    assert code == 1 and not check["ok"]
    assert check["detail"] == "no Prefect server configured: PREFECT_API_URL is unset and Prefect profile 'ephemeral' sets none"
    assert "followups prefect-server" in check["fix"] and "PREFECT_API_URL" in check["fix"]


def test_doctor_names_the_api_it_checked_and_where_it_was_chosen(database_url, tmp_path):
    url = "http://127.0.0.1:9/api"  # nothing answers there
    code, check = _prefect_check(_env(tmp_path, PREFECT_API_URL=url))
    assert code == 1 and not check["ok"]
    assert check["detail"] == f"cannot reach the Prefect API at {url} (from the PREFECT_API_URL environment variable)"


def test_a_local_server_gets_a_postgresql_database_of_its_own_else_sqlite(db, monkeypatch):
    import followups.db.migrate as migrate
    import followups.scaled_server as scaled
    from followups.prefect_server import server_database

    name = f"prefect_local_{uuid.uuid4().hex[:8]}"
    monkeypatch.delenv("PREFECT_SERVER_DATABASE_CONNECTION_URL", raising=False)
    monkeypatch.delenv("PREFECT_API_DATABASE_CONNECTION_URL", raising=False)
    monkeypatch.setattr(scaled, "default_database_url", lambda: _with_database(PG_ADMIN_URL, name))
    try:
        url, line = server_database()
        assert url == f"postgresql+asyncpg://postgres@127.0.0.1:5432/{name}"
        assert line == f"Prefect's database: PostgreSQL 127.0.0.1:5432/{name}"
        with _admin_engine().connect() as conn:
            assert conn.exec_driver_sql(f"SELECT 1 FROM pg_database WHERE datname = '{name}'").scalar() == 1
    finally:
        with _admin_engine().connect() as conn:
            conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def refused(url: str) -> bool:
        from sqlalchemy.exc import OperationalError

        raise OperationalError("CREATE DATABASE", {}, Exception("permission denied"))

    monkeypatch.setattr(migrate, "create_database_if_missing", refused)
    assert server_database() == (None, "Prefect's database: SQLite in PREFECT_HOME (no PostgreSQL could be used for it)")
    monkeypatch.setenv("PREFECT_SERVER_DATABASE_CONNECTION_URL", "sqlite+aiosqlite:////tmp/mine.db")
    assert server_database()[0] is None  # the user's own choice: nothing set over it


@pytest.mark.parametrize(("host", "expected"), [("0.0.0.0", "http://127.0.0.1:4300/api"), ("::", "http://[::1]:4300/api"),
                                                ("10.1.2.3", "http://10.1.2.3:4300/api")])
def test_prefect_server_remembers_an_address_a_client_can_reach(host, expected):
    from followups.scaled_server import build_config

    assert build_config(database_url="postgresql+asyncpg://postgres@127.0.0.1:5432/prefect", host=host, port=4300).client_api_url == expected
