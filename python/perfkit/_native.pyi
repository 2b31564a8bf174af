"""Type stubs for perfkit's Rust extension module."""

from os import PathLike
from typing import Dict, List, Sequence, Tuple, Union

__version__: str

_Key = Tuple[str, int, str]
_Edge = Tuple[int, int, float, float]
_StatsDict = Dict[_Key, Tuple[int, int, float, float, Dict[_Key, _Edge]]]
_Node = Tuple[int, int, int, int, int]

class ProfileError(ValueError):
    """A profile file could not be read or written."""

class Session:
    """A recording that hooks into the interpreter while enabled (one at a time per process)."""

    def __init__(self, builtins: bool = True, clock: str = "wall", hidden_files: Sequence[str] = ...) -> None: ...
    def enable(self) -> None:
        """Start recording; RuntimeError if another profiler or frame-evaluation hook is active."""
    def disable(self) -> None: ...
    def clear(self) -> None: ...
    @property
    def enabled(self) -> bool: ...
    @property
    def builtins(self) -> bool: ...
    def recording(self) -> Recording: ...

class Recording:
    """An exact (or, from a foreign cProfile file, inferred) call tree."""

    def stats_dict(self) -> _StatsDict:
        """The pstats dictionary, as ``cProfile.Profile().stats`` holds it."""
    def dump(self, path: Union[str, PathLike[str]]) -> None:
        """Write a pstats-compatible ``.prof`` that also carries the exact tree (atomic)."""
    def threads(self) -> List[Tuple[str, int, int, List[_Node]]]:
        """``(name, thread_id, pid, nodes)``; nodes are ``(func, parent, calls, own_ns, total_ns)``, root first."""
    def funcs(self) -> List[_Key]: ...
    @property
    def exact(self) -> bool: ...
    @property
    def duration(self) -> float: ...

def load(path: Union[str, PathLike[str]]) -> Recording:
    """Read a perfkit or cProfile ``.prof``, collapsed stacks or speedscope JSON."""

def cli_main(argv: List[str]) -> int:
    """Run the ``perfkit`` command line; returns the exit code."""
