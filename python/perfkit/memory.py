"""joblib.Memory's API on perfkit's Rust cache engine (crate ``perfkit-cache``).

Python does what needs Python: binding a call's arguments to the function's
signature (defaults applied, ``ignore`` removed), pickling (protocol 5, so
large buffers such as numpy arrays stay out of the pickle stream) and the
familiar API. Rust hashes (xxh3-128, buffers read in place with the GIL
released) and stores (checksummed entry files published by an atomic rename,
LRU eviction).

Layout of a location::

    <location>/perfkit/<module>/<qualname>/<code hash>/func_code.py      the function's source
    <location>/perfkit/<module>/<qualname>/<code hash>/<ab>/<argument hash ab...>.pkc

An entry is one file: its first line is the metadata as JSON (function,
arguments' repr, duration, sizes; ``head -1`` shows it), then the pickled
result and its buffers under checksums. Its modification time is its last
use (a hit refreshes it); eviction removes the least recently used first.

A miss's entry, when small, is written by a background thread (Rust), so the
call returns without waiting for the file system; this process reads it from
memory until it is on disk, and the queue is flushed at exit. Another process
sees the entry once it is written (a miss for it until then). A process killed
before the write loses the entry, never half of it; forked and multiprocessing
children, which often end without running atexit, and perfkit.Parallel's
workers, whose siblings share the location, write at once. A location
removed by ``shutil.rmtree`` (a ``TemporaryDirectory``'s cleanup too), or
a directory above or inside it, first has the entries queued there dropped
and the one being written finished (an audit hook, installed with the first
queued write), so the removal neither fails nor sees files come back; and
the writer never creates a removed location again (its next store does, as
a direct store would).

Crash safety comes from the rename (an entry is complete or absent) and the
checksums (damage is detected on read, warned about and recomputed), not from
``fsync``: a killed process cannot publish a partial entry, and an entry torn
by a power loss fails its checksum. ``Memory(..., durable=True)`` adds the
fsyncs for those who also want a stored entry to survive a power loss.
"""

from __future__ import annotations

import collections
import copyreg
import datetime
import functools
import inspect
import io
import itertools
import json
import math
import mmap
import operator
import os
import pickle
import re
import reprlib
import sys
import threading
import time
import types
import warnings
import zlib
from multiprocessing.reduction import ForkingPickler
from typing import TYPE_CHECKING, Any, Callable

import perfkit
from perfkit import _native
from perfkit._typing import Generic, P, R, T, overload

if TYPE_CHECKING:
    from collections.abc import Coroutine

    from typing_extensions import Protocol

    class _CacheDecorator(Protocol):
        """What ``memory.cache(ignore=...)`` returns: a decorator, as ``memory.cache`` is."""

        @overload
        def __call__(  # type: ignore[overload-overlap]
            self, func: Callable[P, Coroutine[Any, Any, T]]
        ) -> AsyncMemorizedFunc[P, T] | AsyncNotMemorizedFunc[P, T]: ...
        @overload
        def __call__(self, func: Callable[P, R]) -> MemorizedFunc[P, R] | NotMemorizedFunc[P, R]: ...


__all__ = [
    "CacheWarning",
    "MemorizedFunc",
    "MemorizedResult",
    "Memory",
    "NotMemorizedFunc",
    "NotMemorizedResult",
    "hash",
]

_STORE_DIR = "perfkit"
_FLAG_COMPRESSED = 1
_PICKLE_PROTO5_FIRST_BYTE = 0x80  # protocol 2+ streams start with PROTO; zlib streams with 0x78
_MMAP_ACCESS = {
    "r": mmap.ACCESS_READ,
    "c": mmap.ACCESS_COPY,
    "r+": mmap.ACCESS_WRITE,
    "w+": mmap.ACCESS_WRITE,
}
# bytes/bytearray/memoryview at least this large are hashed in place, not copied into the stream.
_INPLACE_MIN = 4096

_cache_load = _native.cache_load
_cache_load_head = _native.cache_load_head
_cache_hash = _native.cache_hash
_cache_key_of_scalars = _native.cache_key_of_scalars
_cache_store_later = _native.cache_store_later
_loads = pickle.loads
_PickleBuffer = pickle.PickleBuffer


class CacheWarning(UserWarning):
    """A cache entry could not be read or written: the function ran (or its result was returned) anyway."""


# -- hashing -------------------------------------------------------------------------------------


_TOTALLY_ORDERED = frozenset((str, int, bytes))


def _sorted_canonically(items, key=None):
    try:
        ordered = sorted(items, key=key)
        if not ordered or type(ordered[0] if key is None else key(ordered[0])) in _TOTALLY_ORDERED:
            return ordered  # (what sorted with a str or an int is one too)
        keys = ordered if key is None else list(map(key, ordered))
        if not all(map(operator.lt, keys, itertools.islice(keys, 1, None))):
            # A partial order (frozensets compare by inclusion, also inside
            # tuples; NaN by nothing): sorted() kept much of the set's own,
            # hash-seeded, order. (A set's items and a dict's keys are distinct.)
            raise TypeError
        return ordered
    except TypeError:
        # An unorderable mix: order by type, then by content hash (this module's hash(),
        # not builtins.hash, which is salted per process for strings).
        get = key or (lambda x: x)
        return sorted(items, key=lambda x: (type(get(x)).__qualname__, hash(get(x))))


def _item_key(kv):
    return kv[0]


# Lists, tuples, dicts and sets of at least this many items are written as
# the digest of their contents, computed once per object in a dump: an object
# referred to from many places (a schema dict in every record) is pickled
# once, not once per reference. Written so whether shared or not, equal
# contents hash equal whatever their identity.
_DIGEST_MIN = 64
# Digests inside digests at most this deep (each level holds a few frames of
# the stack): deeper large containers are written in line, so that deep
# data does not reach the recursion limit sooner than plain pickling does.
_DIGEST_LEVELS = 24


_WRITTEN_OWN_WAY = frozenset(
    (dict, list, tuple, set, frozenset, bytes, bytearray, memoryview, types.FunctionType)
)


class _HashPickler(pickle.Pickler):
    """Pickles by value for hashing.

    Runs in ``fast`` mode (no memo), so equal objects pickle identically
    whatever their identity (``["aa", "aa"]`` with one string object or with
    two); dicts and sets are written in a canonical order, so equal ones hash
    equal whatever their insertion order or the process's string-hash seed;
    large containers are written as their contents' digest (_DIGEST_MIN);
    numpy arrays (np.memmap too) and memoryviews as the digest of their
    bytes, read in place (so that neither writeability nor the memmap class
    counts); large bytes go out of band to be hashed in place; functions
    that cannot be pickled by reference (lambdas, local functions) are hashed
    by name and code.
    """

    # id -> (object, digest or None while it is being written) for this dump;
    # None: no digests (the memo's fallback).
    digests: dict | None = None
    root = None  # the object being written (not to be written as its own digest)
    nested: _Hasher | None = None  # the pickler of the contents of this one's large containers
    level = 0  # how many digests this pickler's output is inside

    def persistent_id(self, obj):  # called for every object: keep the common path short
        t = type(obj)
        if t not in _WRITTEN_OWN_WAY:  # (one set lookup for ints, floats, strings, ...)
            return None
        if t is dict:
            if (
                len(obj) >= _DIGEST_MIN
                and self.level < _DIGEST_LEVELS
                and self.digests is not None
                and obj is not self.root
            ):
                return self._digest(obj, t)
            return ("perfkit.dict", _sorted_canonically(obj.items(), key=_item_key))
        if t is list or t is tuple:
            if (
                len(obj) >= _DIGEST_MIN
                and self.level < _DIGEST_LEVELS
                and self.digests is not None
                and obj is not self.root
            ):
                return self._digest(obj, t)
            return None
        if t is set or t is frozenset:
            if len(obj) >= _DIGEST_MIN and self.level < _DIGEST_LEVELS and self.digests is not None:
                return self._digest(obj, t)
            return ("perfkit." + t.__name__, _sorted_canonically(obj))
        if t is memoryview:
            # Its bytes' digest, not the view (a read-only view would be
            # written as READONLY_BUFFER: not by its values alone).
            data = (
                obj if obj.c_contiguous else obj.tobytes()
            )  # (a Fortran-ordered view's bytes are in another order)
            return (
                "perfkit.memoryview",
                obj.format,
                obj.shape,
                _cache_hash(b"perfkit.memoryview", b"", (data,)),
            )
        if t is not types.FunctionType:  # bytes, bytearray
            if len(obj) >= _INPLACE_MIN:
                return ("perfkit." + t.__name__, _PickleBuffer(obj))
            return None
        if "<" in obj.__qualname__:
            # Not picklable by reference: hash what determines its behaviour.
            closure = tuple(c.cell_contents for c in obj.__closure__ or ())
            return (
                "perfkit.function",
                obj.__module__,
                obj.__qualname__,
                _code_digest(obj.__code__, position_independent=True),
                obj.__defaults__,
                obj.__kwdefaults__,
                closure,
            )
        return None

    def _digest(self, obj, t):
        digests = self.digests
        known = digests.get(id(obj))
        if known is not None:
            if known[1] is None:
                raise ValueError("fast mode: a container holds itself")  # (the memo writes cycles)
            return ("perfkit.digest", t.__name__, known[1])
        digests[id(obj)] = (obj, None)  # (held: its id is not reused during the dump)
        if t is dict:
            content = _sorted_canonically(obj.items(), key=_item_key)
        elif t is set or t is frozenset:
            content = _sorted_canonically(obj)
        else:
            content = obj
        if self.nested is None:
            self.nested = _Hasher()
            self.nested.pickler.level = self.level + 1
        nested = self.nested
        nested.pickler.digests, nested.pickler.root = digests, content
        try:
            nested.pickler.dump(content)
            digest = _cache_hash(b"perfkit.digest", nested.file.getvalue(), nested.buffers)
        finally:
            nested.pickler.digests = nested.pickler.root = None
            nested.release()
        digests[id(obj)] = (obj, digest)
        return ("perfkit.digest", t.__name__, digest)

    def reducer_override(self, obj):  # called for objects of non-builtin types only
        t = type(obj)
        if t is MemorizedFunc or t is AsyncMemorizedFunc:
            # By what it computes: its name, source and what it held when
            # cached (its key prefix), its defaults, a method's instance. Not
            # by reference: a script's function is not found under its name,
            # which is the cached function's.
            partials, func = _unwrapped(obj.func)
            held = (
                getattr(func, "__defaults__", None),
                getattr(func, "__kwdefaults__", None),
                [p.keywords for p in partials],
                _call_state(obj.func, obj._leave_out_self),
            )
            return (MemorizedFunc, (obj._prefix, held, obj.mmap_mode))
        if t.__module__ == "numpy" and (t.__name__ == "ndarray" or t.__name__ == "memmap"):
            flags = obj.flags
            if obj.dtype.kind in _RAW_KINDS and not obj.dtype.hasobject:
                # By its dtype, shape, memory order and the digest of its
                # bytes, hashed now in place: not by numpy's reduction, which
                # would tell a read-only array (pickle's READONLY_BUFFER) and
                # an np.memmap (its class, its bytes copied) from an equal array.
                if flags.c_contiguous:
                    order = "C"
                elif flags.f_contiguous:
                    order = "F"
                else:  # a strided view hashes like its (C-ordered) copy: equal arrays, equal hashes
                    obj, order = obj.copy(), "C"
                return (_hashed_array, (obj.dtype, obj.shape, order, _array_digest(obj)))
            if not (flags.c_contiguous or flags.f_contiguous):
                # A strided view hashes like its (C-ordered) copy: equal arrays, equal hashes.
                return obj.copy().__reduce_ex__(5)
        elif isinstance(obj, dict) and not isinstance(obj, collections.OrderedDict):
            # A dict subclass (defaultdict, a class of the program's): its
            # items in the canonical order, as an exact dict's, so that equal
            # ones hash equal whatever their insertion order (joblib sorts
            # them too). Not an OrderedDict, whose order is part of its value.
            reduction = obj.__reduce_ex__(5)
            if type(reduction) is tuple and len(reduction) >= 5 and reduction[4] is not None:
                items = _sorted_canonically(list(reduction[4]), key=_item_key)
                return (*reduction[:4], iter(items), *reduction[5:])
            return reduction
        return NotImplemented


