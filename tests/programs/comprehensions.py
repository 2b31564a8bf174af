"""Comprehensions: list, set, dict, nested, generator expressions."""


def square(x):
    return x * x


def is_even(x):
    return x % 2 == 0


def main():
    [square(x) for x in range(10)]
    {x % 3 for x in range(10)}
    {x: square(x) for x in range(5)}
    [
        [square(i * j) for j in range(3)]
        for i in range(3)
    ]
    list(x for x in range(5) if is_even(x))  # noqa: C400 (a generator on purpose)
    sum(square(x) for x in range(5))
    [y for x in range(4) if is_even(x) for y in (x, -x)]
    {k: v for k, v in zip("abc", range(3))}
