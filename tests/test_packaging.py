"""What pip installs: one version everywhere, and the license."""

from __future__ import annotations

import importlib.metadata
import subprocess
import sys
from pathlib import Path

import perfkit
import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_one_version_everywhere():
    """The installed distribution's version (pip's), perfkit.__version__ and
    `perfkit --version` (the extension's, from Cargo.toml) are one: pyproject
    takes its version from Cargo.toml instead of repeating it, so a release
    that bumps one cannot ship the other."""
    tomllib = pytest.importorskip("tomllib")
    installed = importlib.metadata.version("perfkit")
    cli = subprocess.run(
        [sys.executable, "-m", "perfkit", "--version"], check=True, capture_output=True, text=True
    ).stdout.split()
    assert cli == ["perfkit", installed]
    assert perfkit.__version__ == installed
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert "version" not in project and "version" in project["dynamic"]
    cargo = tomllib.loads((ROOT / "Cargo.toml").read_text())
    assert cargo["workspace"]["package"]["version"] == installed


def test_license_ships_with_the_package():
    """The MIT license the metadata names travels with the wheel and the sdist
    (its text is the condition of the license)."""
    dist = importlib.metadata.distribution("perfkit")
    assert dist.metadata["License"] == "MIT"
    assert dist.metadata.get_all("License-File") == ["LICENSE"]
    shipped = dist.read_text("licenses/LICENSE")
    assert shipped is not None and shipped.startswith("MIT License")
    assert shipped == (ROOT / "LICENSE").read_text()
