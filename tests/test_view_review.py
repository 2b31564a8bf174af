"""`perfkit view` used on real profiles as a snakeviz user would, checked
against pstats for the same files: what a review of the viewer found."""

from __future__ import annotations

import pstats
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from view_support import ViewServer

ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+")


def cprofile_run(path: Path, source: str) -> Path:
    """A script profiled by `python -m cProfile -o path` in a process of its own."""
    script = path.with_suffix(".py")
    script.write_text(source)
    subprocess.run(
        [sys.executable, "-m", "cProfile", "-o", str(path), str(script)],
        check=True,
        capture_output=True,
    )
    return path


NEW_AND_DUNDER = """
class Point:
    def __new__(cls, x):
        return object.__new__(cls)

for i in range({n}):
    Point(i)
"""


def test_diff_matches_builtins_named_by_an_address(tmp_path):
    # cProfile names some built-ins by an object's address, which moves from
    # run to run: "{built-in method __new__ of type object at 0x7f8c0ea5ea00}".
    # A diff of two runs of one program listed it twice, as a new function
    # among the regressions and as a gone one among the improvements.
    before = cprofile_run(tmp_path / "before.prof", NEW_AND_DUNDER.format(n=300))
    after = cprofile_run(tmp_path / "after.prof", NEW_AND_DUNDER.format(n=700))

    def addressed(path):
        return {k: v for k, v in pstats.Stats(str(path)).stats.items() if ADDRESS.search(k[2])}

    b, a = addressed(before), addressed(after)
    assert b and a, "cProfile named no built-in by an address"
    if set(b) == set(a):
        pytest.skip("both runs had the same addresses (no address randomization here)")
    with ViewServer(before, after) as server:
        funcs = server.get_json("api/funcs")
        diff = server.get_json("api/diff")
    names = [funcs["name"][f] for f in diff["f"]]
    for key, (_, nc_before, *_rest) in b.items():
        (key_after,) = [k for k in a if ADDRESS.sub("", k[2]) == ADDRESS.sub("", key[2])]
        rows = [r for r, n in enumerate(names) if ADDRESS.sub("", n) == ADDRESS.sub("", key[2])]
        assert len(rows) == 1, [names[r] for r in rows]
        r = rows[0]
        assert (diff["before_nc"][r], diff["after_nc"][r]) == (nc_before, a[key_after][1])
        assert diff["before_tt"][r] == pytest.approx(b[key][2])
        assert diff["after_tt"][r] == pytest.approx(a[key_after][2])


# -- in the browser ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def browser():
    from test_view_browser import chromium_session

    with chromium_session() as driver:
        yield driver


def test_a_profile_with_no_time_says_why_the_chart_is_empty(browser, tmp_path):
    # A profile whose every time is 0 (a coarse clock, a run too short to
    # measure) drew a lone "all" bar and nothing else, without a word; its
    # table lists the functions, as pstats does.
    import marshal

    from test_view_browser import open_ready

    path = tmp_path / "zero.prof"
    main, leaf = ("a.py", 1, "main"), ("a.py", 5, "leaf")
    marshal.dump(
        {main: (1, 1, 0.0, 0.0, {}), leaf: (3, 3, 0.0, 0.0, {main: (3, 3, 0.0, 0.0)})}, path.open("wb")
    )
    assert pstats.Stats(str(path)).total_tt == 0
    with ViewServer(path) as server:
        open_ready(browser, server.url)
        note = browser.find_element("id", "chart-note")
        assert note.is_displayed() and "no time" in note.text, note.text
        rows = browser.execute_script("return document.querySelectorAll('#stats tbody tr').length")
        assert rows == len(pstats.Stats(str(path)).stats)


def test_snakeviz_hostname_flag(tmp_path):
    # snakeviz -s -H ADDR -p PORT is how a remote box's profile is served;
    # perfkit view took -s and -p but refused -H/--hostname ("unexpected
    # argument '-H'").
    from view_support import write_cprofile

    path = write_cprofile(tmp_path / "w.prof")
    for flag in ("-H", "--hostname"):
        with ViewServer(path, extra=(flag, "127.0.0.2")) as server:
            assert server.url.startswith("http://127.0.0.2:"), server.url
            assert server.get_json("api/meta")["files"] == [str(path)]


def test_the_selected_function_stays_selected_on_a_thread_switch(browser, tmp_path):
    # A function picked in "all threads" (its callers, its row) was dropped
    # when another thread was chosen, though the function is the same one in
    # every thread: to see how a thread calls it meant finding it again.
    from selenium.webdriver.support.ui import Select
    from test_view_browser import hash_state, open_ready, settle, table_rows
    from view_support import write_threaded

    src = write_threaded(tmp_path / "threads.prof")
    with ViewServer(src) as server:
        open_ready(browser, server.url)
        row = next(
            r for r in browser.find_elements("css selector", "#stats tbody tr") if r.text.endswith("(leaf)")
        )
        row.click()
        settle(browser)
        label = browser.find_element("id", "sel-name").text
        assert label.endswith("(leaf)")
        Select(browser.find_element("id", "thread")).select_by_visible_text("worker-thread")
        time.sleep(0.1)
        settle(browser)
        assert browser.find_element("id", "sel-name").text == label
        assert "sel" in hash_state(browser)
        # This thread's callers of it: the worker only, as its own table says.
        callers = [r[3] for r in table_rows(browser, "callers")]
        assert callers and all(c.endswith("(worker)") for c in callers), callers
        selected = browser.execute_script(
            "return [...document.querySelectorAll('#stats tr.selected')].map(r => r.cells[5].textContent)"
        )
        assert selected == [label]


def test_diff_tables_show_small_changes_and_say_which_run_is_shown(browser, tmp_path):
    # A change under 0.5 µs read "+0.000" (milliseconds to 3 decimals), and
    # nothing said that the table and chart under the diff are the after run's.
    import marshal

    from test_view_browser import open_ready, table_rows

    main, big, tiny = ("a.py", 1, "main"), ("a.py", 5, "big"), ("a.py", 9, "tiny")
    runs = {}
    for name, tiny_tt in (("before", 1.0e-6), ("after", 1.3e-6)):
        runs[name] = tmp_path / f"{name}.prof"
        stats = {
            main: (1, 1, 0.001, 0.5 + tiny_tt + 0.001, {}),
            big: (1, 1, 0.5, 0.5, {main: (1, 1, 0.5, 0.5)}),
            tiny: (1, 1, tiny_tt, tiny_tt, {main: (1, 1, tiny_tt, tiny_tt)}),
        }
        marshal.dump(stats, runs[name].open("wb"))
    change = (
        pstats.Stats(str(runs["after"])).stats[tiny][2] - pstats.Stats(str(runs["before"])).stats[tiny][2]
    )
    with ViewServer(runs["before"], runs["after"]) as server:
        open_ready(browser, server.url)
        row = next(r for r in table_rows(browser, "regressions") if r[4].endswith("(tiny)"))
        assert row[0].startswith("+") and float(row[0][1:]) == pytest.approx(change * 1e3, rel=1e-3), row
        note = browser.find_element("id", "diff-note").text
        assert "after run's (" + str(runs["after"]) in note and str(runs["before"]) in note, note
