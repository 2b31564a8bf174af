"""C calls: builtins, methods of built-in types (bound, unbound, stored),
C functions calling back into Python (sorted's key, map, reduce, getattr)."""

import functools
import math
import operator


class Box:
    def __init__(self, v):
        self._v = v

    @property
    def value(self):
        return self._v


def double(x):
    return 2 * x


def main():
    data = [5, 3, 8, 1, 9, 2]
    n = len(data)
    sorted(data, key=lambda v: -v)
    out = []
    for x in data:
        out.append(math.sqrt(x))
    append = out.append
    append(0.0)
    list.append(out, 1.0)
    ",".join(str(x) for x in data)
    d = {"a": 1}
    d.get("a")
    d.get("b", 0)
    list(map(double, data))
    functools.reduce(operator.add, data)
    functools.reduce(lambda a, b: a + b, data)
    boxes = [Box(x) for x in data]
    attr = "value"
    [getattr(b, attr) for b in boxes]
    max(boxes, key=lambda b: b.value)
    isinstance(n, int)
    hasattr(boxes[0], "value")
    "abc".upper()
    str.upper("abc")
    min(data)
    sum(data)
    any(x > 8 for x in data)
    divmod(7, 2)
    math.floor(2.5)
