"""Alerts per schedule: incidents opened and closed by the leader.

A schedule may declare (YAML, or a runtime schedule; all optional)::

    alert_after_s: 900        # dead-man: a fire time not succeeded 900 s after it
    alert_on_failures: 3      # 3 consecutive failed runs
    pause_on_failures: 10     # 10 consecutive failed runs pause the schedule
    on_alert: notify_ops      # a task enqueued once per incident opened, once per closed

Definitions:

* A **run** is an attempt: one row of ``job_runs``. It **failed** when its outcome is
  ``failed``, ``timeout`` or ``lost``. A run ``cancelled`` on request (an operator's cancel,
  or a newer run of an ``overlap_policy: cancel_previous`` schedule) is neither a failure nor
  a success: it is left out.
* **N consecutive failed runs**: the schedule's last N finished runs, by finish time, all
  failed, with no success after them. Runs are read from the schedule's latest jobs by fire
  time that have a finished attempt (``max(alert_on_failures, pause_on_failures) + 10`` of
  them), so a success of a much older job (a backfill, a run far behind its fire time) may be
  missed.
* **missed** (``alert_after_s``): the schedule's latest cron fire time that is at least
  ``alert_after_s`` old has a job that has not succeeded, and no run of the schedule succeeded
  after that fire time; or its ``next_run_at`` is ``alert_after_s`` in the past without being
  materialised (its materialisation keeps failing). Time a fire time spent without a leader
  does not count: the delay runs from its materialisation when that was later, and from the
  election for one not materialised. Enabled, unpaused schedules only. Judged at each
  evaluation: a job that succeeds late, between two evaluations, opens nothing.
* **failing** (``alert_on_failures: N``): N consecutive failed runs.
* **paused** (``pause_on_failures: N``): N consecutive failed runs while the schedule is not
  paused: the schedule is paused (``paused_at``, as ``scheduler schedules pause``; resume it
  with ``scheduler schedules resume``), logged, and a ``paused`` incident opens. Resumed while
  that incident is open, it is paused again after N more failed runs (no new incident).

An **incident** (a row of ``incidents``, ``scheduler status``) opens once per (schedule,
kind) and closes on the schedule's next succeeded run (a success that finished after the
problem began: the missed fire time, the first failure of the streak); it also closes when
its schedule, or the setting of its kind, is removed. At most one incident per (schedule,
kind) is open, held by a partial unique index: two leaders or terms never open it twice. On
opening: ``schedule_incident_opened`` at error level; on closing
``schedule_incident_closed`` (info; warning when closed by a removal); the gauge
``scheduler_schedule_incident_open{schedule, kind}``; and the schedule's ``on_alert`` task
is enqueued in the same transaction, with idempotency key ``incident:<id>:<event>`` and
the keyword argument ``incident``::

    {"id": 7, "schedule": "nightly", "kind": "failing", "event": "opened",  # or "closed"
     "opened_at": "2026-01-05T03:00:07.123456+00:00", "closed_at": None,  # ISO 8601, UTC
     "close_reason": None,  # closed: succeeded | alert_removed | schedule_removed
     "detail": "3 consecutive failed runs (alert_on_failures: 3); last: failed: ..."}

so a handler is ``def notify_ops(incident: dict[str, Any]) -> None``. The job's options
are those ``enqueue("notify_ops", ...)`` would use (the task's ``@task`` defaults, else queue
``default`` and the service settings).

Where and how often: only the leader evaluates, in its tick, after materialisation, with one
fenced statement for all schedules (``alerts_evaluate``; nothing is written unless this
session holds the leader lock in the current term). Idle cost: the heartbeat statement says
whether any schedule has alert settings or any incident is open (two index probes); when
none, nothing more runs. Otherwise the evaluation runs every :data:`EVALUATE_S` seconds (at
the first tick after), and not while materialisation has a backlog (its ``next_run_at``
would look stuck).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import psycopg

from . import metrics
from .errors import LeadershipLostError
from .log import get_logger
from .store import Store

__all__ = ["EVALUATE_S", "Alerts", "Evaluation", "Incident", "evaluate"]

log = get_logger("scheduler.alerts")

#: seconds between two evaluations while alerts exist: a dead-man fires at most this late;
#: one statement per period (0.2 statements/s), none while no schedule has alert settings
EVALUATE_S = 5.0


@dataclass(frozen=True)
class Incident:
    """One incident as an evaluation saw it: ``kind`` is ``missed``, ``failing`` or
    ``paused``; ``closed_at`` / ``close_reason`` are set once closed; ``alert_job`` is the id
    of the ``on_alert`` job this evaluation enqueued for it (``None``: none)."""

    id: int
    schedule: str
    kind: str
    opened_at: datetime
    detail: str
    closed_at: datetime | None = None
    close_reason: str | None = None
    alert_job: int | None = None


@dataclass
class Evaluation:
    """What one evaluation did: incidents ``opened`` and ``closed``, schedules ``paused``,
    and every incident ``open`` afterwards (the opened ones included); ``now`` is the clock
    it judged by."""

    now: datetime
    opened: list[Incident] = field(default_factory=list)
    closed: list[Incident] = field(default_factory=list)
    paused: list[str] = field(default_factory=list)
    open: list[Incident] = field(default_factory=list)


def _incident(row: dict[str, Any]) -> Incident:
    return Incident(
        id=int(row["id"]), schedule=row["schedule"], kind=row["kind"],
        opened_at=row["opened_at"], detail=row["detail"], closed_at=row["closed_at"],
        close_reason=row["close_reason"], alert_job=row["alert_job"],
    )  # fmt: skip


async def evaluate(
    conn: psycopg.AsyncConnection[Any],
    store: Store,
    *,
    holder: str,
    term: int,
    now: datetime | None = None,
) -> Evaluation:
    """Evaluate every schedule's alerts in one statement on the leader's lock session
    (autocommit): open and close incidents, pause schedules, enqueue ``on_alert`` jobs, all
    or nothing; then log each event (see the module docstring). No metric is touched here
    (:class:`Alerts` sets the gauge).

    Args:
        now: the clock to judge by (aware); ``None`` (production): the database ``now()``.

    Raises:
        LeadershipLostError: this session no longer holds the leader lock or ``term`` is not
            current; nothing was written.
        psycopg.OperationalError: the lock session died (nothing was committed).
    """
    params = {"holder": holder, "term": term, "key": store.leader_key, "now": now}
    rows = await store.fetch(conn, "alerts_evaluate", params)
    if not rows:
        raise LeadershipLostError(f"term {term} is no longer current for {holder}")
    result = Evaluation(now=rows[0]["now"])
    for row in rows:
        event = row["event"]
        if event == "paused":
            result.paused.append(row["schedule"])
        elif event is not None:
            incident = _incident(row)
            if event == "closed":
                result.closed.append(incident)
            else:  # 'opened' by this evaluation, or 'open' since an earlier one
                result.open.append(incident)
                if event == "opened":
                    result.opened.append(incident)
    _log(result, term)
    return result


def _log(result: Evaluation, term: int) -> None:
    for i in result.opened:
        log.error("schedule_incident_opened", schedule=i.schedule, kind=i.kind, incident=i.id,
                  detail=i.detail, alert_job=i.alert_job, term=term)  # fmt: skip
    for name in result.paused:
        log.error("schedule_paused_on_failures", schedule=name, term=term,
                  detail="pause_on_failures consecutive runs failed; resume it with "
                  "`scheduler schedules resume`")  # fmt: skip
    for i in result.closed:
        (log.info if i.close_reason == "succeeded" else log.warning)(
            "schedule_incident_closed", schedule=i.schedule, kind=i.kind, incident=i.id,
            reason=i.close_reason, opened_at=i.opened_at.isoformat(), alert_job=i.alert_job,
            term=term,
        )  # fmt: skip


class Alerts:
    """The leader's alert duty: when the next evaluation is due, and the gauge
    ``scheduler_schedule_incident_open`` (1 per open incident, 0 once closed).

    Args:
        every_s: seconds between evaluations (default :data:`EVALUATE_S`).
    """

    def __init__(self, every_s: float = EVALUATE_S):
        self.every_s = every_s
        self._next = 0.0  # loop time of the next evaluation: the first tick evaluates
        self._shown: set[tuple[str, str]] = set()  # gauge label sets this replica exported
        #: evaluations run (tests check that an idle leader runs none)
        self.evaluations = 0

    def due(self, loop_time: float) -> bool:
        """True (and the next one scheduled ``every_s`` later) when an evaluation is due at
        ``loop_time`` (event-loop seconds)."""
        if loop_time < self._next:
            return False
        self._next = loop_time + self.every_s
        return True

    async def run(
        self,
        conn: psycopg.AsyncConnection[Any],
        store: Store,
        *,
        holder: str,
        term: int,
        now: datetime | None = None,
    ) -> Evaluation:
        """:func:`evaluate`, then the gauge set from its result (errors as there)."""
        self.evaluations += 1
        result = await evaluate(conn, store, holder=holder, term=term, now=now)
        open_now = {(i.schedule, i.kind) for i in result.open}
        for labels in self._shown - open_now:
            metrics.INCIDENT_OPEN.labels(*labels).set(0)
        for labels in open_now:
            metrics.INCIDENT_OPEN.labels(*labels).set(1)
        self._shown |= open_now
        return result
