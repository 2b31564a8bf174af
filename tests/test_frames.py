"""DataFrames between perfkit's processes (perfkit._frames): a plain frame
travels by its blocks and must come back exactly as pickle brings it back;
everything else must take pickle's own path.

The fast path needs pandas >= 3.0 (pandas.api.internals); on an older pandas
the same tests check that pickle's path is taken for every frame.
"""

from __future__ import annotations

import copyreg
import pickle
import sys
from pathlib import Path

import numpy as np
import pytest
from perfkit import Parallel, _frames, delayed
from perfkit._pool_common import dumps

pd = pytest.importorskip("pandas")
sys.path.insert(0, str(Path(__file__).parent))
import parallel_tasks as T

try:
    from pandas.api.internals import create_dataframe_from_blocks  # noqa: F401

    FAST = True
except ImportError:
    FAST = False

pytestmark = pytest.mark.version_sensitive  # the pandas installed differs across the CPythons here

ROWS = 7
RNG = np.random.default_rng(0)


def grouped():
    df = pd.DataFrame({"k": RNG.integers(0, 3, 40), "a": RNG.random(40), "n": RNG.integers(0, 9, 40)})
    return next(iter(df.groupby("k")))[1]


def _read_only(values):
    values.flags.writeable = False
    return values


class Sub(pd.DataFrame):
    @property
    def _constructor(self):
        return Sub


def with_attrs():
    df = pd.DataFrame({"a": [1, 2]})
    df.attrs["source"] = "lab"
    return df


# Frames that travel by their blocks (where pandas has the API).
PLAIN = {
    "groupby group": grouped,
    "range index": lambda: pd.DataFrame({"a": np.arange(ROWS), "b": np.linspace(0, 1, ROWS)}),
    "range index with step": lambda: pd.DataFrame(
        {"a": np.arange(ROWS)}, index=pd.RangeIndex(3, 3 + 2 * ROWS, 2)
    ),
    "float index, named": lambda: pd.DataFrame(
        {"a": np.arange(ROWS)}, index=pd.Index(np.linspace(0.5, 3, ROWS), name="t")
    ),
    "uint8 index": lambda: pd.DataFrame({"a": np.arange(ROWS)}, index=np.arange(ROWS, dtype=np.uint8)),
    "bool index": lambda: pd.DataFrame({"a": [1, 2]}, index=pd.Index([True, False])),
    "named columns": lambda: pd.DataFrame({"a": [1], "b": [2]}).rename_axis(columns="features"),
    # 1 == 1.0 == True, with one hash: a cache keyed by names would mix them up.
    "columns named 1": lambda: pd.DataFrame({"a": [1], "b": [2]}).rename_axis(columns=1),
    "columns named 1.0": lambda: pd.DataFrame({"a": [1], "b": [2]}).rename_axis(columns=1.0),
    "columns named True": lambda: pd.DataFrame({"a": [1], "b": [2]}).rename_axis(columns=True),
    "index named (1, 'x')": lambda: pd.DataFrame({"a": [1, 2]}, index=pd.Index([3, 4], name=(1, "x"))),
    "int column labels": lambda: pd.DataFrame(np.ones((3, 4))),
    "duplicate column labels": lambda: pd.DataFrame(np.ones((2, 3)), columns=["x", "x", "y"]),
    "every numpy dtype": lambda: pd.DataFrame(
        {
            "i1": np.arange(ROWS, dtype=np.int8),
            "u8": np.arange(ROWS, dtype=np.uint64) + 2**63,
            "f4": np.arange(ROWS, dtype=np.float32) / 3,
            "f8": [np.nan, -0.0, np.inf, 5e-324, 1.0, 2.0, 3.0],
            "c16": np.arange(ROWS) * 1j,
            "b": np.arange(ROWS) % 2 == 0,
            "o": [None, 1, "x", (2,), 3.5, b"y", {"z": 1}],
        }
    ),
    "extension dtypes": lambda: pd.DataFrame(
        {
            "cat": pd.Categorical(list("abcabca")),
            "s": pd.array(list("abcdefg"), dtype="string"),
            "i": pd.array([1, None, 3, 4, 5, 6, 7], dtype="Int64"),
            "t": pd.date_range("2024-01-01", periods=ROWS, freq="h"),
            "tz": pd.date_range("2024-01-01", periods=ROWS, tz="Europe/Paris"),
            "td": pd.to_timedelta(np.arange(ROWS), unit="s"),
            "p": pd.period_range("2024-01", periods=ROWS, freq="M"),
            "iv": pd.interval_range(0, ROWS),
        }
    ),
    "no rows": lambda: pd.DataFrame({"a": np.array([], dtype=np.int64), "b": np.array([], dtype=object)}),
    "no columns": lambda: pd.DataFrame(index=np.arange(3)),
    "Fortran-ordered block": lambda: pd.DataFrame(np.asfortranarray(RNG.random((5, 3))), columns=list("abc")),
    "read-only block": lambda: pd.DataFrame(_read_only(RNG.random((4, 2))), columns=["a", "b"], copy=False),
    "a slice of a frame": lambda: pd.DataFrame({"a": np.arange(100), "b": np.arange(100.0)}).iloc[10:90:7],
}

