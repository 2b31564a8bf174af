"""perfkit view against snakeviz: time-to-interactive in headless Chromium.

    python bench/view_tti.py                    # makes the profiles on first use
    python bench/view_tti.py --real my.prof     # another large cProfile file

Measures, in one run and one browser:
- time-to-interactive (the page requested → chart drawn and table filled) of
  `perfkit view` and of `snakeviz` (pip install snakeviz) on the same large
  real cProfile file: by default a subset of CPython's own test suite run
  under cProfile (`python -m cProfile -o stdlib.prof -m test test_email …`,
  see REAL_TESTS), about 10k+ functions;
- the same for perfkit on a synthetic call tree of 1,000,000 frames
  (collapsed stacks; snakeviz reads pstats files only);
- the click-to-zoom redraw: perfkit's synchronous redraw after a click on a
  frame, and snakeviz's (click until its new chart is drawn, polled).
perfkit's time comes from the page itself (`performance.now()` when it sets
`data-state="ready"`, counted from the navigation start); snakeviz's by
polling its DOM every ~10 ms (chart paths drawn, table rows filled). The
median of --runs runs is reported, each with a fresh server.
Goals (issue 3): real profile ≤ 0.5 s, 1M frames ≤ 2 s, zoom ≤ 50 ms.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import statistics
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))

from view_support import ViewServer, write_synthetic_tree

DATA = HERE / ".view-data"
REAL_TESTS = [
    "test_email",
    "test_argparse",
    "test_json",
    "test_statistics",
    "test_re",
    "test_typing",
    "test_inspect",
    "test_ast",
    "test_pathlib",
    "test_datetime",
    "test_collections",
    "test_enum",
    "test_dataclasses",
    "test_csv",
    "test_configparser",
    "test_difflib",
    "test_textwrap",
    "test_tomllib",
    "test_zipfile",
    "test_tarfile",
]
CHROME_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--window-size=1400,1000",
]


def make_driver():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = os.environ.get("PERFKIT_CHROMIUM", "/usr/bin/chromium")
    for flag in CHROME_FLAGS:
        options.add_argument(flag)
    return webdriver.Chrome(
        service=Service(os.environ.get("PERFKIT_CHROMEDRIVER", "/usr/bin/chromedriver")), options=options
    )


def real_profile() -> Path:
    out = DATA / f"stdlib-py{sys.version_info[0]}{sys.version_info[1]}.prof"
    if not out.exists():
        print(f"making {out}: CPython's tests {' '.join(REAL_TESTS)} under cProfile …", file=sys.stderr)
        tmp = out.with_suffix(".tmp")
        subprocess.run(
            [sys.executable, "-m", "cProfile", "-o", str(tmp), "-m", "test", "-q", *REAL_TESTS],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            check=False,
        )
        tmp.rename(out)
    return out


def synthetic_profile(nodes: int) -> Path:
    out = DATA / f"synthetic-{nodes}.txt"
    if not out.exists():
        print(f"making {out} ({nodes:,} frames) …", file=sys.stderr)
        tmp = out.with_suffix(".tmp")
        write_synthetic_tree(tmp, nodes)
        tmp.rename(out)
    return out


def wait_for(driver, script: str, timeout: float = 120.0, every: float = 0.01):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = driver.execute_script(script)
        if value:
            return value
        time.sleep(every)
    raise TimeoutError(script)


def perfkit_tti(driver, url: str) -> float:
    driver.get("about:blank")
    driver.get(url)
    state = wait_for(
        driver, "const s = document.body && document.body.dataset.state; return s === 'loading' ? null : s;"
    )
    if state != "ready":
        raise RuntimeError(
            "perfkit page error: "
            + driver.execute_script("return document.getElementById('error').textContent")
        )
    return driver.execute_script("return window.perfkitTiming.readyAt") / 1000


def perfkit_zoom_ms(driver, clicks: int = 8) -> list[float]:
    """Synchronous redraw time of clicks on the widest frames below the root."""
    out = []
    frames = driver.execute_script("return window.perfkitView.frames()")
    targets = sorted((f for f in frames if 1 <= f["depth"] <= 4 and f["w"] > 20), key=lambda f: -f["w"])[
        :clicks
    ]
    for f in targets:
        ms = driver.execute_script(
            "const c = document.getElementById('chart'), r = c.getBoundingClientRect();"
            "const t = performance.now();"
            "c.dispatchEvent(new MouseEvent('click', {clientX: r.left + arguments[0], clientY: r.top + arguments[1], bubbles: true}));"
            "return performance.now() - t;",
            f["x"],
            f["y"],
        )
        out.append(ms)
        time.sleep(0.4)  # the refined slice from the server arrives and is drawn
        driver.execute_script("document.querySelector('#crumbs .crumb').click()")
        time.sleep(0.4)
    return out


SNAKEVIZ_READY = (
    "const p = document.querySelectorAll('#chart rect, #chart path').length,"
    " r = document.querySelectorAll('#pstats-table tbody tr').length,"
    " s = document.getElementById('working-spinner');"
    "return (p > 0 && r > 1 && s && getComputedStyle(s).display === 'none') ? performance.now() : null;"
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Snakeviz:
    def __init__(self, path: Path):
        self.port = free_port()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "snakeviz", "-s", "-H", "127.0.0.1", "-p", str(self.port), str(path)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self.url = f"http://127.0.0.1:{self.port}/snakeviz/{urllib.parse.quote(str(path.resolve()), safe='')}"
        end = time.monotonic() + 60
        while time.monotonic() < end:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError("snakeviz did not start")

    def close(self):
        self.proc.terminate()
        self.proc.wait(timeout=20)


def snakeviz_tti(driver, url: str) -> float:
    driver.get("about:blank")
    driver.get(url)
    return wait_for(driver, SNAKEVIZ_READY, timeout=300) / 1000


def snakeviz_zoom_ms(driver, clicks: int = 3) -> list[float]:
    out = []
    for k in range(clicks):
        t = driver.execute_script(
            "const paths = [...document.querySelectorAll('#chart rect, #chart path')];"
            "const big = paths.filter(p => p.__data__ && p.__data__.depth >= 1)"
            "  .sort((a, b) => b.getBBox().width * b.getBBox().height - a.getBBox().width * a.getBBox().height)[arguments[0]];"
            "if (!big) return null;"
            "const t = performance.now();"
            "big.dispatchEvent(new MouseEvent('click', {bubbles: true}));"
            "return t;",
            k,
        )
        if t is None:
            break
        done = wait_for(
            driver,
            "const s = document.getElementById('working-spinner');"
            "return (!document.getElementById('resetbutton-zoom').disabled && getComputedStyle(s).display === 'none'"
            " && document.querySelectorAll('#chart rect, #chart path').length > 0) ? performance.now() : null;",
            timeout=120,
            every=0.005,
        )
        out.append(done - t)
        driver.execute_script("document.getElementById('resetbutton-zoom').click()")
        wait_for(driver, SNAKEVIZ_READY + "", timeout=120)
        wait_for(driver, "return document.getElementById('resetbutton-zoom').disabled", timeout=120)
        time.sleep(0.3)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--real", type=Path, help="a large cProfile file (default: made from CPython's tests)")
    ap.add_argument("--nodes", type=int, default=1_000_000)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--no-snakeviz", action="store_true")
    args = ap.parse_args()
    DATA.mkdir(exist_ok=True)
    real = args.real or real_profile()
    synthetic = synthetic_profile(args.nodes)
    import pstats

    nfuncs = len(pstats.Stats(str(real)).stats)
    have_snakeviz = not args.no_snakeviz and shutil.which(sys.executable) and _has_snakeviz()
    driver = make_driver()
    keys = (
        "pk_real",
        "pk_big",
        "sv_real",
        "pk_zoom",
        "pk_zoom_big",
        "sv_zoom",
        "pk_start",
        "pk_start_big",
        "sv_start",
    )
    results: dict[str, list[float]] = {k: [] for k in keys}
    try:
        for run in range(args.runs):
            t = time.perf_counter()
            with ViewServer(real) as server:
                results["pk_start"].append(time.perf_counter() - t)
                results["pk_real"].append(perfkit_tti(driver, server.url))
                if run == 0:
                    results["pk_zoom"] += perfkit_zoom_ms(driver)
            t = time.perf_counter()
            with ViewServer(synthetic) as server:
                results["pk_start_big"].append(time.perf_counter() - t)
                results["pk_big"].append(perfkit_tti(driver, server.url))
                if run == 0:
                    results["pk_zoom_big"] += perfkit_zoom_ms(driver)
            if have_snakeviz:
                t = time.perf_counter()
                sv = Snakeviz(real)
                results["sv_start"].append(time.perf_counter() - t)
                try:
                    results["sv_real"].append(snakeviz_tti(driver, sv.url))
                    if run == 0:
                        results["sv_zoom"] += snakeviz_zoom_ms(driver)
                finally:
                    sv.close()
            print(
                f"run {run + 1}: " + ", ".join(f"{k}={v[-1]:.3f}" for k, v in results.items() if v),
                file=sys.stderr,
            )
    finally:
        driver.quit()

    med = {k: statistics.median(v) if v else None for k, v in results.items()}

    def s(x):
        return "–" if x is None else f"{x:.2f} s"

    def ms(x):
        return "–" if x is None else f"{x:.1f} ms"

    def ratio(a, b):
        return "–" if a is None or b is None or b == 0 else f"{a / b:.1f}×"

    size_mb = real.stat().st_size / 1e6
    print(
        f"\n`{' '.join([Path(sys.executable).name, *sys.argv])}` — median of {args.runs} runs, headless Chromium, "
        f"CPython {sys.version.split()[0]}, {os.cpu_count()} CPUs\n"
    )
    print("| what | perfkit view | snakeviz | snakeviz / perfkit | goal |")
    print("|---|---|---|---|---|")
    print(
        f"| time-to-interactive, real cProfile file ({nfuncs:,} functions, {size_mb:.1f} MB) | {s(med['pk_real'])} "
        f"| {s(med['sv_real'])} | {ratio(med['sv_real'], med['pk_real'])} | ≤ 0.5 s |"
    )
    print(
        f"| time-to-interactive, synthetic tree ({args.nodes:,} frames) | {s(med['pk_big'])} | cannot read it (pstats only) | – | ≤ 2 s |"
    )
    both = {
        k: (med[f"{k}_start" if k != "pk_big" else "pk_start_big"] or 0)
        + (med[f"{k}_real" if k != "pk_big" else k] or 0)
        if med[f"{k}_real" if k != "pk_big" else k] is not None
        else None
        for k in ("pk", "sv", "pk_big")
    }
    print(
        f"| command started → page interactive, real file (startup {s(med['pk_start'])} / {s(med['sv_start'])} + TTI) "
        f"| {s(both['pk'])} | {s(both['sv'])} | {ratio(both['sv'], both['pk'])} | – |"
    )
    print(
        f"| command started → page interactive, {args.nodes:,} frames (startup {s(med['pk_start_big'])} + TTI) "
        f"| {s(both['pk_big'])} | – | – | – |"
    )
    print(
        f"| click-to-zoom redraw, real file | {ms(med['pk_zoom'])} | {ms(med['sv_zoom'])} | "
        f"{ratio(med['sv_zoom'], med['pk_zoom'])} | ≤ 50 ms |"
    )
    print(f"| click-to-zoom redraw, {args.nodes:,} frames | {ms(med['pk_zoom_big'])} | – | – | ≤ 50 ms |")


def _has_snakeviz() -> bool:
    try:
        import snakeviz  # noqa: F401
    except ImportError:
        print("snakeviz is not installed (pip install snakeviz): measuring perfkit only", file=sys.stderr)
        return False
    return True


if __name__ == "__main__":
    main()
