"""The Prefect UI, read in a real browser (Debian's headless Chromium driven by Playwright): a
waiting enrollment's run shows its name, the "Waiting" state and the timeline artifact, and the
runs link `followups status` prints lists exactly that enrollment's runs, the scheduled one
included.

With FOLLOWUPS_SCREENSHOTS_DIR set, the same pages are saved as the docs' screenshots
(`python docs/make_screenshots.py`).
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterTags

from followups.control import get_enrollment
from followups.flows.story import artifact_key
from followups.identity import database_tag
from followups.prefect_links import flow_run_link, runs_list_link
from followups.prefect_runs import run_name
from support import reach_wait, wait_for

CHROMIUM = os.environ.get("FOLLOWUPS_CHROMIUM", "/usr/bin/chromium")
SCREENSHOTS = os.environ.get("FOLLOWUPS_SCREENSHOTS_DIR")
NO_CHROMIUM = f"no Chromium at {CHROMIUM}: `apt-get install chromium` as root (.ci/run does when it runs this test)"
# Without Chromium a developer's run skips these (before any server starts); CI and the
# screenshots must have it, so there the browser fixture fails instead.
pytestmark = pytest.mark.skipif(
    not shutil.which(CHROMIUM) and not (os.environ.get("CI") or SCREENSHOTS), reason=f"{NO_CHROMIUM}; CI is not set"
)


@pytest.fixture(scope="module")
def browser():
    if not shutil.which(CHROMIUM):
        pytest.fail(NO_CHROMIUM)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield browser
        browser.close()


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1440, "height": 1000}, color_scheme="light")
    page = context.new_page()
    yield page
    context.close()


def _shot(page, name: str) -> None:
    if SCREENSHOTS:
        Path(SCREENSHOTS).mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(Path(SCREENSHOTS) / name), full_page=False)


def _runs_of(enrollment_id: int) -> list:
    with get_client(sync_client=True) as client:
        return client.read_flow_runs(
            flow_run_filter=FlowRunFilter(tags=FlowRunFilterTags(all_=[database_tag(), f"enrollment:{enrollment_id}"]))
        )


def test_a_waiting_run_reads_like_the_sequence(sequence_runner, prefect_api, page):
    deal, enrollment_id, _ = reach_wait(3600)
    ui = prefect_api.removesuffix("/api")
    # The wait's event commits before the run reports its final "Waiting" state.
    [done] = wait_for(lambda: [run for run in _runs_of(enrollment_id) if run.state and run.state.name == "Waiting"],
                      timeout=30, what="the run to end Waiting in Prefect")

    page.goto(flow_run_link(done.id, ui))
    page.get_by_text(run_name(enrollment_id, deal.external_id, 0)).first.wait_for(timeout=30_000)
    page.get_by_text("Waiting", exact=True).first.wait_for(timeout=30_000)
    if SCREENSHOTS:  # the run's logs reach the server only then (tests/conftest.py)
        page.get_by_text(re.compile(r"WAIT step 1 .*next run 'deal .* from step 1'")).first.wait_for(timeout=30_000)
    _shot(page, "flow-run.png")

    page.get_by_text("Artifacts", exact=True).first.click()
    key = artifact_key(enrollment_id)
    page.get_by_text(key).first.wait_for(timeout=30_000)
    page.get_by_text(key).first.click()
    # The table itself: the sent email's row and the wait that holds the sequence; beside it the
    # run's state message says when the next step is.
    for cell in ("done", "waiting", "pending"):
        page.get_by_text(cell, exact=True).first.wait_for(timeout=30_000)
    page.get_by_text(re.compile(r"next step at \d{4}-\d\d-\d\d")).first.wait_for(timeout=30_000)
    _shot(page, "timeline-artifact.png")


def test_the_status_runs_link_shows_every_run_of_the_enrollment(sequence_runner, prefect_api, page, cli):
    _, enrollment_id, _ = reach_wait(3 * 86400)  # its next run is three days away
    ui = prefect_api.removesuffix("/api")
    os.environ["FOLLOWUPS_PREFECT_UI_URL"] = ui
    from followups.settings import reset_settings

    reset_settings()
    try:
        code, out, err = cli("status", str(enrollment_id))
    finally:
        os.environ.pop("FOLLOWUPS_PREFECT_UI_URL")
        reset_settings()
    assert code == 0, err
    printed = re.search(r"^Prefect runs: (\S+)$", out, re.MULTILINE).group(1)
    link = runs_list_link(get_enrollment(enrollment_id), database_tag(), ui)
    assert printed.split("&startDate")[0] == link.split("&startDate")[0] == f"{ui}/runs?type=range"
    assert printed.endswith(f"&tag={database_tag()}&tag=enrollment:{enrollment_id}")

    runs = wait_for(lambda: (found := _runs_of(enrollment_id)) and {run.state.name for run in found if run.state}
                    == {"Waiting", "Scheduled"} and found, timeout=30, what="the Waiting and the Scheduled run")
    assert len(runs) == 2
    page.goto(printed)
    page.get_by_text(re.compile(r"^2 runs?$")).first.wait_for(timeout=30_000)
    for run in runs:
        page.get_by_text(run.name).first.wait_for(timeout=30_000)
    _shot(page, "runs-list.png")
