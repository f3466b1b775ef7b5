"""The dashboard's jobs pages against a real PostgreSQL: the list's filters and search, keyset
pages, a job's detail (attempts with their traceback, events, result), dead letters, the
actions on one job and on everything matching a filter (recorded in job_events with the
actor), and hostile query parameters (a 400 page naming the parameter, never a traceback).

One database and one app per module (a module-scoped fixture): each test works on its own
task names so the others' rows do not change its results.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from psycopg.conninfo import make_conninfo
from starlette.testclient import TestClient

from scheduler.settings import Settings
from scheduler.web import create_app

TOKEN = re.compile(r'name="csrf_token" value="([0-9a-f]{64})"')


@pytest.fixture(scope="module")
def dash_url(pg_server_url: str, template_db: str) -> Iterator[str]:
    name = "scheduler_test_dashboard_jobs"
    with psycopg.connect(pg_server_url, autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template_db}"')
    yield make_conninfo(pg_server_url, dbname=name)
    with psycopg.connect(pg_server_url, autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="module")
def client(dash_url: str) -> Iterator[TestClient]:
    """The dashboard with no credential configured, seen from a loopback client."""
    app = create_app(Settings(), database_url=dash_url)
    with TestClient(app, client=("127.0.0.1", 40000)) as c:
        yield c


@pytest.fixture
def sql(dash_url: str) -> Iterator[psycopg.Connection]:
    with psycopg.connect(dash_url, autocommit=True) as conn:
        yield conn


def add_jobs(conn: psycopg.Connection, task: str, n: int, **cols: Any) -> list[int]:
    """Insert ``n`` jobs of ``task`` (in one statement); their ids, ascending."""
    state = cols.get("state", "pending")
    rows = conn.execute(
        """
        INSERT INTO scheduler.jobs (task, queue, args, state, last_error, finished_at,
                                    schedule_name, scheduled_for)
        SELECT %(task)s, %(queue)s, jsonb_build_object('n', i, 'note', %(note)s::text),
               %(state)s, %(error)s::text,
               CASE WHEN %(state)s IN ('dead', 'succeeded', 'cancelled')
                    THEN now() - make_interval(secs => %(n)s - i) END,
               %(schedule)s::text,
               CASE WHEN %(schedule)s::text IS NOT NULL
                    THEN now() - make_interval(mins => i) END
        FROM generate_series(1, %(n)s) AS i
        RETURNING id
        """,
        {
            "task": task,
            "n": n,
            "queue": cols.get("queue", "default"),
            "note": cols.get("note", "plain"),
            "state": state,
            "error": cols.get("error"),
            "schedule": cols.get("schedule"),
        },
    ).fetchall()
    return sorted(r[0] for r in rows)


def page_ids(html: str) -> list[int]:
    return [int(i) for i in re.findall(r'<td><a href="/jobs/(\d+)">', html)]


def act(client: TestClient, url: str, fields: dict[str, str] | None = None) -> str:
    """POST an action as a browser does: the form with its CSRF token, the confirmation
    page, then the confirmed form. Returns the result page."""
    token = TOKEN.search(client.get("/jobs").text)
    assert token, "no CSRF token on the jobs page"
    form = {**(fields or {}), "csrf_token": token.group(1)}
    first = client.post(url, data=form)
    assert first.status_code == 200, first.text
    assert "Confirm" in first.text and 'name="confirmed" value="yes"' in first.text
    again = TOKEN.search(first.text)
    assert again
    done = client.post(url, data={**form, "csrf_token": again.group(1), "confirmed": "yes"})
    assert done.status_code == 200, done.text
    return done.text


def test_filters_and_search(client: TestClient, sql: psycopg.Connection) -> None:
    mail = add_jobs(sql, "flt.mail", 3, queue="mail", note="invoice-7731")
    dead = add_jobs(sql, "flt.report", 2, state="dead", error="KeyError: 'customer_9981'")
    cron = add_jobs(sql, "flt.cron", 2, schedule="flt-nightly")

    assert page_ids(client.get("/jobs?task=flt.mail").text) == mail[::-1]
    assert page_ids(client.get("/jobs?queue=mail&task=flt.mail").text) == mail[::-1]
    assert page_ids(client.get("/jobs?state=dead&task=flt.report").text) == dead[::-1]
    assert page_ids(client.get("/jobs?task=flt.report&state=pending").text) == []
    assert page_ids(client.get("/jobs?schedule=flt-nightly").text) == cron[::-1]
    # search: in the arguments' JSON text and in the last error, case-insensitive
    assert page_ids(client.get("/jobs?q=INVOICE-7731").text) == mail[::-1]
    assert page_ids(client.get("/jobs?q=customer_9981").text) == dead[::-1]
    # time range on the creation time: ISO 8601 or a duration ago
    assert page_ids(client.get("/jobs?task=flt.mail&since=1h").text) == mail[::-1]
    assert page_ids(client.get("/jobs?task=flt.mail&until=2000-01-01").text) == []
    assert page_ids(client.get("/jobs?task=flt.mail&since=2000-01-01T00:00:00Z").text)


def test_keyset_pages_of_fifty(client: TestClient, sql: psycopg.Connection) -> None:
    ids = add_jobs(sql, "page.task", 120)
    seen: list[int] = []
    url: str | None = "/jobs?task=page.task"
    pages = 0
    while url:
        html = client.get(url).text
        got = page_ids(html)
        assert len(got) <= 50
        seen += got
        pages += 1
        found = re.search(r'<a rel="next" href="([^"]+)"', html)
        url = found.group(1).replace("&amp;", "&") if found else None
    assert pages == 3
    assert seen == ids[::-1]  # every job once, newest first
    second = client.get(f"/jobs?task=page.task&before={ids[-50]}").text
    assert page_ids(second) == ids[::-1][50:100]


def _follow(client: TestClient, url: str | None) -> tuple[list[int], int, str]:
    """Every job id listed from ``url`` on, following the pages' next links."""
    seen: list[int] = []
    pages, html = 0, ""
    while url:
        html = client.get(url).text
        seen += page_ids(html)
        pages += 1
        found = re.search(r'<a rel="next" href="([^"]+)"', html)
        url = found.group(1).replace("&amp;", "&") if found else None
    return seen, pages, html


