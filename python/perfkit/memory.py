"""joblib-compatible Memory on perfkit's Rust cache engine (skeleton; issue 5)."""

from __future__ import annotations

__all__ = ["Memory", "hash"]


def _todo(*_args, **_kwargs):
    raise NotImplementedError("perfkit.Memory is not built yet (issue 5)")


Memory = hash = _todo
