"""perfkit.Parallel's data transfer, progress bar, thread limits and
generators, reviewed side by side with joblib (helper review: transfer)."""

from __future__ import annotations

import io
import pickle
import sys

import joblib
import perfkit.parallel as pp
from perfkit import Parallel, delayed


def _screen(text: str) -> str:
    """What a terminal shows on its last line after ``text``: a "\\r" goes
    back to the line's start and later characters overwrite earlier ones."""
    line: list[str] = []
    col = 0
    for ch in text:
        if ch == "\r":
            col = 0
        elif ch == "\n":
            line, col = [], 0
        else:
            if col < len(line):
                line[col] = ch
            else:
                line.append(ch)
            col += 1
    return "".join(line)


class _Terminal(io.StringIO):
    def isatty(self):
        return True


def test_a_progress_bar_that_gets_shorter_leaves_no_characters_of_the_longer_one(monkeypatch):
    # The bar is redrawn after "\r" with one trailing space; when its text got
    # two or more characters shorter (the ETA going from 1:00:00 to 59:59, the
    # rate from 100.0 to 99.9 tasks/s), the old line's tail stayed on the
    # screen: "ETA 54:12 0".
    monkeypatch.setattr(sys, "stderr", _Terminal())
    progress = pp._Progress(total=10_000, enabled=True)
    progress.start -= 400.0  # 1,000 done in 400 s: 2.5 tasks/s, ETA 1:00:00
    progress.last_draw -= 1.0
    progress.update(1_000)
    first = sys.stderr.getvalue().rsplit("\r", 1)[1]
    assert "ETA 1:00:00" in first, first
    progress.start -= 2.0
    progress.last_draw -= 1.0
    progress.update(100)  # 1,100 in 402 s: ETA 54:12, two characters shorter
    drawn = sys.stderr.getvalue().rsplit("\r", 1)[1]
    assert len(drawn.rstrip()) < len(first.rstrip())
    assert _screen(sys.stderr.getvalue()).rstrip() == drawn.rstrip()
    progress.close(completed=False)
    assert sys.stderr.getvalue().endswith("\n")


_KEPT: list = []


def _keep_buffer(data, i):
    """A task that keeps its argument (a cache, say), then reads all it kept."""
    _KEPT.append((i, data))
    return [(j, bytes(memoryview(kept)[:2])) for j, kept in _KEPT if j <= i]


def test_a_pickle_buffer_argument_a_task_keeps_stays_readable_with_shared_memory(monkeypatch):
    # A pickle.PickleBuffer (what an object with a protocol-5 __reduce_ex__
    # sends zero-copy) comes out of pickle as the buffer object itself. With
    # the arguments in shared memory (PERFKIT_REMOTE_READ=0, or Yama's
    # ptrace_scope >= 2), that was the worker's view of the segment, which
    # the worker released after the batch: a task that had kept it saw
    # "ValueError: operation forbidden on released memoryview object".
    # joblib's tasks keep what they were given.
    pp._shutdown_shared_pool()
    monkeypatch.setattr(pp, "_remote_read_allowed", False)
    try:

        def tasks():
            return (delayed(_keep_buffer)(pickle.PickleBuffer(bytearray([i]) * 200_000), i) for i in range(6))

        ours = Parallel(n_jobs=2, batch_size=1)(tasks())
        theirs = joblib.Parallel(n_jobs=2, batch_size=1)(tasks())
        for mine, joblibs in zip(ours, theirs):
            # (each worker kept its own tasks' buffers: compare what each kept)
            assert all(kept == bytes([j]) * 2 for j, kept in mine), mine
            assert all(kept == bytes([j]) * 2 for j, kept in joblibs), joblibs
        assert Parallel(n_jobs=2)(delayed(len)(b"x" * i) for i in range(3)) == [0, 1, 2]
    finally:
        pp._shutdown_shared_pool()


def _describe(array):
    return type(array).__name__, array.dtype.str, array.shape, array.tolist(), array.flags.writeable


def _copy_on_write_memmap(path, dtype):
    import numpy as np

    return np.memmap(path, dtype=dtype, mode="c")


def test_a_copy_on_write_memmap_keeps_its_byte_order_and_type_as_in_joblib(tmp_path):
    # A "c" memmap travels by value (README); it went as numpy pickles a
    # memmap (an ndarray subclass: its bytes in band, not out of band), which
    # turns a big-endian dtype into the native one: a task given
    # np.memmap(path, dtype=">f4", mode="c") saw '<f4' where joblib's sees
    # '>f4' (and 80 MB of it took 1 s, against 0.1 for the same plain array).
    import numpy as np

    path = tmp_path / "values.dat"
    np.arange(12, dtype=">f4").tofile(path)
    for dtype in (">f4", "<i2", np.dtype([("a", ">i2"), ("b", "<u2")])):
        whole = np.memmap(path, dtype=dtype, mode="c")
        for view in (whole, whole[1:]):
            ours = Parallel(n_jobs=2)(delayed(_describe)(view) for _ in range(2))
            assert ours == joblib.Parallel(n_jobs=2)(delayed(_describe)(view) for _ in range(2))
        # ... and as a task's result, as the task's memmap was
        back = Parallel(n_jobs=2)(delayed(_copy_on_write_memmap)(path, dtype) for _ in range(2))
        assert [_describe(b) for b in back] == [_describe(whole)] * 2
