"""The ``perfkit`` command. Parsing happens in Rust (``_native.cli_main``);
this module runs the parts that need the interpreter: ``perfkit record``."""

from __future__ import annotations

import os
import sys
import threading
import traceback
import types

from perfkit import _native
from perfkit.profiler import Profiler


def main() -> None:
    sys.exit(_native.cli_main(["perfkit", *sys.argv[1:]]))


def _exit_code(exc: SystemExit) -> int:
    code = exc.code
    if code is None:
        return 0
    if isinstance(code, int):
        return code
    print(code, file=sys.stderr)
    return 1


def _print_program_traceback(exc: BaseException) -> None:
    """The traceback as `python script.py` or `python -m module` would print
    it: without the frames of perfkit, and of runpy, that ran the program."""
    tb = exc.__traceback__
    perfkit_dir = os.path.dirname(os.path.abspath(__file__))
    while tb is not None and (
        os.path.dirname(os.path.abspath(tb.tb_frame.f_code.co_filename)) == perfkit_dir
        or tb.tb_frame.f_code.co_filename == "<perfkit>"
        or tb.tb_frame.f_globals.get("__name__") == "runpy"
    ):
        tb = tb.tb_next
    traceback.print_exception(type(exc), exc, tb)


def _not_found_by_runpy(exc: BaseException) -> bool:
    """An ImportError raised by runpy's own lookup of the module (no such
    module, a package without __main__), not by the module's code."""
    if not isinstance(exc, ImportError):
        return False
    tb = exc.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    return tb is not None and tb.tb_frame.f_globals.get("__name__") == "runpy"


def _wait_for_threads() -> None:
    """Waits, still recording, for the program's non-daemon threads, as
    the interpreter does before it exits."""
    main = threading.main_thread()
    while True:
        left = [t for t in threading.enumerate() if t is not main and not t.daemon and t.is_alive()]
        if not left:
            return
        for thread in left:
            thread.join()


def record(
    target: str,
    is_module: bool,
    args: list[str],
    output: str | None,
    clock: str,
    builtins: bool,
    sort: str | None = None,
) -> int:
    """Run ``target`` as ``__main__`` under the profiler; write the profile
    whatever way the program ends; return the program's exit code."""
    if output is None:
        stem = target.rsplit(".", 1)[-1] if is_module else os.path.splitext(os.path.basename(target))[0]
        output = f"{stem or 'perfkit'}.prof"
    output = os.fspath(output)
    # Where the user meant, though the program may change directory (as cProfile does).
    path = os.path.abspath(output)

    if is_module:
        import runpy

        # As `python -m` does: the current directory comes first on the path.
        sys.path.insert(0, os.getcwd())
        sys.argv[:] = [target, *args]
        code = compile("_run_module(_modname, run_name='__main__', alter_sys=True)", "<perfkit>", "exec")
        namespace = {"_run_module": runpy.run_module, "_modname": target}
    else:
        try:
            with open(target, "rb") as fp:
                source = fp.read()
        except OSError as e:
            print(f"perfkit: error: cannot run {target}: {e.strerror}", file=sys.stderr)
            return 2
        sys.argv[:] = [target, *args]
        sys.path.insert(0, os.path.dirname(os.path.abspath(target)))
        try:
            code = compile(source, target, "exec")
        except SyntaxError:
            traceback.print_exc()
            return 1
        # A real module object as __main__, so that pickling functions and
        # classes defined in the script works as it does under `python script.py`.
        main_module = types.ModuleType("__main__")
        main_module.__file__ = target
        main_module.__builtins__ = __builtins__
        sys.modules["__main__"] = main_module
        namespace = main_module.__dict__

    profiler = Profiler(builtins=builtins, clock=clock)
    exit_code = 0
    profiler.enable()
    try:
        try:
            exec(code, namespace)  # noqa: S102 - running the user's program is the point
        except SystemExit as e:
            exit_code = _exit_code(e)
        except KeyboardInterrupt as e:
            _print_program_traceback(e)
            exit_code = 130
        except BaseException as e:  # noqa: BLE001 - any way the program ends, the profile is written
            if is_module and _not_found_by_runpy(e):
                print(f"perfkit: error: cannot run -m {target}: {e}", file=sys.stderr)
                return 2
            _print_program_traceback(e)
            exit_code = 1
        try:
            _wait_for_threads()
        except KeyboardInterrupt:
            exit_code = 130
    finally:
        profiler.disable()
    sys.stdout.flush()
    rec = profiler.recording()
    try:
        rec.dump(path)
    except (OSError, _native.ProfileError) as e:
        print(f"perfkit: error: cannot write the profile to {output}: {e}", file=sys.stderr)
        return 2
    if sort is not None:
        import pstats

        # What `python -m cProfile -s KEY` prints.
        pstats.Stats(path).strip_dirs().sort_stats(sort).print_stats()
        sys.stdout.flush()
    print(
        f"perfkit: profile written to {output} ({rec.duration:.3f} s recorded). "
        f"Hot spots: perfkit stats {output} --sort tottime --limit 15",
        file=sys.stderr,
    )
    return exit_code
