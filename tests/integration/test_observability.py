"""The library in an application's observability stack: its events go through the standard
``logging`` module (never stdout) unless structlog is configured, handlers' log records carry
their job, and the ``scheduler_*`` metrics go to the registry the user chooses."""

from __future__ import annotations

import asyncio
import json
import logging
import sys
import urllib.request
from collections.abc import Iterator
from typing import Any

import prometheus_client
import psycopg
import pytest
import structlog
from prometheus_client import CollectorRegistry, Counter

from scheduler import enqueue, log, metrics, task
from scheduler.errors import InvalidArgumentError
from scheduler.settings import Settings
from tests.conftest import running_replica, wait_until_async

SEEN: list[dict[str, Any]] = []


@task(name="test_observability.chatty")
def chatty(n: int) -> None:
    logging.getLogger("app.handler").info("handling %s", n)
    SEEN.append({"n": n, "structlog": structlog.contextvars.get_contextvars()})


@task(name="test_observability.broken", max_attempts=1)
async def broken() -> None:
    raise RuntimeError("boom")


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def structlog_unconfigured() -> Iterator[None]:
    """structlog at its defaults, as in an application that does not use it (another test of
    the session may have configured it, e.g. through ``capture_logs``)."""
    was, saved = structlog.is_configured(), structlog.get_config()
    structlog.reset_defaults()
    yield
    if was:
        structlog.configure(**saved)
    else:  # a test here configured it (on its captured stderr, closed after the test)
        structlog.reset_defaults()


@pytest.fixture
def app_handler(structlog_unconfigured: None) -> Iterator[_Collect]:
    """A handler of the application on the root logger; ``scheduler`` and ``app`` at DEBUG."""
    handler, root = _Collect(), logging.getLogger()
    root.addHandler(handler)
    levels = {name: logging.getLogger(name).level for name in ("scheduler", "app")}
    for name in levels:
        logging.getLogger(name).setLevel(logging.DEBUG)
    yield handler
    root.removeHandler(handler)
    for name, level in levels.items():
        logging.getLogger(name).setLevel(level)


def _drained(db: psycopg.Connection) -> bool:
    return not db.execute(
        "SELECT count(*) FROM scheduler.jobs WHERE state IN ('pending', 'running')"
    ).fetchone()[0]


def _state(db: psycopg.Connection, job_id: int) -> str:
    return db.execute("SELECT state FROM scheduler.jobs WHERE id = %s", [job_id]).fetchone()[0]


def test_embedded_replica_logs_through_logging_and_never_to_stdout(db, db_url, app_handler, capfd):
    SEEN.clear()
    plain = enqueue(chatty, args={"n": 1}, connection=db)
    cron = db.execute(
        "INSERT INTO scheduler.jobs (task, args, schedule_name, scheduled_for) "
        "VALUES ('test_observability.chatty', '{\"n\": 2}', 'nightly', now()) RETURNING id"
    ).fetchone()[0]
    dead = enqueue(broken, connection=db)

    async def scenario() -> None:
        async with running_replica(db_url, Settings(poll_interval_s=0.2)):
            await wait_until_async(lambda: _drained(db), timeout=10)

    asyncio.run(scenario())
    out, _ = capfd.readouterr()
    assert out == ""  # structlog's unconfigured default printed one line per job here

    ours = [r for r in app_handler.records if r.name.startswith("scheduler.")]
    events = {(r.scheduler_event, r.scheduler_fields.get("job_id")): r for r in ours}
    assert {"scheduler.worker", "scheduler.service"} <= {r.name for r in ours}
    done = events[("job_succeeded", plain)]
    assert done.levelno == logging.DEBUG
    assert done.scheduler_fields["task"] == "test_observability.chatty"
    assert done.getMessage().startswith(f"job_succeeded job_id={plain} ")
    failed = events[("job_dead", dead)]
    assert failed.levelno == logging.ERROR
    assert 'error="RuntimeError: boom"' in failed.getMessage()  # readable with any formatter
    assert ("job_succeeded", cron) in events

    lines = {r.args[0]: r for r in app_handler.records if r.name == "app.handler"}
    assert (lines[1].scheduler_job_id, lines[1].scheduler_task, lines[1].scheduler_attempt) == (
        plain, "test_observability.chatty", 1)  # fmt: skip
    assert lines[1].scheduler_schedule is None
    assert (lines[2].scheduler_job_id, lines[2].scheduler_schedule) == (cron, "nightly")
    contexts = {s["n"]: s["structlog"] for s in SEEN}
    assert contexts[2]["schedule"] == "nightly" and contexts[2]["job_id"] == cron
    assert contexts[1].get("schedule") is None


