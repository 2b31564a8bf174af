"""The viewer in a real browser (headless Chromium through selenium), along
a user's path: open a profile, see the chart and the table, zoom by
clicking, search, sort, callers/callees, sunburst, threads, theme, the URL
that reopens a view, a diff, and the exported HTML opened from disk. Every
test asserts on what is on the page; screenshots go to test-artifacts/view/."""

from __future__ import annotations

import contextlib
import html
import os
import pstats
import re
import shutil
import tempfile
import time
from pathlib import Path
from urllib.parse import parse_qs

import perfkit
import pytest
from conftest import run_cli
from ipython_support import WORK, run_shell
from selenium import webdriver
from selenium.common.exceptions import NoAlertPresentException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support.ui import Select
from view_support import (
    HOSTILE_FILE,
    HOSTILE_NAME,
    ViewServer,
    workload,
    write_cprofile,
    write_deep_recursion,
    write_hostile,
    write_perfkit,
    write_threaded,
)

CHROMIUM = os.environ.get("PERFKIT_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("PERFKIT_CHROMEDRIVER", "/usr/bin/chromedriver")
ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts" / "view"
CHROME_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--window-size=1400,1000",
]


@contextlib.contextmanager
def chromium_session():
    """A headless Chromium driven by chromedriver, and afterwards nothing left
    of it: Chromium keeps its profile and its singleton socket in the temp
    directory, and left an org.chromium.Chromium.* directory there per run."""
    if not (os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER)):
        pytest.fail(
            f"the browser tests need {CHROMIUM} and {CHROMEDRIVER}: "
            "apt-get install -y chromium chromium-driver (.ci/run does this)"
        )
    own_tmp = tempfile.mkdtemp(prefix="perfkit-chromium-")
    try:
        options = webdriver.ChromeOptions()
        options.binary_location = CHROMIUM
        for flag in CHROME_FLAGS:
            options.add_argument(flag)
        options.add_argument(f"--user-data-dir={own_tmp}/profile")
        service = Service(CHROMEDRIVER, env={**os.environ, "TMPDIR": own_tmp})
        driver = webdriver.Chrome(service=service, options=options)
        try:
            yield driver
        finally:
            driver.quit()
    finally:
        shutil.rmtree(own_tmp, ignore_errors=True)


@pytest.fixture(scope="module")
def browser():
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with chromium_session() as driver:
        yield driver


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("viewb")
    return {
        "cprofile": write_cprofile(d / "work.cprofile.prof"),
        "perfkit": write_perfkit(d / "work.prof"),
        "dir": d,
    }


def shot(driver, name: str) -> None:
    driver.save_screenshot(str(ARTIFACTS / f"{name}.png"))


def wait_state(driver, timeout: float = 30) -> str:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        state = driver.execute_script("return document.body && document.body.dataset.state")
        if state in ("ready", "error"):
            return state
        time.sleep(0.05)
    raise AssertionError("the page never became ready")


def open_ready(driver, url: str) -> None:
    driver.get(url)
    state = wait_state(driver)
    if state != "ready":
        raise AssertionError("page error: " + driver.find_element(By.ID, "error").text)


def frames(driver) -> list[dict]:
    return driver.execute_script("return window.perfkitView.frames()")


def frame_named(driver, name: str) -> dict:
    found = [f for f in frames(driver) if f["name"] == name]
    assert found, f"no frame {name!r} drawn; drawn: {sorted({f['name'] for f in frames(driver)})[:20]}"
    return max(found, key=lambda f: f["w"])


def settle(driver, timeout: float = 30) -> None:
    """Waits until the page has no request in flight (a zoom's refined slice, a thread switch)."""
    end = time.monotonic() + timeout
    while driver.execute_script("return window.perfkitView.state().busy"):
        if time.monotonic() > end:
            raise AssertionError("the page stayed busy")
        time.sleep(0.02)


def click_canvas(driver, x: float, y: float) -> None:
    canvas = driver.find_element(By.ID, "chart")
    size = canvas.size
    ActionChains(driver).move_to_element_with_offset(
        canvas, int(x - size["width"] / 2), int(y - size["height"] / 2)
    ).click().perform()
    settle(driver)


def click_crumb(driver, index: int) -> None:
    driver.find_elements(By.CSS_SELECTOR, "#crumbs .crumb")[index].click()
    settle(driver)


def crumbs(driver) -> list[str]:
    return [b.text for b in driver.find_elements(By.CSS_SELECTOR, "#crumbs .crumb")]


def crumb_path(driver) -> tuple[list[tuple[str, int]], int]:
    """The breadcrumbs shown, as (name, node), and how many levels the "…" stands for."""
    shown = driver.execute_script(
        "return [...document.querySelectorAll('#crumbs .crumb')].map(b => [b.textContent, Number(b.dataset.node)])"
    )
    hidden = driver.execute_script(
        "const g = document.querySelector('#crumbs .crumb-gap'); return g ? Number(g.dataset.hidden) : 0"
    )
    return [tuple(c) for c in shown], hidden


def hash_state(driver) -> dict:
    h = driver.execute_script("return location.hash").lstrip("#")
    return {k: v[0] for k, v in parse_qs(h).items()}


def table_rows(driver, table_id: str = "stats") -> list[list[str]]:
    return driver.execute_script(
        "return [...document.querySelectorAll('#' + arguments[0] + ' tbody tr')]"
        ".map(tr => [...tr.cells].map(td => td.textContent))",
        table_id,
    )


def pixel(driver, x: float, y: float) -> list[int]:
    return driver.execute_script(
        "const c = document.getElementById('chart'), r = window.devicePixelRatio || 1;"
        "return [...c.getContext('2d').getImageData(Math.round(arguments[0] * r), Math.round(arguments[1] * r), 1, 1).data];",
        x,
        y,
    )


def tip_at(driver, frame: dict) -> dict:
    """The tooltip of a drawn frame (a mouse move over it), as {row: value}."""
    driver.execute_script(
        "const c = document.getElementById('chart'), r = c.getBoundingClientRect();"
        "c.dispatchEvent(new MouseEvent('mousemove', {clientX: r.left + arguments[0],"
        " clientY: r.top + arguments[1], bubbles: true}));",
        frame["x"],
        frame["y"],
    )
    return driver.execute_script(
        "return Object.fromEntries([...document.querySelectorAll('#tip tr')]"
        ".map(tr => [tr.cells[0].textContent, tr.cells[1].textContent]))"
    )


