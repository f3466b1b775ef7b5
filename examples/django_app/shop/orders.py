"""Placing an order: the order row and its jobs in one transaction.

The jobs are written on the ORM's own connection, inside ``transaction.atomic()``: they exist
if and only if the order does (a rollback leaves neither, a commit both), and a worker cannot
start them before the order is committed.
"""

from django.db import connection, transaction

from .models import Order
from .tasks import confirm_order, send_receipt


class OrderRejected(Exception):
    pass


def place_order(item: str, quantity: int = 1, *, reject: bool = False) -> Order:
    """Create an order and enqueue its confirmation and receipt, atomically.

    Raises:
        OrderRejected: ``reject`` (a stand-in for a check that fails after the writes): the
            transaction rolls back, so neither the order nor its jobs exist.
    """
    with transaction.atomic():
        order = Order.objects.create(item=item, quantity=quantity)
        # Django's connection: the INSERTs join the atomic block's transaction
        confirm_order.configure(connection=connection).defer(order_id=order.pk)
        send_receipt.configure(connection=connection).defer(order_id=order.pk)
        if reject:
            raise OrderRejected(f"order of {quantity} x {item} rejected")
    return order
