"""perfkit as a data scientist uses it from notebooks, side by side with the
tools it replaces there: joblib, cProfile's ``%prun`` and snakeviz's
``%snakeviz``."""

from __future__ import annotations

import re

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
