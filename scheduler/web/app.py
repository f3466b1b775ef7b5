"""The dashboard's ASGI app: :func:`create_app`.

Every error becomes a page, never a traceback: bad input (an
:class:`~scheduler.errors.InvalidArgumentError`, e.g. a hostile query parameter) is a 400
naming it, a job or schedule not found a 404, a statement past the dashboard's statement
timeout or a database that does not answer a 503, and anything else a 500 that says only
the exception's class.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import socket
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from typing import Any

import psycopg
import uvicorn
from psycopg_pool import AsyncConnectionPool, PoolTimeout
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates

from ..connections import default_database_url
from ..errors import (
    DatabaseError,
    InvalidArgumentError,
    JobNotFoundError,
    ScheduleNotFoundError,
    SchedulerError,
)
from ..log import get_logger, redact_url
from ..settings import Settings, get_settings
from ..store import Store
from . import job_pages, overview, schedule_pages, system_pages
from .context import STATIC_DIR, TEMPLATES_DIR, Dashboard, href, render
from .security import Authenticate, AuthMiddleware, Credentials, can_act, csrf_token

log = get_logger(__name__)


async def healthz(request: Request) -> Response:
    """200 ``ok`` without authentication (a load balancer's probe)."""
    return PlainTextResponse("ok")


def _error_page(request: Request, status: int, title: str, message: str) -> Response:
    if getattr(request.state, "dashboard_user", None) is None:  # refused before auth
        return PlainTextResponse(f"{title}: {message}", status_code=status)
    return render(request, "error.html", status_code=status, title=title, message=message)


async def _on_http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    title = {404: "Not found", 405: "Method not allowed"}.get(exc.status_code, "Error")
    return _error_page(request, exc.status_code, title, str(exc.detail))


async def _on_scheduler_error(request: Request, exc: Exception) -> Response:
    message = redact_url(" ".join(str(exc).split()))
    if isinstance(exc, InvalidArgumentError):
        return _error_page(request, 400, "Bad request", message)
    if isinstance(exc, JobNotFoundError | ScheduleNotFoundError):
        return _error_page(request, 404, "Not found", message)
    if isinstance(exc, DatabaseError):
        return _error_page(request, 503, "Database unavailable", message)
    return _error_page(request, 409, "Refused", message)


async def _on_database_error(request: Request, exc: Exception) -> Response:
    if isinstance(exc, psycopg.errors.QueryCanceled):
        message = "a query ran past the dashboard's statement timeout; try a narrower filter"
    elif isinstance(exc, TimeoutError | PoolTimeout | psycopg.OperationalError):
        message = "the database did not answer in time"
    else:
        message = f"the database refused the query ({type(exc).__name__})"
    log.warning("dashboard_database_error", path=request.url.path, error=type(exc).__name__,
                reason=redact_url(str(exc).strip().split("\n")[0][:300]))  # fmt: skip
    return _error_page(request, 503, "Database unavailable", message)


async def _on_bug(request: Request, exc: Exception) -> Response:
    log.error("dashboard_error", path=request.url.path, error=type(exc).__name__, exc_info=exc)
    return _error_page(
        request, 500, "Internal error", f"unexpected {type(exc).__name__}; see the logs"
    )


def _utc(value: Any) -> Any:
    """Jinja filter ``utc``: an aware datetime in UTC (others unchanged)."""
    if isinstance(value, datetime) and value.tzinfo is not None:
        return value.astimezone(UTC)
    return value


def create_app(
    settings: Settings | None = None,
    *,
    database_url: str | None = None,
    read_only: bool | None = None,
    authenticate: Authenticate | None = None,
) -> Starlette:
    """The dashboard as an ASGI app (Starlette), to serve or to mount in a host app.

    ``settings``: default :func:`scheduler.settings.get_settings` (``SCHEDULER_*``).
    ``database_url``: default the settings' URL. ``read_only``: refuse every action
    (default ``SCHEDULER_DASHBOARD_READ_ONLY``). ``authenticate``: the host app's
    authentication, a callable taking the request and returning ``(user, can_act)`` or None
    (401); when given, the settings' credentials are not used. See
    :mod:`scheduler.web.security`.

    Raises:
        SettingsError: from :func:`~scheduler.settings.get_settings`.
        DatabaseNotConfiguredError: no ``database_url`` and none in the settings.
    """
    settings = settings or get_settings()
    url = database_url or default_database_url(settings)[0]
    read_only = settings.dashboard_read_only if read_only is None else read_only
    templates = Jinja2Templates(directory=str(TEMPLATES_DIR))
    templates.env.globals.update(href=href, csrf_token=csrf_token, can_act=can_act)
    templates.env.filters["utc"] = _utc
    pool = AsyncConnectionPool(
        url,
        min_size=1,
        max_size=4,
        open=False,
        kwargs={"autocommit": True, "prepare_threshold": None},
        timeout=10.0,
    )

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await pool.open()
        try:
            yield
        finally:
            await pool.close()

    routes: list[Any] = [
        Route("/healthz", healthz),
        *overview.routes,
        *job_pages.routes,
        *schedule_pages.routes,
        *system_pages.routes,
        Mount("/static", app=StaticFiles(directory=str(STATIC_DIR)), name="static"),
    ]
    secret = (
        settings.dashboard_secret.get_secret_value().encode()
        if settings.dashboard_secret
        else secrets.token_bytes(32)
    )
    middleware = [
        Middleware(
            AuthMiddleware,
            credentials=Credentials.of(settings),
            authenticate=authenticate,
            read_only=read_only,
            secret=secret,
        )
    ]
    handlers: dict[Any, Any] = {
        HTTPException: _on_http_error,
        SchedulerError: _on_scheduler_error,
        psycopg.Error: _on_database_error,
        TimeoutError: _on_database_error,
        PoolTimeout: _on_database_error,
        Exception: _on_bug,
    }
    app = Starlette(
        routes=routes, lifespan=lifespan, middleware=middleware, exception_handlers=handlers
    )
    app.state.dashboard = Dashboard(
        settings=settings,
        store=Store(settings.schema_name),
        pool=pool,
        templates=templates,
        read_only=read_only,
        statement_timeout_s=settings.dashboard_statement_timeout_s,
    )
    return app


def listening_socket(host: str, port: int) -> socket.socket:
    """A TCP socket bound to ``host:port`` (port 0: a free one), for :class:`DashboardServer`.

    Raises:
        OSError: the address cannot be bound (port in use, unknown host).
    """
    family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
    except OSError:
        sock.close()
        raise
    return sock


class _Server(uvicorn.Server):
    """uvicorn's server, leaving the process's signal handlers alone (a replica owns them)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class DashboardServer:
    """The dashboard app served by uvicorn on this event loop (inside ``scheduler run``).

    ``start()`` binds ``host:port`` (raises :class:`OSError` when it cannot) and serves in a
    task; ``stop()`` finishes the open requests (at most ``grace_s`` seconds) and closes.
    :attr:`port` is the bound port (useful with port 0).
    """

    def __init__(self, app: Starlette, host: str, port: int, grace_s: float = 5.0) -> None:
        self.app, self.host, self.port, self.grace_s = app, host, port, grace_s
        self._server: _Server | None = None
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        sock = listening_socket(self.host, self.port)
        self.port = sock.getsockname()[1]
        config = uvicorn.Config(
            self.app,
            log_config=None,
            access_log=False,
            lifespan="on",
            server_header=False,
            timeout_graceful_shutdown=int(self.grace_s),
        )
        self._server = _Server(config)
        self._task = asyncio.create_task(self._server.serve(sockets=[sock]), name="dashboard")

    async def stop(self) -> None:
        if self._server is None or self._task is None:
            return
        self._server.should_exit = True
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._task, self.grace_s + 5)
