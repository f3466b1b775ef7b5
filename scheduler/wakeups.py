"""What wakes a worker's claim loop, besides a slot that frees and the safety poll (the
:class:`WakeUps` part of :class:`~scheduler.worker.Worker`).

* LISTEN, on a direct connection (never through a transaction pooler), reopened with backoff
  (polling and lease extensions cover the gap): ``<schema>.jobs`` (a job was inserted; the
  payload ``"<queue> <epoch of the earliest run_at>"`` wakes the loop now, or sets a timer for
  then), ``<schema>.cancel`` (an operator cancelled a job), ``<schema>.limits`` (a queue's
  limits changed: re-read before the next claim), ``<schema>.schedules`` (a schedule was
  written: the replica wakes its leader).
* Without LISTEN (only a transaction pooler): a timer at the earliest pending ``run_at`` read
  after each claim.
* A rate-limited queue held back by a full window: a timer for when its oldest start leaves
  the window.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import psycopg
from psycopg import sql
from psycopg_pool import AsyncConnectionPool

from .flow import LimitedQueues
from .leader import KEEPALIVES
from .limits import exception_text
from .settings import Settings
from .store import Store


class WakeUps:
    """The wake-ups of a :class:`~scheduler.worker.Worker`'s claim loop (a mixin of it, over
    the worker's state declared here)."""

    pool: AsyncConnectionPool
    listen_url: str | None
    store: Store
    settings: Settings
    _log: Any
    _wake: asyncio.Event
    listening: asyncio.Event
    on_schedules_written: Callable[[], None] | None
    limits: LimitedQueues
    _rate_timer: asyncio.TimerHandle | None

    if TYPE_CHECKING:

        def _cancel(self, job_id: int) -> None: ...

    async def _timer_for_next_due(self) -> None:
        """Without LISTEN: a wake-up at the earliest pending run_at still in the future (what
        the insert notification would have announced), when it is before the safety poll."""
        try:
            async with self.pool.connection() as conn:
                rows = await self.store.fetch(
                    conn, "next_due", {"queues": self.settings.queues, "now": None}
                )
        except psycopg.Error as exc:
            self._log.warning("next_due_failed", error=exception_text(exc, 300))
            return
        delay = rows[0]["delay_s"] if rows else None
        if delay is not None and delay < self.settings.poll_interval_s:
            asyncio.get_running_loop().call_later(max(delay, 0.0), self._wake.set)

    async def _timer_for_rate_window(self) -> None:
        """A rate-limited queue held back by a full window: a wake-up when the oldest start
        counted in it leaves the window, when that is before the safety poll."""
        try:
            async with self.pool.connection() as conn:
                delay = await self.limits.rate_wake_s(conn)
        except psycopg.Error as exc:
            self._log.warning("rate_wake_failed", error=exception_text(exc, 300))
            return
        if delay is not None and delay < self.settings.poll_interval_s:
            if self._rate_timer is not None:
                self._rate_timer.cancel()
            loop = asyncio.get_running_loop()
            self._rate_timer = loop.call_later(max(delay, 0.0), self._wake.set)

    def _on_notify(self, payload: str) -> None:
        """``"<queue> <epoch of the earliest run_at>"``: wake now if that is due, else set a
        timer for it (the database still decides what is due when the claim runs)."""
        queue, _, epoch = payload.rpartition(" ")
        if queue not in self.settings.queues:
            return
        try:
            delay = float(epoch) - time.time()
        except ValueError:
            delay = 0.0
        if delay <= 0:
            self._wake.set()
        else:
            asyncio.get_running_loop().call_later(min(delay, 86400.0), self._wake.set)

    async def _listen(self, stop: asyncio.Event) -> None:
        """LISTEN for inserted jobs, cancel requests and changed limits; reconnect with
        backoff (polling and lease extensions cover the gap). Without a listen URL (only a transaction pooler),
        say so once and return: timers and the safety poll do the waking."""
        if self.listen_url is None:
            self._log.warning(
                "listen_unavailable", poll_interval_s=self.settings.poll_interval_s,
                detail="LISTEN does not work through a transaction pooler: workers wake at "
                "the earliest pending run_at read after each claim and on the safety poll; "
                "set SCHEDULER_DIRECT_DATABASE_URL for notifications",
            )  # fmt: skip
            return
        channel = sql.Identifier(self.store.notify_channel)
        cancel_channel = sql.Identifier(self.store.cancel_channel)
        limits_channel = sql.Identifier(self.store.limits_channel)
        schedules_channel = sql.Identifier(self.store.schedules_channel)
        backoff = 0.5
        while not stop.is_set():
            try:
                async with await psycopg.AsyncConnection.connect(
                    self.listen_url, autocommit=True, **KEEPALIVES
                ) as conn:
                    await conn.execute(sql.SQL("LISTEN {}").format(channel))
                    await conn.execute(sql.SQL("LISTEN {}").format(cancel_channel))
                    await conn.execute(sql.SQL("LISTEN {}").format(limits_channel))
                    await conn.execute(sql.SQL("LISTEN {}").format(schedules_channel))
                    self.limits.on_notify("")  # limits may have changed while not listening
                    self.listening.set()
                    self._wake.set()  # jobs may have arrived while we were not listening
                    backoff = 0.5
                    async for notify in conn.notifies():
                        if notify.channel == self.store.cancel_channel:
                            with contextlib.suppress(ValueError):
                                self._cancel(int(notify.payload))  # ignored if not ours
                        elif notify.channel == self.store.limits_channel:
                            if self.limits.on_notify(notify.payload):
                                self._wake.set()  # re-read before the next claim
                        elif notify.channel == self.store.schedules_channel:
                            if self.on_schedules_written is not None:
                                self.on_schedules_written()  # wakes this replica's leader
                        else:
                            self._on_notify(notify.payload)
            except psycopg.Error as exc:
                self.listening.clear()
                self._log.warning("listen_connection_lost", error=exception_text(exc, 300),
                                  retry_in_s=backoff)  # fmt: skip
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
