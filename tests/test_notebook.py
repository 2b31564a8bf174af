"""perfkit used from a Jupyter notebook: cells run by a real IPython kernel
(nbclient), where functions and classes live in the kernel's ``__main__``
and each cell is compiled under a name made from its text. Side by side
with joblib where joblib has the same feature."""

from __future__ import annotations

import ast
import os
import textwrap

import nbformat
from nbclient import NotebookClient


def run_cells(cells: list[str], cwd, env_extra: dict[str, str] | None = None) -> list[dict[str, str]]:
    """Runs the cells in one fresh kernel; what each cell wrote, by stream
    ("stdout", "stderr"); an error in a cell fails the test."""
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(textwrap.dedent(cell).strip()) for cell in cells]
    client = NotebookClient(nb, timeout=120, kernel_name="python3", allow_errors=True)
    client.execute(cwd=str(cwd), env={**os.environ, **(env_extra or {})})
    outputs = []
    for cell in nb.cells:
        errors = [out for out in cell.outputs if out.output_type == "error"]
        assert not errors, "\n".join(errors[0].traceback)
        streams = {"stdout": "", "stderr": ""}
        for out in cell.outputs:
            if out.output_type == "stream":
                streams[out.name] += out.text
        outputs.append(streams)
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
    first, edited_cell, edited_body, body_back, parallel = (cell["stdout"] for cell in out[1:])
    assert first.split() == ["6", "6", "1", "1"]
    assert edited_cell.split()[:3] == ["6", "6", "0"]  # (perfkit: a hit)
    assert edited_body.split() == ["30", "30", "1", "1"]
    assert body_back.split() == ["6", "6", "0", "0"]
    assert parallel.splitlines() == ["[6, 8, 10]", "[6, 8, 10]", "True True []"]

    # A new kernel (its cells compiled under another process's directory), the cell edited once more.
    again = run_cells(
        [CACHE_SETUP, cached_cell("x * 2", extra="summary = 'edited again'")], tmp_path, session
    )
    assert again[1]["stdout"].split()[:3] == ["6", "6", "0"]


TASK_CELL = """
    import traceback, warnings
    from perfkit import Parallel, delayed

    def check(x):
        if x < 0:
            warnings.warn(f"negative: {x}")
        if x == 3:
            raise ValueError(f"bad value {x}")
        return x

    def where_it_warns(x):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            check(x)
        return f"{caught[0].filename}:{caught[0].lineno}"
"""


def test_a_cells_task_that_raises_or_warns_in_a_worker_points_at_the_cell(tmp_path):
    """cloudpickle names the code it sends ``<dynamic-code>``: the worker's
    traceback said ``File "<dynamic-code>", line 3, in check`` (joblib's
    still does), with no line of code, and a warning ``<dynamic-code>:6``.
    Both now name the cell and its line as Python does running the task
    in the kernel itself, and the traceback shows the cell's line."""
    out = run_cells(
        [
            TASK_CELL,
            """
            try:
                check(3)
            except ValueError as exc:
                here = traceback.extract_tb(exc.__traceback__)[-1]
            print(repr((here.filename, here.lineno, here.line)))
            print(where_it_warns(-1))
            try:
                Parallel(n_jobs=2)(delayed(check)(x) for x in range(6))
            except ValueError as exc:
                print(exc.__cause__)
            """,
            "print(*Parallel(n_jobs=2)(delayed(where_it_warns)(x) for x in (-1, -2)))",
        ],
        tmp_path,
    )
    place, warns_at, remote = out[1]["stdout"].split("\n", 2)
    filename, lineno, line = ast.literal_eval(place)
    assert f'File "{filename}", line {lineno}, in check\n    {line}\n' in remote
    assert "<dynamic-code>" not in remote
    assert out[2]["stdout"].split() == [warns_at, warns_at]
