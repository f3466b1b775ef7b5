"""Who may read and act on the dashboard, against a real PostgreSQL: basic auth and bearer
tokens (401 without), the read-only role and the read-only dashboard (403 on actions), CSRF
(403 without a valid token), the confirmation step, the host app's own authentication when
mounted, the refusal to listen on a non-loopback address without credentials, and no secret
in any page. Also the dashboard served inside a replica (SCHEDULER_DASHBOARD_PORT).

One database per module; every app of the module shares it.
"""

from __future__ import annotations

import asyncio
import base64
import re
import urllib.request
from collections.abc import Iterator

import psycopg
import pytest
from psycopg.conninfo import make_conninfo
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.routing import Mount
from starlette.testclient import TestClient

from scheduler.cli.main import main
from scheduler.errors import SettingsError
from scheduler.settings import Settings, load_settings
from scheduler.web import create_app
from scheduler.web.security import require_safe_listen
from tests.conftest import running_replica, wait_until_async

TOKEN = re.compile(r'name="csrf_token" value="([0-9a-f]{64})"')
LOCAL = ("127.0.0.1", 40000)
ADMIN = ("admin", "adm1n-pa55-word")
READER = ("reader", "r3ader-pa55-word")
BEARER = "tok-0123456789-admin-bearer"
READ_BEARER = "tok-9876543210-reader-bearer"
SECRET = "csrf-secret-do-not-show-5521"
DB_PASSWORD = "db-pa55word-never-shown-7730"
SECRETS = [ADMIN[1], READER[1], BEARER, READ_BEARER, SECRET, DB_PASSWORD]


def basic(user: str, password: str) -> dict[str, str]:
    raw = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {raw}"}


@pytest.fixture(scope="module")
def dash_url(pg_server_url: str, template_db: str) -> Iterator[str]:
    name = "scheduler_test_dashboard_security"
    with psycopg.connect(pg_server_url, autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template_db}"')
    # the test server trusts local connections: the password is never checked, only carried
    yield make_conninfo(pg_server_url, dbname=name, password=DB_PASSWORD)
    with psycopg.connect(pg_server_url, autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="module")
def settings() -> Settings:
    return Settings(
        dashboard_user=ADMIN[0],
        dashboard_password=ADMIN[1],
        dashboard_readonly_user=READER[0],
        dashboard_readonly_password=READER[1],
        dashboard_token=BEARER,
        dashboard_readonly_token=READ_BEARER,
        dashboard_secret=SECRET,
    )


@pytest.fixture(scope="module")
def client(dash_url: str, settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(settings, database_url=dash_url)) as c:
        yield c


@pytest.fixture(scope="module")
def dead_job(dash_url: str) -> int:
    with psycopg.connect(dash_url, autocommit=True) as conn:
        row = conn.execute(
            "INSERT INTO scheduler.jobs (task, state, last_error, finished_at) "
            "VALUES ('sec.task', 'dead', 'boom', now()) RETURNING id"
        ).fetchone()
    assert row
    return int(row[0])


def job_state(dash_url: str, job_id: int) -> tuple[str, int]:
    """The job's state and its number of events."""
    with psycopg.connect(dash_url, autocommit=True) as conn:
        row = conn.execute(
            "SELECT state, (SELECT count(*) FROM scheduler.job_events WHERE job_id = j.id) "
            "FROM scheduler.jobs AS j WHERE id = %s",
            (job_id,),
        ).fetchone()
    assert row
    return row[0], row[1]


def meta_token(html: str) -> str:
    found = re.search(r'<meta name="csrf-token" content="([0-9a-f]{64})">', html)
    assert found, "no CSRF meta tag"
    return found.group(1)


def token_of(client: TestClient, headers: dict[str, str], path: str = "/jobs") -> str:
    page = client.get(path, headers=headers)
    assert page.status_code == 200, page.text[:300]
    found = TOKEN.search(page.text)
    assert found, "no CSRF token on the page"
    return found.group(1)


