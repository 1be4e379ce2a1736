"""`followups demo` and `followups db upgrade`, the commands a new user runs first."""

from __future__ import annotations

import io
import uuid

import pytest
from rich.console import Console

from conftest import PG_ADMIN_URL, _admin_engine, _with_database


def test_demo_runs_a_sequence_to_completion_and_prints_its_events(prefect_api, fake_providers, monkeypatch, capfd):
    """Quietly (no ERROR, no traceback, the runner's output included), for the CLI's default
    owner, ending with the commands that show more."""
    import json
    import re
    import sys

    from followups.cli import main
    from followups.demo import run_demo

    monkeypatch.setenv("PREFECT_API_URL", prefect_api)
    monkeypatch.delenv("FOLLOWUPS_OWNER", raising=False)
    output = io.StringIO()
    status = run_demo(Console(file=output, width=200), timeout=120)
    text = output.getvalue()
    assert status == "COMPLETED", text
    for expected in ("ENROLLED", "EMAIL_SENT", "WAIT_STARTED", "WAIT_COMPLETED", "SMS_SENT", "COMPLETED"):
        assert expected in text
    assert "chosen by the PREFECT_API_URL environment variable" in text
    enrollment_id = int(re.search(r"as enrollment (\d+);", text).group(1))
    ui = prefect_api.removesuffix("/api")
    lines = [line.strip() for line in text.splitlines()]
    assert any(line.startswith("followups list ") for line in lines), text
    assert any(line.startswith(f"followups status {enrollment_id} ") for line in lines), text
    assert any(line.startswith(f"{ui}/runs?") and f"enrollment:{enrollment_id}" in line for line in lines), text
    runner = capfd.readouterr()
    for where in (text, runner.out, runner.err):
        assert "ERROR" not in where and "Traceback" not in where, where

    monkeypatch.setattr(sys, "argv", ["followups", "list", "--json"])
    with pytest.raises(SystemExit) as exited:
        main()
    assert exited.value.code in (0, None)
    listed = json.loads(capfd.readouterr().out)
    assert enrollment_id in [item["id"] for item in listed["items"]]


def test_db_upgrade_creates_and_migrates_the_configured_database(db, monkeypatch, capsys):
    import sys

    from followups.cli import main
    from followups.db.session import dispose_engines
    from followups.settings import reset_settings

    name = f"followups_cli_{uuid.uuid4().hex[:8]}"
    monkeypatch.setenv("FOLLOWUPS_DATABASE_URL", _with_database(PG_ADMIN_URL, name))
    monkeypatch.setattr(sys, "argv", ["followups", "db", "upgrade"])
    reset_settings()
    try:
        try:
            main()
        except SystemExit as exc:
            assert exc.code in (0, None)
        assert "up to date" in capsys.readouterr().out
        with _admin_engine().connect() as conn:
            assert conn.exec_driver_sql(f"SELECT 1 FROM pg_database WHERE datname = '{name}'").scalar() == 1
    finally:
        monkeypatch.undo()  # back to the session's database before the settings are re-read
        reset_settings()
        dispose_engines()
        with _admin_engine().connect() as conn:
            conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def test_the_demo_works_again_after_its_database_is_dropped(prefect_api, fake_providers, monkeypatch):
    """The second database gets enrollment 1 again; its runs must not be the first one's."""
    from followups.db.session import dispose_engines
    from followups.demo import run_demo
    from followups.settings import reset_settings

    name = f"followups_demo_{uuid.uuid4().hex[:8]}"
    monkeypatch.setenv("PREFECT_API_URL", prefect_api)
    monkeypatch.setenv("FOLLOWUPS_DATABASE_URL", _with_database(PG_ADMIN_URL, name))
    # Its own deployment name: the session's runner serves the session database's deployments.
    monkeypatch.setenv("FOLLOWUPS_DEPLOYMENT_NAME", f"follow-up-sequence/{name}")
    reset_settings()
    try:
        for attempt in range(2):
            output = io.StringIO()
            status = run_demo(Console(file=output, width=200), timeout=120)
            assert status == "COMPLETED", (attempt, output.getvalue())
            assert "as enrollment 1;" in output.getvalue()
            dispose_engines()
            with _admin_engine().connect() as conn:  # `dropdb followups`
                conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        monkeypatch.undo()
        reset_settings()
        dispose_engines()
        with _admin_engine().connect() as conn:
            conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
