"""The CLI fails clearly: every error is one line on stderr and exit code 1, never SQL, a
traceback, a driver message or a path of the installation; nothing is stored half-way; and the
commands that never talk to Prefect do not import it."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

import httpx
import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import create_engine, func, select
from sqlalchemy.exc import OperationalError, ProgrammingError

import followups
from followups.cli import main
from followups.cli_output import DB_MISSING, DB_UNREACHABLE, PREFECT_UNREACHABLE, SCHEMA_MISSING, error_line
from followups.db.models import Enrollment, Offer
from followups.db.session import session_scope
from support import FAST_SEQUENCE, new_owner, new_sequence, unique
from test_inputs import DEALS, SEQUENCES, rows

INSTALL_ROOT = str(Path(followups.__file__).resolve().parents[2])
LEAKS = re.compile(
    r"Traceback|File \"|\bSELECT\b|\bINSERT\b|\bUPDATE\b|psycopg|sqlalchemy|site-packages|sqlalche\.me|"
    r"Background on this error|\[SQL:|DETAIL:|" + re.escape(INSTALL_ROOT)
)
MISSING = 2**62  # a valid id that no row has


def all_rows() -> dict[str, int]:
    counts = rows()
    with session_scope() as session:
        for model in (Enrollment, Offer):
            counts[model.__tablename__] = session.scalar(select(func.count()).select_from(model))
    return counts


def assert_one_clean_line(code: int, out: str, err: str) -> str:
    assert code == 1, (code, out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert not LEAKS.search(err), err
    return lines[0]


def run_cli(*args: str, **env: str) -> subprocess.CompletedProcess:
    """`followups ARGS` in its own process (PYTHONSAFEPATH: the installed package, not the cwd)."""
    return subprocess.run(
        [sys.executable, "-m", "followups.cli", *args],
        env={**os.environ, "PYTHONSAFEPATH": "1", **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_commands_that_do_not_talk_to_prefect_do_not_import_it(db, tmp_path):
    owner = unique("fast")
    sequence_file = tmp_path / "seq.json"
    sequence_file.write_text(json.dumps({"name": "fast", "steps": FAST_SEQUENCE}))
    sequence_id = new_sequence(new_owner())
    commands = [
        ["--help"],
        ["sequences", "--help"],
        ["db", "upgrade"],
        ["users", "create", owner],
        ["tokens", "create", owner, "--label", "ci"],
        ["tokens", "revoke", owner],
        ["sequences", "list", "--owner", owner],
        ["sequences", "create", "-f", str(sequence_file), "--owner", owner],
        ["sequences", "show", str(sequence_id), "--owner", owner],
        ["sequences", "update", str(sequence_id), "-f", str(sequence_file), "--owner", owner],
        ["sequences", "delete", str(sequence_id), "--owner", owner],
        ["events", "--deal", "NO-SUCH-DEAL"],
        ["events", "--enrollment", str(MISSING)],
        ["status", str(2**63)],
    ]
    script = textwrap.dedent(
        f"""
        import sys
        from followups.cli import main
        for argv in {commands!r}:
            sys.argv = ["followups", *argv]
            try:
                main()
            except SystemExit:
                pass
            loaded = sorted(name for name in sys.modules if name == "prefect" or name.startswith("prefect."))
            assert not loaded, f"followups {{' '.join(argv)}} imported {{loaded[:3]}}"
        print("NO PREFECT")
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script], env={**os.environ, "PYTHONSAFEPATH": "1"}, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0 and "NO PREFECT" in result.stdout, result.stderr[-2000:]


def test_a_missing_database_names_db_upgrade(database_url):
    missing = database_url.rsplit("/", 1)[0] + f"/followups_missing_{uuid.uuid4().hex[:8]}"
    result = run_cli("sequences", "list", FOLLOWUPS_DATABASE_URL=missing)
    assert assert_one_clean_line(result.returncode, result.stdout, result.stderr) == f"error: {DB_MISSING}"


