"""Composition root: one replica = a leader candidate + a worker, sharing one event loop.

``run_replica()`` wires the pieces (pool, leader elector, materialiser, worker), installs the
signal handlers (SIGTERM/SIGINT: graceful stop; a second signal: exit at once) and returns when
everything has stopped. What a replica does while it leads: :mod:`scheduler.leadership`.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import uuid
from typing import TYPE_CHECKING, Any

import psycopg
from psycopg_pool import AsyncConnectionPool

from . import __version__, alerts, health, maintenance, metrics, probes
from .config import SchedulesConfig
from .connections import replica_running, replica_stopped
from .errors import MigrationPrivilegeError, ReplicaFailedError
from .leader import KEEPALIVES, LeaderElector
from .leadership import Leadership
from .limits import exception_text
from .liveness import LivenessLock, liveness_namespace
from .log import get_logger, redact_url
from .pooler import NO_PREPARE, is_transaction_pooled
from .queue_limits import QueueLimits, apply_settings_limits
from .settings import Settings
from .store import Store
from .supervision import Supervisor
from .worker import Worker

if TYPE_CHECKING:
    from .web.app import DashboardServer

log = get_logger("scheduler.service")


def replica_id() -> str:
    """``host:pid:random`` — unique per process start."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


class Replica(Leadership):
    """One replica's loops. Build it, then ``await replica.run(stop)``.

    Args:
        url: libpq URL of the database.
        settings: service settings.
        config: the validated schedules file, or ``None`` for a replica that reconciles no
            file (when it leads, the schedules table stays as it is).
        lead: ``False``: workers only, never a leader candidate (no advisory lock, no
            materialisation, rescue or pruning: another replica leads). Default ``True``.
    """

    def __init__(
        self, url: str, settings: Settings, config: SchedulesConfig | None, *, lead: bool = True
    ):
        self.url = url
        self.settings = settings
        self.config = config
        self.lead = lead
        self.started = asyncio.Event()  # set once the pool is open and the loops run
        self.id = replica_id()
        self.store = Store(settings.schema_name)
        self.pool = AsyncConnectionPool(
            url,
            min_size=1,
            max_size=4,
            open=False,
            name="scheduler",
            kwargs={"autocommit": True, **KEEPALIVES},
            configure=self._configure_connection,
        )
        self._jit_off = False  # set by _check_pooler on a session (not pooled) URL
        config_hash = config.config_hash() if config else None
        direct_url = settings.direct_database_url or url
        self._next_prune = 0.0
        self.elector = LeaderElector(
            direct_url,
            self.store,
            settings,
            holder=self.id,
            config_hash=config_hash,
            on_elected=self._on_elected,
            tick=self._tick,
        )
        self.health_port: int | None = None  # bound port of /metrics etc., once serving
        self.dashboard_port: int | None = None  # bound port of the web dashboard, once serving
        self.supervisor: Supervisor | None = None  # the running replica's, once started
        self.worker = Worker(self.pool, direct_url, self.store, settings, self.id)
        self.worker.on_schedules_written = self.elector.wake.set  # a runtime schedule changed
        # fast rescue: this replica's liveness lock, and the leader's watch on the others'
        self.liveness = LivenessLock(direct_url, self.store, settings, replica=self.id)
        self.lost_replicas = maintenance.LostReplicas(liveness_namespace(settings.schema_name))
        self._next_liveness_check = 0.0
        self.alerts = alerts.Alerts()  # the leader's alert evaluation (scheduler.alerts)

    def _no_prepare(self) -> None:
        """No prepared statements on the pool's connections made from now on."""
        kwargs = self.pool.kwargs
        assert isinstance(kwargs, dict)  # __init__ gives the pool a dict, not a callable
        kwargs.update(NO_PREPARE)

    async def _check_pooler(self) -> None:
        """Before any session-scoped work: is ``url`` a transaction pooler? (See
        :mod:`scheduler.pooler`.) A separate direct URL means it may be: no prepared
        statements. Without one, a detected pooler also means no leading and no LISTEN."""
        direct = self.settings.direct_database_url
        if direct and direct != self.url:
            self._no_prepare()
            return
        if not await is_transaction_pooled(self.url, self.store, **KEEPALIVES):
            # no JIT for the worker's short statements: a claim of a few hundred rows is
            # costed above jit_above_cost, and compiling it took ~450 ms a claim on
            # PostgreSQL 15 (Debian's build has LLVM). A SET per new connection (a session
            # pooler resets it with the session; PgBouncer refuses the startup option)
            self._jit_off = True
            return
        self._no_prepare()
        self.elector.refusal = (
            "SCHEDULER_DATABASE_URL goes through a transaction-mode pooler (e.g. PgBouncer), "
            "where session locks, SET and LISTEN do not work: this replica runs jobs but will "
            "not lead (no cron fire times, no lease rescue) until SCHEDULER_DIRECT_DATABASE_URL "
            "gives it a direct connection"
        )
        self.worker.listen_url = None  # the worker wakes on timers and the safety poll
        self.liveness.refusal = (
            "no direct connection (SCHEDULER_DATABASE_URL is a transaction-mode pooler and "
            "SCHEDULER_DIRECT_DATABASE_URL is unset): no liveness lock, so if this replica dies "
            "its jobs run again only after their lease (lease_s)"
        )

    async def _apply_queue_limits(self) -> None:
        """``SCHEDULER_QUEUE_LIMITS`` into the ``queues`` table (:func:`scheduler.queue_limits.
        apply_settings_limits`: nothing is written when it already holds them). A role that
        may not write it, or a failed write, logs one warning: the replica runs on with the
        limits the table holds."""
        limits: dict[str, QueueLimits] = self.settings.queue_limits
        try:
            async with self.pool.connection() as conn:
                if await apply_settings_limits(conn, self.store, limits):
                    log.info("queue_limits_applied", source="settings", queues=sorted(limits))
        except psycopg.Error as exc:
            denied = isinstance(exc, psycopg.errors.InsufficientPrivilege)
            log.warning(
                "queue_limits_not_applied", error=exception_text(exc, 300),
                detail="this database role may not write the queues table: the limits in "
                "force are those it holds; apply SCHEDULER_QUEUE_LIMITS with a replica whose "
                "role may, or call scheduler.set_queue_limits" if denied else
                "the limits in force are those the queues table holds",
            )  # fmt: skip

    async def _configure_connection(self, conn: psycopg.AsyncConnection[Any]) -> None:
        """Each new connection of the worker's pool: ``SET jit = off`` unless the URL is a
        transaction pooler (where a SET would leak to other clients)."""
        if self._jit_off:
            await conn.execute(self.store.q["worker_session_settings"])

    @staticmethod
    async def _beat(stop: asyncio.Event, server: health.HealthServer | None) -> None:
        """Liveness: proves every second that the event loop turns (``/healthz``)."""
        while server is not None and not stop.is_set():
            server.beat()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 1.0)

    async def _register(self, stop: asyncio.Event) -> None:
        """Keep this replica's row in ``replicas`` fresh (for ``scheduler status``); remove
        it on a graceful stop. A database outage only delays the next refresh."""
        host, pid, _ = self.id.split(":")
        row = {
            "id": self.id,
            "host": host,
            "pid": int(pid),
            "version": __version__,
            "queues": self.settings.queues,
            "concurrency": self.settings.concurrency,
            "config_hash": self.config.config_hash() if self.config else None,
        }
        while not stop.is_set():
            try:
                async with self.pool.connection() as conn:
                    row["stuck_threads"] = self.worker.stuck_threads()
                    await conn.execute(self.store.q["replica_heartbeat"], row)
            except psycopg.Error as exc:
                log.warning("replica_heartbeat_failed", error=str(exc).strip()[:300])
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.settings.replica_heartbeat_s)
        with contextlib.suppress(psycopg.Error):
            async with self.pool.connection() as conn:
                await conn.execute(self.store.q["replica_remove"], {"id": self.id})

    def _dashboard(self) -> DashboardServer | None:
        """The web dashboard on ``SCHEDULER_DASHBOARD_PORT``, started (None when unset).

        Raises:
            SettingsError: a non-loopback ``SCHEDULER_DASHBOARD_HOST`` without credentials.
            OSError: the address cannot be bound.
        """
        if self.settings.dashboard_port is None:
            return None
        from .web.app import DashboardServer, create_app  # starlette, only when asked for
        from .web.security import require_safe_listen

        require_safe_listen(self.settings, self.settings.dashboard_host)
        app = create_app(self.settings, database_url=self.url)
        dashboard = DashboardServer(app, self.settings.dashboard_host, self.settings.dashboard_port)
        dashboard.start()
        self.dashboard_port = dashboard.port
        log.info("dashboard_started", host=self.settings.dashboard_host, port=dashboard.port)
        return dashboard

    async def run(self, stop: asyncio.Event) -> None:
        """Run until ``stop`` is set; returns after a graceful shutdown.

        Every loop runs under a :class:`~scheduler.supervision.Supervisor`: a crash is
        logged and the loop restarted; a loop that keeps crashing stops the replica.

        Raises:
            ReplicaFailedError: a loop crashed too often (after a graceful stop of the
                rest); ``/healthz`` answered 503 meanwhile. The process should exit non-zero.
        """
        replica_running(self.url)  # handlers' calls without a connection: this database
        try:
            await self._run(stop)
        finally:
            replica_stopped(self.url)

    async def _run(self, stop: asyncio.Event) -> None:
        await self._check_pooler()
        await self.pool.open(wait=True, timeout=30)
        await self._apply_queue_limits()  # before the worker reads which queues have limits
        log.info(
            "replica_started",
            replica=self.id,
            database=redact_url(self.url),
            queues=self.settings.queues,
            concurrency=self.settings.concurrency,
        )
        supervisor = self.supervisor = Supervisor(stop)
        self.worker.supervisor = supervisor
        server = gauges = None
        # a direct URL where there is one: the probes' session sets a statement_timeout
        probe_url = self.settings.direct_database_url or self.url
        try:
            registry = metrics.exposed_in(self.settings.metrics_registry)
            shared = None if registry is metrics.REGISTRY else registry  # an application's
            if shared is not None:  # its /metrics gets the queue gauges, from the database
                gauges = probes.QueueGauges(probe_url, self.store, shared, self.id)
            if self.settings.metrics_port is not None:
                server = health.HealthServer(
                    probe_url, self.store, self.settings.metrics_host, self.settings.metrics_port,
                    health=supervisor.health, replica=self.id, registry=shared,
                )  # fmt: skip
                server.start()
                self.health_port = server.port
            dashboard = self._dashboard()  # SCHEDULER_DASHBOARD_PORT: the web dashboard too
        except BaseException:
            if server is not None:
                server.stop()
            if gauges is not None:
                gauges.close()
            await self.pool.close()
            raise
        # the liveness lock outlives the worker: while a job of this replica may still run, its
        # session must not end (the leader would take that for a death)
        worker_done = asyncio.Event()
        liveness = supervisor.start("scheduler-liveness", lambda: self.liveness.run(worker_done))
        loops = [supervisor.start("scheduler-beat", lambda: self._beat(stop, server))]
        if self.lead:  # a worker-only replica never campaigns
            loops.append(supervisor.start("scheduler-leader", lambda: self.elector.run(stop)))
        loops += [
            supervisor.start("scheduler-worker", lambda: self.worker.run(stop)),
            supervisor.start("scheduler-register", lambda: self._register(stop)),
        ]
        self.started.set()
        try:
            await asyncio.wait(loops)
        finally:
            worker_done.set()
            await asyncio.wait([liveness])
            if server is not None:
                server.stop()
            if gauges is not None:
                gauges.close()
            if dashboard is not None:
                await dashboard.stop()
            await self.pool.close()
            log.info("replica_stopped", replica=self.id, failure=supervisor.failure)
        if supervisor.failure is not None:
            raise ReplicaFailedError(supervisor.failure)


