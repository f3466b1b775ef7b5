"""The jobs pages: the list (filters, search, keyset pages), a job's detail (arguments,
attempts with tracebacks, events, result, lateness), the dead letters, and the actions
retry, cancel and delete, on one job or on everything matching the list's filter.

URLs (query parameters of the list, each optional)::

    GET  /jobs?state=&queue=&task=&schedule=&since=&until=&q=&before=
    GET  /jobs/{id}
    GET  /dead-letters?task=&queue=&before_at=&before=
    POST /jobs/{id}/retry | /jobs/{id}/cancel | /jobs/{id}/delete
    POST /jobs/bulk/retry | /jobs/bulk/cancel | /jobs/bulk/delete   (the filter as form fields)

``since`` / ``until`` (on the creation time) take an ISO 8601 date or time (UTC when it has
no offset) or a duration ago (``15m``, ``2h``, ``7d``). A bad value is a 400 page naming the
parameter. Bulk actions take at most :data:`BULK_MAX` jobs (the newest), as the
confirmation page says.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlencode

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from .. import actions
from ..errors import InvalidArgumentError, JobNotFoundError
from ..limits import check_queue, check_schedule_name, check_task_name, shown
from ..operations import parse_duration
from .context import query_text, reading, render
from .security import can_act, confirmed_action

PAGE_SIZE = 50
SEARCH_SCAN = 20_000  # jobs a search or a time window reads per page at most (then links on)
BULK_MAX = actions.IDS_MAX  # 10,000 jobs per bulk action
DETAIL_ROWS_MAX = 500  # attempts and events shown on a job's page
PRETTY_MAX = 100_000  # characters of pretty-printed arguments or result shown
STATES = ("pending", "running", "succeeded", "dead", "cancelled")
_ID_MAX = 2**63 - 1


@dataclass(frozen=True)
class JobFilter:
    """The list's filter; None = any."""

    state: str | None = None
    queue: str | None = None
    task: str | None = None
    schedule: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    q: str | None = None

    def params(self) -> dict[str, Any]:
        return asdict(self)

    def fields(self) -> dict[str, str]:
        """The filter as form / query fields (times in ISO 8601)."""
        out = {}
        for key, value in asdict(self).items():
            if value is not None:
                out[key] = value.isoformat() if isinstance(value, datetime) else str(value)
        return out

    def describe(self) -> str:
        fields = self.fields()
        return ", ".join(f"{k} = {shown(v, 80)}" for k, v in fields.items()) or "no filter"


def _named(name: str, check: Callable[[Any, str], Any], value: str) -> Any:
    try:
        return check(value, name)
    except InvalidArgumentError as exc:
        raise InvalidArgumentError(f"parameter {name!r}: {exc}") from None


def parse_time(name: str, value: str, now: datetime) -> datetime:
    """An ISO 8601 date or time (UTC when naive), or a duration before ``now``.

    Raises:
        InvalidArgumentError: neither, naming parameter ``name``.
    """
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        try:
            return now - timedelta(seconds=parse_duration(value))
        except (InvalidArgumentError, ValueError, OverflowError):
            raise InvalidArgumentError(
                f"parameter {name!r}: {shown(value)} is neither an ISO 8601 time "
                "(2025-01-31T09:00:00Z) nor a duration ago (15m, 2h, 7d)"
            ) from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def parse_filter(get: Callable[[str], str | None], now: datetime) -> JobFilter:
    """The filter from ``get(name)`` (query parameters or form fields, already checked for
    NUL, unpaired surrogates and length).

    Raises:
        InvalidArgumentError: a value breaks its rule, naming the parameter.
    """
    state = get("state")
    if state is not None and state not in STATES:
        raise InvalidArgumentError(
            f"parameter 'state': {shown(state)} is not one of {', '.join(STATES)}"
        )
    since, until = get("since"), get("until")
    queue, task, schedule = get("queue"), get("task"), get("schedule")
    return JobFilter(
        state=state,
        queue=_named("queue", check_queue, queue) if queue else None,
        task=_named("task", check_task_name, task) if task else None,
        schedule=_named("schedule", check_schedule_name, schedule) if schedule else None,
        since=parse_time("since", since, now) if since else None,
        until=parse_time("until", until, now) if until else None,
        q=get("q"),
    )


def _job_id(text: str | None, name: str) -> int | None:
    if text is None:
        return None
    if not (text.isascii() and text.isdigit() and len(text) <= 19 and 1 <= int(text) <= _ID_MAX):
        raise InvalidArgumentError(f"parameter {name!r}: {shown(text)} is not a job id")
    return int(text)


def _query_getter(request: Request) -> Callable[[str], str | None]:
    return lambda name: query_text(request, name, 300)


