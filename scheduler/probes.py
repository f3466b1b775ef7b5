"""The database side of a replica's HTTP port (:mod:`scheduler.health`): the probes' session
and the queue gauges.

* Database: one long-lived session (``application_name`` ``scheduler metrics <replica>``),
  opened on first use and reopened after a failure, used by one thread at a time, with
  ``connect_timeout`` 2 s, ``statement_timeout`` 2 s (``probe_timeout``) and TCP keepalives.
  The readiness answer and the queue gauges are each reused for ``CACHE_S`` (1 s), failures
  included: a flood of probes costs about one readiness check and one queue query a second.
* Queue gauges (``scheduler_queue_jobs`` by queue and state,
  ``scheduler_queue_oldest_due_age_seconds`` by queue), read at scrape time: served by
  ``/metrics`` through the server's session, or registered in the registry the metrics are
  exposed in, through a session of their own (:class:`QueueGauges`).
"""

from __future__ import annotations

import contextlib
import re
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
from prometheus_client import CollectorRegistry
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from .leader import KEEPALIVES, Keepalives
from .log import get_logger, redact_text
from .store import Store

log = get_logger("scheduler.health")  # the HTTP port's events

DB_TIMEOUT_S = 2  # connect_timeout of the probes' session (statement_timeout: probe_timeout)
CACHE_S = 1.0  # the readiness answer and the queue gauges are reused for this long

_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff]")


def one_line(text: str, limit: int = 200) -> str:
    """``text`` as one printable line (whitespace runs collapsed) of at most ``limit``
    characters."""
    return " ".join(_CONTROL.sub(" ", text).split())[:limit]


class _ProbeSession:
    """The probes' one database session, and their answers, each reused for ``CACHE_S``.

    Opened on first use and reopened after a failure; used by one thread at a time. A thread
    that cannot have it within ``DB_TIMEOUT_S`` (a probe under way on a slow database) gets
    a problem rather than waiting longer.
    """

    def __init__(self, url: str, store: Store, application_name: str):
        self.url, self.store, self.application_name = url, store, application_name
        self._lock = threading.Lock()
        self._conn: psycopg.Connection[Any] | None = None
        self._answers: dict[str, tuple[float, Any, str | None]] = {}
        self._closed = False

    def read(
        self, key: str, query: Callable[[psycopg.Connection[Any]], Any]
    ) -> tuple[Any, str | None]:
        """``(query(conn), None)``, or ``(None, problem)`` (one line). An answer of ``key``
        younger than ``CACHE_S``, a problem included, is reused without asking the database."""
        if not self._lock.acquire(timeout=DB_TIMEOUT_S):
            return None, f"database too slow: a probe still runs after {DB_TIMEOUT_S} s"
        try:
            hit = self._answers.get(key)
            if hit is not None and time.monotonic() - hit[0] < CACHE_S:
                return hit[1], hit[2]
            if self._closed:
                return None, "stopped"
            value, problem = self._ask(key, query)
            self._answers[key] = (time.monotonic(), value, problem)
            return value, problem
        finally:
            if self._closed:
                self._drop()
            self._lock.release()

    def _ask(
        self, key: str, query: Callable[[psycopg.Connection[Any]], Any]
    ) -> tuple[Any, str | None]:
        if self._conn is not None:
            try:
                return query(self._conn), None
            except psycopg.Error as exc:
                if not (self._conn.broken or self._conn.closed):
                    return None, self._problem(key, exc, unreachable=False)
                self._drop()  # found broken (server restart, pooler): reopened once, below
        try:
            self._conn = self._connect()
            return query(self._conn), None
        except psycopg.Error as exc:
            unreachable = self._conn is None or self._conn.broken or self._conn.closed
            if unreachable:
                self._drop()
            return None, self._problem(key, exc, unreachable)

    def _connect(self) -> psycopg.Connection[Any]:
        # a partitioned network breaks the session within ~10 s; probes connect faster
        keepalives: Keepalives = {**KEEPALIVES, "connect_timeout": DB_TIMEOUT_S}
        conn = psycopg.connect(
            self.url,
            autocommit=True,
            application_name=self.application_name,
            prepare_threshold=None,  # nothing session-scoped on a pooled URL
            **keepalives,
        )
        try:
            conn.execute(self.store.q["probe_timeout"])
        except BaseException:
            conn.close()
            raise
        return conn

    def _problem(self, key: str, exc: psycopg.Error, unreachable: bool) -> str:
        """One line for an operator: no libpq hint lines, no password."""
        if isinstance(exc, psycopg.errors.QueryCanceled):
            problem = f"database too slow: no answer within {DB_TIMEOUT_S} s"
        else:
            lines = str(exc).strip().splitlines() or [type(exc).__name__]
            # libpq: 'connection to server at "h", port 5432 failed: FATAL:  why' + hint lines
            reason = lines[0].rsplit(" failed: ", 1)[-1].removeprefix("FATAL:").strip()
            what = "database unreachable" if unreachable else "database error"
            problem = one_line(redact_text(f"{what}: {reason[:1].lower()}{reason[1:]}", self.url))
        log.warning("metrics_probe_failed", probe=key, error=problem)
        return problem

    def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(psycopg.Error):
                conn.close()

    def close(self) -> None:
        """Close the session; a probe under way closes it when it ends."""
        self._closed = True
        if self._lock.acquire(timeout=DB_TIMEOUT_S):
            try:
                self._drop()
            finally:
                self._lock.release()


