"""No-op tasks for the benchmarks: one async, one sync (run on the worker's threads)."""

from scheduler import task


@task(name="bench.noop")
async def noop() -> None:
    return None


@task(name="bench.sync_noop")
def sync_noop() -> None:
    return None


@task(name="bench.send_welcome")
async def send_welcome(**_: object) -> None:
    """Takes the realistic arguments of W2 (``workloads.REALISTIC_ARGS``) and does nothing."""
