"""What perfkit.parallel (the parent) and perfkit._worker share: batch
modes, task labels and how batches and results are pickled."""

from __future__ import annotations

import collections
import contextlib
import copyreg
import functools
import gc
import io
import mmap
import os
import pickle
import sys
import threading
import types
import weakref

from perfkit import _frames, _native

# How a batch's items are encoded (the second element of a BATCH payload):
# ARGS_ONLY: [args, ...] for function 0 without kwargs;
# FULL: [(function index, args, kwargs), ...];
# SINGLE: [x, ...], each the one positional argument of function 0
#   (the fast path of `delayed(f)(x) for x in ...`);
# SINGLE_PACKED: (tag, bytes), SINGLE's items when all are plain ints or
#   floats, packed by _native.pack_values (8 bytes each instead of a pickle).
# STREAMED: (mode, [pickle, ...]), one of the modes above with each task
#   pickled on its own, so that a worker copies a task's large buffers out of
#   the parent just before it runs it (and reuses the memory for the next).
# Results travel packed the same way, or by pack_numpy_scalars.
ARGS_ONLY, FULL, SINGLE, SINGLE_PACKED, STREAMED = 0, 1, 2, 3, 4

# A call's FUNCTION frame is the pickle of (argv, path, pickled, recording):
# the caller's sys.argv and sys.path, then the pickle of (functions,
# [(name, object), ...]), the call's functions and the classes and functions
# of the caller's __main__ that its batches name (see MainNames), and
# `recording`: None, or (builtins, clock) of the profiler recording in the
# caller, with which the worker records each batch of the call.


def with_worker_tree(reply: bytes, tree: bytes) -> bytes:
    """`reply` with the worker's call tree for its batch after it, as
    _native.adopt_worker_tree takes it in the caller (see WORKER_TREE_MARK there)."""
    return b"".join((reply, tree, len(tree).to_bytes(8, "little"), _native.WORKER_TREE_MARK))


# While the caller dispatches a call (draws, packs and pickles its tasks),
# the youngest GC generation is collected every YOUNG_GC_THRESHOLD
# allocations instead of CPython's 700. Building and pickling 100,000 task
# tuples otherwise sets off collection after collection, and with them the
# full collections that walk every object in the process: ~50,000 once
# pandas is imported, 20-45 ms each on the 2-core machine. Cyclic garbage is
# still collected, in bigger steps, and as usual once the work is done.
# (Workers run their batches with CPython's thresholds: there the user's
# tasks allocate, and a task leaving cycles around arrays made a worker hold
# 4x the memory.) Shared by concurrent calls. Only CPython's own thresholds
# are raised: ones a program set, at any time, are its own and are left
# alone. (For an interpreter not listed, those it had when perfkit came.)
YOUNG_GC_THRESHOLD = 50_000
_CPYTHON_GC_THRESHOLDS = {(3, 9): (700, 10, 10), (3, 10): (700, 10, 10), (3, 11): (700, 10, 10)}
_CPYTHON_GC_THRESHOLDS.update({(3, 12): (700, 10, 10), (3, 13): (2000, 10, 10)})
_gc_baseline = _CPYTHON_GC_THRESHOLDS.get(sys.version_info[:2], gc.get_threshold())
_gc_lock = threading.Lock()
_gc_callers = 0
_gc_saved: tuple | None = None


@contextlib.contextmanager
def fewer_young_collections():
    global _gc_callers, _gc_saved
    with _gc_lock:
        if _gc_callers == 0:
            saved = gc.get_threshold()
            if saved == _gc_baseline and 0 < saved[0] < YOUNG_GC_THRESHOLD:
                _gc_saved = saved
                gc.set_threshold(YOUNG_GC_THRESHOLD, *saved[1:])
        _gc_callers += 1
    try:
        yield
    finally:
        with _gc_lock:
            # (not below 0: work copied into a forked child ends there too)
            _gc_callers = max(0, _gc_callers - 1)
            if _gc_callers == 0 and _gc_saved is not None:
                # Unless someone set other thresholds meanwhile, put CPython's back.
                if gc.get_threshold()[0] == YOUNG_GC_THRESHOLD:
                    gc.set_threshold(*_gc_saved)
                _gc_saved = None


