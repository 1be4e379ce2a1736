"""Test fixtures: a PostgreSQL database per test session (cloned from a migrated template),
Prefect's test harness as the API, a fake SendGrid/Twilio HTTP server, and a real runner.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import hypothesis
import pytest
from sqlalchemy import create_engine, text

# Every process of the suite (flow runs included) fails a call to Prefect made inside a database
# transaction: the product calls Prefect only after commit (followups.prefect_runs).
os.environ["FOLLOWUPS_FORBID_PREFECT_IN_TRANSACTION"] = "1"

from followups.providers.fake_server import FakeProviderServer  # noqa: E402
from followups.prefect_server import wait_for_deployment  # noqa: E402

# CI replays the same examples every run, so a red CI is a defect to fix, not a dice roll; run
# locally (no CI variable) hypothesis explores new examples each time.
hypothesis.settings.register_profile("ci", derandomize=True, database=None, print_blob=True)
hypothesis.settings.register_profile("dev", print_blob=True)
hypothesis.settings.load_profile("ci" if os.environ.get("CI") else "dev")

PG_ADMIN_URL = os.environ.get("FOLLOWUPS_TEST_ADMIN_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
MIGRATIONS = Path(__file__).resolve().parents[1] / "db" / "migrations" / "versions"

# Settings every process of the test session sees (runner subprocesses inherit them).
TEST_ENV = {
    "FOLLOWUPS_PROVIDER_MODE": "live",
    "FOLLOWUPS_SENDGRID_API_KEY": "SG.test-key",
    "FOLLOWUPS_TWILIO_ACCOUNT_SID": "ACtest",
    "FOLLOWUPS_TWILIO_AUTH_TOKEN": "twilio-test-token",
    "FOLLOWUPS_STEP_RETRY_BASE_SECONDS": "0.3",
    "FOLLOWUPS_STEP_RETRY_JITTER_FACTOR": "0.1",
    # Tests send at any hour; quiet hours and state laws have their own tests.
    "FOLLOWUPS_QUIET_HOURS_ENABLED": "false",
    "FOLLOWUPS_STATE_LAWS_ENABLED": "false",
    # Send rates that never throttle: many tests send at once from one account (the caps have
    # their own tests, which set their rates; the daily caps keep their defaults).
    "FOLLOWUPS_EMAIL_RATE_PER_SECOND": "1000",
    "FOLLOWUPS_SMS_RATE_PER_SECOND": "1000",
    # Tests make enrollments without runs and drive their flows themselves: the sweep must not
    # schedule those (tests/test_sweep.py backdates its own past this).
    "FOLLOWUPS_UNSCHEDULED_GRACE_SECONDS": "31536000",
    # No scheduled sweep: tests run the reconciler themselves, when they mean to.
    "FOLLOWUPS_RECONCILE_INTERVAL_SECONDS": "0",
    "PREFECT_RUNNER_POLL_FREQUENCY": "1",
    # Run logs stay out of the test server (load); the screenshot script turns them on.
    "PREFECT_LOGGING_TO_API_ENABLED": "true" if os.environ.get("FOLLOWUPS_SCREENSHOTS_DIR") else "false",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
}


def _admin_engine():
    return create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT", pool_pre_ping=True)


def _with_database(url: str, name: str) -> str:
    return url.rsplit("/", 1)[0] + "/" + name


def _template_name() -> str:
    digest = hashlib.sha256()
    for path in sorted(MIGRATIONS.glob("*.py")):
        digest.update(path.name.encode() + path.read_bytes())
    return f"followups_template_{digest.hexdigest()[:12]}"


def _ensure_template(engine) -> str:
    """Migrate a template database once per migration set; xdist workers share it."""
    from followups.db.migrate import upgrade

    name = _template_name()
    with engine.connect() as conn:
        conn.execute(text("SELECT pg_advisory_lock(727001)"))
        try:
            if not conn.scalar(text("SELECT 1 FROM pg_database WHERE datname = :n"), {"n": name}):
                building = f"{name}_building_{uuid.uuid4().hex[:6]}"
                conn.exec_driver_sql(f'CREATE DATABASE "{building}"')
                upgrade(_with_database(PG_ADMIN_URL, building))
                conn.exec_driver_sql(f'ALTER DATABASE "{building}" RENAME TO "{name}"')
        finally:
            conn.execute(text("SELECT pg_advisory_unlock(727001)"))
    return name


# Fault scenarios share the session's database and its default sending identity: at full scale
# their sends together pass the default daily caps (1,000 emails, 500 SMS per identity in 24 h),
# and what comes after rightly waits for tomorrow. Caps are not what they test (test_caps.py does).
FAULT_SCENARIO_CAPS = {"FOLLOWUPS_EMAIL_DAILY_CAP": "1000000", "FOLLOWUPS_SMS_DAILY_CAP": "1000000"}


@pytest.fixture(autouse=True, scope="module")
def _fault_scenarios_not_capped(request) -> Iterator[None]:
    """Module-scoped and autouse, so it is in place before a scenario's world starts executors."""
    marks = getattr(request.module, "pytestmark", [])
    if not any(getattr(mark, "name", None) == "faults" for mark in (marks if isinstance(marks, list) else [marks])):
        yield
        return
    from support import env_settings

    with env_settings(FAULT_SCENARIO_CAPS):
        yield


