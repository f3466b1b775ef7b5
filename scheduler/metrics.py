"""Prometheus metrics of a replica (prometheus-client), in one registry (:data:`REGISTRY`),
served at ``GET /metrics`` by :mod:`scheduler.health` on ``SCHEDULER_METRICS_PORT``.

Which registry exposes them (:func:`use_registry`, or the setting
``SCHEDULER_METRICS_REGISTRY``):

* ``own`` (the default): only the service's registry, :data:`REGISTRY`, served with the queue
  gauges on ``SCHEDULER_METRICS_PORT``; prometheus-client's default registry is untouched.
* ``default``: also prometheus-client's default registry (``prometheus_client.REGISTRY``), so
  an application that already serves ``/metrics`` (``generate_latest()``,
  ``make_asgi_app()``, ``start_http_server``) has every ``scheduler_*`` metric there, the
  queue gauges included (read from the database at scrape time, while a replica runs); the
  port, when set too, serves that same registry.

* ``GET /metrics``: Prometheus text exposition, or OpenMetrics when the scraper's ``Accept``
  asks for it (prometheus-client's ``choose_encoder``). Counters by queue and
  task: ``scheduler_jobs_claimed_total``, ``..._succeeded_total``, ``..._failed_total`` (an
  attempt failed and a retry is scheduled), ``..._dead_total``, ``..._cancelled_total``,
  ``..._rescued_total`` (lease expired, leader only). Histograms:
  ``scheduler_job_duration_seconds`` (handler run time, by queue and task) and
  ``scheduler_job_start_lateness_seconds`` (claim time - due time on the database clock, by
  queue). Leader: ``scheduler_leader`` (1 while this replica leads), ``scheduler_leader_term``,
  ``scheduler_leader_elections_total``. Cron: ``scheduler_fire_times_total`` by schedule and
  outcome (``materialised``, or the skip reason: ``misfire``, ``starting_deadline``,
  ``catch_up_cap``, ``overlap``). Queue gauges, read from the database (at most once per
  ``CACHE_S``): ``scheduler_queue_jobs`` by queue and state (``pending_due``,
  ``pending_scheduled``, ``running``, ``dead``; finished jobs are counted by the counters, not
  by a scan) and ``scheduler_queue_oldest_due_age_seconds`` (the oldest due-but-unclaimed job)
  by queue; no samples while the database does not answer.
* Robustness: ``scheduler_handler_threads_stuck`` (sync handler threads still running after
  their attempt ended), ``scheduler_loop_crashes_total`` by loop (restarted by the
  supervisor), ``scheduler_schedule_errors_total`` by schedule (materialisation failed,
  retried a minute later), ``scheduler_completions_dropped_total`` (an outcome that could not
  be written even alone; its job is rescued as ``lost``), ``scheduler_database_failovers_total``
  (an election found PostgreSQL on a new timeline: a standby was promoted).
* Alerts (:mod:`scheduler.alerts`, leader only): ``scheduler_schedule_incident_open`` by
  schedule and kind (``missed``, ``failing``, ``paused``): 1 while the incident is open, 0
  once it closed; the series are dropped when the replica stops leading, so
  ``max by (schedule, kind)`` over the replicas is the truth.
"""

from __future__ import annotations

import threading

import prometheus_client
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from .errors import InvalidArgumentError

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
DATABASE_FAILOVERS = Counter(
    "scheduler_database_failovers",
    "Elections that found PostgreSQL on a new timeline (a standby was promoted)",
    registry=REGISTRY,
)
INCIDENT_OPEN = Gauge(
    "scheduler_schedule_incident_open",
    "1 while an alert incident of the schedule is open, by kind (missed, failing, paused); "
    "leader only, set at each alert evaluation",
    ["schedule", "kind"], registry=REGISTRY,
)  # fmt: skip
COMPLETIONS_DROPPED = Counter(
    "scheduler_completions_dropped",
    "Attempt outcomes that could not be written even alone (the lease is then left to expire)",
    registry=REGISTRY,
)
JOBS_ENQUEUED = Counter(
    "scheduler_jobs_enqueued",
    "Jobs inserted by this process's enqueue calls, counted when the insert statement "
    "succeeded (a caller's transaction rolled back afterwards is still counted)",
    _JOB, registry=REGISTRY,
)  # fmt: skip


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


_exposing = threading.Lock()
_exposed_in: CollectorRegistry = REGISTRY


def use_registry(registry: CollectorRegistry) -> None:
    """Expose the ``scheduler_*`` metrics in ``registry`` from now on: call it before a replica
    starts (the replica registers its queue gauges where the metrics are exposed).

    Args:
        registry: ``prometheus_client.REGISTRY`` (the default registry: an application's own
            ``/metrics``), another registry of the application, or :data:`REGISTRY` (the
            service's own, the default: no other registry has them).

    Raises:
        InvalidArgumentError: ``registry`` is not a ``CollectorRegistry``, or it already has a
            metric of one of these names (the application defines ``scheduler_...`` itself).
    """
    global _exposed_in
    if not isinstance(registry, CollectorRegistry):
        raise InvalidArgumentError(
            f"use_registry: a prometheus_client CollectorRegistry, not {type(registry).__name__}"
        )
    with _exposing:
        if registry is _exposed_in:
            return
        if registry is not REGISTRY:
            try:
                registry.register(REGISTRY)
            except ValueError as exc:  # prometheus-client: "Duplicated timeseries in ..."
                raise InvalidArgumentError(f"use_registry: {exc}") from None
        if _exposed_in is not REGISTRY:
            _exposed_in.unregister(REGISTRY)
        _exposed_in = registry


def exposed_in(choice: str | None = None) -> CollectorRegistry:
    """The registry the metrics are exposed in, after applying ``choice`` (the setting
    ``metrics_registry``): ``"default"`` is :func:`use_registry` of prometheus-client's
    default registry; ``"own"`` or ``None`` keeps the process's choice (:data:`REGISTRY`
    unless :func:`use_registry` chose another)."""
    if choice == "default":
        use_registry(prometheus_client.REGISTRY)
    return _exposed_in
