"""The task of the three-replica flow-control test (imported by the replicas via `imports:`)."""

import asyncio

from scheduler import task


@task(name="flow3.nap")
async def nap(ms: int) -> None:
    await asyncio.sleep(ms / 1000)