def assert_no_alert(driver) -> None:
    time.sleep(0.3)
    try:
        alert = driver.switch_to.alert
        text = alert.text
        alert.dismiss()
    except NoAlertPresentException:
        return
    raise AssertionError(f"the page ran script from the profile: alert({text!r})")


def pstats_row(stats: pstats.Stats, key, times: str = ".4g") -> list[str]:
    """A row of pstats' print_stats; its times as snakeviz shows them (4
    significant digits), or with ``times=".3f"`` as pstats prints them."""
    cc, nc, tt, ct, _ = stats.stats[key]
    ncalls = f"{nc}/{cc}" if nc != cc else str(nc)
    return [
        ncalls,
        format(tt, times),
        format(tt / nc, times) if nc else "",
        format(ct, times),
        format(ct / cc, times) if cc else "",
        pstats.func_std_string(key),
    ]


# -- a user's path ------------------------------------------------------------------------


def test_open_zoom_search_sort_select_sunburst(browser, files):
    with ViewServer(files["perfkit"]) as server:
        open_ready(browser, server.url)
        shot(browser, "01-open")
        assert browser.find_element(By.ID, "exactness").text == "exact tree"
        drawn = frames(browser)
        assert len(drawn) >= 8 and drawn[0]["name"] == "all"
        assert len(table_rows(browser)) > 5

        # Click-to-zoom: slow_path fills the width, breadcrumbs and URL follow.
        target = frame_named(browser, "slow_path")
        click_canvas(browser, target["x"], target["y"])
        assert crumbs(browser)[-1] == "slow_path"
        top = [f for f in frames(browser) if f["depth"] == 0]
        width = browser.find_element(By.ID, "chart").size["width"]
        assert [f["name"] for f in top] == ["slow_path"] and top[0]["w"] >= width - 2
        assert {f["name"] for f in frames(browser)} >= {"leaf", "<genexpr>"}
        assert "fast_path" not in {f["name"] for f in frames(browser)}
        state = hash_state(browser)
        assert int(state["focus"]) == target["id"]
        assert browser.find_element(By.ID, "sel-name").text.endswith("(slow_path)")
        shot(browser, "02-zoomed")
        zoomed_url = browser.current_url

        # Search highlights matching frames.
        search = browser.find_element(By.ID, "search")
        search.send_keys("leaf")
        time.sleep(0.3)
        assert browser.find_element(By.ID, "search-count").text == "1 function matches"
        hit = frame_named(browser, "leaf")
        assert pixel(browser, hit["x"], hit["y"] + 6)[:3] == [0xD5, 0x00, 0xF9]
        shot(browser, "03-search")
        search.clear()
        search.send_keys("x")
        search.send_keys("\b")
        time.sleep(0.3)

        # Back to the top through the breadcrumbs.
        click_crumb(browser, 0)
        assert crumbs(browser) == ["all"]

        # Sort by tottime (pstats' order), then by name ascending, by header clicks.
        browser.find_element(By.CSS_SELECTOR, '#stats th[data-key="tt"]').click()
        rows = table_rows(browser)
        tts = [float(r[1]) for r in rows]
        assert tts == sorted(tts, reverse=True)
        assert hash_state(browser)["sort"] == "tt"
        browser.find_element(By.CSS_SELECTOR, '#stats th[data-key="name"]').click()
        names = [r[5] for r in table_rows(browser)]
        assert names == sorted(names)

        # Filter the table.
        browser.find_element(By.ID, "filter").send_keys("_path")
        time.sleep(0.3)
        assert sorted(r[5].rsplit("(", 1)[1] for r in table_rows(browser)) == ["fast_path)", "slow_path)"]

        # Callers and callees of a function picked in the table.
        row = next(
            tr for tr in browser.find_elements(By.CSS_SELECTOR, "#stats tbody tr") if "(slow_path)" in tr.text
        )
        row.click()
        settle(browser)
        callers = [r[3] for r in table_rows(browser, "callers")]
        callees = [r[3] for r in table_rows(browser, "callees")]
        assert any(c.endswith("(workload)") for c in callers), callers
        assert [c for c in callees if c.endswith("(leaf)")] and len(callees) == 1, callees
        calls_of_leaf = next(r for r in table_rows(browser, "callees") if r[3].endswith("(leaf)"))[0]
        assert calls_of_leaf == "40"
        shot(browser, "04-callers-callees")

        # Sunburst: drawn, and a click on a ring zooms into that frame.
        browser.find_element(By.ID, "mode-sunburst").click()
        assert hash_state(browser)["mode"] == "sunburst"
        ring = frame_named(browser, "workload")
        click_canvas(browser, ring["x"], ring["y"])
        assert crumbs(browser)[-1] == "workload"
        center = [f for f in frames(browser) if f["depth"] == 0]
        assert [f["name"] for f in center] == ["workload"]
        shot(browser, "05-sunburst")

        # Dark theme, kept in the URL.
        was = browser.execute_script("return document.documentElement.dataset.theme")
        browser.find_element(By.ID, "theme").click()
        now = browser.execute_script("return document.documentElement.dataset.theme")
        assert {was, now} == {"light", "dark"} and hash_state(browser)["theme"] == now
        shot(browser, "06-dark")

        # The URL reopens the same zoom and mode.
        browser.get("about:blank")
        open_ready(browser, zoomed_url)
        assert crumbs(browser)[-1] == "slow_path"
        assert [f["name"] for f in frames(browser) if f["depth"] == 0] == ["slow_path"]


def test_click_on_focused_frame_zooms_out(browser, files):
    with ViewServer(files["perfkit"]) as server:
        open_ready(browser, server.url)
        leaf_frame = frame_named(browser, "leaf")
        click_canvas(browser, leaf_frame["x"], leaf_frame["y"])
        assert crumbs(browser)[-1] == "leaf"
        path = crumbs(browser)
        top = next(f for f in frames(browser) if f["depth"] == 0)
        click_canvas(browser, top["x"], top["y"])
        assert crumbs(browser) == path[:-1]
        # Escape goes one more level up.
        ActionChains(browser).send_keys(Keys.ESCAPE).perform()
        settle(browser)
        assert crumbs(browser) == path[:-2]


