"""The replicas page (``/replicas``: every replica, the current leader, the leader history)
and what the system pages share: reading a form field, redirecting after an action with a
message, and the leader and replicas read by the overview too.

Queries: ``status_leader`` and ``status_replicas`` (sql/queries.sql, as ``scheduler status``),
``dashboard_leader_terms`` (sql/dashboard_system.sql).
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

import psycopg
from starlette.datastructures import FormData
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from ..errors import InvalidArgumentError
from ..limits import shown
from ..store import Store
from .context import href, query_text, reading, render

TERMS_SHOWN = 100  # leader terms on /replicas, newest first

# What a redirect after an action may say (?done=<code>&subject=<name>): fixed texts, so a
# link cannot make the page say anything else.
DONE = {
    "queue_paused": "Queue {} paused: replicas claim none of its jobs until it is resumed.",
    "queue_already_paused": "Queue {} was already paused.",
    "queue_resumed": "Queue {} resumed.",
    "queue_not_paused": "Queue {} was not paused.",
    "schedule_paused": "Schedule {} paused.",
    "schedule_resumed": "Schedule {} resumed; missed fire times go through its misfire policy.",
    "schedule_triggered": "Schedule {} triggered.",
    "schedule_refused": "Schedule {} was not triggered: its overlap policy refuses a job now.",
    "schedule_backfilled": "Schedule {} backfilled.",
}


async def leader_and_replicas(
    conn: psycopg.AsyncConnection[Any], store: Store
) -> tuple[dict[str, Any] | None, list[dict[str, Any]]]:
    """The leader row (None before any election) with ``lock_held``, and every replica with
    ``leader`` and ``heartbeat_age_s`` (seconds), oldest first."""
    key = {"key": store.leader_key}
    leaders = await store.fetch(conn, "status_leader", key)
    replicas = await store.fetch(conn, "status_replicas", key)
    return (leaders[0] if leaders else None), replicas


def form_text(form: FormData, name: str, max_len: int = 200) -> str:
    """The form field ``name`` as a string.

    Raises:
        InvalidArgumentError: missing, a file, given twice, longer than ``max_len``, or
            holding NUL or an unpaired surrogate (the error page names the field).
    """
    values = form.getlist(name)
    if len(values) != 1 or not isinstance(values[0], str):
        what = "missing" if not values else "given more than once" if len(values) > 1 else "a file"
        raise InvalidArgumentError(f"form field {name!r}: {what}")
    value = values[0]
    if len(value) > max_len:
        raise InvalidArgumentError(
            f"form field {name!r}: {len(value):,} characters, at most {max_len:,}"
        )
    if "\x00" in value or any("\ud800" <= ch <= "\udfff" for ch in value):
        raise InvalidArgumentError(
            f"form field {name!r}: holds NUL or bytes that are not UTF-8: {shown(value)}"
        )
    return value.strip()


def done_redirect(request: Request, path: str, done: str, subject: str, **extra: Any) -> Response:
    """A 303 to ``path`` (under the mount prefix) that shows the :data:`DONE` message
    ``done`` about ``subject``."""
    query = urlencode({"done": done, "subject": subject, **extra})
    return RedirectResponse(f"{href(request, path)}?{query}", status_code=303)


def done_message(request: Request) -> str | None:
    """The message of a redirect made by :func:`done_redirect`, or None (an unknown code or
    an odd subject shows nothing)."""
    try:
        code, subject = query_text(request, "done", 50), query_text(request, "subject", 200)
    except InvalidArgumentError:
        return None
    if code not in DONE or not subject:
        return None
    message = DONE[code].format(repr(subject))
    try:
        enqueued = query_text(request, "enqueued", 10)
    except InvalidArgumentError:
        enqueued = None
    if code == "schedule_backfilled" and enqueued and enqueued.isdigit():
        message += f" {int(enqueued):,} job(s) enqueued."
    return message


async def replicas_page(request: Request) -> Response:
    """``/replicas``: replicas (host, pid, version, queues, concurrency, started, heartbeat
    age), the current leader and the newest :data:`TERMS_SHOWN` leader terms with the gap
    before each (a failover's length)."""
    async with reading(request) as (conn, store):
        leader, replicas = await leader_and_replicas(conn, store)
        terms = await store.fetch(conn, "dashboard_leader_terms", {"limit": TERMS_SHOWN})
    return render(
        request,
        "replicas.html",
        leader=leader,
        replicas=replicas,
        terms=terms,
        terms_shown=TERMS_SHOWN,
    )


routes: list[Any] = [Route("/replicas", replicas_page, methods=["GET"])]
