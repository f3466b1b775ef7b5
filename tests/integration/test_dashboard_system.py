"""The dashboard's system pages against a real PostgreSQL: the overview (queue depth by state,
charts, oldest due job, leader, replicas) and its live refresh over server-sent events; a
schedule's page (cron in words, next fire times with their UTC offsets across a DST change,
lateness chart, skipped fire times, incidents); the replicas page with the leader history;
the actions on schedules and queues, recorded in job_events with the actor; hostile path,
query and form values (a 400 or 404 page naming the input, never a traceback).

One database and one app per module (module-scoped fixtures): each test works on its own
queue and schedule names so the others' rows do not change its results.
"""

from __future__ import annotations

import html
import re
from collections.abc import Iterator
from datetime import UTC, datetime

import psycopg
import pytest
from psycopg.conninfo import make_conninfo
from starlette.testclient import TestClient

from scheduler import schedule_operations
from scheduler.cron import Cron
from scheduler.settings import Settings
from scheduler.web import create_app, overview

TOKEN = re.compile(r'name="csrf_token" value="([0-9a-f]{64})"')
ACTOR = "dashboard:local"


@pytest.fixture(scope="module")
def dash_url(pg_server_url: str, template_db: str) -> Iterator[str]:
    name = "scheduler_test_dashboard_system"
    with psycopg.connect(pg_server_url, autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template_db}"')
    yield make_conninfo(pg_server_url, dbname=name)
    with psycopg.connect(pg_server_url, autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="module")
def client(dash_url: str) -> Iterator[TestClient]:
    """The dashboard with no credential configured, seen from a loopback client (may act)."""
    app = create_app(Settings(), database_url=dash_url)
    with TestClient(app, client=("127.0.0.1", 40000), follow_redirects=False) as c:
        yield c


@pytest.fixture
def sql(dash_url: str) -> Iterator[psycopg.Connection]:
    with psycopg.connect(dash_url, autocommit=True) as conn:
        yield conn


def add_schedule(conn: psycopg.Connection, name: str, cron: str | None = "0 9 * * 1",
                 timezone: str = "UTC", every_s: float | None = None, **cols: object) -> None:  # fmt: skip
    columns = {"name": name, "cron": cron, "timezone": timezone, "every_s": every_s,
               "task": "report", "max_attempts": 3, "backoff_base_s": 1, "backoff_max_s": 60,
               "backoff_jitter": 0.1, "definition_hash": "h", "queue": f"q-{name}",
               "next_run_at": datetime(2030, 1, 1, tzinfo=UTC), **cols}  # fmt: skip
    names = ", ".join(columns)
    values = ", ".join(f"%({c})s" for c in columns)
    conn.execute(f"INSERT INTO scheduler.schedules ({names}) VALUES ({values})", columns)


def token(client: TestClient, path: str) -> str:
    """A CSRF token from a form of the page at ``path``."""
    page = client.get(path)
    assert page.status_code == 200, page.text
    found = TOKEN.search(page.text)
    assert found, f"no form with a CSRF token on {path}"
    return found.group(1)


def act(client: TestClient, path: str, form_page: str, **fields: str) -> str:
    """POST an action twice, as a browser does: the confirmation page, then confirmed. The
    location of the redirect that follows."""
    data = {"csrf_token": token(client, form_page), **fields}
    confirm = client.post(path, data=data)
    assert confirm.status_code == 200 and "Confirm" in confirm.text, confirm.text
    done = client.post(path, data={**data, "confirmed": "yes"})
    assert done.status_code == 303, done.text
    return done.headers["location"]


def queue_row(html: str, queue: str) -> str:
    found = re.search(
        rf"<tr[^>]*>\s*<td><a [^>]*>{re.escape(queue)}</a></td>.*?</tr>", html, re.DOTALL
    )
    assert found, f"no row for queue {queue} on the overview"
    return found.group(0)