def test_percent_of_parent_is_kept_after_zooming(browser, files):
    # The zoomed frame is the slice's root, its parent outside the slice:
    # its "% of parent" was of the view's total (its "% of root").
    with ViewServer(files["perfkit"]) as server:
        open_ready(browser, server.url)
        target = frame_named(browser, "leaf")
        before = tip_at(browser, target)
        assert before["% of parent"] != before["% of root"], before
        click_canvas(browser, target["x"], target["y"])
        top = next(f for f in frames(browser) if f["depth"] == 0)
        assert top["name"] == "leaf" and top["id"] == target["id"]
        after = tip_at(browser, top)
        assert after["% of parent"] == before["% of parent"], (before, after)
        assert after["% of root"] == before["% of root"]
        # The view's root has no parent.
        click_crumb(browser, 0)
        top = next(f for f in frames(browser) if f["depth"] == 0)
        assert tip_at(browser, top)["% of parent"] == "–"


def test_lowering_the_minimum_size_brings_back_narrow_frames(browser, files):
    # helper-44: the slice had come over without the frames under the raised
    # minimum, and lowering it only redrew what was there.
    with ViewServer(files["perfkit"]) as server:
        open_ready(browser, server.url)
        everything = len(frames(browser))
        browser.get("about:blank")  # (a new hash alone would not load the page again)
        open_ready(browser, server.url + "#min=10")
        settle(browser)
        culled = len(frames(browser))
        browser.execute_script(
            "const m = document.getElementById('minsize'); m.value = '0';"
            "m.dispatchEvent(new Event('change'));"
        )
        time.sleep(0.1)
        settle(browser)
        assert culled < everything
        assert len(frames(browser)) == everything


def test_table_agrees_with_pstats_and_perfkit_stats(browser, files):
    src = files["cprofile"]
    want = pstats.Stats(str(src))
    with ViewServer(src) as server:
        open_ready(browser, server.url)
        assert "approximate" in browser.find_element(By.ID, "exactness").text
        rows = table_rows(browser)
        shot(browser, "07-cprofile-table")
    assert len(rows) == len(want.stats)
    by_label = {pstats.func_std_string(k): pstats_row(want, k) for k in want.stats}
    for row in rows:
        assert row == by_label[row[5]], row
    # The page's order is pstats' cumulative order (ties aside).
    cts = [float(r[3]) for r in rows]
    assert cts == sorted(cts, reverse=True)
    # `perfkit stats` prints the same rows.
    r = run_cli("stats", src, "--sort", "cumulative")
    assert r.returncode == 0, r.stderr
    printed = {}
    for line in r.stdout.splitlines():
        m = re.match(r"^\s*(\d+(?:/\d+)?)\s+(\S+)\s+(\S+)\s+(\S+)\s+(\S+)\s+(.*)$", line)
        if m and m.group(6) in by_label:
            printed[m.group(6)] = list(m.groups())
    for row in rows:
        if row[2] and row[4]:
            key = next(k for k in want.stats if pstats.func_std_string(k) == row[5])
            assert printed[row[5]] == pstats_row(want, key, ".3f"), row


def test_hostile_names_render_as_text(browser, tmp_path):
    src = write_hostile(tmp_path / "evil.prof")
    with ViewServer(src) as server:
        open_ready(browser, server.url)
        assert_no_alert(browser)
        labels = [r[5] for r in table_rows(browser)]
        assert any(
            label.startswith(HOSTILE_FILE) and label.endswith(f"({HOSTILE_NAME})") for label in labels
        ), labels
        assert browser.execute_script("return document.querySelectorAll('img, #stats script').length") == 0
        row = next(
            tr for tr in browser.find_elements(By.CSS_SELECTOR, "#stats tbody tr") if HOSTILE_NAME in tr.text
        )
        row.click()
        assert browser.find_element(By.ID, "sel-name").text.endswith(f"({HOSTILE_NAME})")
        frame = frame_named(browser, HOSTILE_NAME)
        ActionChains(browser).move_to_element_with_offset(
            browser.find_element(By.ID, "chart"),
            int(frame["x"] - browser.find_element(By.ID, "chart").size["width"] / 2),
            int(frame["y"] - browser.find_element(By.ID, "chart").size["height"] / 2),
        ).perform()
        tip = browser.find_element(By.ID, "tip")
        assert HOSTILE_NAME in tip.text
        browser.find_element(By.ID, "search").send_keys("<img")
        time.sleep(0.3)
        assert_no_alert(browser)
        shot(browser, "08-hostile")
    out = tmp_path / "evil.html"
    assert run_cli("export", src, "-o", out).returncode == 0
    open_ready(browser, out.as_uri())
    assert_no_alert(browser)
    assert any(HOSTILE_NAME in r[5] for r in table_rows(browser))
    assert browser.execute_script("return document.querySelectorAll('img').length") == 0


def test_exported_page_works_inside_an_iframe_srcdoc(browser, files, tmp_path):
    """The export inlined as notebooks inline HTML (``<iframe srcdoc>``, the
    document's address about:srcdoc): the page rewrote its address with a
    bare "#...", which resolves against the parent's address and is refused:
    the page stopped in its error state."""
    out = tmp_path / "report.html"
    assert run_cli("export", files["perfkit"], "-o", out).returncode == 0
    holder = tmp_path / "holder.html"
    holder.write_text(
        f'<iframe style="width:100%;height:800px" srcdoc="{html.escape(out.read_text())}"></iframe>'
    )
    browser.get(holder.as_uri())
    browser.switch_to.frame(browser.find_element(By.TAG_NAME, "iframe"))
    try:
        assert wait_state(browser) == "ready", browser.find_element(By.ID, "error").text
        target = frame_named(browser, "fast_path")
        click_canvas(browser, target["x"], target["y"])
        assert crumbs(browser)[-1] == "fast_path"
        assert browser.execute_script("return location.hash").startswith("#view=0&focus=")
    finally:
        browser.switch_to.default_content()


