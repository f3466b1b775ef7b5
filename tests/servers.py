"""Real PostgreSQL servers for the tests, from Debian's packages (``/usr/lib/postgresql/<major>``).

PostgreSQL refuses to run as root: when the tests run as root, every server command runs as
the ``postgres`` system user (created by the package), in a data directory it owns. Ports are
free ones picked at run time. ``fsync=off``: these servers hold test data only.

``SCHEDULER_TEST_PG`` chooses the majors the database fixtures run on (``18,15`` by default:
the embedded 18 and Debian's 15); a major whose binaries are missing is skipped, except in CI
(``CI=true``), where it fails.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
from psycopg.conninfo import make_conninfo

DEBIAN = Path("/usr/lib/postgresql")


def majors() -> list[str]:
    """The PostgreSQL majors the database fixtures run on (``SCHEDULER_TEST_PG``)."""
    return [m.strip() for m in os.environ.get("SCHEDULER_TEST_PG", "18,15").split(",") if m]


def bin_dir(major: str) -> Path | None:
    """``/usr/lib/postgresql/<major>/bin`` when Debian's package of that major is installed."""
    path = DEBIAN / major / "bin"
    return path if (path / "postgres").exists() else None


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _as_owner(args: Sequence[str], **kw) -> subprocess.CompletedProcess[str]:
    """Run a server command as ``postgres`` when we are root, else as ourselves."""
    command = list(args)
    if os.geteuid() == 0:
        command = ["runuser", "-u", "postgres", "--", *command]
    return subprocess.run(command, check=True, capture_output=True, text=True, **kw)


def owned_dir(prefix: str) -> Path:
    path = Path(tempfile.mkdtemp(prefix=prefix))
    if os.geteuid() == 0:
        shutil.chown(path, "postgres", "postgres")
    path.chmod(0o700)
    return path


@dataclass
class Cluster:
    """One PostgreSQL server of Debian's packages, listening on ``port`` at ``listen``
    addresses and on a Unix socket in ``root``."""

    major: str
    root: Path
    port: int
    listen: tuple[str, ...] = ("127.0.0.1",)
    conf: dict[str, str] = field(default_factory=dict)

    @property
    def bin(self) -> Path:
        found = bin_dir(self.major)
        assert found is not None, f"PostgreSQL {self.major} is not installed"
        return found

    @property
    def data(self) -> Path:
        return self.root / "data"

    def url(self, dbname: str = "postgres", host: str | None = None, **params) -> str:
        """A URL for ``dbname``: TCP to ``host`` (default the first listen address)."""
        return make_conninfo(
            "", host=host or self.listen[0], port=self.port, user="postgres", dbname=dbname,
            **params,
        )  # fmt: skip

    def socket_url(self, dbname: str = "postgres") -> str:
        return make_conninfo("", host=str(self.root), port=self.port, user="postgres",
                             dbname=dbname)  # fmt: skip

    def initdb(self) -> None:
        _as_owner([str(self.bin / "initdb"), "-D", str(self.data), "-A", "trust", "-U",
                   "postgres", "-E", "UTF8", "--no-sync"])  # fmt: skip
        settings = {
            "fsync": "off",
            "synchronous_commit": "off",
            "full_page_writes": "off",
            "max_connections": "200",
            "shared_buffers": "64MB",
            "unix_socket_directories": f"'{self.root}'",
            "wal_level": "replica",
            "max_wal_senders": "5",
            "log_line_prefix": "'%m [%p] '",
            **self.conf,
        }
        with open(self.data / "postgresql.conf", "a", encoding="utf-8") as conf:
            conf.writelines(f"{k} = {v}\n" for k, v in settings.items())
        with open(self.data / "pg_hba.conf", "a", encoding="utf-8") as hba:
            hba.write("host all all 0.0.0.0/0 trust\nhost replication all 0.0.0.0/0 trust\n")

    def start(self) -> None:
        options = f"-p {self.port} -c listen_addresses='{','.join(self.listen)}'"
        _as_owner([str(self.bin / "pg_ctl"), "-D", str(self.data), "-o", options, "-l",
                   str(self.root / "log"), "-w", "-t", "60", "start"])  # fmt: skip

    def stop(self, mode: str = "fast") -> None:
        if (self.data / "postmaster.pid").exists():
            with contextlib.suppress(subprocess.CalledProcessError):
                _as_owner([str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", mode, "-w",
                           "stop"])  # fmt: skip

    def promote(self) -> None:
        _as_owner([str(self.bin / "pg_ctl"), "-D", str(self.data), "-w", "promote"])

    def wait_ready(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                with psycopg.connect(self.socket_url(), connect_timeout=2):
                    return
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

    def remove(self) -> None:
        self.stop("immediate")
        shutil.rmtree(self.root, ignore_errors=True)


def start_cluster(
    major: str,
    *,
    listen: tuple[str, ...] = ("127.0.0.1",),
    conf: dict[str, str] | None = None,
) -> Cluster:
    """A new, running cluster of ``major`` on a free port (call ``remove()`` when done)."""
    cluster = Cluster(major, owned_dir(f"scheduler-pg{major}-"), free_port(), listen,
                      dict(conf or {}))  # fmt: skip
    cluster.initdb()
    cluster.start()
    return cluster


def start_standby(primary: Cluster) -> Cluster:
    """A streaming standby of ``primary`` (``pg_basebackup -R``), running, on its own port."""
    standby = Cluster(primary.major, owned_dir(f"scheduler-pg{primary.major}-standby-"),
                      free_port(), primary.listen, dict(primary.conf))  # fmt: skip
    _as_owner([str(standby.bin / "pg_basebackup"), "-D", str(standby.data), "-R", "-X",
               "stream", "-d", primary.url(), "--no-sync"])  # fmt: skip
    with open(standby.data / "postgresql.conf", "a", encoding="utf-8") as conf:
        conf.write(f"unix_socket_directories = '{standby.root}'\n")
    standby.start()
    return standby


@contextlib.contextmanager
def cluster(major: str, **kw) -> Iterator[Cluster]:
    """:func:`start_cluster` as a context manager."""
    c = start_cluster(major, **kw)
    try:
        yield c
    finally:
        c.remove()
