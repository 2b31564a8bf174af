"""perfkit.Parallel's data transfer, progress bar, thread limits and
generators, reviewed side by side with joblib (helper review: transfer)."""

from __future__ import annotations

import io
import sys

import perfkit.parallel as pp


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
