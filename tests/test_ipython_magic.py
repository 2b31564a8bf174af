"""``%load_ext perfkit``: the ``%perfkit`` / ``%%perfkit`` magics driven
through IPython's InteractiveShell, side by side with ``%prun`` (cProfile)
on the same code in the same shell; the viewer they display against the
page ``perfkit export`` writes; ``_repr_html_`` of perfkit's profiles."""

from __future__ import annotations

import json
import pstats
import subprocess
import sys
import textwrap

import perfkit
import pytest
from conftest import assert_same_counts, run_cli, summarize
from ipython_support import WORK, iframe_srcdoc, run_shell
from view_support import HOSTILE_FILE, HOSTILE_NAME

INNER = """
def inner(k):
    return [leaf(k) for _ in range(3)]
{name} = inner(40) + [work(4)]
"""


def cell(text: str) -> str:
    return textwrap.dedent(text).strip()


def test_magics_record_what_prun_records(tmp_path):
    out = run_shell(
        [
            "%load_ext perfkit",
            WORK,
            "%prun -q -D prun_line.prof line_result = work(8)",
            "%perfkit -o pk_line.prof pk_line_result = work(8)",
            "%%prun -q -D prun_cell.prof\n" + INNER.format(name="cell_result"),
            "%%perfkit -o pk_cell.prof\n" + INNER.format(name="pk_cell_result"),
            "print(line_result == pk_line_result, cell_result == pk_cell_result, pk_line_result)",
            "%perfkit -s calls work(3)",
            "%prun -s calls work(3)",
        ],
        tmp_path,
    )
    assert [r["error"] for r in out] == [None] * len(out)
    for prun, pk in [("prun_line.prof", "pk_line.prof"), ("prun_cell.prof", "pk_cell.prof")]:
        cp = summarize(pstats.Stats(str(tmp_path / prun)).stats)
        got = summarize(pstats.Stats(str(tmp_path / pk)).stats)
        assert any(name == "fib" for _, _, name in got.funcs), got.funcs
        assert_same_counts(cp, got)
    assert out[6]["stdout"].split()[:2] == ["True", "True"]
    # The magics ran the code in the user's namespace: its variables are there.
    assert int(out[6]["stdout"].split()[2]) > 0
    # -s prints pstats' table (sorted as asked) instead of showing the viewer.
    table = out[7]["stdout"]
    assert out[7]["outputs"] == []
    assert "Ordered by: call count" in table
    assert table_calls(table) == table_calls(out[8]["stdout"])
    assert any(label.endswith("(fib)") for label in table_calls(table))


def table_calls(table: str) -> dict[str, str]:
    """pstats' printed table as {function: ncalls}, cProfile's own row left out."""
    rows = [line.split(None, 5) for line in table.splitlines()]
    return {
        row[5]: row[0]
        for row in rows
        if len(row) == 6 and row[1].replace(".", "").isdigit() and "_lsprof.Profiler" not in row[5]
    }


def test_namespace_and_exceptions_as_prun_keeps_them(tmp_path):
    setup = [
        "%load_ext perfkit",
        WORK,
        "def boom(n):\n    leaf(n)\n    raise ValueError(f'boom {n}')",
    ]
    # The same cells under each magic: what stays in the namespace and what is raised.
    cases = [
        "%{magic} x = work(5)",
        "%%{magic}\ny = x + 1\ndef g():\n    return y * 2\nz = g()",
        "%{magic} boom(7)",
        "%%{magic}\npartial = 1\nboom(3)\nnot_reached = 1",
        "%{magic} import sys; sys.exit(3)",
        "print(x, y, z, partial, 'not_reached' in dir())",
    ]
    prun, pk = (
        run_shell([*setup, *(c.format(magic=magic) for c in cases), "%perfkit work(2)"], tmp_path)[
            len(setup) :
        ]
        for magic in ("prun -q", "perfkit")
    )
    assert [r["error"] for r in pk[:-1]] == [r["error"] for r in prun[:-1]]
    assert pk[2]["error"] == ["ValueError", "boom 7"]
    assert pk[3]["error"] == ["ValueError", "boom 3"]
    assert pk[5]["stdout"] == prun[5]["stdout"]
    x, y, z, partial, reached = pk[5]["stdout"].split()
    assert (int(y), int(z), partial, reached) == (int(x) + 1, 2 * int(x) + 2, "1", "False")
    # An exception is shown as IPython shows it (the user's traceback), and no profile.
    assert "ValueError" in pk[2]["stdout"] and "boom 7" in pk[2]["stdout"]
    assert pk[2]["outputs"] == pk[3]["outputs"] == []
    # SystemExit is reported, as %prun reports it, and the profile shown.
    assert "*** SystemExit exception caught in code being profiled." in pk[4]["stdout"]
    assert prun[4]["stdout"].strip() == pk[4]["stdout"].strip()
    assert len(pk[4]["outputs"]) == 1 and "text/html" in pk[4]["outputs"][0]
    # The profiler was let go after the exception: the next magic records.
    assert pk[6]["error"] is None and len(pk[6]["outputs"]) == 1