def test_overview_shows_depth_charts_oldest_due_leader_and_replicas(client, sql):
    q = "ov-main"
    sql.execute(
        """
        INSERT INTO scheduler.jobs (task, queue, state, run_at, locked_by, lease_expires_at,
                                    finished_at)
        SELECT 't', %(q)s, s.state, s.run_at, s.locked_by, s.lease, s.finished
        FROM (VALUES
            ('pending', now() - interval '7 minutes', NULL, NULL, NULL),
            ('pending', now() - interval '1 minute', NULL, NULL, NULL),
            ('pending', now() - interval '2 minutes', NULL, NULL, NULL),
            ('pending', now() + interval '1 hour', NULL, NULL, NULL),
            ('pending', now() + interval '2 hours', NULL, NULL, NULL),
            ('running', now() - interval '1 minute', 'w1', now() + interval '1 minute', NULL),
            ('dead', now() - interval '1 hour', NULL, NULL, now() - interval '5 minutes'),
            ('dead', now() - interval '3 days', NULL, NULL, now() - interval '2 days')
        ) AS s(state, run_at, locked_by, lease, finished)
        """,
        {"q": q},
    )
    job = sql.execute("SELECT min(id) FROM scheduler.jobs WHERE queue = %s", [q]).fetchone()[0]
    sql.execute(
        """
        INSERT INTO scheduler.job_runs (job_id, attempt, started_at, finished_at, outcome)
        SELECT %(job)s, i, now() - interval '3 minutes', now() - interval '2 minutes',
               CASE WHEN i <= 5 THEN 'succeeded' ELSE 'failed' END
        FROM generate_series(1, 7) AS i
        """,
        {"job": job},
    )
    sql.execute(
        "INSERT INTO scheduler.leader (holder, term, elected_at, heartbeat_at) "
        "VALUES ('hostA:1:x', 7, now(), now()) ON CONFLICT (id) DO NOTHING"
    )
    sql.execute(
        "INSERT INTO scheduler.replicas (id, host, pid, version, queues, concurrency) "
        "VALUES ('hostA:1:x', 'hostA', 4242, '9.9.9', ARRAY[%s, 'ov-idle'], 8)",
        [q],
    )
    page = client.get("/")
    assert page.status_code == 200, page.text
    row = queue_row(page.text, q)
    cells = re.findall(r'<td class="num">(.*?)</td>', row, re.DOTALL)
    assert [re.sub("<[^>]+>", "", c).strip() for c in cells] == ["3", "2", "1", "1"]
    queue_row(page.text, "ov-idle")  # a queue a replica serves, without jobs
    assert "hostA:1:x" in page.text and "term 7" in page.text and "4242" in page.text
    assert re.search(r"7\.\d min waiting, queue <a [^>]*>ov-main</a>", page.text)
    assert page.text.count('<svg class="chart"') == 2
    assert "7 runs finished, 2 failed" in page.text
    assert "5 succeeded, 2 failed, 0 cancelled" in page.text  # a bar's tooltip
    assert 'sse-connect="/events"' in page.text and 'sse-swap="overview"' in page.text


def test_queue_pause_and_resume_are_confirmed_and_recorded(client, sql):
    q = "ov-pause/me"  # queue names may hold "/": the name travels in a form field
    sql.execute("INSERT INTO scheduler.jobs (task, queue) VALUES ('t', %s)", [q])
    where = act(client, "/actions/queue/pause", "/", queue=q)
    assert where.startswith("/?done=queue_paused")
    page = client.get(where)
    assert f"Queue {q!r} paused" in html.unescape(page.text)
    assert "<strong>paused</strong>" in queue_row(page.text, q)
    assert sql.execute(
        "SELECT paused_by FROM scheduler.queue_pauses WHERE queue = %s", [q]
    ).fetchone() == (ACTOR,)
    assert act(client, "/actions/queue/resume", "/", queue=q).startswith("/?done=queue_resumed")
    events = sql.execute(
        "SELECT event, actor FROM scheduler.job_events WHERE queue = %s ORDER BY id", [q]
    ).fetchall()
    assert events == [("queue_paused", ACTOR), ("queue_resumed", ACTOR)]
    assert not sql.execute("SELECT 1 FROM scheduler.queue_pauses WHERE queue = %s", [q]).fetchall()


def test_schedule_page_words_and_next_fire_times_across_dst(client, sql):
    add_schedule(sql, "paris-nightly", "30 2 * * *", "Europe/Paris")
    add_schedule(sql, "every-90", None, "UTC", every_s=90,
                 start_at=datetime(2026, 1, 1, tzinfo=UTC))  # fmt: skip
    add_schedule(sql, "mondays", "0 9 * * 1")
    listing = client.get("/schedules")
    assert "At 09:00, only on Monday" in listing.text and "Every 90 seconds" in listing.text
    page = client.get("/schedules/paris-nightly", params={"after": "2026-03-27T12:00"})
    assert page.status_code == 200, page.text
    assert "At 02:30" in page.text and "Europe/Paris" in page.text
    # the spring-forward night (last Sunday of March): 02:30 does not exist, it fires at the
    # jump (03:00 CEST), and the offsets change from +01:00 to +02:00
    expected = schedule_operations.preview(
        Cron("30 2 * * *", "Europe/Paris"), datetime(2026, 3, 27, 11, tzinfo=UTC), 5
    )
    table = page.text.split('class="data fire-times"')[1].split("</table>")[0]
    shown = re.findall(
        r"(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d) <span class=\"offset\">([+-]\d\d:\d\d)", table
    )
    assert shown == [
        (t.strftime("%Y-%m-%d %H:%M:%S"), t.strftime("%z")[:3] + ":" + t.strftime("%z")[3:])
        for t in expected
    ]
    assert shown[:3] == [
        ("2026-03-28 02:30:00", "+01:00"),
        ("2026-03-29 03:00:00", "+02:00"),
        ("2026-03-30 02:30:00", "+02:00"),
    ]
    assert "2026-03-29 01:00:00" in table  # its UTC column
    interval = client.get("/schedules/every-90", params={"after": "2026-01-01T00:00:00+00:00"})
    assert "Every 90 seconds" in interval.text and "2026-01-01 00:01:30" in interval.text