async def migrate(url: str, settings: Settings) -> list[str]:
    """Apply pending migrations; returns the names applied.

    Raises:
        MigrationPrivilegeError: migrations are pending and the role may not apply them.
    """
    store = Store(settings.schema_name)
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        try:
            applied = await store.migrate(conn)
        except psycopg.errors.InsufficientPrivilege as exc:
            pending = [f"{m.version:04d}_{m.name}" for m in await store.pending_migrations(conn)]
            raise MigrationPrivilegeError(
                f"migrations {', '.join(pending)} are pending and this database role may not "
                f"apply them ({str(exc).strip()}): run `scheduler migrate` as the owner of "
                f"schema {settings.schema_name!r} (see docs/operations.md)"
            ) from None
    return [f"{m.version:04d}_{m.name}" for m in applied]


async def run_replica(url: str, settings: Settings, config: SchedulesConfig | None) -> None:
    """Migrate, then run one replica until SIGTERM or SIGINT (a second signal exits at once)."""
    applied = await migrate(url, settings)
    if applied:
        log.info("migrations_applied", migrations=applied)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()

    def on_signal(signum: int) -> None:
        if stop.is_set():
            log.warning("shutdown_forced", signal=signal.Signals(signum).name)
            os._exit(1)
        log.info("shutdown_requested", signal=signal.Signals(signum).name)
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal, sig)
    await Replica(url, settings, config).run(stop)
