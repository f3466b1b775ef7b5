"""The orders example's own tests, as its users would write them: the ``scheduler_db`` fixture
of the ``scheduler.testing`` pytest plugin (a fresh migrated database), the app served by
Starlette's ``TestClient`` (its lifespan runs: tables, the embedded replica), real PostgreSQL."""

from __future__ import annotations

import time
from collections.abc import Iterator

import psycopg
import pytest
from fastapi.testclient import TestClient

from scheduler.testing import SchedulerDB

from .app import create_app
from .database import sqlalchemy_url

TIMEOUT_S = 15.0


@pytest.fixture
def client(scheduler_db: SchedulerDB) -> Iterator[TestClient]:
    """The app on the test's database, its lifespan started (and the replica in it)."""
    app = create_app(sqlalchemy_url(scheduler_db.url), products={"tea": 100, "mug": 3})
    with TestClient(app) as client:
        yield client


def _count(url: str, table: str) -> int:
    with psycopg.connect(url) as conn:
        return int(conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0])  # type: ignore[index]


def _confirmed(client: TestClient, order_id: int, deadline: float) -> None:
    """Wait for the order to be confirmed, failing after ``deadline`` (monotonic) s."""
    while client.get(f"/orders/{order_id}").json()["status"] != "confirmed":
        if time.monotonic() > deadline:
            pytest.fail(f"order {order_id} not confirmed within {TIMEOUT_S} s")
        time.sleep(0.05)


def test_a_posted_order_is_confirmed_by_the_embedded_worker(
    client: TestClient, scheduler_db: SchedulerDB
) -> None:
    answer = client.post("/orders", json={"sku": "tea", "quantity": 2})
    assert answer.status_code == 201, answer.text
    order = answer.json()
    assert order["status"] == "pending" and order["job_id"] > 0
    _confirmed(client, order["id"], time.monotonic() + TIMEOUT_S)
    with psycopg.connect(scheduler_db.url) as conn:
        job = conn.execute(
            "SELECT task, state, args FROM scheduler.jobs WHERE id = %s", [order["job_id"]]
        ).fetchone()
        stock = conn.execute("SELECT stock FROM products WHERE sku = 'tea'").fetchone()
    assert job == ("orders.confirm_order", "succeeded", {"order_id": order["id"]})
    assert stock == (98,)


def test_a_rolled_back_order_leaves_no_order_and_no_job(
    client: TestClient, scheduler_db: SchedulerDB
) -> None:
    # the job is inserted before the stock runs out: the rollback takes it back too
    answer = client.post("/orders", json={"sku": "mug", "quantity": 5})
    assert answer.status_code == 409, answer.text
    assert "not enough 'mug' in stock" in answer.json()["detail"]
    answer = client.post("/orders", json={"sku": "teapot", "quantity": 1})
    assert answer.status_code == 404, answer.text
    assert _count(scheduler_db.url, "orders") == 0
    assert _count(scheduler_db.url, "scheduler.jobs") == 0
    # the same transaction, committed, leaves exactly one of each
    assert client.post("/orders", json={"sku": "mug", "quantity": 3}).status_code == 201
    assert _count(scheduler_db.url, "orders") == 1
    assert _count(scheduler_db.url, "scheduler.jobs") == 1
