"""Tasks for tests/acceptance/test_cli_tasks.py (``scheduler tasks list`` and ``enqueue``),
imported by the CLI with ``--import tests.acceptance.cli_task_module``."""

from __future__ import annotations

from scheduler import task

try:
    from scheduler import JobContext  # type: ignore[attr-defined]
except ImportError:  # while it is not exported yet
    from scheduler.job_context import JobContext


@task(name="shop.send_receipt")
def send_receipt(order_id: int, email: str) -> None:
    """Typed parameters, every policy left to the service defaults."""


@task(
    name="shop.notify",
    queue="mail",
    priority=5,
    max_attempts=4,
    backoff_base_s=0.5,
    timeout_s=30,
)
async def notify(ctx: JobContext, channel: str, urgent: bool = False) -> None:
    """Async, with options; ``ctx`` is filled by the worker, not by the job's args."""
