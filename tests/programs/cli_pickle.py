"""Pickles a function and a class defined in this script (as __main__)."""

import pickle


class Point:
    def __init__(self, x, y):
        self.x = x
        self.y = y


def double(x):
    return 2 * x


if __name__ == "__main__":
    f = pickle.loads(pickle.dumps(double))
    assert f(21) == 42
    p = pickle.loads(pickle.dumps(Point(1, 2)))
    assert (p.x, p.y) == (1, 2)
    assert type(p).__module__ == "__main__"
    print("pickled ok")
