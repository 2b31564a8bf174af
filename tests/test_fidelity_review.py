"""Small differences from the tools perfkit replaces (joblib's Parallel and
Memory, pstats), each checked side by side with the anchor (helper review:
fidelity)."""

from __future__ import annotations

import joblib
import perfkit
import pytest


class _Boom(Exception):
    pass


def _drawn_before(make_call, tasks):
    """The results a generator call gave before it raised _Boom, and the
    count the exception carried."""
    got = []
    with pytest.raises(_Boom) as raised:
        for result in make_call()(tasks):
            got.append(result)  # noqa: PERF402 (one by one: those drawn before the error)
    return got, raised.value.args[0]


@pytest.mark.parametrize(
    "settings",
    [
        {"n_jobs": 1},
        {"n_jobs": 2, "backend": "sequential"},
        {"n_jobs": 2, "backend": "threads"},
        {"n_jobs": 2, "backend": "processes"},
    ],
)
def test_a_raising_callback_stops_every_backend_before_the_result_it_counts(settings):
    # The sequential backend called the callback after handing the task's
    # result over: one more result than the threads and processes backends
    # (which count a batch before yielding it), and than joblib's sequential
    # calls, whose print_progress runs before the result is yielded.
    class JoblibStops(joblib.Parallel):
        def print_progress(self):
            if self.n_completed_tasks >= 1:
                raise _Boom(self.n_completed_tasks)

    def tasks(delayed):
        return [delayed(int)(i) for i in range(5)]

    theirs = _drawn_before(lambda: JoblibStops(n_jobs=1, return_as="generator"), tasks(joblib.delayed))
    assert theirs == ([], 1)

    def stop(done, total):
        if done >= 1:
            raise _Boom(done)

    ours = _drawn_before(
        lambda: perfkit.Parallel(return_as="generator", batch_size=1, callback=stop, **settings),
        tasks(perfkit.delayed),
    )
    assert ours == theirs

    class PerfkitStops(perfkit.Parallel):
        def print_progress(self):
            if self.n_completed_tasks >= 1:
                raise _Boom(self.n_completed_tasks)

    ours = _drawn_before(
        lambda: PerfkitStops(return_as="generator", batch_size=1, **settings), tasks(perfkit.delayed)
    )
    assert ours == theirs


def _memmap_facts(a):
    """What a task sees of a memmap: where it says it is in its file, and
    whether reopening the file there gives its values."""
    import numpy as np

    again = np.memmap(a.filename, dtype=a.dtype, mode="r", offset=a.offset, shape=a.shape)
    return type(a).__name__, a.offset, str(a.filename), a.mode, bool(np.array_equal(again, a))


def _view_of(a):
    return a[10:20]


@pytest.mark.parametrize("mode", ["r", "r+"])
def test_a_memmap_view_arrives_with_its_offset_in_the_file(tmp_path, mode):
    # A view of a memmap (X[1000:]), or a memmap opened at an offset, arrived
    # with .offset 0: reopening its file at its offset, as a task may do
    # (another library, a subprocess), read the file's first elements.
    # joblib's reducer gives the offset of the view's first element.
    np = pytest.importorskip("numpy")
    path = tmp_path / "data.f8"
    np.arange(5000, dtype="f8").tofile(path)
    whole = np.memmap(path, dtype="f8", mode=mode)
    at_80 = np.memmap(path, dtype="f8", mode=mode, offset=80)
    arguments = [whole, whole[1000:], at_80, at_80[5:]]
    theirs = joblib.Parallel(n_jobs=2)(joblib.delayed(_memmap_facts)(a) for a in arguments)
    assert [t[1] for t in theirs] == [0, 8000, 80, 120]
    assert all(t[4] for t in theirs)
    ours = perfkit.Parallel(n_jobs=2, backend="processes")(
        perfkit.delayed(_memmap_facts)(a) for a in arguments
    )
    assert ours == theirs
    # Sent on from the task (a view of what it got), it still views the right bytes.
    back = perfkit.Parallel(n_jobs=2, backend="processes")(perfkit.delayed(_view_of)(a) for a in arguments)
    for a, b in zip(arguments, back):
        assert np.array_equal(b, a[10:20])
        assert _memmap_facts(b)[4]


