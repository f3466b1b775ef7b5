"""Django's database connections around every attempt, as Django's request cycle handles them.

Django keeps one connection per thread and closes it only when ``close_old_connections()``
runs (on ``request_started`` / ``request_finished``) and finds it older than ``CONN_MAX_AGE``
(0 by default: at once) or broken. A worker's handler threads are long-lived and have no
request cycle, so without this each thread kept its connection open for good (the issue saw
14 backends after 40 jobs). :func:`django_connections` is an attempt hook
(:func:`scheduler.hooks.add_attempt_hook`) that does what the request cycle does:

* **sync handler** (in its handler thread): ``close_old_connections()`` before the attempt
  (drops a connection that expired or broke since the last one) and after it (with
  ``CONN_MAX_AGE = 0`` the connection is closed; with persistent connections it is kept for
  the thread's next job, at most one per handler thread, i.e. ``concurrency``).
* **async handler** (in its asyncio task): its ORM calls (``await Order.objects.aget()``,
  ``asgiref.sync.sync_to_async(f)()``) run in asgiref's thread-sensitive executor thread, not in
  the event loop's thread; after the attempt, ``close_old_connections()`` is run in that same
  thread (``sync_to_async``), as a task of its own that the attempt does not wait for. A sync
  ORM call made directly in an async handler raises Django's ``SynchronousOnlyOperation`` (the
  attempt fails with it): use the ``a``-methods or ``sync_to_async``.

A failure to close (a broken socket) is logged (``django_close_failed``) and does not fail
an attempt whose handler succeeded.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

from ...hooks import add_attempt_hook
from ...log import get_logger

if TYPE_CHECKING:
    from ...job_context import JobContext

log = get_logger("scheduler.contrib.django")
_remove: Callable[[], None] | None = None
_closing: set[asyncio.Task[None]] = set()  # keeps fire-and-forget closes alive until done


def _close_now(when: str) -> None:
    from django.db import close_old_connections  # type: ignore[import-untyped]

    try:
        close_old_connections()
    except Exception as exc:  # noqa: BLE001 - closing must not fail the handler's outcome
        log.warning("django_close_failed", when=when, error=f"{type(exc).__name__}: {exc}"[:500])


def _closed(task: asyncio.Task[None]) -> None:
    _closing.discard(task)
    if not task.cancelled() and task.exception() is not None:
        log.warning("django_close_failed", when="after", error=repr(task.exception())[:500])


def _close_in_executor_thread(loop: asyncio.AbstractEventLoop) -> None:
    """Close the connections of the thread ``sync_to_async`` runs this task's ORM calls in."""
    from asgiref.sync import sync_to_async

    task = loop.create_task(sync_to_async(_close_now)("after"))
    _closing.add(task)
    task.add_done_callback(_closed)


@contextlib.contextmanager
def django_connections(ctx: JobContext) -> Iterator[None]:
    """Attempt hook: ``close_old_connections()`` around the attempt (module docstring)."""
    try:
        loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
    except RuntimeError:
        loop = None  # a sync handler's thread
    if loop is not None:
        try:
            yield
        finally:
            _close_in_executor_thread(loop)
        return
    _close_now("before")
    try:
        yield
    finally:
        _close_now("after")


def install() -> None:
    """Add :func:`django_connections` as an attempt hook (once per process, however often
    this is called): the app's ``ready()`` and ``scheduler_run`` call it."""
    global _remove
    if _remove is None:
        _remove = add_attempt_hook(django_connections)


def uninstall() -> None:
    """Remove the hook again (tests)."""
    global _remove
    if _remove is not None:
        _remove()
        _remove = None
