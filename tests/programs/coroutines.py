"""Coroutines driven by hand (no event loop): await chains, a custom
awaitable, an async generator, an exception thrown through awaits."""


class Ready:
    def __init__(self, value):
        self.value = value

    def __await__(self):
        yield self
        return self.value


async def leaf(x):
    value = await Ready(x)
    return value * 2


async def middle(n):
    total = 0
    for i in range(n):
        total += await leaf(i)
    return total


async def agen(n):
    for i in range(n):
        await Ready(i)
        yield i


async def consume(n):
    out = []
    async for v in agen(n):
        out.append(v)
    return out


async def failing():
    await Ready(0)
    raise KeyError("k")


async def top():
    a = await middle(4)
    b = await consume(3)
    try:
        await failing()
    except KeyError:
        pass
    return a, b


def drive(coro):
    try:
        while True:
            coro.send(None)
    except StopIteration as stop:
        return stop.value


def main():
    return drive(top())