def test_schedule_page_lateness_chart_skipped_fire_times_and_incidents(client, sql):
    name = "late-one"
    add_schedule(sql, name, "*/5 * * * *", misfire_grace_s=60, alert_on_failures=3)
    for minutes_ago, late_s, outcome in (
        (20, 2, "succeeded"),
        (15, 300, "failed"),
        (10, 1, "succeeded"),
    ):
        job = sql.execute(
            """
            INSERT INTO scheduler.jobs (task, queue, schedule_name, scheduled_for, first_run_at,
                                        run_at, state, attempt, origin, finished_at)
            VALUES ('report', 'q', %(n)s, now() - make_interval(mins => %(m)s),
                    now() - make_interval(mins => %(m)s), now() - make_interval(mins => %(m)s),
                    %(state)s, 1, 'cron', now())
            RETURNING id
            """,
            {
                "n": name,
                "m": minutes_ago,
                "state": "succeeded" if outcome == "succeeded" else "dead",
            },
        ).fetchone()[0]
        sql.execute(
            """
            INSERT INTO scheduler.job_runs (job_id, attempt, started_at, finished_at, outcome)
            SELECT id, 1, first_run_at + make_interval(secs => %(late)s),
                   first_run_at + make_interval(secs => %(late)s + 1), %(outcome)s
            FROM scheduler.jobs WHERE id = %(job)s
            """,
            {"job": job, "late": late_s, "outcome": outcome},
        )
    sql.execute(
        "INSERT INTO scheduler.skipped_fire_times (schedule_name, first_fire_time, "
        "last_fire_time, fire_times, reason) VALUES (%s, now() - interval '3 hours', "
        "now() - interval '2 hours', 12, 'misfire')",
        [name],
    )
    sql.execute(
        "INSERT INTO scheduler.incidents (schedule_name, kind, opened_at, since, detail, "
        "failures, opened_term) VALUES (%s, 'failing', now(), now(), '3 failed runs in a row', 3, 1)",
        [name],
    )
    page = client.get(f"/schedules/{name}")
    assert page.status_code == 200, page.text
    chart = page.text.split("Start lateness per fire time")[0].rsplit("<svg", 1)[1]
    assert chart  # the lateness chart is there
    svg = page.text[page.text.index("<svg", page.text.index("Latest runs")) :]
    svg = svg[: svg.index("</svg>")]
    assert svg.count('class="bar-on-time"') == 2 and svg.count('class="bar-late"') == 1
    assert "started 300.000 s late, failed" in svg
    assert "misfire" in page.text and ">12<" in page.text
    assert "3 failed runs in a row" in page.text and "after 3 failed runs in a row" in page.text


def test_schedule_actions_are_confirmed_and_recorded_with_the_actor(client, sql):
    name = "acted-on"
    add_schedule(sql, name, "0 * * * *")
    path = f"/schedules/{name}"
    assert "done=schedule_paused" in act(client, f"{path}/pause", path)
    assert sql.execute(
        "SELECT paused_at IS NOT NULL FROM scheduler.schedules WHERE name = %s", [name]
    ).fetchone() == (True,)
    assert "done=schedule_resumed" in act(client, f"{path}/resume", path)
    where = act(client, f"{path}/trigger", path)
    assert "done=schedule_triggered" in where
    assert "Schedule 'acted-on' triggered." in html.unescape(client.get(where).text)
    where = act(client, f"{path}/backfill", path, start="2026-01-01T00:00:00+00:00",
                end="2026-01-01T02:30:00+00:00")  # fmt: skip
    assert "done=schedule_backfilled" in where and "enqueued=3" in where
    events = sql.execute(
        "SELECT event, actor FROM scheduler.job_events WHERE schedule_name = %s ORDER BY id",
        [name],
    ).fetchall()
    assert events == [
        ("schedule_paused", ACTOR),
        ("schedule_resumed", ACTOR),
        ("schedule_triggered", ACTOR),
        ("schedule_backfilled", ACTOR),
    ]
    origins = sql.execute(
        "SELECT origin, count(*) FROM scheduler.jobs WHERE schedule_name = %s GROUP BY 1 ORDER BY 1",
        [name],
    ).fetchall()
    assert origins == [("backfill", 3), ("trigger", 1)]
    page = client.get(path).text
    assert page.count(ACTOR) >= 4  # the actions table


