"""A real PgBouncer (Debian's package, ``/usr/sbin/pgbouncer``) in front of a test cluster.

:func:`start` runs one PgBouncer in ``transaction`` or ``session`` pool mode in front of a
:class:`tests.servers.Cluster`, on a free TCP port of 127.0.0.1, with ``auth_type = trust``
and an ``auth_file`` naming the cluster's ``postgres`` user. Any database name is passed
through (``* =`` in ``[databases]``). ``default_pool_size`` is small (3) so that clients really
share server connections in transaction mode; a session pool must be as large as the number of
client sessions it serves at once (a client holds its server connection until it leaves).

PgBouncer refuses to run as root: when the tests run as root it runs as the ``postgres`` user
(created by Debian's PostgreSQL package) in a directory that user owns, like the servers of
:mod:`tests.servers`. Its log is ``<root>/pgbouncer.log`` (:meth:`PgBouncer.log`).

Settings worth knowing (PgBouncer 1.18): ``server_reset_query = DISCARD ALL`` is run only in
session mode (``server_reset_query_always = 0``), so in transaction mode a ``SET`` or a
session advisory lock stays on the server connection for the next client; protocol-level
prepared statements are not tracked before 1.21 (``max_prepared_statements``).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import psycopg
from psycopg.conninfo import make_conninfo

from tests import servers

PGBOUNCER = Path("/usr/sbin/pgbouncer")
PoolMode = Literal["transaction", "session"]


def installed() -> bool:
    """True when Debian's PgBouncer is installed."""
    return PGBOUNCER.exists()


@dataclass
class PgBouncer:
    """A running PgBouncer: ``port`` on 127.0.0.1, files under ``root``."""

    root: Path
    port: int
    mode: PoolMode
    pool_size: int
    proc: subprocess.Popen[bytes]

    def url(self, dbname: str = "postgres", **params: object) -> str:
        """A libpq URL of ``dbname`` through this PgBouncer."""
        return make_conninfo(
            "", host="127.0.0.1", port=self.port, user="postgres", dbname=dbname, **params
        )

    def admin(self, command: str) -> list[tuple[object, ...]]:
        """Rows of an admin console command (``SHOW POOLS``, ``SHOW SERVERS``)."""
        with psycopg.connect(self.url("pgbouncer"), autocommit=True) as conn:
            return conn.execute(command).fetchall()

    def log(self) -> str:
        path = self.root / "pgbouncer.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def stop(self) -> None:
        """Immediate shutdown (SIGTERM), then remove its directory."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        shutil.rmtree(self.root, ignore_errors=True)


def _config(cluster: servers.Cluster, root: Path, port: int, mode: PoolMode, pool_size: int) -> str:
    settings = {
        "listen_addr": "127.0.0.1",
        "listen_port": port,
        "unix_socket_dir": str(root),
        "auth_type": "trust",
        "auth_file": str(root / "userlist.txt"),
        "admin_users": "postgres",
        "pool_mode": mode,
        "default_pool_size": pool_size,
        "min_pool_size": 0,
        "reserve_pool_size": 0,
        "max_client_conn": 500,
        "server_reset_query": "DISCARD ALL",  # the default; run in session mode only
        "server_reset_query_always": 0,  # the default
        "ignore_startup_parameters": "extra_float_digits",
        "query_wait_timeout": 30,  # a starved client fails in the test's time, not in 120 s
        "logfile": str(root / "pgbouncer.log"),
        "pidfile": str(root / "pgbouncer.pid"),
    }
    lines = [
        "[databases]",
        f"* = host={cluster.listen[0]} port={cluster.port}",
        "",
        "[pgbouncer]",
        *(f"{k} = {v}" for k, v in settings.items()),
    ]
    return "\n".join(lines) + "\n"


def start(
    cluster: servers.Cluster,
    mode: PoolMode = "transaction",
    *,
    pool_size: int = 3,
    timeout: float = 15,
) -> PgBouncer:
    """A running PgBouncer in ``mode`` in front of ``cluster``, with ``default_pool_size =
    pool_size`` server connections per database (call ``stop()`` when done).

    Raises:
        RuntimeError: PgBouncer exited or did not accept a connection within ``timeout``
            seconds (the message has its log).
    """
    root = servers.owned_dir(f"scheduler-pgbouncer-{mode}-")
    port = servers.free_port()
    (root / "userlist.txt").write_text('"postgres" ""\n')
    ini = root / "pgbouncer.ini"
    ini.write_text(_config(cluster, root, port, mode, pool_size))
    owner: dict[str, str] = {}
    if os.geteuid() == 0:
        for path in (root / "userlist.txt", ini):
            shutil.chown(path, "postgres", "postgres")
        owner = {"user": "postgres", "group": "postgres"}
    proc = subprocess.Popen(
        [str(PGBOUNCER), str(ini)],
        cwd=root,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        **owner,
    )  # type: ignore[call-overload]
    bouncer = PgBouncer(root, port, mode, pool_size, proc)
    deadline = time.monotonic() + timeout
    while True:
        try:
            with psycopg.connect(bouncer.url(), connect_timeout=2):
                return bouncer
        except psycopg.OperationalError as exc:
            if proc.poll() is not None or time.monotonic() > deadline:
                log = bouncer.log()
                bouncer.stop()
                raise RuntimeError(f"PgBouncer did not start ({exc}):\n{log[-3000:]}") from None
            time.sleep(0.05)


@contextlib.contextmanager
def pgbouncer(
    cluster: servers.Cluster, mode: PoolMode = "transaction", **kw: object
) -> Iterator[PgBouncer]:
    """:func:`start` as a context manager."""
    bouncer = start(cluster, mode, **kw)  # type: ignore[arg-type]
    try:
        yield bouncer
    finally:
        bouncer.stop()
