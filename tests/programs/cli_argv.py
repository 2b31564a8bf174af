"""Records how it was run: argv, __name__, and calls a few functions."""

import json
import os
import sys


def leaf(i):
    return i * 2


def branch(n):
    return [leaf(i) for i in range(n)]


def main():
    branch(4)
    branch(6)
    with open(os.environ["PK_REPORT"], "w") as fp:
        json.dump({"argv": sys.argv, "name": __name__}, fp)


if __name__ == "__main__":
    main()
