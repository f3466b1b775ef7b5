"""Where the Python API's INSERTs run: the caller's psycopg connection (inside its transaction,
sync or async; an ORM's connection or session is turned into its psycopg connection by
:mod:`scheduler.adapters`), or, when it passes none, a small pool on the default database URL
that commits at once.

The default URL is the one set by :func:`set_default_database_url`, else the URL of the replica
running in this process (so handlers can enqueue follow-up jobs, also on the embedded server;
dropped when the replica stops), else ``SCHEDULER_DATABASE_URL``, else
the embedded server the CLI uses (``<SCHEDULER_EMBEDDED_DIR>/pgdata``, default
``./.scheduler``: started or reused when that directory exists). Its first use makes one
connection with a connect timeout, so a malformed, unreachable or silent URL fails at once
with :class:`~scheduler.errors.DatabaseUnavailableError` (URL redacted) rather than in the
pool's background thread. Sync calls use a sync pool; async calls an async pool per event
loop, so an ``await`` never blocks the loop. That pool is closed when its loop ends
(``asyncio.run`` returning): a task of ours waits on the loop for the cancellation
``asyncio.run`` gives every task left, and closes the pool then. Without it, a pool worker
cancelled while it opened a connection swallowed the cancellation (psycopg_pool catches
``CancelledError`` around its maintenance tasks) and ``asyncio.run`` waited for it forever.

The pool prepares its statements (server-side, at first use: about 70 µs less server work
per enqueue than parsing and planning the INSERT each time) unless the URL leads to a
transaction pooler (:func:`scheduler.pooler.is_transaction_pooled`, asked once per URL). A
pooler that check misses shows itself with "prepared statement does not exist / already
exists" before anything is written: the pool then stops preparing and the call is run again.
"""

from __future__ import annotations

import asyncio
import threading
import weakref
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, cast

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg_pool import AsyncConnectionPool, ConnectionPool, PoolTimeout

from . import adapters, embedded
from .errors import (
    DatabaseError,
    DatabaseNotConfiguredError,
    DatabaseUnavailableError,
    InvalidArgumentError,
    SchemaNotMigratedError,
)
from .limits import shown
from .log import redact_url
from .pooler import is_transaction_pooled
from .settings import Settings
from .store import Store

CONNECT_TIMEOUT_S = 5  # libpq connect_timeout of the default pool, unless the URL sets one
POOL_TIMEOUT_S = 10.0  # longest wait for a pooled connection before DatabaseUnavailableError

_pool_lock = threading.Lock()
_pools: dict[str, ConnectionPool] = {}
_async_pools: weakref.WeakKeyDictionary[
    asyncio.AbstractEventLoop, dict[str, AsyncConnectionPool]
] = weakref.WeakKeyDictionary()
_prepare: dict[str, int | None] = {}  # URL -> prepare_threshold (asked once per URL)
_default_url: str | None = None
_replica_urls: list[str] = []  # of the replicas running in this process, oldest first
# a statement prepared on a server session the client does not own (an unseen pooler):
# raised before the statement runs, so running it again unprepared writes nothing twice
_NOT_PREPARED = (psycopg.errors.InvalidSqlStatementName, psycopg.errors.DuplicatePreparedStatement)


def set_default_database_url(url: str | None) -> None:
    """Make ``url`` the database of ``schedule_at(connection=None)`` in this process (``None``:
    drop it). It comes before the URL of a replica running in this process and before
    ``SCHEDULER_DATABASE_URL``.

    Raises:
        InvalidArgumentError: ``url`` is neither a string nor ``None``.
    """
    global _default_url
    if url is not None and not isinstance(url, str):
        raise InvalidArgumentError(f"url must be a string or None, not {type(url).__name__}")
    _default_url = url


def replica_running(url: str) -> None:
    """A replica on ``url`` started in this process: calls without a connection use its
    database (unless :func:`set_default_database_url` named one) until :func:`replica_stopped`.
    """
    _replica_urls.append(url)


def replica_stopped(url: str) -> None:
    """The replica of :func:`replica_running` stopped; another still running keeps its URL."""
    if url in _replica_urls:
        _replica_urls.remove(url)


def _unavailable(
    url: str, source: str, reason: str, error: type[DatabaseError] = DatabaseUnavailableError
) -> DatabaseError:
    """``error`` naming the default database (URL redacted) and ``reason`` (a message that
    may quote the URL, redacted too)."""
    reason = " ".join(redact_url(reason.replace(url, redact_url(url))).split())
    return error(f"database {shown(redact_url(url), 200)} (from {source}): {reason}")


def _connect_first(url: str, source: str) -> str:
    """The conninfo of ``url`` with a connect timeout, after one successful connection (so
    a bad URL fails here, with libpq's reason, instead of in the pool's background thread)."""
    try:
        if "\x00" in url:
            raise ValueError("the URL contains NUL (\\x00)")
        params = conninfo_to_dict(url)
        params.setdefault("connect_timeout", CONNECT_TIMEOUT_S)
        conninfo = make_conninfo("", **params)
        psycopg.connect(conninfo).close()
    except (psycopg.Error, ValueError, UnicodeError) as e:
        raise _unavailable(url, source, f"cannot connect: {e}") from None
    return conninfo


