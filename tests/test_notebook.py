"""perfkit used from a Jupyter notebook: cells run by a real IPython kernel
(nbclient), where functions and classes live in the kernel's ``__main__``
and each cell is compiled under a name made from its text. Side by side
with joblib where joblib has the same feature."""

from __future__ import annotations

import os
import textwrap

import nbformat
from nbclient import NotebookClient


def run_cells(cells: list[str], cwd, env_extra: dict[str, str] | None = None) -> list[str]:
    """Runs the cells in one fresh kernel; each cell's stdout (an error fails the test)."""
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(textwrap.dedent(cell).strip()) for cell in cells]
    client = NotebookClient(nb, timeout=120, kernel_name="python3", allow_errors=True)
    client.execute(cwd=str(cwd), env={**os.environ, **(env_extra or {})})
    outputs = []
    for cell in nb.cells:
        errors = [out for out in cell.outputs if out.output_type == "error"]
        assert not errors, "\n".join(errors[0].traceback)
        outputs.append(
            "".join(out.text for out in cell.outputs if out.output_type == "stream" and out.name == "stdout")
        )
    return outputs


CACHE_SETUP = """
    import joblib, perfkit
    memory = perfkit.Memory("pk-cache", verbose=0)
    jl_memory = joblib.Memory("jl-cache", verbose=0)
    computed = []
"""


def cached_cell(body: str, extra: str = "") -> str:
    """A cell defining feature() (perfkit) and jl_feature() (joblib) with the same body, then calling both."""
    return f"""
        @memory.cache
        def feature(x):
            computed.append("perfkit")
            return {body}

        @jl_memory.cache
        def jl_feature(x):
            computed.append("joblib")
            return {body}

        {extra}
        print(feature(3), jl_feature(3), computed.count("perfkit"), computed.count("joblib"))
        computed.clear()
    """


def test_a_cached_function_keeps_its_entries_when_its_cell_is_edited(tmp_path):
    """ipykernel names a cell by a digest of its whole text: joblib, which
    names a notebook's function by its cell, recomputes after any edit of the
    cell. perfkit names it by the notebook (the path Jupyter gives the kernel)
    and its own source, so only an edit of the function's body recomputes,
    as in joblib; a body brought back finds its entries again."""
    session = {"JPY_SESSION_NAME": str(tmp_path / "analysis.ipynb")}
    out = run_cells(
        [
            CACHE_SETUP,
            cached_cell("x * 2"),
            # The cell again, with another line of its own edited: the function is the same.
            cached_cell("x * 2", extra="summary = 'edited'"),
            # Its body edited: both recompute.
            cached_cell("x * 10"),
            # The first body again (the first cell's text, as joblib names it): both find it.
            cached_cell("x * 2"),
            # The cached function in Parallel's workers: their entries are the caller's.
            """
            from perfkit import Parallel, delayed
            print(Parallel(n_jobs=2)(delayed(feature)(x) for x in (3, 4, 5)))
            print(joblib.Parallel(n_jobs=2)(joblib.delayed(jl_feature)(x) for x in (3, 4, 5)))
            print(feature.check_call_in_cache(5), jl_feature.check_call_in_cache(5), computed)
            """,
        ],
        tmp_path,
        session,
    )
    first, edited_cell, edited_body, body_back, parallel = out[1:]
    assert first.split() == ["6", "6", "1", "1"]
    assert edited_cell.split()[:3] == ["6", "6", "0"]  # (perfkit: a hit)
    assert edited_body.split() == ["30", "30", "1", "1"]
    assert body_back.split() == ["6", "6", "0", "0"]
    assert parallel.splitlines() == ["[6, 8, 10]", "[6, 8, 10]", "True True []"]

    # A new kernel (its cells compiled under another process's directory), the cell edited once more.
    again = run_cells(
        [CACHE_SETUP, cached_cell("x * 2", extra="summary = 'edited again'")], tmp_path, session
    )
    assert again[1].split()[:3] == ["6", "6", "0"]
