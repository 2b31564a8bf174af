"""perfkit.Memory under faults: concurrent processes, a writer killed mid-write,
damaged entries, read-only and full locations.

Each fault is made deterministic: processes start together on a "go" file;
the kill happens while the writer is parked mid-write by the test hook
PERFKIT_CACHE_TEST_PAUSE_MID_WRITE; damage is done by editing the entry file.
"""

from __future__ import annotations

import contextlib
import os
import re
import resource
import signal
import subprocess
import sys
import textwrap
import time
import warnings
from pathlib import Path

import numpy as np
import perfkit
import pytest
from perfkit.memory import CacheWarning

N = 300_000  # 2.4 MB results: large enough that writing takes a while and streams in chunks

MODULE = textwrap.dedent(
    """
    import os, time
    import numpy as np
    import perfkit

    memory = perfkit.Memory(os.environ["PK_LOCATION"])

    @memory.cache
    def compute(n, tag):
        with open(os.environ["PK_CALLS"], "a") as f:
            f.write(f"{os.getpid()}\\n")
        time.sleep(float(os.environ.get("PK_SLEEP", "0")))
        return np.arange(n, dtype=np.float64) * 3 + len(tag)
    """
)

CHILD = textwrap.dedent(
    """
    import os, sys, time, warnings
    import numpy as np
    sys.path.insert(0, os.environ["PK_MODDIR"])
    from perfkit.memory import CacheWarning
    warnings.simplefilter("error", CacheWarning)  # any damaged entry seen fails this process
    import cachedmod
    go = os.environ.get("PK_GO")
    while go and not os.path.exists(go):
        time.sleep(0.001)
    n, tag = int(os.environ["PK_N"]), os.environ["PK_TAG"]
    want = np.arange(n, dtype=np.float64) * 3 + len(tag)
    for i in range(int(os.environ.get("PK_ROUNDS", "1"))):
        if os.environ.get("PK_ROLE") == "writer":
            got, _meta = cachedmod.compute.call(n, tag)
        else:
            got = cachedmod.compute(n, tag)
        assert got.dtype == want.dtype and np.array_equal(got, want), "wrong result"
    print("OK")
    """
)


@pytest.fixture
def env(tmp_path):
    moddir = tmp_path / "mod"
    moddir.mkdir()
    (moddir / "cachedmod.py").write_text(MODULE)
    location = tmp_path / "cache"
    calls = tmp_path / "calls.txt"
    calls.write_text("")
    e = dict(os.environ, PK_MODDIR=str(moddir), PK_LOCATION=str(location), PK_CALLS=str(calls), PK_N=str(N))
    e.pop("PYTHONPATH", None)
    return {"env": e, "location": location, "calls": calls, "moddir": moddir, "tmp": tmp_path}


