"""The schedules pages: ``/schedules`` (every schedule, keyset-paged by name) and
``/schedules/{name}``: the cron expression in words (``cron-descriptor``; an interval
schedule says "Every 90 seconds"), its zone, the next 5 fire times with their UTC offsets
(computed by the materialiser's own code,
:func:`scheduler.schedule_operations.row_fire_times` and
:func:`scheduler.schedule_operations.preview`, as ``scheduler schedules next``: DST-aware),
the latest runs with their start lateness as a chart, skipped fire times, alerts and incidents, its
policies, and the operator actions taken on it.

Actions (each confirmed, recorded in ``job_events`` with who did it, by
:mod:`scheduler.actions`): ``POST /schedules/{name}/pause``, ``/resume``, ``/trigger`` and
``/backfill`` (fields ``start``, ``end``: ISO 8601; without an offset, a wall time in the
schedule's zone; at most :data:`BACKFILL_MAX_JOBS` fire times).
"""

from __future__ import annotations

from datetime import UTC, datetime
from functools import lru_cache
from typing import Any
from zoneinfo import ZoneInfo

from cron_descriptor import (
    ExpressionDescriptor,
    FormatError,
    MissingFieldError,
    Options,
    WrongArgumentError,
)
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from .. import actions, schedule_operations
from ..cron_parse import MACROS
from ..errors import CronError, InvalidArgumentError, ScheduleNotFoundError
from ..limits import check_schedule_name, shown
from .charts import Run, lateness_chart
from .context import query_text, reading, render
from .security import can_act, confirmed_action
from .system_pages import done_message, done_redirect, form_text

PAGE_SIZE = 200  # schedules per page of /schedules
NEXT_FIRE_TIMES = 5
RUNS_SHOWN = 50  # latest jobs of a schedule (table and lateness chart)
ROWS_SHOWN = 20  # skipped fire times, incidents, actions shown
BACKFILL_MAX_JOBS = 1000
_UNITS = ((86_400, "day"), (3_600, "hour"), (60, "minute"), (1, "second"))


