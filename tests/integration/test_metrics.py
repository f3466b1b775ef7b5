"""Prometheus metrics and the health endpoints of a running replica."""

from __future__ import annotations

import asyncio
import urllib.error
import urllib.request

import psycopg

from scheduler import enqueue, metrics, task
from scheduler.settings import Settings
from scheduler.store import Store
from tests.conftest import running_replica, wait_until_async


@task(name="test_metrics.ok")
async def ok() -> None:
    return None


@task(name="test_metrics.bad", max_attempts=1)
async def bad() -> None:
    raise RuntimeError("bad")


def _get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def _sample(text: str, name: str, **labels: str) -> float:
    want = ",".join(f'{k}="{v}"' for k, v in labels.items())
    for line in text.splitlines():
        if line.startswith(f"{name}{{{want}}} ") or (not labels and line.startswith(f"{name} ")):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name}{{{want}}} not in /metrics")


def test_metrics_health_and_readiness_of_a_running_replica(db, db_url):
    with psycopg.connect(db_url) as conn:
        for _ in range(3):
            enqueue(ok, connection=conn)
        enqueue(bad, queue="other", connection=conn)
        conn.commit()
    before = metrics.JOBS_SUCCEEDED.labels("default", "test_metrics.ok")._value.get()
    settings = Settings(metrics_port=0, queues=["default", "other"])
    results: dict[str, tuple[int, str]] = {}

    async def scenario() -> None:
        async with running_replica(db_url, settings) as replica:
            await wait_until_async(
                lambda: (
                    replica.elector.is_leader.is_set()
                    and not db.execute(
                        "SELECT count(*) FROM scheduler.jobs WHERE state IN ('pending', 'running')"
                    ).fetchone()[0]
                ),
                timeout=20,
            )
            port = replica.health_port
            assert port
            for path in ("/metrics", "/healthz", "/readyz", "/nope"):
                results[path] = await asyncio.to_thread(_get, port, path)

    asyncio.run(scenario())
    code, text = results["/metrics"]
    assert code == 200
    succeeded = _sample(
        text, "scheduler_jobs_succeeded_total", queue="default", task="test_metrics.ok"
    )
    assert succeeded - before == 3
    assert _sample(text, "scheduler_jobs_dead_total", queue="other", task="test_metrics.bad") >= 1
    assert _sample(text, "scheduler_leader") == 1
    assert _sample(text, "scheduler_queue_jobs", queue="other", state="dead") == 1
    assert "scheduler_job_start_lateness_seconds_bucket" in text
    assert results["/healthz"][0] == 200 and results["/healthz"][1].startswith("ok")
    assert results["/readyz"] == (200, "ready")
    assert results["/nope"][0] == 404


def test_readiness_names_what_is_missing(db, db_url):
    server = metrics.HealthServer(db_url, Store("scheduler"), "127.0.0.1", 0)
    try:
        assert server.not_ready() is None
        db.execute("DELETE FROM scheduler.migrations WHERE version = 7")
        assert server.not_ready() == "migrations not applied: 0007_replicas"
        broken = metrics.HealthServer(
            "postgresql://nobody@127.0.0.1:1/none", Store("scheduler"), "127.0.0.1", 0
        )
        assert broken.not_ready().startswith("database unreachable")
        broken.stop()
        server.last_beat -= metrics.STALL_S + 1
        server.start()
        assert _get(server.port, "/healthz")[0] == 503
    finally:
        server.stop()
