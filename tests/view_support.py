"""Helpers for the viewer's tests: profiles to open, and `perfkit view` as a
running server."""

from __future__ import annotations

import cProfile
import json
import os
import queue
import random
import re
import signal
import subprocess
import sys
import threading
import urllib.request
from pathlib import Path

import perfkit
from conftest import no_crash_noise, perfkit_command

HOSTILE_NAME = "<img src=x onerror=alert(1)>"
HOSTILE_FILE = "<script>alert(2)</script>.py"


# -- workloads with a known shape ---------------------------------------------------------


def leaf(n):
    return sum(i * i for i in range(n))


def fast_path(n):
    return leaf(n)


def slow_path(n):
    return leaf(n) + leaf(n)


def fib(n):
    return n if n < 2 else fib(n - 1) + fib(n - 2)


def workload(slow: int = 3000, fast: int = 1000):
    for _ in range(20):
        slow_path(slow)
        fast_path(fast)
    fib(12)
    sorted(range(2000), key=lambda x: -x)


def write_cprofile(path: Path, func=workload, *args) -> Path:
    prof = cProfile.Profile()
    prof.enable()
    func(*args)
    prof.disable()
    prof.dump_stats(str(path))
    return path


def write_perfkit(path: Path, func=workload, *args) -> Path:
    prof = perfkit.Profiler()
    prof.enable()
    func(*args)
    prof.disable()
    prof.dump_stats(str(path))
    return path


def write_hostile(path: Path) -> Path:
    """A real cProfile file whose function and file names are HTML."""

    def evil():
        return leaf(2000)

    evil.__code__ = evil.__code__.replace(co_name=HOSTILE_NAME, co_filename=HOSTILE_FILE)

    def outer():
        for _ in range(5):
            evil()

    return write_cprofile(path, outer)


def write_threaded(path: Path) -> Path:
    """A perfkit profile of the main thread running `workload` while a thread
    named worker-thread runs `worker` (views: all threads, then each thread)."""

    def worker():
        for _ in range(30):
            leaf(3000)

    def run():
        t = threading.Thread(target=worker, name="worker-thread")
        t.start()
        workload(500, 500)
        t.join()

    return write_perfkit(path, run)


def write_deep_recursion(path: Path, depth: int = 10_000) -> Path:
    """A perfkit profile of one recursion `depth` calls deep (exact tree)."""

    def down(n):
        return 0 if n == 0 else down(n - 1) + 1

    old = sys.getrecursionlimit()
    sys.setrecursionlimit(max(old, depth + 500))
    try:
        return write_perfkit(path, down, depth)
    finally:
        sys.setrecursionlimit(old)


def write_synthetic_tree(path: Path, nodes: int, seed: int = 7, names: int = 3000) -> int:
    """Collapsed stacks of a random bushy call tree with exactly `nodes`
    frames: frame i is called from a frame drawn among those about i/12 to
    i/8 (so 8 to 12 callees each, 6-7 levels for a million frames), over
    `names` function names, every frame with some own time. Written
    depth-first with only the current path in memory; returns the number
    of frames."""
    from array import array

    rng = random.Random(seed)
    label = [f"f{i}" for i in range(names)]
    parent = array("i", [0]) * (nodes + 1)
    func = array("i", [0]) * (nodes + 1)
    count = array("i", [0]) * (nodes + 2)
    for i in range(1, nodes + 1):
        p = rng.randrange((i - 1) // 12, (i - 1) // 8 + 1)
        # Siblings call different functions, so every frame is its own call path.
        func[i] = (p * 131 + count[p + 1] * 7919) % names
        parent[i] = p
        count[p + 1] += 1
    for i in range(1, nodes + 2):
        count[i] += count[i - 1]
    fill = array("i", count)
    kids = array("i", [0]) * nodes
    for i in range(1, nodes + 1):
        p = parent[i]
        kids[fill[p]] = i
        fill[p] += 1
    weights = [rng.randint(1, 1000) for _ in range(997)]
    with open(path, "w") as out:
        stack = [(k, "") for k in reversed(kids[count[0] : count[1]])]
        lines = []
        while stack:
            i, prefix = stack.pop()
            here = prefix + label[func[i]]
            lines.append(f"{here} {weights[i % 997]}\n")
            if len(lines) >= 65536:
                out.writelines(lines)
                lines.clear()
            below = here + ";"
            stack.extend((k, below) for k in reversed(kids[count[i] : count[i + 1]]))
        out.writelines(lines)
    return nodes


# -- perfkit view as a server --------------------------------------------------------------


class ViewServer:
    """`perfkit view FILES --no-browser` in a subprocess; stopped with Ctrl-C (SIGINT)."""

    def __init__(self, *files, extra=()):
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        env.pop("PYTHONPATH", None)
        self.proc = subprocess.Popen(
            [*perfkit_command(), "view", *map(str, files), "--no-browser", *extra],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        lines: queue.Queue = queue.Queue()
        threading.Thread(target=lambda: lines.put(self.proc.stdout.readline()), daemon=True).start()
        try:
            first = lines.get(timeout=60)
        except queue.Empty:
            self.proc.kill()
            raise AssertionError("perfkit view printed no address within 60 s") from None
        m = re.search(r"http://[^\s]+/", first)
        if not m:
            self.proc.kill()
            raise AssertionError(f"no URL in {first!r}; stderr: {self.proc.stderr.read()}")
        self.url = m.group(0)
        self.port = int(self.url.rsplit(":", 1)[1].strip("/"))
        self.stopped = False

    def get_json(self, path: str):
        with urllib.request.urlopen(self.url + path.lstrip("/"), timeout=30) as r:
            return json.load(r)

    def stop(self) -> tuple[int, str]:
        """Ctrl-C; returns (exit code, stderr)."""
        if self.stopped:
            return self.returncode, self.stderr
        self.proc.send_signal(signal.SIGINT)
        try:
            _, err = self.proc.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.communicate()
            raise AssertionError("perfkit view did not stop on Ctrl-C within 20 s") from None
        self.stopped, self.returncode, self.stderr = True, self.proc.returncode, err
        return self.returncode, err

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        code, err = self.stop()
        if exc[0] is None:
            assert code == 130, f"exit code {code} after Ctrl-C; stderr: {err}"
            assert not no_crash_noise(err), err
