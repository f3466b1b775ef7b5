"""Where the statements of a control call run (:mod:`scheduler.control` for jobs,
:mod:`scheduler.schedule_control` for schedules): on the default database in a session of its
own, or inside the caller's transaction on the caller's connection, sync or async: a psycopg
connection, or an ORM's connection or session (:mod:`scheduler.adapters`: SQLAlchemy, Django).

``run_sync(connection, action)`` and ``run_async(connection, action)`` run
``await action(conn, store)``; a sync caller's connection is wrapped so the same coroutine code
runs on it. Database failures become :mod:`scheduler.errors` exceptions
(:func:`scheduler.operations.database_error`).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar, cast

import psycopg

from . import operations
from .adapters import AsyncConnectionLike, SyncConnectionLike, async_connection, sync_connection
from .connections import check_connection, default_database_url
from .settings import get_settings
from .store import Store

T = TypeVar("T")
SyncConn = SyncConnectionLike  # what the sync control calls' connection= accepts
AsyncConn = psycopg.AsyncConnection[Any]  # what the statements run on
AsyncConnArg = AsyncConnectionLike  # what the *_async control calls' connection= accepts
Action = Callable[[psycopg.AsyncConnection[Any], Store], Awaitable[T]]


async def _run(connection: psycopg.AsyncConnection[Any] | None, action: Action[T]) -> T:
    """``action(conn, store)`` in a session on the default database, or in the caller's
    transaction on its connection; database failures become scheduler errors."""
    settings = get_settings()
    if connection is None:
        url, _ = await asyncio.to_thread(default_database_url, settings)
        return cast(T, await operations.session(url, settings, action))
    store = Store(settings.schema_name)
    idle = connection.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
    try:
        if idle and not connection.autocommit:
            await store.database_now(connection)  # opens the caller's transaction (DB-API)
        async with connection.transaction():  # a savepoint in the caller's transaction
            return await action(connection, store)
    except psycopg.Error as exc:
        raise operations.database_error(exc, connection.info.dsn, settings) from exc


def blocking(make: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run ``make()`` to its end on a new event loop: in this thread, or in a helper thread
    when this thread runs a loop already (a sync call from async code)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:  # none: run below, outside this handler (errors get no context)
        pass
    else:
        with ThreadPoolExecutor(1, thread_name_prefix="scheduler-control") as thread:
            return thread.submit(asyncio.run, make()).result()
    return asyncio.run(make())


class _Blocking:
    """What :mod:`scheduler.operations` and this module use of an ``AsyncConnection`` and its
    cursors, over a caller's sync connection, so the sync calls run the same code: the
    coroutines run to their end at once; other attributes (``info``, ``nextset``) are as is."""

    def __init__(self, sync: Any):
        self._sync = sync

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sync, name)

    def cursor(self, **kwargs: Any) -> _Blocking:
        return _Blocking(self._sync.cursor(**kwargs))

    async def execute(self, *args: Any) -> _Blocking:
        return _Blocking(self._sync.execute(*args))  # a cursor

    async def executemany(self, *args: Any, **kwargs: Any) -> None:
        self._sync.executemany(*args, **kwargs)

    async def fetchall(self) -> Any:
        return self._sync.fetchall()

    async def fetchone(self) -> Any:
        return self._sync.fetchone()

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[None]:
        with self._sync.transaction():
            yield


def run_sync(connection: SyncConn | None, action: Action[T]) -> T:
    check_connection(connection)
    conn = None if connection is None else _Blocking(sync_connection(connection))
    return blocking(lambda: _run(cast("psycopg.AsyncConnection[Any] | None", conn), action))


def run_async(connection: AsyncConnArg | None, action: Action[T]) -> Awaitable[T]:
    check_connection(connection, is_async=True)
    return _run_on(connection, action)


async def _run_on(connection: AsyncConnArg | None, action: Action[T]) -> T:
    return await _run(await async_connection(connection), action)