def test_viewer_shown_by_the_magic_draws_inside_a_notebook_page(browser, tmp_path):
    """What %perfkit displays, put in a page as a notebook puts an HTML output:
    the viewer draws in its iframe, and a function named like markup stays a
    name (nothing of it reaches the notebook's page, nor runs in the frame)."""
    evil = (
        "def evil():\n    return leaf(3000)\n"
        f"evil.__code__ = evil.__code__.replace(co_name={HOSTILE_NAME!r}, co_filename={HOSTILE_FILE!r})\n"
        "def notebook_step():\n    for _ in range(5):\n        evil()\n    return work(12)"
    )
    out = run_shell(["%load_ext perfkit", WORK, evil, "%perfkit notebook_step()"], tmp_path)
    assert out[3]["error"] is None, out[3]
    output = out[3]["outputs"][0]["text/html"]
    notebook = tmp_path / "notebook.html"
    notebook.write_text(
        f'<!doctype html><html><head><meta charset="utf-8"></head><body><p id="cell">In [4]</p>{output}</body></html>'
    )
    browser.get(notebook.as_uri())
    iframe = browser.find_element(By.TAG_NAME, "iframe")
    assert iframe.size["height"] >= 600
    assert iframe.size["width"] >= 0.9 * browser.execute_script("return document.body.clientWidth")
    browser.switch_to.frame(iframe)
    try:
        assert wait_state(browser) == "ready", browser.find_element(By.ID, "error").text
        assert frame_named(browser, "notebook_step")["w"] > 100
        hostile = frame_named(browser, HOSTILE_NAME)
        assert browser.execute_script("return document.querySelectorAll('img').length") == 0
        # Zooming (which rewrites the frame's address) works in the sandbox.
        click_canvas(browser, hostile["x"], hostile["y"])
        assert crumbs(browser)[-1] == HOSTILE_NAME
        assert any(HOSTILE_NAME in r[5] for r in table_rows(browser))
        assert browser.find_element(By.ID, "error").get_attribute("hidden") is not None
    finally:
        browser.switch_to.default_content()
    assert_no_alert(browser)
    assert browser.execute_script("return [...document.body.children].map(e => e.tagName)") == ["P", "IFRAME"]
    shot(browser, "11-notebook-iframe")


def test_diff_view(browser, tmp_path):
    before = write_perfkit(tmp_path / "before.prof", workload, 1000, 1000)
    after = write_perfkit(tmp_path / "after.prof", workload, 20000, 1000)
    with ViewServer(before, after) as server:
        open_ready(browser, server.url)
        assert browser.find_element(By.ID, "diff-box").is_displayed()
        title = browser.find_element(By.ID, "title").text
        assert (
            "before.prof" in title and "after.prof" in title and title.index("before") < title.index("after")
        )
        worst = table_rows(browser, "regressions")
        assert worst and worst[0][0].startswith("+")
        assert any(
            w[4].endswith(("(<genexpr>)", "(leaf)", "{built-in method builtins.sum}")) for w in worst[:3]
        ), worst
        # The slowed-down path is drawn red: more red than blue.
        slow = frame_named(browser, "slow_path")
        r, g, b, _ = pixel(browser, slow["x"], slow["y"] + 6)
        assert r > b + 40, (r, g, b)
        # Hover tells before and after.
        canvas = browser.find_element(By.ID, "chart")
        ActionChains(browser).move_to_element_with_offset(
            canvas, int(slow["x"] - canvas.size["width"] / 2), int(slow["y"] - canvas.size["height"] / 2)
        ).perform()
        tip = browser.find_element(By.ID, "tip").text
        assert "before (total)" in tip and "change" in tip and "+" in tip
        shot(browser, "09-diff")


def test_exported_html_works_from_disk(browser, files, tmp_path):
    out = tmp_path / "report.html"
    r = run_cli("export", files["perfkit"], "-o", out)
    assert r.returncode == 0, r.stderr
    open_ready(browser, out.as_uri())
    assert len(table_rows(browser)) > 5
    target = frame_named(browser, "fast_path")
    click_canvas(browser, target["x"], target["y"])
    assert crumbs(browser)[-1] == "fast_path"
    assert [f["name"] for f in frames(browser) if f["depth"] == 0] == ["fast_path"]
    browser.find_element(By.ID, "mode-sunburst").click()
    assert frames(browser)
    browser.find_element(By.CSS_SELECTOR, '#stats th[data-key="nc"]').click()
    calls = [int(r[0].split("/")[0]) for r in table_rows(browser)]
    assert calls == sorted(calls, reverse=True)
    shot(browser, "10-export")
    # No request left the page: everything it needed was in the file.
    resources = browser.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
    assert resources == []


def test_exported_diff_is_the_served_diff(browser, tmp_path):
    # `perfkit export before after -o d.html` is the page `perfkit view before
    # after` serves, offline: it failed with "unexpected argument".
    before = write_perfkit(tmp_path / "before.prof", workload, 1000, 1000)
    after = write_perfkit(tmp_path / "after.prof", workload, 20000, 1000)
    with ViewServer(before, after) as server:
        open_ready(browser, server.url)
        served = table_rows(browser, "regressions"), table_rows(browser, "improvements")
    out = tmp_path / "diff.html"
    r = run_cli("export", before, after, "-o", out)
    assert r.returncode == 0, r.stderr
    open_ready(browser, out.as_uri())
    assert browser.find_element(By.ID, "diff-box").is_displayed()
    assert (table_rows(browser, "regressions"), table_rows(browser, "improvements")) == served
    assert served[0] and served[0][0][0].startswith("+")
    slow = frame_named(browser, "slow_path")
    r, g, b, _ = pixel(browser, slow["x"], slow["y"] + 6)
    assert r > b + 40, (r, g, b)
    assert browser.execute_script("return performance.getEntriesByType('resource').length") == 0
    # Only a page can show two runs.
    r = run_cli("export", before, after, "-o", tmp_path / "d.txt")
    assert r.returncode == 2 and "only to HTML" in r.stderr and r.stderr.count("\n") == 1
    assert not (tmp_path / "d.txt").exists()


def test_thread_selector(browser, tmp_path):
    src = write_threaded(tmp_path / "threads.prof")
    with ViewServer(src) as server:
        open_ready(browser, server.url)
        select = Select(browser.find_element(By.ID, "thread"))
        options = [o.text for o in select.options]
        assert options[0] == "all threads" and "worker-thread" in options and len(options) >= 3
        everything = {r[5] for r in table_rows(browser)}
        select.select_by_visible_text("worker-thread")
        time.sleep(0.1)
        settle(browser)
        worker_rows = {r[5] for r in table_rows(browser)}
        assert any(w.endswith("(worker)") for w in worker_rows)
        assert not any(w.endswith("(slow_path)") for w in worker_rows)
        assert worker_rows < everything
        assert hash_state(browser)["view"] == str(options.index("worker-thread"))
        assert "worker" in {f["name"] for f in frames(browser)}
        shot(browser, "11-thread")


