"""perfkit as a data scientist uses it from notebooks, side by side with the
tools it replaces there: joblib, cProfile's ``%prun`` and snakeviz's
``%snakeviz``."""

from __future__ import annotations

import os
import re
import textwrap
import time

from ipython_support import WORK, run_shell


def _table(text: str) -> tuple[str, list[str]]:
    """pstats' printed table: its "Ordered by" line and its rows' function column."""
    lines = text.splitlines()
    ordered = next(line.strip() for line in lines if line.strip().startswith("Ordered by:"))
    start = next(i for i, line in enumerate(lines) if line.strip().startswith("ncalls"))
    rows = [line.split(maxsplit=5)[5] for line in lines[start + 1 :] if line.strip()]
    return ordered, rows


def test_prun_options_given_twice_are_taken_as_prun_takes_them(tmp_path):
    """``%prun -s calls -s tottime`` sorts by calls, then time, and ``-l``
    limits the rows; ``%perfkit`` said "-s ['calls', 'tottime']: not one of
    pstats' sort keys" and did not know -l. A second -o fell over in a
    TypeError traceback ("expected str ... not list"); it is one UsageError
    line, before the code runs."""
    out = run_shell(
        [
            "%load_ext perfkit",
            WORK,
            "%perfkit -s calls -s tottime work(6)",
            "%prun -q -s calls -s tottime -T prun.txt work(6)",
            "%perfkit -s cumulative -l 3 work(6)",
            "%prun -q -s cumulative -l 3 -T prun3.txt work(6)",
            "%perfkit -s cumulative -l leaf -l 1 work(6)",
            "%prun -q -s cumulative -l leaf -l 1 -T prun_leaf.txt work(6)",
            "%perfkit -o a.prof -o b.prof ran = work(2)",
            "%perfkit -l 3 ran = work(2)",
            "%perfkit -s calls -l ( ran = work(2)",
            "print('ran' in dir())",
        ],
        tmp_path,
    )
    for cell in out[2:8]:
        assert cell["error"] is None, cell
    for perfkit_cell, prun_file in ((2, "prun.txt"), (4, "prun3.txt"), (6, "prun_leaf.txt")):
        prun_text = (tmp_path / prun_file).read_text()
        ordered, rows = _table(out[perfkit_cell]["stdout"])
        prun_ordered, prun_rows = _table(prun_text)
        assert ordered == prun_ordered
        reduced = re.search(r"List reduced from \d+ to (\d+)", out[perfkit_cell]["stdout"])
        prun_reduced = re.search(r"List reduced from \d+ to (\d+)", prun_text)
        assert (reduced is None) == (prun_reduced is None)
        if prun_reduced is not None:
            assert len(rows) == len(prun_rows) == int(reduced.group(1)) == int(prun_reduced.group(1))
    assert out[2]["stdout"].count("Ordered by: call count, internal time") == 1
    assert _table(out[6]["stdout"])[1] == _table((tmp_path / "prun_leaf.txt").read_text())[1]
    assert "leaf" in _table(out[6]["stdout"])[1][0]

    for cell, message in (
        (8, "%perfkit: -o given 2 times"),
        (9, "%perfkit: -l limits the table that -s prints"),
        (10, "%perfkit: -l (: not a regular expression"),
    ):
        error = out[cell]["error"]
        assert error is not None and error[0] == "UsageError", out[cell]
        assert error[1].startswith(message), error
        assert len(out[cell]["stderr"].strip().splitlines()) == 1, out[cell]["stderr"]
    assert out[11]["stdout"] == "False\n"  # refused before the code ran
    assert not (tmp_path / "a.prof").exists() and not (tmp_path / "b.prof").exists()


# -- a real kernel, driven as Jupyter drives it (interrupts, restarts) --------------------


