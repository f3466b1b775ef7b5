"""Server time of every dashboard page with 1,000,000 jobs and 1,000,000 runs (issue 15:
every page under 200 ms; the jobs list fast on page 1,000).

    python -m bench.dashboard --pg 15|18 [--jobs 1000000] [--runs 1000000] [--reps 5] [--json]

Starts its own PostgreSQL (bench/servers.py: 128 MB shared buffers, fsync on; or
``SCHEDULER_BENCH_DSN``), migrates a fresh database and fills it with set-based SQL (one
``INSERT ... SELECT`` per table over ``generate_series``, then ANALYZE): jobs over the last 3 days in realistic states (mostly succeeded, 2 % dead
with errors and tracebacks, 1 % cancelled, delayed jobs due in the coming week, a backlog of
due jobs and a few running ones), 20 queues, 50 tasks (skewed), 200 schedules written by
``put_schedule`` (cron in UTC, Europe/Paris, America/New_York...) whose jobs carry
schedule_name / scheduled_for, the newest ``--runs`` attempts as job_runs, one job with 100
attempts, skipped fire times, incidents, audit events, replicas and leader terms.

Then times each page in-process: the app of ``scheduler.web.create_app`` (basic auth on)
driven through ``httpx.ASGITransport``, so a figure is the app's own time (routing, auth,
queries, rendering), no network and no browser. One warm-up request, then ``--reps``
requests: median and p95 in ms, against ``/healthz`` measured in the same run (and a bare
``SELECT 1`` through the app's pool), and PASS/FAIL of the median against 200 ms. The SSE row is the time to the first ``overview`` event of
``/events`` (the stream's first tick). Figures on a shared machine are noisy: rerun a page
that fails before concluding.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import re
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import quote, urlencode

import httpx
import psycopg

from scheduler import log
from scheduler.settings import Settings

from . import servers, workloads
from .dashboard_fill import LIMIT_MS, PASSWORD, USER, fill


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))]


async def _sse_tick(app: Any, auth: str) -> float:
    """Seconds from the request of ``/events`` to its first ``overview`` event (the ASGI
    app driven directly: httpx's ASGI transport waits for the end of a response)."""
    got, gone = asyncio.Event(), asyncio.Event()
    body = bytearray()
    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET",
        "scheme": "http", "path": "/events", "raw_path": b"/events", "query_string": b"",
        "root_path": "", "headers": [(b"host", b"bench"), (b"authorization", auth.encode())],
        "client": ("127.0.0.1", 50000), "server": ("127.0.0.1", 80), "state": {},
    }  # fmt: skip
    sent = False

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": b"", "more_body": False}
        await gone.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start" and message["status"] != 200:
            raise RuntimeError(f"/events answered {message['status']}")
        body.extend(message.get("body", b""))
        if b"event: overview" in body:
            got.set()

    started = time.perf_counter()
    task = asyncio.create_task(app(scope, receive, send))
    waiter = asyncio.create_task(got.wait())
    await asyncio.wait({task, waiter}, timeout=30, return_when=asyncio.FIRST_COMPLETED)
    elapsed = time.perf_counter() - started
    gone.set()
    waiter.cancel()
    try:
        await asyncio.wait_for(task, 10)
    except (TimeoutError, asyncio.CancelledError):
        task.cancel()
    if not got.is_set():
        raise RuntimeError("/events sent no overview event within 30 s")
    return elapsed


async def _time(fn: Callable[[], Awaitable[Any]], reps: int) -> tuple[list[float], Any]:
    last = await fn()  # warm-up
    times = []
    for _ in range(reps):
        started = time.perf_counter()
        last = await fn()
        times.append((time.perf_counter() - started) * 1000)
    return times, last


def _row(label: str, times: list[float], ref: float, status: Any, size: int) -> dict[str, Any]:
    """PASS: answered 200 with a median under 200 ms ("PASS, p95 over" when its p95 is not:
    on a shared machine, rerun such a page before concluding)."""
    med, p95 = statistics.median(times), pct(times, 0.95)
    verdict = "PASS" if status == 200 and med < LIMIT_MS else "FAIL"
    if verdict == "PASS" and p95 >= LIMIT_MS:
        verdict += ", p95 over"
    return {"page": label, "median_ms": round(med, 1), "p95_ms": round(p95, 1),
            "ratio": round(med / ref, 1) if ref else None, "status": status, "bytes": size,
            "verdict": verdict}  # fmt: skip


def _before_in_link(html: str) -> int | None:
    found = re.search(r'href="[^"]*[?&](?:amp;)?before=(\d+)', html)
    return int(found.group(1)) if found else None