def test_credentials_required(client: TestClient) -> None:
    for headers in ({}, basic(ADMIN[0], "wrong"), basic("nobody", ADMIN[1]),
                    {"Authorization": "Bearer nope"}, {"Authorization": "Basic !!!"}):  # fmt: skip
        response = client.get("/jobs", headers=headers)
        assert response.status_code == 401, headers
        assert response.headers["www-authenticate"].startswith("Basic ")
    assert client.get("/jobs", headers=basic(*ADMIN)).status_code == 200
    assert client.get("/jobs", headers=basic(*READER)).status_code == 200
    assert client.get("/jobs", headers={"Authorization": f"Bearer {BEARER}"}).status_code == 200
    # a probe and the assets need none
    assert client.get("/healthz").text == "ok"
    assert client.get("/static/dashboard.css").status_code == 200


def test_read_only_user_and_dashboard_refused_actions(
    client: TestClient, dash_url: str, settings: Settings, dead_job: int
) -> None:
    for headers in (basic(*READER), {"Authorization": f"Bearer {READ_BEARER}"}):
        page = client.get(f"/jobs/{dead_job}", headers=headers)
        assert page.status_code == 200
        assert "read-only" in page.text and "/retry" not in page.text  # no action buttons
        # with the user's own valid token (as htmx sends it, from the page's meta tag)
        form = {"csrf_token": meta_token(page.text), "confirmed": "yes"}
        refused = client.post(f"/jobs/{dead_job}/retry", data=form, headers=headers)
        assert refused.status_code == 403 and "actions are refused" in refused.text
    with TestClient(create_app(settings, database_url=dash_url, read_only=True)) as ro:
        page = ro.get("/jobs", headers=basic(*ADMIN))
        assert TOKEN.search(page.text) is None  # no form at all on a read-only dashboard
        form = {"csrf_token": meta_token(page.text), "confirmed": "yes"}
        refused = ro.post(f"/jobs/{dead_job}/retry", data=form, headers=basic(*ADMIN))
        assert refused.status_code == 403 and "actions are refused" in refused.text
    assert job_state(dash_url, dead_job) == ("dead", 0)


def test_csrf_and_confirmation(client: TestClient, dash_url: str, dead_job: int) -> None:
    admin = basic(*ADMIN)
    url = f"/jobs/{dead_job}/retry"
    assert client.post(url, data={"confirmed": "yes"}, headers=admin).status_code == 403
    bad = {"csrf_token": "f" * 64, "confirmed": "yes"}
    assert client.post(url, data=bad, headers=admin).status_code == 403
    # another user's token (same browser, same cookie) is refused: tokens are bound to users
    reader_token = meta_token(client.get("/jobs", headers=basic(*READER)).text)
    form = {"csrf_token": reader_token, "confirmed": "yes"}
    assert client.post(url, data=form, headers=admin).status_code == 403
    # a valid token without its cookie (another browser's form) is refused too
    token = token_of(client, admin)
    jar = dict(client.cookies)
    client.cookies.clear()
    try:
        form = {"csrf_token": token, "confirmed": "yes"}
        assert client.post(url, data=form, headers=admin).status_code == 403
    finally:
        client.cookies.clear()
        client.cookies.update(jar)
    assert job_state(dash_url, dead_job) == ("dead", 0)
    # with the token but without confirmed=yes: the confirmation page, nothing done
    confirm = client.post(url, data={"csrf_token": token}, headers=admin)
    assert confirm.status_code == 200
    assert f"Retry job {dead_job}." in confirm.text
    assert 'name="confirmed" value="yes"' in confirm.text
    assert job_state(dash_url, dead_job) == ("dead", 0)
    fresh = TOKEN.search(confirm.text)
    assert fresh
    done = client.post(url, data={"csrf_token": fresh.group(1), "confirmed": "yes"}, headers=admin)
    assert done.status_code == 200 and "pending again" in done.text
    assert job_state(dash_url, dead_job) == ("pending", 1)
    with psycopg.connect(dash_url) as conn:
        actor = conn.execute(
            "SELECT actor FROM scheduler.job_events WHERE job_id = %s", (dead_job,)
        ).fetchone()
    assert actor == ("dashboard:admin",)


