"""Code that runs while a returning function's locals are freed (``__del__``,
a weakref callback, a generator's ``finally``), and a trace function's calls:
cProfile charges the first to the caller the function returned to, and never
sees the second."""

import sys
import weakref


class Noted:
    def __del__(self):
        note("del")


class Target:
    pass


def note(what):
    return what


def make_and_drop():
    kept = Noted()  # freed as the function returns
    return kept is not None


def watched():
    target = Target()
    weakref.finalize(target, note, "finalized")
    return 1


def closing_gen():
    try:
        yield 1
        yield 2
    finally:
        note("closed")


def first_of_a_generator():
    it = closing_gen()
    return next(it)  # the generator is closed as this frame is freed


def tracer(frame, event, arg):
    note("trace")  # a debugger's or coverage's work: not the program's


def traced(x):
    return x + 1


def main():
    for _ in range(2):
        make_and_drop()
        watched()
        first_of_a_generator()
    previous = sys.gettrace()
    sys.settrace(tracer)
    try:
        for i in range(3):
            traced(i)
    finally:
        sys.settrace(previous)
