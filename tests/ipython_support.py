"""IPython cells run by a real ``InteractiveShell`` in a child process (the
shell takes over ``__main__``, the display hook and the history database:
not something to leave behind in pytest's process), and the iframe a
magic displays, read back."""

from __future__ import annotations

import json
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

# Functions for the magics to profile, defined in a cell of their own.
WORK = """
def leaf(n):
    return sum(i * i for i in range(n))

def fib(n):
    return n if n < 2 else fib(n - 1) + fib(n - 2)

def work(n):
    total = 0
    for i in range(n):
        total += leaf(50 * i)
    return total + fib(n) + len(sorted(range(200), key=lambda x: -x))
"""

SHELL_SCRIPT = r"""
import json, sys
from IPython.core.interactiveshell import InteractiveShell
from IPython.utils.capture import capture_output
from traitlets.config import Config

config = Config()
config.HistoryManager.hist_file = ":memory:"
shell = InteractiveShell.instance(config=config)
results = []
for cell in json.load(sys.stdin):
    with capture_output() as captured:
        result = shell.run_cell(cell)
    error = result.error_before_exec or result.error_in_exec
    results.append({
        "error": None if error is None else [type(error).__name__, str(error)],
        "stdout": captured.stdout,
        "stderr": captured.stderr,
        "outputs": [dict(out.data) for out in captured.outputs],
    })
json.dump(results, sys.stdout)
"""


def run_shell(cells: list[str], cwd: Path) -> list[dict]:
    """Runs the cells in one fresh InteractiveShell; per cell: ``error``
    (``[type name, message]`` or None), ``stdout``, ``stderr`` and
    ``outputs`` (each ``display()``'s data by MIME type)."""
    proc = subprocess.run(
        [sys.executable, "-c", SHELL_SCRIPT],
        check=False,
        input=json.dumps(cells),
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=180,
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


class _Elements(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))


def iframe_srcdoc(html: str) -> str:
    """The page an HTML output shows: it must be one ``<iframe>`` and nothing
    else (no element of a profile's names got out of the attribute); its
    ``srcdoc`` unescaped, as the browser reads it."""
    parser = _Elements()
    parser.feed(html)
    parser.close()
    assert [tag for tag, _ in parser.tags] == ["iframe"], parser.tags
    srcdoc = parser.tags[0][1]["srcdoc"]
    assert srcdoc is not None
    return srcdoc
