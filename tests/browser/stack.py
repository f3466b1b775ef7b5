"""What the dashboard's browser tests and screenshots run against, as plain functions:

- a real ``scheduler run`` replica (a subprocess) with :data:`SCHEDULES` and the tasks of
  :mod:`tests.browser.demo_tasks`;
- the dashboard served by the real ``scheduler dashboard --port <free port>`` command, with
  an acting user (:data:`ADMIN`) and a read-only one (:data:`VIEWER`) in basic auth;
- a little demo data (:func:`seed`): receipts that succeed, invoices whose charge failed
  with a traceback (dead after one attempt; a retry succeeds), a job due tomorrow;
- Debian's headless Chromium driven by Selenium through Debian's chromedriver
  (:func:`new_driver`; selenium-manager is never asked to download anything), with the
  basic-auth header set through DevTools (:func:`use_credentials`).

tests/browser/conftest.py wraps these in fixtures; tests/browser/screenshots.py uses them
directly.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.message import Message
from pathlib import Path
from typing import TypeVar

import psycopg
from selenium.webdriver.remote.webdriver import WebDriver

from scheduler import schedule_at
from tests import servers
from tests.acceptance.conftest import Replica
from tests.browser import demo_tasks

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
QUEUES = "default,mail,billing,reports"
T = TypeVar("T")
CSRF_SECRET = "browser-test-csrf-secret"  # SCHEDULER_DASHBOARD_SECRET: tests forge tokens


@dataclass(frozen=True)
class User:
    name: str
    password: str

    def authorization(self) -> str:
        """The ``Authorization`` header value (HTTP basic auth)."""
        raw = f"{self.name}:{self.password}".encode()
        return "Basic " + base64.b64encode(raw).decode()


ADMIN = User("alice", "alice-browser-pass")
VIEWER = User("victor", "victor-browser-pass")

SCHEDULES = """\
timezone: Europe/Berlin
imports: [tests.browser.demo_tasks]
schedules:
  - name: weekly_report
    cron: "0 9 * * 1"
    task: reports.build
    args: {report: weekly}
    overlap_policy: allow
  - name: nightly_cleanup
    cron: "30 2 * * *"
    task: reports.build
    args: {report: cleanup}
    timezone: America/New_York
"""


def chromium_missing() -> str | None:
    """Why the browser tests cannot run here (None when Chromium and its driver are there)."""
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not p.exists()]
    if missing:
        return (
            f"{' and '.join(missing)} missing: install Debian's chromium and chromium-driver "
            "(.ci/run does)"
        )
    return None


def stack_env(db_url: str, workdir: Path) -> dict[str, str]:
    """The environment of the replica and the dashboard processes."""
    state = workdir / "demo-state"
    state.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("SCHEDULER_")}
    env.update(
        SCHEDULER_DATABASE_URL=db_url,
        SCHEDULER_EMBEDDED_DIR=str(workdir / "embedded"),
        SCHEDULER_LOG_FORMAT="json",
        SCHEDULER_LEADER_RETRY_S="0.2",
        SCHEDULER_POLL_INTERVAL_S="0.5",
        SCHEDULER_QUEUES=QUEUES,
        SCHEDULER_DASHBOARD_USER=ADMIN.name,
        SCHEDULER_DASHBOARD_PASSWORD=ADMIN.password,
        SCHEDULER_DASHBOARD_READONLY_USER=VIEWER.name,
        SCHEDULER_DASHBOARD_READONLY_PASSWORD=VIEWER.password,
        SCHEDULER_DASHBOARD_SECRET=CSRF_SECRET,
        DASHBOARD_DEMO_STATE_DIR=str(state),
        PYTHONPATH=str(ROOT),
    )
    return env


def start_replica(
    env: dict[str, str], workdir: Path, schedules: str = SCHEDULES, name: str = "replica"
) -> Replica:
    """A ``scheduler run --config <schedules>`` subprocess (log: ``workdir/<name>.log``)."""
    config = workdir / "schedules.yaml"
    config.write_text(schedules)
    return Replica(["run", "--config", str(config)], env, workdir / f"{name}.log")


def wait_for(predicate: Callable[[], T], timeout: float, what: str, interval: float = 0.1) -> T:
    """Poll ``predicate`` until truthy; TimeoutError naming ``what`` after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"not within {timeout} s: {what}")
        time.sleep(interval)


def http(
    method: str, url: str, user: User | None = None, data: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, Message, str]:  # fmt: skip
    """One request without a browser: ``(status, headers, body)`` (no redirect followed;
    ``headers.get`` ignores case)."""

    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args: object, **kwargs: object) -> None:
            return None

    request = urllib.request.Request(url, data=data, method=method, headers=dict(headers or {}))
    if user is not None:
        request.add_header("Authorization", user.authorization())
    opener = urllib.request.build_opener(NoRedirect)
    try:
        with opener.open(request, timeout=10) as response:
            return response.status, response.headers, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.headers, error.read().decode()