def _kind_and_head(data):
    return type(data).__name__, bytes(memoryview(data)[:4]), len(data)


def _buffer_of(n, writable):
    import pickle

    return pickle.PickleBuffer((bytearray if writable else bytes)(b"abcd" * n))


@pytest.mark.parametrize("writable", [False, True])
def test_a_pickle_buffer_arrives_as_pickle_gives_it_whatever_its_size(writable):
    # A raw pickle.PickleBuffer argument (or result) of a large buffer arrived
    # as a memoryview or an mmap (out of band), a small one as bytes: code
    # calling .decode() on it, or testing isinstance(data, bytes), failed
    # only at scale. pickle gives bytes for a read-only buffer, a bytearray for
    # a writable one, and so do joblib's workers.
    import pickle

    sizes = [1, 100_000]  # 4 bytes and 400 kB: in band and out of band

    def make(n):
        return pickle.PickleBuffer((bytearray if writable else bytes)(b"abcd" * n))

    expected = "bytearray" if writable else "bytes"
    assert type(pickle.loads(pickle.dumps(make(1), protocol=5))).__name__ == expected
    theirs = joblib.Parallel(n_jobs=2)(joblib.delayed(_kind_and_head)(make(n)) for n in sizes)
    assert [t[0] for t in theirs] == [expected, expected]
    ours = perfkit.Parallel(n_jobs=2, backend="processes")(
        perfkit.delayed(_kind_and_head)(make(n)) for n in sizes
    )
    assert ours == theirs
    ours = perfkit.Parallel(n_jobs=2, backend="processes")(
        perfkit.delayed(_kind_and_head)(data=make(n)) for n in sizes
    )
    assert ours == theirs
    # Returned by a task, likewise.
    theirs = joblib.Parallel(n_jobs=2)(joblib.delayed(_buffer_of)(n, writable) for n in sizes)
    ours = perfkit.Parallel(n_jobs=2, backend="processes")(
        perfkit.delayed(_buffer_of)(n, writable) for n in sizes
    )
    assert [_kind_and_head(r) for r in ours] == [_kind_and_head(r) for r in theirs]
    assert [type(r).__name__ for r in theirs] == [expected, expected]


def _square(x):
    return x * x


def _files_under(root):
    import os

    return sorted(os.path.relpath(os.path.join(d, f), root) for d, _, fs in os.walk(root) for f in fs)


def test_a_cleared_function_keeps_its_code_on_disk_as_joblibs_does(tmp_path):
    # f.clear() removed the function's directory, func_code.py with it, and
    # this process never wrote it again (once a process), so the cache no
    # longer showed which code its results came from. joblib's clear()
    # writes it again at once.
    import os

    theirs = joblib.Memory(tmp_path / "joblib", verbose=0).cache(_square)
    ours = perfkit.Memory(tmp_path / "perfkit", verbose=0).cache(_square)
    for f in (theirs, ours):
        assert f(3) == 9
        f.clear()
    left = [f for f in _files_under(tmp_path / "joblib") if f != ".gitignore"]
    assert [os.path.basename(f) for f in left] == ["func_code.py"]
    left = _files_under(tmp_path / "perfkit")
    assert [os.path.basename(f) for f in left] == ["func_code.py"]
    assert "return x * x" in (tmp_path / "perfkit" / left[0]).read_text()
    # Later results are stored beside it, the cleared one a miss again.
    assert not ours.check_call_in_cache(3)
    assert ours(4) == 16
    perfkit.memory._flush_writes()
    assert ours.check_call_in_cache(4)
    assert [os.path.basename(f) for f in _files_under(tmp_path / "perfkit")][-1] == "func_code.py"
    assert len(_files_under(tmp_path / "perfkit")) == 2