def _thresholds_back_after_fork() -> None:
    """In a forked child the work running in the parent's threads is not
    running: CPython's thresholds go back to what they were before it."""
    global _gc_lock, _gc_callers, _gc_saved
    _gc_lock = threading.Lock()
    if _gc_callers and _gc_saved is not None and gc.get_threshold()[0] == YOUNG_GC_THRESHOLD:
        gc.set_threshold(*_gc_saved)
    _gc_callers, _gc_saved = 0, None


os.register_at_fork(after_in_child=_thresholds_back_after_fork)


class MainUnpickler(pickle.Unpickler):
    """Unpickles a call's results: ``__main__.<name>`` is what the call sent
    under that name, though the caller's script may have rebound it since
    (a notebook's cell run again)."""

    def __init__(self, data, sent: dict, buffers=None) -> None:
        super().__init__(io.BytesIO(data), buffers=buffers)
        self.sent = sent

    def find_class(self, module, name):
        if module == "__main__" and name in self.sent:
            return self.sent[name]
        return super().find_class(module, name)


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


class MainNames:
    """The classes and functions of ``__main__`` that one side's pickles may
    name, because the other side has them as ``__main__.<name>``.

    A worker's ``__main__`` is not the caller's script: the caller sends the
    ones a call's batches name with the call's functions (by value, once per
    worker), and the worker puts them in the module it keeps as
    ``__main__``; its results name them too, and come back as the caller's
    own (see MainUnpickler). Pickled by name, instances of a class of the
    caller's script cost what any instance costs, not what cloudpickle
    costs (measured: 2.5 times the whole call, 100,000 small instances).

    ``allowed``: None in the caller (any that its ``__main__`` holds under
    its qualified name, and that a name already sent in this call is not
    rebound from); in a worker, what this call sent. ``found`` collects what
    pickles named (in the caller: over the whole call)."""

    def __init__(self, allowed=None) -> None:
        self.allowed = allowed
        self.found: dict = {}


class _ByValue(Exception):
    """What a pickle holds cannot be named in the other process's __main__."""


# type -> whether instances of it may pickle by name something of __main__ that
# MainNames does not see (a __reduce__ of the script's own; a copyreg reducer
# is looked up on each call).
_REDUCES_ITSELF: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _reduces_itself(kind) -> bool:
    if kind in copyreg.dispatch_table:  # asked each time: a reducer may be registered after a first batch
        return True
    known = _REDUCES_ITSELF.get(kind)
    if known is None:
        known = any(
            getattr(base, "__module__", None) == "__main__"
            and ("__reduce__" in vars(base) or "__reduce_ex__" in vars(base))
            for base in kind.__mro__
        )
        _REDUCES_ITSELF[kind] = known
    return known


class _NamingPickler(pickle.Pickler):
    """pickle's C Pickler, noting each class and function of ``__main__`` it
    names (``self.names``, a MainNames) and refusing what the other side
    could not look up."""

    def reducer_override(self, obj):
        kind = type(obj)
        if isinstance(obj, type) or kind is types.FunctionType:
            if getattr(obj, "__module__", None) == "__main__":
                names = self.names
                name = obj.__qualname__
                if names.allowed is None:
                    if getattr(sys.modules["__main__"], name, None) is not obj:
                        raise _ByValue(name)  # nested, local, a lambda, or not what the script calls it
                    if names.found.get(name, obj) is not obj:
                        raise _ByValue(name)  # rebound during the call: the name stands for what was sent
                elif names.allowed.get(name) is not obj:
                    raise _ByValue(name)  # made here, or sent by an earlier call
                names.found[name] = obj
        elif getattr(kind, "__module__", None) == "__main__":
            if _reduces_itself(kind):
                raise _ByValue(kind.__qualname__)
        elif kind.__module__ != "builtins" and getattr(obj, "__module__", None) == "__main__":
            # Of __main__ though neither a class nor a function (a TypeVar, say):
            # its __reduce__ may name it a __main__ global, unseen here.
            raise _ByValue(kind.__qualname__)
        return NotImplemented