def test_missing_tables_name_db_upgrade(database_url):
    name = f"followups_empty_{uuid.uuid4().hex[:8]}"
    admin = create_engine(database_url.rsplit("/", 1)[0] + "/postgres", isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    try:
        result = run_cli("sequences", "list", FOLLOWUPS_DATABASE_URL=database_url.rsplit("/", 1)[0] + f"/{name}")
        assert assert_one_clean_line(result.returncode, result.stdout, result.stderr) == f"error: {SCHEMA_MISSING}"
    finally:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.dispose()


def test_unreachable_postgres_names_the_setting():
    result = run_cli("users", "create", "x", FOLLOWUPS_DATABASE_URL="postgresql+psycopg://postgres@127.0.0.1:9/nothing")
    line = assert_one_clean_line(result.returncode, result.stdout, result.stderr)
    assert line == f"error: {DB_UNREACHABLE}" and "FOLLOWUPS_DATABASE_URL" in line


def test_unreachable_prefect_names_prefect_api_url_and_stores_nothing(db):
    owner = unique("cli-owner")
    sequence_id = new_sequence(_user(owner))
    before = all_rows()
    deal = ["--deal", unique("D"), "--address", "1 Main St", "--seller-name", "Ann Lee", "--seller-email", "ann@example.com"]
    for args in (
        ["enroll", "--sequence", str(sequence_id), "--owner", owner, *deal],
        ["offer-sent", unique("offer"), "--via-event", "--owner", owner, *deal],
    ):
        result = run_cli(*args, PREFECT_API_URL="http://127.0.0.1:9/api")
        line = assert_one_clean_line(result.returncode, result.stdout, result.stderr)
        assert line == f"error: {PREFECT_UNREACHABLE}" and "PREFECT_API_URL" in line and "prefect server start" in line
    assert all_rows() == before


def _user(name: str) -> int:
    from followups.users import ensure_user

    with session_scope() as session:
        return ensure_user(session, name)


def test_integer_arguments_out_of_range_in_a_process(db):
    for args in (["status", str(2**63)], ["sequences", "show", "0"], ["events", "--enrollment", str(2**64)]):
        result = run_cli(*args)
        line = assert_one_clean_line(result.returncode, result.stdout, result.stderr)
        assert "must be between 1 and 9223372036854775807" in line


@pytest.mark.parametrize("args", [("status", "abc"), ("nope",), ("events", "--enrollment", "x"), ("pause",)])
def test_usage_errors_are_one_line_with_exit_1(args):
    result = run_cli(*args)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "--help" in lines[0], result.stderr


def test_no_arguments_shows_the_help():
    result = run_cli()
    assert "Usage" in result.stdout + result.stderr and "Traceback" not in result.stderr


# -- in-process: the bulk -------------------------------------------------------------------

BIG = str(2**63)


def _bad_cases(tmp_path: Path) -> list[tuple[list[str], str]]:
    nul_step = tmp_path / "nul.json"
    nul_step.write_text(json.dumps({"name": "x", "steps": [{"type": "SMS", "body": "a\x00b"}]}))
    long_description = tmp_path / "long.json"
    long_description.write_text(json.dumps({"name": "x", "description": "x" * 2_000_000, "steps": FAST_SEQUENCE}))
    zone_deal = tmp_path / "zone.yaml"
    zone_deal.write_text("seller_timezone: America\n")
    context_deal = tmp_path / "context.json"
    context_deal.write_text(json.dumps({"seller_timezone": "UTC", "context": {"notes": "x" * 1_000_000}}))
    deal = ["--deal", "D-1", "--address", "1 Main St", "--seller-name", "Ann", "--seller-email", "ann@example.com"]
    return [
        (["users", "create", "x" * 300], "name"),
        (["users", "create", "a\x00b"], "name"),
        (["tokens", "create", "x" * 300], "name"),
        (["tokens", "create", "someone", "--label", "a\x00"], "label"),
        (["tokens", "revoke", "a\x00"], "name"),
        (["sequences", "list", "--owner", "x" * 300], "name"),
        (["sequences", "create", "-f", str(nul_step)], "steps.0.body"),
        (["sequences", "create", "-f", str(long_description)], "description"),
        (["sequences", "show", BIG], "sequence_id"),
        (["sequences", "delete", BIG], "sequence_id"),
        (["sequences", "update", BIG, "-f", str(nul_step)], "sequence_id"),
        (["sequences", "update", "1", "-f", str(nul_step)], "steps.0.body"),
        (["status", BIG], "enrollment"),
        (["pause", BIG], "enrollment"),
        (["resume", "0"], "enrollment"),
        (["cancel", BIG], "enrollment"),
        (["events", "--enrollment", BIG], "enrollment"),
        (["events", "--deal", "a\x00"], "deal"),
        (["enroll", "--sequence", BIG, *deal], "sequence"),
        (["enroll", "--sequence", "1", "--deal-file", str(zone_deal), *deal], "deal.seller_timezone"),
        (["enroll", "--sequence", "1", "--deal-file", str(context_deal), *deal], "deal.context"),
        (["enroll", "--sequence", "1", *deal, "--seller-phone", "+1٥٠٣5550142"], "deal.seller_phone"),
        (["offer-sent", "offer with spaces", "--sequence", "1", *deal], "offer_id"),
        (["offer-sent", "o-1", "--sequence", "1", *deal, "--amount", "-5"], "offer_amount"),
        (["offer-sent", "o-1", "--sequence", "1", *deal, "--amount", "NaN"], "offer_amount"),
        (["offer-sent", "o-1", "--sequence", BIG, *deal], "sequence"),
    ]


def test_bad_arguments_and_files_are_one_clean_line_and_store_nothing(db, cli, tmp_path):
    _user("default")
    before = all_rows()
    for args, field in _bad_cases(tmp_path):
        code, out, err = cli(*args)
        line = assert_one_clean_line(code, out, err)
        assert f"{field}:" in line, (args[:2], line)
    assert all_rows() == before


def test_an_unexpected_error_shows_only_its_type(db, cli, monkeypatch):
    from followups import sequences

    def broken(*args, **kwargs):
        raise RuntimeError(f"SELECT secret FROM users -- {INSTALL_ROOT}/src/followups/sequences.py")

    monkeypatch.setattr(sequences, "list_sequences", broken)
    code, out, err = cli("sequences", "list", "--owner", unique("o"))
    line = assert_one_clean_line(code, out, err)
    assert line.startswith("error: unexpected error (RuntimeError)") and "secret" not in line


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (ProgrammingError("SELECT * FROM sequences", {}, psycopg.errors.UndefinedTable('relation "sequences" does not exist')), SCHEMA_MISSING),
        (OperationalError("connect", {}, psycopg.OperationalError('FATAL:  database "gone" does not exist')), DB_MISSING),
        (OperationalError("connect", {}, psycopg.OperationalError("connection refused")), DB_UNREACHABLE),
        (httpx.ConnectError("All connection attempts failed"), PREFECT_UNREACHABLE),
    ],
)
def test_error_lines_name_the_fix(exc, expected):
    assert error_line(exc) == expected
    wrapped = RuntimeError("while scheduling")
    wrapped.__cause__ = exc
    assert error_line(wrapped) == expected


