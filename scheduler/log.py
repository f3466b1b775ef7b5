"""Structured logging with structlog: JSON lines in production, readable console in a terminal.

Event names are stable snake_case (``leader_elected``, ``job_claimed``, ``job_failed``...) and
carry ids as fields (``job_id``, ``task``, ``schedule``, ``attempt``, ``term``). DSNs are never
logged with their password: use :func:`redact_url`.
"""

from __future__ import annotations

import logging
import re
import sys
from typing import cast

import structlog

# userinfo of a URI: everything up to the LAST "@" of the token (a password may hold "@")
_PASSWORD_IN_URL = re.compile(r"(://[^:/@\s]*:)\S*@")
# key=value (password='a b'), and ?password=... in a URI's query
_PASSWORD_IN_DSN = re.compile(r"(password\s*=\s*)('(?:[^'\\]|\\.)*'?|[^\s&]+)", re.IGNORECASE)


def redact_url(url: str) -> str:
    """``url`` (or any text holding URLs or key=value DSNs) with every password replaced by
    ``***``: ``postgresql://user:***@host/db``, ``password=***``, ``?password=***``."""
    return _PASSWORD_IN_DSN.sub(r"\1***", _PASSWORD_IN_URL.sub(r"\1***@", url))


def _secrets_of(url: str) -> list[str]:
    """The password-like parts of ``url``, found without parsing it (it may be malformed)."""
    found = []
    if "://" in url and "@" in url:
        userinfo = url.split("://", 1)[1].rsplit("@", 1)[0]
        if ":" in userinfo:
            found.append(userinfo.split(":", 1)[1])
    for match in _PASSWORD_IN_DSN.finditer(url):
        found.append(match.group(2).strip("'"))
    return [s for s in found if s]


def redact_text(text: str, url: str) -> str:
    """``text`` (an error message about ``url``, e.g. from libpq) with the password of ``url``
    masked, also where the message quotes only a piece of a malformed URL."""
    secrets = _secrets_of(url)
    text = redact_url(text)

    def quoted(match: re.Match[str]) -> str:
        piece = match.group(1)
        return '"***"' if piece and any(piece in s or s in piece for s in secrets) else match[0]

    text = re.sub(r'"([^"]*)"', quoted, text)
    for secret in secrets:
        if len(secret) >= 3:  # a shorter one would mask every such letter of the message
            text = text.replace(secret, "***")
    return text


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
    # structlog types get_logger as Any: it returns a lazy proxy of the configured wrapper class
    return cast("structlog.typing.FilteringBoundLogger", structlog.get_logger(component=name))
