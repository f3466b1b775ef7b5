"""Alerts per schedule (scheduler.alerts) against a real database: incidents open once and
close on the next success, on_alert is enqueued once per opening and once per closing,
pause_on_failures pauses, the dead-man judges fire times by an injected clock, a second
evaluation or term never opens a duplicate, ``scheduler status`` shows open incidents, and an
idle leader without alert settings runs no evaluation. One test runs a real replica (leader
and worker) whose task fails, then succeeds."""

from __future__ import annotations

import asyncio
import json
import threading
from datetime import datetime, timedelta
from typing import Any, Self

import psycopg
import pytest
from psycopg.types.json import Jsonb

from scheduler import alerts, metrics, operations
from scheduler.cli.main import main
from scheduler.config import load_config_text
from scheduler.errors import LeadershipLostError
from scheduler.settings import Settings
from scheduler.store import Store
from scheduler.tasks import task
from tests.conftest import running_replica, wait_until_async

STORE = Store("scheduler")
HOLDER = "test-leader"
OPTIONS = {"queue": "ops", "priority": -1, "max_attempts": 4, "backoff_base_s": 1.0,
           "backoff_max_s": 60.0, "backoff_jitter": 0.0}  # fmt: skip

FAILING = threading.Event()  # alerts_test.flaky raises while set
NOTIFIED: list[dict[str, Any]] = []


@task(name="alerts_test.flaky", max_attempts=1)
def flaky() -> None:
    if FAILING.is_set():
        raise RuntimeError("the flaky task failed")


@task(name="alerts_test.notify")
def notify(incident: dict[str, Any]) -> None:
    NOTIFIED.append(incident)


def _now(db: psycopg.Connection) -> datetime:
    return db.execute("SELECT date_trunc('second', now())").fetchone()[0]


def _schedule(db: psycopg.Connection, name: str, **cols: Any) -> None:
    values = {
        "name": name, "cron": "* * * * *", "timezone": "UTC", "task": "alerts_test.flaky",
        "max_attempts": 1, "backoff_base_s": 1, "backoff_max_s": 10, "backoff_jitter": 0,
        "definition_hash": "h", "next_run_at": datetime(2100, 1, 1).astimezone(), **cols,
    }  # fmt: skip
    if isinstance(values.get("on_alert_options"), dict):
        values["on_alert_options"] = Jsonb(values["on_alert_options"])
    columns = ", ".join(values)
    placeholders = ", ".join(f"%({k})s" for k in values)
    db.execute(f"INSERT INTO scheduler.schedules ({columns}) VALUES ({placeholders})", values)


def _job(db: psycopg.Connection, name: str, fire_time: datetime, state: str = "pending",
         created_at: datetime | None = None) -> int:  # fmt: skip
    """A materialised job of ``name`` for ``fire_time``, not run yet."""
    return db.execute(
        "INSERT INTO scheduler.jobs (task, schedule_name, scheduled_for, run_at, first_run_at, "
        "origin, state, created_at) VALUES ('alerts_test.flaky', %s, %s, %s, %s, 'cron', %s, %s) "
        "RETURNING id",
        [name, fire_time, fire_time, fire_time, state, created_at or fire_time],
    ).fetchone()[0]


def _runs(db: psycopg.Connection, name: str, fire_time: datetime,
          *finished: tuple[str, datetime]) -> int:  # fmt: skip
    """A job of ``name`` for ``fire_time`` whose attempts ended as ``finished`` (outcome,
    finish time), one job_runs row each; the job ends succeeded or dead."""
    last = finished[-1][0]
    job = _job(db, name, fire_time, "succeeded" if last == "succeeded" else "dead")
    for attempt, (outcome, at) in enumerate(finished, 1):
        db.execute(
            "INSERT INTO scheduler.job_runs (job_id, attempt, worker_id, started_at, finished_at, "
            "outcome, error) VALUES (%s, %s, 'w', %s, %s, %s, %s)",
            [job, attempt, at - timedelta(seconds=1), at, outcome,
             None if outcome == "succeeded" else f"boom {attempt}"],
        )  # fmt: skip
    db.execute("UPDATE scheduler.jobs SET attempt = %s, finished_at = %s WHERE id = %s",
               [len(finished), finished[-1][1], job])  # fmt: skip
    return job