# Kinds of numpy dtypes whose values are their bytes (no pointers to other memory):
# bool, integers, floats, complex, datetime64, timedelta64, bytes, str, void/structured.
_RAW_KINDS = frozenset("biufcmMSUV")


def _array_digest(a) -> str:
    """The digest of a C- or F-contiguous array's bytes, in memory order, read in place."""
    try:
        data = memoryview(a)
    except (TypeError, ValueError, BufferError):
        # A dtype the buffer protocol does not describe (datetime64, timedelta64): its bytes as uint8.
        try:
            data = a.reshape(-1, order="A").view("u1")
        except (TypeError, ValueError):
            data = a.tobytes(order="A")
    return _cache_hash(b"perfkit.ndarray", b"", (data,))


def _hashed_array(dtype, shape, order, digest):
    """What stands for a numpy array in a hash's pickle stream (a hash's stream is never unpickled)."""
    raise TypeError("perfkit.memory._hashed_array: a hashed array's stand-in, not an array")


class _Hasher:
    """A reusable hashing pickler (creating one costs more than a small pickle)."""

    def __init__(self) -> None:
        self.file = io.BytesIO()
        self.buffers: list = []
        self.pickler = _HashPickler(self.file, protocol=5, buffer_callback=self.buffers.append)
        self.pickler.fast = True
        self.lock = threading.Lock()

    def dump(self, obj) -> tuple[bytes, list]:
        """(pickle stream, out-of-band buffers) of ``obj``; the caller holds ``lock``.
        Every dump ends with :meth:`release` (an interrupted one's hasher is
        replaced: ``_pickle_for_hash``), so each starts empty."""
        pickler = self.pickler
        pickler.digests, pickler.root = {}, obj
        try:
            pickler.dump(obj)
            return self.file.getvalue(), list(self.buffers)
        except RecursionError:
            # A cycle fast mode did not see as one (through the canonical
            # lists dicts are written as: an instance whose __dict__ holds
            # its own cached method, say): the memo can write it.
            return _dump_with_memo(obj)
        except ValueError as exc:
            if "fast mode" not in str(exc):
                raise
            # A cycle: fast mode cannot write it; the memo (identity-sensitive) can.
            return _dump_with_memo(obj)
        finally:
            pickler.digests = pickler.root = None  # (not holding the caller's objects)
            self.release()

    def release(self) -> None:
        """Drops the last dump's stream and buffers (the hashed arrays)."""
        self.file.seek(0)
        self.file.truncate()
        self.buffers.clear()


def _dump_with_memo(obj) -> tuple[bytes, list]:
    buffers: list = []
    f = io.BytesIO()
    _HashPickler(f, protocol=5, buffer_callback=buffers.append).dump(obj)
    return f.getvalue(), buffers


_shared_hasher = _Hasher()


def _pickle_for_hash(obj) -> tuple[bytes, list]:
    hasher = _shared_hasher
    if hasher.lock.acquire(blocking=False):
        try:
            return hasher.dump(obj)
        except BaseException:
            _replace_shared_hasher()  # a pickler interrupted mid-dump is not reused
            raise
        finally:
            hasher.lock.release()
    # Another thread is hashing: use a private pickler.
    private = _Hasher()
    return private.dump(obj)


def _replace_shared_hasher() -> None:
    global _shared_hasher
    _shared_hasher = _Hasher()


def hash(
    obj: Any, hash_name: str = "md5", coerce_mmap: bool = False
) -> str:  # joblib.hash's name, on purpose
    """A stable content hash of any picklable object (32 hex digits, xxh3-128).

    Equal across processes and runs; equal for equal numpy arrays (writable,
    read-only or np.memmap) and pandas objects, different when their dtype,
    shape, memory order or values differ.
    Large buffers (numpy arrays, bytes, memoryviews) are hashed in place from
    their memory, never copied into the pickle stream. ``hash_name`` and
    ``coerce_mmap`` are joblib's: any of joblib's names is accepted (the
    digest is xxh3-128 whatever it says, so it is not joblib's digest), and a
    memory-mapped array always hashes as its values.
    """
    if hash_name not in ("md5", "sha1"):
        raise ValueError(f"hash_name={hash_name!r}: valid options are 'md5' and 'sha1' (as joblib.hash)")
    stream, buffers = _pickle_for_hash(obj)
    return _cache_hash(b"", stream, buffers)


def _code_digest(code: types.CodeType, position_independent: bool = False) -> str:
    """A digest of what `code` does: its bytecode, constants (nested code
    too), names and flags. Not marshal's bytes, which depend on reference
    counts, so that two copies of one function (unpickled in two workers, or
    twice in one) digest alike; not its column positions either."""
    return hash(_code_parts(code, position_independent))


def _code_parts(code: types.CodeType, position_independent: bool) -> tuple:
    consts = tuple(
        _code_parts(c, position_independent) if isinstance(c, types.CodeType) else c for c in code.co_consts
    )
    return (
        code.co_code,  # (specialized instructions read back as the generic ones)
        getattr(code, "co_exceptiontable", None),  # (3.11+: where each try block is)
        consts,
        code.co_names,
        code.co_varnames,
        code.co_freevars,
        code.co_cellvars,
        code.co_argcount,
        code.co_posonlyargcount,
        code.co_kwonlyargcount,
        code.co_flags,
        code.co_name,
        # (the same lambda written on another line is the same lambda)
        None if position_independent else code.co_firstlineno,
    )


# -- the function's identity and argument binding ------------------------------------------------


_SAFE_NAME = re.compile(r"[^A-Za-z0-9_.\-]")


def _dir_name(name: str) -> str:
    """A directory name for a module or function name: the name itself where it
    is plain, else its plain characters and a digest of the whole (names that
    differ only in other characters must not share a directory, whose entries
    of another code each would clear)."""
    safe = _SAFE_NAME.sub("_", name)
    if safe == name and len(name) <= 120:  # (a script's long path: a file name is at most 255 bytes)
        return name
    return f"{safe[:80]}-{_cache_hash(b'dir-name', name.encode(), ())[:8]}"


def _lambda_place(code: types.CodeType) -> str:
    """Where a lambda starts: its line and column (3.11+; before, the line and
    a digest of its code), so that two lambdas on one line are two
    directories, and an edited lambda's older entries are cleared."""
    positions = getattr(code, "co_positions", None)
    if positions is not None:
        for line, _end, column, end_column in positions():
            if column is not None and (column, end_column) != (0, 0):  # (not RESUME's made-up place)
                return f"{line}-{column}"
    return f"{code.co_firstlineno}-{_code_digest(code, position_independent=True)[:8]}"


def _is_notebook_cell(source_file: str) -> bool:
    """Whether code was compiled from an IPython or Jupyter cell, whose
    "file" is named by a digest of the whole cell's text."""
    return source_file.startswith("<ipython-input") or (
        os.path.basename(os.path.dirname(source_file)).startswith("ipykernel_")
    )


def _notebook_path(func) -> str | None:
    """The notebook a cell's function belongs to, where the front end says:
    Jupyter's server gives the kernel the notebook's path (ipykernel's
    ``__session__``), VS Code sets ``__vsc_ipynb_file__``."""
    namespace = getattr(_unwrapped(func)[1], "__globals__", None) or {}
    for name in ("__vsc_ipynb_file__", "__session__"):
        path = namespace.get(name)
        if isinstance(path, str) and path:
            return path
    return None


