"""Run a replica inside an ASGI application (FastAPI, Starlette), on the application's loop.

::

    from collections.abc import AsyncIterator
    from contextlib import asynccontextmanager

    from fastapi import FastAPI

    import scheduler.embedding

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with scheduler.embedding.replica(role="worker", imports=["myapp.tasks"]):
            yield

    app = FastAPI(lifespan=lifespan)

:func:`replica` starts a :class:`~scheduler.service.Replica` as a task of the running event
loop and returns once it runs (its pool is open, its loops started); leaving the block stops
it gracefully, as SIGTERM stops ``scheduler run``: no new claims, running jobs get
``SCHEDULER_SHUTDOWN_GRACE_S`` to finish (sync handlers still running then are released to
pending and run again later; their threads are daemons and do not hold the process).

Roles:

* ``"all"``: a leader candidate and workers, as ``scheduler run`` (with ``config``, its
  schedules file is reconciled when it leads).
* ``"worker"``: workers only, never a leader candidate (no advisory lock, no materialisation
  of cron fire times, no lease rescue, no pruning): a web process that runs jobs but leaves
  the leading to ``scheduler run`` replicas elsewhere. Some replica with role ``"all"`` must
  run for schedules to fire and for the jobs of a crashed process to be rescued.

Unlike ``scheduler run``, it installs no signal handlers (the ASGI server owns the signals),
configures no logging (the application does), and prints nothing. Async handlers run on the
application's event loop, so a handler that blocks the loop blocks the application's
requests too: make such handlers sync (they run in threads).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import AbstractAsyncContextManager
from typing import Literal

import psycopg
from psycopg_pool import PoolTimeout

from . import operations
from .config import SchedulesConfig, load_config
from .connections import default_database_url
from .errors import DatabaseUnavailableError, InvalidArgumentError, ReplicaFailedError
from .limits import shown
from .log import get_logger, redact_url
from .registry import load_tasks
from .service import Replica
from .service import migrate as migrate_schema
from .settings import Settings, load_settings
from .store import Store

Role = Literal["all", "worker"]
ROLES: tuple[Role, ...] = ("all", "worker")

log = get_logger("scheduler.embedding")

__all__ = ["ROLES", "Role", "lifespan", "replica"]


def _schedules(config: SchedulesConfig | str | os.PathLike[str] | None) -> SchedulesConfig | None:
    if config is None or isinstance(config, SchedulesConfig):
        return config
    if isinstance(config, str | os.PathLike):
        return load_config(config)
    raise InvalidArgumentError(
        f"config must be a SchedulesConfig, a path or None, not {type(config).__name__}"
    )


async def _database_url(settings: Settings) -> str:
    """``settings.database_url``, else the database the enqueue calls use (the embedded
    server of ``scheduler migrate`` in ``SCHEDULER_EMBEDDED_DIR``, started in a thread)."""
    if settings.database_url:
        return settings.database_url
    url, _ = await asyncio.to_thread(default_database_url, settings)
    return url


async def _prepare(url: str, settings: Settings, migrate: bool) -> None:
    """Connect once (fail fast), then migrate or check that the schema is migrated."""
    await operations.check_connection(url, settings)
    if migrate:
        applied = await migrate_schema(url, settings)
        if applied:
            log.info("migrations_applied", migrations=applied)
        return
    async with await operations.connect(url, settings) as conn:
        await operations.require_migrated(conn, Store(settings.schema_name))


async def _start(replica: Replica, stop: asyncio.Event) -> asyncio.Task[None]:
    """``replica.run(stop)`` as a task, returned once the replica runs; a failure to start
    is raised here (the task is then done)."""
    runner = asyncio.create_task(replica.run(stop), name="scheduler-replica")
    started = asyncio.create_task(replica.started.wait())
    try:
        await asyncio.wait([runner, started], return_when=asyncio.FIRST_COMPLETED)
    except BaseException:  # cancelled while starting: do not leave the replica behind
        runner.cancel()
        with contextlib.suppress(BaseException):
            await runner
        raise
    finally:
        started.cancel()
    if runner.done():
        runner.result()  # raises what stopped it
        raise ReplicaFailedError("the replica stopped while it started")
    return runner


@contextlib.asynccontextmanager
async def replica(
    settings: Settings | None = None,
    config: SchedulesConfig | str | os.PathLike[str] | None = None,
    *,
    role: Role = "all",
    imports: Iterable[str] = (),
    migrate: bool = True,
) -> AsyncIterator[Replica]:
    """Run a replica on the running event loop for the duration of the ``async with`` block.

    Args:
        settings: service settings; default :func:`scheduler.settings.load_settings` (the
            ``SCHEDULER_*`` environment). The database is ``settings.database_url``, else
            the one the enqueue calls default to (the embedded server that ``scheduler
            migrate`` made in ``SCHEDULER_EMBEDDED_DIR``).
        config: a schedules file (path, or a loaded :class:`~scheduler.config.
            SchedulesConfig`) reconciled when this replica leads; only with role ``"all"``.
        role: ``"all"`` (leader candidate and workers, default) or ``"worker"`` (workers
            only, never leads; see the module docstring).
        imports: modules to import so their ``@task`` functions register (marks the task
            registry complete, as :func:`scheduler.load_tasks`).
        migrate: apply pending migrations first (default, as ``scheduler run``); ``False``
            only checks that the schema is migrated (a role that may not migrate).

    Yields:
        The running :class:`~scheduler.service.Replica` (``.id``; ``.supervisor.failure``
        says why it gave up, if a loop kept crashing).

    Raises:
        SettingsError: ``settings`` is None and a ``SCHEDULER_*`` variable is invalid.
        InvalidArgumentError: a bad ``role``, ``config`` or ``settings`` argument.
        ConfigError: the schedules file ``config`` is invalid.
        ImportError: a module of ``imports`` failed to import (any error it raised).
        DatabaseNotConfiguredError: no URL in ``settings`` and no embedded database.
        DatabaseUnavailableError: the database cannot be reached at start-up (refused,
            timed out, authentication, no such database; URL redacted in the message).
        SchemaNotMigratedError: ``migrate=False`` and the schema is missing or behind.
        MigrationPrivilegeError: migrations are pending and the role may not apply them.
        DatabaseError: the database refused a start-up statement.
        ReplicaFailedError: at the end of the block (when the block itself raised nothing),
            if a loop of the replica crashed too often and the replica stopped early.
    """
    if role not in ROLES:
        raise InvalidArgumentError(f"role must be one of {', '.join(ROLES)}, not {shown(role)}")
    if settings is None:
        settings = load_settings()
    elif not isinstance(settings, Settings):
        raise InvalidArgumentError(
            f"settings must be a scheduler Settings or None, not {type(settings).__name__}"
        )
    if role == "worker" and config is not None:
        raise InvalidArgumentError(
            "config was given for role 'worker': a worker-only replica never leads, so its "
            "schedules file would never be applied; pass it to a replica with role 'all'"
        )
    imports = list(imports)
    if imports:  # (an empty list would mark the registry complete)
        load_tasks(*imports)  # before the schedules file, whose tasks they may register
    schedules = _schedules(config)
    url = await _database_url(settings)
    stop = asyncio.Event()
    try:
        await _prepare(url, settings, migrate)
        running = Replica(url, settings, schedules, lead=role == "all")
        runner = await _start(running, stop)
    except psycopg.Error as exc:
        raise operations.database_error(exc, url, settings) from None
    except PoolTimeout as exc:
        raise DatabaseUnavailableError(
            f"cannot open connections to the database {redact_url(url)}: {shown(str(exc), 300)}"
        ) from None
    log.info("embedded_replica_started", replica=running.id, role=role)
    body_raised = True
    try:
        yield running
        body_raised = False
    finally:
        stop.set()  # graceful: the worker drains for shutdown_grace_s
        try:
            await runner
        except ReplicaFailedError:
            if not body_raised:
                raise  # else the block's own exception goes on (the failure was logged)


def lifespan(
    settings: Settings | None = None,
    config: SchedulesConfig | str | os.PathLike[str] | None = None,
    *,
    role: Role = "all",
    imports: Iterable[str] = (),
    migrate: bool = True,
) -> Callable[[object], AbstractAsyncContextManager[None]]:
    """A lifespan for an app that has no other start-up work:
    ``FastAPI(lifespan=scheduler.embedding.lifespan(role="worker"))`` (or ``Starlette``).
    Arguments and errors as :func:`replica`; the settings are read at start-up."""
    imports = tuple(imports)

    @contextlib.asynccontextmanager
    async def run(app: object) -> AsyncIterator[None]:
        async with replica(settings, config, role=role, imports=imports, migrate=migrate):
            yield

    return run