class Kernel:
    """An IPython kernel (ipykernel) started and driven as Jupyter's front end does."""

    def __init__(self, cwd) -> None:
        from jupyter_client.manager import KernelManager

        self.manager = KernelManager(kernel_name="python3")
        self.manager.start_kernel(cwd=str(cwd))
        self.client = self.manager.client()
        self.client.start_channels()
        self.client.wait_for_ready(timeout=60)
        self.pid = int(self.run("import os; print(os.getpid())")["stdout"])

    def start(self, code: str) -> str:
        return self.client.execute(code)

    def outcome(self, msg_id: str, timeout: float = 60) -> dict[str, str]:
        """What the cell wrote (stdout, stderr) and its error's name, once it is done."""
        import queue

        out = {"stdout": "", "stderr": "", "error": ""}
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                msg = self.client.get_iopub_msg(timeout=1)
            except queue.Empty:
                continue
            if msg["parent_header"].get("msg_id") != msg_id:
                continue
            kind, content = msg["msg_type"], msg["content"]
            if kind == "stream":
                out[content["name"]] += content["text"]
            elif kind == "error":
                out["error"] = content["ename"]
            elif kind == "status" and content["execution_state"] == "idle":
                return out
        raise AssertionError(f"the cell did not end in {timeout} s: {out}")

    def run(self, code: str, timeout: float = 60) -> dict[str, str]:
        out = self.outcome(self.start(code), timeout)
        assert not out["error"], out
        return out

    def interrupt(self, code: str, after: float) -> dict[str, str]:
        """Runs the cell and interrupts the kernel (Jupyter's stop button) `after` seconds in."""
        msg_id = self.start(code)
        time.sleep(after)
        self.manager.interrupt_kernel()
        return self.outcome(msg_id)

    def workers(self) -> list[int]:
        """The kernel's perfkit worker processes (zombies left out)."""
        found = []
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                with open(f"/proc/{entry}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    cmdline = f.read()
            except OSError:
                continue
            if int(fields[1]) == self.pid and fields[0] != "Z" and b"perfkit._worker" in cmdline:
                found.append(int(entry))
        return found

    def workers_within(self, count: int, timeout: float = 5) -> list[int]:
        """The workers, once there are `count` of them (or after `timeout`)."""
        deadline = time.monotonic() + timeout
        while True:
            found = self.workers()
            if len(found) == count or time.monotonic() > deadline:
                return found
            time.sleep(0.05)

    def close(self) -> None:
        self.client.stop_channels()
        self.manager.shutdown_kernel(now=True)


SLOW_WORKER_START = """
import os, time
if os.environ.get("SLOW_WORKER_START"):
    time.sleep(float(os.environ["SLOW_WORKER_START"]))
"""


def test_a_stop_while_the_workers_start_leaves_no_idle_workers_behind(tmp_path):
    """The stop button pressed while a cell's first Parallel call was still
    starting its workers (they were waited for in the pool's check of how to
    send large arrays): the call raised KeyboardInterrupt but its workers
    stayed, idle, for as long as anything held the traceback (IPython keeps
    the last one in sys.last_traceback), and the next call started workers
    of its own: 4 workers after one such stop, 8 after three. They are
    stopped with the call, as when the stop comes once they run tasks."""
    (tmp_path / "slow").mkdir()
    (tmp_path / "slow" / "sitecustomize.py").write_text(SLOW_WORKER_START)
    kernel = Kernel(tmp_path)
    try:
        kernel.run(
            textwrap.dedent(f"""
                import os
                from perfkit import Parallel, delayed
                os.environ["PYTHONPATH"] = {str(tmp_path / "slow")!r}  # (the workers' sitecustomize)
                os.environ["SLOW_WORKER_START"] = "30"
            """)
        )
        stopped = kernel.interrupt("r = Parallel(n_jobs=2)(delayed(abs)(i) for i in range(4))", after=1.5)
        assert stopped["error"] == "KeyboardInterrupt", stopped
        assert kernel.workers_within(0) == []
        stopped = kernel.interrupt(
            "with Parallel(n_jobs=2) as p:\n    r = p(delayed(abs)(i) for i in range(4))", after=1.5
        )
        assert stopped["error"] == "KeyboardInterrupt", stopped
        assert kernel.workers_within(0) == []
        # The next call runs, on workers of its own, and they are all there are.
        kernel.run('del os.environ["SLOW_WORKER_START"]')
        assert kernel.run("print(Parallel(n_jobs=2)(delayed(abs)(-i) for i in range(4)))")["stdout"] == (
            "[0, 1, 2, 3]\n"
        )
        assert len(kernel.workers_within(2)) == 2
    finally:
        kernel.close()
