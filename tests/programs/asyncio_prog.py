"""Coroutines on asyncio's event loop (only this file's rows are compared:
the loop's internals are not part of the contract)."""

import asyncio


async def step(i):
    await asyncio.sleep(0)
    return i


async def gather_all():
    return await asyncio.gather(*(step(i) for i in range(5)))


async def amain():
    await gather_all()
    for i in range(3):
        await step(i)


def main():
    asyncio.run(amain())
