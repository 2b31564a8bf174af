"""Small differences from the tools perfkit replaces (joblib's Parallel and
Memory, pstats), each checked side by side with the anchor (helper review:
fidelity)."""

from __future__ import annotations

import joblib
import perfkit
import pytest


class _Boom(Exception):
    pass


def _drawn_before(make_call, tasks):
    """The results a generator call gave before it raised _Boom, and the
    count the exception carried."""
    got = []
    with pytest.raises(_Boom) as raised:
        for result in make_call()(tasks):
            got.append(result)  # noqa: PERF402 (one by one: those drawn before the error)
    return got, raised.value.args[0]


@pytest.mark.parametrize(
    "settings",
    [
        {"n_jobs": 1},
        {"n_jobs": 2, "backend": "sequential"},
        {"n_jobs": 2, "backend": "threads"},
        {"n_jobs": 2, "backend": "processes"},
    ],
)
def test_a_raising_callback_stops_every_backend_before_the_result_it_counts(settings):
    # The sequential backend called the callback after handing the task's
    # result over: one more result than the threads and processes backends
    # (which count a batch before yielding it), and than joblib's sequential
    # calls, whose print_progress runs before the result is yielded.
    class JoblibStops(joblib.Parallel):
        def print_progress(self):
            if self.n_completed_tasks >= 1:
                raise _Boom(self.n_completed_tasks)

    def tasks(delayed):
        return [delayed(int)(i) for i in range(5)]

    theirs = _drawn_before(lambda: JoblibStops(n_jobs=1, return_as="generator"), tasks(joblib.delayed))
    assert theirs == ([], 1)

    def stop(done, total):
        if done >= 1:
            raise _Boom(done)

    ours = _drawn_before(
        lambda: perfkit.Parallel(return_as="generator", batch_size=1, callback=stop, **settings),
        tasks(perfkit.delayed),
    )
    assert ours == theirs

    class PerfkitStops(perfkit.Parallel):
        def print_progress(self):
            if self.n_completed_tasks >= 1:
                raise _Boom(self.n_completed_tasks)

    ours = _drawn_before(
        lambda: PerfkitStops(return_as="generator", batch_size=1, **settings), tasks(perfkit.delayed)
    )
    assert ours == theirs
