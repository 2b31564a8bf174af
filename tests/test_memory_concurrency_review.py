"""perfkit.Memory shared by several writers and on a location that cannot be
written, side by side with joblib.Memory where joblib behaves sensibly.

- ``clear()`` while another process writes into the cache: a writer whose
  path lookup passed the directory before ``clear()`` renamed it away can
  still create a file in it; the removal of that renamed directory then met
  "Directory not empty" and ``clear()`` raised, though every entry was
  already out of the cache. (joblib's ``clear()`` raises the same error in
  this race: its ``rmtree`` works on the live directory.)
"""

from __future__ import annotations

import os
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
