"""Tasks registered by the config tests (imported by dotted name ``tests.unit.sample_tasks``)."""

from scheduler import JobContext
from scheduler.tasks import task


@task(name="sample.digest")
def digest(edition: str = "weekly", to: list[str] | None = None) -> None:
    """A task with keyword arguments, all optional."""


@task(name="sample.ping")
async def ping() -> None:
    """A task without arguments."""


@task(name="sample.anything")
def anything(**kwargs: object) -> None:
    """A task that accepts any keyword arguments."""


@task(name="sample.with_context")
def with_context(ctx: JobContext, order_id: int) -> None:
    """A task whose first parameter is the job's context (not one of the job's arguments)."""
