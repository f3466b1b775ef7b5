"""The web dashboard: server-rendered pages (Starlette + Jinja2) over the jobs, schedules,
queues, replicas and leader tables, with confirmed, audited operator actions.

    app = scheduler.web.create_app()          # an ASGI app: mount it in FastAPI/Starlette
    scheduler dashboard [--host H] [--port P] # its own process (uvicorn)

See docs/dashboard.md.
"""

from __future__ import annotations

from .app import create_app

__all__ = ["create_app"]