@pytest.fixture(scope="session")
def database_url() -> Iterator[str]:
    from followups.db.session import dispose_engines
    from followups.settings import reset_settings

    engine = _admin_engine()
    template = _ensure_template(engine)
    worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
    name = f"followups_test_{worker}_{uuid.uuid4().hex[:8]}"
    with engine.connect() as conn:
        conn.execute(text("SELECT pg_advisory_lock(727001)"))  # CREATE ... TEMPLATE needs it idle
        try:
            conn.exec_driver_sql(f'CREATE DATABASE "{name}" TEMPLATE "{template}"')
        finally:
            conn.execute(text("SELECT pg_advisory_unlock(727001)"))
    url = _with_database(PG_ADMIN_URL, name)
    saved = {k: os.environ.get(k) for k in [*TEST_ENV, "FOLLOWUPS_DATABASE_URL"]}
    os.environ.update(TEST_ENV)
    os.environ["FOLLOWUPS_DATABASE_URL"] = url
    reset_settings()
    dispose_engines()
    yield url
    dispose_engines()
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    reset_settings()
    with engine.connect() as conn:
        conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    engine.dispose()


@pytest.fixture(scope="session")
def fake_providers(database_url: str) -> Iterator[FakeProviderServer]:
    from followups.settings import reset_settings

    server = FakeProviderServer().start()
    os.environ["FOLLOWUPS_SENDGRID_BASE_URL"] = server.url
    os.environ["FOLLOWUPS_TWILIO_BASE_URL"] = server.url
    reset_settings()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def prefect_api(fake_providers: FakeProviderServer, tmp_path_factory) -> Iterator[str]:
    """A real Prefect server on its own PostgreSQL database, shared by the session's tests."""
    from prefect_servers import pointed_at, prefect_server

    worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
    # With its UI: the browser test opens the session's runs in it.
    with prefect_server(tmp_path_factory.mktemp("prefect-api"), name=worker, ui=True) as url, pointed_at(url):
        yield url


def _drop_event_emitter() -> None:
    if "prefect.events.worker" in sys.modules:
        from prefect.events.worker import EventsWorker

        EventsWorker.drain_all(timeout=10, at_exit=False)


@pytest.fixture(autouse=True, scope="module")
def _fresh_event_emitter() -> Iterator[None]:
    """Prefect keeps one event emitter per process, bound to the API it first emitted to: after
    a module with a Prefect server of its own (a fault scenario, test_stock_runner), the next
    module's events would go to a server that is gone, and that module's own server would never
    see its events. Each module starts without one and drops the one it made."""
    _drop_event_emitter()
    yield
    _drop_event_emitter()


@pytest.fixture(autouse=True)
def _no_prefect_call_in_a_transaction() -> Iterator[None]:
    """On again for each test, whatever the previous one did to it."""
    from followups import prefect_runs

    prefect_runs.forbid_calls_in_transaction(True)
    yield


