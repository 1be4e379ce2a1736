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
