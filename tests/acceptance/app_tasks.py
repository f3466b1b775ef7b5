"""Tasks used by the acceptance tests (imported by the replicas through the YAML `imports`)."""

from scheduler import task


@task(name="acceptance.tick")
def tick() -> None:
    pass


@task(name="acceptance.always_fails", max_attempts=3, backoff_base_s=0.05, backoff_max_s=0.1)
def always_fails() -> None:
    raise ValueError("this task always fails")


@task(name="acceptance.echo")
async def echo(message: str) -> None:
    if not message:
        raise ValueError("empty message")


@task(name="acceptance.slow_once", max_attempts=3)
def slow_once(marker: str) -> None:
    """First attempt: leave a marker and block (the test kills the worker); later: return."""
    import os
    import time

    if not os.path.exists(marker):
        with open(marker, "w") as f:
            f.write(str(os.getpid()))
        time.sleep(120)
