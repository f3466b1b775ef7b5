"""Attempt and failure hooks (scheduler.hooks) around real attempts of a real worker: sync
handlers in their thread, async ones in their task, the handler's exception seen by the
hooks, a failing failure hook ignored, a hook that raises failing the attempt."""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import threading
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from scheduler import current_job, enqueue, task
from scheduler.hooks import add_attempt_hook, add_failure_hook
from tests.integration.test_worker import _run_worker_until

SEEN: contextvars.ContextVar[str | None] = contextvars.ContextVar("seen", default=None)
EVENTS: list[tuple[Any, ...]] = []


@task(name="test_hooks.sync_ok")
def sync_ok() -> str:
    ctx = current_job()
    EVENTS.append(("sync", SEEN.get(), threading.current_thread().name, ctx and ctx.task))
    return "done"


@task(name="test_hooks.async_boom", max_attempts=1)
async def async_boom() -> None:
    EVENTS.append(("async", SEEN.get()))
    raise KeyError("customer 9")


@task(name="test_hooks.sync_ok_too", max_attempts=1)
def sync_ok_too() -> None:
    EVENTS.append(("sync_ok_too",))


@pytest.fixture
def hooks() -> Iterator[None]:
    EVENTS.clear()

    @contextlib.contextmanager
    def scope(ctx: Any) -> Iterator[None]:
        token = SEEN.set(f"job {ctx.job_id}")
        EVENTS.append(("enter", ctx.task, threading.current_thread().name.startswith("scheduler-job")))
        try:
            yield
        except BaseException as exc:
            EVENTS.append(("exit", ctx.task, type(exc).__name__))
            raise
        else:
            EVENTS.append(("exit", ctx.task, None))
        finally:
            SEEN.reset(token)

    def failed(ctx: Any, exc: BaseException) -> None:
        EVENTS.append(("failed", ctx.task, ctx.attempt, repr(exc)))

    def broken_reporter(ctx: Any, exc: BaseException) -> None:
        raise RuntimeError("the reporter is down")

    removers = [add_attempt_hook(scope), add_failure_hook(failed), add_failure_hook(broken_reporter)]
    yield
    for remove in removers:
        remove()


def _states(db: psycopg.Connection) -> dict[str, str]:
    return dict(db.execute("SELECT task, state FROM scheduler.jobs").fetchall())


def test_hooks_wrap_sync_and_async_attempts_and_see_failures(
    db: psycopg.Connection, db_url: str, hooks: None
) -> None:
    ok_id = enqueue(sync_ok, connection=db)
    enqueue(async_boom, connection=db)
    db.commit()

    async def finished(c: psycopg.AsyncConnection[Any]) -> bool:
        cur = await c.execute("SELECT count(*) FROM scheduler.jobs WHERE state IN ('pending', 'running')")
        return (await cur.fetchone())[0] == 0

    asyncio.run(_run_worker_until(db_url, finished))
    assert _states(db) == {"test_hooks.sync_ok": "succeeded", "test_hooks.async_boom": "dead"}
    # the sync handler ran inside the hook, in its own thread, with the hook's context
    assert ("enter", "test_hooks.sync_ok", True) in EVENTS
    sync = next(e for e in EVENTS if e[0] == "sync")
    assert sync[1] == f"job {ok_id}" and sync[2].startswith("scheduler-job")
    assert sync[3] == "test_hooks.sync_ok"
    assert ("exit", "test_hooks.sync_ok", None) in EVENTS
    # the async one in its task: the hook saw its exception, then the failure hook
    assert ("enter", "test_hooks.async_boom", False) in EVENTS
    assert next(e for e in EVENTS if e[0] == "async")[1].startswith("job ")
    assert ("exit", "test_hooks.async_boom", "KeyError") in EVENTS
    assert ("failed", "test_hooks.async_boom", 1, "KeyError('customer 9')") in EVENTS
    assert not any(e[0] == "failed" and e[1] == "test_hooks.sync_ok" for e in EVENTS)


def test_a_hook_that_raises_fails_the_attempt(db: psycopg.Connection, db_url: str) -> None:
    EVENTS.clear()

    @contextlib.contextmanager
    def refuse(ctx: Any) -> Iterator[None]:
        raise PermissionError("no database connection for this thread")
        yield

    remove = add_attempt_hook(refuse)
    try:
        enqueue(sync_ok_too, connection=db)
        db.commit()

        async def finished(c: psycopg.AsyncConnection[Any]) -> bool:
            cur = await c.execute("SELECT count(*) FROM scheduler.jobs WHERE state = 'dead'")
            return (await cur.fetchone())[0] == 1

        asyncio.run(_run_worker_until(db_url, finished))
    finally:
        remove()
    assert EVENTS == []  # the handler never ran
    (error,) = db.execute("SELECT last_error FROM scheduler.jobs").fetchone()
    assert "PermissionError" in error and "no database connection" in error


def test_hooks_must_be_callable() -> None:
    with pytest.raises(TypeError, match="callable"):
        add_attempt_hook("not a hook")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="callable"):
        add_failure_hook(None)  # type: ignore[arg-type]