def dispatch_click(driver, frame: dict) -> None:
    """A click on a drawn frame, without waiting for what it asks the server."""
    driver.execute_script(
        "const c = document.getElementById('chart'), r = c.getBoundingClientRect();"
        "c.dispatchEvent(new MouseEvent('click', {clientX: r.left + arguments[0],"
        " clientY: r.top + arguments[1], bubbles: true}));",
        frame["x"],
        frame["y"],
    )


def test_thread_switch_drops_a_zoom_still_in_flight(browser, tmp_path):
    # The zoom's late answer replaced the new thread's slice: the selector
    # said worker-thread, the chart showed the zoom into the other view, and
    # Icicle/Sunburst stopped redrawing (the focus was in neither).
    src = write_threaded(tmp_path / "threads.prof")
    with ViewServer(src) as server:
        open_ready(browser, server.url)
        options = [o.text for o in Select(browser.find_element(By.ID, "thread")).options]
        worker = options.index("worker-thread")
        # The server answers zooms late, as a busy one would.
        browser.execute_script(
            "const real = window.fetch;"
            "window.fetch = async (u, o) => { const r = await real(u, o);"
            " if (/api\\/slice/.test(u) && !/[?&]root=0&/.test(u)) await new Promise(res => setTimeout(res, 700));"
            " return r; };"
        )
        target = frame_named(browser, "workload")
        dispatch_click(browser, target)
        time.sleep(0.05)
        assert browser.execute_script("return window.perfkitView.state().busy")
        browser.execute_script(
            "const s = document.getElementById('thread'); s.value = arguments[0];"
            "s.dispatchEvent(new Event('change'));",
            str(worker),
        )
        time.sleep(1.2)
        settle(browser)
        state = browser.execute_script("return window.perfkitView.state()")
        assert (state["view"], state["focus"], state["sliceRoot"]) == (worker, 0, 0), state
        names = {f["name"] for f in frames(browser)}
        assert "worker" in names and "workload" not in names, names
        assert crumbs(browser) == ["all"]
        assert hash_state(browser)["view"] == str(worker)
        # The mode buttons draw the new view.
        draws = browser.execute_script("return window.perfkitTiming.draws")
        browser.find_element(By.ID, "mode-sunburst").click()
        assert browser.execute_script("return window.perfkitTiming.draws") > draws
        assert [f["name"] for f in frames(browser) if f["depth"] == 0] == ["all"]
        # A click on the old view's drawing while a switch loads is no zoom of the new one.
        browser.execute_script(
            "const s = document.getElementById('thread'); s.value = '0';s.dispatchEvent(new Event('change'));"
        )
        settle(browser)
        assert browser.execute_script("return window.perfkitView.state()")["view"] == 0


def test_a_depth_change_during_a_thread_switch_keeps_the_new_threads_table(browser, tmp_path):
    # helper-55: the new depth's slice superseded the switch's, and the
    # switch returned before filling the table: the selector said
    # worker-thread over the "all threads" table.
    src = write_threaded(tmp_path / "threads.prof")
    with ViewServer(src) as server:
        options = [v["name"] for v in server.get_json("api/meta")["views"]]
        worker = options.index("worker-thread")
        open_ready(browser, server.url + f"#view={worker}")
        settle(browser)
        reference = page_summary(browser)["count"]
        open_ready(browser, server.url + "#view=0")
        settle(browser)
        assert page_summary(browser)["count"] != reference
        browser.execute_script(
            "const real = window.fetch;"
            "window.fetch = async (u, o) => { const r = await real(u, o);"
            " if (/api\\/slice/.test(u) && /depth=61/.test(u)) await new Promise(res => setTimeout(res, 800));"
            " return r; };"
        )
        browser.execute_script(
            "const s = document.getElementById('thread'); s.value = arguments[0];"
            "s.dispatchEvent(new Event('change'));",
            str(worker),
        )
        time.sleep(0.05)
        browser.execute_script(
            "const x = document.getElementById('depth'); x.value = '30'; x.dispatchEvent(new Event('change'));"
        )
        time.sleep(1.5)
        settle(browser)
        p = page_summary(browser)
        assert p["thread"] == str(worker) and p["state"][0] == worker
        assert p["count"] == reference, p["count"]
        assert "worker" in {f.rsplit("@", 1)[0] for f in p["frames"]}


def test_a_link_followed_while_the_page_opens_is_applied(browser, tmp_path):
    # helper-55: a hash change before the page was ready was dropped, and the
    # page then wrote its old state back into the address.
    src = write_threaded(tmp_path / "threads.prof")
    with ViewServer(src) as server:
        views = [v["name"] for v in server.get_json("api/meta")["views"]]
        worker = views.index("worker-thread")
        slow = browser.execute_cdp_cmd(
            "Page.addScriptToEvaluateOnNewDocument",
            {
                "source": "const real = window.fetch;"
                "window.fetch = async (u, o) => { const r = await real(u, o);"
                " if (/api\\/stats/.test(u)) await new Promise(res => setTimeout(res, 1500)); return r; };"
            },
        )
        try:
            browser.get(server.url + "#view=0&focus=0")
            time.sleep(0.5)
            assert browser.execute_script("return document.body.dataset.state") == "loading"
            browser.execute_script("location.hash = arguments[0]", f"view={worker}&focus=0&filter=leaf")
            wait_state(browser)
            time.sleep(0.3)
            settle(browser)
            p = page_summary(browser)
        finally:
            browser.execute_cdp_cmd(
                "Page.removeScriptToEvaluateOnNewDocument", {"identifier": slow["identifier"]}
            )
        assert p["thread"] == str(worker) and p["state"][0] == worker, p
        assert p["filter"] == "leaf" and f"view={worker}" in p["hash"] and "filter=leaf" in p["hash"], p


