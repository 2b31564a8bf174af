"""Ends with sys.exit(3)."""

import sys


def work():
    return sum(range(100))


if __name__ == "__main__":
    work()
    sys.exit(3)