def _incidents(db: psycopg.Connection, name: str) -> list[tuple[Any, ...]]:
    return db.execute(
        "SELECT kind, closed_at IS NULL AS open, close_reason, failures FROM scheduler.incidents "
        "WHERE schedule_name = %s ORDER BY id", [name]).fetchall()  # fmt: skip


def _alert_jobs(db: psycopg.Connection) -> list[tuple[Any, ...]]:
    return db.execute(
        "SELECT idempotency_key, queue, task, args, priority, max_attempts FROM scheduler.jobs "
        "WHERE schedule_name IS NULL ORDER BY id").fetchall()  # fmt: skip


class Leader:
    """A real lock-holding session with a term, evaluating with an injected clock."""

    def __init__(self, db_url: str):
        self.db_url = db_url

    async def __aenter__(self) -> Self:
        self.conn = await psycopg.AsyncConnection.connect(self.db_url, autocommit=True)
        assert await STORE.try_lock_leader(self.conn)
        self.term = await STORE.elect(self.conn, HOLDER, None)
        self.duty = alerts.Alerts()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.conn.close()

    async def evaluate(self, now: datetime | None) -> alerts.Evaluation:
        return await self.duty.run(self.conn, STORE, holder=HOLDER, term=self.term, now=now)


def evaluations(db_url: str, *steps: Any) -> list[alerts.Evaluation]:
    """Evaluate at each datetime of ``steps`` in one term; a callable step runs in between."""

    async def scenario() -> list[alerts.Evaluation]:
        out = []
        async with Leader(db_url) as leader:
            for step in steps:
                if callable(step):
                    step()
                else:
                    out.append(await leader.evaluate(step))
        return out

    return asyncio.run(scenario())


def kinds(incidents: list[alerts.Incident]) -> list[tuple[str, str]]:
    return [(i.schedule, i.kind) for i in incidents]


def test_failing_opens_once_closes_on_the_next_success_and_enqueues_on_alert_twice(db, db_url):
    t = _now(db)
    _schedule(db, "s", alert_on_failures=3, on_alert="alerts_test.notify",
              on_alert_options=OPTIONS)  # fmt: skip
    _runs(db, "s", t - timedelta(minutes=5), ("failed", t - timedelta(seconds=290)))
    _runs(db, "s", t - timedelta(minutes=4), ("timeout", t - timedelta(seconds=230)))
    gauge = ("scheduler_schedule_incident_open", {"schedule": "s", "kind": "failing"})
    first, second, third, fourth, fifth = evaluations(
        db_url, t,
        lambda: _runs(db, "s", t - timedelta(minutes=3), ("lost", t - timedelta(seconds=170))),
        t + timedelta(seconds=1),
        lambda: metrics.REGISTRY.get_sample_value(*gauge) == 1 or pytest.fail("gauge not 1"),
        lambda: _runs(db, "s", t - timedelta(minutes=2), ("failed", t - timedelta(seconds=110))),
        t + timedelta(seconds=2),
        lambda: _runs(db, "s", t - timedelta(minutes=1), ("succeeded", t - timedelta(seconds=50))),
        t + timedelta(seconds=3),
        t + timedelta(seconds=4),
    )  # fmt: skip
    assert (first.opened, first.open) == ([], [])  # two failed runs of three
    assert kinds(second.opened) == [("s", "failing")]
    incident = second.opened[0]
    assert incident.detail.startswith(
        "3 consecutive failed runs (alert_on_failures: 3); last: lost"
    )
    assert (third.opened, kinds(third.open)) == ([], [("s", "failing")])  # a 4th: no duplicate
    assert [(i.id, i.close_reason) for i in fourth.closed] == [(incident.id, "succeeded")]
    assert (fifth.opened, fifth.closed, fifth.open) == ([], [], [])
    assert metrics.REGISTRY.get_sample_value(*gauge) == 0
    assert _incidents(db, "s") == [("failing", False, "succeeded", 3)]
    jobs = _alert_jobs(db)
    assert [(k, q, tk, p, m) for k, q, tk, _, p, m in jobs] == [
        (f"incident:{incident.id}:opened", "ops", "alerts_test.notify", -1, 4),
        (f"incident:{incident.id}:closed", "ops", "alerts_test.notify", -1, 4),
    ]
    opened, closed = (j[3]["incident"] for j in jobs)
    assert opened == {
        "id": incident.id, "schedule": "s", "kind": "failing", "event": "opened",
        "opened_at": (t + timedelta(seconds=1)).isoformat(timespec="microseconds"),
        "closed_at": None, "close_reason": None, "detail": incident.detail,
    }  # fmt: skip
    assert datetime.fromisoformat(closed["closed_at"]) == t + timedelta(seconds=3)
    assert (closed["event"], closed["close_reason"]) == ("closed", "succeeded")