def _queue_families() -> tuple[GaugeMetricFamily, GaugeMetricFamily]:
    depth = GaugeMetricFamily(
        "scheduler_queue_jobs", "Jobs by queue and state", labels=["queue", "state"]
    )
    lag = GaugeMetricFamily(
        "scheduler_queue_oldest_due_age_seconds",
        "Age of the oldest due-but-unclaimed job",
        labels=["queue"],
    )
    return depth, lag


class _QueueCollector(Collector):
    """Queue depth and lag from ``rows()`` (the ``status_queues`` rows), at scrape time."""

    def __init__(self, rows: Callable[[], list[tuple[Any, ...]]]):
        self.rows = rows

    def describe(self) -> Iterator[GaugeMetricFamily]:
        """The names, without a query (a registry with ``auto_describe`` asks at register)."""
        yield from _queue_families()

    def collect(self) -> Iterator[GaugeMetricFamily]:
        depth, lag = _queue_families()
        for queue, due, scheduled, running, dead, lag_s in self.rows():
            depth.add_metric([queue, "pending_due"], due)
            depth.add_metric([queue, "pending_scheduled"], scheduled)
            depth.add_metric([queue, "running"], running)
            depth.add_metric([queue, "dead"], dead)
            lag.add_metric([queue], float(lag_s or 0))
        yield depth
        yield lag


def _status_queues(store: Store) -> Callable[[psycopg.Connection[Any]], list[tuple[Any, ...]]]:
    return lambda conn: conn.execute(store.q["status_queues"]).fetchall()


class QueueGauges:
    """The queue gauges (``scheduler_queue_jobs``, ``scheduler_queue_oldest_due_age_seconds``)
    of a replica, registered in ``registry`` (another than the service's own: see
    :func:`scheduler.metrics.use_registry`) until :meth:`close`. They are read at scrape time
    through a database session of their own (the probes' bounds: 2 s, answers reused for
    ``CACHE_S``), opened at the first scrape.

    A registry holds the gauges of one replica: a second replica of the process exposing in
    the same registry registers none (:attr:`registered` is ``False``; the first one's tell
    the same, read from the same database).

    Args:
        url: libpq URL (the direct one when there is one).
        store: statements for the schema.
        registry: where to register the gauges.
        replica: the replica id, in the session's ``application_name``.
    """

    def __init__(self, url: str, store: Store, registry: CollectorRegistry, replica: str):
        name = one_line(f"scheduler metrics {replica}", 63)
        self._db = _ProbeSession(url, store, name)
        self._registry = registry
        self._collector = _QueueCollector(self._rows)
        self._query = _status_queues(store)
        try:
            registry.register(self._collector)
            self.registered = True
        except ValueError:  # "Duplicated timeseries": another replica of the process has them
            self.registered = False
            log.info("queue_gauges_not_registered", reason="the registry already has them")

    def _rows(self) -> list[tuple[Any, ...]]:
        rows, _ = self._db.read("queues", self._query)
        return rows or []

    def close(self) -> None:
        """Unregister the gauges and close the session (twice is harmless)."""
        if self.registered:
            self.registered = False
            self._registry.unregister(self._collector)
        self._db.close()
