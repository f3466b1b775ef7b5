"""``scheduler dashboard [--host H] [--port P] [--read-only]``: the web dashboard in a process
of its own (uvicorn), until Ctrl-C or SIGTERM.

``--host`` (default ``SCHEDULER_DASHBOARD_HOST``, ``127.0.0.1``), ``--port`` (default
``SCHEDULER_DASHBOARD_PORT``, else :data:`DEFAULT_PORT`), ``--read-only`` (or
``SCHEDULER_DASHBOARD_READ_ONLY``: every action refused). A non-loopback host without a
credential (``SCHEDULER_DASHBOARD_USER`` / ``_PASSWORD`` or ``_TOKEN``) is refused (exit 2).
See :mod:`scheduler.web.security` and docs/dashboard.md.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import Any

import psycopg

from .. import limits, log, operations
from ..settings import load_settings
from .common import int_in, one_line, resolve_database_url

DEFAULT_PORT = 8080


def cmd_dashboard(args: argparse.Namespace) -> int:
    import uvicorn

    from ..web.app import create_app, listening_socket
    from ..web.security import require_safe_listen

    overrides: dict[str, Any] = {}
    options: dict[str, str] = {}
    for field, option, value in (
        ("dashboard_host", "--host", args.host),
        ("dashboard_port", "--port", args.port),
        ("dashboard_read_only", "--read-only", True if args.read_only else None),
    ):
        if value is not None:
            overrides[field], options[field] = value, option
    settings = load_settings(overrides, options=options)
    log.configure(settings.log_format, settings.log_level)
    host = settings.dashboard_host
    port = DEFAULT_PORT if settings.dashboard_port is None else settings.dashboard_port
    require_safe_listen(settings, host, "--host" if args.host is not None else None)
    url = resolve_database_url(settings)
    try:
        asyncio.run(operations.check_connection(url, settings))
    except psycopg.Error as exc:
        raise operations.database_error(exc, url, settings) from None
    try:
        sock = listening_socket(host, port)
    except OSError as exc:
        print(
            f"cannot listen on {limits.shown(host)} port {port}: {one_line(exc)}", file=sys.stderr
        )
        return 1
    app = create_app(settings, database_url=url)
    server = uvicorn.Server(
        uvicorn.Config(app, log_config=None, access_log=False, lifespan="on", server_header=False)
    )
    shown_host = f"[{host}]" if ":" in host else host
    mode = " (read-only)" if settings.dashboard_read_only else ""
    print(f"dashboard: http://{shown_host}:{sock.getsockname()[1]}/{mode}", file=sys.stderr)
    asyncio.run(server.serve(sockets=[sock]))
    return 0


def add_parsers(sub: Any) -> None:
    """Register ``dashboard`` on the ``scheduler`` parser."""
    p = sub.add_parser("dashboard", help="serve the web dashboard (its own process)")
    p.add_argument("--host", help="address to bind (default SCHEDULER_DASHBOARD_HOST, 127.0.0.1)")
    p.add_argument(
        "--port",
        type=int_in(0, 65535),
        help=f"TCP port (default SCHEDULER_DASHBOARD_PORT, else {DEFAULT_PORT}; 0: any free one)",
    )
    p.add_argument(
        "--read-only", action="store_true", help="refuse every action (retry, cancel, pause...)"
    )
    p.set_defaults(func=cmd_dashboard)
