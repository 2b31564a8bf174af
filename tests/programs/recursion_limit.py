"""Recursion that ends in RecursionError: the call refused at the limit
never starts, so cProfile does not count it."""


def endless(n):
    return endless(n + 1)


def ping(n):
    return pong(n + 1)


def pong(n):
    return ping(n + 1)


def main():
    for start in (endless, ping):
        try:
            start(0)
        except RecursionError:
            pass
