"""Sleeps, then computes: wall and CPU clocks disagree on the sleep."""

import time


def nap():
    time.sleep(0.2)


def compute():
    return sum(i * i for i in range(20000))


if __name__ == "__main__":
    nap()
    compute()
