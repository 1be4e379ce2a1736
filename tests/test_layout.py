"""The layout explains itself: every folder with code is an installed package, no product module
is over ~400 lines, and no module shadows a standard-library name."""

from __future__ import annotations

import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
SETUPTOOLS = PYPROJECT["tool"]["setuptools"]
MAX_LINES = 400


def _package_folders() -> dict[str, Path]:
    """Every folder holding Python code, with the import name the package map gives it."""
    mapping = {name: ROOT / folder for name, folder in SETUPTOOLS["package-dir"].items()}
    found: dict[str, Path] = {}
    for name, folder in mapping.items():
        for init in folder.rglob("__init__.py"):
            relative = init.parent.relative_to(folder).parts
            found[".".join((name, *relative))] = init.parent
    return found


def _modules() -> list[Path]:
    return [path for folder in _package_folders().values() for path in folder.glob("*.py")]


def test_every_folder_with_code_is_an_installed_package():
    missing = sorted(set(_package_folders()) - set(SETUPTOOLS["packages"]))
    assert missing == [], f"add these to [tool.setuptools] packages in pyproject.toml: {missing}"
    for name, folder in SETUPTOOLS["package-dir"].items():
        stray = [p.name for p in (ROOT / folder).glob("*.py")] and not (ROOT / folder / "__init__.py").exists()
        assert not stray, f"{folder} has modules but no __init__.py"


def test_the_top_level_the_user_asked_for_is_there():
    for name in ("pyproject.toml", "prefect.yaml", "flows", "tasks", "deployments", "db", "tests"):
        assert (ROOT / name).exists(), name


# A long module usually holds more than one concept; these hold one, and split would scatter it.
ONE_CONCEPT = {
    "src/followups/lifecycle/machine.py": "the enrollment machine: its state, commands and rule read as one table",
}


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(ROOT)))
def test_a_module_over_400_lines_holds_one_concept(path: Path):
    if "migrations" in path.parts or str(path.relative_to(ROOT)) in ONE_CONCEPT:
        return
    assert len(path.read_text().splitlines()) <= MAX_LINES, "split it by concept, or name its one concept in ONE_CONCEPT"


def test_no_module_is_named_like_a_standard_library_module():
    clashes = sorted(
        str(path.relative_to(ROOT)) for path in _modules() if path.stem in sys.stdlib_module_names and path.stem != "__init__"
    )
    assert clashes == []
