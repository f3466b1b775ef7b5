"""The order's background work: a typed ``@task`` handle, run by the replica the app embeds.

``confirm_order.configure(connection=session).defer_async(order_id=...)`` enqueues it inside
the request's transaction (see ``app.py``); the worker then runs :func:`confirm_order` on the
app's event loop, with its own session.
"""

from __future__ import annotations

from sqlalchemy import func, update

from scheduler import task

from .database import Order, db


@task(name="orders.confirm_order", max_attempts=5)
async def confirm_order(order_id: int) -> None:
    """Mark the order confirmed (a real shop would charge the card, send the receipt...).

    At-least-once: a job can run again after a crash, so the update is idempotent (only a
    pending order changes; a second run changes nothing)."""
    async with db.session() as session, session.begin():
        await session.execute(
            update(Order)
            .where(Order.id == order_id, Order.status == "pending")
            .values(status="confirmed", confirmed_at=func.now())
        )
