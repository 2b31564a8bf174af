"""Programs run under perfkit record side by side with the interpreter (and
cProfile where it runs them the same way): what the program sees of itself."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
from conftest import run_cli

# What a program sees of itself, from its main code, then from a thread
# still running after the main code ended and from an atexit handler: both
# run while `python` (and so perfkit record) waits to exit.
_SELF_REPORT = textwrap.dedent(
    """\
    import atexit, pickle, sys, threading, time

    def task():
        return 42

    def report(where):
        main = sys.modules["__main__"]
        try:
            pickled = pickle.loads(pickle.dumps(task))()
        except Exception as e:
            pickled = type(e).__name__
        spec = main.__dict__.get("__spec__")
        package = main.__dict__.get("__package__")
        print(where, sys.argv, main.__name__, spec and spec.name, repr(package), main.__dict__.get("task") is task, pickled, flush=True)

    def late():
        time.sleep(0.2)
        report("thread")

    report("main")
    print(sorted(name for name in globals() if name.startswith("__")))
    threading.Thread(target=late).start()
    atexit.register(report, "atexit")
    """
)


def _layout(tmp_path, kind):
    """The program laid out as `kind` runs it, and the command-line arguments naming it."""
    if kind == "script":
        (tmp_path / "prog.py").write_text(_SELF_REPORT)
        return ["prog.py", "a1"]
    if kind == "module":
        (tmp_path / "pkg").mkdir()
        (tmp_path / "pkg" / "__init__.py").write_text("")
        (tmp_path / "pkg" / "tool.py").write_text(_SELF_REPORT)
        return ["-m", "pkg.tool", "a1"]
    src = tmp_path / "src"
    src.mkdir()
    (src / "__main__.py").write_text(_SELF_REPORT)
    if kind == "directory":
        return ["src", "a1"]
    subprocess.run([sys.executable, "-m", "zipapp", src, "-o", tmp_path / "app.pyz"], check=True)
    return ["app.pyz", "a1"]


@pytest.mark.parametrize("kind", ["script", "module", "zipapp", "directory"])
def test_the_program_is_main_as_under_python_for_its_threads_and_atexit_too(tmp_path, kind):
    # `python -m pkg.tool` and `python app.pyz` leave the program's module as
    # __main__ (and sys.argv as it set it) until the process exits. perfkit
    # record ran them through runpy.run_module / run_path, which put
    # perfkit's own __main__ and argv[0] back once the main code returned:
    # a thread still running then, or an atexit handler, saw sys.argv[0] ==
    # "pkg.tool" and could not pickle the program's functions
    # ("attribute lookup task on __main__ failed"). A zipapp's argv[0] was
    # also its absolute path, where python keeps it as typed. And the
    # interpreter's __main__ has an __annotations__ dict from the start
    # (reading it in a program without annotations was a NameError). A
    # directory's __main__.py had no __spec__ and __package__ None, where
    # `python dir` gives it the spec of __main__ and __package__ "".
    args = _layout(tmp_path, kind)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("PYTHONPATH", None)
    python = subprocess.run(
        [sys.executable, *args], cwd=tmp_path, capture_output=True, text=True, env=env, check=False
    )
    assert python.returncode == 0, python.stderr
    lines = python.stdout.splitlines()
    firsts = [line.split()[0] for line in lines]
    assert firsts == ["main", "['__annotations__',", "thread", "atexit"], python.stdout
    assert all(line.endswith("True 42") for line in lines if not line.startswith("[")), python.stdout
    r = run_cli("record", "-o", tmp_path / "o.prof", *args, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stdout == python.stdout
    assert (tmp_path / "o.prof").exists()