def _script_module_name(source_file: str, notebook: str | None = None) -> str:
    """A script's module name, as joblib names it: ``__main__`` and the
    script's path, so that two scripts' functions of one name are two
    functions. A notebook's function is named by the notebook where it is
    known (``notebook``): its cell's name is a digest of the cell's whole
    text, which any edit of the cell changes, the function's or not.
    Elsewhere (a kernel run by nbclient or papermill, IPython in a terminal)
    by its cell, which stays one across kernel restarts and runs.
    ``__main__`` alone where there is no file (``python -c``, a REPL)."""
    if notebook is not None and _is_notebook_cell(source_file):
        # As the front end gives it, not made absolute: Jupyter Server gave a
        # path relative to its root before 2.0.7 (the full path since), which
        # the kernel's current directory (a %cd) must not change.
        return "__main__-" + "-".join(notebook.split(os.sep))
    if source_file in ("", "?") or (
        source_file.startswith("<") and not source_file.startswith("<ipython-input")
    ):
        return "__main__"
    parts = os.path.abspath(source_file).split(os.sep)
    if parts[-1].startswith("<ipython-input"):
        # IPython's <ipython-input-N-digest>: the cell's number N changes from run to run.
        pieces = parts[-1].split("-")
        parts[-1] = "-".join(pieces[:2] + pieces[3:])
    elif len(parts) > 2 and parts[-2].startswith("ipykernel_"):
        parts[-2] = "ipykernel"  # (ipykernel_<pid>: the kernel's process)
    name = "-".join(parts)
    return "__main__-" + name.removesuffix(".py")


def _func_identity(func) -> tuple[str, str]:
    if isinstance(func, functools.partial):  # (its repr names an address: not the same in two runs)
        module, qualname = _func_identity(func.func)
        return module, f"{qualname}(partial)"  # (not a name a method could have)
    module = getattr(func, "__module__", None) or "__unknown__"
    qualname = getattr(func, "__qualname__", None) or getattr(func, "__name__", None)
    if qualname is None:
        # A callable instance: by its class (its repr names an address, not the same in two runs).
        module = type(func).__module__
        qualname = f"{type(func).__qualname__}.__call__"
    return module, qualname


def _func_source(func) -> tuple[str, str]:
    """(code text for humans and hashing, where it came from)."""
    if isinstance(func, functools.partial):
        return _func_source(func.func)  # (its arguments are in each key: _call_state)
    try:
        # A wrapper (functools.wraps, a decorator class, lru_cache, numpy's
        # dispatchers) by the function it wraps, as inspect.getsource takes
        # it: the wrapper's own file is its decorator's (or it has none), and
        # a decorator class's __call__ does not change when the function does.
        inner = inspect.unwrap(func)
    except ValueError:  # (a cycle of __wrapped__)
        inner = func
    try:
        return inspect.getsource(inner), inspect.getsourcefile(inner) or "?"
    except (OSError, TypeError):
        pass
    if inner is func and not hasattr(func, "__code__") and callable(func) and not isinstance(func, type):
        try:  # a callable instance: its class's __call__
            call = type(func).__call__
            return inspect.getsource(call), inspect.getsourcefile(call) or "?"
        except (OSError, TypeError):
            pass
    code = getattr(inner, "__code__", None)
    if code is not None:
        return f"# source not available; code digest {_code_digest(code)}\n", code.co_filename
    return f"# source not available: {func!r}\n", "?"


def _instance_parameter(func) -> str | None:
    """The name of a bound method's first parameter (``self``, ``cls``, ...), which
    ``ignore`` may name as joblib allows; None for a function."""
    owner = _bound_instance(func)
    if owner is None:
        return None
    inner = _unwrapped(func)[1]
    try:
        method = inner.__func__ if owner is not inner else type(inner).__call__
        return next(iter(inspect.signature(method).parameters), "self")
    except (AttributeError, TypeError, ValueError):
        return "self"


def _star_names(func, ignore: list[str]) -> list[str]:
    """``ignore`` with joblib's ``"*"`` and ``"**"`` read as the names of ``func``'s
    ``*args`` and ``**kwargs``."""
    if "*" not in ignore and "**" not in ignore:
        return ignore
    try:
        params = inspect.signature(func).parameters.values()
    except (TypeError, ValueError):
        return ignore
    star = {p.kind: p.name for p in params if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}
    kinds = {"*": inspect.Parameter.VAR_POSITIONAL, "**": inspect.Parameter.VAR_KEYWORD}
    return [star.get(kinds[n], n) if n in kinds else n for n in ignore]


def _make_binder(func, ignore: list[str]) -> tuple[Callable[..., tuple], list[str]]:
    """A function with ``func``'s signature that returns the bound argument values
    (defaults applied, ``ignore`` left out) as a tuple, in signature order, plus
    their names. Python's own call machinery does the binding, so it is fast and
    exactly as strict as calling ``func``."""
    try:
        sig = inspect.signature(func)
    except (TypeError, ValueError):
        sig = None
    names = [] if sig is None else list(sig.parameters)
    unknown = [n for n in ignore if n not in names]
    if unknown:
        raise ValueError(
            f"ignore: {', '.join(map(repr, unknown))} not an argument of {_func_identity(func)[1]}"
            f"{'' if sig is None else sig}"
        )
    defaults_name = "_perfkit_defaults_"
    if sig is None or defaults_name in names or not all(n.isidentifier() for n in names):

        def generic(*args, **kwargs):
            if sig is None:
                return (args, kwargs)
            bound = sig.bind(*args, **kwargs)
            bound.apply_defaults()
            return tuple(v for k, v in bound.arguments.items() if k not in ignore)

        return generic, (["args", "kwargs"] if sig is None else [n for n in names if n not in ignore])

    defaults = []
    params_src = []
    kinds_seen = set()
    P = inspect.Parameter
    for p in sig.parameters.values():
        if (
            p.kind is P.KEYWORD_ONLY
            and P.VAR_POSITIONAL not in kinds_seen
            and P.KEYWORD_ONLY not in kinds_seen
        ):
            params_src.append("*")
        if p.kind is not P.POSITIONAL_ONLY and P.POSITIONAL_ONLY in kinds_seen and "/" not in params_src:
            params_src.append("/")
        kinds_seen.add(p.kind)
        if p.kind is P.VAR_POSITIONAL:
            params_src.append("*" + p.name)
        elif p.kind is P.VAR_KEYWORD:
            params_src.append("**" + p.name)
        elif p.default is not P.empty:
            params_src.append(f"{p.name}={defaults_name}[{len(defaults)}]")
            defaults.append(p.default)
        else:
            params_src.append(p.name)
    if P.POSITIONAL_ONLY in kinds_seen and "/" not in params_src:
        params_src.append("/")
    kept = [n for n in names if n not in ignore]
    body = "(" + "".join(f"{n}, " for n in kept) + ")"
    src = f"def _perfkit_bind({', '.join(params_src)}):\n    return {body}\n"
    namespace: dict[str, Any] = {defaults_name: tuple(defaults)}
    exec(src, namespace)  # noqa: S102 - source built from validated identifiers only
    binder = namespace["_perfkit_bind"]
    binder.__name__ = getattr(func, "__name__", binder.__name__)
    binder.__qualname__ = getattr(func, "__qualname__", binder.__qualname__)
    return binder, kept


# -- results: pickling for storage, loading --------------------------------------------------------


def _parse_compress(compress) -> int:
    """zlib level (0 = off) from joblib's compress values: bool, 0-9, ('zlib', level)."""
    if isinstance(compress, bool):
        return 3 if compress else 0
    if isinstance(compress, int) and 0 <= compress <= 9:
        return compress
    if isinstance(compress, tuple) and len(compress) == 2:
        method, level = compress
        if method in ("zlib", "gzip") and isinstance(level, int) and 0 <= level <= 9:
            return level
        raise ValueError(
            f"compress={compress!r}: perfkit.Memory compresses with zlib only: use ('zlib', 0-9)"
        )
    raise ValueError(f"compress={compress!r}: use False, True, a level 0-9 or ('zlib', level)")


def _parse_bytes(limit) -> int | None:
    if limit is None:
        return None
    if isinstance(limit, int) and not isinstance(limit, bool):
        if limit < 0:
            raise ValueError(f"bytes_limit={limit!r}: must not be negative")
        return limit
    if isinstance(limit, str):
        m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMG]?)B?\s*", limit.upper())
        if m:
            return int(float(m.group(1)) * {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3}[m.group(2)])
    raise ValueError(f"bytes_limit={limit!r}: use a number of bytes or a string such as '10M' or '2G'")


_arg_repr = reprlib.Repr()
_arg_repr.maxstring = 120
_arg_repr.maxother = 120
_arg_repr.maxlist = _arg_repr.maxtuple = _arg_repr.maxdict = _arg_repr.maxset = 10


_PLAIN_REPR = (int, float, bool, type(None), complex)
_json_str = json.encoder.encode_basestring_ascii


def _metadata_json(m: dict) -> str:
    """The metadata dict of ``_store`` as one line of JSON, written out directly:
    json.dumps builds an encoder per call, which costs a miss several µs."""
    args = ", ".join(f"{_json_str(k)}: {_json_str(v)}" for k, v in m["input_args"].items())
    return (
        f'{{"duration": {float(m["duration"])!r}, "time": {float(m["time"])!r}, '
        f'"function": {_json_str(m["function"])}, "key": {_json_str(m["key"])}, '
        f'"input_args": {{{args}}}, "output_bytes": {int(m["output_bytes"])}, '
        f'"compressed": {"true" if m["compressed"] else "false"}}}'
    )


def _short_repr(v) -> str:
    t = type(v)
    if t in _PLAIN_REPR or (t is str and len(v) <= _arg_repr.maxstring):
        return repr(v)  # the common case, without reprlib's dispatch
    try:
        return _arg_repr.repr(v)
    except Exception as exc:  # noqa: BLE001 - a broken __repr__ must not stop caching
        return f"<unrepresentable {type(v).__qualname__}: {type(exc).__name__}>"


