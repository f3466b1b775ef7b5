"""The dashboard in a real browser: Debian's headless Chromium (Selenium) against the real
``scheduler dashboard`` process, a real ``scheduler run`` replica and PostgreSQL
(tests/browser/conftest.py, tests/browser/stack.py).

Every wait is a condition with a timeout (WebDriverWait, reloading the page where the replica
has to act first). The tests share one stack and one Chromium, and run in file order; each one
works on its own jobs or schedule, and compares what the page shows with the database.
"""

from __future__ import annotations

from typing import Any

import psycopg
import pytest
from selenium.common.exceptions import WebDriverException
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support import expected_conditions as ec
from selenium.webdriver.support.ui import Select, WebDriverWait

from tests.browser import stack

PAGE_S = 10  # a page or a form answered
REPLICA_S = 30  # the replica ran a job


def wait(driver: WebDriver, timeout: float = PAGE_S) -> WebDriverWait:
    return WebDriverWait(driver, timeout, poll_frequency=0.1)


def loaded_anew(driver: WebDriver) -> bool:
    """The page marked by :func:`submit_and_wait` was replaced and the new one has loaded."""
    script = "return !window.__before_submit && document.readyState === 'complete'"
    return bool(driver.execute_script(script))


def job_rows(driver: WebDriver) -> list[dict[str, str]]:
    """The rows of the jobs table: id, state and task of each."""
    rows = []
    for tr in driver.find_elements(By.CSS_SELECTOR, "table.jobs tbody tr"):
        links = tr.find_elements(By.CSS_SELECTOR, "td:first-child a")
        if not links:  # "No job matches."
            continue
        cells = tr.find_elements(By.TAG_NAME, "td")
        rows.append({"id": links[0].text, "state": cells[1].text, "task": cells[3].text})
    return rows


def ids(db: psycopg.Connection, where: str, params: list[Any]) -> set[str]:
    rows = db.execute(f"SELECT id FROM scheduler.jobs WHERE {where}", params).fetchall()
    return {str(r[0]) for r in rows}


def submit_and_wait(driver: WebDriver, button: Any) -> None:
    """Click ``button`` and wait until the next page replaced this one (a mark on this
    page's ``window``: chromedriver's staleness checks can fail mid-navigation)."""
    driver.execute_script("window.__before_submit = true")
    button.click()
    # mid-navigation, a script may find no document: try again
    WebDriverWait(driver, PAGE_S, 0.1, ignored_exceptions=(WebDriverException,)).until(loaded_anew)


def confirm(driver: WebDriver, what: str) -> None:
    """On the confirmation page: check it says ``what``, then click "Yes"."""
    wait(driver).until(ec.text_to_be_present_in_element((By.TAG_NAME, "h1"), "Confirm"))
    assert what in driver.find_element(By.CSS_SELECTOR, ".confirm .what").text
    submit_and_wait(driver, driver.find_element(By.CSS_SELECTOR, ".confirm button[type=submit]"))


def job_state(driver: WebDriver) -> str:
    return driver.find_element(By.CSS_SELECTOR, "h1 .state").text


def reloaded_until(driver: WebDriver, url: str, predicate: Any, timeout: float) -> Any:
    """Load ``url`` again until ``predicate(driver)`` holds (the replica acts meanwhile)."""

    def check(d: WebDriver) -> Any:
        d.get(url)
        return predicate(d)

    return wait(driver, timeout).until(check)


def fetch_from_page(driver: WebDriver, method: str, path: str, fields: dict[str, str] | None = None,
                    headers: dict[str, str] | None = None) -> tuple[int, str]:  # fmt: skip
    """``fetch`` ``path`` from the current page (the browser's cookies and credentials; a
    POST's ``fields`` form-encoded, no CSRF token unless given): ``(status, body text)``."""
    script = """
        const [method, path, fields, headers, done] = arguments;
        const init = {method: method, headers: headers, redirect: 'manual'};
        if (fields !== null) init.body = new URLSearchParams(fields);
        fetch(path, init)
          .then(async r => done([r.status, await r.text()]))
          .catch(e => done([0, String(e)]));
    """
    driver.set_script_timeout(PAGE_S)
    status, body = driver.execute_async_script(script, method, path, fields, headers or {})
    return int(status), str(body)


