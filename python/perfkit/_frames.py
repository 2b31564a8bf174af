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


def frame_reducers():
    """``{DataFrame: reducer}`` for one pickle, to add to its pickler's
    dispatch table; None when pandas is not imported here, is too old for
    the fast rebuild, or the user registered a DataFrame reducer of their own."""
    pd = sys.modules.get("pandas")
    if pd is None or not _fast_rebuild_available(pd) or pd.DataFrame in copyreg.dispatch_table:
        return None
    # One memo per pickle: an array two frames share (say the data of their
    # indexes) travels once, as pickle's memo sends it.
    return {pd.DataFrame: functools.partial(_reduce_frame, memo={}, frames={})}


@functools.cache
def _fast_rebuild_available(pd) -> bool:
    try:
        from pandas.api.internals import create_dataframe_from_blocks  # noqa: F401
    except ImportError:
        return False
    return True


class FrameCycle(pickle.PicklingError):
    """A frame reaches itself (through an object column): only pickle's own
    way (the frame first, its state after) can rebuild that."""


def _reduce_frame(frame, memo, frames):
    # pickle memoizes a frame once its reduction is saved: reduced again
    # before that, it is inside its own blocks.
    if id(frame) in frames:
        raise FrameCycle("a DataFrame that contains itself")
    frames[id(frame)] = frame
    try:
        if frame.attrs or not frame.flags.allows_duplicate_labels:
            return frame.__reduce_ex__(5)
        blocks = []
        for block in frame._mgr.blocks:
            locs = block.mgr_locs
            # A slice where pandas keeps one (the usual case); else the
            # positions as a tuple: unpickling a small ndarray costs far more.
            placement = locs.as_slice if locs.is_slice_like else tuple(locs.as_array.tolist())
            blocks.append((_encode_array(block.values, memo), placement))
        index = _encode_index(frame.index, memo)
        columns = _encode_index(frame.columns, memo)
    except AttributeError:  # a pandas whose internals moved: pickle's own way
        return frame.__reduce_ex__(5)
    return _rebuild_frame, (blocks, index, columns)


def _encode_index(index, memo):
    pd = sys.modules["pandas"]
    kind = type(index)
    if kind is pd.RangeIndex:
        return (_RANGE, index.start, index.stop, index.step, index.name)
    if kind is not pd.Index:
        return index
    values = index._values
    if type(values) is _numpy().ndarray and values.dtype.kind in "iufb":
        return (_NUMERIC, _encode_array(values, memo), index.name)
    labels = _sent_labels(values, index)
    if labels is None:
        return index
    return (_LABELS, labels[0], labels[1], index.name)


# id(an Index's values) -> (those values, (labels, dtype) or None), for
# indexes of at most _MAX_CACHED_LABELS labels. The frames of one groupby
# share their columns' values (each has its own Index object): checking the
# labels' kinds and the dtype once instead of per frame saves ~2 µs a frame.
# The entry holds the values, so their id is not reused while it is here;
# the labels are still read afresh each time (np.asarray(df.columns) is
# writable: a label changed in place must travel as it is now).
_SENT_LABELS: dict = {}


def _sent_labels(values, index):
    """``(labels, dtype)`` for an Index of at most ``_MAX_CACHED_LABELS``
    str labels (object or "str" dtype), else None."""
    if len(values) > _MAX_CACHED_LABELS:
        return None  # a row index, most likely: neither checked nor kept alive here
    entry = _SENT_LABELS.get(id(values))
    if entry is not None and entry[0] is values:
        known = entry[1]
        if known is None:
            return None
        labels = _labels_now(values)
        if labels == known[0]:
            return labels, known[1]
    dtype = index.dtype
    known = None
    if dtype == object or dtype == "str":
        labels = tuple(index)
        if all(type(label) is str for label in labels):
            known = (labels, dtype)
    if len(_SENT_LABELS) >= 64:
        _SENT_LABELS.clear()
    _SENT_LABELS[id(values)] = (values, known)
    return known


def _labels_now(values):
    """The labels in an Index's values, as a tuple: through the object
    array behind them where there is one (~0.2 µs, against ~1.7 to iterate the Index)."""
    array = values if type(values) is _numpy().ndarray else getattr(values, "_ndarray", None)
    if type(array) is not _numpy().ndarray:
        return tuple(values)
    return tuple(array.tolist())


def _numpy():
    np = sys.modules.get("numpy")
    if np is None:
        import numpy as np  # a worker that has not imported it yet, given its first array
    return np


def _encode_array(values, memo=None):
    """A numeric numpy array as ``(buffer, dtype, shape, order)``: numpy's own
    pickling of an array costs ~7 µs to dump and ~4.5 to load, more than the
    rest of a small frame (most of it pickling the dtype object); its bytes
    as a PickleBuffer cost ~1 each way and still travel out of band when
    large. Anything else is left to pickle. ``memo``: the arrays this pickle
    encoded already, by id (frames sharing an index's data)."""
    np = _numpy()
    if type(values) is not np.ndarray or not values.size:
        return values
    dtype = values.dtype
    if dtype.kind not in "biufc" or dtype.names is not None or dtype.metadata is not None:
        return values
    if memo is not None:
        known = memo.get(id(values))
        if known is not None:
            return known[1]
    source = values
    flags = values.flags
    if flags.c_contiguous:
        order = "C"
    elif flags.f_contiguous:
        order = "F"
    else:
        # A groupby group's blocks are strided views of the sorted frame's: numpy's
        # pickling would copy them too (through tobytes), here into a new array.
        order, values = "C", np.ascontiguousarray(values)
    # A read-only array travels as bytes and comes back read-only, as numpy's pickling does.
    # An F array exports its (C-contiguous) transpose, as numpy does: pickle writes an
    # in-band buffer of 64 KiB or more straight to its file, which takes C-contiguous ones only.
    try:
        exported = pickle.PickleBuffer(values.T if order == "F" else values)
    except (ValueError, BufferError):  # not exportable (a non-native '>g'): numpy pickles it its way
        return source
    encoded = (exported, _dtype_code(dtype), source.shape, order)
    if memo is not None:
        memo[id(source)] = (source, encoded)  # `source` kept alive: its id stays unique
    return encoded


