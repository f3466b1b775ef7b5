"""The FastAPI app: ``POST /orders`` writes the order, its job and the stock in ONE transaction;
the scheduler's replica runs inside the app (its lifespan), on the app's event loop.

    POST /orders {"sku": "tea", "quantity": 2}  -> 201 {"id": 1, "status": "pending", "job_id": 1}
    GET  /orders/1                              -> {"id": 1, "status": "confirmed", ...}

Out of stock (409) or an unknown product (404): the transaction is rolled back, so there is
no order and no job. Committed: the order and its job exist together, whatever happens to the
process right after the commit.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Annotated

import psycopg
from fastapi import APIRouter, Depends, FastAPI, HTTPException
from pydantic import BaseModel, Field
from sqlalchemy import update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.engine import URL
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

import scheduler.embedding
from scheduler.settings import Settings

from .database import Order, Product, db, libpq_url
from .tasks import confirm_order


class OrderIn(BaseModel):
    sku: str = Field(min_length=1, max_length=40)
    quantity: int = Field(gt=0, le=1000)


class OrderOut(BaseModel):
    id: int
    sku: str
    quantity: int
    status: str
    job_id: int | None = None  # the confirm_order job (only in the answer to POST)


async def get_session() -> AsyncIterator[AsyncSession]:
    async with db.session() as session:
        yield session


SessionDep = Annotated[AsyncSession, Depends(get_session)]
router = APIRouter()


@router.post("/orders", status_code=201)
async def place_order(order_in: OrderIn, session: SessionDep) -> OrderOut:
    try:
        async with session.begin():  # commits at the end of the block, rolls back on error
            order = Order(sku=order_in.sku, quantity=order_in.quantity)
            session.add(order)
            await session.flush()  # INSERT: the order's id
            # the job's INSERT runs on the session's connection, in its transaction
            job_id = await confirm_order.configure(connection=session).defer_async(
                order_id=order.id
            )
            # last, the stock: not enough of it rolls back the order AND its job
            await session.execute(
                update(Product)
                .where(Product.sku == order.sku)
                .values(stock=Product.stock - order.quantity)
            )
    except IntegrityError as exc:
        if isinstance(exc.orig, psycopg.errors.CheckViolation):
            raise HTTPException(409, f"not enough {order_in.sku!r} in stock") from None
        if isinstance(exc.orig, psycopg.errors.ForeignKeyViolation):
            raise HTTPException(404, f"no product {order_in.sku!r}") from None
        raise
    return OrderOut(id=order.id, sku=order.sku, quantity=order.quantity, status=order.status,
                    job_id=job_id)  # fmt: skip


@router.get("/orders/{order_id}")
async def get_order(order_id: int, session: SessionDep) -> OrderOut:
    order = await session.get(Order, order_id)
    if order is None:
        raise HTTPException(404, f"no order {order_id}")
    return OrderOut(id=order.id, sku=order.sku, quantity=order.quantity, status=order.status)


def create_app(
    database_url: str | URL | None = None,
    *,
    role: scheduler.embedding.Role = "all",
    products: Mapping[str, int] | None = None,
) -> FastAPI:
    """The app, on ``database_url`` (default ``DATABASE_URL``, a ``postgresql+psycopg://``
    SQLAlchemy URL). ``role="worker"``: its replica runs jobs but never leads (when
    ``scheduler run`` replicas elsewhere lead). ``products``: stock to add at start-up (sku ->
    quantity, for the demo)."""
    url = database_url or os.environ["DATABASE_URL"]

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        db.open(url)
        try:
            await db.create_tables()
            if products:
                await _stock(products)
            # the scheduler's settings: SCHEDULER_* from the environment, the app's database
            settings = Settings(database_url=libpq_url(url))
            async with scheduler.embedding.replica(settings, role=role):
                yield
            # here the replica has stopped: running jobs had SCHEDULER_SHUTDOWN_GRACE_S
        finally:
            await db.close()

    app = FastAPI(title="orders", lifespan=lifespan)
    app.include_router(router)
    return app


async def _stock(products: Mapping[str, int]) -> None:
    async with db.session() as session, session.begin():
        for sku, stock in products.items():
            await session.execute(
                insert(Product).values(sku=sku, stock=stock).on_conflict_do_nothing()
            )
