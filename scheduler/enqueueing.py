"""A prepared job (:mod:`scheduler.preparation`) enqueued: inserted on the caller's connection
(joining its transaction) or on the default pool (:mod:`scheduler.connections`, committed at
once), traced (:mod:`scheduler.tracing`) and counted (``scheduler_jobs_enqueued_total``); or,
in the inline mode of :mod:`scheduler.testing`, run at once by the :class:`InlineRunner` that
:func:`set_inline` installed. A sync call on the default pool refuses to run on an event loop
(:func:`refuse_on_event_loop`).
"""

from __future__ import annotations

import asyncio
from typing import Any, Protocol

from . import metrics, tracing
from .adapters import AsyncConnectionLike, SyncConnectionLike
from .connections import on_async_connection, on_connection
from .errors import InvalidArgumentError
from .job_inserts import Enqueued
from .preparation import Prepared
from .settings import get_settings
from .store import Store

SyncConnection = SyncConnectionLike  # a psycopg connection, or an ORM's (scheduler.adapters)
AsyncConnection = AsyncConnectionLike


class InlineRunner(Protocol):
    """What :mod:`scheduler.testing`'s inline mode puts in place of the database."""

    def run(self, job: Prepared) -> int: ...
    async def run_async(self, job: Prepared) -> int: ...


_inline: InlineRunner | None = None


def set_inline(runner: InlineRunner | None) -> InlineRunner | None:
    """Run every job at enqueue time with ``runner`` instead of inserting it (``None``: back
    to the database); returns the previous runner. Used by :mod:`scheduler.testing`."""
    global _inline
    previous, _inline = _inline, runner
    return previous


def refuse_on_event_loop(call: str) -> None:
    """Raise :class:`InvalidArgumentError` when this thread runs an event loop: a sync call
    on the default pool would block the loop while it connects and inserts, and ``await`` on
    its ``int`` result would fail only after the job was committed (a caller retrying on
    that error enqueues it twice). Checked before anything is written."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return
    raise InvalidArgumentError(
        f"the sync {call} call was made on a running event loop, where it would block the "
        "loop: use its *_async twin (await send_receipt.defer_async(...), await "
        "enqueue_async(...)), or pass a sync connection="
    )


def inline_runner() -> InlineRunner | None:
    """The runner :func:`set_inline` installed, or ``None``."""
    return _inline


def insert(job: Prepared, connection: SyncConnection | None) -> int:
    """Insert a prepared job on ``connection`` (joining its transaction) or on the default
    pool (committed at once); returns its id. Errors as :func:`scheduler.jobs.schedule_at`."""
    return insert_result(job, connection).id


async def insert_async(job: Prepared, connection: AsyncConnection | None) -> int:
    """:func:`insert` on an async connection or the default async pool."""
    return (await insert_result_async(job, connection)).id


def insert_result(job: Prepared, connection: SyncConnection | None) -> Enqueued:
    """:func:`insert`, saying whether the job was created or found (:class:`Enqueued`). In
    inline mode (:mod:`scheduler.testing`) the job runs and ``created`` is always True:
    ``unique_for_s`` and ``on_conflict`` are not applied there."""
    if _inline is not None:
        return Enqueued(_inline.run(job), True)
    if connection is None:
        refuse_on_event_loop("enqueue")
    store = Store(get_settings().schema_name)
    p = job.params
    with tracing.sending(p["task"], p["queue"], p.get("headers")) as send:
        done: Enqueued = on_connection(
            connection, get_settings(), store.insert_job_result_sync, send.params(p)
        )
        send.sent([done.id], done.created)
    return _counted(p, done)


async def insert_result_async(job: Prepared, connection: AsyncConnection | None) -> Enqueued:
    """:func:`insert_result` on an async connection or the default async pool."""
    if _inline is not None:
        return Enqueued(await _inline.run_async(job), True)
    store = Store(get_settings().schema_name)
    p = job.params
    with tracing.sending(p["task"], p["queue"], p.get("headers")) as send:
        done: Enqueued = await on_async_connection(
            connection, get_settings(), store.insert_job_result, send.params(p)
        )
        send.sent([done.id], done.created)
    return _counted(p, done)


def _counted(params: dict[str, Any], done: Enqueued) -> Enqueued:
    """Count a job inserted (``scheduler_jobs_enqueued_total``) once its statement
    succeeded; a job found holding its key is not counted."""
    if done.created:
        metrics.JOBS_ENQUEUED.labels(params["queue"], params["task"]).inc()
    return done