def _alloc_for_large_entry(n: int):
    """Destination of a large entry's read: numpy's allocator maps big blocks with huge
    pages (far fewer page faults than a bytearray), and arrays unpickled from it are
    writable views of it, as joblib's are."""
    try:
        import numpy
    except ImportError:
        return bytearray(n)
    return numpy.empty(n, dtype=numpy.uint8)


def _dumps_result(out, buffer_callback) -> bytes:
    """The pickle stream of a result to store (protocol 5, numpy's buffers out
    of band). A strided numpy view in it (a few columns, every other row) is
    written as its contiguous copy, and an np.memmap as an array, out of band,
    as joblib writes every array: numpy pickles either into the stream, where
    mmap_mode cannot map it (it came back a writable copy in memory) and a hit
    copies it out of the stream."""
    np = sys.modules.get("numpy")
    if np is None or type(out) in _PLAIN_REPR or type(out) is str or type(out) is bytes:
        return pickle.dumps(out, protocol=5, buffer_callback=buffer_callback)
    f = io.BytesIO()
    pickler = pickle.Pickler(f, protocol=5, buffer_callback=buffer_callback)
    # By exact type, as copyreg's table (a copy: registrations made since count too).
    table = copyreg.dispatch_table.copy()
    table[np.ndarray] = table[np.memmap] = _reduce_array
    pickler.dispatch_table = table
    pickler.dump(out)
    return f.getvalue()


def _reduce_array(a):
    np = sys.modules["numpy"]
    if not a.dtype.hasobject:
        if not (a.flags.c_contiguous or a.flags.f_contiguous or _is_dense(a)):
            a = np.ascontiguousarray(a)
        elif type(a) is not np.ndarray:
            # An np.memmap (np.load(path, mmap_mode="r"), another cached function's
            # mapped result): numpy pickles a subclass in band, as a memmap of no file.
            a = a.view(np.ndarray)
    return a.__reduce_ex__(5)


def _is_dense(a) -> bool:
    """Whether ``a`` is a dense array with its axes in another order (``x.transpose(2, 0, 1)``),
    which numpy (from 2.1) pickles out of band as it is, its memory order kept."""
    strides = a.strides
    return a.transpose(sorted(range(a.ndim), key=lambda i: -abs(strides[i]))).flags.c_contiguous


def _load_full(entry: str, key: str | None):
    """Result of a verified entry; _MISSING if there is none; raises _Corrupt
    (also when its metadata does not name ``key``: another call's entry).
    The entry is read into memory this process owns (never mapped: a result
    must not change, nor fault, when something later rewrites or truncates
    the file in place, as joblib's results do not)."""
    r = _cache_load(entry, _alloc_for_large_entry, key)
    if type(r) is bytes:  # the pickle stream of a small entry without buffers: most hits
        return _loads(r) if r[0] == _PICKLE_PROTO5_FIRST_BYTE else _loads(zlib.decompress(r))
    if r is None:
        return _MISSING
    if type(r) is str:
        raise _Corrupt(r)
    data, s0, slen, bufs = r
    mv = memoryview(data)  # a bytearray or a 1-D uint8 array: format "B" either way
    if mv[s0] != _PICKLE_PROTO5_FIRST_BYTE:
        return _loads(zlib.decompress(mv[s0 : s0 + slen]))
    if bufs:
        return _loads(mv[s0 : s0 + slen], buffers=_own_buffers(mv, bufs))
    return _loads(mv[s0 : s0 + slen])


def _own_buffers(mv: memoryview, bufs) -> list:
    """The out-of-band buffers of an entry read into ``mv``, for unpickling.
    A buffer that is at least half of the entry is a view of it (no copy:
    the array it becomes keeps at most as much again alive); any other is
    copied into memory of its own, as joblib reads each array, so that an
    array kept from a result (``f(x)["metrics"]``) does not keep the whole
    entry, its large arrays included, alive."""
    whole = mv.nbytes
    return [mv[o : o + n] if 2 * n >= whole else _copied(mv[o : o + n]) for o, n in bufs]


def _copied(view: memoryview):
    if view.nbytes < _COPY_WITH_NUMPY_MIN:
        return bytearray(view)
    out = _alloc_for_large_entry(view.nbytes)  # (huge pages: see there)
    memoryview(out)[:] = view
    return out


_COPY_WITH_NUMPY_MIN = 1 << 20


def _load_mmap(entry: str, mmap_mode: str, key: str | None):
    access = _MMAP_ACCESS[mmap_mode]
    # Mapped writable ("r+", "w+"), the buffers may be changed in place, as in
    # joblib: the entry then stops checking their checksum (its head still is).
    r = _cache_load_head(entry, True, access == mmap.ACCESS_WRITE, True, key)
    if r is None:
        return _MISSING
    if type(r) is str:
        raise _Corrupt(r)
    stream, bufs, _metadata, fd = r
    try:
        if stream[:1] != b"\x80":
            return _loads(zlib.decompress(stream))
        if not bufs:
            return _loads(stream)
        # The file whose head was read: by name, it may be a newer version by now.
        mapped = _EntryMap(fd, 0, access=access)
    finally:
        if fd is not None:
            os.close(fd)
    return _MappedUnpickler(stream, mapped, bufs, entry, mmap_mode).load()


# numpy's reconstructor of an array pickled out of band (protocol 5), by numpy version.
_NUMPY_FROMBUFFER = frozenset((("numpy._core.numeric", "_frombuffer"), ("numpy.core.numeric", "_frombuffer")))
# np.memmap's mode for a Memory's mmap_mode ("w+" maps the entry as "r+" does: it is not created anew).
_MEMMAP_MODE = {"r": "r", "r+": "r+", "w+": "r+", "c": "c"}


class _EntryMap(mmap.mmap):
    """The map of a whole entry file, from its first byte: what
    _pool_common._reduce_memmap needs to place an array of it in the file
    (numpy's own memmaps map from their offset, rounded down)."""

    perfkit_map_start = 0


class _MappedUnpickler(pickle.Unpickler):
    """Unpickles a result whose buffers are in ``mapped``, the map of an
    entry file: its numpy arrays come back as np.memmap objects, as joblib
    returns them (``filename``, ``mode``, ``offset``, ``flush()``), each on
    the map itself (its ``base``), so that joblib's reducers take the array as
    its own backing memmap, with its own order and offset (helper-56: as a
    view of one 1-D memmap of the file, a Fortran-ordered array reached a
    joblib worker transposed). The file is the one whose head was read
    (mapped by its descriptor), not whatever its name may meanwhile name."""

    def __init__(self, stream: bytes, mapped: mmap.mmap, bufs, entry: str, mmap_mode: str) -> None:
        mv = memoryview(mapped)
        buffers = [mv[o : o + n] for o, n in bufs]
        super().__init__(io.BytesIO(stream), buffers=buffers)
        # The buffers handed out, by identity (held by the list while loading): their offsets.
        self._offsets = {id(b): o for b, (o, _n) in zip(buffers, bufs)}
        self._mapped = mapped
        self._entry = entry
        self._mode = _MEMMAP_MODE[mmap_mode]

    def find_class(self, module, name):
        if (module, name) in _NUMPY_FROMBUFFER:
            return self._memmap_from_buffer
        return super().find_class(module, name)

    def _memmap_from_buffer(self, buf, dtype, shape, order, axis_order=None):
        """numpy's ``_frombuffer`` (same arguments), as an np.memmap on the file's map."""
        np = sys.modules["numpy"]  # (imported by the stream's dtype already)
        offset = self._offsets.get(id(buf))
        if offset is None:  # a stored read-only array: pickle wrapped the buffer handed out
            offset = self._offset_in_file(np, buf)
        if offset is None:  # (not in this file: never expected) numpy's own way
            array = np.frombuffer(buf, dtype=dtype)
            if order == "K" and axis_order is not None:
                return array.reshape(shape, order="C").transpose(axis_order)
            return array.reshape(shape, order=order)
        dtype = np.dtype(dtype)
        if math.prod(shape) * dtype.itemsize != memoryview(buf).nbytes:
            raise ValueError(
                f"a buffer of {memoryview(buf).nbytes} bytes does not hold a {dtype} array of shape {shape}"
            )
        transposed = order == "K" and axis_order is not None
        mapped = self._mapped
        array = np.ndarray.__new__(
            np.memmap, shape, dtype=dtype, buffer=mapped, offset=offset, order="C" if transposed else order
        )
        array._mmap, array.filename, array.offset, array.mode = mapped, self._entry, offset, self._mode
        return array.transpose(axis_order) if transposed else array

    def _offset_in_file(self, np, buf) -> int | None:
        """Where ``buf``, a view of the mapped file, starts in it (None if it is not in it)."""
        data = memoryview(buf)
        if not data.nbytes:
            return 0
        mapped = self._mapped
        offset = (
            np.frombuffer(data, dtype=np.uint8).__array_interface__["data"][0]
            - np.frombuffer(mapped, dtype=np.uint8).__array_interface__["data"][0]
        )
        return offset if 0 <= offset <= len(mapped) - data.nbytes else None


def _verified_metadata(entry: str, key: str | None) -> dict | None:
    """The metadata of the entry at ``entry``, once the entry's head (metadata
    line, header, table and pickle stream) has passed its checksum and its
    metadata named ``key``; every read is bounded by the file's length and the
    header's sizes. None if there is no entry; raises _Corrupt (or OSError)."""
    r = _cache_load_head(entry, False, False, False, key)  # a look is not a use
    if r is None:
        return None
    if type(r) is str:
        raise _Corrupt(r)
    try:
        metadata = json.loads(r[2])
    except ValueError as exc:
        raise _Corrupt(f"its metadata is not JSON ({exc})") from None
    if type(metadata) is not dict:
        raise _Corrupt("its metadata is not a JSON object")
    return metadata