async def _scan_end(conn: Any, store: Any, params: dict[str, Any]) -> int | None:
    """The oldest job id a bounded page that found fewer than a page read, or None when it
    read every job matching the other filters (there is nothing further to look at)."""
    rows = await store.fetch(conn, "dashboard_jobs_scanned", params)
    return int(rows[0]["last_id"]) if rows and rows[0]["scanned"] >= SEARCH_SCAN else None


async def jobs_list(request: Request) -> Response:
    """``/jobs``: newest first, keyset pages of :data:`PAGE_SIZE` (``before``: a job id). A
    search (``q``) or a time window (``since``/``until``) reads at most :data:`SEARCH_SCAN`
    jobs per page and, when that fills no page, links on from where it stopped."""
    now = datetime.now(UTC)
    flt = parse_filter(_query_getter(request), now)
    before = _job_id(query_text(request, "before", 30), "before")
    bounded_scan = flt.q is not None or flt.since is not None or flt.until is not None
    scan = SEARCH_SCAN if bounded_scan else None
    params = {**flt.params(), "before": before, "limit": PAGE_SIZE + 1, "scan": scan}
    scanned_to = None
    async with reading(request) as (conn, store):
        rows = await store.fetch(conn, "dashboard_jobs_page", params)
        if scan is not None and len(rows) <= PAGE_SIZE:
            scanned_to = await _scan_end(conn, store, params)
    next_url = None
    if len(rows) > PAGE_SIZE:
        rows = rows[:PAGE_SIZE]
        next_url = "/jobs?" + urlencode({**flt.fields(), "before": rows[-1]["id"]})
    elif scanned_to is not None:
        next_url = "/jobs?" + urlencode({**flt.fields(), "before": scanned_to})
    here = "/jobs" + (f"?{urlencode(flt.fields())}" if flt.fields() else "")
    return render(
        request,
        "jobs.html",
        jobs=rows,
        filter=flt,
        fields=flt.fields(),
        raw={k: request.query_params.get(k, "") for k in ("since", "until")},
        states=STATES,
        before=before,
        next_url=next_url,
        scanned_to=scanned_to,
        search_scan=SEARCH_SCAN,
        here=here,
        bulk_max=BULK_MAX,
    )


def _pretty(value: Any) -> str:
    text = json.dumps(value, indent=2, ensure_ascii=False, sort_keys=True, default=str)
    return text if len(text) <= PRETTY_MAX else text[:PRETTY_MAX] + "\n… (cut)"


async def job_detail(request: Request) -> Response:
    job_id = _job_id(str(request.path_params["id"]), "id")
    params = {"id": job_id, "limit": DETAIL_ROWS_MAX}
    async with reading(request) as (conn, store):
        found = await store.fetch(conn, "dashboard_job", params)
        if not found:
            raise JobNotFoundError(f"no job {job_id} (it may have been deleted or pruned)")
        runs = await store.fetch(conn, "dashboard_job_runs", params)
        events = await store.fetch(conn, "dashboard_job_events", params)
    job = found[0]
    return render(
        request,
        "job.html",
        job=job,
        args=_pretty(job["args"]),
        result=None if job["result"] is None else _pretty(job["result"]),
        runs=runs,
        events=events,
        rows_max=DETAIL_ROWS_MAX,
    )


async def dead_letters(request: Request) -> Response:
    get = _query_getter(request)
    task, queue = get("task"), get("queue")
    before_at_text = get("before_at")
    before_at = (
        parse_time("before_at", before_at_text, datetime.now(UTC)) if before_at_text else None
    )
    before = _job_id(get("before"), "before")
    if (before_at is None) != (before is None):
        raise InvalidArgumentError("parameters 'before_at' and 'before' go together")
    params = {
        "task": _named("task", check_task_name, task) if task else None,
        "queue": _named("queue", check_queue, queue) if queue else None,
        "before_at": before_at,
        "before_id": before,
        "limit": PAGE_SIZE + 1,
    }
    async with reading(request) as (conn, store):
        rows = await store.fetch(conn, "dashboard_dead_letters", params)
    fields = {k: v for k, v in (("task", params["task"]), ("queue", params["queue"])) if v}
    next_url = None
    if len(rows) > PAGE_SIZE:
        rows = rows[:PAGE_SIZE]
        last = rows[-1]
        cursor = {"before_at": last["finished_at"].isoformat(), "before": last["id"]}
        next_url = "/dead-letters?" + urlencode({**fields, **cursor})
    here = "/dead-letters" + (f"?{urlencode(fields)}" if fields else "")
    return render(
        request,
        "dead_letters.html",
        jobs=rows,
        fields=fields,
        next_url=next_url,
        here=here,
        bulk_fields={**fields, "state": "dead", "next": here},
        bulk_max=BULK_MAX,
    )


VERBS = ("retry", "cancel", "delete")


