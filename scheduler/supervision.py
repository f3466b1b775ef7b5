"""Supervision of a replica's internal loops: a crash is logged and the loop restarted, and
a loop that keeps crashing stops the replica, which then exits non-zero.

Every long-running loop of a replica (the claim loop, the completion writer, the lease
extender, the listener, the leader's campaign and ticks, the replica registry heartbeat)
runs under one :class:`Supervisor`::

    loop body ──returns──▶ done (it saw the stop event)
        │
        └─raises──▶ log "loop_crashed" (error, with traceback), count it
                      ├─ fewer than max_crashes in window_s: wait (0.1 s doubling to 5 s),
                      │  start the body again
                      └─ max_crashes (5) within window_s (60 s): "loop_failed" (critical),
                         health() reports it (``/healthz`` answers 503), the replica's stop
                         event is set, and Replica.run raises ReplicaFailedError: the process
                         exits non-zero so its orchestrator restarts it.

Database outages are not crashes: the loops retry those themselves, with backoff. A crash is
a bug or an unforeseen input; restarting keeps the replica working for everything else, and
the crash budget stops a replica that cannot recover from looping forever while it looks
healthy.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Awaitable, Callable

from . import metrics
from .limits import exception_text
from .log import get_logger

log = get_logger("scheduler.supervision")

Body = Callable[[], Awaitable[None]]


class Supervisor:
    """Runs loop bodies, restarting the ones that raise.

    Args:
        stop: the replica's stop event; set when a loop exhausts its crash budget.
        max_crashes: crashes of one loop within ``window_s`` that make the replica fail
            (default 5).
        window_s: the crash-budget window in seconds (default 60).
        first_delay_s: wait before the first restart, doubling up to 5 s (default 0.1).
    """

    def __init__(
        self,
        stop: asyncio.Event,
        *,
        max_crashes: int = 5,
        window_s: float = 60.0,
        first_delay_s: float = 0.1,
    ):
        self.stop = stop
        self.max_crashes = max_crashes
        self.window_s = window_s
        self.first_delay_s = first_delay_s
        self.failure: str | None = None  # why the replica gave up, once it did
        self._crashes: dict[str, deque[float]] = {}

    def health(self) -> str | None:
        """``None`` while every loop is healthy, else why not (for ``/healthz``)."""
        return self.failure

    def start(self, name: str, body: Body) -> asyncio.Task[None]:
        """Run ``body()`` as task ``name`` under supervision; the task ends when ``body``
        returns, when the crash budget of ``name`` is spent, or when it is cancelled."""
        return asyncio.create_task(self.run(name, body), name=name)

    async def run(self, name: str, body: Body) -> None:
        """Run ``body()`` under supervision in the current task (see :meth:`start`)."""
        delay = self.first_delay_s
        while True:
            try:
                await body()
                return
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - the point of a supervisor
                if self._crashed(name, exc):
                    return
            await asyncio.sleep(delay)
            if self.stop.is_set() and self.failure is not None:
                return
            delay = min(delay * 2, 5.0)

    def _crashed(self, name: str, exc: Exception) -> bool:
        """Record a crash; True when it spent the loop's budget (the replica stops)."""
        metrics.LOOP_CRASHES.labels(name).inc()
        now = time.monotonic()
        recent = self._crashes.setdefault(name, deque())
        recent.append(now)
        while recent and recent[0] < now - self.window_s:
            recent.popleft()
        log.error("loop_crashed", loop=name, error=exception_text(exc, 300), crashes=len(recent),
                  exc_info=exc)  # fmt: skip
        if len(recent) < self.max_crashes:
            return False
        self.failure = (
            f"loop {name} crashed {len(recent)} times in {self.window_s:g} s; last: "
            f"{exception_text(exc, 300)}"
        )
        log.critical("loop_failed", loop=name, detail=self.failure)
        self.stop.set()
        return True