def test_keyset_pages_within_a_time_window(client: TestClient, sql: psycopg.Connection) -> None:
    ids = add_jobs(sql, "window.task", 120)
    seen, pages, _ = _follow(client, "/jobs?task=window.task&since=1h")
    assert pages == 3 and seen == ids[::-1]
    seen, _, _ = _follow(client, "/jobs?task=window.task&since=2000-01-01&until=2100-01-01")
    assert seen == ids[::-1]


def test_a_search_reads_a_bounded_number_of_jobs_per_page(
    client: TestClient, sql: psycopg.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    from scheduler.web import job_pages

    monkeypatch.setattr(job_pages, "SEARCH_SCAN", 10)
    hit = add_jobs(sql, "scan.task", 1, note="needle-5521")
    add_jobs(sql, "scan.task", 25)  # newer jobs without the word
    first = client.get("/jobs?task=scan.task&q=needle-5521").text
    assert page_ids(first) == [] and "look at older jobs" in first
    seen, pages, last = _follow(client, "/jobs?task=scan.task&q=needle-5521")
    assert seen == hit and pages == 3  # 10 + 10 + the rest, which holds it
    assert "look at older jobs" not in last
    seen, _, _ = _follow(client, "/jobs?task=scan.task&q=needle-5521&since=1h")
    assert seen == hit
    # a window that holds none of the newest jobs is read the same way
    sql.execute("UPDATE scheduler.jobs SET created_at = now() - interval '3 days' WHERE id = %s",
                (hit[0],))  # fmt: skip
    seen, pages, _ = _follow(client, "/jobs?task=scan.task&until=2d")
    assert seen == hit and pages == 3


def test_job_detail_shows_attempts_with_traceback(
    client: TestClient, sql: psycopg.Connection
) -> None:
    (job,) = add_jobs(sql, "detail.task", 1, state="dead", error="ValueError: boom")
    sql.execute(
        "UPDATE scheduler.jobs SET args = %s, result = %s, first_run_at = "
        "'2025-01-01T00:00:00Z' WHERE id = %s",
        ('{"to": "a@example.com", "nested": {"k": [1, 2]}}', '{"sent": 3}', job),
    )
    sql.execute(
        """
        INSERT INTO scheduler.job_runs (job_id, attempt, worker_id, started_at, finished_at,
                                        outcome, error, traceback)
        VALUES (%(id)s, 1, 'w1', '2025-01-01T00:00:02.5Z', '2025-01-01T00:00:03Z', 'failed',
                'ValueError: first', 'Traceback (most recent call last):\n  File "a.py"'),
               (%(id)s, 2, 'w2', '2025-01-01T00:01:00Z', '2025-01-01T00:01:01Z', 'failed',
                'ValueError: boom', 'Traceback (most recent call last):\n  File "mail.py", line 42')
        """,
        {"id": job},
    )
    page = client.get(f"/jobs/{job}")
    assert page.status_code == 200
    html = page.text
    assert "attempt 1" in html and "attempt 2" in html
    assert "File &#34;mail.py&#34;, line 42" in html or 'File "mail.py", line 42' in html
    assert "ValueError: boom" in html
    assert "&#34;nested&#34;: {" in html or '"nested": {' in html  # pretty-printed arguments
    assert "&#34;sent&#34;: 3" in html or '"sent": 3' in html  # the result
    # lateness: the first attempt started 2.5 s after the job was first due
    assert re.search(r"<dt>lateness</dt><dd>2\.5 s", html), html
    assert client.get("/jobs/999999999").status_code == 404


def test_retry_cancel_delete_one_job_records_events(
    client: TestClient, sql: psycopg.Connection
) -> None:
    (dead,) = add_jobs(sql, "act.one", 1, state="dead", error="boom")
    (pending,) = add_jobs(sql, "act.two", 1)

    assert "pending again" in act(client, f"/jobs/{dead}/retry", {"next": f"/jobs/{dead}"})
    assert sql.execute("SELECT state FROM scheduler.jobs WHERE id = %s", (dead,)).fetchone() == (
        "pending",
    )
    assert "is cancelled" in act(client, f"/jobs/{pending}/cancel")
    assert "is deleted" in act(client, f"/jobs/{pending}/delete")
    assert not sql.execute("SELECT 1 FROM scheduler.jobs WHERE id = %s", (pending,)).fetchone()
    events = sql.execute(
        "SELECT job_id, event, actor FROM scheduler.job_events WHERE job_id IN (%s, %s) "
        "ORDER BY id",
        (dead, pending),
    ).fetchall()
    assert events == [
        (dead, "retried", "dashboard:local"),
        (pending, "deleted", "dashboard:local"),
    ]  # the cancelled event went with the deleted job; its 'deleted' event stays
    html = client.get(f"/jobs/{dead}").text
    assert "retried" in html and "dashboard:local" in html
    # an action that cannot apply is a message, not an error
    assert "was not retried" in act(client, f"/jobs/{dead}/retry")


def test_bulk_actions_take_everything_matching(client: TestClient, sql: psycopg.Connection) -> None:
    dead = add_jobs(sql, "bulk.task", 7, state="dead", error="bulk failure")
    other = add_jobs(sql, "bulk.other", 2, state="dead", error="bulk failure")
    token = TOKEN.search(client.get("/jobs").text)
    assert token
    confirm = client.post(
        "/jobs/bulk/retry",
        data={"state": "dead", "task": "bulk.task", "csrf_token": token.group(1)},
    )
    assert "Retry 7 job(s), matching state = &#39;dead&#39;" in confirm.text or (
        "Retry 7 job(s)" in confirm.text
    )
    assert "7 of 7 matching job(s) retried" in act(
        client, "/jobs/bulk/retry", {"state": "dead", "task": "bulk.task"}
    )
    states = dict(
        sql.execute(
            "SELECT task, array_agg(DISTINCT state) FROM scheduler.jobs "
            "WHERE task IN ('bulk.task', 'bulk.other') GROUP BY task"
        ).fetchall()
    )
    assert states == {"bulk.task": ["pending"], "bulk.other": ["dead"]}
    assert "7 of 7 matching job(s) cancelled" in act(
        client, "/jobs/bulk/cancel", {"task": "bulk.task"}
    )
    assert "9 of 9 matching job(s) deleted" in act(
        client, "/jobs/bulk/delete", {"q": "bulk failure"}
    )
    assert not sql.execute(
        "SELECT 1 FROM scheduler.jobs WHERE id = ANY(%s)", (dead + other,)
    ).fetchone()
    actors = sql.execute(
        "SELECT event, count(*), min(actor) FROM scheduler.job_events "
        "WHERE job_id = ANY(%s) GROUP BY event ORDER BY event",
        (dead + other,),
    ).fetchall()
    assert actors == [("deleted", 9, "dashboard:local")]


def test_job_detail_shows_its_headers_escaped(client: TestClient, sql: psycopg.Connection) -> None:
    (job,) = add_jobs(sql, "hdr.task", 1)
    sql.execute("""UPDATE scheduler.jobs SET headers = '{"tenant": "<b>acme</b>",
                   "traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"}'
                   WHERE id = %s""", (job,))  # fmt: skip
    page = client.get(f"/jobs/{job}").text
    assert "tenant: &lt;b&gt;acme&lt;/b&gt;" in page and "<b>acme" not in page
    assert "traceparent: 00-4bf92f3577b34da6a3ce929d0e0e4736" in page


def test_dead_letters_page(client: TestClient, sql: psycopg.Connection) -> None:
    dead = add_jobs(sql, "dl.task", 55, state="dead", error="dead letter")
    html = client.get("/dead-letters?task=dl.task").text
    assert page_ids(html) == dead[::-1][:50]  # most recently dead first
    found = re.search(r'<a rel="next" href="([^"]+)"', html)
    assert found
    rest = client.get(found.group(1).replace("&amp;", "&")).text
    assert page_ids(rest) == dead[::-1][50:]


@pytest.mark.parametrize(
    ("query", "parameter"),
    [
        ("state=exploded", "state"),
        ("queue=a%00b", "queue"),
        ("task=" + "t" * 5000, "task"),
        ("since=not-a-time", "since"),
        ("until=9999999999d", "until"),
        ("before=-3", "before"),
        ("before=99999999999999999999999", "before"),
        ("q=%ED%A0%80%00", "q"),
        ("schedule=bad%20name", "schedule"),
        ("state=dead&state=pending", "state"),
    ],
)
def test_hostile_query_parameters_are_named(client: TestClient, query: str, parameter: str) -> None:
    response = client.get(f"/jobs?{query}")
    assert response.status_code == 400, response.text[:500]
    assert f"&#39;{parameter}&#39;" in response.text or f"'{parameter}'" in response.text
    assert "Traceback" not in response.text


def test_hostile_paths_and_forms(client: TestClient) -> None:
    assert client.get("/jobs/99999999999999999999999").status_code == 400
    assert client.get("/dead-letters?before_at=2025-01-01").status_code == 400
    token = TOKEN.search(client.get("/jobs").text)
    assert token
    bad = client.post("/jobs/bulk/retry", data={"task": "x\x00y", "csrf_token": token.group(1)})
    assert bad.status_code == 400 and "task" in bad.text
    assert client.post("/jobs/bulk/explode", data={}).status_code == 404
