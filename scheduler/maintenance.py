"""Leader maintenance ticks: rescue jobs whose lease expired.

A worker extends the lease of each running job every ``lease_s / 3`` seconds (one batched
statement per worker). When a worker is SIGKILLed, hung or cut off, its leases run out; the
leader then moves those jobs back to ``pending`` (due now) or to ``dead`` at
``max_attempts``, recording a ``lost`` run. At-least-once: the handler may have done part or
all of its work before it was lost, so it can run again.

Retention (pruning old rows) comes with the operations issue.
"""

from __future__ import annotations

from typing import Any

import psycopg

from .errors import LeadershipLostError
from .log import get_logger
from .store import Store

log = get_logger("scheduler.maintenance")

RESCUE_BATCH = 1000


async def rescue_expired_leases(
    conn: psycopg.AsyncConnection[Any], store: Store, *, holder: str, term: int
) -> list[int]:
    """Rescue up to :data:`RESCUE_BATCH` expired leases in one fenced transaction on the
    leader's lock session; returns the rescued job ids.

    Raises:
        LeadershipLostError: this session no longer leads (nothing was changed).
    """
    async with conn.transaction():
        if await store.fence(conn, holder, term) is None:
            raise LeadershipLostError(f"term {term} is no longer current for {holder}")
        rows = await store.fetch(conn, "rescue_expired_leases", {"limit": RESCUE_BATCH})
    rescued = [r["job_id"] for r in rows]
    if rescued:
        log.warning("jobs_rescued", jobs=rescued, term=term, reason="lease expired")
    return rescued