class _Terminal:
    def __init__(self, tty):
        self.tty = tty
        self.text = ""

    def write(self, text):
        self.text += text

    def flush(self):
        pass

    def isatty(self):
        return self.tty


def _screen_lines(text):
    """The lines a terminal shows after ``text`` ("\\r" rewrites a line)."""
    return [line.rsplit("\r", 1)[-1].rstrip() for line in text.split("\n") if line.strip()]


@pytest.mark.parametrize("backend", ["sequential", "threads", "processes"])
def test_a_call_with_no_tasks_shows_one_progress_line_without_a_rate(monkeypatch, capsys, backend):
    # progress=True on an empty input printed "0 tasks, 0.0 tasks/s", a rate
    # for a call that ran nothing (tqdm's bar shows "?it/s"). joblib reports
    # the empty call (verbose, n_jobs=1: "Done 0 out of 0"), with no rate.
    import sys

    joblib.Parallel(n_jobs=1, verbose=10)([])
    theirs = capsys.readouterr().err
    assert "0 out of   0" in theirs and "/s" not in theirs
    for tty in (False, True):
        for tasks in ([], (x for x in [])):
            stream = _Terminal(tty)
            monkeypatch.setattr(sys, "stderr", stream)
            assert perfkit.Parallel(n_jobs=2, backend=backend, progress=True)(tasks) == []
            monkeypatch.undo()
            assert _screen_lines(stream.text) == ["perfkit.Parallel: 0 tasks"], (tty, stream.text)
            assert stream.text.endswith("\n")


def _fid_leaf(n):
    return sum(range(n))


def _fid_middle(n):
    return [_fid_leaf(k) for k in range(n)]


def _fid_top():
    return [_fid_middle(k) for k in range(30)], sorted(str(k) for k in range(200))


@pytest.mark.parametrize(
    "given",
    [
        ["-l", "5", "-f", "_fid_"],
        ["-f", "_fid_", "-l", "2"],
        ["-f", "_fid_|built-in", "-l", "0.5", "-f", "leaf|sorted"],
        ["-l", "8", "-l", "3"],
        ["--limit", "0.9", "--filter", "_fid_", "--limit", "-1"],
    ],
)
def test_stats_restrictions_repeat_and_apply_in_order_as_print_stats(tmp_path, given):
    # perfkit stats took -f and -l once each ("the argument '--limit' cannot
    # be used multiple times") and applied the filter first whatever their
    # order; pstats' print_stats("foo", 10, 0.5) applies each restriction to
    # what the ones before it kept, in the order given.
    import cProfile
    import io
    import pstats
    import subprocess
    import sys
    from pathlib import Path

    path = tmp_path / "run.prof"
    profiler = cProfile.Profile()
    profiler.runcall(_fid_top)
    profiler.dump_stats(path)
    amounts = []
    for option, value in zip(given[::2], given[1::2]):
        if option.endswith("f") or option == "--filter":
            amounts.append(value)
        else:
            amounts.append(float(value) if "." in value else int(value))
    buf = io.StringIO()
    pstats.Stats(str(path), stream=buf).sort_stats("cumulative").print_stats(*amounts)
    theirs = buf.getvalue()
    assert theirs.count("due to restriction") >= 2  # (each of them cut the list)
    script = Path(sys.executable).parent / "perfkit"
    command = [str(script)] if script.exists() else [sys.executable, "-m", "perfkit"]
    r = subprocess.run(
        [*command, "stats", str(path), *given], check=False, capture_output=True, text=True, timeout=60
    )
    assert r.returncode == 0, r.stderr

    def table(text):
        return [line for line in text.splitlines() if str(path) not in line]

    assert table(r.stdout) == table(theirs)
