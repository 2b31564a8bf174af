"""joblib-compatible Parallel/delayed on perfkit's Rust pool engine (skeleton; issue 4)."""

from __future__ import annotations

__all__ = ["Parallel", "cpu_count", "delayed", "parallel_config"]


def _todo(*_args, **_kwargs):
    raise NotImplementedError("perfkit.Parallel is not built yet (issue 4)")


Parallel = delayed = parallel_config = cpu_count = _todo
