"""Says "ready" on stdout, then works until interrupted."""

import sys
import time


def tick(i):
    return i * i


def spin():
    i = 0
    while True:
        tick(i)
        i += 1
        if i % 1000 == 0:
            time.sleep(0.001)


if __name__ == "__main__":
    print("ready", flush=True)
    spin()
    sys.exit(0)
