"""Direct recursion: fib, factorial, Ackermann, and recursion through C calls."""


def fib(n):
    return n if n < 2 else fib(n - 1) + fib(n - 2)


def fact(n):
    return 1 if n <= 1 else n * fact(n - 1)


def ackermann(m, n):
    if m == 0:
        return n + 1
    if n == 0:
        return ackermann(m - 1, 1)
    return ackermann(m - 1, ackermann(m, n - 1))


def flatten(x):
    if isinstance(x, list):
        out = []
        for item in x:
            out.extend(flatten(item))
        return out
    return [x]


def main():
    fib(12)
    fact(25)
    ackermann(2, 2)
    flatten([1, [2, [3, [4, [5]]]], [[6]], 7])
