"""The ``perfkit`` command, run as a subprocess: record, stats, export."""

from __future__ import annotations

import contextlib
import functools
import io
import json
import marshal
import os
import pstats
import re
import shlex
import signal
import stat
import subprocess
import sys
import textwrap
import time
import urllib.request
from pathlib import Path

import perfkit
import pytest
from conftest import (
    PROGRAMS_DIR,
    assert_same_counts,
    gc_disabled,
    no_crash_noise,
    perfkit_command,
    program,
    run_cli,
    run_cprofile,
    summarize,
)

sensitive = pytest.mark.version_sensitive


def script(name: str) -> str:
    return str(PROGRAMS_DIR / name)


@contextlib.contextmanager
def recording_in_background(*args, cwd, stdout=subprocess.PIPE):
    """``perfkit record ARGS`` running while the block runs; killed if still running after it."""
    proc = subprocess.Popen(
        [*perfkit_command(), "record", *map(str, args)],
        cwd=cwd,
        stdout=stdout,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def file_rows(path, file: str):
    """Counts of the rows of ``path`` that belong to ``file``."""
    s = summarize(pstats.Stats(str(path)).stats)
    return s.only(lambda k: os.path.abspath(k[0]) == os.path.abspath(file))


def test_perfkit_command_exists():
    cmd = perfkit_command()
    assert Path(cmd[0]).exists()
    r = subprocess.run([*cmd, "--help"], capture_output=True, text=True, timeout=60, check=False)
    assert r.returncode == 0, r.stderr
    for sub in ("record", "stats", "export"):
        assert sub in r.stdout


def test_demo_profiles_parallelizes_and_caches(tmp_path):
    # The README's first command: the whole main job, end to end.
    r = run_cli("demo", cwd=tmp_path, timeout=300)
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert "Hot spots (own time):" in out and "ncalls  tottime" in out
    assert "The hottest function is word_score()" in out
    assert re.search(
        r"perfkit\.Parallel on \d+ worker processes [\d.]+ s: [\d.]+x (faster|slower) \(same results\)", out
    )
    assert re.search(r"Cached with perfkit\.Memory: run_pipeline_parallel\(\) .* s saved", out)
    assert "Next: perfkit view perfkit-demo.prof" in out
    stats = pstats.Stats(str(tmp_path / "perfkit-demo.prof")).stats
    assert any(k[2] == "word_score" and v[1] > 1000 for k, v in stats.items())
    assert [p.name for p in tmp_path.iterdir()] == ["perfkit-demo.prof"]  # the cache went to a temp dir


def test_demo_says_slower_rather_than_a_speedup_under_one(monkeypatch):
    from perfkit import demo

    assert demo.speedup_words(1.84) == "1.84x faster"
    assert demo.speedup_words(0.5) == "2.00x slower"
    monkeypatch.setattr(demo.os, "getloadavg", lambda: (5.0, 1.0, 1.0))
    assert "load average of 5.0" in demo.busy_cpus_hint(2)
    monkeypatch.setattr(demo.os, "getloadavg", lambda: (2.5, 1.0, 1.0))
    assert demo.busy_cpus_hint(2) is None  # the demo's own two workers and caller


def test_demo_writes_its_profile_to_the_temp_dir_where_it_cannot_write(tmp_path, monkeypatch, capsys):
    # A read-only checkout (here: the name taken by a directory) must not end
    # the demo in a traceback. The slow steps are not what this checks.
    from perfkit import demo

    monkeypatch.setattr(demo, "parallel_step", lambda docs, name: 1.0)
    monkeypatch.setattr(demo, "cache_step", lambda docs, step: 0.0)
    monkeypatch.setattr(demo, "make_corpus", lambda n, _make=demo.make_corpus: _make(20))
    temp = tmp_path / "temp"
    temp.mkdir()
    monkeypatch.setattr(demo.tempfile, "gettempdir", lambda: str(temp))
    work = tmp_path / "work"
    (work / demo.DEMO_PROFILE).mkdir(parents=True)
    monkeypatch.chdir(work)
    assert demo.main() == 0
    out = capsys.readouterr().out
    assert f"cannot write {demo.DEMO_PROFILE} here" in out
    assert f"Next: perfkit view {temp / demo.DEMO_PROFILE}" in out
    assert pstats.Stats(str(temp / demo.DEMO_PROFILE)).stats


# -- record ------------------------------------------------------------------------------


@sensitive
def test_record_script_gets_its_own_argv(tmp_path):
    report, out = tmp_path / "report.json", tmp_path / "out.prof"
    target = script("cli_argv.py")
    r = run_cli(
        "record",
        "-o",
        out,
        target,
        "-o",
        "x",
        "--clock",
        "cpu",
        "--",
        "last",
        env={"PK_REPORT": str(report)},
        cwd=tmp_path,
    )
    assert r.returncode == 0, r.stderr
    seen = json.loads(report.read_text())
    assert seen == {"argv": [target, "-o", "x", "--clock", "cpu", "--", "last"], "name": "__main__"}
    assert not (tmp_path / "x").exists()
    # The same script under python -m cProfile: the script's rows agree.
    cp_out = tmp_path / "c.prof"
    subprocess.run(
        [sys.executable, "-m", "cProfile", "-o", str(cp_out), target, "-o", "x"],
        env={**os.environ, "PK_REPORT": str(report)},
        check=True,
        cwd=tmp_path,
    )
    cp, pk = file_rows(cp_out, target), file_rows(out, target)
    assert {k[2] for k in cp.funcs} >= {"main", "branch", "leaf", "<module>"}
    assert_same_counts(cp, pk)
    assert perfkit.load(out).exact is True
    assert no_crash_noise(r.stderr) == []


@sensitive
def test_record_default_output_name(tmp_path):
    target = tmp_path / "myscript.py"
    target.write_text("def f():\n    return 1\n\nf()\n")
    r = run_cli("record", target.name, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    out = tmp_path / "myscript.prof"
    assert out.exists()
    assert any(k[2] == "f" for k in pstats.Stats(str(out)).stats)
    assert "myscript.prof" in r.stderr


def _module(tmp_path):
    mods = tmp_path / "mods"
    mods.mkdir()
    (mods / "pkmod.py").write_text(
        "import json, os, sys\n"
        "def helper(n):\n    return list(range(n))\n"
        "helper(3)\n"
        "with open(os.environ['PK_REPORT'], 'w') as fp:\n"
        "    json.dump({'argv': sys.argv, 'name': __name__}, fp)\n"
    )
    return mods


@sensitive
def test_record_module(tmp_path):
    mods = _module(tmp_path)
    report, out = tmp_path / "report.json", tmp_path / "mod.prof"
    r = run_cli(
        "record",
        "-o",
        out,
        "-m",
        "pkmod",
        "-o",
        "y",
        "z",
        env={"PK_REPORT": str(report), "PYTHONPATH": str(mods)},
        cwd=tmp_path,
    )
    assert r.returncode == 0, r.stderr
    seen = json.loads(report.read_text())
    assert seen["name"] == "__main__"
    assert seen["argv"][1:] == ["-o", "y", "z"]
    assert seen["argv"][0].endswith("pkmod.py")
    assert any(k[2] == "helper" for k in pstats.Stats(str(out)).stats)


@sensitive
def test_record_module_from_current_directory(tmp_path):
    """Like ``python -m``: a module in the current directory is found."""
    mods = _module(tmp_path)
    report = tmp_path / "report.json"
    r = run_cli(
        "record", "-o", tmp_path / "mod.prof", "-m", "pkmod", env={"PK_REPORT": str(report)}, cwd=mods
    )
    assert r.returncode == 0, r.stderr
    assert json.loads(report.read_text())["name"] == "__main__"


def test_record_output_is_where_the_user_meant_though_the_program_changes_directory(tmp_path):
    # cProfile takes -o's absolute path before the program runs; so does record.
    (tmp_path / "sub").mkdir()
    prog = tmp_path / "chdir.py"
    prog.write_text("import os\n\ndef work():\n    return sum(range(100))\n\nos.chdir('sub')\nwork()\n")
    r = run_cli("record", "-o", "rel.prof", prog.name, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert not (tmp_path / "sub" / "rel.prof").exists()
    assert any(k[2] == "work" for k in pstats.Stats(str(tmp_path / "rel.prof")).stats)
    r = run_cli("record", prog.name, cwd=tmp_path)  # the default name, likewise
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "chdir.prof").exists() and not (tmp_path / "sub" / "chdir.prof").exists()


@sensitive
def test_record_waits_for_the_programs_threads_as_python_does(tmp_path):
    # The interpreter waits for non-daemon threads before it exits; the
    # profile must hold what they did after the main code returned.
    prog = tmp_path / "late.py"
    prog.write_text(
        "import threading, time\n\n"
        "def nap():\n    time.sleep(0.01)\n\n"
        "def worker():\n    for _ in range(20):\n        nap()\n\n"
        "threading.Thread(target=worker).start()\n"
        "threading.Thread(target=nap, daemon=True).start()\n"
    )
    out = tmp_path / "late.prof"
    r = run_cli("record", "-o", out, prog.name, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    naps = [v for k, v in pstats.Stats(str(out)).stats.items() if k[2] == "nap"]
    assert naps and naps[0][1] >= 20, naps  # the worker's 20 (the daemon's may be cut off, as in Python)


@sensitive
@pytest.mark.parametrize("builtins", [True, False])
def test_record_times_a_thread_running_when_the_program_ends(tmp_path, builtins):
    # A thread still in a call when the main code returns goes on being
    # recorded: the call keeps its time and its callees stay under it. The
    # main thread's own wait for it (threading._shutdown) is perfkit's work,
    # not the program's, and is not a row, as under cProfile.
    prog = tmp_path / "running.py"
    prog.write_text(
        "import threading, time\n\n"
        "def worker():\n    time.sleep(0.2)\n    time.sleep(0.1)\n\n"
        "threading.Thread(target=worker).start()\n"
    )
    out = tmp_path / "running.prof"
    args = ["record", "-o", out] + ([] if builtins else ["--no-builtins"]) + [prog.name]
    r = run_cli(*args, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    stats = pstats.Stats(str(out)).stats
    (worker,) = [v for k, v in stats.items() if k[2] == "worker"]
    assert worker[1] == 1 and worker[3] >= 0.25, worker
    if builtins:
        (sleep,) = [v for k, v in stats.items() if "time.sleep" in k[2]]
        assert sleep[1] == 2 and [k[2] for k in sleep[4]] == ["worker"], sleep
    assert not [k for k in stats if k[2] in ("_shutdown", "<built-in method _thread._shutdown>")]


def test_record_runs_a_directory_refuses_an_unwritable_output_first_and_prints_syntax_errors_as_python(
    tmp_path,
):
    # `python dir` runs dir/__main__.py with the directory on the path, which
    # stays there (and __main__ stays the program's) for the program's threads
    # still running when its main code ends.
    app = tmp_path / "app"
    app.mkdir()
    (app / "helper.py").write_text("VALUE = 7\n")
    (app / "__main__.py").write_text(
        "import sys, threading, time\n"
        "print('ran', sys.argv[1:], __name__, sys.path[0] == __file__.rsplit('/', 1)[0])\n"
        "def late():\n    time.sleep(0.2)\n    import helper\n"
        "    print('late', helper.VALUE, sys.modules['__main__'].__file__ == __file__, flush=True)\n"
        "threading.Thread(target=late).start()\n"
    )
    r = run_cli("record", "-o", tmp_path / "d.prof", "app", "x", cwd=tmp_path)
    plain = subprocess.run(
        [sys.executable, "app", "x"], cwd=tmp_path, capture_output=True, text=True, check=False
    )
    assert r.returncode == plain.returncode == 0, r.stderr
    assert r.stdout == plain.stdout == "ran ['x'] __main__ True\nlate 7 True\n", (r.stdout, plain.stdout)
    assert (tmp_path / "d.prof").exists()
    # A device or a link is a fine output (perfkit writes through them), a
    # directory is not; /dev/null stays /dev/null.
    r = run_cli("record", "-o", "/dev/null", "app", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert stat.S_ISCHR(os.stat("/dev/null").st_mode)
    r = run_cli("record", "-o", tmp_path, "app", cwd=tmp_path)
    assert r.returncode == 2 and "it is a directory" in r.stderr and "ran" not in r.stdout
    # An output that cannot be written is one line before the program runs.
    r = run_cli("record", "-o", tmp_path / "missing" / "x.prof", "app", cwd=tmp_path)
    assert r.returncode == 2 and "ran" not in r.stdout
    assert (
        r.stderr.strip()
        == f"perfkit: error: cannot write the profile to {tmp_path / 'missing' / 'x.prof'}: no such directory"
    )
    # A syntax error is printed as python prints it: no traceback through perfkit.
    (tmp_path / "syn.py").write_text("def (\n")
    r = run_cli("record", "-o", tmp_path / "s.prof", "syn.py", cwd=tmp_path)
    plain = subprocess.run(
        [sys.executable, "syn.py"], cwd=tmp_path, capture_output=True, text=True, check=False
    )
    assert r.returncode == plain.returncode == 1
    assert r.stderr.strip() == plain.stderr.strip()


def test_record_missing_module_is_one_line_and_writes_nothing(tmp_path):
    for target in ("no_such_module_pk", "json.no_such_submodule"):
        r = run_cli("record", "-o", tmp_path / "m.prof", "-m", target, cwd=tmp_path)
        assert r.returncode == 2, r.stderr
        assert r.stderr.strip().startswith(f"perfkit: error: cannot run -m {target}:"), r.stderr
        assert len(r.stderr.strip().splitlines()) == 1, r.stderr
        assert not (tmp_path / "m.prof").exists()
    # A module that exists but fails to import something itself is the program's error.
    (tmp_path / "badimp.py").write_text("import no_such_module_pk_inner\n")
    r = run_cli(
        "record", "-o", tmp_path / "b.prof", "-m", "badimp", cwd=tmp_path, env={"PYTHONPATH": str(tmp_path)}
    )
    assert r.returncode == 1
    assert "No module named 'no_such_module_pk_inner'" in r.stderr
    assert "runpy" not in r.stderr  # the traceback starts at the program, as `python -m` prints it
    assert (tmp_path / "b.prof").exists()


def test_record_sort_prints_cprofiles_table_and_python_m_perfkit_runs(tmp_path):
    # `python -m cProfile -s KEY` prints pstats' table (directories stripped);
    # record -s does too, besides writing the file. A bad key is refused
    # before the program runs. And `python -m perfkit` is the command.
    out = tmp_path / "s.prof"
    r = run_cli("record", "-s", "tottime", "-o", out, script("cli_sleep.py"), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    buf = io.StringIO()
    stats = pstats.Stats(str(out), stream=buf)
    stats.files = []  # (cProfile's -s prints the profiler's table: no file's line heads it)
    stats.strip_dirs().sort_stats("tottime").print_stats()
    want = buf.getvalue().splitlines()
    assert r.stdout.splitlines() == want
    assert any("cli_sleep.py" in line and "(nap)" in line for line in want)
    r = run_cli("record", "-s", "bogus", "-o", tmp_path / "never.prof", script("cli_sleep.py"), cwd=tmp_path)
    assert r.returncode == 2 and "bogus" in r.stderr and r.stderr.count("\n") == 1, r.stderr
    assert not (tmp_path / "never.prof").exists()
    r = subprocess.run(
        [sys.executable, "-m", "perfkit", "stats", str(out), "--limit", "3"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert r.returncode == 0, r.stderr
    assert "function calls" in r.stdout and "Ordered by: cumulative time" in r.stdout


@sensitive
def test_record_ends_as_python_does_and_keeps_its_own_work_out(tmp_path):
    # helper-35's cases. An executor left open: the interpreter's exit hooks
    # wake its threads (record used to join them and wait for ever).
    (tmp_path / "tpe.py").write_text(
        "from concurrent.futures import ThreadPoolExecutor\n"
        "ex = ThreadPoolExecutor(2)\nprint(ex.submit(pow, 2, 10).result())\n"
    )
    r = run_cli("record", "-o", tmp_path / "tpe.prof", "tpe.py", cwd=tmp_path, timeout=30)
    assert r.returncode == 0 and r.stdout.strip() == "1024", r.stderr
    # perfkit's own work (printing the traceback, waiting for threads) is not
    # in the program's profile.
    (tmp_path / "boom.py").write_text("def f():\n    raise ValueError('boom')\n\nf()\n")
    r = run_cli("record", "-o", tmp_path / "boom.prof", "boom.py", cwd=tmp_path)
    assert r.returncode == 1 and "ValueError: boom" in r.stderr
    files = {k[0] for k in pstats.Stats(str(tmp_path / "boom.prof")).stats}
    assert not [f for f in files if "perfkit" in f or f.endswith("traceback.py")], files
    # A program that closes stdout still gets its profile.
    (tmp_path / "closeout.py").write_text("import sys\nprint('bye')\nsys.stdout.close()\n")
    r = run_cli("record", "-s", "0", "-o", tmp_path / "c.prof", "closeout.py", cwd=tmp_path)
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr
    pstats.Stats(str(tmp_path / "c.prof"))
    # pstats' old integer sort keys, as -s takes them.
    for key in ("-1", "0", "1", "2"):
        r = run_cli("record", "-s", key, "-o", tmp_path / "k.prof", "boom.py", cwd=tmp_path)
        assert r.returncode == 1 and "function calls" in r.stdout and "KeyError" not in r.stderr, (
            key,
            r.stderr,
        )
    # A module that itself fails through runpy ran: its profile is kept.
    (tmp_path / "launcher.py").write_text(
        "import runpy, sys\nprint('launched')\nrunpy.run_module(sys.argv[1], run_name='__main__')\n"
    )
    r = run_cli("record", "-o", tmp_path / "l.prof", "-m", "launcher", "no_such_mod_pk", cwd=tmp_path)
    assert r.returncode == 1 and "launched" in r.stdout and "No module named" in r.stderr, r.stderr
    assert (tmp_path / "l.prof").exists()
    # -s into a closed pipe: cProfile's exit code (EPIPE), no traceback.
    cmd = " ".join(
        map(
            shlex.quote,
            [*perfkit_command(), "record", "-s", "calls", "-o", str(tmp_path / "p.prof"), "tpe.py"],
        )
    )
    r = subprocess.run(
        ["bash", "-c", f"set -o pipefail; {cmd} | head -1"],
        check=False,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 32 and "Traceback" not in r.stderr, r.stderr


@sensitive
def test_record_reports_the_end_before_waiting_and_writes_the_profile_whatever_the_wait(tmp_path):
    # helper-36's cases. The traceback comes before the wait for the
    # program's threads, as Python prints it: here the thread waits for it.
    marker = tmp_path / "seen"
    (tmp_path / "crash.py").write_text(
        "import os, sys, threading, time\n"
        f"marker = {str(marker)!r}\n"
        "def waiter():\n"
        "    deadline = time.time() + 10\n"
        "    while not os.path.exists(marker):\n"
        "        if time.time() > deadline:\n"
        "            print('the thread gave up waiting', file=sys.stderr, flush=True)\n"
        "            return\n"
        "        time.sleep(0.01)\n"
        "threading.Thread(target=waiter).start()\n"
        "sys.excepthook = lambda t, e, tb: print('custom crash report:', t.__name__, e, file=sys.stderr)\n"
        "raise ValueError('boom')\n"
    )
    with recording_in_background(
        "-o", tmp_path / "crash.prof", "crash.py", cwd=tmp_path, stdout=None
    ) as proc:
        first = proc.stderr.readline()  # blocks until something is printed: the thread is still waiting
        marker.write_text("")
        rest = proc.communicate(timeout=60)[1]
    # ... through the program's own sys.excepthook.
    assert first.strip() == "custom crash report: ValueError boom", first + rest
    assert proc.returncode == 1
    assert any(k[2] == "waiter" for k in pstats.Stats(str(tmp_path / "crash.prof")).stats)
    # A signal handler's exception during the wait: reported as Python does,
    # and the profile is still written.
    (tmp_path / "term.py").write_text(
        "import signal, sys, threading\n"
        "signal.signal(signal.SIGTERM, lambda *a: sys.exit(3))\n"
        "threading.Thread(target=threading.Event().wait, daemon=False).start()\n"
        "print('ready', flush=True)\n"
    )
    with recording_in_background("-o", tmp_path / "term.prof", "term.py", cwd=tmp_path) as proc:
        assert proc.stdout.readline().strip() == "ready"
        time.sleep(0.3)
        proc.send_signal(signal.SIGTERM)
        err = proc.communicate(timeout=60)[1]
    assert "SystemExit: 3" in err, err
    # (3.13's threading._shutdown, in C, prints the traceback itself, as under plain python.)
    assert ("Exception ignored" in err) == (sys.version_info < (3, 13)), err
    assert "perfkit/cli.py" not in err, err
    pstats.Stats(str(tmp_path / "term.prof"))
    # threading._shutdown looked up when the program has ended (gevent's
    # monkey-patching replaces it, and the original then waits for ever).
    (tmp_path / "patched.py").write_text(
        "import threading\n"
        "original = threading._shutdown\n"
        "def patched():\n"
        "    print('patched shutdown ran', flush=True)\n"
        "    original()\n"
        "threading._shutdown = patched\n"
    )
    r = run_cli("record", "-o", tmp_path / "p.prof", "patched.py", cwd=tmp_path, timeout=30)
    assert r.returncode == 0 and "patched shutdown ran" in r.stdout, r.stderr


@sensitive
def test_record_no_builtins_and_clocks(tmp_path):
    target = script("cli_sleep.py")
    wall, cpu, py = tmp_path / "wall.prof", tmp_path / "cpu.prof", tmp_path / "py.prof"
    for out, extra in ((wall, ["--clock", "wall"]), (cpu, ["--clock", "cpu"]), (py, ["--no-builtins"])):
        r = run_cli("record", "-o", out, *extra, target, cwd=tmp_path)
        assert r.returncode == 0, r.stderr

    def nap_ct(path):
        stats = pstats.Stats(str(path)).stats
        (row,) = [v for k, v in stats.items() if k[2] == "nap"]
        return row[3]

    assert nap_ct(wall) >= 0.19
    assert nap_ct(cpu) < 0.05
    py_stats = pstats.Stats(str(py)).stats
    assert [k for k in py_stats if k[0] == "~"] == []
    assert {"nap", "compute", "<genexpr>"} <= {k[2] for k in py_stats}
    assert any(k[0] == "~" for k in pstats.Stats(str(wall)).stats)


@sensitive
def test_record_program_that_raises(tmp_path):
    out = tmp_path / "raise.prof"
    r = run_cli("record", "-o", out, script("cli_raise.py"), cwd=tmp_path)
    assert r.returncode == 1
    assert "ValueError: boom from cli_raise" in r.stderr
    assert "panicked" not in r.stderr
    stats = pstats.Stats(str(out)).stats
    rows = {k[2]: v for k, v in stats.items() if k[0] == script("cli_raise.py")}
    assert rows["inner"][:2] == (1, 1) and rows["outer"][:2] == (1, 1)


@sensitive
def test_record_program_that_exits_3(tmp_path):
    out = tmp_path / "exit.prof"
    r = run_cli("record", "-o", out, script("cli_exit.py"), cwd=tmp_path)
    assert r.returncode == 3, r.stderr
    assert no_crash_noise(r.stderr) == []
    assert any(k[2] == "work" for k in pstats.Stats(str(out)).stats)


def interrupted_status(command: list[str], cwd) -> tuple[int, str]:
    """The exit status and stderr of ``command`` (a cli_loop.py run) after a Ctrl-C."""
    proc = subprocess.Popen(command, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "ready"
        time.sleep(0.3)
        proc.send_signal(signal.SIGINT)
        _stdout, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return proc.returncode, stderr


@sensitive
@pytest.mark.parametrize("launcher", ["perfkit", "python -m perfkit"])
def test_record_ctrl_c(tmp_path, launcher):
    out = tmp_path / "int.prof"
    # Python ends a program that Ctrl-C stopped by SIGINT itself, not by
    # exiting 130: a shell loop or make that runs it stops too.
    # And only once the interpreter has exited: the program's atexit handlers have run.
    (tmp_path / "loop_atexit.py").write_text(
        "import atexit, runpy, sys\n"
        "atexit.register(lambda: print('atexit handler ran', file=sys.stderr))\n"
        f"runpy.run_path({script('cli_loop.py')!r}, run_name='__main__')\n"
    )
    python_status, python_err = interrupted_status([sys.executable, "loop_atexit.py"], tmp_path)
    assert python_status == -signal.SIGINT and "atexit handler ran" in python_err
    command = perfkit_command() if launcher == "perfkit" else [sys.executable, "-m", "perfkit"]
    status, stderr = interrupted_status([*command, "record", "-o", str(out), "loop_atexit.py"], tmp_path)
    assert status == python_status, stderr
    assert "atexit handler ran" in stderr
    assert stderr.count("KeyboardInterrupt") == 1, stderr
    assert "perfkit: profile written to" in stderr
    for own in ("perfkit/cli.py", "perfkit/profiler.py", "panicked"):
        assert own not in stderr, f"perfkit's own traceback on Ctrl-C:\n{stderr}"
    stats = pstats.Stats(str(out)).stats
    ticks = [v for k, v in stats.items() if k[2] == "tick"]
    assert ticks and ticks[0][1] > 1000
    assert perfkit.load(out).exact is True


@sensitive
def test_record_a_ctrl_c_while_the_profile_is_written_does_not_lose_it(tmp_path):
    """A large profile takes seconds to write; an impatient second Ctrl-C
    then raised KeyboardInterrupt in perfkit's own code: the profile was
    lost if it came before the write, the report and the program's exit
    status after it. Written into a FIFO, the write waits for its reader:
    the Ctrl-C comes while it waits."""
    fifo = tmp_path / "out.prof"
    os.mkfifo(fifo)
    (tmp_path / "prog.py").write_text("def work():\n    return sum(range(1000))\nwork()\n")
    proc = subprocess.Popen(
        [*perfkit_command(), "record", "-o", str(fifo), "prog.py"],
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        time.sleep(1.0)  # the program has ended; perfkit waits for the FIFO's reader
        assert proc.poll() is None
        proc.send_signal(signal.SIGINT)
        time.sleep(0.2)
        with open(fifo, "rb") as reader:
            written = reader.read()
        stderr = proc.communicate(timeout=60)[1]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, stderr  # the program's
    assert "perfkit: profile written to" in stderr and "Traceback" not in stderr, stderr
    copy = tmp_path / "copy.prof"
    copy.write_bytes(written)
    assert any(k[2] == "work" for k in pstats.Stats(str(copy)).stats)


_SIGINT_SAID = "print(repr(signal.getsignal(signal.SIGINT)), file=out)"


@pytest.mark.parametrize("sigint", ["SIG_DFL", "SIG_IGN"], ids=["ctrl-c-default", "started-ignoring-it"])
def test_record_a_child_started_while_the_profile_is_written_takes_ctrl_c_as_under_python(tmp_path, sigint):
    """While the profile is written the program's daemon threads still run;
    a process one of them started then inherited SIGINT ignored (SIG_IGN
    survives exec, and Python then installs no Ctrl-C handler), and ignored
    Ctrl-C for its whole life. It must take it as a child that Python
    starts takes it, and a fork (which keeps its parent's handlers) must have
    the program's; both whether perfkit was started with SIGINT at its
    default or ignored (as a shell starts a command in the background)."""
    launch = [
        sys.executable,
        "-c",
        f"import os, signal, sys; signal.signal(signal.SIGINT, signal.{sigint}); os.execv(sys.argv[1], sys.argv[1:])",
    ]
    child = f"import signal, sys; out = sys.stdout; {_SIGINT_SAID}"
    (tmp_path / "prog.py").write_text(
        "import os, signal, subprocess, sys, threading, time\n"
        f"with open('program.txt', 'w') as out:\n    {_SIGINT_SAID}\n"
        "def later():\n"
        "    time.sleep(0.5)  # the program has ended: perfkit is writing its profile\n"
        "    with open('child.txt', 'w') as out:\n"
        f"        subprocess.run([sys.executable, '-c', {child!r}], stdout=out)\n"
        "    if os.fork() == 0:\n"
        "        with open('forked.txt', 'w') as out:\n"
        f"            {_SIGINT_SAID}\n"
        "        os._exit(0)\n"
        "threading.Thread(target=later, daemon=True).start()\n"
    )
    anchor = subprocess.run(
        [*launch, sys.executable, "-c", child], capture_output=True, text=True, check=True
    )
    fifo = tmp_path / "out.prof"
    os.mkfifo(fifo)
    proc = subprocess.Popen(
        [*launch, *perfkit_command(), "record", "-o", str(fifo), "prog.py"],
        cwd=tmp_path,
        stderr=subprocess.PIPE,
        text=True,
    )
    said = {name: tmp_path / f"{name}.txt" for name in ("program", "child", "forked")}
    try:
        deadline = time.monotonic() + 30
        # (the write waits for its reader meanwhile)
        while not all(f.exists() and f.read_text() for f in said.values()):
            assert time.monotonic() < deadline and proc.poll() is None
            time.sleep(0.05)
        with open(fifo, "rb") as reader:
            reader.read()
        stderr = proc.communicate(timeout=60)[1]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, stderr
    assert said["child"].read_text() == anchor.stdout
    assert said["forked"].read_text() == said["program"].read_text()
    assert ("SIG_IGN" in anchor.stdout) == (sigint == "SIG_IGN")


@sensitive
def test_record_sigterm_ends_the_program_there_as_under_cprofile(tmp_path):
    """SIGTERM, unhandled, kills the program on the spot under both profilers:
    the status is the signal's and neither leaves a file (README: send SIGINT
    to stop a program with its profile written)."""
    ended = {}
    for name, command in (
        ("cProfile", [sys.executable, "-m", "cProfile", "-o"]),
        ("perfkit", [*perfkit_command(), "record", "-o"]),
    ):
        d = tmp_path / name
        d.mkdir()
        proc = subprocess.Popen(
            [*command, str(d / "out.prof"), script("cli_loop.py")], cwd=d, stdout=subprocess.PIPE, text=True
        )
        try:
            assert proc.stdout.readline().strip() == "ready"
            time.sleep(0.2)
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            proc.stdout.close()
        ended[name] = (proc.returncode, sorted(f.name for f in d.iterdir()))
    assert ended["perfkit"] == ended["cProfile"] == (-signal.SIGTERM, [])


@sensitive
def test_record_killed_leaves_no_partial_file(tmp_path):
    """Killed at any moment, record leaves no output or a complete one."""
    loaded = 0
    # Fine steps over the first 30 ms after "ready" (the program ends and the
    # profile is written in that window here), then later moments.
    delays = [i * 0.002 for i in range(16)] + [0.05, 0.1, 0.3]
    for i, delay in enumerate(delays):
        d = tmp_path / f"run{i}"
        d.mkdir()
        proc = subprocess.Popen(
            [*perfkit_command(), "record", "-o", str(d / "out.prof"), script("cli_many.py"), "2"],
            cwd=d,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        try:
            assert proc.stdout.readline().strip() == "ready"
            time.sleep(delay)
            proc.kill()
        finally:
            proc.wait()
            proc.stdout.close()
        for f in d.iterdir():
            assert f.name == "out.prof", f"left behind: {f.name}"
            pstats.Stats(str(f))
            perfkit.load(f)
            loaded += 1
    # The last attempts give the program time to finish: a kill must not be the only outcome tested.
    assert loaded >= 1


@sensitive
def test_record_pickles_functions_of_the_script(tmp_path):
    r = run_cli("record", "-o", tmp_path / "p.prof", script("cli_pickle.py"), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "pickled ok" in r.stdout


# -- stats -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def profiles(tmp_path_factory):
    """A perfkit and a cProfile file of the same program."""
    d = tmp_path_factory.mktemp("profiles")
    prog = program("mixed")
    prog.main()
    cp = run_cprofile(prog.main)
    cp.dump_stats(str(d / "cprofile.prof"))
    pk = perfkit.Profiler()
    with gc_disabled():
        pk.runcall(prog.main)
    pk.dump_stats(d / "perfkit.prof")
    return d


def pstats_text(path, sort, restrictions):
    buf = io.StringIO()
    pstats.Stats(str(path), stream=buf).sort_stats(*sort).print_stats(*restrictions)
    return buf.getvalue()


def without_file_lines(text: str, path) -> list:
    """The printed table without the header line that names the file."""
    return [line for line in text.splitlines() if str(path) not in line and Path(path).name not in line]


def test_stats_of_several_files_stripped_callers_and_callees_match_pstats(profiles, tmp_path):
    # pstats' Stats(a, b, c) (summed: c and b are added in that order),
    # strip_dirs, print_callers and print_callees, byte for byte but for the
    # lines naming the files; the files named in pstats' order.
    a, b = profiles / "perfkit.prof", profiles / "cprofile.prof"
    c = tmp_path / "recursion.prof"
    pk = perfkit.Profiler()
    with gc_disabled():
        pk.runcall(program("recursion").main)
    pk.dump_stats(c)
    names = [str(a), str(b), str(c)]

    def pstats_out(files, strip, method, sort, amounts):
        buf = io.StringIO()
        st = pstats.Stats(*files, stream=buf)
        if strip:
            st.strip_dirs()
        getattr(st.sort_stats(*sort), method)(*amounts)
        return buf.getvalue()

    cases = [
        (names, False, "print_stats", ["tottime"], [], []),
        (names, True, "print_stats", ["cumulative", "name"], ["--limit", "12"], [12]),
        (names[:1], True, "print_stats", ["ncalls"], [], []),
        (names[:2], False, "print_callers", ["tottime"], ["--limit", "6"], [6]),
        (names, True, "print_callees", ["cumulative"], ["--filter", "fib|fact|main"], ["fib|fact|main"]),
        (names[:1], False, "print_callees", ["calls"], [], []),
    ]
    for files, strip, method, sort, extra, amounts in cases:
        args = ["stats", *files, *[x for key in sort for x in ("--sort", key)], *extra]
        if strip:
            args.append("--strip-dirs")
        if method != "print_stats":
            args.append("--" + method.split("_")[1])
        r = run_cli(*args)
        assert r.returncode == 0, r.stderr
        want = pstats_out(files, strip, method, sort, amounts)
        got_lines, want_lines = r.stdout.splitlines(), want.splitlines()
        labels = [line for line in got_lines if any(line.endswith(name) for name in files)]
        assert [line.split()[-1] for line in labels] == (
            [files[0], *reversed(files[1:])] if method == "print_stats" else []
        )
        for name in files:
            got_lines = without_file_lines("\n".join(got_lines), name)
            want_lines = without_file_lines("\n".join(want_lines), name)
        assert got_lines == want_lines, (args, "\n".join(got_lines), "\n".join(want_lines))
        assert len(want_lines) > 5


STATS_IDS = [
    "default",
    "tottime-limit10",
    "calls+name",
    "ncalls-limit0.5",
    "time-filter",
    "filename-filter-limit",
    "pcalls",
    "line",
    "nfl",
    "stdname-limit7",
    "module+cumulative",
    "python-re-brace",
    "python-re-Z-method",
    "python-re-repeat-class",
    "negative-limit",
]
STATS_CASES = [
    ([], [], []),
    (["tottime"], ["--limit", "10"], [10]),
    (["calls", "name"], [], []),
    (["ncalls"], ["--limit", "0.5"], [0.5]),
    (["time"], ["--filter", "fib|fact"], ["fib|fact"]),
    (["filename"], ["--filter", "built-in", "--limit", "3"], ["built-in", 3]),
    (["pcalls"], [], []),
    (["line"], [], []),
    (["nfl"], [], []),
    (["stdname"], ["--limit", "7"], [7]),
    (["module", "cumulative"], [], []),
    # Python's re syntax, as pstats reads it: a `{` that repeats nothing is a literal.
    (["tottime"], ["--filter", "{built-in"], ["{built-in"]),
    (["calls"], ["--filter", r"fib\)\Z|{method 'a"], [r"fib\)\Z|{method 'a"]),
    (["name"], ["--filter", "f{,1}ib|[{]b|(ma){1}in"], ["f{,1}ib|[{]b|(ma){1}in"]),
    # pstats' print_stats(-3): the list but its last 3 rows (-l -3, not an unknown option).
    (["tottime"], ["-l", "-3"], [-3]),
]


def _stats_case(path, sort, cli_extra, restrictions):
    args = ["stats", path]
    for s in sort:
        args += ["--sort", s]
    r = run_cli(*args, *cli_extra)
    assert r.returncode == 0, r.stderr
    want = pstats_text(path, sort or ["cumulative"], restrictions)
    got_lines, want_lines = without_file_lines(r.stdout, path), without_file_lines(want, path)
    assert got_lines == want_lines


@sensitive
@pytest.mark.parametrize("sort,cli_extra,restrictions", STATS_CASES, ids=STATS_IDS)
def test_stats_matches_pstats_on_perfkit_file(profiles, sort, cli_extra, restrictions):
    _stats_case(profiles / "perfkit.prof", sort, cli_extra, restrictions)


@sensitive
@pytest.mark.parametrize("sort,cli_extra,restrictions", STATS_CASES, ids=STATS_IDS)
def test_stats_matches_pstats_on_cprofile_file(profiles, sort, cli_extra, restrictions):
    _stats_case(profiles / "cprofile.prof", sort, cli_extra, restrictions)


@pytest.mark.parametrize(
    "pattern",
    [r"\<lambda\>", "[&]", "x[~]y", "q{2}", "{built-in", "fib\\Z", "(?i)FIB", r"\bfib\b"],
)
def test_filter_patterns_select_what_pstats_selects(tmp_path, pattern):
    # Python's re and the regex crate read these differently: \< and \> are
    # literals in Python, word boundaries in the crate; &, ~ and -- are set
    # operators inside a crate's class.
    names = ["<lambda>", "lambda", "f&g", "x~y", "a-b", "q{2}", "qq", "fib", "FIB2"]
    table = {
        ("/a/mod.py", i, name): (1, 1, 0.001 * (i + 1), 0.001 * (i + 1), {}) for i, name in enumerate(names)
    }
    table[("~", 0, "<built-in method builtins.len>")] = (1, 1, 0.5, 0.5, {})
    path = tmp_path / "crafted.prof"
    path.write_bytes(marshal.dumps(table))
    buf = io.StringIO()
    pstats.Stats(str(path), stream=buf).sort_stats("cumulative").print_stats(pattern)
    got = run_cli("stats", path, "--filter", pattern)
    assert got.returncode == 0, got.stderr
    assert without_file_lines(got.stdout, path) == without_file_lines(buf.getvalue(), path)


@sensitive
def test_stats_takes_pstats_old_integer_sort_keys_as_record_s_does(profiles):
    """`perfkit stats f --sort -1` (pstats' sort_stats(-1): standard name)
    was refused by the argument parser as an unknown option, where
    `perfkit record -s -1` took it."""
    path = profiles / "perfkit.prof"
    for key in (-1, 0, 1, 2):
        r = run_cli("stats", path, "--sort", str(key))
        assert r.returncode == 0, r.stderr
        assert without_file_lines(r.stdout, path) == without_file_lines(pstats_text(path, [key], []), path)


def test_stats_unknown_sort_key(profiles):
    r = run_cli("stats", profiles / "perfkit.prof", "--sort", "bogus")
    assert r.returncode == 2
    assert len(r.stderr.strip().splitlines()) == 1 and "bogus" in r.stderr
    assert no_crash_noise(r.stderr) == []


# -- export ------------------------------------------------------------------------------


@sensitive  # marshal's code objects differ by CPython
def test_files_of_the_pure_python_profile_module_read_as_pstats_reads_them(tmp_path):
    # helper-44: `python -m profile -o` names the profiled code object in a
    # key (refused as "code objects are not read"), and the profile module
    # stores each edge as a bare call count, which pstats prints its own way.
    prog = tmp_path / "prog.py"
    prog.write_text(
        "def fib(n):\n    return n if n < 2 else fib(n - 1) + fib(n - 2)\n\n"
        "def main():\n    return [fib(12) for _ in range(3)]\n\nmain()\n"
    )
    by_cli = tmp_path / "cli.prof"
    r = subprocess.run(
        [sys.executable, "-m", "profile", "-o", str(by_cli), str(prog)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=120,
        check=False,
    )
    assert r.returncode == 0, r.stderr
    without_address = functools.partial(re.sub, r" at 0x[0-9a-f]+", "")
    # (The callers' column width comes from the names listed: not the code
    # object's, whose name here has no address.)
    for args, method, pattern in (
        ([], "print_stats", "fib|main|code object"),
        (["--callers"], "print_callers", "fib|main"),
        (["--callees"], "print_callees", "fib|main"),
    ):
        got = run_cli("stats", by_cli, "--sort", "cumulative", "--filter", pattern, *args)
        assert got.returncode == 0, got.stderr
        buf = io.StringIO()
        getattr(pstats.Stats(str(by_cli), stream=buf).sort_stats("cumulative"), method)(pattern)
        want = without_address(buf.getvalue())
        assert without_file_lines(got.stdout, by_cli) == without_file_lines(want, by_cli), method
        assert "fib" in got.stdout
    # pstats' way for a bare count: "file:line(caller)(count)  cumtime".
    assert re.search(
        r"\(fib\)\(\d+\) +\d+\.\d{3}$", run_cli("stats", by_cli, "--callers").stdout, re.MULTILINE
    )
    # Re-exported, each edge stays a bare count (pstats reads it back the same).
    copy = tmp_path / "copy.prof"
    assert run_cli("export", by_cli, "-o", copy).returncode == 0

    def edges(path):
        name = lambda key: without_address(pstats.func_std_string(key))
        return {
            name(k): {name(c): e for c, e in v[4].items()} for k, v in pstats.Stats(str(path)).stats.items()
        }

    assert edges(copy) == edges(by_cli)
    assert all(type(e) is int for callers in edges(copy).values() for e in callers.values())


def test_an_unwritable_stdout_or_stderr_loses_the_message_not_the_command(profiles, tmp_path):
    # helper-44: println!/eprintln! panicked on /dev/full (and on a pipe
    # whose reader had gone), turning each command into a traceback, exit 1.
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env.pop("PYTHONPATH", None)

    def run(*args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL):
        return subprocess.run(
            [*perfkit_command(), *map(str, args)],
            check=False,
            stdout=stdout,
            stderr=stderr,
            env=env,
            timeout=60,
        ).returncode

    with open("/dev/full", "w") as full:
        out = tmp_path / "x.txt"
        assert run("export", profiles / "perfkit.prof", "-o", out, stderr=full) == 0
        assert out.read_text().strip()
        assert run("stats", tmp_path / "missing.prof", stderr=full) == 2
        port = free_port()
        viewer = subprocess.Popen(
            [*perfkit_command(), "view", profiles / "perfkit.prof", "--no-browser", "--port", str(port)],
            stdout=full,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        try:
            deadline = time.monotonic() + 60
            while True:  # serving, though it could not say where
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as page:
                        assert page.status == 200
                    break
                except OSError:
                    assert viewer.poll() is None, viewer.stderr.read()
                    assert time.monotonic() < deadline
                    time.sleep(0.1)
        finally:
            viewer.send_signal(signal.SIGINT)
            try:
                _, err = viewer.communicate(timeout=30)
            finally:
                if viewer.poll() is None:  # (no orphan viewer when it did not stop)
                    viewer.kill()
                    viewer.communicate()
    assert viewer.returncode == 130, err
    assert no_crash_noise(err) == []


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@sensitive
def test_export_prof_roundtrip(profiles, tmp_path):
    src = profiles / "perfkit.prof"
    out = tmp_path / "copy.prof"
    r = run_cli("export", src, "-o", out)
    assert r.returncode == 0, r.stderr
    assert_same_counts(summarize(pstats.Stats(str(src)).stats), summarize(pstats.Stats(str(out)).stats))
    a, b = perfkit.load(src), perfkit.load(out)
    assert b.exact is True
    assert b.threads() == a.threads() and b.funcs() == a.funcs()


@sensitive
def test_export_prof_from_cprofile_file(profiles, tmp_path):
    src = profiles / "cprofile.prof"
    out = tmp_path / "from-cprofile.prof"
    r = run_cli("export", src, "-o", out)
    assert r.returncode == 0, r.stderr
    assert_same_counts(summarize(pstats.Stats(str(src)).stats), summarize(pstats.Stats(str(out)).stats))
    assert perfkit.load(out).exact is False, "a tree inferred from a cProfile file is not exact"


@sensitive
def test_export_collapsed(tmp_path):
    prog = program("callsites")
    p = perfkit.Profiler()
    p.runcall(prog.main)
    src = tmp_path / "cs.prof"
    p.dump_stats(src)
    out = tmp_path / "cs.txt"
    r = run_cli("export", src, "-o", out)
    assert r.returncode == 0, r.stderr
    lines = out.read_text().splitlines()
    assert lines
    paths = {}
    for line in lines:
        stack, _, weight = line.rpartition(" ")
        assert stack and weight.isdigit(), line
        paths[tuple(frame.split(" (")[0] for frame in stack.split(";"))] = int(weight)
    # f is hot (three calls of f(20000)) along main;a;f.
    assert paths.get(("main", "a", "f"), 0) > 0
    stats = pstats.Stats(str(src))
    total_us = stats.total_tt * 1e6
    assert abs(sum(paths.values()) - total_us) <= len(lines) + 0.01 * total_us
    back = perfkit.load(out)
    assert {"main", "a", "f"} <= {k[2] for k in back.funcs()}


@sensitive
def test_export_speedscope(tmp_path):
    prog = program("callsites")
    p = perfkit.Profiler()
    p.runcall(prog.main)
    src = tmp_path / "cs.prof"
    p.dump_stats(src)
    out = tmp_path / "cs.speedscope.json"
    r = run_cli("export", src, "-o", out)
    assert r.returncode == 0, r.stderr
    doc = json.loads(out.read_text())
    assert doc["$schema"] == "https://www.speedscope.app/file-format-schema.json"
    names = {f["name"] for f in doc["shared"]["frames"]}
    assert {"main", "a", "b", "f", "g", "h"} <= {n.split(" (")[0] for n in names}
    assert doc["profiles"]
    for prof in doc["profiles"]:
        assert prof["type"] in ("evented", "sampled")
        if prof["type"] == "evented":
            depth = 0
            for ev in prof["events"]:
                depth += 1 if ev["type"] == "O" else -1
                assert depth >= 0
            assert depth == 0
    back = perfkit.load(out)
    assert {"main", "a", "f"} <= {k[2] for k in back.funcs()}


@sensitive
def test_export_format_option_and_unknown_extension(profiles, tmp_path):
    src = profiles / "perfkit.prof"
    r = run_cli("export", src, "-o", tmp_path / "out.weird")
    assert r.returncode == 2
    assert len(r.stderr.strip().splitlines()) == 1 and "out.weird" in r.stderr
    assert not (tmp_path / "out.weird").exists()
    r = run_cli("export", src, "-o", tmp_path / "out.weird", "--format", "collapsed")
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "out.weird").read_text().strip()


def test_export_to_stdout_and_through_a_link(profiles, tmp_path):
    src = profiles / "perfkit.prof"
    by_file = tmp_path / "out.txt"
    assert run_cli("export", src, "-o", by_file).returncode == 0
    r = run_cli("export", src, "-o", "-", "--format", "collapsed")
    assert r.returncode == 0, r.stderr
    assert r.stdout == by_file.read_text() and not (Path.cwd() / "-").exists()
    r = run_cli("export", src, "-o", "-")
    assert r.returncode == 2 and "--format" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    # A link is written through, as cProfile's open() does: the link stays a link.
    target, link = tmp_path / "target.txt", tmp_path / "link.txt"
    target.write_text("old")
    link.symlink_to(target.name)
    assert run_cli("export", src, "-o", link).returncode == 0
    assert link.is_symlink() and target.read_text() == by_file.read_text()
    # A directory is named as one.
    r = run_cli("export", src, "-o", tmp_path, "--format", "collapsed")
    assert r.returncode == 2 and "Is a directory" in r.stderr, r.stderr


def test_arguments_that_are_not_utf8_pass_through(tmp_path):
    # helper-50: a byte that is not UTF-8 anywhere on the command line (a
    # file name, a program's argument) was a UnicodeEncodeError traceback.
    # cProfile and pstats take such names as the OS gave them.
    script = tmp_path / "args.py"
    script.write_text(
        "import sys\nprint(repr([a.encode('utf-8', 'surrogateescape') for a in sys.argv[1:]]))\n"
    )
    odd = os.fsdecode(b"caf\xe9.txt")
    out = os.fsdecode(b"out\xff.prof")
    r = run_cli("record", "-o", tmp_path / out, script, odd, "x", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "[b'caf\\xe9.txt', b'x']" in r.stdout
    r = run_cli("stats", tmp_path / out, "-l", "3")
    assert r.returncode == 0, r.stderr
    assert "function calls" in r.stdout
    r = run_cli("stats", tmp_path / os.fsdecode(b"missing\xff.prof"))
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "Traceback" not in r.stderr, r.stderr


def test_stats_escapes_what_a_file_could_do_to_a_terminal(tmp_path):
    # helper-50: names reach the terminal as they are (pstats prints them
    # raw): an escape sequence recolours or clears it, a carriage return or
    # newline fakes rows. They are written as escapes; the table stays aligned.
    evil = "f\x1b[2J\x1b[31mred\rfake\nrow\u202etxt.exe"
    table = {
        ("m.py", 1, evil): (1, 1, 0.5, 0.5, {}),
        ("m.py", 2, "plain"): (1, 1, 0.25, 0.25, {("m.py", 1, evil): (1, 1, 0.25, 0.25)}),
    }
    path = tmp_path / "evil.prof"
    path.write_bytes(marshal.dumps(table))
    for extra in ((), ("--callers",), ("--callees",)):
        r = run_cli("stats", path, *extra)
        assert r.returncode == 0, r.stderr
        assert not any(c in r.stdout for c in "\x1b\r\u202e"), repr(r.stdout)
        assert "\\x1b[2J\\x1b[31mred\\rfake\\nrow\\u202etxt.exe" in r.stdout
    rows = [line for line in run_cli("stats", path).stdout.splitlines() if "m.py:" in line]
    assert len(rows) == 2 and rows[0].index("m.py:") == rows[1].index("m.py:")
    # A file's name in an error stays on its one line.
    r = run_cli("stats", tmp_path / "no\nsuch\x1b[31m.prof")
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "\x1b" not in r.stderr, repr(r.stderr)


def test_record_runs_a_program_exactly_as_python_does(tmp_path):
    # helper-51: perfkit's own `from __future__ import annotations` reached
    # the program through compile() (its annotations became strings:
    # singledispatch on a local class failed); __builtins__ was a dict, and
    # perfkit's launcher directory stayed on sys.path.
    (tmp_path / "prog.py").write_text(
        textwrap.dedent(
            """
            import functools, inspect, json, sys

            class Point:
                pass

            @functools.singledispatch
            def show(x): return "other"

            @show.register
            def _(x: Point): return "point"

            def f(x: int, y: "float" = 1.0) -> list: ...

            print(json.dumps({
                "annotations": {k: repr(v) for k, v in f.__annotations__.items()},
                "dispatch": show(Point()),
                "builtins": type(__builtins__).__name__,
                "path": sys.path,
                "file": __file__,
            }))
            """
        )
    )
    python = subprocess.run(
        [sys.executable, "prog.py"], check=False, cwd=tmp_path, capture_output=True, text=True
    )
    assert python.returncode == 0, python.stderr
    r = run_cli("record", "-o", tmp_path / "p.prof", "prog.py", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout.splitlines()[0]) == json.loads(python.stdout)
    assert json.loads(python.stdout)["annotations"]["x"] == "<class 'int'>"


def test_runctx_does_not_pass_perfkits_future_imports_to_the_code(tmp_path):
    namespace: dict = {}
    for statement in (
        "def f(x: int): pass\nresult = f.__annotations__",
        b"def f(x: int): pass\nresult = f.__annotations__",
    ):
        namespace.clear()
        perfkit.Profiler().runctx(statement, namespace, namespace)
        assert namespace["result"] == {"x": int}


def test_profile_inside_a_recording_warns_and_runs_the_same_way_both_forms(tmp_path):
    # helper-51: under `perfkit record`, @perfkit.profile ran unrecorded
    # without a word and `with perfkit.profile(...)` raised, ending the program.
    (tmp_path / "prog.py").write_text(
        textwrap.dedent(
            """
            import perfkit

            @perfkit.profile("step.prof")
            def step():
                return sum(range(1000))

            print(step())
            with perfkit.profile("block.prof"):
                print(sum(range(10)))

            @perfkit.profile("co.prof")
            async def co():
                return 7

            import asyncio
            print(asyncio.run(co()))
            """
        )
    )
    r = run_cli("record", "-o", tmp_path / "outer.prof", "prog.py", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[:3] == ["499500", "45", "7"]
    warned = [line for line in r.stderr.splitlines() if "RuntimeWarning" in line]
    # Each at the program's line: the call, the with, the coroutine function's definition.
    assert len(warned) == 3 and all("prog.py" in line for line in warned), r.stderr
    assert "step.prof" in warned[0] and "block.prof" in warned[1] and "co.prof" in warned[2]
    assert not any((tmp_path / name).exists() for name in ("step.prof", "block.prof", "co.prof"))
    assert (tmp_path / "outer.prof").exists()


@pytest.mark.parametrize("case", ["safe-path", "symlink", "zipapp"])
def test_record_puts_on_sys_path_what_python_puts_there(tmp_path, case):
    # helper-55: under PYTHONSAFEPATH perfkit replaced the program's own first
    # path entry (a PYTHONPATH one: ModuleNotFoundError); a symlinked script's
    # path entry was the link's directory, not its target's; a zipapp kept
    # perfkit's launcher entry, so a module in the current directory shadowed
    # the standard library.
    show = "import sys, json; print(json.dumps(sys.path[:3]))\n"
    env = {}
    if case == "safe-path":
        (tmp_path / "libs").mkdir()
        (tmp_path / "libs" / "mylib.py").write_text("Y = 2\n")
        target = tmp_path / "prog.py"
        target.write_text("import mylib\n" + show)
        env = {"PYTHONSAFEPATH": "1", "PYTHONPATH": str(tmp_path / "libs")}
    elif case == "symlink":
        (tmp_path / "real").mkdir()
        (tmp_path / "real" / "sibling.py").write_text("Y = 2\n")
        (tmp_path / "real" / "prog.py").write_text("import sibling\n" + show)
        target = tmp_path / "link.py"
        target.symlink_to(tmp_path / "real" / "prog.py")
    else:
        (tmp_path / "src").mkdir()
        (tmp_path / "src" / "__main__.py").write_text("import colorsys\n" + show)
        target = tmp_path / "app.pyz"
        subprocess.run([sys.executable, "-m", "zipapp", tmp_path / "src", "-o", target], check=True)
        (tmp_path / "colorsys.py").write_text("raise SystemExit('shadowed')\n")
    python = subprocess.run(
        [sys.executable, str(target)],
        check=False,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env={**os.environ, **env},
    )
    assert python.returncode == 0, python.stderr
    for launch in (perfkit_command(), [sys.executable, "-m", "perfkit"]):
        r = subprocess.run(
            [*launch, "record", "-o", str(tmp_path / "o.prof"), str(target)],
            check=False,
            cwd=tmp_path,
            capture_output=True,
            text=True,
            env={**os.environ, **env},
        )
        assert r.returncode == 0, r.stderr
        assert json.loads(r.stdout.splitlines()[0]) == json.loads(python.stdout), launch