class _Corrupt(Exception):
    pass


_MISSING = object()


def _warn(message: str) -> None:
    """A CacheWarning pointing at the user's line: the first frame outside
    this module, however deep in it the problem was found."""
    level, frame = 2, sys._getframe(1)
    while frame is not None and frame.f_code.co_filename == __file__:
        frame, level = frame.f_back, level + 1
    warnings.warn(message, CacheWarning, stacklevel=level)


def _failure_reason(errno: int | None, message: str) -> str:
    """Why a store failed, the same words for every entry it failed for (not the
    message naming each entry's temporary file): Python's warning filter then shows
    a full or read-only location once, not at every miss, as it shows joblib's."""
    return f"[Errno {errno}] {os.strerror(errno)}" if errno else message


def _warn_failed_writes(failures) -> None:
    for name, errno, error in failures:
        _warn(
            f"perfkit.Memory: could not store a result of {name}() in the background "
            f"({_failure_reason(errno, error)}); it was returned but not cached"
        )


def _flush_writes() -> None:
    """Waits until results stored in the background are on disk (at exit, so none is lost)."""
    failures = _native.cache_flush()
    if failures:
        _warn_failed_writes(failures)


def _is_pool_worker() -> bool:
    # Asked at store time: a worker (`python -m perfkit._worker`) imports this
    # module only when a task uses Memory, after its main() started.
    worker = sys.modules.get("perfkit._worker")
    return worker is not None and getattr(worker, "RUNNING", False)


def _may_write_behind() -> bool:
    """Whether this process may leave writes to a background thread: not in a forked or
    multiprocessing child, which may end by os._exit or a SIGTERM (Pool.terminate)
    without running atexit and would lose them, nor in a perfkit.Parallel worker."""
    if perfkit._forked_child or _is_pool_worker():  # (the fork hook is the package's)
        # perfkit.Parallel's workers share a location with their siblings, which should see
        # an entry as soon as its task is done; and a pool may kill its workers (timeout, Ctrl-C).
        return False
    mp = sys.modules.get("multiprocessing")
    return mp is None or mp.parent_process() is None


# -- the cached function ---------------------------------------------------------------------------