@pytest.fixture
def db(database_url: str) -> str:
    """The test database, without Prefect (for tests of pure data logic)."""
    return database_url


RUNNER_LOGS: list[Path] = []


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """A failed test that used the session's runner reports the end of the runner's output: a
    run that never started is explained there, and the log is gone once the session ends."""
    outcome = yield
    report = outcome.get_result()
    if report.failed and call.when == "call" and "sequence_runner" in getattr(item, "fixturenames", ()):
        for log in RUNNER_LOGS:
            lines = log.read_text(errors="replace").splitlines() if log.exists() else []
            report.sections.append(("session runner (last 60 lines)", "\n".join(lines[-60:])))


# The executor of the session's flow runs: the fast worker (flow runs on threads of one
# long-lived process), or with FOLLOWUPS_TEST_EXECUTOR=stock, `followups serve` (Prefect's stock
# runner, a process per flow run: ~2 CPU-s each, which made it most of the suite's time).
# tests/test_stock_runner.py runs a slice of the same tests on the stock runner either way.
SESSION_EXECUTORS = {
    "fast": ["-m", "followups.worker", "--concurrency", "4", "--poll", "0.5"],
    "stock": ["-m", "followups.cli", "serve", "--limit", "4"],
}


@contextlib.contextmanager
def executor_process(prefect_api: str, log: Path, kind: str) -> Iterator[subprocess.Popen]:
    """An executor serving the product's deployments on `prefect_api`, until the block ends."""
    # PYTHONSAFEPATH: `python -m` must import the installed package, not a checkout in the cwd.
    env = {**os.environ, "PREFECT_API_URL": prefect_api, "PYTHONSAFEPATH": "1"}
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [sys.executable, *SESSION_EXECUTORS[kind]],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    RUNNER_LOGS.append(log)
    try:
        # The deployments are registered one after another: wait for the last one too.
        wait_for_deployment("follow-up-sequence/followups", timeout=60)
        wait_for_deployment("cancel-enrollment/followups", timeout=60)
        yield process
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
        RUNNER_LOGS.remove(log)
        keep = os.environ.get("FOLLOWUPS_TEST_RUNNER_LOG")
        if keep:  # for debugging: where the runner's output goes
            Path(keep).write_bytes(log.read_bytes())


@pytest.fixture(scope="session")
def sequence_runner(prefect_api: str, tmp_path_factory) -> Iterator[subprocess.Popen]:
    """The session's executor (see SESSION_EXECUTORS) in its own process."""
    kind = os.environ.get("FOLLOWUPS_TEST_EXECUTOR", "fast")
    with executor_process(prefect_api, tmp_path_factory.mktemp("runner") / f"{kind}.log", kind) as process:
        yield process


@pytest.fixture(scope="module")
def client(database_url: str):
    """The HTTP API in-process, without Prefect (modules that need it define their own)."""
    from api_support import make_client

    with make_client() as client:
        yield client


@pytest.fixture
def user(database_url: str):
    """A new API user with a token."""
    from api_support import new_api_user

    return new_api_user()


@pytest.fixture
def cli(monkeypatch, capsys):
    """`followups ARGS` in-process through its real entry point: (exit code, stdout, stderr)."""
    from followups.cli import main

    def run(*args: str) -> tuple[int, str, str]:
        monkeypatch.setattr(sys, "argv", ["followups", *args])
        code = 0
        try:
            main()
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        out, err = capsys.readouterr()
        return code, out, err

    return run


@pytest.fixture(scope="module")
def signer(database_url: str):
    """A SendGrid webhook signing key, installed as the app's public key for the module."""
    from api_support import SendGridSigner
    from followups.settings import reset_settings

    signer = SendGridSigner()
    os.environ["FOLLOWUPS_SENDGRID_WEBHOOK_PUBLIC_KEY"] = signer.public_key
    reset_settings()
    yield signer
    os.environ.pop("FOLLOWUPS_SENDGRID_WEBHOOK_PUBLIC_KEY", None)
    reset_settings()