# Frames (or parts) that must take pickle's own path.
FALLBACK = {
    "attrs": with_attrs,
    "flags": lambda: pd.DataFrame({"a": [1, 2]}).set_flags(allows_duplicate_labels=False),
    "subclass": lambda: Sub({"a": [1, 2]}),
}

# Frames with an index of another kind: the blocks travel fast, that index as pickle sends it.
OTHER_INDEXES = {
    "datetime index": lambda: pd.DataFrame({"a": np.arange(ROWS)}, index=pd.date_range("2024", periods=ROWS)),
    "MultiIndex columns": lambda: pd.DataFrame(
        np.ones((2, 2)), columns=pd.MultiIndex.from_tuples([("a", 1), ("a", 2)])
    ),
    "string index": lambda: pd.DataFrame({"a": [1, 2]}, index=["r1", "r2"]),
    "mixed labels": lambda: pd.DataFrame({"a": [1], 2: [3]}),
    "categorical index": lambda: pd.DataFrame({"a": [1, 2]}, index=pd.CategoricalIndex(["u", "v"])),
}


def through_dumps(frame, out_of_band_from=64):
    payload, buffers = dumps(frame, out_of_band_from=out_of_band_from)
    return payload, pickle.loads(payload, buffers=buffers)


def assert_same_as_pickle(frame, rebuilt):
    expected = pickle.loads(pickle.dumps(frame, protocol=5))
    assert type(rebuilt) is type(expected)
    pd.testing.assert_frame_equal(
        rebuilt, expected, check_exact=True, check_index_type=True, check_column_type=True, check_flags=True
    )
    assert rebuilt.attrs == expected.attrs
    for axis in ("index", "columns"):
        got, want = getattr(rebuilt, axis), getattr(expected, axis)
        assert type(got) is type(want) and got.dtype == want.dtype and got.names == want.names, axis
        assert [type(n) for n in got.names] == [type(n) for n in want.names], axis

    # The block layout survives as pickle keeps it (no consolidation, same placements).
    # and so do the arrays' memory order and writability.
    def layout(frame):
        return [
            (str(b.dtype), list(b.mgr_locs.as_array), b.values.shape, *_flags(b.values))
            for b in frame._mgr.blocks
        ]

    assert layout(rebuilt) == layout(expected)


def _flags(values):
    if not isinstance(values, np.ndarray):  # extension arrays: compared as frames above
        return ()
    return (values.flags.writeable, values.flags.c_contiguous, values.flags.f_contiguous)


@pytest.fixture(params=["internal", "public"])
def rebuild_route(request, monkeypatch):
    """Workers rebuild a frame through pandas' internal constructors where
    they are found, else through pandas.api.internals: both must give
    pickle's frame."""
    if FAST:
        monkeypatch.setattr(_frames, "_frame_from_blocks", None)
        chosen = _frames._load_rebuild_api()
        try:
            from pandas.core.internals.blocks import new_block  # noqa: F401

            assert chosen is not _frames._frame_from_blocks_public
        except ImportError:
            pass
        if request.param == "public":
            monkeypatch.setattr(_frames, "_frame_from_blocks", _frames._frame_from_blocks_public)
    return request.param


