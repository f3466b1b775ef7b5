"""What every ``scheduler`` command shares: the one-line argparse parser, number parsing,
settings from options, the database URL (embedded when unset), tables and cells."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any, NoReturn

from .. import embedded, limits, operations
from ..settings import Settings, load_settings

ID_MAX = 2**63 - 1  # jobs.id is a bigint
LIMIT_MAX = 100_000  # rows a list command prints
COUNT_MAX = 1_000  # fire times `schedules next` computes


class Parser(argparse.ArgumentParser):
    """argparse whose errors are one line: ``scheduler jobs list: argument --limit: ...``."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: {message} (see {self.prog} --help)\n")


def int_in(low: int, high: int) -> Callable[[str], int]:
    """An argparse ``type``: a whole number from ``low`` to ``high``, else a one-line error."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            shown = limits.shown(text)
            if text.strip().lstrip("+-").isdigit():  # more digits than int() converts
                raise argparse.ArgumentTypeError(
                    f"{shown} is out of range {low:,} .. {high:,}"
                ) from None
            raise argparse.ArgumentTypeError(f"{shown} is not a whole number") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"{value} is out of range {low:,} .. {high:,}")
        return value

    return parse


def one_line(exc: BaseException | str, limit: int = 500) -> str:
    """``exc``'s message on one line (libpq's are several), at most ``limit`` characters."""
    text = " ".join(str(exc).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def settings_from(args: argparse.Namespace) -> Settings:
    """Settings from the environment with ``--queues`` / ``--concurrency`` overriding them.

    Raises:
        SettingsError: a setting or one of those options is invalid (named in the message).
    """
    overrides, options = {}, {}
    for field, option in (("queues", "--queues"), ("concurrency", "--concurrency")):
        value = getattr(args, field, None)
        if value is not None:
            overrides[field] = value
            options[field] = option
    return load_settings(overrides, options=options)


def resolve_database_url(settings: Settings) -> str:
    if settings.database_url:
        return settings.database_url
    url = embedded.start(settings.embedded_dir)
    # Handlers and child processes find the database the usual way.
    os.environ["SCHEDULER_DATABASE_URL"] = url
    print(f"embedded PostgreSQL: {url}", file=sys.stderr)
    print(f"  query it: {embedded.psql_path()} '{url}'", file=sys.stderr)
    return url


def with_connection(
    settings: Settings, action: Callable[..., Awaitable[Any]], *, transaction: bool = True
) -> Any:
    """Run ``action(conn, store)`` for an operator command in
    :func:`scheduler.operations.session` (bounded connect and statements, schema checked)
    and return its result. Raises the errors of ``session``: ``DatabaseUnavailableError``,
    ``SchemaNotMigratedError``, ``DatabaseError``."""
    # psycopg's warning about a cancelled query would add a second line to our message
    logging.getLogger("psycopg").setLevel(logging.ERROR)
    url = resolve_database_url(settings)
    return asyncio.run(operations.session(url, settings, action, transaction=transaction))


def table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    cells = [[cell(r.get(c)) for c in columns] for r in rows]
    widths = [max([len(c)] + [len(row[i]) for row in cells]) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)) for row in cells]
    return "\n".join(line.rstrip() for line in lines)


def cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, datetime):
        return value.astimezone(UTC).isoformat(timespec="seconds")
    return str(value)