class Dashboard:
    """The dashboard served by ``scheduler dashboard --port <free port>`` (a subprocess;
    log: ``workdir/dashboard.log``); :attr:`url` is its base URL (no trailing slash)."""

    def __init__(self, env: dict[str, str], workdir: Path):
        port = servers.free_port()
        self.url = f"http://127.0.0.1:{port}"
        self.proc = Replica(["dashboard", "--port", str(port)], env, workdir / "dashboard.log")
        try:
            wait_for(self._up, 30, f"the dashboard answering /healthz on {self.url}")
        except BaseException:
            self.proc.kill()
            raise

    def output(self) -> str:
        return self.proc.output()

    def _up(self) -> bool:
        if self.proc.proc.poll() is not None:
            raise RuntimeError(
                f"`scheduler dashboard` exited with {self.proc.proc.returncode}:\n"
                + self.output()[-3000:]
            )
        try:
            return http("GET", self.url + "/healthz")[0] == 200
        except OSError:
            return False

    def stop(self) -> None:
        """SIGTERM; SIGKILL when it has not exited within 10 s."""
        try:
            self.proc.stop(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


@dataclass
class Seed:
    """Ids of the demo jobs :func:`seed` enqueued."""

    receipts: list[int]
    invoices: list[int]
    tomorrow: int


def seed(db_url: str, receipts: int = 3, invoices: int = 2) -> Seed:
    """Enqueue the demo jobs (receipts that succeed, invoices whose charge fails once, a
    report due tomorrow) and wait up to 30 s until the replica has run every due one."""
    with psycopg.connect(db_url, autocommit=True) as conn:
        receipt_ids = [
            schedule_at(demo_tasks.send_receipt, None, connection=conn,
                        args={"order_id": 5001 + i, "email": f"customer{i + 1}@example.com"})
            for i in range(receipts)
        ]  # fmt: skip
        invoice_ids = [
            schedule_at(demo_tasks.charge_invoice, None, connection=conn,
                        args={"invoice_id": 1042 + i, "amount_cents": 4999 + 1000 * i})
            for i in range(invoices)
        ]  # fmt: skip
        tomorrow = schedule_at(
            demo_tasks.build_report, datetime.now(UTC) + timedelta(days=1),
            args={"report": "quarterly"}, connection=conn,
        )  # fmt: skip
        ids = receipt_ids + invoice_ids

        def settled() -> bool:
            rows = conn.execute(
                "SELECT count(*) FROM scheduler.jobs WHERE id = ANY(%s) "
                "AND state IN ('succeeded', 'dead')",
                [ids],
            ).fetchone()
            return rows is not None and rows[0] == len(ids)

        wait_for(settled, 30, "the replica running the seeded jobs")
    return Seed(receipt_ids, invoice_ids, tomorrow)


def new_driver() -> WebDriver:
    """Debian's headless Chromium (1280x800) through Debian's chromedriver, with the
    DevTools network domain on (for :func:`use_credentials`) and the network events in the
    ``performance`` log (for :func:`statuses`)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    options = Options()
    options.binary_location = str(CHROMIUM)
    for argument in (
        "--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,800",
        "--disable-gpu", "--disable-extensions", "--no-first-run", "--hide-scrollbars",
        "--force-device-scale-factor=1", "--lang=en-US",
    ):  # fmt: skip
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"performance": "ALL"})  # responses' status
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    driver.set_page_load_timeout(30)
    driver.execute_cdp_cmd("Network.enable", {})
    # --window-size is the window's: the page gets 1280x800 only this way
    driver.execute_cdp_cmd(
        "Emulation.setDeviceMetricsOverride",
        {"width": 1280, "height": 800, "deviceScaleFactor": 1, "mobile": False},
    )
    return driver


def use_credentials(driver: WebDriver, user: User | None) -> None:
    """Send ``user``'s basic-auth header with every request of ``driver`` from now on
    (None: no credentials)."""
    headers = {"Authorization": user.authorization()} if user else {}
    driver.execute_cdp_cmd("Network.setExtraHTTPHeaders", {"headers": headers})


def csrf_token_for(nonce: str, user: User) -> str:
    """The CSRF token the dashboard expects from ``user`` holding the cookie ``nonce``
    (scheduler.web.security: HMAC-SHA256 of the nonce and the user under the secret)."""
    message = f"{nonce}\x00{user.name}".encode()
    return hmac.new(CSRF_SECRET.encode(), message, hashlib.sha256).hexdigest()


def statuses(driver: WebDriver) -> dict[str, int]:
    """URL -> HTTP status of the responses ``driver`` received since the last call (read
    from, and emptying, its ``performance`` log)."""
    found = {}
    for entry in driver.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message.get("method") == "Network.responseReceived":
            response = message["params"]["response"]
            found[response["url"]] = int(response["status"])
    return found
