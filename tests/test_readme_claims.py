"""What README.md promises a user, run as the user would run it."""

from __future__ import annotations

import pstats

import pytest
from conftest import run_cli


@pytest.mark.parametrize("spelled", [".", "proj/", "proj"])
def test_record_of_a_directory_names_the_profile_after_it(tmp_path, spelled):
    # README: `perfkit record` runs `python dir`; `python .` and a
    # tab-completed `proj/` are how that is typed. The default profile is named
    # after the directory, whichever way it is spelled (`.` made a hidden
    # `..prof`, `proj/` a `perfkit.prof`).
    proj = tmp_path / "proj"
    proj.mkdir()
    (proj / "__main__.py").write_text("def main():\n    return sum(range(100))\n\nmain()\n")
    cwd = proj if spelled == "." else tmp_path
    r = run_cli("record", spelled, cwd=cwd)
    assert r.returncode == 0, r.stderr
    made = sorted(p.name for p in cwd.iterdir() if p.name.endswith(".prof"))
    assert made == ["proj.prof"], (made, r.stderr)
    assert "proj.prof" in r.stderr
    rows = pstats.Stats(str(cwd / "proj.prof")).stats
    assert any(name == "main" and file.endswith("__main__.py") for file, _, name in rows)
