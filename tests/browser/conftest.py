"""Fixtures of the dashboard's browser tests: one stack per test module (a migrated database,
a real ``scheduler run`` replica, the real ``scheduler dashboard`` process, demo data) and
one headless Chromium per module (see :mod:`tests.browser.stack`).

The browser tests run on one PostgreSQL major only (the embedded 18, or the server of
``SCHEDULER_TEST_DSN``): the items of the other majors are deselected, to save CI time. They
are skipped when Chromium or chromedriver is missing, except in CI (``CI=true``), where that
fails.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg.conninfo import make_conninfo
from selenium.webdriver.remote.webdriver import WebDriver

from tests import servers
from tests.browser import stack

BROWSER_DIR = Path(__file__).resolve().parent
BROWSER_MAJOR = "18"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Deselect the browser tests parametrized on another PostgreSQL major than 18."""
    keep, drop = [], []
    for item in items:
        callspec = getattr(item, "callspec", None)
        major = callspec.params.get("pg_server_url") if callspec else None
        under = BROWSER_DIR in Path(str(item.path)).resolve().parents
        (drop if under and major not in (None, "dsn", BROWSER_MAJOR) else keep).append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep


@pytest.fixture(scope="module")
def chromium_available() -> None:
    why = stack.chromium_missing()
    if why is not None:
        if servers.in_ci():
            pytest.fail(why)
        pytest.skip(why)


@pytest.fixture(scope="module")
def browser_db_url(pg_server_url: str, template_db: str) -> Iterator[str]:
    """A fresh migrated database for the module's stack."""
    name = f"scheduler_browser_{os.getpid()}"
    with psycopg.connect(pg_server_url, autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template_db}"')
    yield make_conninfo(pg_server_url, dbname=name)
    with psycopg.connect(pg_server_url, autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="module")
def bdb(browser_db_url: str) -> Iterator[psycopg.Connection]:
    """An autocommit connection to the stack's database, for setup and assertions."""
    with psycopg.connect(browser_db_url, autocommit=True) as conn:
        yield conn


@pytest.fixture(scope="module")
def browser_stack(
    chromium_available: None, browser_db_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[stack.Dashboard, stack.Seed]]:
    """The replica and the dashboard running, the demo data seeded and run."""
    workdir = tmp_path_factory.mktemp("browser")
    env = stack.stack_env(browser_db_url, workdir)
    replica = stack.start_replica(env, workdir)
    dashboard = None
    try:
        dashboard = stack.Dashboard(env, workdir)
        seeded = stack.seed(browser_db_url)
        yield dashboard, seeded
    except BaseException:
        print("replica log:\n" + replica.output()[-4000:])
        if dashboard is not None:
            print("dashboard log:\n" + dashboard.output()[-4000:])
        raise
    finally:
        if dashboard is not None:
            dashboard.stop()
        replica.kill()


@pytest.fixture(scope="module")
def dashboard(browser_stack: tuple[stack.Dashboard, stack.Seed]) -> stack.Dashboard:
    return browser_stack[0]


@pytest.fixture(scope="module")
def seeded(browser_stack: tuple[stack.Dashboard, stack.Seed]) -> stack.Seed:
    return browser_stack[1]


@pytest.fixture(scope="module")
def driver(chromium_available: None) -> Iterator[WebDriver]:
    """One headless Chromium for the module."""
    d = stack.new_driver()
    try:
        yield d
    finally:
        d.quit()


@pytest.fixture
def browser(driver: WebDriver, dashboard: stack.Dashboard) -> WebDriver:
    """The module's Chromium logged in as the acting user (the default of every test)."""
    stack.use_credentials(driver, stack.ADMIN)
    return driver
