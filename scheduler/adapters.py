"""What ``connection=`` accepts, and the psycopg connection the statements then run on.

Every call with a ``connection=`` parameter (``enqueue`` / ``schedule_at`` and the other
calls of :mod:`scheduler.jobs`, :mod:`scheduler.bulk`, the task handles and
``Task.configure``, the control calls of :mod:`scheduler.control`,
:mod:`scheduler.schedule_control`, :mod:`scheduler.queue_control`, :mod:`scheduler.flow`)
accepts, besides ``None`` (the default database, committed at once):

======================================  =========  ==============================================
passed                                  calls      run on
======================================  =========  ==============================================
``psycopg.Connection``                  sync       itself, in its transaction (as is; with
                                                   another ``row_factory`` than ``tuple_row``,
                                                   such as ``dict_row``, the statements' own
                                                   cursors read tuples, the factory unchanged)
``psycopg.AsyncConnection``             ``*_async``  the same
SQLAlchemy 2 ``Connection``             sync       its psycopg connection, after ``begin()``
                                                   when it has no transaction yet (what its
                                                   autobegin would do at its next statement)
SQLAlchemy ``Session`` (or a            sync       ``session.connection()``: the connection of
``scoped_session``)                                its transaction, begun if need be
SQLAlchemy ``AsyncConnection``,         ``*_async``  as their sync twins (``await begin()``,
``AsyncSession`` (or an                            ``await session.connection()``), then
``async_scoped_session``)                          ``get_raw_connection()``
Django's connection (``django.db.       sync       ``ensure_connection()``, then its psycopg
connection``, ``connections[alias]``)              connection: inside ``transaction.atomic()``
                                                   the statements join its transaction; outside
                                                   one they commit at once (Django's autocommit)
======================================  =========  ==============================================

The ORM must reach PostgreSQL through psycopg 3 (SQLAlchemy: a ``postgresql+psycopg://`` URL,
sync or async; Django: the ``postgresql`` backend with psycopg 3 installed). So the ORM's
commit commits the job and its rollback leaves none. The ORM's cursor class and type loaders
are not used (Django loads ``jsonb`` as text, SQLAlchemy may set its own JSON loader): the
statements run on psycopg's own ``Cursor`` with psycopg's default loaders for the types it
reads back. Django's query log (``connection.queries``) and execute wrappers do not see them.

SQLAlchemy and Django are never imported by this module unless the object passed comes from
them (told by the modules of its class and bases), so neither is needed at import time.

Errors: :class:`~scheduler.errors.InvalidArgumentError` naming the parameter and what to pass
instead, for anything else: a sync object given to an ``*_async`` call or the reverse, an
``Engine`` or ``sessionmaker``, an ORM on another database or driver (psycopg2, asyncpg,
SQLite...), a closed or not started connection, a Session that SQLAlchemy refuses to use
(closed for good, its transaction to be rolled back first, no bind) and a Django connection
whose ``atomic`` block is already broken by an error.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol, TypeAlias

import psycopg
from psycopg.pq import Format
from psycopg.rows import tuple_row

from .errors import InvalidArgumentError

if TYPE_CHECKING:
    from sqlalchemy.engine import Connection as SAConnection
    from sqlalchemy.ext.asyncio import AsyncConnection as SAAsyncConnection
    from sqlalchemy.ext.asyncio import AsyncSession, async_scoped_session
    from sqlalchemy.orm import Session, scoped_session

SYNC_KINDS = (
    "a psycopg Connection, a SQLAlchemy Connection or Session (postgresql+psycopg), "
    "Django's connection (psycopg 3), or None for the default database"
)
ASYNC_KINDS = (
    "a psycopg AsyncConnection, a SQLAlchemy AsyncConnection or AsyncSession "
    "(postgresql+psycopg), or None for the default database"
)
# psycopg's own loaders for the types the statements read back, in place of an ORM's
_LOADED = ("json", "jsonb", "timestamptz", "timestamp", "inet", "cidr")


class DjangoConnection(Protocol):
    """What :mod:`scheduler` uses of Django's connection (for type checkers)."""

    vendor: str

    def ensure_connection(self) -> None: ...


