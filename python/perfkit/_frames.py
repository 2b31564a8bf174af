"""Pickling plain pandas DataFrames between perfkit's processes, fast.

pickle rebuilds a DataFrame through pandas' full Index constructors
(inference, validation): ~150 µs for a 500-row group of four columns, as
much as the per-group features of a typical ``groupby`` loop cost, and
paid again by the workers for every group. perfkit's worker processes run
the interpreter and pandas of their parent, so a frame can travel as its
blocks and be rebuilt with ``pandas.api.internals.create_dataframe_from_blocks``
(pandas >= 3.0; the API pandas keeps for pyarrow) in ~25 µs.

Only exact ``DataFrame`` objects with no ``attrs``, default flags, and
indexes of the simple kinds below take this path; everything else, and
every pandas without that API, pickles as pickle would. Never used for
what leaves the machine (the Dask backend): the other end may run another
pandas.
"""

from __future__ import annotations

import copyreg
import functools
import pickle
import sys

# Index encodings (first element of the tuple an index travels as).
_NUMERIC, _LABELS, _RANGE = 0, 1, 2
# Columns are cached by their labels in the worker; more labels than this
# travel as pickle sends them (building the cache key would cost more).
_MAX_CACHED_LABELS = 256


def dispatch_table():
    """copyreg's dispatch table with the DataFrame reducer added; None when
    pandas is not imported here, is too old for the fast rebuild, or the
    user registered a DataFrame reducer of their own."""
    pd = sys.modules.get("pandas")
    if pd is None or not _fast_rebuild_available(pd) or pd.DataFrame in copyreg.dispatch_table:
        return None
    return {**copyreg.dispatch_table, pd.DataFrame: _reduce_frame}


@functools.cache
def _fast_rebuild_available(pd) -> bool:
    try:
        from pandas.api.internals import create_dataframe_from_blocks  # noqa: F401
    except ImportError:
        return False
    return True


def _reduce_frame(frame):
    pd = sys.modules["pandas"]
    try:
        if frame.attrs or not frame.flags.allows_duplicate_labels:
            return frame.__reduce_ex__(5)
        index = _encode_index(pd, frame.index)
        columns = _encode_index(pd, frame.columns)
        # Placements as tuples: unpickling a small ndarray costs several times more.
        blocks = [
            (_encode_array(block.values), tuple(block.mgr_locs.as_array.tolist()))
            for block in frame._mgr.blocks
        ]
    except AttributeError:  # a pandas whose internals moved: pickle's own way
        return frame.__reduce_ex__(5)
    return _rebuild_frame, (blocks, index, columns)


def _encode_index(pd, index):
    kind = type(index)
    if kind is pd.RangeIndex:
        return (_RANGE, index.start, index.stop, index.step, index.name)
    if kind is not pd.Index:
        return index
    dtype = index.dtype
    if dtype.kind in "iufb" and isinstance(dtype, _numpy().dtype):
        return (_NUMERIC, _encode_array(_numpy().asarray(index)), index.name)
    if len(index) <= _MAX_CACHED_LABELS and (dtype == object or dtype == "str"):
        labels = tuple(index)
        if all(type(label) is str for label in labels):
            return (_LABELS, labels, dtype, index.name)
    return index


def _numpy():
    return sys.modules["numpy"]


def _encode_array(values):
    """A numeric numpy array as ``(buffer, dtype, shape, order)``: numpy's own
    pickling of an array costs ~7 µs to dump and ~4.5 to load, more than the
    rest of a small frame; its bytes as a PickleBuffer cost ~1 each way and
    still travel out of band when large. Anything else is left to pickle."""
    np = _numpy()
    if type(values) is not np.ndarray or not values.size:
        return values
    dtype = values.dtype
    if dtype.kind not in "biufc" or dtype.names is not None or dtype.metadata is not None:
        return values
    if values.flags.f_contiguous and not values.flags.c_contiguous:
        order = "F"
    else:
        # A groupby group's blocks are strided views of the sorted frame's: numpy's
        # pickling would copy them too (through tobytes), here into a new array.
        order, values = "C", np.ascontiguousarray(values)
    # A read-only array travels as bytes and comes back read-only, as numpy's pickling does.
    return (pickle.PickleBuffer(values), dtype.str, values.shape, order)


def _decode_array(encoded):
    if type(encoded) is not tuple:
        return encoded
    buffer, dtype, shape, order = encoded
    return _numpy().frombuffer(buffer, dtype=dtype).reshape(shape, order=order)


def _rebuild_frame(blocks, index, columns):
    create = _create_from_blocks or _load_rebuild_api()
    np = sys.modules["numpy"]
    blocks = [(_decode_array(values), np.array(placement, dtype=np.intp)) for values, placement in blocks]
    return create(blocks, _decode_index(index), _decode_index(columns))


# Looked up once: a `from … import` in the function cost ~3 µs a frame.
_create_from_blocks = None


def _load_rebuild_api():
    global _create_from_blocks
    from pandas.api.internals import create_dataframe_from_blocks

    _create_from_blocks = create_dataframe_from_blocks
    return create_dataframe_from_blocks


def _decode_index(encoded):
    if type(encoded) is not tuple:
        return encoded
    pd = sys.modules["pandas"]  # imported by _load_rebuild_api
    kind = encoded[0]
    if kind == _NUMERIC:
        _, values, name = encoded
        # A numeric numpy array's dtype is kept without being passed, and
        # passing it costs a second validation pass (maybe_cast_to_integer_array).
        return pd.Index(_decode_array(values), copy=False, name=name)
    if kind == _RANGE:
        _, start, stop, step, name = encoded
        return pd.RangeIndex(start, stop, step, name=name)
    _, labels, dtype, name = encoded
    # Each frame gets its own view (as pandas gives each group of a groupby):
    # a task renaming its frame's columns must not rename another task's.
    return _labels_index(labels, dtype, name).view()


@functools.lru_cache(maxsize=64)
def _labels_index(labels, dtype, name):
    import pandas as pd

    return pd.Index(list(labels), dtype=dtype, name=name)