def test_host_app_authentication_when_mounted(dash_url: str) -> None:
    def authenticate(request: Request) -> tuple[str, bool] | None:
        who = request.headers.get("x-user")
        return None if who is None else (who, who == "alice")

    dashboard = create_app(Settings(), database_url=dash_url, authenticate=authenticate)
    host = Starlette(routes=[Mount("/ops", app=dashboard)])
    with TestClient(host) as c:  # the host does not run the dashboard's lifespan: pool opened
        assert c.get("/ops/jobs").status_code == 401
        page = c.get("/ops/jobs", headers={"x-user": "alice"})
        assert page.status_code == 200
        assert 'href="/ops/dead-letters"' in page.text  # links under the mount point
        assert 'action="/ops/jobs/bulk/retry"' in page.text
        bob = c.get("/ops/jobs", headers={"x-user": "bob"})
        assert "read-only" in bob.text and "bulk/retry" not in bob.text


def test_refuses_non_loopback_without_credentials(
    client: TestClient, dash_url: str, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    bare = Settings()
    for host in ("127.0.0.1", "::1", "localhost", "127.0.0.5"):
        require_safe_listen(bare, host)
    for host in ("0.0.0.0", "::", "192.168.1.10", "example.com"):
        with pytest.raises(SettingsError, match="SCHEDULER_DASHBOARD_HOST.*without credentials"):
            require_safe_listen(bare, host)
        require_safe_listen(settings, host)  # credentials configured: allowed
    for name in [n for n in __import__("os").environ if n.startswith("SCHEDULER_DASHBOARD")]:
        monkeypatch.delenv(name)
    assert main(["dashboard", "--host", "0.0.0.0", "--port", "0"]) == 2
    # an app without credentials answers loopback clients only
    with TestClient(create_app(bare, database_url=dash_url)) as remote:  # client "testclient"
        assert remote.get("/jobs").status_code == 403
    with TestClient(create_app(bare, database_url=dash_url), client=LOCAL) as local:
        assert local.get("/jobs").status_code == 200
    # credentials go in pairs; a bad secret is never echoed
    monkeypatch.setenv("SCHEDULER_DASHBOARD_USER", "admin")
    with pytest.raises(SettingsError, match="SCHEDULER_DASHBOARD_PASSWORD"):
        load_settings()
    monkeypatch.setenv("SCHEDULER_DASHBOARD_PASSWORD", "hidden-\x01-" + DB_PASSWORD)
    with pytest.raises(SettingsError) as err:
        load_settings()
    assert "SCHEDULER_DASHBOARD_PASSWORD" in str(err.value.problems)
    assert DB_PASSWORD not in str(err.value.problems)


def test_no_secret_in_any_page(client: TestClient, dead_job: int) -> None:
    admin = basic(*ADMIN)
    token = token_of(client, admin)
    pages = [
        client.get(path, headers=admin)
        for path in (
            "/jobs",
            f"/jobs/{dead_job}",
            "/dead-letters",
            "/jobs?state=bad",
            "/jobs/999999999",
            "/nowhere",
            "/jobs?q=%00",
        )
    ]
    pages.append(client.post(f"/jobs/{dead_job}/cancel", data={"csrf_token": token}, headers=admin))
    pages.append(client.post(f"/jobs/{dead_job}/cancel", data={}, headers=admin))
    pages.append(client.get("/jobs"))
    assert {p.status_code for p in pages} == {200, 400, 401, 403, 404}
    for page in pages:
        for secret in SECRETS:
            assert secret not in page.text, (page.url, secret)
            assert secret not in str(page.headers)


def test_served_inside_a_replica(dash_url: str) -> None:
    settings = Settings(dashboard_port=0, dashboard_host="127.0.0.1")

    async def scenario() -> None:
        async with running_replica(dash_url, settings) as replica:
            await wait_until_async(lambda: replica.dashboard_port, timeout=10)
            base = f"http://127.0.0.1:{replica.dashboard_port}"
            health = await asyncio.to_thread(urllib.request.urlopen, base + "/healthz", None, 5)
            assert health.read() == b"ok"
            page = await asyncio.to_thread(urllib.request.urlopen, base + "/jobs", None, 5)
            assert b"<h1>Jobs</h1>" in page.read()
            port = replica.dashboard_port
        with pytest.raises(OSError):  # stopped with the replica
            await asyncio.to_thread(urllib.request.urlopen, f"http://127.0.0.1:{port}/", None, 2)

    asyncio.run(scenario())