if TYPE_CHECKING:
    SyncConnectionLike: TypeAlias = (
        "psycopg.Connection[Any] | SAConnection | Session | scoped_session[Any] | DjangoConnection"
    )
    AsyncConnectionLike: TypeAlias = (
        "psycopg.AsyncConnection[Any] | SAAsyncConnection | AsyncSession"
        " | async_scoped_session[Any]"
    )
else:  # checked at run time by check()
    SyncConnectionLike = AsyncConnectionLike = Any


def orm_of(connection: Any) -> str | None:
    """``"sqlalchemy"`` or ``"django"`` when the class of ``connection`` or one of its bases
    comes from that package (subclasses such as Flask-SQLAlchemy's sessions count), else
    ``None``."""
    for cls in type(connection).__mro__:
        module = getattr(cls, "__module__", "") or ""
        if module.startswith("sqlalchemy."):
            return "sqlalchemy"
        if module.startswith("django."):
            return "django"
    return None


def _wrong_side(what: str, is_async: bool) -> InvalidArgumentError:
    if is_async:
        return InvalidArgumentError(
            f"connection is {what}, which is sync: use the sync call (without _async), or "
            f"pass {ASYNC_KINDS}"
        )
    return InvalidArgumentError(
        f"connection is {what}, which is async: use the *_async call (e.g. defer_async, "
        "enqueue_async) and await it"
    )


def _check_dialect(dialect: Any, what: str) -> None:
    name, driver = getattr(dialect, "name", "?"), getattr(dialect, "driver", "?")
    if name != "postgresql" or driver not in ("psycopg", "psycopg_async"):
        raise InvalidArgumentError(
            f"connection is {what} on {name}+{driver}: the scheduler runs on PostgreSQL "
            "through psycopg 3; create the engine with a postgresql+psycopg:// URL"
        )


def _sqlalchemy_check(connection: Any, is_async: bool) -> Any:
    """The ``Connection``, ``Session``, ``AsyncConnection`` or ``AsyncSession`` to use
    (a scoped session's current session), checked."""
    from sqlalchemy import exc
    from sqlalchemy.engine import Connection, Engine
    from sqlalchemy.orm import Session, scoped_session, sessionmaker

    sa_async: Any
    try:
        from sqlalchemy.ext import asyncio as sa_async
    except ImportError:  # SQLAlchemy without its asyncio extension (no greenlet)
        sa_async = None
    kind = type(connection).__name__
    if isinstance(connection, scoped_session) or (
        sa_async and isinstance(connection, sa_async.async_scoped_session)
    ):
        connection = connection()  # the scope's current session
    if isinstance(connection, (Session, Connection)):
        if is_async:
            raise _wrong_side(f"a SQLAlchemy {kind}", True)
    elif sa_async and isinstance(connection, (sa_async.AsyncSession, sa_async.AsyncConnection)):
        if not is_async:
            raise _wrong_side(f"a SQLAlchemy {kind}", False)
    else:
        hint = ""
        if isinstance(connection, (Engine, sessionmaker)) or (
            sa_async and isinstance(connection, (sa_async.AsyncEngine, sa_async.async_sessionmaker))
        ):
            hint = ": pass the Connection of `with engine.begin() as conn:` or a Session"
        raise InvalidArgumentError(
            f"connection is a SQLAlchemy {kind}{hint}; pass "
            + (ASYNC_KINDS if is_async else SYNC_KINDS)
        )
    try:
        if isinstance(connection, Connection) and connection.closed:
            raise InvalidArgumentError("connection is a closed SQLAlchemy Connection")
        if sa_async and isinstance(connection, sa_async.AsyncConnection):
            if connection.sync_connection is None:
                raise InvalidArgumentError(
                    "connection is a SQLAlchemy AsyncConnection that is not started: use "
                    "`async with engine.connect() as conn:` (or engine.begin())"
                )
            if connection.sync_connection.closed:
                raise InvalidArgumentError("connection is a closed SQLAlchemy AsyncConnection")
        if sa_async and isinstance(connection, sa_async.AsyncSession):
            bind = connection.sync_session.get_bind()
        else:
            bind = connection.get_bind() if isinstance(connection, Session) else connection
    except exc.InvalidRequestError as e:  # e.g. no bind
        raise InvalidArgumentError(f"connection is a SQLAlchemy {kind} SQLAlchemy refuses: {e}")
    _check_dialect(bind.dialect, f"a SQLAlchemy {kind}")
    return connection