def _prepare_threshold(conninfo: str, settings: Settings) -> int | None:
    """``0`` (prepare at first use) for a direct server, ``None`` (never) behind a
    transaction pooler or when that cannot be told."""
    store = Store(settings.schema_name)
    try:
        with ThreadPoolExecutor(1) as thread:  # its own event loop: callers may be in one
            pooled = thread.submit(lambda: asyncio.run(is_transaction_pooled(conninfo, store)))
            return None if pooled.result() else 0
    except psycopg.Error:
        return None


def default_database_url(settings: Settings) -> tuple[str, str]:
    """The database of calls without a connection, and where its URL came from: the URL of
    :func:`set_default_database_url`, else the newest running replica's in this process, else
    ``SCHEDULER_DATABASE_URL``, else the embedded server under
    ``settings.embedded_dir`` when its data directory exists (the one ``scheduler migrate``
    / ``scheduler run`` made there; started if it is not running). Blocks while it starts.

    Raises:
        DatabaseNotConfiguredError: none of these; the message says where it looked.
    """
    if _default_url:
        return _default_url, "set_default_database_url"
    if _replica_urls:
        return _replica_urls[-1], "the replica running in this process"
    if settings.database_url:
        return settings.database_url, "SCHEDULER_DATABASE_URL"
    root = Path(settings.embedded_dir).expanduser().resolve()
    if (root / "pgdata" / "PG_VERSION").exists():
        try:
            return embedded.start(root), f"the embedded server in {root}"
        except Exception as e:  # noqa: BLE001 - pgserver raises plain exceptions
            raise DatabaseUnavailableError(
                f"the embedded server in {root} did not start: {shown(str(e), 300)}"
            ) from None
    raise DatabaseNotConfiguredError(
        "no connection was passed, SCHEDULER_DATABASE_URL is not set, and there is no embedded "
        f"database in {root} (SCHEDULER_EMBEDDED_DIR={shown(settings.embedded_dir)}, relative "
        "to the current directory): pass connection=<psycopg connection>, set "
        "SCHEDULER_DATABASE_URL, or run `scheduler migrate` (or `scheduler run`) in the "
        "directory your code runs from, or set SCHEDULER_EMBEDDED_DIR to the directory it uses"
    )


def _default_pool(settings: Settings) -> tuple[ConnectionPool, str, str]:
    """The pool of the default URL, the URL, and where that URL came from."""
    url, source = default_database_url(settings)
    with _pool_lock:
        pool = _pools.get(url)
        if pool is None:
            # autocommit: one round trip per enqueue (no BEGIN/COMMIT around the INSERT)
            conninfo = _connect_first(url, source)
            prepare = _prepare_threshold(conninfo, settings)
            _prepare[url] = prepare
            pool = ConnectionPool(
                conninfo,
                min_size=1,
                max_size=4,
                open=True,
                timeout=POOL_TIMEOUT_S,
                name="scheduler-enqueue",
                kwargs={"autocommit": True, "prepare_threshold": prepare},
            )
            _pools[url] = pool
        return pool, url, source


async def _default_async_pool(settings: Settings) -> tuple[AsyncConnectionPool, str, str]:
    """The async pool of the default URL for the running event loop, the URL, its source."""
    url, source = await asyncio.to_thread(default_database_url, settings)
    pools = _async_pools.setdefault(asyncio.get_running_loop(), {})
    pool = pools.get(url)
    if pool is None:
        conninfo = await asyncio.to_thread(_connect_first, url, source)
        if url not in _prepare:
            _prepare[url] = await asyncio.to_thread(_prepare_threshold, conninfo, settings)
        pool = pools.setdefault(url, AsyncConnectionPool(
            conninfo, min_size=1, max_size=4, open=False, timeout=POOL_TIMEOUT_S,
            name="scheduler-enqueue-async",
            kwargs={"autocommit": True, "prepare_threshold": _prepare[url]},
        ))  # fmt: skip
        await pool.open()
        _close_at_loop_end()
    return pool, url, source


_closers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Task[None]] = (
    weakref.WeakKeyDictionary()
)


def _close_at_loop_end() -> None:
    """Start, once per loop, the task that closes the loop's default async pools when it is
    cancelled: ``asyncio.run`` cancels every task left when its main coroutine returns."""
    loop = asyncio.get_running_loop()
    if loop not in _closers:  # held here: the loop keeps only weak references to tasks
        _closers[loop] = loop.create_task(_closer(), name="scheduler-close-default-async-pools")


