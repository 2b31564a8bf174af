"""Prints "ready", then defines and calls many distinct functions (a large
profile to write), then exits: for interrupting a record at random moments."""

import sys

NAMESPACE = {}
for i in range(3000):
    exec(f"def fn_{i}(x):\n    return x + {i}\n", NAMESPACE)  # noqa: S102


def call_all():
    total = 0
    for i in range(3000):
        total += NAMESPACE[f"fn_{i}"](i)
    return total


if __name__ == "__main__":
    print("ready", flush=True)
    for _ in range(int(sys.argv[1]) if len(sys.argv) > 1 else 3):
        call_all()