def every_in_words(every_s: float) -> str:
    """``90`` -> "Every 90 seconds", ``7200`` -> "Every 2 hours" (the largest unit that
    divides the interval exactly; fractions of a second as seconds)."""
    for unit_s, unit in _UNITS:
        if every_s >= unit_s and every_s % unit_s == 0:
            n = int(every_s // unit_s)
            return f"Every {unit}" if n == 1 else f"Every {n:,} {unit}s"
    return f"Every {every_s:g} seconds"


def in_words(row: dict[str, Any]) -> str:
    """A schedule row's timing in words: its interval, or its cron expression as
    ``cron-descriptor`` says it in 24-hour time ("At 09:00, only on Monday"; a macro such as
    ``@daily`` is described by what it stands for); the expression itself if it cannot."""
    if row["every_s"] is not None:
        return every_in_words(float(row["every_s"]))
    return cron_in_words(str(row["cron"]).strip())


@lru_cache(maxsize=4096)
def cron_in_words(expression: str) -> str:
    """``expression`` in words (cached: cron-descriptor takes ~0.4 ms per expression)."""
    options = Options()
    options.use_24hour_time_format = True
    try:
        text: str = ExpressionDescriptor(
            MACROS.get(expression.lower(), expression), options
        ).get_description()
    except (FormatError, MissingFieldError, WrongArgumentError, ValueError, IndexError):
        return expression
    return text


def _instant(text: str, what: str, zone: ZoneInfo) -> datetime:
    """``text`` as an aware datetime; without an offset, a wall time in ``zone``."""
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise InvalidArgumentError(
            f"{what} {shown(text)}: not an ISO-8601 instant (e.g. 2030-01-01T09:00, a wall "
            "time in the schedule's zone, or 2030-01-01T09:00:00+02:00)"
        ) from None
    return value if value.tzinfo is not None else value.replace(tzinfo=zone)


def next_fire_times(
    row: dict[str, Any], after: datetime
) -> tuple[list[dict[str, Any]], str | None]:
    """The next :data:`NEXT_FIRE_TIMES` fire times of a schedule row strictly after ``after``
    (aware), each as ``{"local": aware datetime in the zone, "utc": ..., "offset": "+02:00",
    "abbrev": "CEST"}``, and why there are none or fewer (None when all were computed)."""
    try:
        times = schedule_operations.row_fire_times(row)
        found = schedule_operations.preview(times, after, NEXT_FIRE_TIMES)
        why = None
    except (ValueError, CronError) as exc:  # an interval grid without an anchor
        return [], str(exc)
    except OverflowError:
        found, why = [], "past year 9999, the last date that can be computed"
    out = []
    for local in found:
        offset = local.strftime("%z")
        out.append({
            "local": local,
            "utc": local.astimezone(UTC),
            "offset": f"{offset[:3]}:{offset[3:]}" if offset else "",
            "abbrev": local.tzname() or "",
        })  # fmt: skip
    return out, why


def _name(request: Request) -> str:
    return check_schedule_name(request.path_params["name"], "schedule name in the URL")


async def schedules_page(request: Request) -> Response:
    """``/schedules``: schedules by name, :data:`PAGE_SIZE` a page after ``?after=<name>``."""
    after = query_text(request, "after", 200)
    if after is not None:
        check_schedule_name(after, "query parameter 'after'")
    async with reading(request) as (conn, store):
        rows = await store.fetch(conn, "dashboard_schedules",
                                 {"after": after or "", "limit": PAGE_SIZE + 1})  # fmt: skip
    more = len(rows) > PAGE_SIZE
    rows = rows[:PAGE_SIZE]
    for r in rows:
        r["words"] = in_words(r)
    return render(
        request,
        "schedules.html",
        schedules=rows,
        next_after=rows[-1]["name"] if more else None,
        done=done_message(request),
    )


async def schedule_page(request: Request) -> Response:
    """``/schedules/{name}``; ``?after=<ISO>`` previews the fire times after that instant
    instead of after now (a wall time in the schedule's zone without an offset)."""
    name = _name(request)
    after_text = query_text(request, "after", 64)
    async with reading(request) as (conn, store):
        found = await store.fetch(conn, "dashboard_schedule", {"name": name})
        if not found:
            raise ScheduleNotFoundError(f"no schedule named {name!r}")
        row = found[0]
        params = {"name": name, "limit": ROWS_SHOWN}
        runs = await store.fetch(
            conn, "dashboard_schedule_runs", {"name": name, "limit": RUNS_SHOWN}
        )
        skipped = await store.fetch(conn, "dashboard_schedule_skipped", params)
        incidents = await store.fetch(conn, "dashboard_schedule_incidents", params)
        events = await store.fetch(conn, "dashboard_schedule_events", params)
    zone = ZoneInfo(row["timezone"])
    after = row["db_now"]
    if after_text is not None:
        after = _instant(after_text, "query parameter 'after'", zone)
    fire_times, no_more = next_fire_times(row, after)
    points = [
        Run(r["scheduled_for"], r["lateness_s"], r["first_outcome"],
            f"{r['scheduled_for']:%Y-%m-%d %H:%M:%S} UTC, job {r['id']}: "
            + (f"started {r['lateness_s']:.3f} s late, {r['first_outcome'] or 'running'}"
               if r["lateness_s"] is not None else f"not started ({r['state']})"))
        for r in reversed(runs)
    ]  # fmt: skip
    return render(
        request,
        "schedule.html",
        s=row,
        words=in_words(row),
        after=after.astimezone(zone),
        after_given=after_text is not None,
        fire_times=fire_times,
        no_more=no_more,
        runs=runs,
        lateness_svg=lateness_chart(points, late_s=max(float(row["misfire_grace_s"]), 1.0)),
        skipped=skipped,
        incidents=incidents,
        events=events,
        rows_shown=ROWS_SHOWN,
        runs_shown=RUNS_SHOWN,
        backfill_max=BACKFILL_MAX_JOBS,
        done=done_message(request),
        acting=can_act(request),
    )


async def _action(request: Request, verb: str, what: str) -> tuple[Any, str, str] | Response:
    name = _name(request)
    gate = await confirmed_action(request, f"{verb} schedule {name!r}{what}")
    if isinstance(gate, Response):
        return gate
    form, actor = gate
    return form, actor, name


async def pause_schedule(request: Request) -> Response:
    """``POST /schedules/{name}/pause``."""
    gate = await _action(request, "Pause", ": no new fire time is materialised until resumed")
    if isinstance(gate, Response):
        return gate
    _, actor, name = gate
    async with reading(request) as (conn, store):
        await actions.pause_schedule(conn, store, name, actor)
    return done_redirect(request, f"/schedules/{name}", "schedule_paused", name)


async def resume_schedule(request: Request) -> Response:
    """``POST /schedules/{name}/resume``."""
    gate = await _action(request, "Resume", ": missed fire times go through its misfire policy")
    if isinstance(gate, Response):
        return gate
    _, actor, name = gate
    async with reading(request) as (conn, store):
        await actions.resume_schedule(conn, store, name, actor)
    return done_redirect(request, f"/schedules/{name}", "schedule_resumed", name)


async def trigger_schedule(request: Request) -> Response:
    """``POST /schedules/{name}/trigger``: a job now, unless its overlap policy refuses."""
    gate = await _action(request, "Trigger", ": one job now; its next fire time does not move")
    if isinstance(gate, Response):
        return gate
    _, actor, name = gate
    async with reading(request) as (conn, store):
        job_id = await actions.trigger_schedule(conn, store, name, actor)
    code = "schedule_triggered" if job_id is not None else "schedule_refused"
    return done_redirect(request, f"/schedules/{name}", code, name)


async def backfill_schedule(request: Request) -> Response:
    """``POST /schedules/{name}/backfill`` with ``start`` and ``end``: one job per fire time
    in ``[start, end]`` that has none, at most :data:`BACKFILL_MAX_JOBS`."""
    name = _name(request)
    form = await request.form(max_files=0, max_fields=100, max_part_size=64 * 1024)
    start_text, end_text = form_text(form, "start", 64), form_text(form, "end", 64)
    async with reading(request) as (conn, store):
        found = await store.fetch(conn, "dashboard_schedule", {"name": name})
    if not found:
        raise ScheduleNotFoundError(f"no schedule named {name!r}")
    zone = ZoneInfo(found[0]["timezone"])
    start = _instant(start_text, "form field 'start'", zone)
    end = _instant(end_text, "form field 'end'", zone)
    if end < start:
        raise InvalidArgumentError(
            f"form field 'end' {end_text!r} is before 'start' {start_text!r}"
        )
    gate = await _action(
        request, "Backfill",
        f": one job per fire time from {start.isoformat()} to {end.isoformat()} that has none "
        f"(at most {BACKFILL_MAX_JOBS})",
    )  # fmt: skip
    if isinstance(gate, Response):
        return gate
    _, actor, name = gate
    async with reading(request) as (conn, store):
        done = await actions.backfill_schedule(conn, store, name, start, end, actor,
                                               max_jobs=BACKFILL_MAX_JOBS)  # fmt: skip
    return done_redirect(request, f"/schedules/{name}", "schedule_backfilled", name,
                         enqueued=len(done.enqueued))  # fmt: skip


routes: list[Any] = [
    Route("/schedules", schedules_page, methods=["GET"]),
    Route("/schedules/{name}", schedule_page, methods=["GET"]),
    Route("/schedules/{name}/pause", pause_schedule, methods=["POST"]),
    Route("/schedules/{name}/resume", resume_schedule, methods=["POST"]),
    Route("/schedules/{name}/trigger", trigger_schedule, methods=["POST"]),
    Route("/schedules/{name}/backfill", backfill_schedule, methods=["POST"]),
]