@pytest.mark.parametrize(
    ("cell_text", "message"),
    [
        ("%perfkit -q work(2)", "%perfkit: option -q not recognized"),
        ("%perfkit", "%perfkit: nothing to profile"),
        ("%perfkit -o x.prof", "%perfkit: nothing to profile"),
        ("%%perfkit\n\n", "%perfkit: nothing to profile"),
        ("%perfkit -s sideways ran = work(2)", "%perfkit: -s sideways: not one of pstats' sort keys"),
        (
            "%perfkit -o missing/x.prof ran = work(2)",
            "%perfkit: cannot write the profile to missing/x.prof: no such directory",
        ),
        ("%perfkit -o . ran = work(2)", "%perfkit: cannot write the profile to .: it is a directory"),
        ('%perfkit -o "" ran = work(2)', "%perfkit: -o: no file name"),
        ("%perfkit %perfkit ran = work(2)", "%perfkit: another perfkit profiler is already recording"),
    ],
)
def test_bad_use_is_one_line(tmp_path, cell_text, message):
    out = run_shell(["%load_ext perfkit", WORK, cell_text, "print('ran' in dir())"], tmp_path)
    error = out[2]["error"]
    assert error is not None and error[0] == "UsageError", out[2]
    assert error[1].startswith(message), error
    lines = out[2]["stderr"].strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("UsageError: %perfkit: "), out[2]["stderr"]
    assert out[2]["outputs"] == []
    # Refused before the code ran.
    assert out[3]["stdout"] == "False\n"


def test_an_output_is_refused_before_the_code_runs_where_perfkit_record_refuses_it(tmp_path):
    """A link is written through (README): one into a missing directory
    cannot be written, and the check looked at the link's own directory, so
    the code ran and the write failed after it. The magic refuses what
    `perfkit record -o` refuses, before anything runs."""
    (tmp_path / "link.prof").symlink_to(tmp_path / "missing" / "x.prof")
    (tmp_path / "prog.py").write_text("print('ran')\n")
    record = run_cli("record", "-o", "link.prof", "prog.py", cwd=tmp_path)
    assert record.returncode == 2 and "ran" not in record.stdout, record.stderr
    out = run_shell(
        ["%load_ext perfkit", WORK, "%perfkit -o link.prof ran = work(2)", "print('ran' in dir())"], tmp_path
    )
    assert out[2]["error"] is not None and out[2]["error"][0] == "UsageError", out[2]
    assert out[2]["stderr"].strip().splitlines() == [
        "UsageError: %perfkit: " + record.stderr.strip().removeprefix("perfkit: error: ")
    ]
    assert out[3]["stdout"] == "False\n"


def test_the_profile_goes_where_the_user_meant_though_the_code_changes_directory(tmp_path):
    """As ``python -m cProfile -o`` and ``perfkit record -o`` take it: the
    file named before the code ran, which is where it was checked for being
    writable (it went to the directory the code moved to, unchecked)."""
    (tmp_path / "sub").mkdir()
    out = run_shell(
        ["%load_ext perfkit", WORK, "import os", "%perfkit -o moved.prof os.chdir('sub'); work(3)"], tmp_path
    )
    assert out[3]["error"] is None, out[3]
    (tmp_path / "moves.py").write_text("import os\nos.chdir('sub')\n")
    subprocess.run([sys.executable, "-m", "cProfile", "-o", "cp.prof", "moves.py"], check=True, cwd=tmp_path)
    assert (tmp_path / "cp.prof").is_file() and not (tmp_path / "sub" / "cp.prof").exists()
    assert (tmp_path / "moved.prof").is_file() and not (tmp_path / "sub" / "moved.prof").exists()
    assert any(k[2] == "work" for k in pstats.Stats(str(tmp_path / "moved.prof")).stats)


