"""Bad input to the command line and to perfkit.load: one line on stderr that
names the file and says what is wrong, exit code 2, no traceback, no panic."""

from __future__ import annotations

import ctypes
import json
import marshal
import os
import pstats
import random
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import perfkit
import pytest
from conftest import PROGRAMS_DIR, no_crash_noise, perfkit_command, program, run_cli, run_cprofile

# What the one line must say, per kind of bad file.
PROBLEMS = {
    "missing": r"no such file|not found|does not exist",
    "empty": r"empty",
    "truncated-cprofile": r"truncat|incomplete|ends? (early|before)|unexpected end",
    "truncated-perfkit": r"truncat|incomplete|ends? (early|before)|unexpected end",
    "truncated-trailer": r"truncat|incomplete|ends? (early|before)|unexpected end|damaged|corrupt",
    "random-bytes": r"not a profile|unrecognized|unknown format|damaged|corrupt",
    "text-file": r"not a profile|unrecognized|unknown format",
    "directory": r"directory",
}


@pytest.fixture(scope="module")
def good_files(tmp_path_factory):
    """A cProfile file, and a perfkit file made from it by ``perfkit export``
    (so that no test here depends on the recording hooks)."""
    d = tmp_path_factory.mktemp("good")
    prog = program("mixed")
    prog.main()
    cp = run_cprofile(prog.main)
    cp.dump_stats(str(d / "cprofile.prof"))
    r = run_cli("export", d / "cprofile.prof", "-o", d / "perfkit.prof")
    assert r.returncode == 0, r.stderr
    assert b"PERFKIT\x1a" in (d / "perfkit.prof").read_bytes()
    return d