def test_processor_formatter_renders_every_field(structlog_unconfigured, capfd):
    """An application using structlog's stdlib integration gets the library's events as its
    own: every field a key of its JSON."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.stdlib.add_logger_name,
                structlog.processors.format_exc_info,
                structlog.processors.JSONRenderer(),
            ]
        )
    )
    logger = logging.getLogger("scheduler.test_observability")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        lib = log.get_logger("scheduler.test_observability")
        lib.warning("job_failed", job_id=7, task="mail.send", error="RuntimeError: smtp\ndown")
        try:
            raise ValueError("bad")
        except ValueError as exc:
            lib.error("loop_crashed", loop="scheduler-worker", exc_info=exc)
    finally:
        logger.removeHandler(handler)
        logger.propagate = True
    out, err = capfd.readouterr()
    assert out == ""
    first, second = (json.loads(line) for line in err.splitlines())
    assert first == {"event": "job_failed", "job_id": 7, "task": "mail.send",
                     "error": "RuntimeError: smtp\ndown",
                     "logger": "scheduler.test_observability"}  # fmt: skip
    assert second["loop"] == "scheduler-worker" and "ValueError: bad" in second["exception"]


def test_configured_structlog_is_followed(structlog_unconfigured, capfd):
    """The CLI (``scheduler.log.configure``) owns its process: JSON lines on stderr."""
    log.configure("json", "info")
    log.get_logger("scheduler.test_observability").info("replica_started", replica="r1")
    out, err = capfd.readouterr()
    assert out == ""
    line = json.loads(err.strip())
    assert (line["event"], line["replica"], line["component"], line["level"]) == (
        "replica_started", "r1", "scheduler.test_observability", "info")  # fmt: skip


@pytest.fixture
def own_registry() -> Iterator[None]:
    metrics.use_registry(metrics.REGISTRY)
    yield
    metrics.use_registry(metrics.REGISTRY)


def _value(registry: CollectorRegistry, name: str, **labels: str) -> float | None:
    return registry.get_sample_value(name, labels)


def test_metrics_in_the_default_registry_with_the_oldest_due_lag(db, db_url, own_registry):
    default = prometheus_client.REGISTRY
    idle = enqueue(chatty, args={"n": 0}, queue="idle", connection=db)  # a queue nobody serves
    db.execute("UPDATE scheduler.jobs SET run_at = now() - interval '30 seconds' WHERE id = %s",
               [idle])  # fmt: skip
    done = enqueue(chatty, args={"n": 3}, connection=db)
    settings = Settings(metrics_registry="default", metrics_port=0, poll_interval_s=0.2)
    seen: dict[str, Any] = {}

    async def scenario() -> None:
        async with running_replica(db_url, settings) as replica:
            await wait_until_async(lambda: _state(db, done) == "succeeded", timeout=10)
            # a scrape of the application's /metrics: blocking, as in its server's thread
            seen["text"] = await asyncio.to_thread(
                lambda: prometheus_client.generate_latest(default).decode()
            )
            seen["lag"] = _value(default, "scheduler_queue_oldest_due_age_seconds", queue="idle")
            url = f"http://127.0.0.1:{replica.health_port}/metrics"
            seen["served"] = await asyncio.to_thread(
                lambda: urllib.request.urlopen(url, timeout=5).read().decode()
            )

    asyncio.run(scenario())
    text = seen["text"]
    assert 'scheduler_jobs_succeeded_total{queue="default",task="test_observability.chatty"}' in (
        text)  # fmt: skip
    assert "python_gc_objects_collected_total" in text  # the application's own metrics, with it
    assert 'scheduler_queue_jobs{queue="idle",state="pending_due"} 1.0' in text
    assert 30 <= seen["lag"] < 60
    # SCHEDULER_METRICS_PORT serves that same registry
    assert "python_gc_objects_collected_total" in seen["served"]
    assert 'scheduler_queue_jobs{queue="idle",state="pending_due"} 1.0' in seen["served"]
    # the replica stopped: its queue gauges left the registry, the counters stay
    assert _value(default, "scheduler_queue_oldest_due_age_seconds", queue="idle") is None
    assert _value(default, "scheduler_jobs_succeeded_total", queue="default",
                  task="test_observability.chatty") is not None  # fmt: skip
    metrics.use_registry(metrics.REGISTRY)
    assert _value(default, "scheduler_jobs_succeeded_total", queue="default",
                  task="test_observability.chatty") is None  # fmt: skip


def test_own_registry_is_the_default_and_use_registry_checks(own_registry):
    default = prometheus_client.REGISTRY
    metrics.JOBS_CLAIMED.labels("q", "t").inc()
    assert _value(metrics.REGISTRY, "scheduler_jobs_claimed_total", queue="q", task="t")
    assert _value(default, "scheduler_jobs_claimed_total", queue="q", task="t") is None
    assert metrics.exposed_in("own") is metrics.REGISTRY

    app = CollectorRegistry()
    metrics.use_registry(app)
    metrics.use_registry(app)  # twice: no duplicate
    assert _value(app, "scheduler_jobs_claimed_total", queue="q", task="t")
    metrics.use_registry(metrics.REGISTRY)
    assert _value(app, "scheduler_jobs_claimed_total", queue="q", task="t") is None

    clash = CollectorRegistry(auto_describe=True)  # as prometheus_client.REGISTRY
    Counter("scheduler_jobs_claimed", "the application's own", registry=clash)
    with pytest.raises(InvalidArgumentError, match="use_registry: Duplicated timeseries"):
        metrics.use_registry(clash)
    with pytest.raises(InvalidArgumentError, match="not str"):
        metrics.use_registry("default")  # type: ignore[arg-type]
    assert metrics.exposed_in() is metrics.REGISTRY
