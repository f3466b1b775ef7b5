"""Tasks of the dashboard's browser tests and screenshots (tests/browser/), imported by the real
``scheduler run`` replica through the schedules file's ``imports``.

``billing.charge_invoice`` fails on its first run for an invoice (a traceback through two
frames, ending in :class:`PaymentGatewayError`) and succeeds when retried: the first run
leaves a marker file in ``$DASHBOARD_DEMO_STATE_DIR`` (one per invoice id), later runs find it.
"""

from __future__ import annotations

import os
from pathlib import Path

from scheduler import task


class PaymentGatewayError(RuntimeError):
    """The payment gateway refused or did not answer."""


def _state_dir() -> Path:
    return Path(os.environ["DASHBOARD_DEMO_STATE_DIR"])


def _call_gateway(invoice_id: int, amount_cents: int) -> None:
    raise PaymentGatewayError(
        f"gateway timed out after 30 s charging invoice {invoice_id} ({amount_cents} cents)"
    )


@task(name="billing.charge_invoice", queue="billing", max_attempts=1)
def charge_invoice(invoice_id: int, amount_cents: int) -> dict[str, int]:
    """Fails the first time for each ``invoice_id``, succeeds on a retry."""
    marker = _state_dir() / f"invoice-{int(invoice_id)}.attempted"
    if not marker.exists():
        marker.touch()
        _call_gateway(invoice_id, amount_cents)
    return {"invoice_id": invoice_id, "charged_cents": amount_cents}


@task(name="mail.send_receipt", queue="mail")
def send_receipt(order_id: int, email: str) -> None:
    """Always succeeds."""


@task(name="reports.build", queue="reports")
def build_report(report: str) -> dict[str, str]:
    """Always succeeds (the schedules' task)."""
    return {"report": report, "status": "built"}
