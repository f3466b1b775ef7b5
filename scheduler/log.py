"""Structured logging with structlog: JSON lines in production, readable console in a terminal.

Event names are stable snake_case (``leader_elected``, ``job_claimed``, ``job_failed``...) and
carry ids as fields (``job_id``, ``task``, ``schedule``, ``attempt``, ``term``). DSNs are never
logged with their password: use :func:`redact_url`.
"""

from __future__ import annotations

import logging
import re
import sys

import structlog

_PASSWORD_IN_URL = re.compile(r"(://[^:/@]+:)[^@]*@")
_PASSWORD_IN_DSN = re.compile(r"(password\s*=\s*)(\S+)", re.IGNORECASE)


def redact_url(url: str) -> str:
    """``url`` with any password replaced by ``***`` (URL and key=value forms)."""
    return _PASSWORD_IN_DSN.sub(r"\1***", _PASSWORD_IN_URL.sub(r"\1***@", url))


def configure(fmt: str = "auto", level: str = "info") -> None:
    """Configure structlog once for the process.

    Args:
        fmt: ``"json"``, ``"console"``, or ``"auto"`` (console when stderr is a terminal).
        level: minimum level name (``debug``, ``info``, ``warning``, ``error``).
    """
    use_console = fmt == "console" or (fmt == "auto" and sys.stderr.isatty())
    renderer: structlog.typing.Processor = (
        structlog.dev.ConsoleRenderer() if use_console else structlog.processors.JSONRenderer()
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info if not use_console else structlog.dev.set_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping().get(level.upper(), logging.INFO)
        ),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=False,
    )


def get_logger(name: str) -> structlog.typing.FilteringBoundLogger:
    """A lazy logger bound with ``component=name`` (it follows :func:`configure`, even when
    created at import time, before configuration)."""
    return structlog.get_logger(component=name)