def dumps(obj, out_of_band_from=None, main_names=None):
    """``(pickle, buffers)``: ``obj`` pickled with protocol 5, its buffers of
    at least ``out_of_band_from`` bytes (numpy arrays, pandas blocks) left
    out for the caller to send apart (None: all in band).

    Plain DataFrames travel by their blocks (perfkit._frames), numpy's
    integer, bool, float64 and complex128 scalars by their value. What
    refers to the caller's ``__main__``: by name where ``main_names`` (a
    MainNames) allows it (``main_names.found`` then says what was named),
    else through cloudpickle, by value, as lambdas, closures and the like
    are after pickle refused them."""
    try:
        return _dumps(obj, out_of_band_from, True, main_names)
    except _frames.FrameCycle:
        return _dumps(obj, out_of_band_from, False, main_names)


_BYTES_TYPES = (bytes, bytearray)


def _dumps(obj, out_of_band_from, fast_frames, main_names):
    buffers = []

    def out_of_band(pickle_buffer):
        raw = pickle_buffer.raw()
        # A PickleBuffer of bytes or a bytearray is one the caller made (numpy's
        # and perfkit's own export arrays): in band, it arrives as pickle gives
        # it, bytes or a bytearray, as joblib's does, whatever its size (out of
        # band, a large one arrived as a memoryview or an mmap, a small one as bytes).
        if raw.nbytes >= out_of_band_from and type(raw.obj) not in _BYTES_TYPES:
            buffers.append(raw)
            return False
        return True

    callback = None if out_of_band_from is None else out_of_band
    reducers = _reducers(fast_frames)
    table = None if reducers is None else {**copyreg.dispatch_table, **reducers}
    naming = main_names is not None and bool(main_names.found)  # this call's pickles name some already
    data = None
    if not naming:
        try:
            if table is None:
                data = pickle.dumps(obj, protocol=5, buffer_callback=callback)
            else:
                data = _dump(pickle.Pickler, table, obj, callback)
        except _frames.FrameCycle:
            raise
        except Exception:  # noqa: BLE001, S110 (refused by pickle: cloudpickle's turn)
            pass
        # pickle names a class or function of __main__, which the other
        # process cannot look up unless it was given it (MainNames): its
        # __main__ is perfkit's worker (or the caller's script, seen from a
        # worker). Sought as pickle writes a module name (SHORT_BINUNICODE,
        # 8 bytes): the same string as a value only costs a second pickling.
        if data is not None and not _native.contains_bytes(data, b"\x8c\x08__main__"):
            return data, buffers
        naming = data is not None and main_names is not None
    if naming:
        buffers.clear()
        found = dict(main_names.found)
        try:
            return _dump(_NamingPickler, table, obj, callback, names=main_names), buffers
        except _frames.FrameCycle:
            raise
        except Exception:  # noqa: BLE001 (_ByValue, or refused by pickle)
            main_names.found = found  # (what this pickle noted is not sent after all)
    # cloudpickle sends them by value, and one sent back and forth comes back
    # as the original. What an earlier attempt set apart must not precede its own.
    buffers.clear()
    pickler_class = cloud_pickler()
    reducers = _reducers(fast_frames)  # a fresh memo for the frames
    if reducers is not None:
        # The C Pickler reads `dispatch_table` once, in __init__: an instance
        # attribute set afterwards is ignored when the class defines one (as
        # cloudpickle's does), so the table goes on a subclass. cloudpickle's
        # own reducers keep precedence over copyreg's, as in cloudpickle.
        table = collections.ChainMap(reducers, pickler_class.dispatch_table)
        pickler_class = type("_FramesCloudPickler", (pickler_class,), {"dispatch_table": table})
    return _dump(pickler_class, None, obj, callback), buffers


def cloudpickle_dumps(obj) -> bytes:
    """``cloudpickle.dumps(obj, protocol=5)``, its code keeping its file's name (see cloud_pickler)."""
    return _dump(cloud_pickler(), None, obj, None)


