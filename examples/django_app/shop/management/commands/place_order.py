"""``manage.py place_order ITEM [--quantity N] [--reject]``: place an order (shop.orders)."""

from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from shop.orders import OrderRejected, place_order


class Command(BaseCommand):
    help = "Place an order: the order and its two jobs in one transaction."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("item")
        parser.add_argument("--quantity", type=int, default=1)
        parser.add_argument("--reject", action="store_true", help="fail after the writes")

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            order = place_order(options["item"], options["quantity"], reject=options["reject"])
        except OrderRejected as exc:
            self.stdout.write(f"rolled back: {exc}")
            return
        self.stdout.write(f"order {order.pk} placed")
