"""What README.md promises a user, run as the user would run it."""

from __future__ import annotations

import marshal
import os
import pstats
import subprocess
import sys
import threading

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


def _table_rows(text: str) -> list[str]:
    """The table's rows, without their times (which differ from run to run)."""
    lines = text.splitlines()
    header = next(i for i, line in enumerate(lines) if line.split()[:1] == ["ncalls"])
    return [
        f"{fields[0]} {' '.join(fields[5:])}"
        for fields in (line.split() for line in lines[header + 1 :])
        if fields
    ]


@pytest.mark.parametrize("output", ["/dev/null", "fifo"])
def test_record_sort_prints_the_table_when_the_profile_goes_to_a_device_or_fifo(tmp_path, output):
    # README: `-s` is cProfile's -s, "the table too, on stdout", and an -o of
    # /dev/null or a FIFO is written through. The table was read back from
    # the -o file: /dev/null gave an EOFError traceback (exit 1), a FIFO
    # waited for a writer that never came.
    (tmp_path / "prog.py").write_text(
        "def leaf(i):\n    return i * 2\n\ndef main():\n    return [leaf(i) for i in range(50)]\n\nmain()\n"
    )
    received = []
    if output == "fifo":
        os.mkfifo(tmp_path / "fifo")

        def drain():
            with open(tmp_path / "fifo", "rb") as f:
                received.append(f.read())

        reader = threading.Thread(target=drain, daemon=True)
        reader.start()
    r = run_cli("record", "-o", output, "-s", "calls", "prog.py", cwd=tmp_path, timeout=30)
    assert r.returncode == 0, r.stderr
    assert "Traceback" not in r.stderr, r.stderr
    c = subprocess.run(
        [sys.executable, "-m", "cProfile", "-s", "calls", "prog.py"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    assert "Ordered by: call count" in r.stdout
    pk_rows = [row for row in _table_rows(r.stdout) if "_lsprof" not in row]
    cp_rows = [row for row in _table_rows(c.stdout) if "_lsprof" not in row]
    assert sorted(pk_rows) == sorted(cp_rows), (r.stdout, c.stdout)
    if output == "fifo":
        reader.join(10)
        assert received and received[0], "nothing came through the FIFO"
        # (a .prof's head is pstats' marshalled dictionary)
        assert any(name == "leaf" for _, _, name in marshal.loads(received[0]))


@pytest.mark.parametrize("output", ["my run.prof", "/dev/null"])
def test_record_suggests_a_stats_command_that_runs(tmp_path, output):
    # After writing, record names the `perfkit stats` command to run next: it
    # must run as printed (a name with a space was not quoted), and it is not
    # suggested for what cannot be read back (/dev/null, which README lets -o name).
    (tmp_path / "prog.py").write_text("def main():\n    return sum(range(100))\n\nmain()\n")
    r = run_cli("record", "-o", output, "prog.py", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    if output == "/dev/null":
        assert "perfkit stats" not in r.stderr, r.stderr
        return
    suggested = r.stderr.split("Hot spots: ", 1)[1].strip()
    assert suggested.startswith("perfkit stats ")
    ran = subprocess.run(
        ["bash", "-c", suggested],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env=dict(os.environ, PATH=f"{os.path.dirname(sys.executable)}:{os.environ['PATH']}"),
    )
    assert ran.returncode == 0, ran.stderr
    assert "prog.py:1(main)" in ran.stdout


def test_profile_refuses_a_bad_sort_key_before_anything_runs():
    # perfkit.profile(print_stats=N, sort=KEY) sorts as pstats does. A key
    # pstats refuses ('cum' is ambiguous there) was found only when the first
    # call ended: the function had run, and every call raised pstats'
    # KeyError instead of returning its result.
    import perfkit

    with pytest.raises(KeyError):
        pstats.Stats().sort_stats("cum")
    ran = []
    with pytest.raises(ValueError, match="'cum'"):

        @perfkit.profile(print_stats=3, sort="cum")
        def f():
            ran.append(1)
            return 42

    assert not ran
    with pytest.raises(ValueError, match="'cum'"):
        perfkit.profile("never.prof", sort="cum")
    # What pstats takes passes: an unambiguous prefix, and its old integer keys.
    pstats.Stats().sort_stats("cumtim")
    for key in ("cumtim", -1, 2):

        @perfkit.profile(print_stats=1, sort=key)
        def g():
            return 42

        assert g() == 42
