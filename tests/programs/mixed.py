"""Everything at once, for the pstats and CLI tests."""

import time

from . import ccalls, classes, comprehensions, coroutines, exceptions, generators, lambdas, mutual, recursion


def main():
    for mod in (recursion, mutual, generators, coroutines, exceptions, ccalls, classes, lambdas, comprehensions):
        mod.main()
    time.sleep(0.001)
