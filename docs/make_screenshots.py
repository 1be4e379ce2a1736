"""Make the docs' Prefect UI screenshots (docs/img/*.png) from the browser test's own setup:
a Prefect server with its UI on PostgreSQL, the stock runner, a sequence waiting in the middle.

    .venv/bin/python docs/make_screenshots.py

Needs what the tests need (PostgreSQL on 127.0.0.1:5432, Debian's chromium, the test extras).
Run logs reach the Prefect server only for this run (the tests keep them local for speed), so
the flow-run page shows the story the run logged.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    out = ROOT / "docs" / "img"
    env = {**os.environ, "FOLLOWUPS_SCREENSHOTS_DIR": str(out), "PYTHONSAFEPATH": "1"}
    code = subprocess.call(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "--rootdir", str(ROOT),
         str(ROOT / "tests" / "test_prefect_ui_browser.py")],
        env=env, cwd="/tmp",
    )
    if code == 0:
        for image in sorted(out.glob("*.png")):
            print(image.relative_to(ROOT))
    return code


if __name__ == "__main__":
    sys.exit(main())
