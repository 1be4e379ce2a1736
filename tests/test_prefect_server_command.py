"""`followups prefect-server` refuses bad input in one line with exit 1, naming the option, before
it touches Redis, PostgreSQL or any process."""

from __future__ import annotations

import pytest

CASES = [
    (["--workers", "0"], "--workers"),
    (["--port", "70000"], "--port"),
    (["--database-url", "sqlite:///x.db"], "--database-url"),
    (["--database-url", "not a url"], "--database-url"),
    (["--database-url", "postgresql+asyncpg://postgres@127.0.0.1:5432"], "--database-url"),
    (["--redis-url", "http://127.0.0.1:6379/0"], "--redis-url"),
    (["--redis-url", "redis://127.0.0.1:6379/zero"], "--redis-url"),
    (["--redis-url", "redis://127.0.0.1:6379/3", "--docket-url", "redis://127.0.0.1:6379/3"], "--docket-url"),
]


@pytest.mark.parametrize(("args", "field"), CASES, ids=[" ".join(a) for a, _ in CASES])
def test_bad_input_is_one_line_and_exit_1(cli, monkeypatch, args, field):
    import followups.scaled_server as scaled

    def must_not_run(*_args, **_kwargs):
        raise AssertionError("started something despite bad input")

    monkeypatch.setattr(scaled, "ensure_redis", must_not_run)
    monkeypatch.setattr(scaled, "ensure_database", must_not_run)
    code, out, err = cli("prefect-server", *args)
    assert code == 1 and out == ""
    assert len(err.strip().splitlines()) == 1 and field in err and "Traceback" not in err


def test_the_servers_it_starts_keep_the_prefect_database_bounded():
    """Events kept 2 days and finished runs deleted after 30, unless the environment says
    otherwise; checked by Prefect's own settings in a fresh process."""
    import json
    import subprocess
    import sys

    from followups.scaled_server import build_config, server_env

    config = build_config(database_url="postgresql+asyncpg://postgres@127.0.0.1:5432/prefect")
    show = (
        "import json; from prefect.settings import get_current_settings as g; s = g().server; "
        "print(json.dumps([s.events.retention_period.total_seconds(), sorted(s.services.db_vacuum.enabled), "
        "s.services.db_vacuum.retention_period.total_seconds()]))"
    )
    for base, expected in (
        ({}, [2 * 86400, ["events", "flow_runs"], 30 * 86400]),
        ({"PREFECT_SERVER_EVENTS_RETENTION_PERIOD": "PT12H"}, [12 * 3600, ["events", "flow_runs"], 30 * 86400]),
    ):
        env = server_env(config, base={"PATH": "/usr/bin:/bin", **base})
        out = subprocess.run([sys.executable, "-c", show], env=env, capture_output=True, text=True, timeout=120, check=True).stdout
        assert json.loads(out.strip().splitlines()[-1]) == expected