def _django_check(connection: Any, is_async: bool) -> None:
    if not callable(getattr(connection, "ensure_connection", None)):
        raise InvalidArgumentError(
            f"connection is a Django {type(connection).__name__}, not a database connection; "
            f"pass django.db.connection (or connections[alias]), or {SYNC_KINDS}"
        )
    if is_async:
        raise _wrong_side("Django's connection", True)
    vendor = getattr(connection, "vendor", "?")
    if vendor != "postgresql":
        raise InvalidArgumentError(
            f"connection is a Django connection to {vendor}: the scheduler needs PostgreSQL "
            "(ENGINE django.db.backends.postgresql)"
        )


def check(connection: Any, is_async: bool) -> None:
    """Raise :class:`InvalidArgumentError` unless ``connection`` (from SQLAlchemy or Django,
    see :func:`orm_of`) suits a sync call (``is_async`` False) or an ``*_async`` one. No I/O."""
    if orm_of(connection) == "sqlalchemy":
        _sqlalchemy_check(connection, is_async)
    else:
        _django_check(connection, is_async)


def _sqlalchemy_error(connection: Any, e: Exception) -> InvalidArgumentError:
    return InvalidArgumentError(
        f"connection is a SQLAlchemy {type(connection).__name__} that cannot run statements "
        f"now ({type(e).__name__}: {e}); roll its transaction back, or pass another"
    )


def _driver(raw: Any, wanted: type, what: str) -> Any:
    """``raw`` (a DB-API connection's ``driver_connection``) if it is a ``wanted``."""
    if not isinstance(raw, wanted):
        raise InvalidArgumentError(
            f"connection is {what} whose driver connection is a {type(raw).__module__}."
            f"{type(raw).__name__}, not a {wanted.__module__}.{wanted.__name__}: use psycopg 3"
        )
    return raw


def sqlalchemy_sync(connection: Any) -> psycopg.Connection[Any]:
    """The psycopg connection of a SQLAlchemy ``Connection`` or ``Session``, in the ORM's
    transaction (begun if it has none)."""
    from sqlalchemy import exc
    from sqlalchemy.orm import Session

    target = _sqlalchemy_check(connection, False)
    try:
        conn = target.connection() if isinstance(target, Session) else target
        if not conn.in_transaction():
            conn.begin()  # what autobegin does at the next statement; commit() ends it
        raw = conn.connection.driver_connection
    except exc.InvalidRequestError as e:
        raise _sqlalchemy_error(target, e) from None
    driver: psycopg.Connection[Any] = _driver(
        raw, psycopg.Connection, f"a SQLAlchemy {type(target).__name__}"
    )
    return driver


async def sqlalchemy_async(connection: Any) -> psycopg.AsyncConnection[Any]:
    """The psycopg connection of a SQLAlchemy ``AsyncConnection`` or ``AsyncSession``, in
    the ORM's transaction (begun if it has none)."""
    from sqlalchemy import exc
    from sqlalchemy.ext.asyncio import AsyncSession

    target = _sqlalchemy_check(connection, True)
    try:
        conn = await target.connection() if isinstance(target, AsyncSession) else target
        if not conn.in_transaction():
            await conn.begin()
        raw = (await conn.get_raw_connection()).driver_connection
    except exc.InvalidRequestError as e:
        raise _sqlalchemy_error(target, e) from None
    driver: psycopg.AsyncConnection[Any] = _driver(
        raw, psycopg.AsyncConnection, f"a SQLAlchemy {type(target).__name__}"
    )
    return driver


def django_sync(connection: Any) -> psycopg.Connection[Any]:
    """The psycopg connection of Django's ``connection`` (opened if need be), in its
    current ``atomic`` transaction if any (else in autocommit, as Django's ORM runs)."""
    from django.db.transaction import (  # type: ignore[import-untyped, import-not-found, unused-ignore]
        TransactionManagementError,
    )

    _django_check(connection, False)
    connection.ensure_connection()
    try:
        connection.validate_no_broken_transaction()
    except TransactionManagementError as e:
        raise InvalidArgumentError(
            f"connection is Django's connection inside a broken atomic block ({e})"
        ) from None
    driver: psycopg.Connection[Any] = _driver(
        connection.connection, psycopg.Connection, "Django's connection (psycopg2?)"
    )
    return driver


