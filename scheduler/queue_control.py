"""Pause and resume queues from Python, sync and async::

    from scheduler import pause_queue, resume_queue

    pause_queue("smtp")     # every replica stops claiming jobs of "smtp"; running ones finish
    resume_queue("smtp")    # claims resume at once (the workers are woken)

A pause is a row of ``queue_pauses`` (0022) that the claim statements read, so it holds on
every replica from its commit on, survives restarts and applies to queues not yet seen;
jobs can still be enqueued into a paused queue. Each call is recorded in ``job_events`` with
``actor`` (default ``"api"``). See :mod:`scheduler.actions`.

``connection=``: ``None`` runs the call on the default database in a transaction of its own;
a psycopg connection (``AsyncConnection`` for the ``*_async`` twins) runs it in the caller's
transaction. Raises :class:`~scheduler.errors.InvalidArgumentError` for a bad queue name
(:func:`scheduler.limits.check_queue`) and :class:`~scheduler.errors.DatabaseError`
subclasses for database failures.
"""

from __future__ import annotations

from . import actions
from .limits import check_queue
from .sessions import AsyncConnArg, SyncConn, run_async, run_sync


def pause_queue(queue: str, *, actor: str = "api", connection: SyncConn | None = None) -> bool:
    """Stop every replica claiming ``queue``; False when it was paused already."""
    queue, actor = check_queue(queue), actions.check_actor(actor)
    return run_sync(connection, lambda c, s: actions.pause_queue(c, s, queue, actor))


async def pause_queue_async(
    queue: str, *, actor: str = "api", connection: AsyncConnArg | None = None
) -> bool:
    """:func:`pause_queue` for async code."""
    queue, actor = check_queue(queue), actions.check_actor(actor)
    return await run_async(connection, lambda c, s: actions.pause_queue(c, s, queue, actor))


def resume_queue(queue: str, *, actor: str = "api", connection: SyncConn | None = None) -> bool:
    """Let replicas claim ``queue`` again; False when it was not paused."""
    queue, actor = check_queue(queue), actions.check_actor(actor)
    return run_sync(connection, lambda c, s: actions.resume_queue(c, s, queue, actor))


async def resume_queue_async(
    queue: str, *, actor: str = "api", connection: AsyncConnArg | None = None
) -> bool:
    """:func:`resume_queue` for async code."""
    queue, actor = check_queue(queue), actions.check_actor(actor)
    return await run_async(connection, lambda c, s: actions.resume_queue(c, s, queue, actor))
