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


@task(name="failover.record")
def record(key: str) -> None:
    """Append ``key`` to the file named by FAILOVER_RUNS_FILE: a record of executions
    that no database failover can lose (tests/acceptance/test_failover.py)."""
    import os

    with open(os.environ["FAILOVER_RUNS_FILE"], "a", encoding="utf-8") as runs:
        runs.write(key + "\n")  # one short O_APPEND write: lines never interleave