_CLOUD_PICKLER = None


def cloud_pickler():
    """cloudpickle's Pickler, but code sent by value keeps ``co_filename``.
    cloudpickle writes ``<dynamic-code>`` there (for pickles that do not
    depend on where the code was defined), so a task of a script or of a
    notebook's cell that raised or warned in a worker said ``File
    "<dynamic-code>", line 3``: neither the script nor the cell, and no line
    of code. With the name, the worker shows a script's lines and the
    caller a cell's (see parallel._with_source_lines)."""
    global _CLOUD_PICKLER
    if _CLOUD_PICKLER is None:
        import cloudpickle

        reduce_code = cloudpickle.Pickler.dispatch_table[types.CodeType]

        def reduce_code_keeping_filename(code):
            rebuild, args = reduce_code(code)
            # (the one argument cloudpickle replaced, wherever this version puts
            # it; a str only: bytes == str warns, or raises under `python -bb`)
            return rebuild, tuple(
                code.co_filename if type(arg) is str and arg == "<dynamic-code>" else arg for arg in args
            )

        table = collections.ChainMap(
            {types.CodeType: reduce_code_keeping_filename, _LRU_CACHE_WRAPPER: _reduce_lru_cache},
            cloudpickle.Pickler.dispatch_table,
        )

        def reducer_override(self, obj):
            # cloudpickle rebuilds a class sent by value without its
            # __slots__ (they are set on the finished class, where they do
            # nothing): a script's dataclass(slots=True) had a __dict__ in the
            # workers, and its instances came back with a state the caller's
            # own class cannot take. Given to the class statement, they are slots.
            reduced = cloudpickle.Pickler.reducer_override(self, obj)
            if isinstance(obj, type) and "__slots__" in vars(obj) and type(reduced) is tuple:
                rebuild, args, *rest = reduced
                if rebuild is getattr(cloudpickle.cloudpickle, "_make_skeleton_class", None):
                    type_kwargs = {**args[3], "__slots__": obj.__slots__}
                    reduced = (_make_slotted_class, (rebuild, *args[:3], type_kwargs, *args[4:]), *rest)
            return reduced

        _CLOUD_PICKLER = type(
            "_CloudPickler",
            (cloudpickle.Pickler,),
            {"dispatch_table": table, "reducer_override": reducer_override},
        )
    return _CLOUD_PICKLER


_LRU_CACHE_WRAPPER = type(functools.lru_cache(maxsize=None)(len))


def _found_by_reference(obj) -> bool:
    """Whether a worker finds ``obj`` by its module and qualified name: not
    in a script's ``__main__``, nor among a function's locals."""
    module = sys.modules.get(getattr(obj, "__module__", None) or "")
    if module is None or module.__name__ in ("__main__", "__mp_main__"):
        return False
    found = module
    for part in getattr(obj, "__qualname__", "<locals>").split("."):
        found = getattr(found, part, None)
    return found is obj


def _reduce_lru_cache(wrapper):
    """A @functools.cache / @lru_cache function pickles by reference (the C
    wrapper's own way), which a worker cannot find for a script's: that one
    goes by value, and each worker wraps it in a cache of its own, as
    importing the script would."""
    if _found_by_reference(wrapper):
        return wrapper.__reduce__()
    params = wrapper.cache_parameters()
    return _make_lru_cache, (wrapper.__wrapped__, params["maxsize"], params["typed"])


def _make_lru_cache(func, maxsize, typed):
    """A worker's own ``functools.lru_cache`` of a function sent by value (see cloud_pickler)."""
    return functools.update_wrapper(functools.lru_cache(maxsize=maxsize, typed=typed)(func), func)


def _make_slotted_class(make_skeleton_class, *args):
    """cloudpickle's class rebuilt with its __slots__ given to the class
    statement (see cloud_pickler); without them where its metaclass refuses
    them (typing.NamedTuple's, whose class makes its own), as cloudpickle
    rebuilds it."""
    try:
        return make_skeleton_class(*args)
    except (AttributeError, TypeError):
        type_kwargs = {k: v for k, v in args[3].items() if k != "__slots__"}
        return make_skeleton_class(*args[:3], type_kwargs, *args[4:])