class MemorizedFunc(Generic[P, R]):
    """A function whose results are cached on disk (``Memory.cache``'s result; joblib's MemorizedFunc)."""

    # Set by functools.update_wrapper, as on joblib's: declared for type checkers.
    __wrapped__: Callable[P, R]
    __name__: str
    __qualname__: str

    def __init__(
        self,
        func: Callable[P, R],
        memory: Memory,
        ignore: list[str] | None = None,
        verbose: int | None = None,
        mmap_mode: str | None | bool = False,
        cache_validation_callback: Callable[[dict], bool] | None = None,
    ) -> None:
        self.func = func
        self.memory = memory
        self.ignore = list(ignore or [])
        self._verbose = memory._verbose if verbose is None else verbose
        self.mmap_mode = memory.mmap_mode if mmap_mode is False else _check_mmap_mode(mmap_mode)
        self.cache_validation_callback = cache_validation_callback
        self._compress = memory._compress_level
        self._durable = memory.durable
        functools.update_wrapper(self, func)
        # A method's instance and a partial's positional arguments are part of
        # each key, read at each call (as joblib reads a method's instance:
        # either may change between calls); ignore=["self"] leaves the instance
        # out, as in joblib.
        instance_name = _instance_parameter(func)
        self._leave_out_self = instance_name is not None and instance_name in self.ignore
        self._bound_ignore = [
            n for n in _star_names(func, self.ignore) if not self._leave_out_self or n != instance_name
        ]
        self._bind_to_signature()
        self._per_call = _call_state(func, self._leave_out_self) is not None
        self._take_identity(*_func_source(func))

    def _bind_to_signature(self) -> None:
        """(Re)makes the binder from the function's signature as it is now:
        a partial's keywords are its signature's defaults, and they may be
        changed after caching (``p.keywords["y"] = 2``)."""
        self._bind, self._arg_names = _make_binder(self.func, self._bound_ignore)
        partials = _unwrapped(self.func)[0]
        # The keywords bound into the binder: (partial, ((name, value), ...)) each.
        self._bound_keywords = tuple((p, tuple(p.keywords.items())) for p in partials)
        # The function whose defaults the binder holds, and those defaults:
        # they may be reassigned after caching (``f.__defaults__ = ...``, a
        # keyword-only one changed in ``__kwdefaults__``), as joblib, which
        # binds each call to the signature as it is then, sees.
        holder = self._defaults_holder = _defaults_holder(self.func)
        self._bound_defaults = None if holder is None else holder.__defaults__
        self._bound_kwdefaults = None if holder is None else holder.__kwdefaults__
        self._bound_kwdefault_items = tuple((self._bound_kwdefaults or {}).items())

    def _kwdefaults_changed(self) -> bool:
        """Whether a keyword-only default was changed in place (``__kwdefaults__``
        is a dict), compared by identity: a default changed in place is hashed anyway."""
        kwdefaults = self._bound_kwdefaults
        items = self._bound_kwdefault_items
        return len(kwdefaults) != len(items) or any(
            kwdefaults.get(name, _MISSING) is not value for name, value in items
        )

    def _signature_changed(self) -> bool:
        """Whether a partial's keywords or the function's defaults are not those
        the binder was made with (reassigned since: read at each call, as the
        call itself reads them; three identity checks when nothing changed)."""
        if self._bound_keywords and self._keywords_changed():
            return True
        holder = self._defaults_holder
        return holder is not None and (
            holder.__defaults__ is not self._bound_defaults
            or holder.__kwdefaults__ is not self._bound_kwdefaults
            or (self._bound_kwdefaults is not None and self._kwdefaults_changed())
        )

    def _keywords_changed(self) -> bool:
        """Whether a partial's keywords are not those bound into the binder
        (compared by identity: an argument changed in place is hashed anyway)."""
        for p, items in self._bound_keywords:
            keywords = p.keywords
            if len(keywords) != len(items):
                return True
            for name, value in items:
                if keywords.get(name, _MISSING) is not value:
                    return True
        return False

    def _take_identity(self, source: str, source_file: str, module: str | None = None) -> None:
        """Where its entries go: by the function's module, name and source text
        (which an unpickled copy takes from the original, as it may have none,
        nor the notebook's name in its globals)."""
        memory = self.memory
        own_module, qualname = _func_identity(self.func)
        if module is None:
            module = own_module
            if module in ("__main__", "__mp_main__"):
                module = _script_module_name(source_file, _notebook_path(self.func))
        self._module = module
        # A notebook's cells may each define a function of one name (a helper
        # redefined further down): each body keeps its entries, rather than
        # running one cell's after another's clearing them in turn.
        self._keeps_other_code = _is_notebook_cell(source_file)
        self._name = f"{module}.{qualname}"
        self._source = source
        self._source_file = source_file
        code = f"{module}\0{qualname}\0{source}"
        func_name = qualname
        inner = _unwrapped(self.func)[1]
        if qualname.rpartition(".")[2] == "<lambda>" and hasattr(inner, "__code__"):
            # Lambdas share one name (and lambdas on one line their source):
            # each is its own function, by where it starts and what it does.
            code += f"\0{_code_digest(inner.__code__, position_independent=True)}"
            func_name = f"{qualname}-{_lambda_place(inner.__code__)}"
        code_hash = _cache_hash(b"func-code", code.encode(), ())
        # What it holds when it is cached, in its keys (not its directory: a
        # directory of another code is an older version of it, cleared):
        # two closures of one maker, two partials of one function, share
        # name and source, not results.
        self._prefix = f"{self._name}\0{code_hash}\0{_held_digest(self.func)}".encode()
        self.func_dir = os.path.join(memory._root, _dir_name(module), _dir_name(func_name))
        self._code_dir = os.path.join(self.func_dir, code_hash[:16])
        self._entry_prefix = self._code_dir + os.sep
        self._code_checked = False
        self._code_written = False

    # joblib's attribute names
    @property
    def func_id(self) -> str:
        """The function's identifier in the cache: its module and qualified name (joblib's ``func_id``)."""
        return self._name

    def __repr__(self) -> str:
        return f"MemorizedFunc(func={self.func!r}, location={self.memory.location!r})"

    def __reduce__(self):
        if self.__module__ != "__main__" and self._found_by_name():
            return self.__qualname__  # a module-level decorated function: pickle it by name
        # By value (cloudpickle takes a script's function so, and a function
        # that calls itself through this object, memoized): a script's name
        # means nothing in a Parallel, loky or dask worker, whose __main__ is
        # not the script. multiprocessing's pickler takes the name (below).
        return (
            _rebuild_memorized,
            (
                self.func,
                self.memory,
                self.ignore,
                self._verbose,
                self.mmap_mode,
                self.cache_validation_callback,
                (self._source, self._source_file, self._module),
            ),
        )

    def _found_by_name(self) -> bool:
        module = sys.modules.get(getattr(self, "__module__", ""), None)
        name = getattr(self, "__qualname__", None)  # (a partial has none)
        return module is not None and name is not None and getattr(module, name, None) is self

    # -- keys and entries

    def _entry_path(self, key: str) -> str:
        # Spread over 256 subdirectories by the key's first two digits: a lookup waits for
        # the directory lock while a file is created in its directory (the background
        # writer's, or another process's), so misses of different keys must not share one.
        return f"{self._entry_prefix}{key[:2]}{os.sep}{key}.pkc"

    def _key(self, args, kwargs) -> str | None:
        """The argument hash, or None (with a warning) when the arguments cannot be hashed."""
        if self._signature_changed():
            self._bind_to_signature()
        try:
            values = self._bind(*args, **kwargs)
        except TypeError as exc:
            # The call does not fit the signature: the caller calls the function uncached,
            # which raises the function's own error; or, where only a wrapper's own
            # signature takes it (functools.wraps shows the wrapped one), runs.
            if _own_signature_takes(self.func, args, kwargs):
                _warn(
                    f"perfkit.Memory: {self._name}() was called with arguments that only its "
                    f"wrapper takes, not the function it wraps ({exc}); calling it without the cache"
                )
            return None
        if self._per_call:
            values = (values, _call_state(self.func, self._leave_out_self))
        key = _cache_key_of_scalars(self._prefix, values)
        if key is not None:  # plain values only: hashed without pickling
            return key
        try:
            stream, buffers = _pickle_for_hash(values)
        except Exception as exc:  # noqa: BLE001 - pickling raises anything a __reduce__ raises
            hint = (
                " (a method's instance is part of its key: ignore=['self'] leaves it out)"
                if _bound_instance(self.func) is not None and not self._leave_out_self
                else ""
            )
            _warn(
                f"perfkit.Memory: cannot hash the arguments of {self._name}() "
                f"({type(exc).__name__}: {exc}); calling it without the cache{hint}"
            )
            return None
        return _cache_hash(self._prefix, stream, buffers)

    def _check_code(self) -> None:
        """First use in this process: drop entries of older versions of the function's code
        (as joblib does when a function changes) and leave its code for people to read."""
        self._code_checked = True
        if self._keeps_other_code:
            return
        try:
            with os.scandir(self.func_dir) as it:
                stale = [
                    e.path
                    for e in it
                    if e.is_dir() and not e.name.startswith(".") and e.path != self._code_dir
                ]
        except OSError:
            stale = []
        for path in stale:
            if self._verbose > 0:
                print(f"[Memory] {self._name} changed: clearing the entries of its previous code ({path})")
            try:
                _native.cache_remove(path)
            except OSError:
                pass

    def _write_func_code(self) -> None:
        self._code_written = True
        path = os.path.join(self._code_dir, "func_code.py")
        if os.path.exists(path):
            return
        tmp = f"{path}.{os.getpid()}.tmp"
        try:
            with open(tmp, "w", encoding="utf-8") as f:
                f.write(f"# {self._name}, first line in {self._source_file}\n{self._source}")
            os.replace(tmp, path)
        except OSError:
            try:
                os.unlink(tmp)
            except OSError:
                pass

    def _load(self, entry: str, key: str, mmap_mode):
        """The cached result of the call ``key`` at ``entry``, or _MISSING; a damaged
        entry, or another call's, is warned about and removed."""
        if self.cache_validation_callback is not None and not self._still_valid(entry, key):
            return _MISSING
        try:
            if mmap_mode is None:
                return _load_full(entry, key)
            return _load_mmap(entry, mmap_mode, key)
        except _Corrupt as exc:
            problem = f"is corrupted ({exc})"
        except OSError as exc:
            self._unreadable(entry, exc)
            return _MISSING
        except Exception as exc:  # noqa: BLE001 - unpickling failed: a class moved, a module is gone, ...
            problem = f"could not be unpickled ({type(exc).__name__}: {exc})"
        self._discard(entry, problem)
        return _MISSING

    def _still_valid(self, entry: str, key: str) -> bool:
        """Whether the cache_validation_callback accepts the entry's metadata. The
        callback sees only metadata that passed its checksum, read within the
        bounds the entry's header gives: a damaged entry is warned about,
        removed and recomputed (False), never handed to the callback. What the
        callback raises on intact metadata is the caller's, as in joblib."""
        try:
            metadata = _verified_metadata(entry, key)
        except _Corrupt as exc:
            self._discard(entry, f"is corrupted ({exc})")
            return False
        except OSError as exc:
            self._unreadable(entry, exc)
            return False
        return metadata is not None and bool(self.cache_validation_callback(metadata))

    def _unreadable(self, entry: str, exc: OSError) -> None:
        """Warns that the entry at ``entry`` could not be read (left in place: the
        location may be unreadable for now, the entry intact)."""
        _warn(
            f"perfkit.Memory: the cache entry of {self._name}() at {entry} could not be read ({exc}); recomputing"
        )

    def _discard(self, entry: str, problem: str) -> None:
        """Warns that the entry at ``entry`` is damaged (``problem``) and removes it."""
        _warn(f"perfkit.Memory: the cache entry of {self._name}() at {entry} {problem}; recomputing")
        try:
            _native.cache_remove(entry)
        except OSError:
            pass

    def _compute_and_store(self, entry: str | None, key: str | None, args, kwargs):
        """Runs the function and stores its result; returns (result, metadata, stored)."""
        t0 = self._before_call()
        return self._after_call(entry, key, args, kwargs, self.func(*args, **kwargs), t0)

    def _before_call(self) -> float:
        if self._verbose > 0:
            print(f"[Memory] Calling {self._name}(...)")
        return time.time()

    def _after_call(self, entry, key, args, kwargs, out, t0: float):
        duration = time.time() - t0
        metadata = {"duration": duration, "time": t0}
        if entry is None:
            return out, metadata, False
        stored = self._store(entry, key, out, args, kwargs, metadata)
        if self._verbose > 0:
            print(f"[Memory] {self._name}: {duration:.3f}s{'' if stored else ' (not cached)'}")
        return out, metadata, stored

    def _store(self, entry, key, out, args, kwargs, metadata) -> bool:
        """Stores ``out`` (replacing any entry there); False, with a warning, when it cannot."""
        buffers: list = []
        try:
            if self._compress:
                stream = zlib.compress(pickle.dumps(out, protocol=5), self._compress)
            else:
                stream = _dumps_result(out, buffers.append)
        except Exception as exc:  # noqa: BLE001 - pickling raises anything a __reduce__ raises
            _warn(
                f"perfkit.Memory: the result of {self._name}() cannot be pickled "
                f"({type(exc).__name__}: {exc}); it is returned but not cached"
            )
            return False
        try:
            values = self._bind(*args, **kwargs)
            input_args = {n: _short_repr(v) for n, v in zip(self._arg_names, values)}
        except Exception:  # noqa: BLE001 - metadata is for people: never fail the call over it
            input_args = {}
        size = len(stream) + sum(memoryview(b).nbytes for b in buffers)
        metadata.update(
            function=self._name,
            key=key,
            input_args=input_args,
            output_bytes=size,
            compressed=bool(self._compress),
        )
        if not self._code_checked:
            self._check_code()
        meta_json = _metadata_json(metadata)
        flags = _FLAG_COMPRESSED if self._compress else 0
        try:
            try:
                if self._code_written and not self._durable and _may_write_behind():
                    # A small entry is written by a background thread (read from memory by this
                    # process until then); the first store of a function is written at once, so
                    # an unwritable location is reported by the call that met it.
                    failures = _cache_store_later(
                        entry, flags, meta_json, stream, buffers, self._name, self.memory._location
                    )
                    if failures:
                        _warn_failed_writes(failures)
                else:
                    _native.cache_store(entry, flags, meta_json, stream, buffers, self._durable)
            except BufferError:  # an exotic out-of-band buffer: store it in-band instead
                _native.cache_store(entry, 0, meta_json, pickle.dumps(out, protocol=5), (), self._durable)
            if not self._code_written:
                self._write_func_code()
        except OSError as exc:
            _warn(
                f"perfkit.Memory: could not store the result of {self._name}() in {self.memory.location} "
                f"({_failure_reason(exc.errno, str(exc))}); it is returned but not cached"
            )
            return False
        return True

    # -- joblib's API

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        key = self._key(args, kwargs)
        if key is None:
            return self.func(*args, **kwargs)
        entry = self._entry_path(key)
        out = self._load(entry, key, self.mmap_mode)
        if out is not _MISSING:
            return out
        return self._as_loaded(entry, key, *self._compute_and_store(entry, key, args, kwargs))

    def _as_loaded(self, entry: str, key: str, out, _metadata, stored: bool):
        if stored and self.mmap_mode is not None:
            # As joblib: the first call returns the memory-mapped result too, like later ones.
            again = self._load(entry, key, self.mmap_mode)
            if again is not _MISSING:
                return again
        return out

    def call(self, *args: P.args, **kwargs: P.kwargs) -> tuple[R, dict[str, Any]]:
        """Runs the function (even if cached), stores the result; returns (result, metadata)."""
        key = self._key(args, kwargs)
        if key is None:
            return self._compute_and_store(None, None, args, kwargs)[:2]
        entry = self._entry_path(key)
        out, metadata, stored = self._compute_and_store(entry, key, args, kwargs)
        # Under mmap_mode, the result as the cache gives it back (memmaps), as joblib's call returns it.
        return self._as_loaded(entry, key, out, metadata, stored), metadata

    def check_call_in_cache(self, *args: P.args, **kwargs: P.kwargs) -> bool:
        """Whether this call's result is in the cache, its entry intact and,
        with a ``cache_validation_callback``, still valid."""
        key = self._key(args, kwargs)
        return key is not None and self._is_cached(self._entry_path(key), key)

    def _is_cached(self, entry: str, key: str) -> bool:
        try:
            metadata = _verified_metadata(entry, key)
        except (OSError, _Corrupt):
            return False
        if metadata is None:
            return False
        if self.cache_validation_callback is None:
            return True
        return bool(self.cache_validation_callback(metadata))

    def call_and_shelve(
        self, *args: P.args, **kwargs: P.kwargs
    ) -> MemorizedResult[R] | NotMemorizedResult[R]:
        """Computes the result if needed and returns a reference to it in the cache
        (a MemorizedResult whose ``get()`` loads it)."""
        key = self._key(args, kwargs)
        if key is None:
            return NotMemorizedResult(self.func(*args, **kwargs))
        entry = self._entry_path(key)
        if self._is_cached(entry, key):
            return self._shelved(entry, key)
        return self._shelved(entry, key, *self._compute_and_store(entry, key, args, kwargs))

    def _shelved(self, entry: str, key: str, out=None, _metadata=None, stored: bool = True):
        if not stored:
            return NotMemorizedResult(out)
        _native.cache_wait(entry)  # the reference may be used by another process at once
        return MemorizedResult(self.memory.location, self._name, key, entry, self.mmap_mode)

    def clear(self, warn: bool = True) -> None:
        """Removes every cached result of this function."""
        if self._verbose > 0 and warn:
            print(f"[Memory] Clearing the cache of {self._name}")
        try:
            _native.cache_remove(self.func_dir)
        except OSError as exc:
            _warn(f"perfkit.Memory: could not clear the cache of {self._name}() ({exc})")
            return
        # The function's code stays for people to read, as joblib's clear()
        # leaves it (this process writes it once: it was gone for good).
        try:
            os.makedirs(self._code_dir, exist_ok=True)
        except OSError:
            self._code_written = False  # (with the next stored result, then)
            return
        self._write_func_code()


