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
        blocks = [(block.values, tuple(block.mgr_locs.as_array.tolist())) for block in frame._mgr.blocks]
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
        return (_NUMERIC, _numpy().asarray(index), index.name)
    if len(index) <= _MAX_CACHED_LABELS and (dtype == object or dtype == "str"):
        labels = tuple(index)
        if all(type(label) is str for label in labels):
            return (_LABELS, labels, dtype, index.name)
    return index


def _numpy():
    return sys.modules["numpy"]


def _rebuild_frame(blocks, index, columns):
    from pandas.api.internals import create_dataframe_from_blocks

    np = _numpy()
    blocks = [(values, np.array(placement, dtype=np.intp)) for values, placement in blocks]
    return create_dataframe_from_blocks(blocks, _decode_index(index), _decode_index(columns))


def _decode_index(encoded):
    if type(encoded) is not tuple:
        return encoded
    import pandas as pd

    kind = encoded[0]
    if kind == _NUMERIC:
        _, values, name = encoded
        # A numeric numpy array's dtype is kept without being passed, and
        # passing it costs a second validation pass (maybe_cast_to_integer_array).
        return pd.Index(values, copy=False, name=name)
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
