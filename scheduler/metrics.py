"""Prometheus metrics and the health endpoints, served on one optional port.

``SCHEDULER_METRICS_PORT`` (unset: no server) and ``SCHEDULER_METRICS_HOST`` (default
``127.0.0.1``, so nothing is exposed beyond the host unless configured):

* ``GET /metrics``: Prometheus text exposition (prometheus-client). Counters by queue and
  task: ``scheduler_jobs_claimed_total``, ``..._succeeded_total``, ``..._failed_total`` (an
  attempt failed and a retry is scheduled), ``..._dead_total``, ``..._cancelled_total``,
  ``..._rescued_total`` (lease expired, leader only). Histograms:
  ``scheduler_job_duration_seconds`` (handler run time, by queue and task) and
  ``scheduler_job_start_lateness_seconds`` (claim time - due time on the database clock, by
  queue). Leader: ``scheduler_leader`` (1 while this replica leads), ``scheduler_leader_term``,
  ``scheduler_leader_elections_total``. Cron: ``scheduler_fire_times_total`` by schedule and
  outcome (``materialised``, or the skip reason: ``misfire``, ``starting_deadline``,
  ``catch_up_cap``, ``overlap``). Queue gauges, read from the database at scrape time:
  ``scheduler_queue_jobs`` by queue and state (``pending_due``, ``pending_scheduled``,
  ``running``, ``dead``; finished jobs are counted by the counters, not by a scan) and
  ``scheduler_queue_oldest_due_age_seconds`` (the oldest due-but-unclaimed job) by queue.
* ``GET /healthz``: 200 while the replica's event loop is turning (a beat every second; 503
  when the last one is older than ``STALL_S``, 10 s: a blocked loop), for a liveness probe.
* ``GET /readyz``: 200 when the database answers within 2 s and every shipped migration is
  applied, else 503 with the reason, for a readiness probe.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import psycopg
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from .log import get_logger
from .store import Store

log = get_logger("scheduler.metrics")

STALL_S = 10.0
REGISTRY = CollectorRegistry(auto_describe=True)

_JOB = ["queue", "task"]
JOBS_CLAIMED = Counter("scheduler_jobs_claimed", "Attempts claimed", _JOB, registry=REGISTRY)
JOBS_SUCCEEDED = Counter("scheduler_jobs_succeeded", "Jobs succeeded", _JOB, registry=REGISTRY)
JOBS_FAILED = Counter(
    "scheduler_jobs_failed", "Attempts failed, retry scheduled", _JOB, registry=REGISTRY
)
JOBS_DEAD = Counter("scheduler_jobs_dead", "Jobs dead-lettered", _JOB, registry=REGISTRY)
JOBS_CANCELLED = Counter(
    "scheduler_jobs_cancelled", "Running jobs cancelled by an operator", _JOB, registry=REGISTRY
)
JOBS_RESCUED = Counter(
    "scheduler_jobs_rescued", "Leases expired and rescued (leader)", _JOB, registry=REGISTRY
)
JOB_DURATION = Histogram(
    "scheduler_job_duration_seconds", "Handler run time", _JOB, registry=REGISTRY,
    buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 300, 1800),
)  # fmt: skip
JOB_LATENESS = Histogram(
    "scheduler_job_start_lateness_seconds", "Claim time minus due time (database clock)",
    ["queue"], registry=REGISTRY,
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1, 5, 30, 60, 300),
)  # fmt: skip
LEADER = Gauge("scheduler_leader", "1 while this replica leads", registry=REGISTRY)
LEADER_TERM = Gauge("scheduler_leader_term", "Term of this replica's leadership", registry=REGISTRY)
ELECTIONS = Counter(
    "scheduler_leader_elections", "Times this replica was elected", registry=REGISTRY
)
FIRE_TIMES = Counter(
    "scheduler_fire_times", "Cron fire times by outcome", ["schedule", "outcome"],
    registry=REGISTRY,
)  # fmt: skip
THREADS_STUCK = Gauge(
    "scheduler_handler_threads_stuck",
    "Sync handler threads still running past their task's timeout_s (each holds a slot)",
    registry=REGISTRY,
)
LOOP_CRASHES = Counter(
    "scheduler_loop_crashes", "Internal loops that crashed and were restarted", ["loop"],
    registry=REGISTRY,
)  # fmt: skip
SCHEDULE_ERRORS = Counter(
    "scheduler_schedule_errors", "Schedules whose materialisation failed (retried later)",
    ["schedule"], registry=REGISTRY,
)  # fmt: skip
COMPLETIONS_DROPPED = Counter(
    "scheduler_completions_dropped",
    "Attempt outcomes that could not be written even alone (the lease is then left to expire)",
    registry=REGISTRY,
)


class JobMetrics:
    """The per-job metric children of one (queue, task), looked up once: ``labels()`` costs
    about 1.5 us per call, which the worker's hot path would pay four times per job."""

    __slots__ = ("claimed", "duration", "lateness", "succeeded")

    def __init__(self, queue: str, task: str):
        self.claimed = JOBS_CLAIMED.labels(queue, task)
        self.succeeded = JOBS_SUCCEEDED.labels(queue, task)
        self.lateness = JOB_LATENESS.labels(queue)
        self.duration = JOB_DURATION.labels(queue, task)


