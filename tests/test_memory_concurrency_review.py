"""perfkit.Memory shared by several writers and on a location that cannot be
written, side by side with joblib.Memory where joblib behaves sensibly.

- ``clear()`` while another process writes into the cache: a writer whose
  path lookup passed the directory before ``clear()`` renamed it away can
  still create a file in it; the removal of that renamed directory then met
  "Directory not empty" and ``clear()`` raised, though every entry was
  already out of the cache. (joblib's ``clear()`` raises the same error in
  this race: its ``rmtree`` works on the live directory.)
- A location that cannot be written (full, read-only, a file where a
  directory should be): each miss warned with a message naming its own
  temporary file, so Python's default filter showed every one, a hundred
  misses a hundred two-line warnings; joblib's message is the same each
  time and the filter shows it once.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import perfkit


def _clear_with_a_late_writer(mem, entry_dir: Path) -> int:
    """``mem.clear()`` while a thread stands for another process's writer whose
    lookup of ``entry_dir`` resolved before clear() renamed the tree away: its
    files land in the renamed tree (a held directory descriptor does exactly
    that) until 20 ms after it saw the rename. Returns how many it created."""
    # Many files to delete: the removal is long enough for the writer to add some.
    for k in range(3000):
        os.close(os.open(entry_dir / f".tmp-old-{k}", os.O_CREAT | os.O_WRONLY, 0o644))
    dir_fd = os.open(entry_dir, os.O_RDONLY | os.O_DIRECTORY)
    started, created = threading.Event(), [0]

    def late_writer():
        renamed_at, i = None, 0
        while renamed_at is None or time.monotonic() - renamed_at < 0.02:
            try:
                os.close(os.open(f".tmp-late-{i}", os.O_CREAT | os.O_WRONLY, 0o644, dir_fd=dir_fd))
                created[0] += 1
            except FileNotFoundError:  # the renamed directory itself is gone: nothing more can land
                break
            i += 1
            started.set()
            if renamed_at is None and not entry_dir.exists():
                renamed_at = time.monotonic()

    t = threading.Thread(target=late_writer)
    t.start()
    try:
        started.wait(5)
        # It raised OSError "could not remove .../.trash-perfkit-...: Directory not empty".
        mem.clear(warn=False)
    finally:
        t.join(10)
        os.close(dir_fd)
    return created[0]


def test_clear_while_a_late_writer_creates_files_in_the_removed_directory_does_not_raise(tmp_path):
    mem = perfkit.Memory(tmp_path)
    calls = []

    @mem.cache
    def work(x):
        calls.append(x)
        return np.full(10, x)

    for round in range(3):  # the race is the writer's: three rounds make it all but certain
        for x in range(20):
            work(x)
        perfkit.memory._flush_writes()
        entries = sorted(Path(tmp_path).rglob("*.pkc"))
        assert len(entries) == 20
        assert _clear_with_a_late_writer(mem, entries[0].parent) > 0
        assert not work.check_call_in_cache(1)
        assert sorted(Path(tmp_path).rglob("*.pkc")) == []
        assert sorted(p.name for p in Path(tmp_path).iterdir()) == []  # no trash left either
    assert work(1)[0] == 1 and calls.count(1) == 4 and work.check_call_in_cache(1)


UNWRITABLE_CHILD = textwrap.dedent(
    """
    import os, resource, shutil, signal, sys
    import numpy as np

    library, location, case = sys.argv[1:4]
    if library == "perfkit":
        import perfkit
        mem = perfkit.Memory(location)
    else:
        import joblib
        mem = joblib.Memory(location, verbose=0)

    @mem.cache
    def work(i, n):
        return np.full(n, i)

    if case == "full":
        # A full disk without root: a file-size limit makes every large write fail (EFBIG).
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (256 * 1024, resource.RLIM_INFINITY))
        n = 100_000  # 800 kB
    else:
        # Small results, written by perfkit's background writer once a first one was
        # stored; then the function's directory is replaced by a file.
        n = 10
        work(-1, n)
        if library == "perfkit":
            perfkit.memory._flush_writes()
        [code_dir] = {os.path.dirname(os.path.dirname(os.path.join(d, f)))
                      for d, _, fs in os.walk(location) for f in fs if f.endswith((".pkc", "output.pkl"))}
        shutil.rmtree(code_dir)
        open(code_dir, "w").close()
    for i in range(30):
        out = work(i, n)
        assert out.shape == (n,) and out[0] == i
    print("OK")
    """
)


def _warnings_shown(library: str, location: Path, case: str) -> list[str]:
    done = subprocess.run(
        [sys.executable, "-c", UNWRITABLE_CHILD, library, str(location), case],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0 and done.stdout.strip() == "OK", done.stdout + done.stderr
    return [line for line in done.stderr.splitlines() if "CacheWarning" in line]


def test_a_full_location_warns_once_not_at_every_miss_as_joblib(tmp_path):
    joblibs = _warnings_shown("joblib", tmp_path / "j", "full")
    perfkits = _warnings_shown("perfkit", tmp_path / "p", "full")
    assert len(joblibs) == 1, joblibs
    assert len(perfkits) == 1, perfkits
    assert "could not store the result of" in perfkits[0] and "File too large" in perfkits[0]
    assert "it is returned but not cached" in perfkits[0]
    assert ".tmp-" not in perfkits[0]


def test_background_write_failures_warn_once_not_once_per_result(tmp_path):
    """30 results fail in the background: reported at a later store (at the
    caller's line) or at exit (at perfkit's), each place once."""
    perfkits = _warnings_shown("perfkit", tmp_path / "p", "blocked")
    assert 1 <= len(perfkits) <= 2, perfkits
    [message] = {line.split("CacheWarning: ", 1)[1] for line in perfkits}
    assert "could not store a result of" in message and "Not a directory" in message
    assert ".tmp-" not in message