def page_summary(driver) -> dict:
    """What a user sees of the view state: the controls, table, chart and panel."""
    return driver.execute_script(
        """const $ = (id) => document.getElementById(id), th = document.querySelector('#stats th.sorted');
        const st = window.perfkitView.state();
        return {
          thread: $('thread').value, search: $('search').value, matches: $('search-count').textContent,
          filter: $('filter').value, count: $('table-count').textContent,
          rows: [...document.querySelectorAll('#stats tbody tr')].map(tr => tr.cells[5].textContent),
          sorted: th && th.dataset.key, asc: !!th && th.classList.contains('asc'),
          depth: $('depth').value, min: $('minsize').value,
          theme: document.documentElement.dataset.theme,
          icicle: $('mode-icicle').classList.contains('on'), sunburst: $('mode-sunburst').classList.contains('on'),
          state: [st.view, st.focus, st.mode, st.selected, st.sliceRoot],
          frames: window.perfkitView.frames().map(f => f.name + '@' + f.depth).sort(),
          crumbs: [...document.querySelectorAll('#crumbs .crumb')].map(b => b.textContent),
          selName: $('sel-name').textContent,
          callers: [...document.querySelectorAll('#callers tbody tr')].map(tr => tr.textContent),
          hash: location.hash,
        };"""
    )


def test_following_a_link_applies_its_whole_state(browser, tmp_path):
    # A hash change applied only the view, the focus and the mode: search,
    # filter, sort, depth, minimum size, selection and theme went into the
    # page's state without reaching the boxes, the table or the chart.
    src = write_threaded(tmp_path / "threads.prof")
    with ViewServer(src) as server:
        funcs = server.get_json("api/funcs")
        leaf_id, workload_id = funcs["name"].index("leaf"), funcs["name"].index("workload")
        views = [v["name"] for v in server.get_json("api/meta")["views"]]
        worker = views.index("worker-thread")

        def node_of(view, func):
            s = server.get_json(f"api/slice?view={view}&root=0&min=0")
            return s["id"][s["f"].index(func)]

        links = [
            (
                f"view={worker}&focus=0&mode=sunburst&q=leaf&depth=2&min=1&sort=tt&desc=0"
                f"&filter=leaf%7Cworker&sel={leaf_id}&theme=dark"
            ),
            f"view={worker}&focus={node_of(worker, leaf_id)}&depth=4&sort=nc",
            f"view=0&focus={node_of(0, workload_id)}&mode=sunburst&q=path&sel={workload_id}&theme=light",
            "view=0&focus=0&mode=icicle&filter=fib&min=5",
        ]
        open_ready(browser, server.url)
        for link in links:
            browser.execute_script("location.hash = arguments[0]", link)
            time.sleep(0.3)
            settle(browser)
            followed = page_summary(browser)
            browser.get("about:blank")
            open_ready(browser, server.url + "#" + link)
            settle(browser)
            reopened = page_summary(browser)
            assert followed == reopened, link
        # The first link, as the page showed it once followed.
        browser.execute_script("location.hash = arguments[0]", links[0])
        time.sleep(0.3)
        settle(browser)
        p = page_summary(browser)
        assert p["thread"] == str(worker) and p["search"] == "leaf" and p["matches"] == "1 function matches"
        assert p["filter"] == "leaf|worker" and {r.rsplit("(", 1)[1] for r in p["rows"]} == {
            "leaf)",
            "worker)",
        }
        assert (p["sorted"], p["asc"]) == ("tt", True)
        assert (p["depth"], p["min"], p["theme"]) == ("2", "1", "dark")
        assert p["sunburst"] and not p["icicle"] and p["state"][2] == "sunburst"
        assert p["selName"].endswith("(leaf)") and p["callers"]
        assert max(int(f.rsplit("@", 1)[1]) for f in p["frames"]) == 1


def test_deep_recursion_in_browser(browser, tmp_path):
    src = write_deep_recursion(tmp_path / "deep.prof", 10_000)
    with ViewServer(src) as server:
        open_ready(browser, server.url)
        depth_shown = max(f["depth"] for f in frames(browser))
        assert depth_shown == 59  # the depth control (60 levels) bounds the drawing
        bottom = max(frames(browser), key=lambda f: f["depth"])
        browser.execute_script("document.getElementById('chart-box').scrollTop = 1e6")
        assert bottom["name"] == "down"
        browser.execute_script(
            "const c = document.getElementById('chart'), r = c.getBoundingClientRect();"
            "c.dispatchEvent(new MouseEvent('click', {clientX: r.left + arguments[0], clientY: r.top + arguments[1], bubbles: true}));",
            bottom["x"],
            bottom["y"],
        )
        settle(browser)
        # "all" and 59 levels down: the first few and the last several are crumbs.
        shown, hidden = crumb_path(browser)
        assert len(shown) + hidden == 60 and hidden > 40
        assert shown[-1] == ("down", bottom["id"])
        assert browser.execute_script("return document.body.dataset.state") == "ready"
        shot(browser, "12-deep")


def test_tall_chart_on_a_2x_display_is_drawn_and_says_what_it_leaves_out(browser, tmp_path):
    # depth 2000 on a 2x display: a canvas 72,000 device pixels tall, which
    # Chromium does not draw; the page was blank and said "ready".
    src = write_deep_recursion(tmp_path / "deep.prof", 3000)
    browser.execute_cdp_cmd(
        "Emulation.setDeviceMetricsOverride",
        {"width": 1400, "height": 1000, "deviceScaleFactor": 2, "mobile": False},
    )
    try:
        with ViewServer(src) as server:
            open_ready(browser, server.url + "#depth=2000")
            settle(browser)
            c = browser.execute_script(
                "const c = document.getElementById('chart'), ctx = c.getContext('2d');"
                "const at = (y) => [...ctx.getImageData(5, y, 1, 1).data];"
                "return {dpr: window.devicePixelRatio, w: c.width, h: c.height, top: at(5), bottom: at(c.height - 10)};"
            )
            assert c["dpr"] == 2
            assert c["h"] <= 32767 and c["w"] * c["h"] <= 1 << 26, c
            assert c["top"][3] == 255 and c["bottom"][3] == 255, c  # drawn, top to bottom
            levels = 1 + max(f["depth"] for f in frames(browser))
            assert levels * 18 * 2 <= c["h"] < (levels + 1) * 18 * 2
            note = browser.find_element(By.ID, "chart-note")
            assert note.is_displayed()
            assert f"showing {levels} of 2000 levels" in note.text and "zoom in" in note.text
            shot(browser, "14-tall-2x")
            # Zoomed in far enough, everything fits and the note goes.
            s = server.get_json("api/slice?view=0&root=0&min=0&depth=5000")
            browser.execute_script(
                "location.hash = arguments[0]", f"focus={s['id'][s['d'].index(2800)]}&depth=2000"
            )
            time.sleep(0.2)
            settle(browser)
            assert 1 + max(f["depth"] for f in frames(browser)) == 1 + max(s["d"]) - 2800
            assert not browser.find_element(By.ID, "chart-note").is_displayed()
    finally:
        browser.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})


