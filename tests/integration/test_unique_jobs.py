"""Unique jobs (issue 14): ``idempotency_key`` with a ``unique_for_s`` window and an
``on_conflict`` policy, against a real PostgreSQL. The window is measured by the database
clock: tests that need it to pass use a short window and wait until the database's ``now()``
is past the job's ``unique_until`` (never a sleep)."""

from __future__ import annotations

import asyncio
import json
import os
import pickle
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path

import psycopg
import pytest

from scheduler import InvalidArgumentError, enqueue, task
from scheduler.errors import DuplicateJobError
from scheduler.jobs import Enqueued, enqueue_result, enqueue_result_async
from scheduler.testing import inline
from tests.conftest import wait_until

HOUR = 3600.0
RACERS = 16
ROOT = Path(__file__).resolve().parents[2]


@task(name="test_unique.noop", queue="uniq")
def noop(n: int = 0) -> None:
    pass


@task(name="test_unique.other", queue="uniq")
def other(n: int = 0) -> None:
    pass


def _rows(db, key):
    return db.execute(
        "SELECT id, state, args, priority, run_at, first_run_at, unique_until, "
        "unique_until - created_at AS window FROM scheduler.jobs WHERE idempotency_key = %s "
        "ORDER BY id",
        [key],
    ).fetchall()


def _set_state(db, job_id, state):
    if state == "running":
        db.execute(
            "UPDATE scheduler.jobs SET state = 'running', attempt = 1, locked_by = 'w', "
            "locked_at = now(), lease_expires_at = now() + interval '1 hour' WHERE id = %s",
            [job_id],
        )
    elif state != "pending":
        db.execute(
            "UPDATE scheduler.jobs SET state = %s, finished_at = now() WHERE id = %s",
            [state, job_id],
        )


def _window_passed(db, job_id):
    """True once the database clock is past the job's window."""
    return db.execute(
        "SELECT now() > unique_until FROM scheduler.jobs WHERE id = %s", [job_id]
    ).fetchone()[0]


# ---- the window and today's behaviour --------------------------------------------------------


def test_a_key_without_a_window_keeps_todays_behaviour(db, db_url):
    with psycopg.connect(db_url, autocommit=True) as conn:
        first = enqueue_result(noop, args={"n": 1}, idempotency_key="k", connection=conn)
        again = enqueue_result(noop, args={"n": 2}, idempotency_key="k", connection=conn)
        assert first == Enqueued(first.id, True, None, False)
        assert again == Enqueued(first.id, False, "pending", False)
        assert enqueue(noop, args={"n": 3}, idempotency_key="k", connection=conn) == first.id
        _set_state(db, first.id, "succeeded")  # a finished job frees the key
        third = enqueue_result(noop, idempotency_key="k", connection=conn)
    assert third.created and third.id != first.id
    rows = _rows(db, "k")
    assert [(r[0], r[2], r[6]) for r in rows] == [(first.id, {"n": 1}, None), (third.id, {}, None)]


@pytest.mark.parametrize("state", ["pending", "running", "succeeded", "dead", "cancelled"])
def test_the_window_blocks_a_second_job_whatever_the_first_ones_state(db, db_url, state):
    with psycopg.connect(db_url, autocommit=True) as conn:
        first = enqueue_result(
            noop, args={"n": 1}, idempotency_key="k", unique_for_s=HOUR, connection=conn
        )
        assert first.created
        _set_state(db, first.id, state)
        again = enqueue_result(
            noop, args={"n": 2}, idempotency_key="k", unique_for_s=60, connection=conn
        )
        assert again == Enqueued(first.id, False, state, False)
        # the int-returning calls: the same id, nothing inserted
        call = noop.configure(idempotency_key="k", unique_for_s=HOUR, connection=conn)
        assert call.defer(n=3) == first.id
        assert enqueue(noop, idempotency_key="k", unique_for_s=1, connection=conn) == first.id
    [(job_id, _, args, *_, window)] = _rows(db, "k")
    assert (job_id, args) == (first.id, {"n": 1})
    assert window == timedelta(hours=1)  # the first job's window: created_at + unique_for_s


def test_after_the_window_a_new_job_is_inserted(db, db_url):
    with psycopg.connect(db_url, autocommit=True) as conn:
        first = enqueue_result(noop, idempotency_key="k", unique_for_s=0.2, connection=conn)
        _set_state(db, first.id, "succeeded")
        wait_until(lambda: _window_passed(db, first.id), timeout=10)
        second = enqueue_result(noop, idempotency_key="k", unique_for_s=HOUR, connection=conn)
        assert second.created and second.id != first.id
        _set_state(db, second.id, "succeeded")
        # within the second job's window (1 h), whatever this call's own unique_for_s
        third = enqueue_result(noop, idempotency_key="k", unique_for_s=0.2, connection=conn)
        assert third == Enqueued(second.id, False, "succeeded")
    rows = _rows(db, "k")
    assert [(r[0], r[1]) for r in rows] == [(first.id, "succeeded"), (second.id, "succeeded")]
    assert rows[0][6] is None  # the passed window was released
    assert rows[1][7] == timedelta(hours=1)