def _verb(request: Request) -> str:
    verb = str(request.path_params["verb"])
    if verb not in VERBS:
        raise HTTPException(404, f"no action {shown(verb)}: the actions are {', '.join(VERBS)}")
    return verb


def _local(path: str | None, default: str) -> str:
    """``path`` when it is a path of this site (``/jobs?...``), else ``default``."""
    if path and path.startswith("/") and not path.startswith("//") and "\\" not in path:
        return path
    return default


def _done(request: Request, message: str, items: list[str], back: str) -> Response:
    return render(request, "error.html", title="Done", message=message, items=items, back=back)


async def job_action(request: Request) -> Response:
    verb = _verb(request)
    job_id = _job_id(str(request.path_params["id"]), "id")
    assert job_id is not None
    gate = await confirmed_action(request, f"{verb.capitalize()} job {job_id}.")
    if isinstance(gate, Response):
        return gate
    _, actor = gate
    back = f"/jobs/{job_id}"
    async with reading(request) as (conn, store):
        if verb == "retry":
            result = await actions.retry_jobs(conn, store, [job_id], actor)
            if result.retried:
                message = f"Job {job_id} is pending again."
            elif job_id in result.skipped:
                message = f"Job {job_id} was not retried: {result.skipped[job_id]}."
            else:
                message = f"Job {job_id} was not retried: only dead or cancelled jobs are."
        elif verb == "cancel":
            done = await actions.cancel_jobs(conn, store, [job_id], actor)
            message = {
                "cancelled": f"Job {job_id} is cancelled.",
                "cancel_requested": f"Job {job_id} is running: its handler was asked to stop.",
            }.get(done.get(job_id, ""), f"Job {job_id} was not cancelled: it has finished.")
        else:
            deleted = await actions.delete_jobs(conn, store, [job_id], actor)
            if deleted:
                message, back = f"Job {job_id} is deleted.", "/jobs"
            else:
                message = f"Job {job_id} was not deleted: it is running (cancel it first) or gone."
    return _done(request, message, [], back)


def _form_getter(form: Any) -> Callable[[str], str | None]:
    def get(name: str) -> str | None:
        values = form.getlist(name)
        if len(values) > 1 or (values and not isinstance(values[0], str)):
            raise InvalidArgumentError(f"form field {name!r}: given more than once")
        if not values:
            return None
        value = values[0]
        if len(value) > 300 or "\x00" in value:
            raise InvalidArgumentError(f"form field {name!r}: longer than 300 or holds NUL")
        return value.strip() or None

    return get


async def bulk_action(request: Request) -> Response:
    verb = _verb(request)
    form = await request.form(max_files=0, max_fields=100, max_part_size=64 * 1024)
    get = _form_getter(form)
    flt = parse_filter(get, datetime.now(UTC))
    back = _local(get("next"), "/jobs")
    what = ""
    if can_act(request) and form.get("confirmed") != "yes":
        async with reading(request) as (conn, store):
            params = {**flt.params(), "limit": BULK_MAX + 1}
            count = len(await store.fetch(conn, "dashboard_jobs_matching_ids", params))
        many = (
            f"more than {BULK_MAX:,} jobs: the newest {BULK_MAX:,} of them"
            if count > BULK_MAX
            else f"{count:,} job(s)"
        )
        what = f"{verb.capitalize()} {many}, matching {flt.describe()}."
    gate = await confirmed_action(request, what)
    if isinstance(gate, Response):
        return gate
    _, actor = gate
    async with reading(request) as (conn, store):
        params = {**flt.params(), "limit": BULK_MAX}
        ids = [r["id"] for r in await store.fetch(conn, "dashboard_jobs_matching_ids", params)]
        items: list[str] = []
        if verb == "retry":
            result = await actions.retry_jobs(conn, store, ids, actor)
            message = f"{len(result.retried):,} of {len(ids):,} matching job(s) retried."
            items = [f"job {i}: {why}" for i, why in list(result.skipped.items())[:50]]
        elif verb == "cancel":
            done = await actions.cancel_jobs(conn, store, ids, actor)
            asked = sum(1 for v in done.values() if v == "cancel_requested")
            message = (
                f"{len(done) - asked:,} of {len(ids):,} matching job(s) cancelled, "
                f"{asked:,} running asked to stop."
            )
        else:
            deleted = await actions.delete_jobs(conn, store, ids, actor)
            message = (
                f"{len(deleted):,} of {len(ids):,} matching job(s) deleted (running ones are kept)."
            )
    return _done(request, message, items, back)


routes = [
    Route("/jobs", jobs_list, methods=["GET"]),
    Route("/jobs/bulk/{verb:str}", bulk_action, methods=["POST"]),
    Route("/jobs/{id:int}", job_detail, methods=["GET"]),
    Route("/jobs/{id:int}/{verb:str}", job_action, methods=["POST"]),
    Route("/dead-letters", dead_letters, methods=["GET"]),
]
