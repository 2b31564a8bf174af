"""Generators: plain, delegating (yield from), send/throw/close, genexprs."""


def count_up(n):
    i = 0
    while i < n:
        yield i
        i += 1


def squares(n):
    for i in count_up(n):
        yield i * i


def delegate(n):
    yield from squares(n)
    yield from count_up(2)


def accumulator():
    total = 0
    while True:
        value = yield total
        if value is None:
            break
        total += value
    return total


def cleanup():
    return None


def closing():
    try:
        yield 1
        yield 2
    finally:
        cleanup()


def thrower():
    try:
        yield 1
    except ValueError:
        yield "caught"


def main():
    list(count_up(5))
    sum(squares(6))
    list(delegate(4))
    acc = accumulator()
    next(acc)
    acc.send(3)
    acc.send(4)
    try:
        acc.send(None)
    except StopIteration:
        pass
    c = closing()
    next(c)
    c.close()
    t = thrower()
    next(t)
    t.throw(ValueError("x"))
    t.close()
    sum(x * 2 for x in range(10))
    never = count_up(3)  # created, never started
    del never