def make_bad(kind: str, d: Path, good: Path) -> Path:
    path = d / f"{kind}.prof"
    if kind == "missing":
        return path
    if kind == "empty":
        path.write_bytes(b"")
    elif kind == "truncated-cprofile":
        data = (good / "cprofile.prof").read_bytes()
        path.write_bytes(data[: len(data) // 2])
    elif kind == "truncated-perfkit":
        data = (good / "perfkit.prof").read_bytes()
        path.write_bytes(data[: len(data) // 2])
    elif kind == "truncated-trailer":
        data = (good / "perfkit.prof").read_bytes()
        start = data.rindex(b"PERFKIT\x1a")
        path.write_bytes(data[: start + (len(data) - start) // 2])
    elif kind == "random-bytes":
        rng = random.Random(20240519)
        data = bytes(rng.randrange(256) for _ in range(4096))
        if data[0] in (0x7B, 0xFB):
            data = b"\x01" + data[1:]
        path.write_bytes(data)
    elif kind == "text-file":
        path = d / "notes.txt"
        path.write_text("This is a plain text file, not a profile.\nIt has two lines of words only.\n")
    elif kind == "directory":
        path = d / "adir.prof"
        path.mkdir()
    else:
        raise AssertionError(kind)
    return path


def assert_one_line_error(r: subprocess.CompletedProcess, path, problem: str = ""):
    assert r.returncode == 2, f"exit {r.returncode}, stderr: {r.stderr!r}"
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got:\n{r.stderr}"
    assert str(path) in lines[0], f"the error does not name {path}: {lines[0]!r}"
    if problem:
        assert re.search(problem, lines[0], re.IGNORECASE), (
            f"the error does not say {problem!r}: {lines[0]!r}"
        )
    assert no_crash_noise(r.stderr) == []


@pytest.mark.parametrize("kind", list(PROBLEMS))
def test_stats_on_bad_file(good_files, tmp_path, kind):
    path = make_bad(kind, tmp_path, good_files)
    r = run_cli("stats", path)
    assert_one_line_error(r, path, PROBLEMS[kind])
    assert r.stdout == ""


@pytest.mark.parametrize("ext", ["txt", "speedscope.json", "prof"])
@pytest.mark.parametrize("kind", list(PROBLEMS))
def test_export_on_bad_file(good_files, tmp_path, kind, ext):
    path = make_bad(kind, tmp_path, good_files)
    out = tmp_path / f"out.{ext}"
    r = run_cli("export", path, "-o", out)
    assert_one_line_error(r, path, PROBLEMS[kind])
    assert not out.exists()


@pytest.mark.parametrize("kind", list(PROBLEMS))
def test_load_on_bad_file(good_files, tmp_path, kind):
    path = make_bad(kind, tmp_path, good_files)
    allowed = (perfkit.ProfileError, OSError) if kind in ("missing", "directory") else perfkit.ProfileError
    with pytest.raises(allowed) as info:
        perfkit.load(path)
    message = str(info.value)
    assert "\n" not in message.strip()
    assert str(path) in message
    assert re.search(PROBLEMS[kind], message, re.IGNORECASE), message


def test_good_files_are_fine(good_files):
    for name in ("cprofile.prof", "perfkit.prof"):
        r = run_cli("stats", good_files / name, "--limit", "3")
        assert r.returncode == 0, r.stderr
        assert "function calls" in r.stdout


def test_record_missing_script(tmp_path):
    missing = tmp_path / "nosuch.py"
    r = run_cli("record", "-o", tmp_path / "x.prof", missing, cwd=tmp_path)
    assert_one_line_error(r, missing)
    assert not (tmp_path / "x.prof").exists()


def test_usage_errors_exit_2():
    for args in (["stats"], ["export", "x.prof"], ["record"], ["frobnicate"]):
        r = run_cli(*args)
        assert r.returncode == 2, (args, r.stderr)
        assert no_crash_noise(r.stderr) == []


# -- read-only directories ---------------------------------------------------------------


def _without_dac_override():
    """In the child, before exec: root loses the capability that ignores file
    modes, so a directory of mode 0555 is read-only for it too."""
    if os.geteuid() == 0:
        libc = ctypes.CDLL(None, use_errno=True)
        pr_capbset_drop, cap_dac_override = 24, 1
        if libc.prctl(pr_capbset_drop, cap_dac_override, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")


@pytest.fixture
def readonly_dir():
    base = Path(tempfile.mkdtemp(prefix="perfkit-ro-"))
    ro = base / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        probe = subprocess.run(
            [sys.executable, "-c", f"open({str(ro / 'probe')!r}, 'w')"],
            preexec_fn=_without_dac_override,
            capture_output=True,
            check=False,
        )
        assert probe.returncode != 0, "could not make a read-only directory for the test"
        yield ro
    finally:
        ro.chmod(0o755)
        shutil.rmtree(base)


def _run_ro(*args, cwd=None):
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)
    return subprocess.run(
        [*perfkit_command(), *map(str, args)],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        preexec_fn=_without_dac_override,
        check=False,
    )


@pytest.mark.parametrize("ext", ["prof", "txt", "speedscope.json"])
def test_export_into_readonly_directory(good_files, readonly_dir, ext):
    out = readonly_dir / f"out.{ext}"
    r = _run_ro("export", good_files / "perfkit.prof", "-o", out)
    assert_one_line_error(r, out)
    assert list(readonly_dir.iterdir()) == []


@pytest.mark.version_sensitive
def test_record_into_readonly_directory(readonly_dir, tmp_path):
    out = readonly_dir / "out.prof"
    r = _run_ro("record", "-o", out, PROGRAMS_DIR / "cli_exit.py", cwd=tmp_path)
    assert r.returncode == 2, r.stderr
    assert str(out) in r.stderr and re.search(
        r"cannot write|permission denied|read-only", r.stderr, re.IGNORECASE
    )
    assert no_crash_noise(r.stderr) == []
    assert list(readonly_dir.iterdir()) == []


@pytest.mark.version_sensitive
def test_dump_stats_into_readonly_directory(readonly_dir):
    out = readonly_dir / "api.prof"
    code = (
        "import perfkit\n"
        "p = perfkit.Profiler()\n"
        "p.runcall(sorted, [3, 1, 2])\n"
        "try:\n"
        f"    p.dump_stats({str(out)!r})\n"
        "except (perfkit.ProfileError, OSError) as e:\n"
        "    print(type(e).__name__ + ': ' + str(e))\n"
        "else:\n"
        "    print('written')\n"
    )
    r = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        preexec_fn=_without_dac_override,
    )
    assert r.returncode == 0, r.stderr
    assert str(out) in r.stdout and "written" not in r.stdout
    assert len(r.stdout.strip().splitlines()) == 1
    assert list(readonly_dir.iterdir()) == []


@pytest.mark.parametrize("seconds", [100.0, 0.0])
def test_a_foreign_file_with_many_paths_into_a_wide_function_is_read(tmp_path, seconds):
    # helper-50: 2**19 paths into a function of 20,000 callees made the
    # inferred tree cost nodes x callees; `perfkit stats` on this 1 MB file
    # ran for minutes (pstats reads it at once). With all times zero nothing
    # is too small to expand, so only the expansion's own bound stops it.
    layers = [[("m.py", 10 + 2 * k + j, f"L{k}_{j}") for j in range(2)] for k in range(19)]
    root, hub = ("m.py", 1, "root"), ("m.py", 5, "hub")
    table = {root: (1, 1, 0.0, seconds, {})}
    for k, layer in enumerate(layers):
        for f in layer:
            table[f] = (
                1,
                1,
                0.0,
                seconds,
                {p: (1, 1, 0.0, seconds) for p in ([root] if k == 0 else layers[k - 1])},
            )
    table[hub] = (1, 1, 0.0, seconds, {p: (1, 1, 0.0, seconds) for p in layers[-1]})
    calls = 0 if seconds else 1
    for i in range(20_000):
        table[("m.py", 1000 + i, f"leaf{i}")] = (calls, calls, 0.0, 0.0, {hub: (calls, calls, 0.0, 0.0)})
    path = tmp_path / "wide.prof"
    path.write_bytes(marshal.dumps(table))
    r = run_cli("stats", path, "-s", "name", "-l", "5", timeout=60)
    assert r.returncode == 0, r.stderr
    expected = pstats.Stats(str(path))
    assert f"{expected.total_calls} function calls" in r.stdout
    loaded = perfkit.load(path)
    assert len(loaded.stats_dict()) == len(table)


@pytest.mark.parametrize("ext", [".svg", ".txt"])
def test_a_tree_too_deep_for_collapsed_stacks_is_refused_in_one_line(tmp_path, ext):
    # helper-50: collapsed stacks repeat each path on its line, so a chain
    # 50,000 frames deep (a 1.6 MB speedscope file) is ~14 GB of text: the
    # export died on allocation. The .html export and the viewer take it.
    n = 50_000
    src = tmp_path / "deep.speedscope.json"
    events = [{"type": "O", "frame": 0, "at": i} for i in range(n)]
    src.write_text(
        json.dumps(
            {
                "shared": {"frames": [{"name": "f", "file": "m.py", "line": 1}]},
                "profiles": [
                    {
                        "type": "evented",
                        "unit": "microseconds",
                        "startValue": 0,
                        "endValue": n + 1,
                        "events": events,
                    }
                ],
            }
        )
    )
    out = tmp_path / f"out{ext}"
    r = run_cli("export", src, "-o", out, timeout=60)
    assert r.returncode == 2, r.stderr
    assert r.stderr.count("\n") == 1 and "too deep for collapsed stacks" in r.stderr, r.stderr
    assert not out.exists()
    assert run_cli("export", src, "-o", tmp_path / "out.html", timeout=60).returncode == 0


def test_a_device_or_pipe_that_opens_like_no_profile_is_refused_at_once(tmp_path):
    # helper-50: `perfkit stats /dev/zero` read on until memory ran out.
    r = run_cli("stats", "/dev/zero", timeout=30)
    assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr
    assert "not a profile" in r.stderr and "perfkit reads" in r.stderr


@pytest.mark.parametrize(
    ("data", "where"),
    [(b"a;b 10\na;\xff 5\n", "0xff at offset 9, line 2"), (b"caf\xe9;b 10\n", "0xe9 at offset 3, line 1")],
)
def test_collapsed_stacks_with_a_byte_that_is_not_utf8_say_so(tmp_path, data, where):
    # It was "not a profile file ... found bytes 0x61 0x3b ..."; then, on a
    # later line, advice to record again (which makes the same bytes).
    path = tmp_path / "stacks.txt"
    path.write_bytes(data)
    r = run_cli("stats", path)
    assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr
    assert f"not UTF-8: byte {where}" in r.stderr and "iconv" in r.stderr, r.stderr


def test_an_endless_stream_of_text_is_refused_once_its_first_lines_are_in(tmp_path):
    # helper-55: `yes | perfkit stats /dev/stdin` read up to the size limit.
    yes = subprocess.Popen(["yes"], stdout=subprocess.PIPE)
    try:
        r = subprocess.run(
            [*perfkit_command(), "stats", "/dev/stdin"],
            check=False,
            stdin=yes.stdout,
            capture_output=True,
            text=True,
            timeout=60,
        )
    finally:
        yes.kill()
        yes.wait()
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "not a profile" in r.stderr, r.stderr


@pytest.mark.parametrize(
    ("stats", "problem"),
    [
        # An int too large for a count is said to be one, not "a int" as if it were not an int.
        (
            {("f.py", 1, "x"): (2**70, 1, 0.0, 0.0, {})},
            r"cc of f\.py:1\(x\) is the int 1180591620717411303424,",
        ),
        ({("f.py", 1, "x"): (2**200, 1, 0.0, 0.0, {})}, r"is an int of more than 38 digits,"),
        ({("f.py", 1, "x"): (1, 1, 0.0, ..., {})}, r"ct of f\.py:1\(x\) is an Ellipsis, expected a time"),
    ],
    ids=["count-past-u64", "count-past-i128", "time-ellipsis"],
)
def test_a_pstats_dict_with_a_value_out_of_range_says_which_and_what(tmp_path, stats, problem):
    path = tmp_path / "odd.prof"
    path.write_bytes(marshal.dumps(stats))
    assert_one_line_error(run_cli("stats", path), path, problem)