def spawn(env: dict, **extra) -> subprocess.Popen:
    e = dict(env, **{k: str(v) for k, v in extra.items()})
    return subprocess.Popen(
        [sys.executable, "-c", CHILD], env=e, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def finish(procs, timeout=120) -> None:
    for p in procs:
        out, err = p.communicate(timeout=timeout)
        assert p.returncode == 0 and out.strip() == "OK", f"child failed ({p.returncode}):\n{out}\n{err}"


def published(location: Path) -> list[Path]:
    return sorted(Path(location).rglob("*.pkc"))


def leftovers(location: Path) -> list[Path]:
    return sorted(p for p in Path(location).rglob(".*") if p.name.startswith((".tmp-", ".trash-")))


def n_calls(calls: Path) -> int:
    return len(calls.read_text().split())


@contextlib.contextmanager
def imported_cachedmod(moddir: Path, location: Path, calls: Path):
    """cachedmod imported in this process (the same function identity as the children's)."""
    os.environ["PK_LOCATION"], os.environ["PK_CALLS"] = str(location), str(calls)
    sys.path.insert(0, str(moddir))
    sys.modules.pop("cachedmod", None)
    try:
        import cachedmod

        yield cachedmod
    finally:
        sys.path.remove(str(moddir))
        sys.modules.pop("cachedmod", None)
        os.environ.pop("PK_LOCATION", None)
        os.environ.pop("PK_CALLS", None)


def expected(tag: str) -> np.ndarray:
    return np.arange(N, dtype=np.float64) * 3 + len(tag)


# -- concurrency -------------------------------------------------------------------------------


def test_many_processes_same_call_at_once(env):
    go = env["tmp"] / "go"
    procs = [spawn(env["env"], PK_GO=go, PK_TAG="same", PK_SLEEP=0.05) for _ in range(8)]
    time.sleep(1.0)  # let them all import and wait on the go file
    go.write_text("go")
    finish(procs)
    assert 1 <= n_calls(env["calls"]) <= 8
    assert len(published(env["location"])) == 1
    assert leftovers(env["location"]) == []
    # Everyone later is served from the cache.
    before = n_calls(env["calls"])
    finish([spawn(env["env"], PK_TAG="same") for _ in range(2)])
    assert n_calls(env["calls"]) == before


def test_readers_never_see_a_torn_entry_while_writers_rewrite_it(env):
    """Writers re-store the entry again and again (call() always recomputes and
    replaces it) while readers read it: no reader ever gets a wrong result or
    a damaged entry (every child turns a CacheWarning into a failure)."""
    go = env["tmp"] / "go"
    writers = [spawn(env["env"], PK_GO=go, PK_TAG="rw", PK_ROLE="writer", PK_ROUNDS=15) for _ in range(2)]
    readers = [spawn(env["env"], PK_GO=go, PK_TAG="rw", PK_ROUNDS=40) for _ in range(3)]
    time.sleep(1.0)
    go.write_text("go")
    finish(writers + readers)
    assert len(published(env["location"])) == 1
    assert leftovers(env["location"]) == []


# -- a writer killed mid-write -------------------------------------------------------------------


def test_sigkill_mid_write_leaves_nothing_valid_and_next_call_recomputes(env):
    marker = env["tmp"] / "paused"
    p = spawn(env["env"], PK_TAG="killed", PERFKIT_CACHE_TEST_PAUSE_MID_WRITE=marker)
    deadline = time.monotonic() + 60
    while not marker.exists():
        assert p.poll() is None, p.communicate()
        assert time.monotonic() < deadline, "the writer never reached the middle of its write"
        time.sleep(0.01)
    p.send_signal(signal.SIGKILL)
    p.wait(timeout=30)
    assert p.returncode == -signal.SIGKILL
    assert n_calls(env["calls"]) == 1
    # The half-written file exists, under a temporary name only.
    [partial] = leftovers(env["location"])
    assert partial.name.startswith(".tmp-") and 0 < partial.stat().st_size
    assert published(env["location"]) == []

    with imported_cachedmod(env["moddir"], env["location"], env["calls"]) as mod:
        assert not mod.compute.check_call_in_cache(N, "killed")
        with warnings.catch_warnings():
            warnings.simplefilter("error", CacheWarning)
            np.testing.assert_array_equal(mod.compute(N, "killed"), expected("killed"))
        assert n_calls(env["calls"]) == 2  # recomputed
        np.testing.assert_array_equal(mod.compute(N, "killed"), expected("killed"))
        assert n_calls(env["calls"]) == 2  # and stored: a hit
        # Eviction does not count the partial file, and cleans it up once it is old.
        mod.memory.reduce_size(items_limit=1)
        assert len(published(env["location"])) == 1 and partial.exists()
        old = time.time() - 2 * 3600
        os.utime(partial, (old, old))
        mod.memory.reduce_size(items_limit=1)
        assert not partial.exists() and len(published(env["location"])) == 1


# -- damaged entries -----------------------------------------------------------------------------


def _flip(offset_of):
    def damage(path: Path) -> None:
        b = bytearray(path.read_bytes())
        b[offset_of(b)] ^= 0x04
        path.write_bytes(bytes(b))

    return damage


def _stream_offset(b: bytes) -> int:
    return b.index(b"\n") + 1 + 64 + 16 + 5  # metadata line, header, one buffer's table row


DAMAGES = {
    "truncated": lambda p: p.write_bytes(p.read_bytes()[: p.stat().st_size // 2]),
    "truncated by one byte": lambda p: p.write_bytes(p.read_bytes()[:-1]),
    "bit flip in the data": _flip(lambda b: len(b) - 1000),
    "bit flip in the pickle stream": _flip(_stream_offset),
    "bit flip in the header": _flip(lambda b: b.index(b"\n") + 1 + 20),
    "bit flip in the metadata": _flip(lambda b: 5),
    "metadata line deleted": lambda p: p.write_bytes(p.read_bytes().split(b"\n", 1)[1]),
    "empty file": lambda p: p.write_bytes(b""),
    "garbage": lambda p: p.write_bytes(os.urandom(5000)),
    "appended bytes": lambda p: p.write_bytes(p.read_bytes() + b"\0" * 64),
}


# With mmap_mode the data buffers are mapped, not read: a flipped bit there is the one
# damage it cannot see (test_mmap_does_not_read_data); everything else is checked both ways.
DAMAGE_CASES = [(d, m) for m in (None, "r") for d in DAMAGES if not (m and d == "bit flip in the data")]


@pytest.mark.parametrize(("damage", "mmap_mode"), DAMAGE_CASES)
def test_damaged_entry_warns_and_recomputes(tmp_path, damage, mmap_mode):
    mem = perfkit.Memory(tmp_path, mmap_mode=mmap_mode)
    calls = []

    @mem.cache
    def make(n):
        calls.append(n)
        return {"array": np.arange(n, dtype=np.float64), "label": "x" * 50}

    make(5000)
    [entry] = sorted(Path(tmp_path).rglob("*.pkc"))
    DAMAGES[damage](entry)
    with pytest.warns(
        CacheWarning, match=r"cache entry of .*make\(\) at .* is corrupted \(.+\); recomputing"
    ):
        out = make(5000)
    np.testing.assert_array_equal(out["array"], np.arange(5000, dtype=np.float64))
    assert calls == [5000, 5000]
    with warnings.catch_warnings():
        warnings.simplefilter("error", CacheWarning)
        out = make(5000)  # repaired: a clean hit
    np.testing.assert_array_equal(out["array"], np.arange(5000, dtype=np.float64))
    assert calls == [5000, 5000]


@pytest.mark.parametrize("how", ["symlink", "copy"])
@pytest.mark.parametrize("mmap_mode", [None, "r"])
@pytest.mark.parametrize("n", [10, 200_000])  # a small entry (kept in memory a second) and a large one
@pytest.mark.parametrize("validated", [False, True])
def test_another_calls_entry_at_this_calls_path_is_a_miss(tmp_path, how, mmap_mode, n, validated):
    """A valid entry of another call put at this call's path (``ln -s`` or ``cp
    --remove-destination`` of another argument's entry over this one) was
    returned as this call's result: its checksums hold. The key its metadata
    names is now compared with the call's: a mismatch is warned about and
    recomputed, and the other entry is left alone. (joblib does not check: it
    returns the other call's result.) Symbolic links are followed, so a link
    to this call's own entry still serves hits."""
    mem = perfkit.Memory(tmp_path, mmap_mode=mmap_mode)
    calls = []

    @mem.cache(cache_validation_callback=perfkit.expires_after(hours=1) if validated else None)
    def f(x, n):
        calls.append(x)
        return np.full(n, float(x))

    f(1, n), f(2, n)
    perfkit.memory._flush_writes()
    ref1, ref2 = f.call_and_shelve(1, n), f.call_and_shelve(2, n)
    mine, other = Path(ref1.entry), Path(ref2.entry)
    assert f(1, n)[0] == 1.0  # a hit (and, small, kept in memory)
    mine.unlink()
    if how == "symlink":
        mine.symlink_to(other)
    else:
        mine.write_bytes(other.read_bytes())
    assert not f.check_call_in_cache(1, n)
    assert ref1.metadata == {}
    with pytest.raises(KeyError, match="another call's entry"):
        ref1.get()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = f(1, n)
    assert out[0] == 1.0 and out.shape == (n,) and calls == [1, 2, 1]
    [warning] = [w for w in caught if issubclass(w.category, CacheWarning)]
    assert re.search(
        r"entry of .*f\(\) at .* is corrupted \(it is another call's entry: .*\); recomputing",
        str(warning.message),
    )
    perfkit.memory._flush_writes()
    assert mine.is_file() and not mine.is_symlink()
    with warnings.catch_warnings():
        warnings.simplefilter("error", CacheWarning)
        assert f(1, n)[0] == 1.0 and f(2, n)[0] == 2.0 and calls == [1, 2, 1]  # both hits
        assert ref2.get()[0] == 2.0
        # A link to the call's own entry (a layout that links files) is followed and served.
        moved = mine.with_name("elsewhere")
        mine.rename(moved)
        mine.symlink_to(moved)
        assert f(1, n)[0] == 1.0 and f.check_call_in_cache(1, n) and calls == [1, 2, 1]


@pytest.mark.parametrize("damage", sorted(DAMAGES))
def test_damaged_entry_with_a_validation_callback_warns_and_recomputes(tmp_path, damage):
    """The callback sees only metadata that passed the entry's checksum: damage
    (a flipped bit in the metadata's "time" key, say) is reported as a damaged
    entry and recomputed, never handed to the callback (which then raised
    KeyError: 'time', reported as "could not be unpickled"). joblib gives a
    damaged metadata.json to the callback as {} (expires_after raises)."""
    mem = perfkit.Memory(tmp_path)
    calls = []

    @mem.cache(cache_validation_callback=perfkit.expires_after(hours=1))
    def make(n):
        calls.append(n)
        return {"array": np.arange(n, dtype=np.float64), "label": "x" * 50}

    make(5000)
    perfkit.memory._flush_writes()
    [entry] = sorted(Path(tmp_path).rglob("*.pkc"))
    ref = make.call_and_shelve(5000)
    assert ref.metadata["input_args"] == {"n": "5000"}
    DAMAGES[damage](entry)
    if damage != "bit flip in the data":  # (the head is intact: the full read finds it)
        assert ref.metadata == {}  # (joblib's MemorizedResult.metadata of a damaged entry)
        assert not make.check_call_in_cache(5000)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = make(5000)
    [warning] = [w for w in caught if issubclass(w.category, CacheWarning)]
    assert re.search(
        r"cache entry of .*make\(\) at .* is corrupted \(.+\); recomputing", str(warning.message)
    )
    assert "unpickled" not in str(warning.message) and "KeyError" not in str(warning.message)
    np.testing.assert_array_equal(out["array"], np.arange(5000, dtype=np.float64))
    assert calls == [5000, 5000]
    with warnings.catch_warnings():
        warnings.simplefilter("error", CacheWarning)
        assert make.check_call_in_cache(5000)
        make(5000)  # repaired: a clean hit
    assert calls == [5000, 5000]


def test_metadata_damage_in_the_key_the_callback_reads(tmp_path):
    """The reviewer's case: "time" turned into "uime" by one flipped bit."""
    mem = perfkit.Memory(tmp_path)
    calls = []
    f = mem.cache(
        lambda x: calls.append(x) or x * 2, cache_validation_callback=perfkit.expires_after(hours=1)
    )
    f(3)
    perfkit.memory._flush_writes()
    [entry] = sorted(Path(tmp_path).rglob("*.pkc"))
    data = bytearray(entry.read_bytes())
    data[data.index(b'"time"') + 1] ^= 0x01
    entry.write_bytes(bytes(data))
    with pytest.warns(
        CacheWarning, match=r"is corrupted \(checksum mismatch in the metadata.*\); recomputing"
    ):
        assert f(3) == 6
    assert calls == [3, 3]


@pytest.mark.parametrize("library", ["perfkit", "joblib"])
def test_what_the_callback_raises_on_intact_metadata_is_the_callers(tmp_path, library):
    """As in joblib: an error of the callback itself (not of the entry) reaches the caller."""
    import joblib

    lib = perfkit if library == "perfkit" else joblib

    def picky(metadata):
        return metadata["no such field"]

    f = lib.Memory(str(tmp_path), verbose=0).cache(lambda x: x + 1, cache_validation_callback=picky)
    assert f(1) == 2
    with warnings.catch_warnings():
        warnings.simplefilter("error", CacheWarning)
        with pytest.raises(KeyError, match="no such field"):
            f(1)
        with pytest.raises(KeyError, match="no such field"):
            f.check_call_in_cache(1)


def test_mmap_does_not_read_data(tmp_path):
    """The documented limit of mmap_mode: the mapped buffers are not read, so a flipped
    bit in them is not detected there (a full read detects it)."""
    mem = perfkit.Memory(tmp_path, mmap_mode="r")
    f = mem.cache(lambda n: np.zeros(n))
    f(5000)
    [entry] = sorted(Path(tmp_path).rglob("*.pkc"))
    _flip(lambda b: len(b) - 8)(entry)
    assert f(5000)[-1] != 0  # mapped as it is on disk
    full = perfkit.Memory(tmp_path).cache(f.__wrapped__)
    with pytest.warns(CacheWarning, match="checksum mismatch in the data buffers"):
        assert full(5000)[-1] == 0


def test_deleted_entry_file_or_directory_is_a_plain_miss(tmp_path):
    mem = perfkit.Memory(tmp_path)
    calls = []
    f = mem.cache(lambda x: calls.append(x) or x)
    f(1)
    [entry] = sorted(Path(tmp_path).rglob("*.pkc"))
    entry.unlink()
    with warnings.catch_warnings():
        warnings.simplefilter("error", CacheWarning)
        assert f(1) == 1
        import shutil

        perfkit.memory._flush_writes()  # let the store above finish: rmtree must not race it
        shutil.rmtree(tmp_path / "perfkit")
        assert f(1) == 1
    assert calls == [1, 1, 1]


def test_shelved_result_of_damaged_entry_raises_key_error(tmp_path):
    mem = perfkit.Memory(tmp_path)
    f = mem.cache(lambda x: np.ones(x))
    ref = f.call_and_shelve(100)
    [entry] = sorted(Path(tmp_path).rglob("*.pkc"))
    DAMAGES["bit flip in the data"](entry)
    with pytest.raises(KeyError, match="corrupted"):
        ref.get()


# What replaces an entry file in the child below: each case runs in a child
# process, so that a cached call blocked for ever fails the test (timeout)
# instead of hanging the run.
SPECIAL_FILE_CHILD = textwrap.dedent(
    """
    import glob, os, sys, warnings
    import numpy as np, perfkit
    from perfkit.memory import CacheWarning

    import resource
    # An unbounded read of /dev/zero would end in MemoryError here, not fill the machine's memory.
    resource.setrlimit(resource.RLIMIT_AS, (4 << 30, resource.getrlimit(resource.RLIMIT_AS)[1]))

    location, kind, configs = sys.argv[1], sys.argv[2], sys.argv[3:]
    for config in configs:
        mmap_mode, validated = config.split(",")
        loc = os.path.join(location, config.replace(",", "-"))
        mem = perfkit.Memory(loc, mmap_mode=None if mmap_mode == "none" else mmap_mode)
        callback = perfkit.expires_after(hours=1) if validated == "callback" else None
        calls = []

        @mem.cache(cache_validation_callback=callback)
        def f(n):
            calls.append(n)
            return np.arange(n)

        for n in (10, 100_000):  # a small entry (one read) and a large one
            f(n)
            perfkit.memory._flush_writes()
            [entry] = [
                p
                for p in glob.glob(loc + "/**/*.pkc", recursive=True)
                if b'"n": "%d"' % n in open(p, "rb").readline()
            ]
            os.remove(entry)
            if kind == "fifo":
                os.mkfifo(entry)
            else:
                os.symlink("/dev/zero", entry)
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                assert not f.check_call_in_cache(n)
                out = f(n)  # warned about, recomputed and stored again
            assert np.array_equal(out, np.arange(n)) and calls.count(n) == 2, (config, n, calls)
            msgs = [str(w.message) for w in caught if issubclass(w.category, CacheWarning)]
            assert len(msgs) == 1 and "not a regular file" in msgs[0] and "recomputing" in msgs[0], msgs
            perfkit.memory._flush_writes()
            assert os.path.isfile(entry) and not os.path.islink(entry)
            with warnings.catch_warnings():
                warnings.simplefilter("error", CacheWarning)
                assert np.array_equal(f(n), np.arange(n)) and calls.count(n) == 2  # a hit again
    print("OK")
    """
)


@pytest.mark.parametrize("kind", ["fifo", "/dev/zero"])
def test_fifo_or_device_in_an_entrys_place_is_damage_not_a_hang(tmp_path, kind):
    """A FIFO at an entry's path blocked open() for ever (joblib hangs too: it
    opens output.pkl plainly); a link to /dev/zero never ends (with a
    cache_validation_callback, the metadata line was read by an unbounded
    readline() until MemoryError). Both are refused without blocking, as
    damaged entries: warned about and recomputed."""
    configs = ["none,plain", "r,plain", "none,callback", "r,callback"]
    try:
        done = subprocess.run(
            [sys.executable, "-c", SPECIAL_FILE_CHILD, str(tmp_path), kind.strip("/"), *configs],
            check=False,
            capture_output=True,
            text=True,
            timeout=120,
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"a cached call blocked on {kind} in an entry's place")
    assert done.returncode == 0 and done.stdout.strip() == "OK", done.stdout + done.stderr


# -- read-only and full locations ----------------------------------------------------------------


def _can_mount() -> bool:
    if os.geteuid() != 0:
        return False
    probe = Path("/tmp") / f"perfkit-mount-probe-{os.getpid()}"
    probe.mkdir(exist_ok=True)
    try:
        try:
            ok = subprocess.run(
                ["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(probe)],
                check=False,
                capture_output=True,
            )
        except OSError:  # no mount command
            return False
        if ok.returncode != 0:
            return False
        subprocess.run(["umount", str(probe)], check=True)
        return True
    finally:
        probe.rmdir()


CAN_MOUNT = _can_mount()


@contextlib.contextmanager
def small_tmpfs(path: Path, size: str):
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], check=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def test_read_only_location_warns_and_returns_results_and_still_serves_hits(tmp_path):
    loc = tmp_path / "ro"
    calls = []

    def work(x):
        calls.append(x)
        return np.full(1000, x)

    with contextlib.ExitStack() as stack:
        if CAN_MOUNT:  # a real read-only file system (as root, permission bits do not stop writes)
            stack.enter_context(small_tmpfs(loc, "4m"))
        else:
            loc.mkdir()
        perfkit.Memory(loc).cache(work)(1)  # stored while writable
        if CAN_MOUNT:
            subprocess.run(["mount", "-o", "remount,ro", str(loc)], check=True)
        else:
            for d in [loc, *[p for p in loc.rglob("*") if p.is_dir()]]:
                d.chmod(0o555)
            stack.callback(lambda: [p.chmod(0o755) for p in [loc, *loc.rglob("*")] if p.is_dir()])
        f = perfkit.Memory(loc).cache(work)
        with warnings.catch_warnings():
            warnings.simplefilter("error", CacheWarning)
            assert f(1)[0] == 1  # a hit from a read-only location
        assert calls == [1]
        with pytest.warns(
            CacheWarning, match=r"could not store the result of .*work\(\) in .*returned but not cached"
        ):
            assert f(2)[0] == 2
        assert calls == [1, 2]


def test_full_location_warns_returns_result_and_leaves_no_partial_file(tmp_path):
    loc = tmp_path / "full"
    with contextlib.ExitStack() as stack:
        if CAN_MOUNT:
            stack.enter_context(small_tmpfs(loc, "512k"))  # a real ENOSPC
            expected_error = "No space left on device"
        else:
            # Without root: the file-size limit makes the write fail (EFBIG) the same way.
            loc.mkdir()
            old = resource.getrlimit(resource.RLIMIT_FSIZE)
            old_handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
            resource.setrlimit(resource.RLIMIT_FSIZE, (512 * 1024, old[1]))
            stack.callback(signal.signal, signal.SIGXFSZ, old_handler)
            stack.callback(resource.setrlimit, resource.RLIMIT_FSIZE, old)
            expected_error = "File too large"
        mem = perfkit.Memory(loc)
        big = mem.cache(lambda n: np.ones(n))
        with pytest.warns(CacheWarning, match=rf"could not store the result of .*\(\) .*{expected_error}"):
            out = big(1_000_000)  # 8 MB into 512 kB
        assert out.shape == (1_000_000,) and out[0] == 1
        assert published(loc) == [] and leftovers(loc) == []
        small = mem.cache(lambda n: n + 1)
        assert small(1) == 2 and small.check_call_in_cache(1)  # what fits is still cached


@pytest.mark.parametrize("damage", ["truncated by one byte", "bit flip in the data", "appended bytes"])
def test_damaged_large_entry_warns_and_recomputes(tmp_path, damage):
    """Large results are read by the pipelined reader (checksummed by a second thread): the same checks."""
    mem = perfkit.Memory(tmp_path)
    calls = []

    @mem.cache
    def make(n):
        calls.append(n)
        return np.arange(n, dtype=np.float64)

    make(200_000)  # 1.6 MB
    [entry] = sorted(Path(tmp_path).rglob("*.pkc"))
    DAMAGES[damage](entry)
    with pytest.warns(CacheWarning, match="is corrupted"):
        out = make(200_000)
    np.testing.assert_array_equal(out, np.arange(200_000, dtype=np.float64))
    assert calls == [200_000, 200_000]


def test_large_hit_is_private_writable_memory(tmp_path):
    mem = perfkit.Memory(tmp_path)
    f = mem.cache(lambda n: np.arange(n, dtype=np.float64))
    f(200_000)
    a = f(200_000)
    assert a.flags.writeable
    a[:] = -1  # the process's own memory: the cache is untouched
    b = f(200_000)
    assert b[0] == 0 and b[-1] == 199_999
    mem.clear()  # evicting the entry does not touch results already returned
    assert b[123] == 123 and a[5] == -1


# A result returned without mmap_mode must not depend on its entry file once
# the call has returned. Each library runs in a child: a result still mapped
# from a truncated file kills the process with SIGBUS when touched.
INDEPENDENT_CHILD = textwrap.dedent(
    """
    import glob, os, shutil, sys
    import numpy as np

    library, location, change = sys.argv[1:4]
    if library == "perfkit":
        import perfkit

        mem, flush = perfkit.Memory(location), perfkit.memory._flush_writes
    else:
        import joblib

        mem, flush = joblib.Memory(location, verbose=0), lambda: None

    @mem.cache
    def f(n, v):
        return np.full(n, float(v))

    def entry_file_of(n, v):
        def files():
            flush()
            return {p for p in glob.glob(location + "/**/*", recursive=True) if p.endswith((".pkc", "output.pkl"))}

        before = files()
        f(n, v)
        [new] = files() - before
        return new

    # 0.8 MB (read in one thread into a bytearray), 8 MB (into numpy's memory), 40 MB (pipelined read)
    for n in (100_000, 1_000_000, 5_000_000):
        mine, other = entry_file_of(n, 1), entry_file_of(n, 2)
        hit = f(n, 1)
        shelved = f.call_and_shelve(n, 1).get()
        if change == "overwritten":
            shutil.copyfile(other, mine)  # in place: O_TRUNC, then write (what cp does)
        else:
            os.truncate(mine, 0)
        for a in (hit, shelved):
            assert a[0] == 1.0 and a[-1] == 1.0 and a.sum() == n, (n, a[:3], a.sum())
            a[:] = 3.0  # and it is writable, private memory
        assert hit.sum() == 3 * n and shelved.sum() == 3 * n
    print("OK")
    """
)


@pytest.mark.parametrize("library", ["perfkit", "joblib"])
@pytest.mark.parametrize("change", ["overwritten", "truncated"])
def test_a_returned_result_does_not_depend_on_its_entry_file(tmp_path, library, change):
    """As joblib's: once returned (no mmap_mode), a large result is the
    process's own memory. It was a view of a MAP_PRIVATE mapping of the entry
    file: a file overwritten in place (cp, rsync --inplace) changed the array's
    values, and a truncated one killed the process with SIGBUS."""
    done = subprocess.run(
        [sys.executable, "-c", INDEPENDENT_CHILD, library, str(tmp_path / "cache"), change],
        check=False,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0 and done.stdout.strip() == "OK", (done.returncode, done.stdout + done.stderr)