def test_a_live_job_past_its_window_still_holds_the_key(db, db_url):
    with psycopg.connect(db_url, autocommit=True) as conn:
        first = enqueue_result(noop, idempotency_key="k", unique_for_s=0.2, connection=conn)
        wait_until(lambda: _window_passed(db, first.id), timeout=10)
        again = enqueue_result(noop, idempotency_key="k", unique_for_s=HOUR, connection=conn)
    assert again == Enqueued(first.id, False, "pending")
    assert len(_rows(db, "k")) == 1


def test_async_calls_say_it_was_a_duplicate(db, db_url):
    async def run() -> tuple[Enqueued, Enqueued, int]:
        async with await psycopg.AsyncConnection.connect(db_url, autocommit=True) as conn:
            first = await enqueue_result_async(
                noop, idempotency_key="k", unique_for_s=HOUR, connection=conn
            )
            _set_state(db, first.id, "dead")
            call = noop.configure(idempotency_key="k", unique_for_s=HOUR, connection=conn)
            return first, await call.defer_result_async(n=2), await call.defer_async(n=3)

    first, again, as_int = asyncio.run(run())
    assert first.created and again == Enqueued(first.id, False, "dead") and as_int == first.id
    assert len(_rows(db, "k")) == 1


# ---- on_conflict ------------------------------------------------------------------------------


def test_replace_gives_a_pending_job_the_new_arguments_due_time_and_priority(db, db_url):
    now = db.execute("SELECT now()").fetchone()[0]
    later, sooner = now + timedelta(hours=2), now + timedelta(minutes=10)
    with psycopg.connect(db_url, autocommit=True) as conn:
        first = noop.configure(
            idempotency_key="k", unique_for_s=HOUR, priority=5, connection=conn
        ).schedule_at_result(later, n=1)
        before = _rows(db, "k")
        with psycopg.connect(db_url, autocommit=True) as listener:
            listener.execute('LISTEN "scheduler.jobs"')
            again = noop.configure(
                idempotency_key="k", unique_for_s=HOUR, priority=1, on_conflict="replace",
                connection=conn,
            ).schedule_at_result(sooner, n=2)  # fmt: skip
            payloads = [n.payload for n in listener.notifies(timeout=2.0, stop_after=1)]
    assert again == Enqueued(first.id, False, "pending", replaced=True)
    [(job_id, state, args, priority, run_at, first_run_at, until, _)] = _rows(db, "k")
    assert (job_id, state, args, priority) == (first.id, "pending", {"n": 2}, 1)
    assert run_at == first_run_at == sooner
    assert until == before[0][6]  # the window stays that of the job's creation
    queue, epoch = payloads[0].split(" ")  # the workers learn the new due time
    assert queue == "uniq" and abs(float(epoch) - sooner.timestamp()) < 1e-3


@pytest.mark.parametrize("state", ["running", "succeeded"])
def test_replace_falls_back_to_return_for_a_running_or_finished_job(db, db_url, state):
    with psycopg.connect(db_url, autocommit=True) as conn:
        first = enqueue_result(
            noop, args={"n": 1}, idempotency_key="k", unique_for_s=HOUR, connection=conn
        )
        _set_state(db, first.id, state)
        again = enqueue_result(noop, args={"n": 2}, priority=9, idempotency_key="k",
                               unique_for_s=HOUR, on_conflict="replace", connection=conn)  # fmt: skip
        as_int = noop.configure(idempotency_key="k", unique_for_s=HOUR,
                                on_conflict="replace", connection=conn).defer(n=3)  # fmt: skip
    assert again == Enqueued(first.id, False, state, replaced=False) and as_int == first.id
    [(_, _, args, priority, *_)] = _rows(db, "k")
    assert (args, priority) == ({"n": 1}, 0)


def test_replace_does_not_give_another_tasks_job_its_arguments(db, db_url):
    with psycopg.connect(db_url, autocommit=True) as conn:
        first = enqueue_result(noop, args={"n": 1}, idempotency_key="k", connection=conn)
        again = enqueue_result(other, args={"n": 2}, idempotency_key="k",
                               on_conflict="replace", connection=conn)  # fmt: skip
    assert again == Enqueued(first.id, False, "pending", replaced=False)
    assert _rows(db, "k")[0][2] == {"n": 1}