def test_replicas_page_shows_replicas_leader_and_terms_with_gaps(client, sql):
    sql.execute(
        "INSERT INTO scheduler.replicas (id, host, pid, version, queues, concurrency) "
        "VALUES ('rhost:77:abc', 'rhost', 77, '1.2.3', ARRAY['default'], 4)"
    )
    sql.execute(
        """
        INSERT INTO scheduler.leader_terms (term, holder, elected_at, previous_holder,
                                            previous_heartbeat_at)
        VALUES (101, 'old-leader', now() - interval '1 hour', NULL, NULL),
               (102, 'rhost:77:abc', now() - interval '10 minutes', 'old-leader',
                now() - interval '10 minutes 4 seconds')
        """
    )
    page = client.get("/replicas")
    assert page.status_code == 200, page.text
    assert "rhost" in page.text and "1.2.3" in page.text and "rhost:77:abc" in page.text
    term = re.search(r"<tr><td class=\"num\">102</td>.*?</tr>", page.text, re.DOTALL)
    assert term and "old-leader" in term.group(0) and "4.0 s" in term.group(0)


def test_events_stream_sends_the_overview(client):
    with client.stream("GET", "/events") as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        received = ""
        for chunk in response.iter_text():
            received += chunk
            if "event: overview" in received:
                break
    assert "data: " in received and "Runs finished per minute" in received


def test_events_stream_ends_by_itself(client, monkeypatch):
    """A forgotten tab: the stream stops after STREAM_MAX_S with a note and a close event."""
    monkeypatch.setattr(overview, "STREAM_MAX_S", 0.0)
    body = client.get("/events").text
    assert "Live refresh stopped" in body and body.rstrip().endswith("event: close\ndata:")


@pytest.mark.parametrize(
    ("method", "path", "data", "status", "named"),
    [
        ("GET", "/schedules/bad%00name", None, 400, "schedule name in the URL"),
        ("GET", "/schedules/" + "x" * 300, None, 400, "schedule name in the URL"),
        ("GET", "/schedules/no-such-schedule", None, 404, "no-such-schedule"),
        ("GET", "/schedules/mondays?after=next%20tuesday", None, 400, "after"),
        ("GET", "/schedules?after=a%20b", None, 400, "after"),
        ("GET", "/schedules?after=" + "y" * 300, None, 400, "after"),
        ("POST", "/actions/queue/pause", {"queue": "a b"}, 400, "queue"),
        ("POST", "/actions/queue/pause", {"queue": "q" * 500}, 400, "queue"),
        ("POST", "/actions/queue/pause", {"queue": "nul\x00"}, 400, "queue"),
        ("POST", "/actions/queue/pause", {}, 400, "queue"),
        ("POST", "/schedules/mondays/backfill", {"start": "yesterday", "end": "x"}, 400, "start"),
        (
            "POST",
            "/schedules/mondays/backfill",
            {"start": "2026-02-01T00:00Z", "end": "2026-01-01T00:00Z"},
            400,
            "end",
        ),
        (
            "POST",
            "/schedules/no-such/backfill",
            {"start": "2026-01-01T00:00Z", "end": "2026-01-02T00:00Z"},
            404,
            "no-such",
        ),
        ("POST", "/schedules/no-such/trigger", {"confirmed": "yes"}, 404, "no-such"),
    ],
)
def test_hostile_input_gets_a_page_naming_it(client, sql, method, path, data, status, named):
    if not sql.execute("SELECT 1 FROM scheduler.schedules WHERE name = 'mondays'").fetchall():
        add_schedule(sql, "mondays", "0 9 * * 1")
    if method == "POST":
        data = {"csrf_token": token(client, "/schedules/mondays"), **data}
        response = client.post(path, data=data)
    else:
        response = client.get(path)
    assert response.status_code == status, response.text
    assert named in response.text and "Traceback" not in response.text
