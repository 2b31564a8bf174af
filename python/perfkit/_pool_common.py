"""What perfkit.parallel (the parent) and perfkit._worker share: batch modes and task labels."""

from __future__ import annotations

# How a batch's items are encoded (the second element of a BATCH payload):
# ARGS_ONLY: [args, ...] for function 0 without kwargs;
# FULL: [(function index, args, kwargs), ...];
# SINGLE: [x, ...], each the one positional argument of function 0
#   (the fast path of `delayed(f)(x) for x in ...`);
# SINGLE_PACKED: (tag, bytes), SINGLE's items when all are plain ints or
#   floats, packed by _native.pack_values (8 bytes each instead of a pickle).
ARGS_ONLY, FULL, SINGLE, SINGLE_PACKED = 0, 1, 2, 3


def task_label(function, args=(), kwargs=None, limit: int = 80) -> str:
    """``name(arg, …)`` for error messages, shortened to ``limit`` characters."""
    name = getattr(function, "__qualname__", None) or getattr(function, "__name__", None) or repr(function)
    try:
        parts = [repr(a) for a in args] + [f"{k}={v!r}" for k, v in (kwargs or {}).items()]
    except Exception:  # a repr that raises must not hide the real error  # noqa: BLE001
        parts = ["…"]
    text = ", ".join(parts)
    if len(text) > limit:
        text = text[: limit - 1] + "…"
    return f"{name}({text})"


def probe_remote_read(pid: int, address: int, length: int, expected: bytes) -> bool:
    """Run in a worker: can it copy memory straight out of its parent
    (process_vm_readv; refused under Yama ptrace_scope >= 1, for one)?"""
    from perfkit._native import read_process_memory

    try:
        return bytes(read_process_memory(pid, address, length)) == expected
    except OSError:
        return False
