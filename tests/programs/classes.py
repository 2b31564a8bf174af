"""Class methods: __init__ and super(), classmethod, staticmethod, property,
dunders reached through builtins and syntax."""


class Shape:
    created = 0

    def __init__(self, name):
        self.name = name
        Shape.created += 1

    def area(self):
        return 0

    def describe(self):
        return f"{self.name}:{self.area()}"

    def __repr__(self):
        return f"Shape({self.name!r})"

    def __eq__(self, other):
        return isinstance(other, Shape) and self.area() == other.area()

    __hash__ = object.__hash__

    @classmethod
    def unit(cls):
        return cls("unit")

    @staticmethod
    def scale(x, k):
        return x * k


class Square(Shape):
    def __init__(self, side):
        super().__init__("square")
        self.side = side

    def area(self):
        return self.side * self.side

    @property
    def perimeter(self):
        return Shape.scale(self.side, 4)


class Registry:
    def __init__(self):
        self.items = []

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        return self.items[i]

    def __call__(self, item):
        self.items.append(item)
        return self

    def __iter__(self):
        return iter(self.items)

    def __contains__(self, item):
        return any(item is x for x in self.items)


def main():
    reg = Registry()
    for k in range(1, 4):
        reg(Square(k))
    reg(Shape.unit())
    len(reg)
    reg[0]
    [s.describe() for s in reg]
    repr(reg[3])
    same = reg[0] == reg[1]
    sum(s.perimeter for s in reg if isinstance(s, Square))
    found = reg[2] in reg
    Shape.scale(3, 5)
    return same, found
