"""A user's typed program: tests/test_typing.py type-checks it with ``mypy
--strict`` and runs it, and each ``reveal_type`` must name what the call
returns at run time. A line ending in ``# error: CODE`` (in ``mistakes``,
which only the type checker reads) must be flagged with that code; nothing
else may be."""

from __future__ import annotations

import asyncio
import sys
from typing import Any

import perfkit
from perfkit import Memory, Parallel, delayed, parallel_backend, parallel_config

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing_extensions import reveal_type
else:
    # What each reveal_type saw at run time: (line, value).
    REVEALED: list[tuple[int, Any]] = []

    def reveal_type(value):
        REVEALED.append((sys._getframe(1).f_lineno, value))
        return value


def square(x: int) -> int:
    return x * x


def label(x: int, suffix: str = "") -> str:
    return f"{x}{suffix}"


async def fetch(x: int) -> int:
    return x + 1


def work() -> None:
    sum(range(1000))


def parallel() -> None:
    reveal_type(Parallel(n_jobs=2)(delayed(square)(i) for i in range(4)))
    for value in reveal_type(Parallel(n_jobs=2, return_as="generator")(delayed(label)(i) for i in range(3))):
        reveal_type(value)
    unordered = Parallel(n_jobs=2, return_as="generator_unordered")
    reveal_type(unordered(delayed(square)(i) for i in range(3)))
    with Parallel(n_jobs=2, backend="threads") as pool:
        reveal_type(pool([delayed(label)(1, suffix="a")]))
    with parallel_config(backend="threads", n_jobs=2):
        reveal_type(Parallel()(delayed(square)(i) for i in range(3)))
    with parallel_backend("sequential") as (backend, n_jobs):
        reveal_type(backend)
        reveal_type(n_jobs)
    reveal_type(delayed(square))
    reveal_type(delayed(square).__wrapped__)
    reveal_type(perfkit.cpu_count())
    reveal_type(perfkit.effective_n_jobs(2))


def memory(location: str) -> None:
    memory = Memory(location, verbose=0)

    @memory.cache
    def slow(x: int, y: str = "a") -> list[int]:
        return [x] * len(y)

    reveal_type(slow(3, "bc"))
    reveal_type(slow.call(2))
    reveal_type(slow.call_and_shelve(3).get())
    reveal_type(slow.check_call_in_cache(3))
    slow.clear(warn=False)

    @memory.cache(ignore=["y"])
    def ignoring(x: int, y: str = "a") -> float:
        return x / 2

    reveal_type(ignoring(2))
    reveal_type(memory.cache(fetch))
    reveal_type(asyncio.run(memory.cache(fetch)(1)))
    reveal_type(memory.eval(square, 3))
    reveal_type(Memory(None).cache(square))
    reveal_type(perfkit.hash([1, 2]))
    memory.reduce_size(bytes_limit="1M")
    memory.clear(warn=False)


def profiling(directory: str) -> None:
    with perfkit.Profiler() as prof:
        work()
    prof.dump_stats(f"{directory}/work.prof")
    with perfkit.Profiler(workers=False):
        work()
    reveal_type(prof)

    @perfkit.profile
    def step(n: int) -> str:
        return str(n)

    @perfkit.profile(f"{directory}/step.prof", builtins=False, workers=False)
    def step2(n: int) -> str:
        return str(n)

    reveal_type(step(1))
    reveal_type(step2(2))
    with reveal_type(perfkit.profile(f"{directory}/block.prof")) as block:
        work()
    reveal_type(block)
    perfkit.run("sum(range(10))", f"{directory}/run.prof")
    recording = reveal_type(perfkit.load(f"{directory}/work.prof"))
    reveal_type(recording.stats_dict())
    reveal_type(recording.duration)
    reveal_type(perfkit.__version__)


def mistakes(memory: Memory) -> None:
    delayed(square)("x")  # error: arg-type
    delayed(label)(1, sufix="a")  # error: call-arg
    Parallel(return_as="lists")  # error: type-var
    memory.cache(square)("x")  # error: arg-type
    perfkit.profile(square)("x")  # error: arg-type
    perfkit.Paralel  # error: attr-defined  # noqa: B018


def main(directory: str) -> None:
    parallel()
    memory(directory)
    profiling(directory)


if __name__ == "__main__":
    main(sys.argv[1])
