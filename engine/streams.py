"""Interleaving delta streams: several prompts of one /v1/completions call, or the choices of
an engine that runs each choice as its own sequence (entropy-adaptive switching)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import aclosing

from engine.protocol import GenerationDelta


async def merge_streams(streams: list[AsyncIterator[GenerationDelta]]) -> AsyncIterator[tuple[int, GenerationDelta]]:
    """Interleave several streams as (stream index, delta), as they arrive; closing this closes them all."""
    if len(streams) == 1:
        async with aclosing(streams[0]) as only:
            async for delta in only:
                yield 0, delta
        return
    queue: asyncio.Queue[tuple[int, GenerationDelta | None | BaseException]] = asyncio.Queue()

    async def pump(index: int, stream: AsyncIterator[GenerationDelta]) -> None:
        try:
            async with aclosing(stream) as owned:
                async for delta in owned:
                    await queue.put((index, delta))
            await queue.put((index, None))
        except Exception as error:  # surfaced to the consumer below
            await queue.put((index, error))

    tasks = [asyncio.create_task(pump(i, stream)) for i, stream in enumerate(streams)]
    try:
        remaining = len(tasks)
        while remaining:
            index, item = await queue.get()
            if item is None:
                remaining -= 1
            elif isinstance(item, BaseException):
                raise item
            else:
                yield index, item
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
