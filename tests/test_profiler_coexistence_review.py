"""perfkit's profiler beside the other tools a user runs at the same time:
profilers and tracers that hook the same interpreter (yappi, VizTracer,
pyinstrument, coverage, debuggers). Each either records beside perfkit, with
both results right, or one of the two refuses with one line naming the
other; perfkit never silently breaks the other tool, nor records wrong.

cProfile is the anchor: perfkit does no worse than it does in the same place.
"""

from __future__ import annotations

import pstats
import sys
import threading
import warnings

import perfkit
import pytest
import yappi
from conftest import gc_disabled, run_cprofile, summarize

pytestmark = pytest.mark.version_sensitive

needs_monitoring = pytest.mark.skipif(sys.version_info < (3, 12), reason="sys.monitoring is 3.12+")


def _leaf(x):
    return len(str(x))


def _work():
    total = 0
    for i in range(40):
        total += _leaf(i)
    return total


def _rows(stats: dict) -> dict:
    """(cc, nc) of this file's functions and of the C functions they call."""
    mine = {k: v for k, v in summarize(stats).funcs.items() if k[0] == __file__}
    called = summarize(stats).edges
    for (caller, callee), (_cc, nc) in called.items():
        if caller[0] == __file__ and callee[0] == "~":
            mine[callee] = mine.get(callee, (0, 0))[0] + nc, mine.get(callee, (0, 0))[1] + nc
    return mine


def _hooks():
    state = [sys.getprofile(), sys.gettrace(), threading._profile_hook]
    if sys.version_info >= (3, 12):
        m = sys.monitoring
        state += [(m.get_tool(i), m.get_events(i), m.get_local_events(i, _leaf.__code__)) for i in range(6)]
    return state


def _yappi_counts() -> dict:
    return {s.name: s.ncall for s in yappi.get_func_stats() if s.module == __file__}


def test_perfkit_does_not_silently_take_yappis_hook():
    """yappi sets its C profile function with no object, so sys.getprofile()
    is None while it profiles. Before 3.12 perfkit's full mode replaced it in
    every thread with no word, and stopping left no profile function at all:
    yappi recorded nothing. perfkit now refuses, naming yappi's module; from
    3.12 the two hooks differ and both record."""
    _work()
    before = _hooks()
    want = _rows(run_cprofile(_work).stats)
    yappi.clear_stats()
    yappi.start(builtins=True)
    prof = perfkit.Profiler()
    try:
        if sys.version_info < (3, 12):
            with pytest.raises(RuntimeError, match=r"_yappi.*stop it first"):
                prof.enable()
        else:
            prof.enable()
        with gc_disabled():
            _work()
        prof.disable()
    finally:
        yappi.stop()
    assert _yappi_counts() == {"_work": 1, "_leaf": 40}
    yappi.clear_stats()
    if sys.version_info >= (3, 12):
        assert _rows(pstats.Stats(prof).stats) == want
    assert _hooks() == before


@needs_monitoring
@pytest.mark.parametrize("other_stops_first", [False, True])
@pytest.mark.parametrize("builtins", [True, False])
def test_a_tool_that_takes_the_profiler_slot_keeps_it_when_perfkit_stops(builtins, other_stops_first):
    """VizTracer (1.x, 3.12+) frees sys.monitoring's profiler id, whoever holds
    it, and takes it. Started while perfkit recorded, it then lost all its
    events the moment perfkit stopped (perfkit cleared the id's events and
    callbacks without asking whose they were): its trace ended there, with no
    word; and perfkit's profile silently lacked the C calls made meanwhile.
    Now perfkit leaves the other tool's events alone and warns, in one line
    naming it, what its own profile lacks."""
    m, events = sys.monitoring, sys.monitoring.events
    before = _hooks()
    seen = []

    def on_start(code, offset):
        if code is _leaf.__code__:
            seen.append(offset)

    prof = perfkit.Profiler(builtins=builtins)
    prof.enable()
    try:
        # What VizTracer's tracer does on start (snaptrace.c, enable_monitoring).
        m.free_tool_id(m.PROFILER_ID)
        m.use_tool_id(m.PROFILER_ID, "viztracer")
        m.register_callback(m.PROFILER_ID, events.PY_START, on_start)
        m.set_events(m.PROFILER_ID, events.PY_START)
        _work()
        if other_stops_first:
            m.set_events(m.PROFILER_ID, 0)
            m.register_callback(m.PROFILER_ID, events.PY_START, None)
            m.free_tool_id(m.PROFILER_ID)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            prof.disable()
        _work()  # the other tool records on after perfkit stopped
    finally:
        prof.disable()
        if m.get_tool(m.PROFILER_ID) == "viztracer":
            m.set_events(m.PROFILER_ID, 0)
            m.register_callback(m.PROFILER_ID, events.PY_START, None)
            m.free_tool_id(m.PROFILER_ID)
    assert len(seen) == (40 if other_stops_first else 80)
    lines = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
    if builtins:
        who = "another tool" if other_stops_first else "'viztracer'"
        assert len(lines) == 1 and who in lines[0] and "C calls" in lines[0], lines
    else:
        assert lines == []  # its profile lacks nothing: Python calls come from the frame hook
    assert {k[2]: v for k, v in _rows(pstats.Stats(prof).stats).items() if k[0] != "~"} == {
        "_work": (1, 1),
        "_leaf": (40, 40),
    }
    assert _hooks() == before
    # perfkit records normally afterwards.
    again = perfkit.Profiler(builtins=builtins)
    with gc_disabled():
        again.runcall(_work)
    want = _rows(run_cprofile(_work).stats)
    if not builtins:
        want = {k: v for k, v in want.items() if k[0] != "~"}
    assert _rows(pstats.Stats(again).stats) == want


@needs_monitoring
def test_a_refusal_for_the_profiler_slot_names_the_tool_holding_it():
    """line_profiler (kernprof, 3.12+) holds sys.monitoring's profiler id
    under its own name; perfkit's refusal guessed "(cProfile?)" whoever held
    it (cProfile's own ValueError names no one). It names the holder."""
    slot = sys.monitoring.PROFILER_ID
    sys.monitoring.use_tool_id(slot, "line_profiler")
    try:
        with pytest.raises(RuntimeError) as refused:
            perfkit.Profiler().enable()
    finally:
        sys.monitoring.free_tool_id(slot)
    message = str(refused.value)
    assert "'line_profiler'" in message and "cProfile" not in message, message
    assert message.count("\n") == 0