def test_a_run_is_an_attempt_and_a_success_breaks_the_streak(db, db_url):
    t = _now(db)
    _schedule(db, "broken", alert_on_failures=3)
    _runs(db, "broken", t - timedelta(minutes=9), ("failed", t - timedelta(seconds=500)),
          ("failed", t - timedelta(seconds=490)))  # fmt: skip
    _runs(db, "broken", t - timedelta(minutes=8), ("succeeded", t - timedelta(seconds=470)))
    _runs(db, "broken", t - timedelta(minutes=7), ("failed", t - timedelta(seconds=400)))
    _schedule(db, "retried", alert_on_failures=3)  # one job, three failed attempts
    _runs(db, "retried", t - timedelta(minutes=9), *[
        ("failed", t - timedelta(seconds=s)) for s in (300, 200, 100)])  # fmt: skip
    (result,) = evaluations(db_url, t)
    assert kinds(result.opened) == [("retried", "failing")]
    assert _incidents(db, "broken") == []


def test_a_cancelled_run_is_neither_a_failure_nor_a_success(db, db_url):
    """Runs cancelled on request (an operator, or cancel_previous superseding them) do not
    make a failing streak, and do not break one either."""
    t = _now(db)
    _schedule(db, "superseded", alert_on_failures=2)
    for minute in (9, 8, 7):
        _runs(db, "superseded", t - timedelta(minutes=minute),
              ("cancelled", t - timedelta(seconds=60 * minute - 5)))  # fmt: skip
    _schedule(db, "broken", alert_on_failures=2)
    _runs(db, "broken", t - timedelta(minutes=9), ("failed", t - timedelta(seconds=500)))
    _runs(db, "broken", t - timedelta(minutes=8), ("cancelled", t - timedelta(seconds=470)))
    _runs(db, "broken", t - timedelta(minutes=7), ("failed", t - timedelta(seconds=400)))
    (result,) = evaluations(db_url, t)
    assert kinds(result.opened) == [("broken", "failing")]
    assert _incidents(db, "superseded") == []


