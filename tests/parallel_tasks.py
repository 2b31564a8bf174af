"""Task functions for tests/test_parallel*.py (importable by worker processes)."""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
import time

KEPT = []  # references a task keeps on purpose (segment-retention test)


def square(x):
    return x * x


def add(x, y=0, *, z=0):
    return x + y + z


def pid_of(_x=None):
    return os.getpid()


def array_pid(a):
    a.sum()
    return os.getpid()


def raise_at(x, bad=7):
    if x == bad:
        raise ValueError(f"task value {x} is bad")
    return x


class OddError(Exception):
    """An exception whose __init__ takes two arguments: pickles, but does not unpickle as is."""

    def __init__(self, code, detail):
        super().__init__(f"{code}: {detail}")
        self.code = code


def raise_odd(x):
    raise OddError(x, "odd")


def exit_at(x, bad=3):
    if x == bad:
        os._exit(5)
    return x


def signal_at(x, sig, bad=2):
    if x == bad:
        os.kill(os.getpid(), sig)
        time.sleep(5)
    return x


def exit_leaving_children(x, pid_file, bad=1):
    """At `bad`: forks a child (no exec) and starts a subprocess, both of which
    would live 60 s, writes their pids to `pid_file`, and exits the worker."""
    if x != bad:
        time.sleep(0.2)
        return x
    forked = os.fork()
    if forked == 0:
        time.sleep(60)
        os._exit(0)
    sleeper = subprocess.Popen(["sleep", "60"])
    with open(pid_file, "w") as f:
        f.write(f"{forked} {sleeper.pid}")
    os._exit(7)


def start_sleeper_and_wait(directory, ignore_sigterm=False):
    """Starts a `sleep 60` (as a task drives an external tool), notes
    '<worker pid>' -> '<its pid>' in `directory`, and waits for it; first
    ignores SIGTERM in the worker if asked (as some libraries' set-up does)."""
    if ignore_sigterm:
        import signal

        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    sleeper = subprocess.Popen(["sleep", "60"])
    with open(os.path.join(directory, f"{os.getpid()}.tmp"), "w") as f:
        f.write(str(sleeper.pid))
    os.rename(os.path.join(directory, f"{os.getpid()}.tmp"), os.path.join(directory, str(os.getpid())))
    sleeper.wait()


def sleep_return(seconds, value=None):
    time.sleep(seconds)
    return value


def touch_then_sleep(path, seconds):
    with open(path, "w"):
        pass
    time.sleep(seconds)
    return path


def fail_soon_or_touch_late(i, directory):
    """Task 0 fails after 0.2 s; the others would leave a file after 2 s."""
    if i == 0:
        time.sleep(0.2)
        raise ValueError("task 0 fails")
    time.sleep(2)
    open(os.path.join(directory, f"t{i}"), "w").close()
    return i


def fork_child_reads_later(a, directory):
    """Forks a child that reads its argument 0.5 s later, as a task starting a
    background process (multiprocessing's fork) would; returns at once."""
    expected = float(a[0])
    if os.fork() == 0:
        time.sleep(0.5)
        with open(os.path.join(directory, f"{int(expected)}"), "w") as f:
            f.write(f"{float(a[0])} {float(a[-1])}")
        os._exit(0)
    return expected


def fail_first_then_touch(i, directory):
    if i == 0:
        raise RuntimeError("first task fails")
    time.sleep(0.05)
    open(os.path.join(directory, f"t{i}"), "w").close()
    return i


def array_sum(a):
    return float(a.sum())


def array_double(a):
    return a * 2


def array_keep(a):
    KEPT.append(a)  # keeps a view of the shared-memory segment alive
    return float(a[0])