def test_raise_names_the_key_and_the_job_and_writes_nothing(db, db_url):
    with psycopg.connect(db_url) as conn:  # the caller's transaction
        first = enqueue_result(noop, args={"n": 1}, idempotency_key="order-7",
                               unique_for_s=HOUR, connection=conn)  # fmt: skip
        conn.commit()
        _set_state(db, first.id, "succeeded")
        call = noop.configure(idempotency_key="order-7", unique_for_s=HOUR, on_conflict="raise",
                              connection=conn)  # fmt: skip
        with pytest.raises(DuplicateJobError, match=rf"'order-7' is held by job {first.id} "
                           r"\(succeeded\): nothing was enqueued") as info:  # fmt: skip
            call.defer(n=2)
        assert (info.value.key, info.value.job_id, info.value.state) == (
            "order-7", first.id, "succeeded")  # fmt: skip
        assert str(pickle.loads(pickle.dumps(info.value))) == str(info.value)
        # without a window: raised for the live job holding the key
        live = enqueue(noop, idempotency_key="live", connection=conn)
        with pytest.raises(DuplicateJobError, match=f"held by job {live} \\(pending\\)"):
            enqueue(noop, idempotency_key="live", on_conflict="raise", connection=conn)
        assert conn.info.transaction_status == psycopg.pq.TransactionStatus.INTRANS  # usable
        conn.commit()
    assert [r[2] for r in _rows(db, "order-7")] == [{"n": 1}]
    assert db.execute("SELECT count(*) FROM scheduler.jobs").fetchone()[0] == 2


# ---- concurrent enqueuers: one row per window --------------------------------------------------


def _race(db_url, key, autocommit):
    """RACERS threads on their own connections, released together; each finishes the job it
    inserted before it commits (a job that ran at once), so the live-job index does not keep
    the others out: only the window does."""
    barrier = threading.Barrier(RACERS)

    def racer(n: int) -> Enqueued:
        with psycopg.connect(db_url, autocommit=autocommit) as conn:
            barrier.wait(timeout=30)
            done = enqueue_result(noop, args={"n": n}, idempotency_key=key,
                                  unique_for_s=HOUR, connection=conn)  # fmt: skip
            if done.created:
                _set_state(conn, done.id, "succeeded")
            conn.commit()
            return done

    with ThreadPoolExecutor(RACERS) as pool:
        return list(pool.map(racer, range(RACERS)))


@pytest.mark.parametrize("autocommit", [False, True], ids=["transaction", "autocommit"])
def test_racing_enqueuers_insert_one_job_per_window(db, db_url, autocommit):
    for round_ in range(4):
        key = f"race-{round_}"
        results = _race(db_url, key, autocommit)
        rows = _rows(db, key)
        assert len(rows) == 1, rows
        assert [r.created for r in results].count(True) == 1
        assert {r.id for r in results} == {rows[0][0]}
        assert {r.existing_state for r in results if not r.created} <= {"pending", "succeeded"}


def test_racing_enqueuers_after_a_window_passed_insert_one_job(db, db_url):
    with psycopg.connect(db_url, autocommit=True) as conn:
        old = enqueue_result(noop, idempotency_key="k", unique_for_s=0.2, connection=conn)
    _set_state(db, old.id, "succeeded")
    wait_until(lambda: _window_passed(db, old.id), timeout=10)
    results = _race(db_url, "k", autocommit=False)
    rows = _rows(db, "k")
    assert len(rows) == 2 and rows[0][0] == old.id, rows
    assert [r.created for r in results].count(True) == 1
    assert {r.id for r in results} == {rows[1][0]}


# ---- hostile values: refused before any SQL, naming the option --------------------------------

HOSTILE = {
    "bool": ({"unique_for_s": True}, "unique_for_s must be a number of seconds, not bool"),
    "str": ({"unique_for_s": "60"}, "unique_for_s must be a number of seconds, not str"),
    "timedelta": ({"unique_for_s": timedelta(1)}, "unique_for_s must be a number of seconds"),
    "nan": ({"unique_for_s": float("nan")}, "unique_for_s must be more than 0 s .* not nan"),
    "inf": ({"unique_for_s": float("inf")}, "unique_for_s must be more than 0 s"),
    "zero": ({"unique_for_s": 0}, "unique_for_s must be more than 0 s and at most 10 years"),
    "negative": ({"unique_for_s": -5}, "unique_for_s must be more than 0 s"),
    "11 years": ({"unique_for_s": 11 * 365 * 86400}, "at most 10 years, not 346896000"),
    "huge int": ({"unique_for_s": 10**400}, "unique_for_s must be more than 0 s"),
    "unknown policy": ({"on_conflict": "update"}, "must be 'return', 'replace' or 'raise', not"),
    "policy case": ({"on_conflict": "RAISE"}, "on_conflict must be .* not 'RAISE'"),
    "policy None": ({"on_conflict": None}, "on_conflict must be .* not None"),
    "policy list": ({"on_conflict": ["raise"]}, r"on_conflict must be .* not \['raise'\]"),
    "window without key": (
        {"idempotency_key": None, "unique_for_s": 60},
        "unique_for_s needs an idempotency_key",
    ),
    "raise without key": (
        {"idempotency_key": None, "on_conflict": "raise"},
        "on_conflict='raise' needs an idempotency_key",
    ),
}


