"""The ``perfkit`` command. Parsing happens in Rust (``_native.cli_main``);
this module runs the parts that need the interpreter: ``perfkit record``."""

from __future__ import annotations

import builtins as _builtins
import contextlib
import importlib.machinery
import os
import signal
import sys
import threading
import traceback
import types
import zipfile

from perfkit import _native
from perfkit.profiler import Profiler, _unwritable

_PERFKIT_DIR = os.path.dirname(os.path.abspath(__file__))


# Set by `record` when the program it ran ended by Ctrl-C (an uncaught KeyboardInterrupt).
_program_interrupted = False
# Set by `record` from its start: a Ctrl-C before the program runs ends it as Python would end.
_recording = False


def main() -> None:
    try:
        code = _native.cli_main(["perfkit", *sys.argv[1:]])
    except KeyboardInterrupt:  # Ctrl-C in stats or export: the shell's code, not a traceback
        code = 130
        if _recording:
            # While the script was compiled, say: `python script.py` prints
            # this and is killed by SIGINT, so a shell loop running it stops.
            print("KeyboardInterrupt", file=sys.stderr)
            _end_as_interrupted()
    if _program_interrupted:
        _end_as_interrupted()
    sys.exit(code)


def _end_as_interrupted() -> None:
    """Ends as Python ends a program that Ctrl-C stopped: after the
    interpreter's exit (threads joined, atexit handlers run), killed by
    SIGINT rather than exiting with 130, so that a shell loop or make running
    `perfkit record` stops too (a shell takes an exit status of 130 for a
    program that handled the Ctrl-C itself, and goes on). Python does that
    for a KeyboardInterrupt that leaves the main module (the `perfkit`
    script's, or `python -m perfkit`'s runpy); the traceback was printed
    already, where Python prints it, so it is not printed again."""
    sys.excepthook = lambda *exc_info: None
    raise KeyboardInterrupt


def _put_first_on_path(entry: str | None) -> None:
    """Puts `entry` first on sys.path in place of the one the interpreter
    put there for perfkit's launcher (the `perfkit` script's directory, or
    the directory `python -m perfkit` ran in), as `python script.py` or
    `python -m` would have it. Under -P, -I or PYTHONSAFEPATH the interpreter
    put nothing there, and adds nothing for the program either: the path is
    left as it is (its first entry is then one of the program's)."""
    if getattr(sys.flags, "safe_path", False) or sys.flags.isolated:
        return
    if entry is None:
        del sys.path[0]
    else:
        sys.path[0] = entry


def _new_main_module() -> types.ModuleType:
    """A fresh ``__main__`` module for the program, as the interpreter makes one."""
    module = types.ModuleType("__main__")
    module.__builtins__ = _builtins  # the module, as in `python script.py`
    module.__annotations__ = {}  # (the interpreter's __main__ has one from the start)
    return module


def _exit_code(exc: SystemExit) -> int:
    code = exc.code
    if code is None:
        return 0
    if isinstance(code, int):
        return code
    print(code, file=sys.stderr)
    return 1


def _report_exception(exc: BaseException, hook: bool = True) -> None:
    """The traceback as `python script.py` or `python -m module` would print
    it, without the frames of perfkit, and of runpy, that ran the program:
    through the program's ``sys.excepthook`` (a crash reporter's, say) where
    Python would call it."""
    tb = exc.__traceback__
    while tb is not None and _runs_the_program(tb.tb_frame):
        tb = tb.tb_next
    exc.__traceback__ = tb  # (the default hook prints the exception's own)
    if hook:
        try:
            sys.excepthook(type(exc), exc, tb)
            return
        except BaseException as failed:  # noqa: BLE001 - Ctrl-C in the hook too, as Python reports it
            print("Error in sys.excepthook:", file=sys.stderr)
            # (from the hook's own frame: the first is this function's)
            traceback.print_exception(type(failed), failed, failed.__traceback__.tb_next)
            print("\nOriginal exception was:", file=sys.stderr)
    traceback.print_exception(type(exc), exc, tb)


def _not_found_by_runpy(exc: BaseException) -> str | None:
    """Why runpy's own lookup of the ``-m`` module failed (no such module, a
    package without __main__), or None: runpy ends with the SystemExit
    ``python -m`` prints ("<python>: No module named ..."), every frame of
    its traceback perfkit's or runpy's. (One the module raised, even through
    runpy, passes through the module's own frames.)"""
    if not isinstance(exc, SystemExit) or not isinstance(exc.code, str):
        return None
    tb = exc.__traceback__
    while tb is not None:
        if not _runs_the_program(tb.tb_frame):
            return None
        tb = tb.tb_next
    prefix = f"{sys.executable}: "
    return exc.code.removeprefix(prefix)


def _runs_the_program(frame) -> bool:
    """A frame of perfkit's, or of runpy's, that runs the user's program."""
    file = frame.f_code.co_filename
    return (
        file == "<perfkit>"
        or os.path.dirname(os.path.abspath(file)) == _PERFKIT_DIR
        or frame.f_globals.get("__name__") == "runpy"
    )