def post_from_page(driver: WebDriver, path: str, fields: dict[str, str],
                   headers: dict[str, str] | None = None) -> tuple[int, str]:  # fmt: skip
    return fetch_from_page(driver, "POST", path, fields, headers)


def events_of(db: psycopg.Connection, job_id: int) -> list[tuple[str, str]]:
    return db.execute(
        "SELECT event, actor FROM scheduler.job_events WHERE job_id = %s ORDER BY id", [job_id]
    ).fetchall()


def test_filter_jobs_by_state_and_by_task(browser, dashboard, seeded, bdb):
    browser.get(dashboard.url + "/jobs")
    assert {r["id"] for r in job_rows(browser)} >= {str(i) for i in seeded.receipts}

    Select(browser.find_element(By.NAME, "state")).select_by_value("dead")
    submit_and_wait(browser, browser.find_element(By.CSS_SELECTOR, "form.filters button"))
    assert "state=dead" in browser.current_url
    rows = job_rows(browser)
    assert rows, "no dead job listed"
    assert {r["state"] for r in rows} == {"dead"}
    assert {r["id"] for r in rows} == ids(bdb, "state = 'dead'", [])

    Select(browser.find_element(By.NAME, "state")).select_by_value("")
    task = browser.find_element(By.NAME, "task")
    task.clear()
    task.send_keys("mail.send_receipt")
    submit_and_wait(browser, browser.find_element(By.CSS_SELECTOR, "form.filters button"))
    assert "task=mail.send_receipt" in browser.current_url
    rows = job_rows(browser)
    assert {r["task"] for r in rows} == {"mail.send_receipt"}
    assert {r["id"] for r in rows} == {str(i) for i in seeded.receipts}
    assert Select(browser.find_element(By.NAME, "state")).first_selected_option.text == "any"


def test_failed_job_shows_its_traceback(browser, dashboard, seeded):
    job_id = seeded.invoices[0]
    browser.get(dashboard.url + "/jobs?state=dead")
    link = browser.find_element(By.CSS_SELECTOR, f"table.jobs a[href$='/jobs/{job_id}']")
    submit_and_wait(browser, link)
    assert job_state(browser) == "dead"
    assert "billing.charge_invoice" in browser.find_element(By.TAG_NAME, "h1").text
    assert '"invoice_id": 1042' in browser.find_element(By.CSS_SELECTOR, "pre.json").text

    traceback = browser.find_element(By.CSS_SELECTOR, ".timeline pre.traceback")
    assert not traceback.is_displayed()  # folded until asked for
    browser.find_element(By.CSS_SELECTOR, ".timeline details summary").click()
    wait(browser).until(ec.visibility_of(traceback))
    text = traceback.text
    assert text.startswith("Traceback (most recent call last)")
    assert "in _call_gateway" in text and "demo_tasks.py" in text
    assert "PaymentGatewayError: gateway timed out after 30 s charging invoice 1042" in text


def test_retry_a_failed_job_and_see_it_succeed(browser, dashboard, seeded, bdb):
    job_id = seeded.invoices[0]
    url = f"{dashboard.url}/jobs/{job_id}"
    browser.get(url)
    assert job_state(browser) == "dead"
    retry = browser.find_element(By.CSS_SELECTOR, f"form[action$='/jobs/{job_id}/retry'] button")
    assert retry.text == "Retry"
    submit_and_wait(browser, retry)
    assert ids(bdb, "id = %s AND state = 'dead'", [job_id]), "retried before confirmation"
    confirm(browser, f"Retry job {job_id}")
    assert f"Job {job_id} is pending again" in browser.find_element(By.TAG_NAME, "main").text

    reloaded_until(browser, url, lambda d: job_state(d) == "succeeded", REPLICA_S)
    runs = browser.find_elements(By.CSS_SELECTOR, ".timeline li.run")
    outcomes = sorted(r.find_element(By.CSS_SELECTOR, ".state").text for r in runs)
    assert outcomes == ["failed", "succeeded"]
    assert '"charged_cents": 4999' in browser.find_element(By.TAG_NAME, "main").text
    events = browser.find_element(By.XPATH, "//h2[.='Events']/following-sibling::table[1]")
    assert "dashboard:alice" in events.text and "retried" in events.text
    assert events_of(bdb, job_id) == [("retried", "dashboard:alice")]


