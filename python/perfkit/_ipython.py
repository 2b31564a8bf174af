"""perfkit's IPython extension (``%load_ext perfkit``): the ``%perfkit``
line magic and the ``%%perfkit`` cell magic, snakeviz's magics without a
server. The code runs in the user's namespace under :class:`Profiler`, as
``%prun`` runs it under cProfile, and the viewer is shown inline from the
static export (an ``<iframe srcdoc>``), so it works where the kernel's
ports cannot be reached (remote Jupyter, Colab, VS Code).

Imported by :func:`perfkit.load_ipython_extension` only: ``import perfkit``
does not import IPython.
"""

from __future__ import annotations

import os
import pstats
import re

from IPython.core.error import UsageError
from IPython.core.magic import Magics, line_cell_magic, magics_class, no_var_expand
from IPython.display import display

from perfkit._native import ProfileError
from perfkit.profiler import Profiler, _check_sort_key, _unwritable

_USAGE = "usage: %perfkit [-o FILE] [-s SORT [-l LIMIT]] statement, or %%perfkit [...] atop a cell"
# How much of the profiled code names the page (its title) when no -o file does.
_LABEL_CHARS = 60


@magics_class
class PerfkitMagics(Magics):
    @no_var_expand
    @line_cell_magic
    def perfkit(self, line: str, cell: str | None = None) -> None:
        """Profile a statement (``%perfkit``) or a cell (``%%perfkit``) and
        show perfkit's viewer inline.

        The code runs in the notebook's namespace, as ``%prun`` runs it: what
        it assigns stays, an exception it raises is raised (no profile is
        shown or written), a SystemExit is reported and the profile shown.

        Options:
          -o FILE  also write the profile (a ``.prof``: pstats, snakeviz and
                   ``perfkit view`` open it)
          -s SORT  print pstats' table sorted by SORT (``cumulative``,
                   ``tottime``, ... as ``pstats.Stats.sort_stats`` takes it)
                   instead of showing the viewer; given again, the next key
                   breaks ties (``-s cumulative -s tottime``), as in %prun
          -l LIMIT with -s: the rows printed, as %prun's -l (an integer: that
                   many; a fraction: that share; else a regular expression
                   on filename:lineno(function); given again, one after
                   the other)
        """
        try:
            # (list_all, as %prun parses: each option's values, in order)
            opts, statement = self.parse_options(line, "o:s:l:", list_all=True, posix=False)
        except UsageError as e:
            raise UsageError(f"%perfkit: {e}; {_USAGE}") from None
        source = statement if cell is None else statement + "\n" + cell
        if not source.strip():
            raise UsageError(f"%perfkit: nothing to profile; {_USAGE}")
        if len(opts.get("o", ())) > 1:
            raise UsageError(f"%perfkit: -o given {len(opts['o'])} times: the profile goes to one file")
        output = _unquoted(opts["o"][0]) if "o" in opts else None
        sort = tuple(opts["s"]) if "s" in opts else None
        limits = tuple(_limit(text) for text in opts.get("l", ()))
        if limits and sort is None:
            raise UsageError("%perfkit: -l limits the table that -s prints: give -s SORT too")
        path = None
        if output is not None:
            _check_writable(output)
            # Where the user meant, though the code may change directory (as
            # `python -m cProfile -o` and `perfkit record -o` take it), and
            # where it was checked.
            path = os.path.abspath(output)
        for key in sort or ():
            try:
                _check_sort_key(key)
            except ValueError:
                raise UsageError(f"%perfkit: -s {key}: not one of pstats' sort keys") from None

        profiler = Profiler()
        try:
            profiler.runctx(self.shell.transform_cell(source), self.shell.user_ns, self.shell.user_ns)
        except SystemExit:
            # (%prun's own words: the profile of the code up to sys.exit is shown)
            print("*** SystemExit exception caught in code being profiled.")
        except RuntimeError as e:
            if profiler._started:
                raise  # the profiled code's own
            # enable() refused: another profiler records (%perfkit inside %perfkit, perfkit record).
            raise UsageError(f"%perfkit: {e}") from None

        recording = profiler.recording()
        if sort is not None:
            # (Profiler.print_stats's table, with %prun's restrictions)
            pstats.Stats(profiler).strip_dirs().sort_stats(*sort).print_stats(*limits)
        else:
            first_line = next((s.strip() for s in source.splitlines() if s.strip()), "")
            if len(first_line) > _LABEL_CHARS:
                first_line = first_line[: _LABEL_CHARS - 1] + "…"
            page = recording.to_html(label=output or first_line, iframe=True)
            display({"text/html": page, "text/plain": repr(recording)}, raw=True)
        if path is not None:
            try:
                recording.dump(path)
            except (OSError, ProfileError) as e:
                raise UsageError(f"%perfkit: cannot write the profile: {e}") from None


def _limit(text: str) -> int | float | str:
    """A -l LIMIT as %prun reads it: an int, else a float, else a regular expression."""
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    try:
        re.compile(text)
    except re.error as e:
        raise UsageError(f"%perfkit: -l {text}: not a regular expression ({e})") from None
    return text


def _unquoted(path: str) -> str:
    # (posix=False, as %prun parses: the statement keeps its quotes, and so does -o's file)
    if len(path) >= 2 and path[0] == path[-1] and path[0] in "'\"":
        return path[1:-1]
    return path


def _check_writable(output: str) -> None:
    """Refuses, before the code runs, a file that could not be written after
    it: what `perfkit record -o` refuses."""
    if not output:
        raise UsageError("%perfkit: -o: no file name")
    refused = _unwritable(os.path.abspath(output))
    if refused is not None:
        raise UsageError(f"%perfkit: cannot write the profile to {output}: {refused[1]}")


def load_ipython_extension(ipython) -> None:
    ipython.register_magics(PerfkitMagics)