def _join_threads() -> None:
    """Joins the program's non-daemon threads (where threading has no
    ``_shutdown``)."""
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
    workers: bool = True,
) -> int:
    """Run ``target`` as ``__main__`` under the profiler; write the profile
    whatever way the program ends; return the program's exit code.
    ``workers``: whether perfkit.Parallel's worker processes record too."""
    global _recording
    _recording = True
    if output is None:
        if is_module:
            stem = target.rsplit(".", 1)[-1]
        else:
            # Through abspath: `perfkit record .` and a tab-completed `proj/` name
            # the directory, not "" or "." (a hidden "..prof").
            stem = os.path.splitext(os.path.basename(os.path.abspath(target)))[0]
        output = f"{stem or 'perfkit'}.prof"
    output = os.fspath(output)
    # Where the user meant, though the program may change directory (as cProfile does).
    path = os.path.abspath(output)
    # A profile that cannot be written is said before the program runs, not after.
    refused = _unwritable(path)
    if refused is not None:
        print(f"perfkit: error: cannot write the profile to {output}: {refused[1]}", file=sys.stderr)
        return 2

    if not is_module and os.path.isdir(target) and not os.path.isfile(os.path.join(target, "__main__.py")):
        print(f"perfkit: error: cannot run {target}: no __main__.py in it", file=sys.stderr)
        return 2
    if is_module or zipfile.is_zipfile(target) or os.path.isdir(target):
        # A module, or a zipapp's or directory's __main__ module, run as
        # `python -m`, `python app.pyz` and `python dir` run them (a real
        # __spec__, __package__ ""): by runpy._run_module_as_main, in the
        # module that is __main__, which stays __main__ (and sys.argv as it
        # set it) for the program's threads and atexit handlers once its
        # main code has returned. (runpy.run_module and run_path put the
        # caller's __main__ and argv[0] back at that point.)
        import runpy

        sys.modules["__main__"] = _new_main_module()
        if is_module:
            # The current directory first on the path; argv[0] is "-m" until
            # the module is found, then its file.
            _put_first_on_path(os.getcwd())
            sys.argv[:] = ["-m", *args]
            code = compile("_run_module_as_main(_modname)", "<perfkit>", "exec")
        else:
            sys.argv[:] = [target, *args]
            # The archive or directory first on the path (whatever -P says, as
            # python puts it there), absolute as python makes it and so
            # __file__: a program that changes directory still imports from it.
            _put_first_on_path(None)
            sys.path.insert(0, os.path.abspath(target))
            code = compile("_run_module_as_main('__main__', alter_argv=False)", "<perfkit>", "exec")
        namespace = {"_run_module_as_main": runpy._run_module_as_main, "_modname": target}
    else:
        script = target
        try:
            with open(script, "rb") as fp:
                source = fp.read()
        except OSError as e:
            print(f"perfkit: error: cannot run {target}: {e.strerror}", file=sys.stderr)
            return 2
        sys.argv[:] = [target, *args]
        # As `python script.py` (3.9+): the script's absolute path is its __file__ and its code's file name.
        script = os.path.abspath(script)
        # The directory of the file a symbolic link leads to, as python takes it.
        _put_first_on_path(os.path.dirname(os.path.realpath(script)))
        try:
            # dont_inherit: this module's `from __future__ import annotations`
            # must not reach the program (its annotations became strings).
            code = compile(source, script, "exec", dont_inherit=True)
        except (SyntaxError, ValueError) as e:  # ValueError: null bytes in the source
            # As Python prints it: the error alone, no traceback through perfkit.
            traceback.print_exception(type(e), e, None)
            return 1
        # A real module object as __main__, so that pickling functions and
        # classes defined in the script works as it does under `python script.py`.
        main_module = _new_main_module()
        main_module.__file__ = script
        main_module.__cached__ = None
        main_module.__loader__ = importlib.machinery.SourceFileLoader("__main__", script)
        sys.modules["__main__"] = main_module
        namespace = main_module.__dict__

    profiler = Profiler(builtins=builtins, clock=clock, workers=workers)
    ended: BaseException | None = None  # how the program ended
    profiler.enable()
    try:
        exec(code, namespace)  # noqa: S102 - running the user's program is the point
    except BaseException as e:  # noqa: BLE001 - any way the program ends, the profile is written
        ended = e
    # From here the main thread does perfkit's work, not the program's: it
    # reports how the program ended (as Python does, before it waits for the
    # program's threads) and waits for those threads. Only the main thread
    # leaves the recording; the others go on being recorded until they end.
    profiler._session.leave_this_thread()
    not_found = _not_found_by_runpy(ended) if is_module and ended is not None else None
    if not_found is not None:
        profiler.disable()
        print(f"perfkit: error: cannot run -m {target}: {not_found}", file=sys.stderr)
        return 2
    if ended is None:
        exit_code = 0
    elif isinstance(ended, SystemExit):
        exit_code = _exit_code(ended)
    else:
        exit_code = 130 if isinstance(ended, KeyboardInterrupt) else 1
        try:
            _report_exception(ended)
        except KeyboardInterrupt:
            # A second Ctrl-C, pressed right after the one that ended the
            # program, lands here (Python's own report is C code, which a
            # signal does not interrupt): it cuts the report short, and must
            # not cost the profile or the program's exit status.
            pass
    # What the interpreter does before it exits: threading._shutdown (looked
    # up now: gevent's monkey-patching replaces it) runs the executors' exit
    # hooks, which wake their threads, then joins the non-daemon threads; the
    # interpreter's own call at exit then returns at once.
    shutdown = getattr(threading, "_shutdown", None) or _join_threads
    interrupted: BaseException | None = None
    try:
        shutdown()
    except BaseException as e:  # noqa: BLE001 - Ctrl-C, or a signal handler's exception, while waiting
        interrupted = e
    finally:
        profiler.disable()
    if interrupted is not None:
        # As Python reports it there; the exit status stays the program's.
        print("Exception ignored in: <module 'threading'>", file=sys.stderr)
        _report_exception(interrupted, hook=False)
    _flush_stdout()
    with _ctrl_c_ignored():
        rec = profiler.recording()
        try:
            rec.dump(path)
        except (OSError, _native.ProfileError) as e:
            print(f"perfkit: error: cannot write the profile to {output}: {e}", file=sys.stderr)
            return 2
        print(
            f"perfkit: profile written to {output} ({rec.duration:.3f} s recorded).{_next_step(path, output)}",
            file=sys.stderr,
        )
    if sort is not None:
        exit_code = _print_table(profiler, sort) or exit_code
    if isinstance(ended, KeyboardInterrupt) and exit_code == 130:  # (not the table's EPIPE)
        global _program_interrupted
        _program_interrupted = True
    return exit_code