@pytest.mark.parametrize("name", list(PLAIN) + list(OTHER_INDEXES))
def test_plain_frames_come_back_as_pickle_brings_them(name, rebuild_route):
    frame = {**PLAIN, **OTHER_INDEXES}[name]()
    payload, rebuilt = through_dumps(frame)
    assert (b"_rebuild_frame" in payload) == FAST
    assert_same_as_pickle(frame, rebuilt)


@pytest.mark.parametrize("name", list(FALLBACK))
def test_frames_with_more_than_data_take_pickles_path(name):
    frame = FALLBACK[name]()
    payload, rebuilt = through_dumps(frame)
    assert b"_rebuild_frame" not in payload
    assert_same_as_pickle(frame, rebuilt)


def test_frames_in_one_pickle_are_rebuilt_apart():
    # Sent one after another in one batch (and one worker's cache), no frame
    # comes back with another's axis names or shares writable labels with it.
    frames = [PLAIN[name]() for name in ("columns named 1.0", "columns named True", "columns named 1")]
    _, rebuilt = through_dumps(frames)
    assert [(f.columns.name, type(f.columns.name)) for f in rebuilt] == [(1.0, float), (True, bool), (1, int)]
    first, second = through_dumps([grouped(), grouped()])[1]
    labels = np.asarray(first.columns)
    labels[labels == "a"] = "x"  # writable, as after pickle's own round trip
    assert list(second.columns) == ["k", "a", "n"] and list(through_dumps(grouped())[1].columns) == [
        "k",
        "a",
        "n",
    ]
    assert not first.columns.is_(second.columns)


class Row:
    def __init__(self, table):
        self.table = table


def test_a_frame_that_contains_itself_comes_back_as_pickle_brings_it():
    frame = pd.DataFrame({"x": [1.0, 2.0], "row": [None, None]})
    frame["row"] = [Row(frame), Row(frame)]
    _, rebuilt = through_dumps(frame)
    assert rebuilt["row"][0].table is rebuilt and list(rebuilt["x"]) == [1.0, 2.0]


def test_arrays_shared_by_frames_travel_once():
    base = pd.DataFrame({"a": np.arange(200_000.0)}, index=np.arange(200_000) * 3)
    derived = [base, base * 2, base.rename(columns={"a": "b"}), base.copy(deep=False)]
    ours, _ = dumps(derived, out_of_band_from=None)
    theirs = pickle.dumps(derived, protocol=5)
    assert len(ours) < 1.1 * len(theirs), (len(ours), len(theirs))
    rebuilt = pickle.loads(ours)
    for got, want in zip(rebuilt, derived):
        assert_same_as_pickle(want, got)


def test_batches_cloudpickle_takes_send_frames_by_their_blocks_too():
    payload, buffers = dumps([grouped(), lambda x: x], out_of_band_from=64)
    assert (b"_rebuild_frame" in payload) == FAST
    frame, function = pickle.loads(payload, buffers=buffers)
    assert function(3) == 3 and list(frame.columns) == ["k", "a", "n"]


def test_large_blocks_travel_out_of_band():
    frame = pd.DataFrame({"a": np.arange(100_000.0), "b": np.arange(100_000)})
    payload, buffers = dumps(frame, out_of_band_from=64 * 1024)
    assert len(payload) < 4096 and sum(b.nbytes for b in buffers) >= 1_600_000
    assert_same_as_pickle(frame, pickle.loads(payload, buffers=buffers))


def test_rebuilt_frames_do_not_share_their_columns():
    # Workers cache the column Index by its labels (fast path): each frame
    # still gets its own Index, as pickle gives it.
    frame = grouped()
    _, first = through_dumps(frame)
    _, second = through_dumps(frame)
    first.columns.name = "renamed"
    first.index.name = "rows"
    assert second.columns.name is None and second.index.name is None
    _, third = through_dumps(frame)
    assert third.columns.name is None
    first.columns = ["p", "q", "r"]
    assert list(second.columns) == list(frame.columns)


