"""Every kind of call site, run often enough for the specializing
interpreter (3.11+) to rewrite it: plain calls, __init__, __getitem__,
properties, __getattribute__ overrides, generators in for loops and in
yield from, methods, closures, keyword calls, bound methods."""


class Point:
    def __init__(self, x):
        self.x = x

    def norm(self):
        return abs(self.x)

    @property
    def double(self):
        return 2 * self.x


class Seq:
    def __getitem__(self, i):
        if i >= 3:
            raise IndexError(i)
        return i


class Spy:
    def __getattribute__(self, name):
        return 1


def gen(n):
    yield from range(n)


def outer_gen(n):
    yield from gen(n)


def plain(a, b=1):
    return a + b


def kw_only(*, a):
    return a


def make_closure(k):
    def inner(v):
        return v * k

    return inner


def main():
    times = make_closure(3)
    spy = Spy()
    total = 0
    for i in range(40):
        p = Point(i)
        total += p.norm() + p.double + plain(i) + plain(i, b=2) + kw_only(a=i) + times(i)
        total += Seq()[1]
        for j in gen(3):
            total += j
        for j in outer_gen(2):
            total += j
        total += spy.anything
        for item in Seq():
            total += item
    return total