def test_levels_the_server_left_out_are_told(browser, tmp_path):
    # 2,100 call chains 62 deep, every frame wide enough to send: more frames
    # than a slice holds, so the server cuts the deepest levels and says so
    # (`truncated`); the page drew 57 of the 60 levels asked for and said nothing.
    src = tmp_path / "wide.txt"
    src.write_text("".join(";".join(f"c{i}_{d}" for d in range(62)) + " 100\n" for i in range(2100)))
    with ViewServer(src) as server:
        open_ready(browser, server.url)
        levels = 1 + max(f["depth"] for f in frames(browser))
        assert levels < 60
        note = browser.find_element(By.ID, "chart-note")
        assert note.is_displayed() and f"showing {levels} of the 60 levels asked for" in note.text, note.text
        assert "zoom in" in note.text
        # The sunburst draws 16 rings, and says so too.
        browser.find_element(By.ID, "mode-sunburst").click()
        assert f"the sunburst shows 16 of {levels} levels" in note.text, note.text
        browser.find_element(By.ID, "mode-icicle").click()
        # One chain holds all its levels: nothing left out, no note.
        target = next(f for f in frames(browser) if f["depth"] == 1)
        dispatch_click(browser, target)
        time.sleep(0.1)
        settle(browser)
        assert 1 + max(f["depth"] for f in frames(browser)) == 60
        assert not note.is_displayed()


def test_callees_panel_says_how_many_and_shows_more(browser, tmp_path):
    # It stopped at 200 rows without a word (main had 1,000 callees).
    src = tmp_path / "fan.txt"
    src.write_text("".join(f"main;callee{i} {i + 1}\n" for i in range(1500)))
    with ViewServer(src) as server:
        main = server.get_json("api/funcs")["name"].index("main")
        open_ready(browser, server.url + f"#sel={main}")
        settle(browser)

        def callees():
            rows = table_rows(browser, "callees")
            names = [r[3].rsplit("(", 1)[1].rstrip(")") for r in rows if len(r) == 4]
            return names, [r for r in rows if len(r) != 4]

        rows, more = callees()
        assert len(rows) == 200 and rows[0] == "callee1499" and rows[-1] == "callee1300"
        assert [m[0] for m in more] == ["showing 200 of 1,500 show 1,000 more"]
        browser.find_element(By.CSS_SELECTOR, "#callees tr.more button").click()
        rows, more = callees()
        assert len(rows) == 1200 and [m[0] for m in more] == ["showing 1,200 of 1,500 show the other 300"]
        browser.find_element(By.CSS_SELECTOR, "#callees tr.more button").click()
        rows, more = callees()
        assert len(rows) == 1500 and not more
        assert rows == [f"callee{i}" for i in reversed(range(1500))]
        # A row still selects its function.
        browser.find_element(By.CSS_SELECTOR, "#callees tbody tr:last-child td:last-child").click()
        settle(browser)
        assert browser.find_element(By.ID, "sel-name").text.endswith("(callee0)")


def test_diff_tables_say_how_many_and_show_more(browser, tmp_path):
    # The regressions and improvements tables stopped at 25 rows without a
    # word. 40 functions got slower (f39 the most), 20 faster.
    before, after = tmp_path / "before.txt", tmp_path / "after.txt"
    before.write_text("".join(f"main;f{i} 1000\n" for i in range(60)))
    delta = {i: (i + 1) * 10 if i < 40 else -(i - 39) * 10 for i in range(60)}
    after.write_text("".join(f"main;f{i} {1000 + delta[i]}\n" for i in range(60)))
    with ViewServer(before, after) as server:
        open_ready(browser, server.url)

        def table(name):
            rows = table_rows(browser, name)
            funcs = [r[4].rsplit("(", 1)[1].rstrip(")") for r in rows if len(r) == 5]
            return funcs, [r[0] for r in rows if len(r) != 5]

        slower = [f"f{i}" for i in sorted(delta, key=lambda i: -delta[i]) if delta[i] > 0]
        faster = [f"f{i}" for i in sorted(delta, key=lambda i: delta[i]) if delta[i] < 0]
        funcs, more = table("regressions")
        assert funcs == slower[:25] and more == ["showing 25 of 40 show the other 15"]
        browser.find_element(By.CSS_SELECTOR, "#regressions tr.more button").click()
        funcs, more = table("regressions")
        assert funcs == slower and not more
        funcs, more = table("improvements")
        assert funcs == faster and not more
        browser.find_element(By.CSS_SELECTOR, "#regressions tbody tr:last-child td:last-child").click()
        settle(browser)
        assert browser.find_element(By.ID, "sel-name").text.endswith(f"({slower[-1]})")