def _dump(pickler_class, dispatch_table, obj, buffer_callback, names=None) -> bytes:
    out = io.BytesIO()
    pickler = pickler_class(out, protocol=5, buffer_callback=buffer_callback)
    if dispatch_table is not None:
        pickler.dispatch_table = dispatch_table
    if names is not None:
        pickler.names = names
    pickler.dump(obj)
    return out.getvalue()


def _reducers(fast_frames):
    """The reducers one pickle adds to its pickler's table, or None."""
    scalars = _numpy_reducers()
    frames = _frames.frame_reducers() if fast_frames else None
    if frames is None:
        return scalars or None
    return {**scalars, **frames}


_NUMPY_TABLE: dict = {}
# (copyreg's types, _NUMPY_TABLE without them) as last computed: copyreg rarely changes.
_FILTERED: tuple = (None, {})


def _numpy_reducers():
    """``{numpy type: reducer}`` once numpy is imported here: arrays (see
    _reduce_array), and the scalar types whose value survives a trip through
    a Python int, bool or float exactly. numpy's own pickling of a scalar
    costs ~1.5 µs (it saves the dtype and the bytes) against ~0.4 this way:
    a task that returns ``np.mean(x)`` is common, and 100,000 of them took
    120 ms (34 now, with pack_numpy_scalars) where floats take 18. A type the
    user registered a reducer for in copyreg keeps it."""
    np = sys.modules.get("numpy")
    if np is None:
        return {}
    if not _NUMPY_TABLE:
        integers = (
            np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint16, np.uint32,
            np.uint64, np.intc, np.uintc, np.longlong, np.ulonglong,
        )  # fmt: skip
        # int(), float(), … rather than .item(): ~40 ns against ~350.
        table = {}
        for kinds, convert in (
            (integers, int),
            ((np.float64,), float),
            ((np.complex128,), complex),
            ((np.bool_,), bool),
        ):
            for kind in kinds:
                table[kind] = _scalar_reducer(kind, convert)
        table[np.ndarray] = _reduce_array
        table[np.memmap] = _reduce_memmap
        _NUMPY_TABLE.update(table)  # whole, at once: another thread sees all of it or none
    global _FILTERED
    keys = tuple(copyreg.dispatch_table)
    filtered = _FILTERED  # read once: another thread may replace it
    if filtered[0] != keys:
        table = {kind: reduce for kind, reduce in _NUMPY_TABLE.items() if kind not in copyreg.dispatch_table}
        filtered = _FILTERED = (keys, table)
    return filtered[1]


def _reduce_array(array):
    """An exact, contiguous numpy array of numbers pickles as _frames encodes
    a frame's blocks: its dtype as a one-letter code, not as a dtype object
    (~5 µs saved each way, most of pickling an array); so does a large
    strided one a call's batches send (see StridedCopies); anything else as
    numpy does."""
    flags = array.flags
    if flags.c_contiguous or flags.f_contiguous:
        encoded = _frames._encode_array(array)
        if encoded is not array:
            return _frames._decode_array, (encoded,)
    else:
        copies = getattr(_strided_copies, "current", None)
        if copies is not None and array.nbytes >= copies.threshold:
            encoded = copies.encode(array)
            if encoded is not array:
                return _frames._decode_array, (encoded,)
    return array.__reduce_ex__(5)


_strided_copies = threading.local()  # .current: the StridedCopies of the batch this thread pickles


