"""The overview (``/``): queues with their depth by state, pause and limits; runs finished
and failure rate per minute over the last hour (inline SVG charts); the oldest due job; the
leader and the replicas. Pause and resume a queue (``POST /actions/queue/pause|resume``, field
``queue``: queue names may hold ``/``).

Live refresh: ``/events`` is a server-sent-events stream (``text/event-stream``) sending the
overview's body (``sys_overview_body.html``) as an ``overview`` event every
:data:`STREAM_TICK_S` seconds, with one query set per tick on a pooled connection held only
for that tick. It ends when the client goes (Starlette cancels the generator), on a database
error it cannot read through (it says so in the page), and after :data:`STREAM_MAX_S`
seconds, with a last ``overview`` event saying live refresh stopped and a ``close`` event
(the page's ``sse-close="close"``): a forgotten tab does not hold a connection forever, and
does not reconnect. The page reads the same without JavaScript (no live refresh).
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from datetime import UTC
from typing import Any

import anyio
import psycopg
from psycopg_pool import PoolTimeout
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from .. import actions
from ..limits import check_queue
from ..store import Store
from .charts import Minute, rate_chart, throughput_chart
from .context import dashboard, reading, render
from .security import can_act, confirmed_action
from .system_pages import done_message, done_redirect, form_text, leader_and_replicas

STREAM_TICK_S = 5.0  # seconds between two overview events
STREAM_MAX_S = 1800.0  # a stream ends after this long (the page then asks for a reload)
QUEUES_MAX = 200  # queues shown, by name
COUNT_CAP = 100_000  # a depth count reads at most this many index entries ("100,000+")
RUNS_CAP = 50_000  # the charts read at most about the newest this many runs
DEAD_WINDOW_S = 86_400.0  # "dead recently": dead letters of the last 24 hours


async def load_overview(conn: psycopg.AsyncConnection[Any], store: Store) -> dict[str, Any]:
    """Everything the overview shows, in four bounded reads (see sql/dashboard_system.sql):
    ``queues`` (rows), ``minutes`` (60 :class:`~scheduler.web.charts.Minute`, oldest first),
    ``truncated`` (the hour had more than :data:`RUNS_CAP` runs), ``oldest`` (the queue row
    with the oldest due job, or None), ``leader``, ``replicas``."""
    params = {"cap": COUNT_CAP, "queues_max": QUEUES_MAX, "dead_window_s": DEAD_WINDOW_S}
    queues = await store.fetch(conn, "dashboard_overview_queues", params)
    rows = await store.fetch(conn, "dashboard_overview_throughput", {"steps": RUNS_CAP // 1000})
    leader, replicas = await leader_and_replicas(conn, store)
    minutes = [
        Minute(r["minute"].astimezone(UTC), r["succeeded"], r["failed"], r["cancelled"])
        for r in rows
    ]
    due = [q for q in queues if q["oldest_due_at"] is not None]
    return {
        "queues": queues,
        "minutes": minutes,
        "truncated": bool(rows and rows[0]["truncated"]),
        "oldest": max(due, key=lambda q: q["oldest_due_age_s"], default=None),
        "leader": leader,
        "replicas": replicas,
        "count_cap": COUNT_CAP,
        "runs_cap": RUNS_CAP,
        "queues_max": QUEUES_MAX,
        "dead_window_h": DEAD_WINDOW_S / 3600,
    }


def _charts(data: dict[str, Any]) -> dict[str, Any]:
    minutes = data["minutes"]
    return {
        "throughput_svg": throughput_chart(minutes),
        "rate_svg": rate_chart(minutes),
        "runs_hour": sum(m.total for m in minutes),
        "failed_hour": sum(m.failed for m in minutes),
    }


async def overview_page(request: Request) -> Response:
    """``/``: the overview page (its body refreshed live over ``/events``)."""
    async with reading(request) as (conn, store):
        data = await load_overview(conn, store)
    return render(
        request,
        "overview.html",
        **data,
        **_charts(data),
        done=done_message(request),
        acting=can_act(request),
        live=True,
    )


def _event(name: str, html: str) -> str:
    """One server-sent event: ``event: name`` and ``html`` as ``data:`` lines."""
    lines = "".join(f"data: {line}\n" for line in html.splitlines() or [""])
    return f"event: {name}\n{lines}\n"


def _fragment(request: Request, **context: Any) -> str:
    template = dashboard(request).templates.get_template("sys_overview_body.html")
    return template.render(request=request, acting=can_act(request), **context)


async def _stream(request: Request) -> AsyncIterator[str]:
    deadline = time.monotonic() + STREAM_MAX_S
    yield f"retry: {int(STREAM_TICK_S * 1000)}\n\n"
    while True:
        try:
            async with reading(request) as (conn, store):
                data = await load_overview(conn, store)
            html = _fragment(request, **data, **_charts(data), live=True)
        except (psycopg.Error, TimeoutError, PoolTimeout) as exc:
            html = _fragment(request, unavailable=type(exc).__name__, live=True)
        if time.monotonic() >= deadline:
            note = ("<p class=\"notice\">Live refresh stopped after "
                    f"{STREAM_MAX_S / 60:.0f} minutes: reload the page to resume it.</p>")  # fmt: skip
            yield _event("overview", note + html)
            yield _event("close", "")
            return
        yield _event("overview", html)
        await anyio.sleep(STREAM_TICK_S)


async def events(request: Request) -> Response:
    """``/events``: the overview's live refresh, a ``text/event-stream`` (see the module
    docstring for how it is bounded)."""
    headers = {"Cache-Control": "no-store", "X-Accel-Buffering": "no"}
    return StreamingResponse(_stream(request), media_type="text/event-stream", headers=headers)


async def _queue_action(request: Request, pause: bool) -> Response:
    verb = "Pause" if pause else "Resume"
    form = await request.form(max_files=0, max_fields=100, max_part_size=64 * 1024)
    queue = check_queue(form_text(form, "queue", 200), "form field 'queue'")
    what = (f"{verb} queue {queue!r}: replicas stop claiming its jobs (running ones finish)"
            if pause else f"{verb} queue {queue!r}: replicas claim its jobs again")  # fmt: skip
    gate = await confirmed_action(request, what)
    if isinstance(gate, Response):
        return gate
    form, actor = gate
    async with reading(request) as (conn, store):
        if pause:
            changed = await actions.pause_queue(conn, store, queue, actor)
        else:
            changed = await actions.resume_queue(conn, store, queue, actor)
    code = {(True, True): "queue_paused", (True, False): "queue_already_paused",
            (False, True): "queue_resumed", (False, False): "queue_not_paused"}[(pause, changed)]  # fmt: skip
    return done_redirect(request, "/", code, queue)


async def pause_queue(request: Request) -> Response:
    """``POST /actions/queue/pause`` (field ``queue``): confirmed, then recorded with who."""
    return await _queue_action(request, pause=True)


async def resume_queue(request: Request) -> Response:
    """``POST /actions/queue/resume`` (field ``queue``)."""
    return await _queue_action(request, pause=False)


routes: list[Any] = [
    Route("/", overview_page, methods=["GET"]),
    Route("/events", events, methods=["GET"]),
    Route("/actions/queue/pause", pause_queue, methods=["POST"]),
    Route("/actions/queue/resume", resume_queue, methods=["POST"]),
]
