"""What a typed code base sees of perfkit: the extension's stubs against the
extension itself (mypy's stubtest)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

TESTS_DIR = Path(__file__).resolve().parent


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