class AsyncMemorizedFunc(MemorizedFunc[P, "Coroutine[Any, Any, T]"]):
    """``Memory.cache`` of an ``async def`` function (joblib's AsyncMemorizedFunc):
    calling it returns a coroutine, and what is cached is the awaited result."""

    # (its methods are the coroutines of MemorizedFunc's: not overrides to a type checker)
    async def __call__(self, *args: P.args, **kwargs: P.kwargs) -> T:  # type: ignore[override]
        key = self._key(args, kwargs)
        if key is None:
            return await self.func(*args, **kwargs)
        entry = self._entry_path(key)
        out = self._load(entry, key, self.mmap_mode)
        if out is not _MISSING:
            return out
        return self._as_loaded(entry, key, *await self._compute_and_store_async(entry, key, args, kwargs))

    async def _compute_and_store_async(self, entry, key, args, kwargs):
        t0 = self._before_call()
        return self._after_call(entry, key, args, kwargs, await self.func(*args, **kwargs), t0)

    async def call(self, *args: P.args, **kwargs: P.kwargs) -> tuple[T, dict[str, Any]]:  # type: ignore[override]
        key = self._key(args, kwargs)
        if key is None:
            return (await self._compute_and_store_async(None, None, args, kwargs))[:2]
        entry = self._entry_path(key)
        out, metadata, stored = await self._compute_and_store_async(entry, key, args, kwargs)
        return self._as_loaded(entry, key, out, metadata, stored), metadata

    async def call_and_shelve(  # type: ignore[override]
        self, *args: P.args, **kwargs: P.kwargs
    ) -> MemorizedResult[T] | NotMemorizedResult[T]:
        key = self._key(args, kwargs)
        if key is None:
            return NotMemorizedResult(await self.func(*args, **kwargs))
        entry = self._entry_path(key)
        if self._is_cached(entry, key):
            return self._shelved(entry, key)
        return self._shelved(entry, key, *await self._compute_and_store_async(entry, key, args, kwargs))


def _memorized_class(func) -> type:
    return AsyncMemorizedFunc if inspect.iscoroutinefunction(func) else MemorizedFunc


def expires_after(
    days: float = 0,
    seconds: float = 0,
    microseconds: float = 0,
    milliseconds: float = 0,
    minutes: float = 0,
    hours: float = 0,
    weeks: float = 0,
) -> Callable[[dict[str, Any]], bool]:
    """A ``cache_validation_callback`` that recomputes results older than the
    given time (joblib's ``expires_after``: the arguments are timedelta's)."""
    limit = datetime.timedelta(
        days=days,
        seconds=seconds,
        microseconds=microseconds,
        milliseconds=milliseconds,
        minutes=minutes,
        hours=hours,
        weeks=weeks,
    ).total_seconds()

    def cache_validation_callback(metadata: dict) -> bool:
        return time.time() - metadata["time"] < limit

    return cache_validation_callback


def _call_state(func, leave_out_self=False):
    """What a callable holds that is read at each call for its key: a
    partial's positional arguments (its keywords are defaults of the
    signature, bound with the call's: MemorizedFunc._key rebinds when they
    change), a method's instance; None for none."""
    partials, func = _unwrapped(func)
    state = [p.args for p in partials]
    owner = None if leave_out_self else _bound_instance(func)
    if owner is not None:
        state.append(owner)
    return tuple(state) if state else None


def _held_digest(func) -> str:
    """A digest of what a closure holds besides its code, when it is cached:
    its plain values (numbers, strings, tuples of them: its maker's
    parameters). Other captured objects are left out, as joblib leaves out
    every closure: a list a closure appends to would make each cached copy
    of it a stranger to the last. "" for none."""
    held = []
    for cell in getattr(_unwrapped(func)[1], "__closure__", None) or ():
        try:
            value = cell.cell_contents
        except ValueError:  # (an empty cell: a name its maker had not bound yet)
            continue
        if _plain(value):
            held.append(value)
    if not held:
        return ""
    try:
        return hash(held)
    except Exception:  # noqa: BLE001 - pickling raises anything a __reduce__ raises
        return ""


def _plain(value) -> bool:
    if isinstance(value, (int, float, complex, str, bytes, type(None))):
        return True
    return isinstance(value, (tuple, frozenset)) and all(_plain(v) for v in value)


def _own_signature_takes(func, args, kwargs) -> bool:
    """Whether ``func``'s own signature, not the one its ``__wrapped__`` shows, takes the call."""
    if getattr(func, "__wrapped__", None) is None:
        return False
    try:
        inspect.signature(func, follow_wrapped=False).bind(*args, **kwargs)
    except (TypeError, ValueError):
        return False
    return True


def _defaults_holder(func) -> types.FunctionType | None:
    """The Python function whose ``__defaults__`` and ``__kwdefaults__`` the
    signature of ``func`` shows (under partials, a bound method, wrappers), or None."""
    inner = _unwrapped(func)[1]
    inner = getattr(inner, "__func__", inner)  # (a bound method's function)
    try:
        inner = inspect.unwrap(inner)  # (as inspect.signature follows __wrapped__)
    except ValueError:
        pass
    return inner if isinstance(inner, types.FunctionType) else None


def _unwrapped(func):
    """(the partials wrapping `func`, outermost first; the callable inside them)."""
    partials = []
    while isinstance(func, functools.partial):
        partials.append(func)
        func = func.func
    return partials, func


_NOT_INSTANCES = (
    types.FunctionType,
    types.MethodType,
    types.BuiltinFunctionType,
    types.BuiltinMethodType,
    types.MethodDescriptorType,
    types.WrapperDescriptorType,
    types.MethodWrapperType,
    type,
)


def _bound_instance(func):
    """The instance (or class) a method is bound to, also under partials; a
    callable instance is bound to itself (two instances of one class are two
    functions, as two bound methods are); None for a function."""
    inner = _unwrapped(func)[1]
    owner = getattr(inner, "__self__", None)
    if owner is None and _is_callable_instance(inner):
        return inner
    return None if owner is None or isinstance(owner, types.ModuleType) else owner


def _is_callable_instance(obj) -> bool:
    """An instance of a class of the program's with a ``__call__`` (its state
    is its behaviour), but not a wrapper of a function (a decorator class
    using functools.update_wrapper, lru_cache: that function is what it
    computes, as joblib takes it)."""
    return (
        not isinstance(obj, _NOT_INSTANCES)
        and isinstance(inspect.getattr_static(type(obj), "__call__", None), types.FunctionType)
        and not hasattr(obj, "__wrapped__")
    )


def _rebuild_memorized(func, memory, ignore, verbose, mmap_mode, cache_validation_callback, identity=None):
    memorized = _memorized_class(func)(func, memory, ignore, verbose, mmap_mode, cache_validation_callback)
    if identity is not None:
        # The original's source: a function sent by value (cloudpickle) has
        # none here, and its entries must be the original's.
        memorized._take_identity(*identity)
    return memorized


def _reduce_for_multiprocessing(memorized):
    """multiprocessing's pickler (its pools, and concurrent.futures'): its
    children run the caller's script as __main__ (forked, or imported again),
    where a script's cached function is found by the name it has there, as
    a script's plain function is (plain pickle refuses it by value: the name
    is the cached function's, not the function's)."""
    if memorized._found_by_name():
        return memorized.__qualname__
    return memorized.__reduce__()


ForkingPickler.register(MemorizedFunc, _reduce_for_multiprocessing)
ForkingPickler.register(AsyncMemorizedFunc, _reduce_for_multiprocessing)


def _check_mmap_mode(mmap_mode):
    if mmap_mode is not None and mmap_mode not in _MMAP_ACCESS:
        raise ValueError(f"mmap_mode={mmap_mode!r}: use None, 'r', 'r+', 'w+' or 'c' (as numpy.load)")
    return mmap_mode


class MemorizedResult(Generic[R]):
    """A reference to one cached result (``call_and_shelve``'s result): ``get()`` loads it, ``clear()`` drops it."""

    def __init__(self, location, func: str, args_id: str, entry: str, mmap_mode=None) -> None:
        self.location = location
        self.func = func
        self.args_id = args_id
        self.entry = entry
        self.mmap_mode = mmap_mode

    @property
    def func_id(self) -> str:
        """The cached function's identifier (joblib's ``func_id``)."""
        return self.func

    def get(self) -> R:
        """The cached result; KeyError once it is no longer in the cache."""
        try:
            if self.mmap_mode is None:
                out = _load_full(self.entry, self.args_id)
            else:
                out = _load_mmap(self.entry, self.mmap_mode, self.args_id)
        except _Corrupt as exc:
            raise KeyError(
                f"the cached result of {self.func}() at {self.entry} is corrupted ({exc})"
            ) from None
        if out is _MISSING:
            raise KeyError(f"the cached result of {self.func}() is no longer in the cache ({self.entry})")
        return out

    def clear(self) -> None:
        """Removes this result from the cache."""
        _native.cache_remove(self.entry)

    @property
    def metadata(self) -> dict:
        """The entry's metadata (duration, arguments, ...); ``{}`` once the entry is gone."""
        try:
            return _verified_metadata(self.entry, self.args_id) or {}
        except (OSError, _Corrupt):
            return {}

    @property
    def duration(self) -> float | None:
        """How long the call took, in seconds (joblib's ``duration``); None once the entry is gone."""
        duration = self.metadata.get("duration")
        return float(duration) if isinstance(duration, (int, float)) else None

    def __repr__(self) -> str:
        return f"MemorizedResult(location={self.location!r}, func={self.func!r}, args_id={self.args_id!r})"


