"""The shop's tasks, found by ``manage.py scheduler_run`` (it imports every installed app's
``tasks`` module).

A sync handler runs in one of the worker's handler threads and uses the ORM as a view does;
the Django app closes its connection after each attempt (``CONN_MAX_AGE``), as after a
request. An async handler runs on the worker's event loop: it must use the async ORM
(``aget``, ``asave``, ``acount``...) or ``asgiref.sync.sync_to_async``; a plain
``Order.objects.get()`` there raises ``SynchronousOnlyOperation``.
"""

from datetime import timedelta

from django.utils import timezone

from scheduler import task

from .models import Order


@task(name="shop.confirm_order", max_attempts=5)
def confirm_order(order_id: int) -> str:
    order = Order.objects.get(pk=order_id)
    order.status = "confirmed"
    order.save(update_fields=["status"])
    return order.status


@task(name="shop.send_receipt", max_attempts=5)
async def send_receipt(order_id: int) -> bool:
    order = await Order.objects.aget(pk=order_id)
    # ... send the mail here ...
    order.receipt_sent = True
    await order.asave(update_fields=["receipt_sent"])
    return order.receipt_sent


@task(name="shop.expire_stale_orders")
def expire_stale_orders() -> int:
    stale = timezone.now() - timedelta(days=1)
    return Order.objects.filter(status="placed", created_at__lt=stale).update(status="expired")
