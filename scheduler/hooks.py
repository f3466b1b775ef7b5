"""Attempt hooks: the application's or an integration's code around every attempt of every
handler, and failure hooks called with each failed attempt's exception::

    import contextlib
    from scheduler.hooks import add_attempt_hook, add_failure_hook

    @contextlib.contextmanager
    def timed(ctx):                       # ctx: the attempt's JobContext
        start = time.monotonic()
        yield
        print(ctx.task, time.monotonic() - start)

    remove = add_attempt_hook(timed)
    add_failure_hook(lambda ctx, exc: sentry_sdk.capture_exception(exc))

**Attempt hooks** are callables ``hook(ctx) -> context manager``. Each attempt enters every
hook's context manager, in the order they were added, right around the handler's call: in
the handler's own thread for a sync handler, in its asyncio task for an async one (so a
hook's context variables, an OpenTelemetry span, a Django connection, are the handler's),
with :func:`scheduler.current_job` already set. The handler's exception goes through the
hooks' ``__exit__`` (a hook may record it, not swallow it: the attempt fails whatever the
hook returns). A hook that raises on entry or exit fails the attempt with its exception.

**Failure hooks** are callables ``hook(ctx, exc)`` called after a failed or timed-out attempt
(retried or not), in the handler's thread or task, for error reporting (Sentry-style). A
failure hook that raises is logged (``failure_hook_failed``) and ignored.

Hooks are process-wide (like logging handlers); add them before starting a replica.
``add_*`` return a function that removes the hook again (tests).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING

from .log import get_logger

if TYPE_CHECKING:
    from .job_context import JobContext

AttemptHook = Callable[["JobContext"], AbstractContextManager[object]]
FailureHook = Callable[["JobContext", BaseException], object]

_attempt_hooks: list[AttemptHook] = []
_failure_hooks: list[FailureHook] = []
log = get_logger("scheduler.hooks")


def _remover(hooks: list[object], hook: object) -> Callable[[], None]:
    def remove() -> None:
        with contextlib.suppress(ValueError):
            hooks.remove(hook)

    return remove


def add_attempt_hook(hook: AttemptHook) -> Callable[[], None]:
    """Wrap every attempt in ``hook(ctx)`` (a context manager); returns its remover.

    Raises:
        TypeError: ``hook`` is not callable.
    """
    if not callable(hook):
        raise TypeError(f"an attempt hook must be callable, not {type(hook).__name__}")
    _attempt_hooks.append(hook)
    return _remover(_attempt_hooks, hook)  # type: ignore[arg-type]


def add_failure_hook(hook: FailureHook) -> Callable[[], None]:
    """Call ``hook(ctx, exc)`` after every failed attempt; returns its remover.

    Raises:
        TypeError: ``hook`` is not callable.
    """
    if not callable(hook):
        raise TypeError(f"a failure hook must be callable, not {type(hook).__name__}")
    _failure_hooks.append(hook)
    return _remover(_failure_hooks, hook)  # type: ignore[arg-type]


@contextlib.contextmanager
def attempt_scope(ctx: JobContext) -> Iterator[None]:
    """Every attempt hook's context manager around the body (none: nothing)."""
    if not _attempt_hooks:
        yield
        return
    with contextlib.ExitStack() as stack:
        for hook in _attempt_hooks:
            stack.enter_context(hook(ctx))
        yield


def report_failure(ctx: JobContext | None, exc: BaseException) -> None:
    """Call every failure hook with ``exc``; never raises."""
    if ctx is None:
        return
    for hook in _failure_hooks:
        try:
            hook(ctx, exc)
        except Exception as hook_exc:  # noqa: BLE001 - a reporter must not fail the job twice
            log.warning("failure_hook_failed", job_id=ctx.job_id, task=ctx.task,
                        error=f"{type(hook_exc).__name__}: {hook_exc}"[:500])  # fmt: skip