def test_pause_on_failures_pauses_once_and_again_after_a_resume(db, db_url):
    t = _now(db)
    _schedule(db, "p", pause_on_failures=2)
    _runs(db, "p", t - timedelta(minutes=5), ("failed", t - timedelta(seconds=250)))
    _runs(db, "p", t - timedelta(minutes=4), ("failed", t - timedelta(seconds=200)))

    def paused_at() -> datetime | None:
        return db.execute("SELECT paused_at FROM scheduler.schedules WHERE name = 'p'").fetchone()[
            0
        ]

    def resume() -> None:
        db.execute(STORE.q["schedule_resume"], {"name": "p"})

    first, second, third, fourth, fifth = evaluations(
        db_url, t, t + timedelta(seconds=1), resume, t + timedelta(seconds=2),
        lambda: [_runs(db, "p", t + timedelta(seconds=s), ("failed", t + timedelta(seconds=s)))
                 for s in (10, 20)],
        t + timedelta(seconds=30),
        resume,
        lambda: _runs(db, "p", t + timedelta(seconds=40), ("succeeded", t + timedelta(seconds=41))),
        t + timedelta(seconds=50),
    )  # fmt: skip
    assert (kinds(first.opened), first.paused) == ([("p", "paused")], ["p"])
    assert first.opened[0].detail.startswith("2 consecutive failed runs (pause_on_failures: 2)")
    assert (second.opened, second.paused) == ([], [])  # still paused: nothing again
    assert (third.opened, third.paused) == ([], [])  # resumed: no new failure yet
    assert (fourth.opened, fourth.paused) == ([], ["p"])  # two more failures: paused again
    assert paused_at() is None  # resumed before fifth
    assert [i.close_reason for i in fifth.closed] == ["succeeded"]
    assert _incidents(db, "p") == [("paused", False, "succeeded", 2)]


def test_dead_man_opens_when_a_fire_time_has_not_succeeded_in_time(db, db_url):
    t = _now(db)
    fire = t - timedelta(minutes=10)
    _schedule(db, "d", alert_after_s=300, on_alert="alerts_test.notify", on_alert_options=OPTIONS)
    job = _job(db, "d", fire)  # materialised, never run (no worker)

    def succeed() -> None:
        db.execute("UPDATE scheduler.jobs SET state = 'succeeded', attempt = 1, finished_at = %s "
                   "WHERE id = %s", [fire + timedelta(seconds=400), job])  # fmt: skip
        db.execute("INSERT INTO scheduler.job_runs (job_id, attempt, started_at, finished_at, "
                   "outcome) VALUES (%s, 1, %s, %s, 'succeeded')",
                   [job, fire + timedelta(seconds=399), fire + timedelta(seconds=400)])  # fmt: skip

    early, late, again, after = evaluations(
        db_url, fire + timedelta(seconds=299), fire + timedelta(seconds=301),
        fire + timedelta(seconds=350), succeed, fire + timedelta(seconds=450),
    )  # fmt: skip
    assert (early.opened, early.open) == ([], [])
    assert kinds(late.opened) == [("d", "missed")]
    assert late.opened[0].detail == (
        f"fire time {fire:%Y-%m-%dT%H:%M:%SZ} has not succeeded within 300 s (alert_after_s)"
    )
    assert (again.opened, kinds(again.open)) == ([], [("d", "missed")])
    assert [i.close_reason for i in after.closed] == ["succeeded"]
    assert _incidents(db, "d") == [("missed", False, "succeeded", None)]
    assert [k for k, *_ in _alert_jobs(db)] == [
        f"incident:{late.opened[0].id}:opened",
        f"incident:{late.opened[0].id}:closed",
    ]


def test_dead_man_counts_from_materialisation_and_a_later_success_suppresses_it(db, db_url):
    t = _now(db)
    fire = t - timedelta(hours=1)
    _schedule(db, "outage", alert_after_s=300)  # materialised 50 min late (no leader)
    _job(db, "outage", fire, created_at=fire + timedelta(minutes=50))
    _schedule(db, "healthy", alert_after_s=300)  # its fire time failed, the next succeeded
    _runs(db, "healthy", fire, ("failed", fire + timedelta(seconds=5)))
    _runs(db, "healthy", fire + timedelta(minutes=1), ("succeeded", fire + timedelta(seconds=65)))
    (result,) = evaluations(db_url, fire + timedelta(minutes=54))
    assert result.opened == []
    (result,) = evaluations(db_url, fire + timedelta(minutes=56))
    assert kinds(result.opened) == [("outage", "missed")]