class StridedCopies:
    """A call's contiguous copies of the large strided arrays its batches send
    (a column, every other row: ``X[::2]``). numpy pickles such a view by
    copying its bytes into the pickle itself, for every batch: 8 MB of
    pickle and 20 ms a batch for a view every task gets, whose size then cut
    the batches to one task each. Copied once, the copy goes out of band as
    any array does, and is kept while the next batch sends it too (its
    memory seen as what the batch before sent; see perfkit.parallel). As
    numpy's pickle, the copy is C-contiguous. ``with copies:`` around one
    batch's pickling."""

    def __init__(self, threshold) -> None:
        self.threshold = threshold
        self.batch: dict = {}  # id -> (view, encoded copy): this batch's
        self.before: dict = {}  # ... and the previous batch's (the views kept alive: ids stay theirs)

    def encode(self, array):
        key = id(array)
        known = self.batch.get(key) or self.before.get(key)
        if known is None:
            encoded = _frames._encode_array(array)
            if encoded is array:
                return array
            known = (array, encoded)
        self.batch[key] = known
        return known[1]

    def __enter__(self):
        _strided_copies.current = self
        return self

    def __exit__(self, *exc_info):
        _strided_copies.current = None
        self.before, self.batch = self.batch, {}


# A memmap's mode in the caller -> the mode the worker maps its file with
# ("w+" would truncate the file; "c", copy-on-write, is not in the file).
_MEMMAP_MODES = {"r": "r", "r+": "r+", "w+": "r+"}


def _reduce_memmap(array):
    """A numpy memmap of a file, opened for reading or writing, travels as
    where its bytes are in the file, and the other process maps them there
    again (as joblib sends one): what a task writes into it reaches the file,
    which the caller's memmap shows. joblib documents writing results into
    a memmap given to the tasks; a copy would lose them. A copy-on-write
    memmap, one no longer backed by its file, or one whose file is gone or
    shorter travels by value."""
    np = sys.modules["numpy"]
    mode = _MEMMAP_MODES.get(getattr(array, "mode", None))
    filename = getattr(array, "filename", None)
    backing = getattr(array, "_mmap", None)
    if mode is None or filename is None or backing is None or array.size == 0:
        return _memmap_by_value(array)
    try:
        base_address = np.frombuffer(backing, dtype=np.uint8).ctypes.data
    except (ValueError, TypeError):  # its mapping was closed
        return _memmap_by_value(array)
    # numpy maps the file from the offset rounded down to the allocation
    # granularity; a cache entry's map (perfkit.Memory's mmap_mode) says where it starts.
    mapped_from = getattr(backing, "perfkit_map_start", None)
    if mapped_from is None:
        mapped_from = array.offset - array.offset % mmap.ALLOCATIONGRANULARITY
    first = array.__array_interface__["data"][0]
    # The bytes the array's elements span, relative to its first element (strides may be negative).
    low = sum(min(0, (n - 1) * st) for n, st in zip(array.shape, array.strides))
    high = sum(max(0, (n - 1) * st) for n, st in zip(array.shape, array.strides)) + array.itemsize
    start = mapped_from + (first - base_address) + low
    try:
        sent = os.stat(filename)
    except OSError:
        return _memmap_by_value(array)
    if sent.st_size < start + (high - low):
        return _memmap_by_value(array)
    return _load_memmap, (
        filename,
        mode,
        start,
        high - low,
        -low,
        array.dtype,
        array.shape,
        array.strides,
        (sent.st_dev, sent.st_ino),
    )


def _memmap_by_value(array):
    """A memmap sent as its values: as the plain array it views (out of band
    when large, its dtype as it is), a memmap again at the other end, with no
    file, as numpy's unpickling makes one. numpy pickles a memmap, an ndarray
    subclass, with its bytes in band, and unpickles a big-endian dtype as the
    native one (a copy-on-write memmap of '>f4' arrived as '<f4')."""
    return _view_as_memmap, (array.view(sys.modules["numpy"].ndarray),)


def _view_as_memmap(values):
    return values.view(_frames._numpy().memmap)


def _load_memmap(filename, mode, start, length, first, dtype, shape, strides, sent_file):
    """The array ``_reduce_memmap`` described: a memmap viewing its bytes in the file."""
    np = _frames._numpy()
    whole = _mapped_file(np, filename, mode, start + length, sent_file)
    view = np.ndarray.__new__(
        np.memmap, shape, dtype=dtype, buffer=whole, offset=start + first, strides=strides
    )
    # A memmap as numpy makes a view of one: sent on (a task's result), it
    # goes by its file again. Its offset is where its first element is in
    # the file, as joblib's reducer gives it (a view X[1000:] of a memmap
    # said 0, the start of the file).
    view._mmap, view.filename, view.offset, view.mode = whole._mmap, whole.filename, start + first, whole.mode
    return view