@contextlib.contextmanager
def _ctrl_c_ignored():
    """Ctrl-C is ignored inside, once the program has ended: writing a large
    profile takes seconds, and an impatient Ctrl-C there raised
    KeyboardInterrupt in perfkit's own code, which lost the profile, or its
    report and the program's exit status. (Left alone where a handler
    installed from C holds SIGINT: Python could not put it back.)

    Ignored by a handler that does nothing, not SIG_IGN: the program's daemon
    threads still run, and a process one of them starts would inherit
    SIG_IGN through exec (a Python one then installs no Ctrl-C handler) and
    ignore Ctrl-C for its whole life; exec resets a handler to the default.
    A fork keeps the handler, so the child gets the program's back."""
    global _sigint_outside, _fork_hook_registered
    previous = signal.getsignal(signal.SIGINT)
    if (
        previous is None
        or previous is signal.SIG_IGN  # (already: started in the background, say; children inherit it)
        or threading.current_thread() is not threading.main_thread()
    ):
        yield
        return
    if not _fork_hook_registered:
        os.register_at_fork(after_in_child=_restore_sigint_in_child)
        _fork_hook_registered = True
    _sigint_outside = previous
    signal.signal(signal.SIGINT, _ignore_signal)
    try:
        yield
    finally:
        _sigint_outside = None
        # (signal.signal first runs a Ctrl-C still pending, with the handler that ignores it)
        signal.signal(signal.SIGINT, previous)


# The program's SIGINT handler while _ctrl_c_ignored holds SIGINT.
_sigint_outside: object = None
_fork_hook_registered = False


def _ignore_signal(signum: int, frame: object) -> None:
    pass


def _restore_sigint_in_child() -> None:
    if _sigint_outside is not None:
        signal.signal(signal.SIGINT, _sigint_outside)


def _next_step(path: str, output: str) -> str:
    """The command that shows the profile's hot spots, quoted to run as
    printed; none for a device or a FIFO (-o /dev/null), which give nothing back."""
    import shlex
    import stat

    try:
        if not stat.S_ISREG(os.stat(path).st_mode):
            return ""
    except OSError:
        return ""
    return f" Hot spots: perfkit stats {shlex.quote(output)} --sort tottime --limit 15"


def _print_table(profiler: Profiler, sort: str) -> int | None:
    """What `python -m cProfile -s KEY` prints; on a closed pipe (`| head`),
    cProfile's exit code (EPIPE), not a traceback. From the recording, as
    cProfile prints it, not from the file: -o may be /dev/null or a FIFO,
    which give nothing back."""
    import pstats

    try:
        # pstats takes its old integer keys as ints only.
        key: str | int = int(sort) if sort.lstrip("-").isdigit() else sort
        pstats.Stats(profiler).strip_dirs().sort_stats(key).print_stats()
        sys.stdout.flush()
    except BrokenPipeError as e:
        sys.stdout = None  # (nothing more to flush at exit)
        return e.errno
    except (ValueError, AttributeError):  # the program closed stdout (or set it to None)
        return None
    return None


def _flush_stdout() -> None:
    """Flushes what the program printed; a program may have closed stdout."""
    try:
        sys.stdout.flush()
    except (ValueError, OSError, AttributeError):
        pass
