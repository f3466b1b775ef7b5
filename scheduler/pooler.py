"""Transaction poolers (PgBouncer in ``transaction`` or ``statement`` mode): how a replica
finds out, and what it does then.

Behind a transaction pooler each transaction may run on a different server session, so
nothing session-scoped works or is safe there: session advisory locks (leadership), ``SET``
(the lock session's timeouts would leak to every other client of the pool), ``LISTEN``, and
prepared statements (psycopg prepares a statement after 5 executions; PgBouncer before 1.21
routes it to other sessions: ``prepared statement "_pg3_0" does not exist``). So:

* ``SCHEDULER_DATABASE_URL`` may point at a pooler. When ``SCHEDULER_DIRECT_DATABASE_URL`` is
  set, the pooled URL is only used for single-statement work (claims, completions, enqueues,
  operator commands), never with prepared statements; the lock and ``LISTEN`` sessions use the
  direct URL.
* Without a direct URL, a replica checks the URL with :func:`is_transaction_pooled` before it
  opens any session-scoped state. If it is pooled, the replica refuses to lead
  (``leader_refused``, error level, once; it never sets, locks or listens through the pool),
  its workers run without ``LISTEN`` (``listen_unavailable``, one warning: they wake on the
  earliest known ``run_at`` and the safety poll), and it uses no prepared statements.
* Statements the Python API runs on a caller's connection are never prepared (the caller may
  be behind a pooler), nor are those of the default enqueue pool and of operator commands.

Detection: two client connections each ask ``pg_backend_pid()`` in turn, three times. A direct
connection (or a session-mode pooler) gives each client its own server session, so the pids
differ and stay the same; a transaction pooler hands the server session one client released
to the next (PgBouncer reuses the most recently used one), so the two clients see the same
pid, or one client sees its pid change. A busy pool can hide this, so the elector also checks
after taking the lock that the lock's session is still its own (and terminates that session,
releasing the lock, when it is not).
"""

from __future__ import annotations

from typing import Any

import psycopg

from .store import Store

NO_PREPARE: dict[str, Any] = {"prepare_threshold": None}  # connection kwargs behind a pooler
_ROUNDS = 3


async def is_transaction_pooled(url: str, store: Store, **kwargs: Any) -> bool:
    """True when ``url`` leads to a transaction (or statement) pooler; see the module
    docstring. ``kwargs`` go to ``psycopg.AsyncConnection.connect`` (timeouts, keepalives).

    Raises:
        psycopg.Error: the database cannot be reached.
    """
    options = {**kwargs, **NO_PREPARE, "autocommit": True}
    async with (
        await psycopg.AsyncConnection.connect(url, **options) as first,
        await psycopg.AsyncConnection.connect(url, **options) as second,
    ):
        seen: dict[int, set[int]] = {0: set(), 1: set()}
        for _ in range(_ROUNDS):
            for index, conn in enumerate((first, second)):
                cur = await conn.execute(store.q["backend_pid"])
                row = await cur.fetchone()
                assert row is not None
                seen[index].add(int(row[0]))
            if seen[0] & seen[1] or len(seen[0]) > 1 or len(seen[1]) > 1:
                return True
    return False
