"""What perfkit.parallel (the parent) and perfkit._worker share: batch
modes, task labels and how batches and results are pickled."""

from __future__ import annotations

import collections
import copyreg
import io
import pickle

from perfkit import _frames

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


def dumps(obj, out_of_band_from=None):
    """``(pickle, buffers)``: ``obj`` pickled with protocol 5, its buffers of
    at least ``out_of_band_from`` bytes (numpy arrays, pandas blocks) left
    out for the caller to send apart (None: all in band).

    Plain DataFrames travel by their blocks (perfkit._frames); lambdas,
    closures and the like through cloudpickle, after pickle refused them."""
    try:
        return _dumps(obj, out_of_band_from, fast_frames=True)
    except _frames.FrameCycle:
        return _dumps(obj, out_of_band_from, fast_frames=False)


def _dumps(obj, out_of_band_from, fast_frames):
    buffers = []

    def out_of_band(pickle_buffer):
        raw = pickle_buffer.raw()
        if raw.nbytes >= out_of_band_from:
            buffers.append(raw)
            return False
        return True

    callback = None if out_of_band_from is None else out_of_band
    reducers = _frames.frame_reducers() if fast_frames else None
    try:
        if reducers is None:
            return pickle.dumps(obj, protocol=5, buffer_callback=callback), buffers
        return _dump(pickle.Pickler, {**copyreg.dispatch_table, **reducers}, obj, callback), buffers
    except _frames.FrameCycle:
        raise
    except Exception:  # noqa: BLE001
        # What the failed attempt set apart must not precede the retry's own.
        buffers.clear()
    import cloudpickle

    pickler_class = cloudpickle.Pickler
    reducers = _frames.frame_reducers() if fast_frames else None  # a fresh memo
    if reducers is not None:
        # The C Pickler reads `dispatch_table` once, in __init__: an instance
        # attribute set afterwards is ignored when the class defines one (as
        # cloudpickle's does), so the table goes on a subclass. cloudpickle's
        # own reducers keep precedence over copyreg's, as in cloudpickle.
        table = collections.ChainMap(reducers, cloudpickle.Pickler.dispatch_table)
        pickler_class = type("_FramesCloudPickler", (cloudpickle.Pickler,), {"dispatch_table": table})
    return _dump(pickler_class, None, obj, callback), buffers


def _dump(pickler_class, dispatch_table, obj, buffer_callback) -> bytes:
    out = io.BytesIO()
    pickler = pickler_class(out, protocol=5, buffer_callback=buffer_callback)
    if dispatch_table is not None:
        pickler.dispatch_table = dispatch_table
    pickler.dump(obj)
    return out.getvalue()