def test_displayed_viewer_is_the_exported_page(tmp_path):
    out = run_shell(["%load_ext perfkit", WORK, "%perfkit -o shown.prof work(6)"], tmp_path)
    assert out[2]["error"] is None, out[2]
    [shown] = out[2]["outputs"]
    assert shown["text/plain"].startswith("<perfkit Recording: ")
    srcdoc = iframe_srcdoc(shown["text/html"])
    r = run_cli("export", "shown.prof", "-o", "exported.html", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert srcdoc == (tmp_path / "exported.html").read_text()


def test_repr_html_of_profiles(tmp_path):
    prof = perfkit.Profiler()
    assert prof._repr_html_() is None  # nothing recorded: IPython shows the repr
    with prof:
        sorted(range(100), key=lambda x: -x)
    path = tmp_path / "p.prof"
    prof.dump_stats(path)
    loaded = perfkit.load(path)
    # A loaded file shows what `perfkit export` writes for it; a Profiler, the
    # same profile before it was written (its label aside).
    r = run_cli("export", path, "-o", tmp_path / "p.html")
    assert r.returncode == 0, r.stderr
    assert iframe_srcdoc(loaded._repr_html_()) == (tmp_path / "p.html").read_text()
    assert iframe_srcdoc(prof._repr_html_()) == loaded.to_html(label="recorded profile")
    assert loaded.to_html() == (tmp_path / "p.html").read_text()


def test_hostile_names_stay_inside_srcdoc(tmp_path):
    evil = cell(
        f"""
        def evil():
            return leaf(500)
        evil.__code__ = evil.__code__.replace(co_name={HOSTILE_NAME!r}, co_filename={HOSTILE_FILE!r})
        """
    )
    out = run_shell(["%load_ext perfkit", WORK, evil, "%perfkit -o evil.prof evil()"], tmp_path)
    assert out[3]["error"] is None, out[3]
    html = out[3]["outputs"][0]["text/html"]
    assert HOSTILE_NAME not in html and HOSTILE_FILE not in html
    srcdoc = iframe_srcdoc(html)  # one element, nothing got out
    assert run_cli("export", "evil.prof", "-o", "evil.html", cwd=tmp_path).returncode == 0
    assert srcdoc == (tmp_path / "evil.html").read_text()
    assert any(name == HOSTILE_NAME for _, _, name in perfkit.load(tmp_path / "evil.prof").funcs())


def test_import_perfkit_does_not_import_ipython():
    code = "import sys, perfkit; perfkit.Profiler; print('IPython' in sys.modules, 'perfkit._ipython' in sys.modules)"
    r = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True, timeout=60)
    assert r.stdout.split() == ["False", "False"], r.stderr


def test_in_a_jupyter_kernel(tmp_path):
    """The same through a real kernel (ipykernel, run by nbclient): the magic's
    display and a Profiler as a cell's last expression reach the notebook as HTML."""
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.v4.new_notebook()
    cells = [
        "%load_ext perfkit",
        WORK,
        "%perfkit -o cell.prof work(5)",
        "import perfkit\nwith perfkit.Profiler() as prof:\n    work(5)\nprof",
    ]
    nb.cells = [nbformat.v4.new_code_cell(c) for c in cells]
    NotebookClient(nb, timeout=120, kernel_name="python3").execute(cwd=str(tmp_path))
    [shown] = nb.cells[2].outputs
    assert shown.output_type == "display_data"
    assert iframe_srcdoc(shown.data["text/html"]) == perfkit.load(tmp_path / "cell.prof").to_html(
        label="cell.prof"
    )
    [result] = nb.cells[3].outputs
    assert result.output_type == "execute_result"
    assert "work" in embedded_names(iframe_srcdoc(result.data["text/html"]))


def embedded_names(page: str) -> list[str]:
    """The function names in a page's embedded data."""
    start = page.index('<script id="perfkit-data" type="application/json">')
    data = page[page.index(">", start) + 1 : page.index("</script>", start)]
    return json.loads(data)["funcs"]["name"]