def test_dead_man_of_a_fire_time_never_materialised_but_not_when_paused(db, db_url):
    t = _now(db)  # the leader is elected about now: time without a leader does not count
    for name, cols in [("stuck", {}), ("paused", {"paused_at": t}), ("off", {"enabled": False})]:
        _schedule(db, name, alert_after_s=60, next_run_at=t - timedelta(hours=1), **cols)
    early, late = evaluations(db_url, t + timedelta(seconds=30), t + timedelta(seconds=65))
    assert early.opened == []
    assert kinds(late.opened) == [("stuck", "missed")]
    assert "was not materialised within 60 s" in late.opened[0].detail


def test_another_term_opens_no_duplicate_and_a_stale_term_writes_nothing(db, db_url):
    t = _now(db)
    _schedule(db, "s", alert_on_failures=1)
    _runs(db, "s", t - timedelta(minutes=1), ("failed", t - timedelta(seconds=30)))
    (first,) = evaluations(db_url, t)
    (second,) = evaluations(db_url, t + timedelta(seconds=1))  # a new term, a new leader
    assert kinds(first.opened) == [("s", "failing")]
    assert (second.opened, kinds(second.open)) == ([], [("s", "failing")])

    async def stale() -> None:
        async with Leader(db_url) as leader:
            _runs(db, "s", t, ("succeeded", t + timedelta(seconds=2)))
            with pytest.raises(LeadershipLostError):
                await alerts.evaluate(leader.conn, STORE, holder=HOLDER, term=leader.term - 1,
                                      now=t + timedelta(seconds=3))  # fmt: skip

    asyncio.run(stale())
    assert _incidents(db, "s") == [("failing", True, None, 1)]  # not closed by the stale term
    with pytest.raises(psycopg.errors.UniqueViolation):  # the index holds one open per kind
        db.execute("INSERT INTO scheduler.incidents (schedule_name, kind, opened_at, since, "
                   "detail, opened_term) VALUES ('s', 'failing', now(), now(), 'x', 1)")  # fmt: skip


def test_removing_the_setting_or_the_schedule_closes_its_incidents(db, db_url):
    t = _now(db)
    for name in ("a", "b"):
        _schedule(db, name, alert_on_failures=1, on_alert="alerts_test.notify",
                  on_alert_options=OPTIONS)  # fmt: skip
        _runs(db, name, t - timedelta(minutes=1), ("failed", t - timedelta(seconds=30)))
    opened, closed = evaluations(
        db_url, t,
        lambda: db.execute("UPDATE scheduler.schedules SET alert_on_failures = NULL "
                           "WHERE name = 'a'"),
        lambda: db.execute("DELETE FROM scheduler.schedules WHERE name = 'b'"),
        t + timedelta(seconds=1),
    )  # fmt: skip
    assert sorted(kinds(opened.opened)) == [("a", "failing"), ("b", "failing")]
    assert sorted((i.schedule, i.close_reason) for i in closed.closed) == [
        ("a", "alert_removed"),
        ("b", "schedule_removed"),
    ]
    keys = [k for k, *_ in _alert_jobs(db)]  # b has no schedule left, so no on_alert
    assert sorted(keys) == sorted([f"incident:{i.id}:opened" for i in opened.opened]
                                  + [f"incident:{closed.closed[0].id}:closed"])  # fmt: skip


def test_status_shows_open_incidents(db, db_url, monkeypatch, capsys):
    t = _now(db)
    _schedule(db, "nightly", alert_on_failures=1)
    _runs(db, "nightly", t - timedelta(minutes=1), ("failed", t - timedelta(seconds=30)))
    evaluations(db_url, t)

    async def status() -> dict[str, Any]:
        async with await psycopg.AsyncConnection.connect(db_url, autocommit=True) as conn:
            return await operations.status(conn, STORE)

    rows = asyncio.run(status())["incidents"]
    assert [(r["schedule"], r["kind"]) for r in rows] == [("nightly", "failing")]
    assert rows[0]["detail"].startswith("1 consecutive failed runs")
    monkeypatch.setenv("SCHEDULER_DATABASE_URL", db_url)
    capsys.readouterr()  # the evaluation's log lines
    assert main(["status", "--json"]) == 0
    assert [r["kind"] for r in json.loads(capsys.readouterr().out)["incidents"]] == ["failing"]
    assert main(["status"]) == 0
    text = capsys.readouterr().out
    assert "incidents:" in text and "nightly" in text and "failing" in text