def test_trigger_pause_and_resume_a_schedule(browser, dashboard, bdb):
    name = "weekly_report"
    browser.get(dashboard.url + "/schedules")
    submit_and_wait(browser, browser.find_element(By.LINK_TEXT, name))
    assert browser.find_element(By.TAG_NAME, "h1").text.startswith(name)
    assert "At 09:00, only on Monday" in browser.find_element(By.CSS_SELECTOR, ".words").text
    url = browser.current_url

    before = ids(bdb, "schedule_name = %s", [name])
    trigger = browser.find_element(
        By.CSS_SELECTOR, f"form[action$='/schedules/{name}/trigger'] button"
    )
    submit_and_wait(browser, trigger)
    confirm(browser, f"Trigger schedule '{name}'")
    assert f"Schedule '{name}' triggered." in browser.find_element(By.CSS_SELECTOR, ".flash").text
    (job_id,) = ids(bdb, "schedule_name = %s", [name]) - before
    link = (By.CSS_SELECTOR, f"section.runs a[href$='/jobs/{job_id}']")
    row = reloaded_until(
        browser, url,
        lambda d: [e for e in d.find_elements(*link)
                   if "succeeded" in e.find_element(By.XPATH, "./ancestor::tr").text],
        REPLICA_S,
    )  # fmt: skip
    assert "trigger" in row[0].find_element(By.XPATH, "./ancestor::tr").text

    pause = browser.find_element(By.CSS_SELECTOR, f"form[action$='/schedules/{name}/pause'] button")
    submit_and_wait(browser, pause)
    confirm(browser, f"Pause schedule '{name}'")
    assert f"Schedule '{name}' paused." in browser.find_element(By.CSS_SELECTOR, ".flash").text
    assert browser.find_element(By.CSS_SELECTOR, "h1 .state").text == "paused"
    paused = bdb.execute("SELECT paused_at FROM scheduler.schedules WHERE name = %s", [name])
    assert paused.fetchone()[0] is not None
    browser.get(dashboard.url + "/schedules")
    row = browser.find_element(By.XPATH, f"//table//tr[td/a[.='{name}']]")
    assert "paused" in row.text

    browser.get(url)
    resume = browser.find_element(
        By.CSS_SELECTOR, f"form[action$='/schedules/{name}/resume'] button"
    )
    submit_and_wait(browser, resume)
    confirm(browser, f"Resume schedule '{name}'")
    assert f"Schedule '{name}' resumed" in browser.find_element(By.CSS_SELECTOR, ".flash").text
    assert not browser.find_elements(By.CSS_SELECTOR, "h1 .state")
    actions = bdb.execute(
        "SELECT event, actor FROM scheduler.job_events WHERE schedule_name = %s ORDER BY id",
        [name],
    ).fetchall()
    assert [a[0] for a in actions] == ["schedule_triggered", "schedule_paused", "schedule_resumed"]
    assert {a[1] for a in actions} == {"dashboard:alice"}


def test_without_credentials_nothing_is_shown(driver, dashboard, seeded):
    stack.use_credentials(driver, None)
    for path in ("/", "/jobs", f"/jobs/{seeded.invoices[1]}"):
        stack.statuses(driver)
        driver.get(dashboard.url + path)
        assert stack.statuses(driver).get(dashboard.url + path) == 401, path
        assert "scheduler" not in driver.page_source, path  # no page: no nav, no job
        assert not driver.find_elements(By.TAG_NAME, "nav")
    for user in (None, stack.User(stack.ADMIN.name, "wrong password")):
        for method, path in (
            ("GET", "/"), ("GET", "/jobs"), ("GET", f"/jobs/{seeded.invoices[1]}"),
            ("GET", "/schedules"), ("POST", f"/jobs/{seeded.invoices[1]}/retry"),
        ):  # fmt: skip
            data = b"" if method == "POST" else None
            status, headers, body = stack.http(method, dashboard.url + path, user, data)
            assert (status, body) == (401, "authentication required"), path
            assert headers.get("WWW-Authenticate", "").startswith("Basic")
    assert stack.http("GET", dashboard.url + "/healthz")[0] == 200


