"""Lambdas: closures, composition, as sort keys and filters, in a dict."""


def make_adder(n):
    return lambda x: x + n


def compose(f, g):
    return lambda x: f(g(x))


def main():
    add3 = make_adder(3)
    inc = make_adder(1)
    both = compose(add3, inc)
    [both(i) for i in range(5)]
    sorted(["bb", "a", "ccc"], key=lambda s: len(s))
    ops = {
        "sq": lambda v: v * v,
        "neg": lambda v: -v,
    }
    for name in sorted(ops):
        ops[name](4)
    list(filter(lambda v: v % 2, range(6)))
    outer = lambda: inner()
    inner = lambda: 1
    outer()