def test_the_heartbeat_says_whether_alerts_exist(db, db_url):
    async def flag() -> bool:
        async with Leader(db_url) as leader:
            beat = await STORE.heartbeat(leader.conn, HOLDER, leader.term, ahead_s=0)
            assert beat is not None
            return bool(beat["alerts"])

    _schedule(db, "plain")
    assert asyncio.run(flag()) is False
    db.execute("INSERT INTO scheduler.incidents (schedule_name, kind, opened_at, since, detail, "
               "opened_term) VALUES ('gone', 'missed', now(), now(), 'x', 1)")  # fmt: skip
    assert asyncio.run(flag()) is True  # an open incident still has to be closed
    db.execute("UPDATE scheduler.incidents SET closed_at = now(), close_reason = 'succeeded'")
    assert asyncio.run(flag()) is False
    db.execute("UPDATE scheduler.schedules SET alert_after_s = 60")
    assert asyncio.run(flag()) is True


def test_a_real_replica_opens_one_incident_for_a_failing_task_and_closes_it(db, db_url):
    """A real leader and worker: the task fails every second; the incident opens once, stays
    one while more runs fail, closes after the first success; notify runs twice."""
    config = load_config_text(
        "imports: [tests.integration.test_alerts]\nschedules:\n"
        "  - {name: flaky, every: 1s, task: alerts_test.flaky, alert_on_failures: 3,\n"
        "     on_alert: alerts_test.notify}\n"
    )
    FAILING.set()
    NOTIFIED.clear()

    def failures() -> int:
        return db.execute(
            "SELECT count(*) FROM scheduler.job_runs AS r JOIN scheduler.jobs AS j "
            "ON j.id = r.job_id WHERE j.schedule_name = 'flaky' AND r.outcome <> 'succeeded'"
        ).fetchone()[0]

    async def scenario() -> None:
        async with running_replica(db_url, Settings(), config) as replica:
            replica.alerts.every_s = 0.2
            await wait_until_async(lambda: _incidents(db, "flaky"), timeout=30)
            opened_after = failures()
            assert opened_after >= 3
            await wait_until_async(lambda: failures() >= opened_after + 3, timeout=30)
            assert [i[:2] for i in _incidents(db, "flaky")] == [("failing", True)]
            FAILING.clear()
            await wait_until_async(lambda: not _incidents(db, "flaky")[0][1], timeout=30)
            await wait_until_async(lambda: len(NOTIFIED) == 2, timeout=30)

    try:
        asyncio.run(scenario())
    finally:
        FAILING.clear()
    assert [i[:3] for i in _incidents(db, "flaky")] == [("failing", False, "succeeded")]
    assert [(n["schedule"], n["kind"], n["event"]) for n in NOTIFIED] == [
        ("flaky", "failing", "opened"),
        ("flaky", "failing", "closed"),
    ]
    assert len(_alert_jobs(db)) == 2


def test_an_idle_leader_without_alert_settings_evaluates_nothing(db, db_url):
    config = load_config_text(
        "imports: [tests.integration.test_alerts]\nschedules:\n"
        "  - {name: quiet, cron: '0 3 * * *', task: alerts_test.flaky}\n"
    )

    def beats() -> datetime | None:
        row = db.execute("SELECT heartbeat_at FROM scheduler.leader").fetchone()
        return row[0] if row else None

    async def scenario() -> int:
        async with running_replica(db_url, Settings(), config) as replica:
            replica.alerts.every_s = 0.0
            await wait_until_async(beats, timeout=30)
            first = beats()
            await wait_until_async(lambda: beats() != first, timeout=30)  # ticks went by
            return replica.alerts.evaluations

    assert asyncio.run(scenario()) == 0
