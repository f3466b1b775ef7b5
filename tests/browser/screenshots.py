"""Screenshots of the dashboard's pages for docs/dashboard.md::

    python -m tests.browser.screenshots docs/img

Starts what the browser tests start (tests/browser/stack.py: an embedded PostgreSQL, or the
server of ``SCHEDULER_TEST_DSN``; two real ``scheduler run`` replicas, one after the other, so
the leader history has a failover; the real ``scheduler dashboard``), fills realistic data
(a schedule that fired every 2 seconds for a while, a paused one, receipts, failed invoice
charges, jobs due later), and saves one 1280x800 PNG per page in OUTDIR as ``dashboard-<page>.png``.
Takes about a minute. Needs Debian's chromium and chromium-driver.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
from psycopg.conninfo import make_conninfo
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver

from scheduler import embedded, schedule_at
from scheduler.schedule_control import pause_schedule
from scheduler.store import Store
from tests.browser import demo_tasks, stack

DATABASE = "scheduler_dashboard_screenshots"
SCHEDULES = (
    stack.SCHEDULES
    + """\
  - name: sync_inventory
    cron: "*/2 * * * * *"
    task: reports.build
    args: {report: inventory}
    queue: default
  - name: month_end_close
    cron: "0 18 28-31 * *"
    task: reports.build
    args: {report: month-end}
    timezone: Europe/London
    misfire_policy: run_once
    overlap_policy: skip
    alert_after_s: 3600
"""
)


def _database(server_url: str) -> str:
    with psycopg.connect(server_url, autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{DATABASE}" WITH (FORCE)')
        admin.execute(f'CREATE DATABASE "{DATABASE}"')
    url = make_conninfo(server_url, dbname=DATABASE)

    async def migrate() -> None:
        async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
            await Store("scheduler").migrate(conn)

    asyncio.run(migrate())
    return url


def _more_data(url: str) -> None:
    """Beyond :func:`stack.seed`: jobs due later, a paused schedule, the ``sync_inventory``
    schedule paused once it has run 8 times (so the jobs list shows more than its runs)."""
    now = datetime.now(UTC)
    with psycopg.connect(url, autocommit=True) as conn:
        stack.wait_for(
            lambda: conn.execute(
                "SELECT count(*) >= 8 FROM scheduler.jobs "
                "WHERE schedule_name = 'sync_inventory' AND state = 'succeeded'"
            ).fetchone()[0],
            40,
            "sync_inventory's runs",
        )
        pause_schedule("sync_inventory", connection=conn)
        pause_schedule("nightly_cleanup", connection=conn)
        for hours in (2, 6, 30):
            schedule_at(demo_tasks.build_report, now + timedelta(hours=hours), connection=conn,
                        args={"report": f"regional-{hours}h"})  # fmt: skip


def _shoot(
    driver: WebDriver, url: str, path: Path, prepare: Callable[[WebDriver], None] | None = None
) -> None:
    driver.get(url)
    if prepare is not None:
        prepare(driver)
    driver.save_screenshot(str(path))
    print(f"{path} ({path.stat().st_size // 1024} KB)")


def _before_spring_dst() -> str:
    """Two weeks before next year's last Sunday of March (Europe's switch to summer time)."""
    year = datetime.now(UTC).year + 1
    last_sunday = max(
        datetime(year, 3, day) for day in range(25, 32) if datetime(year, 3, day).weekday() == 6
    )
    return (last_sunday - timedelta(days=14)).strftime("%Y-%m-%dT00:00")


def _open_traceback(driver: WebDriver) -> None:
    driver.find_element(By.CSS_SELECTOR, ".timeline details summary").click()
    # the "Attempts" heading at the top of the screen
    driver.execute_script(
        "document.querySelector('.timeline').previousElementSibling.scrollIntoView()"
    )


def _to_confirmation(job_id: int) -> Callable[[WebDriver], None]:
    def prepare(driver: WebDriver) -> None:
        button = f"form[action$='/jobs/{job_id}/retry'] button"
        driver.find_element(By.CSS_SELECTOR, button).click()
        stack.wait_for(lambda: "Confirm" in driver.title, 10, "the confirmation page")

    return prepare


def shoot_all(server_url: str, out: Path, workdir: Path) -> None:
    url = _database(server_url)
    env = stack.stack_env(url, workdir)
    first = stack.start_replica(env, workdir, SCHEDULES)
    second = None
    dashboard = None
    try:
        with psycopg.connect(url, autocommit=True) as db:

            def leader() -> str | None:
                row = db.execute("SELECT holder FROM scheduler.leader").fetchone()
                return row[0] if row else None

            stack.wait_for(leader, 30, "a leader elected")
            _more_data(url)
            seeded = stack.seed(url, receipts=8, invoices=3)
            # a failover for the leader history: a second replica takes over from the first
            first_leader = leader()
            second = stack.start_replica(env, workdir, SCHEDULES, name="replica2")
            first.stop()
            stack.wait_for(
                lambda: leader() not in (None, first_leader), 30, "the second replica leading"
            )
        dashboard = stack.Dashboard(env, workdir)
        driver = stack.new_driver()
        try:
            stack.use_credentials(driver, stack.ADMIN)
            base = dashboard.url
            failed = seeded.invoices[0]
            pages = [
                ("overview", "/", None),
                ("jobs", "/jobs", None),
                ("job-failed", f"/jobs/{failed}", _open_traceback),
                ("schedules", "/schedules", None),
                # the fire times around the spring DST change in Berlin (CET -> CEST)
                ("schedule", f"/schedules/weekly_report?after={_before_spring_dst()}", None),
                ("dead-letters", "/dead-letters", None),
                ("replicas", "/replicas", None),
                ("confirm", f"/jobs/{seeded.invoices[1]}", _to_confirmation(seeded.invoices[1])),
            ]
            out.mkdir(parents=True, exist_ok=True)
            for name, path, prepare in pages:
                _shoot(driver, base + path, out / f"dashboard-{name}.png", prepare)
        finally:
            driver.quit()
    except BaseException:
        for replica in (first, second, dashboard and dashboard.proc):
            if replica is not None:
                print(f"--- {replica.log_path}\n{replica.output()[-3000:]}", file=sys.stderr)
        raise
    finally:
        if dashboard is not None:
            dashboard.stop()
        for replica in (first, second):
            if replica is not None:
                replica.kill()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.browser.screenshots")
    parser.add_argument("outdir", type=Path, help="folder for the dashboard-*.png files")
    args = parser.parse_args(argv)
    why = stack.chromium_missing()
    if why is not None:
        print(why, file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="dashboard-screenshots-") as tmp:
        workdir = Path(tmp)
        dsn = os.environ.get("SCHEDULER_TEST_DSN")
        server_url = dsn or embedded.start(workdir / "pg")
        try:
            shoot_all(server_url, args.outdir, workdir)
        finally:
            if not dsn:
                embedded.stop(workdir / "pg")
    return 0


if __name__ == "__main__":
    sys.exit(main())
