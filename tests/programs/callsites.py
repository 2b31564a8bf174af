"""One function reached along different paths: f from a and from b; g
from a and from b, but g calls h only when called from a."""


def f(n):
    total = 0
    for i in range(n):
        total += i
    return total


def h():
    return f(10)


def g(from_a):
    if from_a:
        return h()
    return 0


def a():
    for _ in range(3):
        f(20000)
    g(True)
    g(True)


def b():
    for _ in range(5):
        f(100)
    g(False)


def main():
    a()
    b()