@pytest.mark.parametrize(("options", "fragment"), HOSTILE.values(), ids=HOSTILE.keys())
def test_hostile_unique_options_are_refused_before_any_sql(db, db_url, options, fragment):
    opts = {"idempotency_key": "k", **options}
    with psycopg.connect(db_url) as conn:
        calls = [
            lambda: enqueue(noop, connection=conn, **opts),
            lambda: enqueue_result(noop, connection=conn, **opts),
            lambda: noop.configure(connection=conn, **opts).defer(n=1),
            lambda: noop.configure(connection=conn, **opts).defer_result(n=1),
        ]
        for call in calls:
            with pytest.raises(InvalidArgumentError, match=fragment):
                call()
        assert conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE  # no SQL ran
    assert db.execute("SELECT count(*) FROM scheduler.jobs").fetchone()[0] == 0


def test_bulk_enqueue_refuses_unique_options(db_url):
    with pytest.raises(InvalidArgumentError, match="defer_many does not take .*unique_for_s"):
        noop.configure(unique_for_s=60).defer_many([{"n": 1}])


def test_inline_mode_runs_a_duplicate_again_without_error():
    with inline() as runner:
        first = enqueue_result(noop, idempotency_key="k", unique_for_s=HOUR, on_conflict="raise")
        second = noop.configure(idempotency_key="k", unique_for_s=HOUR).defer_result(n=2)
    assert first.created and second.created and [j.ran for j in runner.jobs] == [True, True]


# ---- the CLI: scheduler enqueue --unique-for --on-conflict --------------------------------------


def _cli(db_url, *args):
    env = {k: v for k, v in os.environ.items() if not k.startswith("SCHEDULER_")}
    env.update(SCHEDULER_DATABASE_URL=db_url, PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-m", "scheduler", "enqueue", "x.remote", *args],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=60,
                          check=False)  # fmt: skip


def test_cli_enqueue_with_a_window_and_a_policy(db, db_url):
    first = _cli(db_url, "--idempotency-key", "k", "--unique-for", "1h", "--json")
    assert first.returncode == 0 and "note:" not in first.stderr, first.stderr
    made = json.loads(first.stdout)
    assert (made["created"], made["existing_state"]) == (True, None)
    _set_state(db, made["id"], "succeeded")
    again = _cli(db_url, "--idempotency-key", "k", "--unique-for", "1h", "--json")
    assert again.returncode == 0, again.stderr
    found = json.loads(again.stdout)
    assert (found["id"], found["created"], found["existing_state"]) == (made["id"], False,
                                                                         "succeeded")  # fmt: skip
    assert f"note: job {made['id']} (succeeded) holds idempotency key 'k'" in again.stderr
    refused = _cli(db_url, "--idempotency-key", "k", "--unique-for", "1h", "--on-conflict",
                   "raise")  # fmt: skip
    assert refused.returncode == 1 and f"held by job {made['id']}" in refused.stderr
    [(_, _, _, _, _, _, _, window)] = _rows(db, "k")
    assert window == timedelta(hours=1)


@pytest.mark.parametrize(
    ("options", "expected"),
    [(["--idempotency-key", "k", "--unique-for", "0s"], "--unique-for '0s': the duration must"),
     (["--idempotency-key", "k", "--unique-for", "4000d"], "--unique-for '4000d': at most 10 y"),
     (["--idempotency-key", "k", "--unique-for", "soon"], "--unique-for 'soon' is not a dur"),
     (["--unique-for", "1h"], "--unique-for needs --idempotency-key"),
     (["--on-conflict", "replace"], "--on-conflict needs --idempotency-key"),
     (["--idempotency-key", "k", "--on-conflict", "update"], "invalid choice: 'update'")],
    ids=["zero", "11 years", "not a duration", "window without key", "policy without key",
         "unknown policy"],
)  # fmt: skip
def test_cli_hostile_unique_options_exit_2(db, db_url, options, expected):
    result = _cli(db_url, *options)
    assert result.returncode == 2 and expected in result.stderr, result.stderr
    assert "Traceback" not in result.stderr
    assert db.execute("SELECT count(*) FROM scheduler.jobs").fetchone()[0] == 0