async def measure(url: str, facts: dict[str, Any], reps: int) -> list[dict[str, Any]]:
    """One row per page (see the module docstring)."""
    from scheduler.web import create_app

    settings = Settings(database_url=url, dashboard_user=USER, dashboard_password=PASSWORD)
    app = create_app(settings, database_url=url)
    auth = "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
    transport = httpx.ASGITransport(app=app, client=("127.0.0.1", 50000))
    rows: list[dict[str, Any]] = []
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=transport, base_url="http://bench",
                          headers={"Authorization": auth}) as client,
    ):  # fmt: skip

        async def get(path: str) -> httpx.Response:
            return await client.get(path)

        async def page(label: str, path: str, ref: float) -> httpx.Response:
            times, resp = await _time(lambda: get(path), reps)
            rows.append(_row(label, times, ref, resp.status_code, len(resp.content)))
            print(f"  {label}: median {rows[-1]['median_ms']} ms ({path})", file=sys.stderr)
            return resp

        health, resp = await _time(lambda: get("/healthz"), max(reps, 20))
        ref = statistics.median(health)
        rows.append(_row("reference: /healthz", health, ref, resp.status_code, len(resp.content)))
        pool = app.state.dashboard.pool

        async def select_one() -> int:
            async with pool.connection() as conn:
                await conn.execute("SELECT 1")
            return 200

        times, _ = await _time(select_one, max(reps, 20))
        rows.append(_row("reference: SELECT 1 through the pool", times, ref, 200, 0))
        for label, path in pages(facts):
            await page(label, path, ref)
        # page 1,000 reached by following the "next" link of page 999
        resp999 = await get(facts["page_999_path"])
        link = _before_in_link(resp999.text)
        if link != facts["page_1000_before"]:
            print(f"  page 999's next link: before={link}, expected "
                  f"{facts['page_1000_before']}", file=sys.stderr)  # fmt: skip
        if link is not None:
            await page("/jobs page 1,000 via page 999's link", f"/jobs?before={link}", ref)
        if any(getattr(r, "path", None) == "/events" for r in app.routes):
            await _sse_tick(app, auth)  # warm-up
            ticks = [await _sse_tick(app, auth) * 1000 for _ in range(reps)]
            rows.append(_row("/events: first overview tick (SSE)", ticks, ref, 200, 0))
    return rows


def pages(f: dict[str, Any]) -> list[tuple[str, str]]:
    """(label, path) of each page timed; labels marked (extra) are worst cases beyond the
    issue's list."""
    window = urlencode({"since": f["since"], "until": f["until"]})
    old = urlencode({"since": f["old_since"], "until": f["old_until"]})
    return [
        ("/ (overview)", "/"),
        ("/jobs", "/jobs"),
        ("/jobs?state=dead", "/jobs?state=dead"),
        ("/jobs?queue&task", "/jobs?" + urlencode({"queue": f["queue"], "task": f["task"]})),
        (f"/jobs?q={f['word']}", "/jobs?" + urlencode({"q": f["word"]})),
        ("/jobs?since&until (1 h, 1 day ago)", "/jobs?" + window),
        ("/jobs page 999", f["page_999_path"]),
        ("/jobs page 1,000 (before= from SQL)", f"/jobs?before={f['page_1000_before']}"),
        (f"/jobs/{{id}} ({f['many_attempts']} attempts)", f"/jobs/{f['many_attempts_id']}"),
        ("/dead-letters", "/dead-letters"),
        ("/schedules", "/schedules"),
        ("/schedules/{name}", "/schedules/" + quote(f["schedule"])),
        ("/replicas", "/replicas"),
        ("(extra) /jobs?state=running", "/jobs?state=running"),
        ("(extra) /jobs?state=pending", "/jobs?state=pending"),
        ("(extra) /jobs?state=cancelled", "/jobs?state=cancelled"),
        ("(extra) /jobs?schedule=", "/jobs?" + urlencode({"schedule": f["schedule"]})),
        (
            "(extra) /jobs?queue&task, rare task",
            "/jobs?" + urlencode({"queue": f["rare_queue"], "task": f["rare_task"]}),
        ),
        ("(extra) /jobs?since&until (1 h, 3 days ago)", "/jobs?" + old),
        ("(extra) /jobs?q=<in no job>", "/jobs?q=zzqx-no-such-word"),
        ("(extra) /jobs?state=dead&q=", "/jobs?" + urlencode({"state": "dead", "q": f["word"]})),
    ]


def table(rows: list[dict[str, Any]]) -> str:
    out = [f"{'page':<46} {'median':>8} {'p95':>8} {'x ref':>7} {'status':>6} {'KB':>6}  <200ms"]
    for r in rows:
        ratio = "" if r["ratio"] is None else f"{r['ratio']:.0f}x"
        out.append(f"{r['page']:<46} {r['median_ms']:>8.1f} {r['p95_ms']:>8.1f} {ratio:>7} "
                   f"{r['status']!s:>6} {r['bytes'] / 1024:>6.0f}  {r['verdict']}")  # fmt: skip
    return "\n".join(out)


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.dashboard")
    parser.add_argument("--pg", choices=servers.MAJORS, default="18", help="PostgreSQL major")
    parser.add_argument("--jobs", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=1_000_000)
    parser.add_argument("--reps", type=int, default=5, help="timed requests per page")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument("--keep", action="store_true",
                        help="keep the server running at the end (prints its URL; Ctrl-C)")  # fmt: skip
    args = parser.parse_args()
    log.configure("json", "warning")
    with servers.server(args.pg) as admin:
        url = workloads.fresh_db(admin, "bench_dashboard")
        started = time.perf_counter()
        facts = fill(url, args.jobs, args.runs)
        fill_s = time.perf_counter() - started
        with psycopg.connect(url) as conn:
            version = conn.execute("SHOW server_version").fetchone()[0]
            buffers = conn.execute("SHOW shared_buffers").fetchone()[0]
            size = conn.execute("SELECT pg_size_pretty(pg_database_size(current_database()))"
                                ).fetchone()[0]  # fmt: skip
        rows = asyncio.run(measure(url, facts, args.reps))
        head = {"postgresql": version, "shared_buffers": buffers, "cores": os.cpu_count(),
                "python": sys.version.split()[0], "fill_s": round(fill_s, 1),
                "database_size": size, **facts["counts"]}  # fmt: skip
        if args.json:
            print(json.dumps({"setup": head, "pages": rows}, indent=2, default=str))
        else:
            print("# " + ", ".join(f"{k} {v}" for k, v in head.items()))
            print(table(rows))
        if args.keep:
            print(f"# server kept: {url}", flush=True)
            try:
                while True:
                    time.sleep(3600)
            except KeyboardInterrupt:
                pass
    return 0 if all(r["verdict"].startswith("PASS") for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
