"""Flow control per queue, enforced by the claim in the database across every replica.

The limits themselves (concurrency, rate per ``per_s`` seconds, key_concurrency), how they
are declared and stored: :mod:`scheduler.queue_limits` (:class:`QueueLimits`,
:func:`set_queue_limits` and :func:`set_queue_limits_async` are importable from here too).
This module reads them: :func:`list_queue_limits`, :func:`queue_overview` (``scheduler
queues``) and the worker's :class:`LimitedQueues`.

How it is enforced (migration ``0016_queue_limits.sql``): a worker that knows one of its
queues has limits (:class:`LimitedQueues`) claims with ``claim_jobs_limited``, which calls
``claim_limited()`` for the limited queues among the worker's; it locks each one's row of the
``queues`` table (``FOR UPDATE``, in name order), then counts running jobs and recent starts
with a fresh snapshot, so claims of one limited queue are serialised and none can count
without the others' starts. A worker none of whose queues has limits claims with the
lock-free ``claim_jobs``, which does not look at them: it pays nothing for flow control.

When a new limit binds: a worker reads which of its queues have limits at start, when a
NOTIFY on ``<schema>.limits`` reaches it (sent at the commit of :func:`set_queue_limits` /
:func:`~scheduler.queue_limits.apply_settings_limits`), and at every safety poll (``poll_interval_s``; the only way
for a replica behind a transaction pooler, which cannot LISTEN). A new limit is enforced by
a worker from the claims that start after the notification reaches it (without LISTEN: its
next safety poll, at most ``poll_interval_s`` later); a claim already under way, or one of a
replica that has not yet seen the limit, is not bound by it. Once every replica working the
queue has seen it, it is never exceeded (the limited claim reads the limits themselves under
the queue's row lock). A lowered limit stops new claims until the running jobs are below it
(nothing is stopped). A rate-limited queue held back by a full window wakes its worker when
the oldest counted start leaves the window; a queue held back by its concurrency limit wakes
when one of this worker's jobs finishes, or at the safety poll (jobs that finish on another
replica do not notify it).
"""

from __future__ import annotations

from typing import Any

import psycopg

from .queue_limits import (
    LIMIT_FIELDS,
    QueueLimits,
    apply_declared_limits,
    set_queue_limits,
    set_queue_limits_async,
)
from .store import Store

# declared in queue_limits, importable from here as before (README, docs, examples)
__all__ = [
    "LimitedQueues",
    "QueueLimits",
    "apply_declared_limits",
    "list_queue_limits",
    "queue_overview",
    "set_queue_limits",
    "set_queue_limits_async",
]


async def list_queue_limits(
    conn: psycopg.AsyncConnection[Any], store: Store
) -> dict[str, QueueLimits]:
    """The limits in force, queue -> :class:`QueueLimits` (for ``scheduler status``)."""
    rows = await store.fetch(conn, "queue_limits_list")
    return {r["name"]: QueueLimits(*(r[f] for f in LIMIT_FIELDS)) for r in rows}


async def queue_overview(conn: psycopg.AsyncConnection[Any], store: Store) -> list[dict[str, Any]]:
    """Every queue with limits or with pending or running jobs, by name (``scheduler queues``
    and ``scheduler status``): ``queue``, the limits (``concurrency``, ``rate``, ``per_s``,
    ``key_concurrency``; ``None``: not limited that way), ``source`` (``api``, ``settings``,
    ``config``; ``None``: no limits), ``running``, ``pending`` (due and scheduled),
    ``window_starts`` (starts in the rate window ending now, as the claim counts them;
    ``None`` without a rate) and ``busiest_key_running`` (running jobs of the busiest
    ``concurrency_key``; ``None`` without a per-key limit)."""
    return await store.fetch(conn, "queue_overview")


class LimitedQueues:
    """Which of a worker's queues have limits, as the worker last read them: it claims with
    ``claim_jobs_limited`` while one has (else with the lock-free ``claim_jobs``, which
    ignores limits), and sets a timer for a full rate window.

    Read before the first claim, again before the first claim after a NOTIFY on
    ``<schema>.limits`` (:meth:`on_notify`; :func:`set_queue_limits` and
    :func:`~scheduler.queue_limits.apply_settings_limits` send it at their commit), and before the first claim at
    least ``refresh_s`` seconds (the safety poll) after the previous read: so a new limit is
    enforced by this worker from the claims that start after its notification reaches it, or
    at most ``refresh_s`` later (no LISTEN behind a transaction pooler, or a notification
    lost while the listener reconnected). Once seen, it is never exceeded: the limited claim
    reads the ``queues`` table itself under the queue's row lock.

    Args:
        store: the schema's statements.
        queues: the worker's queues.
        refresh_s: seconds after which a read is stale (``poll_interval_s``).
    """

    def __init__(self, store: Store, queues: list[str], refresh_s: float):
        self.store = store
        self.queues = queues
        self.refresh_s = refresh_s
        self.names: frozenset[str] = frozenset()  # queues with limits
        self.rated: list[str] = []  # of those, the ones with a rate
        self._read_at: float | None = None  # monotonic seconds; None: read before next claim

    def on_notify(self, payload: str) -> bool:
        """A notification on the limits channel (payload: a queue, ``""``: any); True when
        it may concern this worker's queues (then re-read before the next claim)."""
        if payload and payload not in self.queues:
            return False
        self._read_at = None
        return True

    def stale(self, now: float) -> bool:
        """Whether to re-read before a claim starting at ``now`` (monotonic seconds)."""
        return self._read_at is None or now - self._read_at >= self.refresh_s

    async def refresh(self, conn: psycopg.AsyncConnection[Any], now: float) -> None:
        """Read the limited queues (``now``: monotonic seconds). A notification that arrives
        during the read marks them stale again.

        Raises:
            psycopg.Error: the read failed; the next claim tries again.
        """
        self._read_at = now
        try:
            rows = await self.store.fetch(conn, "queue_limits_of", {"queues": self.queues})
        except BaseException:
            self._read_at = None
            raise
        self.names = frozenset(r["name"] for r in rows)
        self.rated = [r["name"] for r in rows if r["rated"]]

    async def rate_wake_s(self, conn: psycopg.AsyncConnection[Any]) -> float | None:
        """Seconds until a start leaves the full rate window of one of the rated queues
        (``None``: no window is full, or no queue has a rate)."""
        if not self.rated:
            return None
        rows = await self.store.fetch(conn, "queue_rate_wake", {"queues": self.rated})
        delay = rows[0]["delay_s"] if rows else None
        return None if delay is None else float(delay)
