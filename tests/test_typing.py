"""What a typed code base sees of perfkit: the extension's stubs against the
extension itself (mypy's stubtest), and a user's program (tests/typed_user.py)
type-checked with ``mypy --strict``, each type it reveals checked against the
value the program gets at run time."""

from __future__ import annotations

import builtins
import collections.abc
import importlib
import re
import subprocess
import sys
from pathlib import Path

import pytest

TESTS_DIR = Path(__file__).resolve().parent
USER_PROGRAM = TESTS_DIR / "typed_user.py"


def _mypy(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    # Run outside the checkout: from its root, mypy would also find
    # python/perfkit beside the installed package and stop at the duplicate.
    return subprocess.run(
        [sys.executable, "-m", *args], check=False, cwd=cwd, capture_output=True, text=True, timeout=300
    )


@pytest.mark.version_sensitive
def test_native_stubs_match_the_extension(tmp_path):
    """Every signature, class and name of _native.pyi is the runtime's: stubtest
    reports a parameter the extension does not take (Session's, WorkerPool's
    were stubbed on __init__, which PyO3 does not define), a class that cannot
    be subclassed but is not @final, a name in __all__ missing from the stub."""
    result = _mypy("mypy.stubtest", "perfkit._native", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr


def _resolve(name: str) -> type:
    """The class a type checker's name stands for (``list``, ``typing.Generator``,
    ``perfkit.memory.MemorizedFunc``)."""
    if "." not in name:
        return getattr(builtins, name)
    module, _, attr = name.rpartition(".")
    if module == "typing":
        return getattr(collections.abc, attr)
    return getattr(importlib.import_module(module), attr)


def _outer_types(revealed: str) -> list[str]:
    """The outermost type names of a revealed type: ``A[x] | B[y]`` (or, for
    Python 3.9, ``Union[A[x], B[y]]``) -> [A, B]."""
    if revealed.startswith("Union[") and revealed.endswith("]"):
        revealed, separator = revealed[len("Union[") : -1], ","
    else:
        separator = "|"
    parts = [""]
    depth = 0
    for ch in revealed:
        if ch == separator and depth == 0:
            parts.append("")
            continue
        depth += (ch == "[") - (ch == "]")
        parts[-1] += ch
    return [part.split("[", 1)[0].strip() for part in parts]


def test_typed_user_program(tmp_path):
    """Parallel's result is a list, or a generator with return_as="generator",
    of the task function's return type; delayed, Memory.cache and
    perfkit.profile keep the function's parameters and result; lazily
    exported names are seen, a misspelt one is an error, and nothing else is
    one under --strict."""
    result = _mypy(
        "mypy", "--strict", "--cache-dir", str(tmp_path / "cache"), str(USER_PROGRAM), cwd=tmp_path
    )
    output = result.stdout + result.stderr
    revealed: dict[int, str] = {}
    errors: set[tuple[int, str]] = set()
    for line in output.splitlines():
        m = re.match(r".*typed_user\.py:(\d+): note: Revealed type is \"(.*)\"$", line)
        if m:
            revealed[int(m.group(1))] = m.group(2)
            continue
        m = re.match(r".*typed_user\.py:(\d+): error: .*\[([a-z-]+)\]$", line)
        if m:
            errors.add((int(m.group(1)), m.group(2)))
    source = USER_PROGRAM.read_text().splitlines()
    expected_errors = {
        (number, m.group(1))
        for number, text in enumerate(source, 1)
        if (m := re.search(r"# error: ([a-z-]+)", text))
    }
    assert errors == expected_errors, output

    import typed_user  # (conftest puts tests/ on sys.path, for the workers too)

    typed_user.REVEALED.clear()
    typed_user.main(str(tmp_path))
    seen = {}
    for number, value in typed_user.REVEALED:
        seen.setdefault(number, value)  # (a loop's first value)
    assert set(seen) == set(revealed)
    for number, value in seen.items():
        static = revealed[number]
        assert static != "Any", f"line {number}: mypy knows nothing of {value!r}"
        if static.startswith("def "):
            assert callable(value), (number, static, value)
            continue
        classes = tuple(_resolve(name) for name in _outer_types(static))
        assert isinstance(value, classes), f"line {number}: mypy says {static}, the program got {value!r}"