_DTYPES_BY_CHAR: dict = {}


def _dtype_code(dtype) -> str:
    """The dtype's one-letter code where that names this very dtype object
    (np.longlong's 'q' is not np.int64's 'l', though both are '<i8'), else
    its string ('>f8', '<M8[ns]')."""
    code = dtype.char
    known = _DTYPES_BY_CHAR.get(code)
    if known is None:
        known = _DTYPES_BY_CHAR[code] = _numpy().dtype(code)
    return code if known is dtype else dtype.str


def _decode_array(encoded):
    if type(encoded) is not tuple:
        return encoded
    buffer, dtype, shape, order = encoded
    # frombuffer, not the (faster) ndarray constructor: its array holds an
    # export of the buffer, which is how a worker learns that a task kept
    # part of a shared-memory segment (the segment then is not reused).
    return _numpy().frombuffer(buffer, dtype=dtype).reshape(shape, order=order)


def _rebuild_frame(blocks, index, columns):
    make = _frame_from_blocks or _load_rebuild_api()
    return make(blocks, _decode_index(index), _decode_index(columns))


# Looked up once: a `from … import` in the function cost ~3 µs a frame.
_frame_from_blocks = None
_index_simple_new = None


def _load_rebuild_api():
    """The function that makes a frame of (values, placement) blocks and its
    axes: pandas' internal constructors where they are where pandas 3 keeps
    them (~4 µs a frame), else the public
    ``pandas.api.internals.create_dataframe_from_blocks`` (~8 µs: it
    converts and validates what a block of the sender's needs neither of)."""
    global _frame_from_blocks, _index_simple_new
    from pandas import DataFrame, Index

    _index_simple_new = getattr(Index, "_simple_new", None)
    try:
        from pandas._libs.internals import BlockPlacement
        from pandas.core.internals.blocks import new_block
        from pandas.core.internals.managers import BlockManager

        from_mgr = DataFrame._from_mgr
    except (ImportError, AttributeError):
        _frame_from_blocks = _frame_from_blocks_public
    else:

        def frame_from_internal_blocks(blocks, index, columns):
            made = [
                new_block(_decode_array(values), BlockPlacement(placement), ndim=2)
                for values, placement in blocks
            ]
            manager = BlockManager(made, [columns, index], verify_integrity=False)
            return from_mgr(manager, manager.axes)

        _frame_from_blocks = frame_from_internal_blocks
    return _frame_from_blocks


def _frame_from_blocks_public(blocks, index, columns):
    from pandas.api.internals import create_dataframe_from_blocks

    np = _numpy()
    positions = np.arange(len(columns), dtype=np.intp)
    decoded = []
    for values, placement in blocks:
        placement = positions[placement] if type(placement) is slice else np.array(placement, dtype=np.intp)
        decoded.append((_decode_array(values), placement))
    return create_dataframe_from_blocks(decoded, index, columns)


def _new_index(values, name):
    """An Index over ``values`` (1-D, taken from an exact ``Index`` of the
    sender: no inference or validation needed), named ``name``. pandas'
    constructor validates for ~11 µs, half of what rebuilding a small frame
    costs; the private ``Index._simple_new`` it ends with takes ~1 µs.
    Should a pandas drop it, the public constructor."""
    if _index_simple_new is not None:
        return _index_simple_new(values, name=name)
    return sys.modules["pandas"].Index(values, dtype=values.dtype, copy=False, name=name)


def _decode_index(encoded):
    if type(encoded) is not tuple:
        return encoded
    kind = encoded[0]
    if kind == _NUMERIC:
        _, values, name = encoded
        return _new_index(_decode_array(values), name)
    if kind == _RANGE:
        _, start, stop, step, name = encoded
        return sys.modules["pandas"].RangeIndex(start, stop, step, name=name)
    _, labels, dtype, name = encoded
    # The cache holds the validated labels only; each frame gets its own copy
    # of them (np.asarray(df.columns) is writable: one task must not rewrite
    # another's) and its own name (not in the key: 1 == True == 1.0).
    return _new_index(_received_labels(labels, dtype).copy(), name)


# labels -> (dtype, the values of Index(labels, dtype=dtype)). Keyed by the
# labels alone (all str): hashing a pandas dtype costs ~1 µs; a batch's
# frames share one unpickled dtype object, checked by identity first.
_RECEIVED_LABELS: dict = {}


def _received_labels(labels, dtype):
    """The values of ``Index(labels, dtype=dtype)`` (an object array, or a
    string array for pandas' "str" dtype), made once per worker."""
    entry = _RECEIVED_LABELS.get(labels)
    if entry is not None:
        known = entry[0]
        if known is dtype or (type(known) is type(dtype) and known == dtype):
            return entry[1]
    index = sys.modules["pandas"].Index(list(labels), dtype=dtype)
    values = index.to_numpy() if isinstance(index.dtype, _numpy().dtype) else index.array
    if len(_RECEIVED_LABELS) >= 64:
        _RECEIVED_LABELS.clear()
    _RECEIVED_LABELS[labels] = (dtype, values)
    return values