def thread_env(_x=None):
    return {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")}


def blas_limits(_x=None):
    import numpy  # noqa: F401  (loads the BLAS)
    from threadpoolctl import threadpool_info

    return [(i["internal_api"], i["num_threads"]) for i in threadpool_info()]


def nested(n):
    from perfkit import Parallel, delayed

    inner = Parallel(n_jobs=-1)
    pids = inner(delayed(pid_of)(i) for i in range(n))
    return os.getpid(), pids, inner.n_jobs


def nested_threads_by_count(n):
    """Inside a task: what threads asked for by count run on, against
    threads for all CPUs; the threads the first's sleeping tasks ran on."""
    from perfkit import Parallel, delayed

    asked = Parallel(n_jobs=n, backend="threads", batch_size=1)
    idents = asked(delayed(sleep_then_thread)(0.05) for _ in range(n))
    return asked._resolve(), Parallel(n_jobs=-1, backend="threads")._resolve(), len(set(idents))


def sleep_then_thread(seconds):
    import threading

    time.sleep(seconds)
    return threading.get_ident()


def group_features(key, group):
    return key, float(group["v"].mean()), float(group["w"].std()), int(group.shape[0])


def frame_summary(key, group):
    """A frame derived from the group (so the group must arrive intact), sent back."""
    return group.assign(key=key, rank=group["v"].rank(), upper=group["s"].str.upper())


def arrays_around_a_lambda(i):
    """Two large arrays of different sizes with a lambda between them: pickle
    refuses the lambda after it has set the first array apart, and cloudpickle
    pickles the whole result again."""
    import numpy as np

    return [np.full(200_000, i, dtype=np.int64), (lambda: i), np.full(300_000, -i, dtype=np.int64)]


def make_lock(_x=None):
    import threading

    return threading.Lock()  # unpicklable result


def kept_first_values(_x=None):
    return [float(a[0]) for a in KEPT]


def fail_or_array(i):
    import numpy as np

    if i == 0:
        raise RuntimeError("fails at once")
    time.sleep(0.002)
    return np.full(50_000, float(i))  # 400 kB: travels back in a memfd


def logged_square(x, log_dir):
    """x * x, leaving one file in log_dir per real computation (who computed, which value)."""
    with open(os.path.join(log_dir, f"{os.getpid()}-{x}-{time.monotonic_ns()}"), "w"):
        pass
    return x * x


def identity(x):
    return x


def raise_at_half(x):
    if x == 0.5:
        raise ArithmeticError(f"task value {x} is bad")
    return x


def int_or_text(x, limit=300):
    return x if x < limit else f"<{x}>"


def sleep_seconds(s):
    if s:
        time.sleep(s)
    return s


def big_array(i):
    import numpy as np

    return np.full(100_000, float(i))  # 800 kB: comes back in a memfd the caller opens


def small_arrays(n):
    """`n` arrays of 16 bytes each: with ``max_nbytes=1`` each is a buffer of its own."""
    import numpy as np

    return [np.full(2, i) for i in range(n)]


KEPT_FRAMES = []


def frame_keep(i, frame):
    """Keeps the frame (its blocks may lie in the batch's shared-memory
    segment); returns (i, column a's first value) of every frame kept here so far."""
    KEPT_FRAMES.append((i, frame))
    return [(j, float(f["a"].iloc[0])) for j, f in KEPT_FRAMES]


class _EqualsByIdentity(type):
    """A metaclass with __eq__ and no __hash__: its classes are unhashable."""

    def __eq__(cls, other):
        return cls is other

    __hash__ = None


class UnhashableClass(metaclass=_EqualsByIdentity):
    pass


def unhashable_class_result(_i):
    import numpy  # noqa: F401  (numpy imported in the worker, as after any numpy task)

    return UnhashableClass()


def array_where(a):
    """(this worker's pid, where the array's data lies in it, its first value)."""
    return os.getpid(), a.ctypes.data, float(a[0])


def array_fault_at(a, fault, bad):
    """a.sum(), except for the task whose array starts with `bad`: it raises,
    returns an unpicklable result, or exits."""
    if a[0] == bad:
        if fault == "raise":
            raise ValueError(f"array {bad} is bad")
        if fault == "unpicklable":
            return make_lock()
        os._exit(7)
    return float(a.sum())


def _rebuild_in_parent_only(pid):
    if os.getpid() != pid:
        raise RuntimeError("this object cannot be unpickled in a worker")
    return BreaksInWorker()


class BreaksInWorker:
    """Pickles, but refuses to be unpickled in any other process."""

    def __reduce__(self):
        return _rebuild_in_parent_only, (os.getpid(),)

    def __repr__(self):
        return "<BreaksInWorker>"


def array_and(a, other):
    return float(a.sum())


REUSED = {}


def reused_array(i):
    """Returns this worker's one array (200 KB), set to i: the next task
    overwrites what this one returned, in the same memory."""
    import numpy as np

    a = REUSED.setdefault("a", np.zeros(25_000))
    a[:] = i
    return a


def array_plus_one(a):
    a += 1
    return a


def free_copy_buffers(_x=None):
    """(pid, {length: how many}) of this worker's copy buffers kept for reuse."""
    import sys

    worker = sys.modules["perfkit._worker"]  # (the running worker, though it runs as __main__)
    return os.getpid(), {length: len(bs) for length, bs in worker.REMOTE_BUFFERS.free.items()}


def fill_row(out, i, value=None):
    """Writes row i of `out` (a memmap the caller made): i, or `value`."""
    out[i] = i if value is None else value


def slice_of(array, start, stop):
    return array[start:stop]


def sleep_then_pid(seconds):
    if seconds:
        time.sleep(seconds)
    return os.getpid()


def raise_given(exc):
    raise exc


def double_row(row):
    row *= 2
    return row


def item_of(array, i):
    return float(array[i])


def nested_resolve(_):
    """What a Parallel inside this task would run on."""
    import perfkit

    return perfkit.Parallel(n_jobs=-1)._resolve()


def nested_dask_sum(n):
    """A Parallel on the dask cluster from inside one of its tasks."""
    import perfkit

    with perfkit.parallel_config(backend="dask"):
        return sum(perfkit.Parallel(batch_size=1)(perfkit.delayed(square)(i) for i in range(n)))


def item_or_raise(array, i, bad):
    if i == bad:
        raise ValueError(f"task value {i} is bad")
    return float(array[i])


def sleep_item_at(array, i, seconds):
    time.sleep(seconds)
    return float(array[i])


def seceded_dask_sum(n):
    """nested_dask_sum from a task that left its worker's thread pool itself."""
    from distributed import rejoin, secede

    secede()
    try:
        return nested_dask_sum(n)
    finally:
        rejoin()


def cancel_once_counted(array, directory):
    """Leaves a file in `directory` for each run, then raises CancelledError
    (of its own: not one dask's cancelling gives)."""
    import concurrent.futures
    import tempfile

    tempfile.mkstemp(dir=directory)
    raise concurrent.futures.CancelledError(f"raised by the task ({len(array)} items)")


def exit_at_item(array, i, bad):
    if i == bad:
        os._exit(5)
    return float(array[i])


class Unpicklable:
    """Large by its size as dask reckons it (so scattered at once), and unpicklable (a lock)."""

    def __init__(self):
        import threading

        self.lock = threading.Lock()

    def __sizeof__(self):
        return 12 << 20


def first_item_of(arrays, i):
    return float(arrays[0][i])


def perfkit_modules_here(_x=None):
    """The perfkit modules this process has imported."""
    import sys

    return sorted(name for name in sys.modules if name == "perfkit" or name.startswith("perfkit."))


def nested_all_cpus_sum(i):
    """A task whose own Parallel takes its share of the machine (n_jobs=-1)."""
    from perfkit import Parallel, delayed

    return sum(Parallel(n_jobs=-1, batch_size=1)(delayed(abs)(-j) for j in range(4))) + i


def nested_from_own_thread(i):
    """A task that makes a threads-backend call from a thread of its own (a
    library's helper thread, say) and waits for it."""
    import concurrent.futures

    from perfkit import Parallel, delayed

    def inner():
        return sum(Parallel(n_jobs=2, backend="threads", batch_size=1)(delayed(abs)(-j) for j in range(4)))

    with concurrent.futures.ThreadPoolExecutor(1) as helper:
        return helper.submit(inner).result() + i


def load_profile(path):
    import perfkit

    return perfkit.load(path)


def nested_two_levels(_):
    """What a Parallel would run on inside a task of this task's own
    threads-backend Parallel (n_jobs=-1: all of this task's share)."""
    from perfkit import Parallel, delayed

    return Parallel(n_jobs=-1, backend="threads", batch_size=1)(delayed(nested_resolve)(j) for j in range(4))


def nested_two_levels_as_if_on_8_cpus(i):
    """nested_two_levels in a worker process that takes this machine for one
    of 8 CPUs while it runs: (this worker's share, what it found)."""
    import perfkit.parallel as pp

    real = pp.cpu_count
    pp.cpu_count = lambda: 8
    try:
        return os.environ.get("PERFKIT_WORKER_CPUS"), nested_two_levels(i)
    finally:
        pp.cpu_count = real


class PicklesAsAString(Exception):
    """An exception whose pickle makes a str of it (as some libraries' do)."""

    def __reduce__(self):
        return (str, ("not an exception any more",))


def raise_pickling_as_a_string(i, bad=2):
    if i == bad:
        raise PicklesAsAString("the real message")
    return i


def _only_in_process(pid):
    if os.getpid() != pid:
        raise ValueError("this result cannot be rebuilt here")
    return "rebuilt"


class LoadsOnlyWhereMade:
    """Pickles fine; unpickling it fails in any other process (the caller)."""

    def __reduce__(self):
        return (_only_in_process, (os.getpid(),))


def result_unloadable_by_the_caller(i, bad=5):
    return LoadsOnlyWhereMade() if i == bad else i


class OutOfMemoryToPickle:
    def __reduce__(self):
        raise MemoryError


def result_out_of_memory_to_pickle(i, bad=2):
    return OutOfMemoryToPickle() if i == bad else i


def slow_first_then_raise(x, slow=2.0):
    """Task 0 takes `slow` seconds, task 1 raises at once, the rest take 0.05 s."""
    if x == 0:
        time.sleep(slow)
        return 0
    if x == 1:
        raise KeyError("task 1 failed at once")
    time.sleep(0.05)
    return x


def gc_threshold_here(_x=None, set_to=None):
    """(pid, the youngest generation's GC threshold while this task runs);
    with ``set_to``, sets it first."""
    import gc

    if set_to is not None:
        gc.set_threshold(set_to)
    return os.getpid(), gc.get_threshold()[0]


class _Cycle:
    def __init__(self, payload):
        self.me = self
        self.payload = payload


def leave_cyclic_garbage(mb):
    """Drops a reference cycle around ``mb`` MB (touched, so resident); returns the pid."""
    _Cycle(bytearray(mb << 20))
    return os.getpid()


def argv_and_paths(_x=None):
    """(sys.argv, the environment's PYTHONPATH, PERFKIT_SYS_PATH, sys.path) here."""
    import sys

    return list(sys.argv), os.environ.get("PYTHONPATH"), os.environ.get("PERFKIT_SYS_PATH"), list(sys.path)


class _Node:
    def __init__(self, data):
        self.data = data
        self.me = self  # garbage only the cycle collector frees


def cycles_around_arrays_peak_mb(n):
    """How far this process's resident memory grew (MB, at its highest) while
    `n` cycles, each around a 200 KB array, were made and dropped. (Sampled,
    not the process's lifetime peak: a reused worker may have been higher
    before, in an earlier test.)"""
    import numpy as np

    def resident_mb():
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20

    base = highest = resident_mb()
    for i in range(n):
        _Node(np.ones(25_000))
        if i % 25 == 0:
            highest = max(highest, resident_mb())
    return highest - base


def close_descriptors_then_sleep(i, seconds):
    """Task 1 closes every descriptor from 3 up (perfkit's pipes among them)
    and goes on running."""
    if i == 1:
        os.closerange(3, 256)
        time.sleep(seconds)
    return i


def interrupt_main_later(seconds):
    """A watchdog that fires after the task has returned: SIGINT's handling in
    a worker that is idle by then."""
    import _thread
    import threading

    threading.Timer(seconds, _thread.interrupt_main).start()
    return os.getpid()


class ErrorHoldingALock(Exception):
    """An exception that cannot be pickled (it holds a lock)."""

    def __init__(self, message):
        import threading

        super().__init__(message)
        self.lock = threading.Lock()


def raise_unpicklable(x):
    if x == 1:
        raise ErrorHoldingALock(f"task value {x} holds a lock")
    return x


def fails_the_first_runs(i, directory, failing_runs):
    """Raises on its first `failing_runs` runs (counted by files in `directory`), then returns i."""
    import tempfile

    tempfile.mkstemp(dir=directory, prefix=f"{i}-")
    runs = sum(name.startswith(f"{i}-") for name in os.listdir(directory))
    if runs <= failing_runs:
        raise RuntimeError(f"run {runs} of task {i} fails")
    return i


def dies_then_fails_then_returns(array, directory):
    """Kills its worker on its first run, raises on its second, then returns array[0]
    (runs counted by files in `directory`)."""
    import tempfile

    tempfile.mkstemp(dir=directory, prefix="run-")
    runs = len(os.listdir(directory))
    if runs == 1:
        os._exit(1)
    if runs == 2:
        raise RuntimeError(f"run {runs} fails")
    return float(array[0])


def lock_at(i, bad):
    """An unpicklable result (a lock) from task `bad`, `i` from the others."""
    return make_lock() if i == bad else i


# pymalloc's pool size: 4 KiB in 3.9, 16 KiB from 3.10 (64-bit, radix tree).
POOL_BITS = 14 if sys.version_info >= (3, 10) else 12
_INTS = iter(range(10**9, 10**9 + 10**7))  # each next() makes one new int (32-byte class)
_HELD: dict = {"ints": []}


def one_free_block_at_the_head(_x=None):
    """Leaves pymalloc's 32-byte class as a task's hot loop should not find it:
    its head pool full but for one block (freed into it just now); returns
    that pool's number as text. free_blocks_at_the_head(1), as a task."""
    return free_blocks_at_the_head(1)


def pool_of_next_int(_x=None):
    """The pool (as text) of the first int this task makes."""
    x = next(_INTS)
    return format(id(x) >> POOL_BITS, "x")


def free_blocks_at_the_head(k):
    """Leaves pymalloc's 32-byte class with its head pool full but for `k`
    blocks (freed into it just now). The pool's last `k` ints wait in a list
    of their own, to be freed without resizing a list (a small list's slots
    are 32-byte blocks too).
    Returns that pool's number as text."""
    held = _HELD
    ints = held["ints"]
    held["tail"] = tail = [None] * k  # the current pool's last k ints, in turn
    held["count"] = 0  # ints of the current pool seen, up to k (small ints are cached)
    slot = 0
    while True:
        x = next(_INTS)
        held["pool"] = id(x) >> POOL_BITS
        if held["pool"] != held.get("last"):
            if held["count"] == k:
                break
            held["count"] = 0
        ints.append(tail[slot])
        tail[slot] = x
        slot = slot + 1 if slot + 1 < k else 0
        held["count"] = min(held["count"] + 1, k)
        held["last"] = held["pool"]
    ints.append(x)  # kept, in the next pool (a list this long grows in raw memory)
    del x
    held["answer"] = format(held["last"], "x")
    for slot in range(k):
        tail[slot] = None
    return held["answer"]


def pools_of_next_ints(n):
    """The pools (as text, in a tuple) of the first `n` ints this task makes,
    all kept until the last is made. Nothing of what it returns or frees is
    a 32-byte block (a list of up to 4 slots would be one)."""
    ints = [None] * max(n, 8)
    for i in range(n):
        ints[i] = next(_INTS)
    return tuple(format(id(x) >> POOL_BITS, "x") for x in itertools.islice(ints, n))


_CHAINS: list = []  # what short_pools_at_the_head made, kept until drop_short_pools()


def short_pools_at_the_head(n):
    """Leaves pymalloc's 32-byte class with a chain of `n` full pools at the
    head of its list, each with one free block (one int freed in each, the
    head's last), as frees scattered through full pools leave them. Fills
    pools with ints and takes n pools holding only these (whole pools of
    them: nothing else there to be freed); ints that went into the free
    blocks of pools in use do not count, and when too few whole pools came,
    more ints are made (the first ones kept). All it makes is kept until
    drop_short_pools(). Returns the chain's pool numbers as text (a tuple),
    head first."""
    made = {"size": (2 * n + 8) * ((1 << POOL_BITS) // 32)}
    while True:
        _CHAINS.append(made)
        made["ints"] = ints = list(itertools.islice(_INTS, made["size"]))
        made["pools"] = pools = [id(x) >> POOL_BITS for x in ints]
        made["counts"] = counts = {}
        for pool in pools:
            counts[pool] = counts.get(pool, 0) + 1
        made["whole"] = whole = [pool for pool in counts if counts[pool] == max(counts.values())][:n]
        if len(whole) == n:
            break
        made = {"size": 2 * made["size"]}
    made["picks"] = picks = [pools.index(pool) + counts[pool] // 2 for pool in whole]
    made["answer"] = tuple(format(pool, "x") for pool in whole)
    for i in reversed(picks):
        ints[i] = None
    return made["answer"]


def free_the_rest_of_short_pools():
    """Frees the other ints of the chains' pools (nothing else): those pools
    have room again."""
    for made in (made for made in _CHAINS if "picks" in made):
        ints, pools, counts = made["ints"], made["pools"], made["counts"]
        for pool in made["whole"]:
            start = pools.index(pool)
            for i in range(start, start + counts[pool]):
                ints[i] = None


def drop_short_pools():
    """Frees all that short_pools_at_the_head made: their pools have room again."""
    _CHAINS.clear()