def test_read_only_user_sees_no_action_and_is_refused(driver, dashboard, seeded, bdb):
    stack.use_credentials(driver, stack.VIEWER)
    job_id = seeded.invoices[1]
    for path in (f"/jobs/{job_id}", "/jobs", "/dead-letters", "/schedules/nightly_cleanup"):
        driver.get(dashboard.url + path)
        wait(driver).until(ec.presence_of_element_located((By.TAG_NAME, "main")))
        assert "read-only" in driver.find_element(By.CSS_SELECTOR, "header .who").text, path
        posts = driver.find_elements(By.CSS_SELECTOR, "form[method=post], form[method=POST]")
        assert posts == [], f"{path}: action forms shown to a read-only user"
        labels = {b.text for b in driver.find_elements(By.CSS_SELECTOR, "main button")}
        assert not labels & {"Retry", "Cancel", "Delete", "Pause", "Trigger now", "Retry all"}

    # a well-formed action (a valid CSRF token for this user, confirmed) is still refused
    nonce = driver.get_cookie("scheduler_csrf")["value"]
    token = stack.csrf_token_for(nonce, stack.VIEWER)
    for path in (f"/jobs/{job_id}/retry", "/schedules/nightly_cleanup/pause"):
        status, body = post_from_page(
            driver, path, {"csrf_token": token, "confirmed": "yes"}, {"X-CSRF-Token": token}
        )
        assert status == 403, (path, body[:300])
        assert "read-only" in body
    assert ids(bdb, "id = %s AND state = 'dead'", [job_id])
    assert events_of(bdb, job_id) == []
    paused = bdb.execute("SELECT paused_at FROM scheduler.schedules WHERE name = 'nightly_cleanup'")
    assert paused.fetchone()[0] is None


def test_post_without_csrf_token_is_refused(driver, dashboard, seeded, bdb):
    stack.use_credentials(driver, stack.ADMIN)
    job_id = seeded.invoices[1]
    driver.get(f"{dashboard.url}/jobs/{job_id}")
    assert driver.find_elements(By.CSS_SELECTOR, f"form[action$='/jobs/{job_id}/retry']")
    nonce = driver.get_cookie("scheduler_csrf")["value"]
    good = stack.csrf_token_for(nonce, stack.ADMIN)
    for path in (f"/jobs/{job_id}/retry", "/schedules/nightly_cleanup/pause", "/jobs/bulk/delete"):
        status, body = post_from_page(driver, path, {"confirmed": "yes"})
        assert status == 403, (path, body[:300])
        assert "CSRF" in body
        status, body = post_from_page(driver, path, {"confirmed": "yes", "csrf_token": "0" * 64})
        assert status == 403, (path, body[:300])
        # the same request with this user's token gets the confirmation page (nothing done):
        # the refusals above were the token's
        status, body = post_from_page(driver, path, {"csrf_token": good})
        assert status == 200 and "Confirm" in body, (path, body[:300])
        # another client with the right credentials but no cookie nor token
        status, _, body = stack.http(
            "POST", dashboard.url + path, stack.ADMIN, b"confirmed=yes",
            {"Content-Type": "application/x-www-form-urlencoded"},
        )  # fmt: skip
        assert status == 403, (path, body[:300])
    assert ids(bdb, "id = %s AND state = 'dead'", [job_id])
    assert events_of(bdb, job_id) == []
    assert bdb.execute("SELECT count(*) FROM scheduler.jobs").fetchone()[0] >= 6
    paused = bdb.execute("SELECT paused_at FROM scheduler.schedules WHERE name = 'nightly_cleanup'")
    assert paused.fetchone()[0] is None


pytestmark = pytest.mark.usefixtures("browser_stack")
