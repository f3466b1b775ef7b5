"""No-op tasks for the benchmarks."""

from scheduler import task


@task(name="bench.noop")
async def noop() -> None:
    return None