class NotMemorizedResult(Generic[R]):
    """A result that is not in a cache (no location, or it could not be stored): ``get()`` returns it."""

    def __init__(self, value: R) -> None:
        self.value: R | None = value
        self.valid = True

    def get(self) -> R:
        """The result; KeyError once cleared."""
        if not self.valid:
            raise KeyError("no value: it was cleared")
        return self.value

    def clear(self) -> None:
        """Drops the result."""
        self.valid = False
        self.value = None

    def __repr__(self) -> str:
        return f"NotMemorizedResult(value={self.value!r})" if self.valid else "NotMemorizedResult(cleared)"


class NotMemorizedFunc(Generic[P, R]):
    """What ``Memory(location=None).cache`` returns: the function, uncached, with MemorizedFunc's methods."""

    # Set by functools.update_wrapper (joblib's NotMemorizedFunc has none of them).
    __wrapped__: Callable[P, R]
    __name__: str
    __qualname__: str

    def __init__(self, func: Callable[P, R]) -> None:
        self.func = func
        functools.update_wrapper(self, func)

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        return self.func(*args, **kwargs)

    def call(self, *args: P.args, **kwargs: P.kwargs) -> tuple[R, dict[str, Any]]:
        """The function's result and empty metadata: ``(func(*args, **kwargs), {})``."""
        return self.func(*args, **kwargs), {}

    def call_and_shelve(self, *args: P.args, **kwargs: P.kwargs) -> NotMemorizedResult[R]:
        """The function's result, held by a :class:`NotMemorizedResult`."""
        return NotMemorizedResult(self.func(*args, **kwargs))

    def check_call_in_cache(self, *args: P.args, **kwargs: P.kwargs) -> bool:
        """False: nothing is cached."""
        return False

    def clear(self, warn: bool = True) -> None:
        """Nothing to remove."""

    def __repr__(self) -> str:
        return f"NotMemorizedFunc(func={self.func!r})"


class AsyncNotMemorizedFunc(NotMemorizedFunc[P, "Coroutine[Any, Any, T]"]):
    """``Memory(location=None).cache`` of an ``async def`` function."""

    async def call(self, *args: P.args, **kwargs: P.kwargs) -> tuple[T, dict[str, Any]]:  # type: ignore[override]
        return await self.func(*args, **kwargs), {}

    async def call_and_shelve(  # type: ignore[override]
        self, *args: P.args, **kwargs: P.kwargs
    ) -> NotMemorizedResult[T]:
        return NotMemorizedResult(await self.func(*args, **kwargs))


# -- Memory --------------------------------------------------------------------------------------


def _absolute_location(location: str | os.PathLike) -> str:
    """A location as an absolute path, ``~`` expanded as joblib expands it."""
    return os.path.abspath(os.path.expanduser(os.fspath(location)))


class Memory:
    """A disk cache for function results, with joblib.Memory's API.

    ``location`` is a directory (``~`` expanded, as joblib does; created on
    first store; ``None`` disables caching). ``mmap_mode`` ('r', 'r+', 'w+',
    'c') memory-maps the numpy arrays of cached results instead of reading
    them (np.memmap objects, as joblib returns). ``bytes_limit`` is
    the default limit of :meth:`reduce_size`. ``compress`` (True or a zlib
    level) compresses results; compressed results are not memory-mapped.
    ``durable=True`` (perfkit's addition) fsyncs each entry before it is
    published.
    """

    def __init__(
        self,
        location: str | os.PathLike | None = None,
        mmap_mode: str | None = None,
        verbose: int = 0,
        bytes_limit: int | str | None = None,
        compress: bool | int | tuple = False,
        *,
        backend: str = "local",
        backend_options: dict | None = None,
        durable: bool = False,
    ) -> None:
        if backend != "local":
            raise ValueError(f"backend={backend!r}: perfkit.Memory stores on the local file system only")
        self.location = location
        self.mmap_mode = _check_mmap_mode(mmap_mode)
        self._verbose = verbose
        self.bytes_limit = _parse_bytes(bytes_limit)
        self.compress = compress
        self._compress_level = _parse_compress(compress)
        self.backend = backend
        self.backend_options = dict(backend_options or {})
        self.durable = bool(durable)
        if self._compress_level and mmap_mode is not None:
            warnings.warn("Compressed results cannot be memmapped", stacklevel=2)
        # Absolute from here on: a chdir (a notebook's %cd) must not move the
        # cache, nor the entries the background writer has yet to write.
        self._location = None if location is None else _absolute_location(location)
        self._root = None if location is None else os.path.join(self._location, _STORE_DIR)

    def __setstate__(self, state: dict) -> None:
        # A Memory pickled by an older perfkit (a saved sklearn pipeline's
        # `memory=`) lacks what later versions added: derived here, as the
        # constructor derives it (helper-56: the first background write
        # failed on `_location`).
        self.__dict__.update(state)
        if "_location" not in state:
            root = state.get("_root")
            self._location = (
                os.path.dirname(root)
                if root
                else (None if self.location is None else _absolute_location(self.location))
            )
        if "_root" not in state:
            self._root = None if self._location is None else os.path.join(self._location, _STORE_DIR)
        self.__dict__.setdefault("durable", False)

    @overload
    def cache(  # type: ignore[overload-overlap]
        self,
        func: Callable[P, Coroutine[Any, Any, T]],
        ignore: list[str] | None = None,
        verbose: int | None = None,
        mmap_mode: str | None | bool = False,
        cache_validation_callback: Callable[[dict[str, Any]], bool] | None = None,
    ) -> AsyncMemorizedFunc[P, T] | AsyncNotMemorizedFunc[P, T]: ...
    @overload
    def cache(
        self,
        func: Callable[P, R],
        ignore: list[str] | None = None,
        verbose: int | None = None,
        mmap_mode: str | None | bool = False,
        cache_validation_callback: Callable[[dict[str, Any]], bool] | None = None,
    ) -> MemorizedFunc[P, R] | NotMemorizedFunc[P, R]: ...
    @overload
    def cache(
        self,
        func: None = None,
        ignore: list[str] | None = None,
        verbose: int | None = None,
        mmap_mode: str | None | bool = False,
        cache_validation_callback: Callable[[dict[str, Any]], bool] | None = None,
    ) -> _CacheDecorator: ...
    def cache(
        self,
        func: Callable[..., Any] | None = None,
        ignore: list[str] | None = None,
        verbose: int | None = None,
        mmap_mode: str | None | bool = False,
        cache_validation_callback: Callable[[dict[str, Any]], bool] | None = None,
    ) -> Any:
        """Decorates ``func`` so that its results are cached: ``@memory.cache``,
        ``@memory.cache(ignore=["verbose"])`` or ``memory.cache(func)``."""
        if func is None:
            return functools.partial(
                self.cache,
                ignore=ignore,
                verbose=verbose,
                mmap_mode=mmap_mode,
                cache_validation_callback=cache_validation_callback,
            )
        if isinstance(func, (MemorizedFunc, NotMemorizedFunc)):
            func = func.func
        if self._root is None:
            return (AsyncNotMemorizedFunc if inspect.iscoroutinefunction(func) else NotMemorizedFunc)(func)
        if ignore is not None and not isinstance(ignore, (list, tuple)):
            raise TypeError(f"ignore must be a list of argument names, not {type(ignore).__name__}")
        return _memorized_class(func)(func, self, ignore, verbose, mmap_mode, cache_validation_callback)

    def eval(self, func: Callable[P, R], *args: P.args, **kwargs: P.kwargs) -> R:
        """``self.cache(func)(*args, **kwargs)``."""
        return self.cache(func)(*args, **kwargs)

    def clear(self, warn: bool = True) -> None:
        """Removes everything this Memory stored at its location."""
        if self._root is None:
            return
        if self._verbose > 0 and warn:
            print(f"[Memory] Clearing the cache at {self._root}")
        _native.cache_remove(self._root)

    def reduce_size(
        self,
        bytes_limit: int | str | None = None,
        items_limit: int | None = None,
        age_limit: datetime.timedelta | None = None,
    ) -> None:
        """Evicts least recently used results until the cache holds at most ``bytes_limit``
        bytes (default: the Memory's ``bytes_limit``) and ``items_limit`` results, and
        removes every result not used within ``age_limit`` (a datetime.timedelta)."""
        if self._root is None:
            return
        if bytes_limit is None and items_limit is None and age_limit is None:
            bytes_limit = self.bytes_limit
            if bytes_limit is None:
                return
        bytes_limit = _parse_bytes(bytes_limit)
        if items_limit is not None and (not isinstance(items_limit, int) or items_limit < 0):
            raise ValueError(f"items_limit={items_limit!r}: use a non-negative number of results")
        age = None
        if age_limit is not None:
            if not isinstance(age_limit, datetime.timedelta):
                raise TypeError(f"age_limit must be a datetime.timedelta, not {type(age_limit).__name__}")
            if age_limit.total_seconds() < 0:
                raise ValueError("age_limit has to be a positive timedelta")
            age = age_limit.total_seconds()
        _native.cache_reduce_size(self._root, bytes_limit, items_limit, age)

    def __repr__(self) -> str:
        return f"Memory(location={self._root!r})"
