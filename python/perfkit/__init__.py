"""perfkit: the performance toolkit for Python, with a Rust core.

Profile with :class:`Profiler` / :func:`profile` / :func:`run` (cProfile's API,
cheaper, and files that pstats and snakeviz open); the ``perfkit`` command
records, prints and exports profiles.
"""

from perfkit._native import ProfileError, Recording, __version__, load
from perfkit.profiler import Profiler, profile, run, runctx

__all__ = [
    "ProfileError",
    "Profiler",
    "Recording",
    "__version__",
    "load",
    "profile",
    "run",
    "runctx",
]