async def _closer() -> None:
    try:
        await asyncio.Event().wait()
    finally:  # cancelled (the loop ends) or the loop closed under it
        loop = asyncio.get_running_loop()
        _closers.pop(loop, None)
        for pool in _async_pools.pop(loop, {}).values():
            await pool.close(timeout=1.0)


def close_default_pools() -> None:
    """Close the sync connection pools opened for calls without a connection (async pools
    close with their event loop, or with :func:`close_default_async_pools`)."""
    with _pool_lock:
        for pool in _pools.values():
            pool.close()
        _pools.clear()


async def close_default_async_pools() -> None:
    """Close the async pools of the running event loop."""
    for pool in _async_pools.pop(asyncio.get_running_loop(), {}).values():
        await pool.close()


def _pool_error(e: Exception, url: str, source: str) -> DatabaseError:
    """The :mod:`scheduler.errors` error for a failure on a default pool."""
    if isinstance(e, PoolTimeout):
        return _unavailable(url, source, f"no connection within {POOL_TIMEOUT_S:g} s")
    if isinstance(e, psycopg.errors.UndefinedTable):
        reason = f"{e.diag.message_primary}; run `scheduler migrate`"
        return _unavailable(url, source, reason, SchemaNotMigratedError)
    if isinstance(e, psycopg.OperationalError):  # the server went away, or a timeout
        return _unavailable(url, source, str(e))
    assert isinstance(e, psycopg.Error)  # e.g. the role may not insert: the message says so
    return _unavailable(url, source, f"{e.sqlstate}: {e}", DatabaseError)


def on_connection(
    connection: adapters.SyncConnectionLike | None,
    settings: Settings,
    sync_insert: Callable[..., Any],
    payload: Any,
) -> Any:
    """Run an insert on the caller's connection (never prepared), or on the default pool,
    committing at once (prepared unless the pool does not prepare:
    ``sync_insert(conn, payload, prepare=None)``)."""
    if connection is not None:  # an ORM's: its psycopg connection, in its transaction
        return sync_insert(adapters.sync_connection(connection), payload)
    pool, url, source = _default_pool(settings)
    try:
        with pool.connection() as conn:
            try:
                return sync_insert(conn, payload, prepare=None)
            except _NOT_PREPARED:  # a pooler the check did not see: stop preparing
                cast(dict[str, Any], pool.kwargs)["prepare_threshold"] = None
                conn.prepare_threshold = None
                return sync_insert(conn, payload, prepare=None)
    except (PoolTimeout, psycopg.Error) as e:
        raise _pool_error(e, url, source) from None


async def on_async_connection(
    connection: adapters.AsyncConnectionLike | None,
    settings: Settings,
    async_insert: Callable[..., Awaitable[Any]],
    payload: Any,
) -> Any:
    """:func:`on_connection` for async callers: the caller's async connection, or the
    default async pool of the running loop (``async_insert(conn, payload, prepare=None)``)."""
    if connection is not None:
        return await async_insert(await adapters.async_connection(connection), payload)
    pool, url, source = await _default_async_pool(settings)
    try:
        async with pool.connection() as conn:
            try:
                return await async_insert(conn, payload, prepare=None)
            except _NOT_PREPARED:
                cast(dict[str, Any], pool.kwargs)["prepare_threshold"] = None
                conn.prepare_threshold = None
                return await async_insert(conn, payload, prepare=None)
    except (PoolTimeout, psycopg.Error) as e:
        raise _pool_error(e, url, source) from None


def check_connection(connection: Any, *, is_async: bool = False) -> None:
    """Raise :class:`InvalidArgumentError` unless ``connection`` is ``None``, an open
    psycopg connection of the right kind (``AsyncConnection`` for the ``*_async`` calls), or
    an ORM's connection or session of that kind (:mod:`scheduler.adapters`)."""
    if adapters.orm_of(connection) is not None:
        adapters.check(connection, is_async)
        return
    wanted = psycopg.AsyncConnection if is_async else psycopg.Connection
    if connection is None or isinstance(connection, wanted):
        if connection is not None and connection.closed:
            raise InvalidArgumentError("connection is closed")
        return
    if isinstance(connection, (psycopg.Connection, psycopg.AsyncConnection)):
        kind = type(connection).__name__
        raise InvalidArgumentError(
            f"connection is {'an' if kind.startswith('A') else 'a'} {kind}: use the "
            + ("sync call (without _async)" if is_async else "*_async call (e.g. defer_async, "
               "enqueue_async) and await it")
        )  # fmt: skip
    hint = ""
    if isinstance(connection, str):  # not shown: a URL may hold a password
        hint = "; to use a URL, set SCHEDULER_DATABASE_URL and pass connection=None"
    elif hasattr(connection, "connection"):
        hint = "; for a pool, use `with pool.connection() as conn:` and pass conn"
    raise InvalidArgumentError(
        f"connection must be {adapters.ASYNC_KINDS if is_async else adapters.SYNC_KINDS}, "
        f"not {type(connection).__name__}{hint}"
    )
