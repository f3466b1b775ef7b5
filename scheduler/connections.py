"""Where the Python API's INSERTs run: the caller's psycopg connection (inside its transaction,
sync or async), or, when it passes none, a small pool on the default database URL that
commits at once.

The default URL is the one the service set (:func:`set_default_database_url`, so handlers can
enqueue follow-up jobs, also on the embedded server), else ``SCHEDULER_DATABASE_URL``. Its
first use makes one connection with a connect timeout, so a malformed, unreachable or silent
URL fails at once with :class:`~scheduler.errors.DatabaseUnavailableError` (URL redacted)
rather than in the pool's background thread.

The pool prepares its statements (server-side, at first use: about 70 µs less server work
per enqueue than parsing and planning the INSERT each time) unless the URL leads to a
transaction pooler (:func:`scheduler.pooler.is_transaction_pooled`, asked once per URL). A
pooler that check misses shows itself with "prepared statement does not exist / already
exists" before anything is written: the pool then stops preparing and the call is run again.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg_pool import ConnectionPool, PoolTimeout

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
_default_url: str | None = None
# a statement prepared on a server session the client does not own (an unseen pooler):
# raised before the statement runs, so running it again unprepared writes nothing twice
_NOT_PREPARED = (psycopg.errors.InvalidSqlStatementName, psycopg.errors.DuplicatePreparedStatement)


def set_default_database_url(url: str | None) -> None:
    """Make ``url`` the database of ``schedule_at(connection=None)`` in this process.

    The service calls this when it starts (so handlers can enqueue follow-up jobs even with
    the embedded server); otherwise ``SCHEDULER_DATABASE_URL`` is used.

    Raises:
        InvalidArgumentError: ``url`` is neither a string nor ``None``.
    """
    global _default_url
    if url is not None and not isinstance(url, str):
        raise InvalidArgumentError(f"url must be a string or None, not {type(url).__name__}")
    _default_url = url


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


def _default_pool(settings: Settings) -> tuple[ConnectionPool, str, str]:
    """The pool of the default URL, the URL, and where that URL came from."""
    url = _default_url or settings.database_url
    source = "set_default_database_url" if _default_url else "SCHEDULER_DATABASE_URL"
    if not url:
        raise DatabaseNotConfiguredError(
            "no connection was passed and SCHEDULER_DATABASE_URL is not set; pass "
            "connection=<psycopg connection> or set SCHEDULER_DATABASE_URL"
        )
    with _pool_lock:
        pool = _pools.get(url)
        if pool is None:
            # autocommit: one round trip per enqueue (no BEGIN/COMMIT around the INSERT)
            conninfo = _connect_first(url, source)
            prepare = _prepare_threshold(conninfo, settings)
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


def close_default_pools() -> None:
    """Close the connection pools opened for ``schedule_at(connection=None)``."""
    with _pool_lock:
        for pool in _pools.values():
            pool.close()
        _pools.clear()


def on_connection(
    connection: psycopg.Connection[Any] | psycopg.AsyncConnection[Any] | None,
    settings: Settings,
    sync_insert: Callable[..., Any],
    async_insert: Callable[[psycopg.AsyncConnection[Any], Any], Awaitable[Any]],
    payload: Any,
) -> Any:
    """Run an insert on the caller's connection (sync, or async: returns the awaitable;
    never prepared), or on the default pool, committing at once (prepared unless the pool
    does not prepare: ``sync_insert(conn, payload, prepare=None)``)."""
    if isinstance(connection, psycopg.AsyncConnection):
        return async_insert(connection, payload)
    if connection is not None:
        return sync_insert(connection, payload)
    pool, url, source = _default_pool(settings)
    try:
        with pool.connection() as conn:
            try:
                return sync_insert(conn, payload, prepare=None)
            except _NOT_PREPARED:  # a pooler the check did not see: stop preparing
                pool.kwargs["prepare_threshold"] = conn.prepare_threshold = None
                return sync_insert(conn, payload, prepare=None)
    except PoolTimeout:
        raise _unavailable(url, source, f"no connection within {pool.timeout:g} s") from None
    except psycopg.errors.UndefinedTable as e:
        reason = f"{e.diag.message_primary}; run `scheduler migrate`"
        raise _unavailable(url, source, reason, SchemaNotMigratedError) from None
    except psycopg.OperationalError as e:  # the server went away, or a timeout
        raise _unavailable(url, source, str(e)) from None
    except psycopg.Error as e:  # e.g. the role may not insert: the message says so
        raise _unavailable(url, source, f"{e.sqlstate}: {e}", DatabaseError) from None


def check_connection(connection: Any) -> None:
    if connection is None or isinstance(connection, (psycopg.Connection, psycopg.AsyncConnection)):
        if connection is not None and connection.closed:
            raise InvalidArgumentError("connection is closed")
        return
    hint = ""
    if isinstance(connection, str):  # not shown: a URL may hold a password
        hint = "; to use a URL, set SCHEDULER_DATABASE_URL and pass connection=None"
    elif hasattr(connection, "connection"):
        hint = "; for a pool, use `with pool.connection() as conn:` and pass conn"
    raise InvalidArgumentError(
        "connection must be a psycopg Connection or AsyncConnection, or None for the default "
        f"pool, not {type(connection).__name__}{hint}"
    )
