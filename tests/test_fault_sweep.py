"""Faults at random moments, side by side with what Python and cProfile do:
Ctrl-C (SIGINT to the process group, as a terminal sends it) while
`perfkit record` is between stages, and what must survive it."""

from __future__ import annotations

import os
import pstats
import signal
import subprocess
import sys
import time

from conftest import perfkit_command

# perfkit's own files, which must never appear in what a user sees on Ctrl-C
# once the program has been handed control (the import of perfkit itself is
# Python's start-up, as for any program).
OWN = ("perfkit/cli.py", "perfkit/profiler.py", "panicked")


def _start(command: list[str], cwd) -> subprocess.Popen:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env.pop("PYTHONPATH", None)
    # A session of its own, so that os.killpg reaches it as a terminal's Ctrl-C would.
    return subprocess.Popen(
        command,
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def _finish(proc: subprocess.Popen) -> str:
    try:
        return proc.communicate(timeout=60)[1]
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def test_ctrl_c_in_the_programs_excepthook_keeps_the_profile_and_reports_as_python(tmp_path):
    """A second Ctrl-C while the program's sys.excepthook (a crash
    reporter, say) runs: Python says "Error in sys.excepthook", prints the
    original exception and keeps its exit status. perfkit lost the profile,
    printed nothing and exited 130."""
    (tmp_path / "prog.py").write_text(
        "import sys, time\n"
        "def work():\n"
        "    return sum(range(1000))\n"
        "def hook(*exc_info):\n"
        "    print('hook', flush=True)\n"
        "    time.sleep(30)\n"
        "sys.excepthook = hook\n"
        "work()\n"
        "raise ValueError('boom')\n"
    )
    out = tmp_path / "out.prof"
    ended = {}
    for name, command in (
        ("python", [sys.executable, "prog.py"]),
        ("perfkit", [*perfkit_command(), "record", "-o", str(out), "prog.py"]),
    ):
        proc = _start(command, tmp_path)
        assert proc.stdout.readline() == "hook\n"
        os.killpg(proc.pid, signal.SIGINT)
        stderr = _finish(proc)
        ended[name] = (proc.returncode, stderr)
    status, stderr = ended["perfkit"]
    assert status == ended["python"][0], stderr
    for said in (
        "Error in sys.excepthook:",
        "KeyboardInterrupt",
        "Original exception was:",
        "ValueError: boom",
    ):
        assert said in ended["python"][1]
        assert said in stderr, stderr
    assert not [own for own in OWN if own in stderr], stderr
    assert "perfkit: profile written to" in stderr
    assert any(k[2] == "work" for k in pstats.Stats(str(out)).stats)


def test_ctrl_c_before_the_program_runs_ends_as_python_ends(tmp_path):
    """Ctrl-C while the script is still being compiled (a large one): Python
    and cProfile are killed by SIGINT after printing KeyboardInterrupt (a
    shell loop stops). perfkit printed nothing and exited 130, which a shell
    loop takes for a program that handled the Ctrl-C itself."""
    # Compiling this takes seconds (Python notices a signal only once it is
    # compiled): every run below is interrupted during it.
    line = "x = [" + ", ".join(map(str, range(40))) + "]\n"
    (tmp_path / "big.py").write_text(line * 40_000 + "print('ran')\n")
    ended = {}
    for name, command in (
        ("python", [sys.executable, "big.py"]),
        ("cProfile", [sys.executable, "-m", "cProfile", "-o", str(tmp_path / "cp.prof"), "big.py"]),
        ("perfkit", [*perfkit_command(), "record", "-o", str(tmp_path / "pk.prof"), "big.py"]),
    ):
        proc = _start(command, tmp_path)
        time.sleep(0.5)
        os.killpg(proc.pid, signal.SIGINT)
        stderr = _finish(proc)
        ended[name] = (proc.returncode, stderr.strip().splitlines()[-1:])
        if name == "perfkit":
            assert not [own for own in OWN if own in stderr], stderr
    assert ended["python"] == (-signal.SIGINT, ["KeyboardInterrupt"])
    assert ended["perfkit"] == ended["cProfile"] == ended["python"]
    assert not (tmp_path / "pk.prof").exists() and not (tmp_path / "cp.prof").exists()
