"""What every page handler uses: the dashboard's state on the app, a bounded read
transaction, template rendering, and (from :mod:`scheduler.web.security`) who acts.

A handler::

    async def page(request: Request) -> Response:
        async with reading(request) as (conn, store):
            rows = await store.fetch(conn, "dashboard_jobs_page", {...})
        return render(request, "jobs.html", rows=rows)
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
from psycopg_pool import AsyncConnectionPool
from starlette.requests import Request
from starlette.responses import HTMLResponse
from starlette.templating import Jinja2Templates

from ..errors import InvalidArgumentError
from ..limits import shown
from ..operations import bounded
from ..settings import Settings
from ..store import Store

TEMPLATES_DIR = Path(__file__).parent / "templates"
STATIC_DIR = Path(__file__).parent / "static"


@dataclass
class Dashboard:
    """The dashboard's shared state, kept on ``app.state.dashboard``.

    ``statement_timeout_s``: every statement of a page or an action is ended by the server
    after this many seconds (``SET LOCAL statement_timeout``), so a page cannot hurt a
    loaded database. ``read_only``: actions are refused (403).
    """

    settings: Settings
    store: Store
    pool: AsyncConnectionPool
    templates: Jinja2Templates
    read_only: bool
    statement_timeout_s: float


def dashboard(request: Request) -> Dashboard:
    """The :class:`Dashboard` of the app serving ``request``."""
    state: Dashboard = request.app.state.dashboard
    return state


@contextlib.asynccontextmanager
async def reading(request: Request) -> AsyncIterator[tuple[psycopg.AsyncConnection[Any], Store]]:
    """A pooled connection in one transaction whose statements end after the dashboard's
    ``statement_timeout_s`` (the same transaction is used for an action's writes)."""
    d = dashboard(request)
    # opened on first use when a host app mounts the dashboard without running its lifespan
    # (a no-op once open)
    await d.pool.open()
    async with d.pool.connection() as conn, bounded(conn, d.store, d.statement_timeout_s):
        yield conn, d.store


def href(request: Request, path: str) -> str:
    """``path`` (``/jobs``) under the prefix the dashboard is mounted at, if any (a Jinja
    global: ``href(request, '/jobs')``)."""
    return str(request.scope.get("root_path", "")) + path


_UNSAFE = re.compile("[\x00\ud800-\udfff]")


def query_text(request: Request, name: str, max_len: int = 200) -> str | None:
    """The query parameter ``name``, stripped; None when absent or empty.

    Raises:
        InvalidArgumentError: longer than ``max_len`` characters, holds NUL or an unpaired
            surrogate, or is given more than once (the error page names the parameter).
    """
    values = request.query_params.getlist(name)
    if len(values) > 1:
        raise InvalidArgumentError(f"query parameter {name!r}: given {len(values)} times")
    if not values:
        return None
    value = values[0]
    if len(value) > max_len:
        raise InvalidArgumentError(
            f"query parameter {name!r}: {len(value):,} characters, at most {max_len:,}"
        )
    if _UNSAFE.search(value):
        raise InvalidArgumentError(
            f"query parameter {name!r}: holds NUL or bytes that are not UTF-8: {shown(value)}"
        )
    return value.strip() or None


def render(request: Request, template: str, status_code: int = 200, **context: Any) -> HTMLResponse:
    """Render ``templates/<template>`` with ``request`` and ``context``."""
    response: HTMLResponse = dashboard(request).templates.TemplateResponse(
        request, template, context, status_code=status_code
    )
    return response
