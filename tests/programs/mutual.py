"""Mutual recursion: a two-cycle and a three-cycle."""


def is_even(n):
    return True if n == 0 else is_odd(n - 1)


def is_odd(n):
    return False if n == 0 else is_even(n - 1)


def tri_a(n):
    return tri_b(n) if n > 0 else 0


def tri_b(n):
    return tri_c(n)


def tri_c(n):
    return tri_a(n - 1) + 1


def main():
    is_even(40)
    is_odd(25)
    tri_a(8)
