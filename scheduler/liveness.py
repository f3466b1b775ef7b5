"""Liveness lock: a replica's own session that ends exactly when its process dies.

The leader rescues the running jobs of a replica whose liveness lock is gone
(:class:`scheduler.maintenance.LostReplicas`) about a second after the death, instead of after
their lease. The lock lives on a direct session of its own (not the leader-campaign session,
whose 5 s idle timeouts would end it for a stopped or cut-off replica, which must wait for its
lease instead).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import zlib
from typing import Any

import psycopg

from .errors import PoolerError
from .leader import KEEPALIVES, POOLER_RETRY_S, RECONNECT_MAX_S, sleep_or_stop
from .log import get_logger
from .settings import Settings
from .store import Store

log = get_logger("scheduler.liveness")

REREGISTER_S = 60.0  # the key is written again this often (the row may have aged out)

LIVENESS_RETRY_S = 0.1  # first reconnect delay of a lost liveness session (doubles to 1 s)
LIVENESS_UNAVAILABLE = (
    "the liveness lock was taken by a server session this connection no longer talks to "
    "(a transaction-mode pooler): this replica's jobs are rescued by lease only"
)


def liveness_namespace(schema: str) -> int:
    """First key of the replicas' liveness locks in ``schema`` (31-bit CRC of its name)."""
    return zlib.crc32(f"scheduler.liveness:{schema}".encode()) & 0x7FFFFFFF


class LivenessLock:
    """Holds this replica's liveness lock on a direct session of its own, so the leader can
    rescue its jobs as soon as its process dies (:class:`scheduler.maintenance.LostReplicas`).

    The session has no idle or statement-wait timeouts and a server keepalive idle time of at
    least ``lease_s``: it ends when the process dies (the kernel closes the socket), not when
    the process is stopped, hung or cut off (those are rescued by lease, as before). The key
    is ``(liveness_namespace(schema), n)``, ``n`` from a sequence once per process, recorded
    in ``replicas.lock_key`` (re-recorded every ``REREGISTER_S``, 60 s, in case the row aged
    out). A lost session is noticed at once (the socket closes) and reopened within
    ``LIVENESS_RETRY_S`` doubling to 1 s. Without a direct connection (:attr:`refusal`) no
    lock is taken and the replica's jobs are rescued by lease only.

    Args:
        url: libpq URL of a direct (session-mode) connection.
        replica: this replica's id (``jobs.locked_by``).
    """

    def __init__(self, url: str, store: Store, settings: Settings, *, replica: str):
        self.url, self.store, self.settings, self.replica = url, store, settings, replica
        self.refusal: str | None = None  # why no liveness lock is taken (None: take it)
        self.key: int | None = None
        self.registered = asyncio.Event()  # lock held and recorded in replicas
        self._ns = liveness_namespace(store.schema)
        self._pid: int | None = None  # backend of the last session that took the lock

    async def run(self, until: asyncio.Event) -> None:
        """Hold the lock until ``until`` is set (the replica's worker is done: no job of it
        runs any more), then unregister and close. Reconnects after a lost session."""
        if self.refusal is not None:
            log.warning("liveness_lock_unavailable", replica=self.replica, detail=self.refusal)
            await until.wait()
            return
        backoff = LIVENESS_RETRY_S
        while not until.is_set():
            try:
                await self._session(until)
            except PoolerError as exc:
                log.error("liveness_lock_unavailable", error=str(exc), retry_in_s=POOLER_RETRY_S)
                await sleep_or_stop(until, POOLER_RETRY_S)
            except (psycopg.Error, OSError) as exc:
                if self.registered.is_set():
                    backoff = LIVENESS_RETRY_S
                self.registered.clear()
                log.warning("liveness_session_lost", replica=self.replica,
                            error=str(exc).strip()[:300], retry_in_s=round(backoff, 2))  # fmt: skip
                await sleep_or_stop(until, backoff)
                backoff = min(backoff * 2, RECONNECT_MAX_S)

    async def _session(self, until: asyncio.Event) -> None:
        conn = await psycopg.AsyncConnection.connect(self.url, autocommit=True, **KEEPALIVES)
        try:
            await conn.execute(self.store.q["liveness_session_settings"], {
                "keepalives_idle_s": str(max(5, math.ceil(self.settings.lease_s))),
                "application_name": f"scheduler liveness {self.replica}"[:63]})  # fmt: skip
            if self.key is None:
                seq = {"sequence": f'"{self.store.schema}".replica_lock_keys'}
                self.key = (await self.store.fetch(conn, "liveness_next_key", seq))[0]["key"]
            params: dict[str, Any] = {"ns": self._ns, "key": self.key, "id": self.replica}
            row = (await self.store.fetch(conn, "liveness_lock", params))[0]
            if self._pid is not None and self._pid != row["pid"]:
                await self.store.fetch(conn, "liveness_end_stale", {**params, "pid": self._pid})
            held = await self.store.fetch(conn, "liveness_held", {**params, "pid": row["pid"]})
            if not row["locked"] or not held[0]["held"]:  # not locked: another app's key
                if row["locked"]:
                    await self.store.release_pooled_lock(conn, row["pid"])
                raise PoolerError(LIVENESS_UNAVAILABLE)
            self._pid = row["pid"]
            while not until.is_set():
                recorded = await self.store.fetch(conn, "liveness_register", params)
                if recorded and not self.registered.is_set():
                    self.registered.set()
                    log.info("liveness_lock_held", replica=self.replica, key=self.key)
                # until the replica's row exists (its first heartbeat), try again soon
                wait_s = REREGISTER_S if recorded else 0.2
                await self._watch(conn, until, wait_s)
            with contextlib.suppress(psycopg.Error):
                await self.store.fetch(conn, "liveness_unregister", params)
            self.registered.clear()
        finally:
            await conn.close()

    @staticmethod
    async def _watch(conn: psycopg.AsyncConnection[Any], until: asyncio.Event, wait_s: float) -> None:  # fmt: skip
        """Wait ``wait_s``, until ``until`` is set, or until the session ends (its socket
        closes: raises psycopg.OperationalError at once, no polling)."""

        async def closed() -> None:
            async for _ in conn.notifies(timeout=wait_s):
                pass

        watcher = asyncio.ensure_future(closed())
        stopper = asyncio.ensure_future(until.wait())
        try:
            await asyncio.wait({watcher, stopper}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopper.cancel()
            if not watcher.done():
                watcher.cancel()
                with contextlib.suppress(asyncio.CancelledError, psycopg.Error):
                    await watcher
        if watcher.done() and not watcher.cancelled():
            watcher.result()