def test_a_users_dataframe_reducer_wins(monkeypatch):
    used = []

    def reduce_as_dict(df):
        used.append(df)
        return pd.DataFrame, (df.to_dict("list"),)

    monkeypatch.setitem(copyreg.dispatch_table, pd.DataFrame, reduce_as_dict)
    assert _frames.frame_reducers() is None
    frame = grouped()
    payload, rebuilt = through_dumps(frame)
    assert b"_rebuild_frame" not in payload and used == [frame]
    pd.testing.assert_frame_equal(rebuilt, frame.reset_index(drop=True))


def test_frames_in_and_out_of_workers_equal_the_sequential_results():
    df = pd.DataFrame(
        {
            "k": RNG.integers(0, 50, 5_000),
            "v": RNG.random(5_000),
            "s": pd.array(RNG.choice(["x", "y", None], 5_000), dtype="string"),
            "t": pd.date_range("2024-01-01", periods=5_000, freq="min"),
        }
    )
    groups = list(df.groupby("k"))
    ours = Parallel(n_jobs=2)(delayed(T.frame_summary)(k, g) for k, g in groups)
    expected = [T.frame_summary(k, g) for k, g in groups]
    assert len(ours) == len(expected) == 50
    for got, want in zip(ours, expected):
        assert_same_as_pickle(want, got)


def test_frames_sharing_their_column_labels_keep_their_own_names():
    # The sender checks the labels of an Index's values once (groupby's groups
    # share them); the name of each Index still travels with each frame.
    df = pd.DataFrame({"k": [0, 0, 1, 2], "a": [1.0, 2.0, 3.0, 4.0]})
    first, second, third = (g for _, g in df.groupby("k"))
    second = second.rename_axis(columns="renamed")
    third = third.rename_axis(columns=1.0)
    shared = {id(f.columns._values) for f in (first, second, third)}
    assert len(shared) == 1 and len({id(f.columns) for f in (first, second, third)}) == 3
    for _ in range(2):  # the second time from the sender's cache
        payload, rebuilt = through_dumps([first, second, third])
        assert (payload.count(b"_rebuild_frame") > 0) == FAST
        assert [f.columns.name for f in rebuilt] == [None, "renamed", 1.0]
        for got, want in zip(rebuilt, (first, second, third)):
            assert_same_as_pickle(want, got)
    mixed = OTHER_INDEXES["mixed labels"]()
    for _ in range(2):  # labels that are not all str: pickle's Index, cached or not
        assert_same_as_pickle(mixed, through_dumps(mixed)[1])


@pytest.mark.parametrize("remote_read", [True, False], ids=["process_vm_readv", "shared-memory"])
def test_frames_a_task_keeps_are_not_overwritten_by_later_batches(remote_read, monkeypatch):
    # A kept frame's blocks may lie in a batch's shared-memory segment: the
    # worker must see that they are still referenced and not reuse it.
    import perfkit.parallel as pp

    pp._shutdown_shared_pool()
    monkeypatch.setattr(pp, "_remote_read_allowed", remote_read)
    frames = [pd.DataFrame({"a": np.full(20_000, float(i)), "n": np.arange(20_000)}) for i in range(8)]
    seen = Parallel(n_jobs=2, batch_size=1, max_nbytes="1K")(
        delayed(T.frame_keep)(i, f) for i, f in enumerate(frames)
    )
    assert all(float(i) == a for kept in seen for i, a in kept), seen
    assert {i for kept in seen for i, _ in kept} == set(range(8))
    pp._shutdown_shared_pool()


def test_column_labels_changed_in_place_travel_as_they_are_now():
    frame = pd.DataFrame({"a": [1.0], "b": [2.0]})
    assert list(through_dumps(frame)[1].columns) == ["a", "b"]
    labels = np.asarray(frame.columns)  # writable, and the Index's own values
    labels[0] = "renamed"
    assert list(frame.columns) == ["renamed", "b"]
    assert_same_as_pickle(frame, through_dumps(frame)[1])
    labels[1] = 7 if labels.dtype == object else "seven"
    assert_same_as_pickle(frame, through_dumps(frame)[1])


def test_long_row_indexes_are_not_kept_alive_by_the_sender():
    import gc
    import weakref

    frame = pd.DataFrame({"a": np.arange(1_000.0)}, index=[f"r{i}" for i in range(1_000)])
    through_dumps(frame)
    values = weakref.ref(frame.index._values)
    del frame
    gc.collect()
    assert values() is None