def test_every_row_of_a_big_table_can_be_scrolled_to(browser, tmp_path):
    # The table stopped at 400 rows ("showing 400 of N") with no way to see
    # the others; putting them all in the page takes seconds (12 s for 100,000).
    n = 20_000
    long = "a_very_long_module_name_" * 12
    src = tmp_path / "wide.txt"
    src.write_text("".join(f"main;{long if i == 17_000 else ''}fn{i} {100_000 - i}\n" for i in range(n)))
    with ViewServer(src) as server:
        open_ready(browser, server.url)
        assert browser.find_element(By.ID, "table-count").text.startswith(f"{n + 1:,} functions ·")
        want = ["main"] + [f"{long if i == 17_000 else ''}fn{i}" for i in range(n)]  # cumtime order

        def rows_in_page():
            return browser.execute_script(
                "return document.querySelectorAll('#stats tbody tr:not(.spacer)').length"
            )

        def row_in_sight(dy=40):
            """The row at the top of the table's box, its function and its place in the order."""
            return browser.execute_script(
                "const b = document.getElementById('table-scroll'), r = b.getBoundingClientRect();"
                "const tr = document.elementFromPoint(r.left + 60, r.top + arguments[0]).closest('tr');"
                "const next = tr.nextElementSibling;"
                "return [tr.cells[5].textContent, next && next.cells.length === 6 ? next.cells[5].textContent : null,"
                " b.scrollTop, b.scrollHeight];",
                dy,
            )

        def name(label):
            return label.rsplit("(", 1)[1].rstrip(")") if label else label

        assert rows_in_page() <= 400
        for frac in (0.5, 0.1, 0.86, 0.999, 0.3):
            browser.execute_script(
                "const b = document.getElementById('table-scroll'); b.scrollTop = arguments[0] * b.scrollHeight",
                frac,
            )
            time.sleep(0.1)
            label, after, _, _ = row_in_sight()
            k = want.index(name(label))
            assert abs(k - frac * (n + 1)) < 30, (frac, k)
            if after is not None:
                assert want[k + 1] == name(after)
            assert rows_in_page() <= 400
        # The last row is there at the bottom.
        browser.execute_script(
            "const b = document.getElementById('table-scroll'); b.scrollTop = b.scrollHeight"
        )
        time.sleep(0.1)
        box_h = browser.execute_script("return document.getElementById('table-scroll').clientHeight")
        assert name(row_in_sight(box_h - 8)[0]) == f"fn{n - 1}"
        # A row far down selects its function, and stays marked as the window moves.
        row = browser.execute_script(
            "const b = document.getElementById('table-scroll'), r = b.getBoundingClientRect();"
            "return document.elementFromPoint(r.left + 60, r.top + 100).closest('tr')"
        )
        picked = row.find_elements(By.TAG_NAME, "td")[5].get_attribute("textContent")
        row.click()
        settle(browser)
        assert browser.find_element(By.ID, "sel-name").text == picked
        browser.execute_script("document.getElementById('table-scroll').scrollTop = 0")
        time.sleep(0.1)
        browser.execute_script("document.getElementById('table-scroll').scrollTop = 1e9")
        time.sleep(0.1)
        marked = browser.execute_script(
            "return [...document.querySelectorAll('#stats tbody tr.selected')].map(tr => tr.cells[5].textContent)"
        )
        assert marked == [picked]
        # A long label is cut at its start, the function's name showing.
        browser.execute_script(
            "const b = document.getElementById('table-scroll'); b.scrollTop = arguments[0] * b.scrollHeight",
            17_000 / (n + 1),
        )
        time.sleep(0.1)
        cell = browser.execute_script(
            "const td = [...document.querySelectorAll('#stats tbody td.name')]"
            ".find(td => td.textContent.endsWith('fn17000)'));"
            "const r = td.getBoundingClientRect(), t = td.firstChild.getBoundingClientRect();"
            "return {text: td.textContent, title: td.title, cut: td.scrollWidth > td.clientWidth,"
            " textRight: t.right, cellRight: r.right, textLeft: t.left, cellLeft: r.left}"
        )
        assert cell["text"] == cell["title"] and cell["text"].endswith(long + "fn17000)") and cell["cut"]
        assert cell["textRight"] <= cell["cellRight"] and cell["textLeft"] < cell["cellLeft"], cell
        shot(browser, "15-big-table")
        # Sorting and filtering the 20,001 rows: still a window of them.
        browser.find_element(By.CSS_SELECTOR, '#stats th[data-key="name"]').click()
        assert rows_in_page() <= 400
        assert name(row_in_sight()[0]) == "fn0"
        browser.find_element(By.ID, "filter").send_keys("fn1")
        time.sleep(0.4)
        assert browser.find_element(By.ID, "table-count").text.startswith("11,111 functions ·")


def test_deep_path_breadcrumbs_are_collapsed(browser, tmp_path):
    # A crumb per level: 9,000 buttons for a frame 9,000 calls deep (5,900 px
    # of breadcrumbs above the chart; 50,000 took 1.4 s a redraw).
    src = write_deep_recursion(tmp_path / "deep.prof", 10_000)
    with ViewServer(src) as server:
        s = server.get_json("api/slice?view=0&root=0&min=0&depth=20000")
        node = s["id"][s["d"].index(9000)]
        open_ready(browser, server.url + f"#focus={node}")
        shown, hidden = crumb_path(browser)
        assert len(shown) <= 14 and len(shown) + hidden == 9001, (shown, hidden)
        assert shown[0] == ("all", 0) and shown[-1] == ("down", node)
        # The first levels, then the last ones, each a step down.
        ids = [n for _, n in shown[1:]]
        assert ids[1] > ids[0] and ids[-1] - ids[-2] == 1
        assert browser.execute_script("return document.getElementById('crumbs').offsetHeight") < 80
        gap = browser.find_element(By.CSS_SELECTOR, "#crumbs .crumb-gap")
        assert gap.text == "…" and f"{hidden:,} levels" in gap.get_attribute("title")
        # The "…" goes to the middle level left out.
        middle = int(gap.get_attribute("data-node"))
        gap.click()
        settle(browser)
        state = browser.execute_script("return window.perfkitView.state()")
        assert state["focus"] == middle == state["sliceRoot"]
        shown, hidden = crumb_path(browser)
        assert shown[-1] == ("down", middle) and ids[2] < middle < ids[-8]
        # A crumb before the "…" zooms as ever.
        click_crumb(browser, 2)
        assert browser.execute_script("return window.perfkitView.state()")["focus"] == shown[2][1]
        assert crumb_path(browser) == (shown[:3], 0)


def test_error_state_instead_of_blank_page(browser, files, tmp_path):
    # The served page saved to disk has no data and no server to ask.
    with ViewServer(files["perfkit"]) as server:
        import urllib.request

        html = urllib.request.urlopen(server.url, timeout=30).read()
    page = tmp_path / "no-data.html"
    page.write_bytes(html)
    browser.get(page.as_uri())
    assert wait_state(browser) == "error"
    error = browser.find_element(By.ID, "error")
    assert error.is_displayed() and error.text.startswith("perfkit view:")
    shot(browser, "13-error")


def test_snakeviz_like_cli_flag(files):
    # -s/--server is snakeviz's spelling of --no-browser.
    with ViewServer(files["perfkit"]) as server:
        assert server.get_json("api/meta")["files"] == [str(files["perfkit"])]
    r = run_cli("view", "--help")
    assert "--server" in r.stdout and "--no-browser" in r.stdout
    assert perfkit.__version__