_job_metrics: dict[tuple[str, str], JobMetrics] = {}


def for_job(queue: str, task: str) -> JobMetrics:
    """Cached :class:`JobMetrics` of ``(queue, task)``."""
    found = _job_metrics.get((queue, task))
    if found is None:
        found = _job_metrics[(queue, task)] = JobMetrics(queue, task)
    return found


class _QueueCollector(Collector):
    """Queue depth and lag, from one query at scrape time."""

    def __init__(self, url: str, store: Store):
        self.url, self.store = url, store

    def collect(self) -> Iterator[GaugeMetricFamily]:
        depth = GaugeMetricFamily(
            "scheduler_queue_jobs", "Jobs by queue and state", labels=["queue", "state"]
        )
        lag = GaugeMetricFamily(
            "scheduler_queue_oldest_due_age_seconds",
            "Age of the oldest due-but-unclaimed job",
            labels=["queue"],
        )
        try:
            with psycopg.connect(self.url, autocommit=True, connect_timeout=2) as conn:
                conn.execute(self.store.q["probe_timeout"])
                rows = conn.execute(self.store.q["status_queues"]).fetchall()
        except psycopg.Error as exc:
            log.warning("metrics_query_failed", error=str(exc).strip()[:300])
            rows = []
        for queue, due, scheduled, running, dead, lag_s in rows:
            depth.add_metric([queue, "pending_due"], due)
            depth.add_metric([queue, "pending_scheduled"], scheduled)
            depth.add_metric([queue, "running"], running)
            depth.add_metric([queue, "dead"], dead)
            lag.add_metric([queue], float(lag_s or 0))
        yield depth
        yield lag


class HealthServer:
    """``/metrics``, ``/healthz`` and ``/readyz`` on ``host:port`` in a daemon thread.

    Args:
        url: libpq URL for the readiness check and the queue gauges.
        store: statements for the schema.
        host: address to bind (default ``127.0.0.1``).
        port: TCP port; 0 picks a free one (see :attr:`port`).
    """

    def __init__(self, url: str, store: Store, host: str, port: int):
        self.url, self.store = url, store
        self.last_beat = time.monotonic()
        self._collector = _QueueCollector(url, store)
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                path = self.path.split("?")[0]
                if path == "/metrics":
                    self._send(200, generate_latest(REGISTRY), "text/plain; version=0.0.4")
                elif path == "/healthz":
                    age = time.monotonic() - server.last_beat
                    ok = age < STALL_S
                    body = f"ok: loop beat {age:.1f} s ago" if ok else f"stalled: {age:.1f} s"
                    self._send(200 if ok else 503, body.encode())
                elif path == "/readyz":
                    problem = server.not_ready()
                    self._send(503 if problem else 200, (problem or "ready").encode())
                else:
                    self._send(404, b"not found: /metrics, /healthz, /readyz")

            def _send(self, code: int, body: bytes, ctype: str = "text/plain") -> None:
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass  # probes every few seconds are not worth a log line

        self._httpd = ThreadingHTTPServer((host, port), Handler)
        self.port = self._httpd.server_address[1]
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, name="scheduler-metrics", daemon=True
        )

    def start(self) -> None:
        REGISTRY.register(self._collector)
        self._thread.start()
        log.info("metrics_serving", host=self._httpd.server_address[0], port=self.port)

    def stop(self) -> None:
        if self._thread.is_alive():  # shutdown() waits for serve_forever, if it ever ran
            self._httpd.shutdown()
            REGISTRY.unregister(self._collector)
        self._httpd.server_close()

    def beat(self) -> None:
        """Called by the event loop every second (liveness)."""
        self.last_beat = time.monotonic()

    def not_ready(self) -> str | None:
        """``None`` when the database answers and is fully migrated, else why not."""
        try:
            with psycopg.connect(self.url, autocommit=True, connect_timeout=2) as conn:
                conn.execute(self.store.q["probe_timeout"])
                missing = [
                    f"{m.version:04d}_{m.name}" for m in self.store.pending_migrations_sync(conn)
                ]
        except psycopg.Error as exc:
            return f"database unreachable: {str(exc).strip()[:200]}"
        return f"migrations not applied: {', '.join(missing)}" if missing else None