def _plain_loaders(cursor: psycopg.Cursor[Any] | psycopg.AsyncCursor[Any]) -> None:
    """Give ``cursor`` psycopg's default loaders for :data:`_LOADED` (only this cursor)."""
    for name in _LOADED:
        info = psycopg.adapters.types.get(name)
        for fmt in (Format.TEXT, Format.BINARY):
            loader = psycopg.adapters.get_loader(info.oid, fmt) if info else None
            if loader is not None:
                cursor.adapters.register_loader(info.oid, loader)  # type: ignore[union-attr]


class PlainConnection:
    """An ORM's psycopg ``Connection`` whose cursors are psycopg's own ``Cursor`` (server-side
    binding, tuple rows unless asked) with psycopg's loaders; everything else (``info``,
    ``transaction()``, ``autocommit``...) is the connection's."""

    def __init__(self, conn: psycopg.Connection[Any]):
        self._conn = conn

    def __getattr__(self, name: str) -> Any:
        return getattr(self._conn, name)

    def cursor(self, name: str = "", **kwargs: Any) -> Any:
        if name:
            return self._conn.cursor(name, **kwargs)
        cursor = psycopg.Cursor(self._conn, row_factory=kwargs.get("row_factory") or tuple_row)
        _plain_loaders(cursor)
        return cursor

    def execute(self, query: Any, params: Any = None, *, prepare: bool | None = None,
                binary: bool = False) -> Any:  # fmt: skip
        cursor = self.cursor()
        if binary:
            cursor.format = Format.BINARY
        return cursor.execute(query, params, prepare=prepare)


class PlainAsyncConnection:
    """:class:`PlainConnection` for an ORM's ``psycopg.AsyncConnection``."""

    def __init__(self, conn: psycopg.AsyncConnection[Any]):
        self._conn = conn

    def __getattr__(self, name: str) -> Any:
        return getattr(self._conn, name)

    def cursor(self, name: str = "", **kwargs: Any) -> Any:
        if name:
            return self._conn.cursor(name, **kwargs)
        row_factory = kwargs.get("row_factory") or tuple_row
        cursor = psycopg.AsyncCursor(self._conn, row_factory=row_factory)
        _plain_loaders(cursor)
        return cursor

    async def execute(self, query: Any, params: Any = None, *, prepare: bool | None = None,
                      binary: bool = False) -> Any:  # fmt: skip
        cursor = self.cursor()
        if binary:
            cursor.format = Format.BINARY
        return await cursor.execute(query, params, prepare=prepare)


def _own_rows(connection: Any) -> bool:
    """Whether ``connection`` (``None`` or a psycopg connection) gives the tuple rows the
    statements read; an application's ``dict_row`` connection does not."""
    return getattr(connection, "row_factory", tuple_row) is tuple_row


def sync_connection(connection: Any) -> Any:
    """What a sync call runs on: ``connection`` itself for ``None`` or a psycopg connection
    with tuple rows, else (another ``row_factory``, or an ORM's) a :class:`PlainConnection`
    over its psycopg connection, in its transaction. Raises InvalidArgumentError as
    :func:`check`."""
    orm = orm_of(connection)
    if orm is None:
        return connection if _own_rows(connection) else PlainConnection(connection)
    raw = sqlalchemy_sync(connection) if orm == "sqlalchemy" else django_sync(connection)
    return PlainConnection(raw)


async def async_connection(connection: Any) -> Any:
    """:func:`sync_connection` for the ``*_async`` calls (Django's connection is sync:
    InvalidArgumentError)."""
    orm = orm_of(connection)
    if orm is None:
        return connection if _own_rows(connection) else PlainAsyncConnection(connection)
    if orm == "django":
        _django_check(connection, True)
    return PlainAsyncConnection(await sqlalchemy_async(connection))
