"""Work done in threads."""


def crunch(n):
    return sum(i * i for i in range(n))


def step(k):
    return [crunch(j) for j in range(k)]


def work(k):
    total = 0
    for r in range(3):
        total += len(step(k + r))
        sorted([3, 1, 2])
    return total