class _WholeFileMap(mmap.mmap):
    """The map of a whole file, from its first byte, that the memmaps
    ``_load_memmap`` makes view: _reduce_memmap places them in the file by
    it, not by their offset (numpy's own memmaps map from their offset,
    rounded down)."""

    perfkit_map_start = 0


# (file name, mode) -> one mapping of the whole file, while any array views it:
# a batch of a memmap's row views would otherwise map the file once per row,
# and each mapping holds a file descriptor (1,024 of them run out).
_MAPPED_FILES: weakref.WeakValueDictionary = weakref.WeakValueDictionary()


def _mapped_file(np, filename, mode, needed, sent_file):
    identity = os.stat(filename)
    identity = (identity.st_dev, identity.st_ino, identity.st_size)
    if identity[:2] != tuple(sent_file):
        # Another file under the name (written elsewhere and renamed over
        # it): the task would read, and write into, a file the caller's
        # memmap does not show.
        raise ValueError(
            f"perfkit.Parallel: the memmap's file {filename} was replaced after it was sent "
            "(it is another file now): keep the file in place while tasks use it"
        )
    whole = _MAPPED_FILES.get((filename, mode))
    if whole is None or whole._perfkit_identity != identity:
        if identity[2] < needed:
            raise ValueError(
                f"perfkit.Parallel: the memmap's file {filename} is shorter than when it was sent "
                f"({identity[2]} bytes, {needed} needed): it was truncated or replaced meanwhile"
            )
        with open(filename, "r+b" if mode == "r+" else "rb") as f:
            backing = _WholeFileMap(
                f.fileno(), identity[2], access=mmap.ACCESS_WRITE if mode == "r+" else mmap.ACCESS_READ
            )
        # (np.memmap(filename, mode=mode) but on that map; its name as np.memmap gives it)
        whole = np.ndarray.__new__(np.memmap, (identity[2],), dtype=np.uint8, buffer=backing)
        whole._mmap, whole.offset, whole.mode = backing, 0, mode
        whole.filename = (
            filename.resolve() if isinstance(filename, os.PathLike) else os.path.abspath(filename)
        )
        whole._perfkit_identity = identity
        _MAPPED_FILES[(filename, mode)] = whole
    return whole


def _scalar_reducer(kind, convert):
    def reduce(value):
        return kind, (convert(value),)

    return reduce


def pack_numpy_scalars(values):
    """``(tag, bytes)`` for a list of numpy scalars all of one type of
    ``_numpy_reducers``' (a task returning ``np.mean(x)``): their raw values,
    as an array of that type; None for anything else. ~60 ns a value each
    way, against ~500 to pickle and unpickle one even by its value."""
    np = sys.modules.get("numpy")
    if np is None or not values or not isinstance(values[0], np.generic):
        return None
    kind = type(values[0])  # a numpy type: hashable (a result's own class may not be)
    if kind not in _numpy_reducers():  # also leaves a type with a copyreg reducer of the user's to pickle
        return None
    if not all(type(value) is kind for value in values):
        return None
    code = np.dtype(kind).char
    if np.dtype(code).type is not kind:
        return None  # would come back as another (equal) type
    return "np:" + code, np.array(values, dtype=code).tobytes()


def unpack_results(tag, data):
    """The list ``_native.pack_values`` or ``pack_numpy_scalars`` packed."""
    if tag.startswith("np:"):
        import numpy  # the tasks' results are numpy's: this process may not have imported it yet

        # Iterating an array gives scalars of its type, each with its own copy of the value.
        return list(numpy.frombuffer(data, dtype=tag[3:]))
    from perfkit._native import unpack_values

    return unpack_values(tag, data)