CLI_SETTINGS = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
ARG_TEXT = st.one_of(
    st.sampled_from(["", " ", "a\x00", "x" * 300, "line\nbreak", "[bold]markup[/]", "[/oops]", "ok-name", "Zoë", "\ud800"]),
    st.text(max_size=20),
)


@CLI_SETTINGS
@given(name=ARG_TEXT, label=ARG_TEXT)
def test_any_user_or_token_argument_is_accepted_or_one_clean_line(db, cli, name, label):
    before = all_rows()
    code, out, err = cli("tokens", "create", name, "--label", label)
    if code == 0:
        assert out.strip().startswith("fu_")
    else:
        assert_one_clean_line(code, out, err)
        assert all_rows() == before


@CLI_SETTINGS
@given(data=SEQUENCES)
def test_any_sequence_file_is_created_or_one_clean_line(db, cli, tmp_path_factory, data):
    path = tmp_path_factory.mktemp("seq") / "seq.json"
    try:
        path.write_text(json.dumps(data, default=str))
    except ValueError:  # not JSON-able: no file can say it
        return
    owner = unique("hyp")
    before = all_rows()
    code, out, err = cli("sequences", "create", "-f", str(path), "--owner", owner, "--json")
    if code == 0:
        assert json.loads(out)["version"] == 1
    else:
        assert_one_clean_line(code, out, err)
        assert all_rows() == before  # the new owner is not left behind either


@CLI_SETTINGS
@given(deal=DEALS)
def test_any_deal_file_is_refused_in_one_clean_line_and_stores_nothing(db, cli, tmp_path_factory, deal):
    path = tmp_path_factory.mktemp("deal") / "deal.json"
    try:
        path.write_text(json.dumps(deal, default=str))
    except ValueError:
        return
    owner = unique("hyp")
    _user(owner)
    before = all_rows()
    # No such sequence: a valid deal ends at that check, an invalid one before it.
    code, out, err = cli("offer-sent", unique("offer"), "--owner", owner, "--sequence", str(MISSING), "--deal-file", str(path))
    line = assert_one_clean_line(code, out, err)
    assert line.startswith("error: deal") or line == f"error: sequence {MISSING} not found", line
    assert all_rows() == before


def test_a_yaml_alias_bomb_is_refused_in_one_line(db, cli, tmp_path):
    levels = ['a: &a ["x","x","x","x","x","x","x","x","x","x"]']
    for previous, name in zip("abcdefg", "bcdefgh"):
        levels.append(f"{name}: &{name} [{','.join([f'*{previous}'] * 10)}]")
    path = tmp_path / "bomb.yaml"
    path.write_text("name: bomb\n" + "\n".join(levels) + "\nsteps: [" + ",".join(["*h"] * 10) + "]\n")
    before = all_rows()
    code, out, err = cli("sequences", "create", "-f", str(path), "--owner", unique("o"))
    assert assert_one_clean_line(code, out, err) == "error: the input holds too many values"
    assert all_rows() == before
