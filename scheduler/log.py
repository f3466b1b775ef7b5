"""The library's log events, and the logging set-up of the processes the library owns.

Event names are stable snake_case (``leader_elected``, ``job_claimed``, ``job_failed``...) and
carry ids as fields (``job_id``, ``task``, ``schedule``, ``attempt``, ``term``). DSNs are never
logged with their password: use :func:`redact_url`.

Where the events go (decided at each event, by :func:`get_logger`'s loggers):

* **structlog is configured** in the process, by :func:`configure` (the ``scheduler`` CLI, which
  owns its process: JSON lines or a console on stderr) or by the application itself: the
  events follow that configuration like any other structlog logger; the logger factory gets
  the logger name (``scheduler.worker``), so ``structlog.stdlib.LoggerFactory()`` makes them
  stdlib loggers of that name.
* **structlog is not configured** (a library embedded in an application that does not use
  structlog, or has not configured it yet): the events go to the standard :mod:`logging`
  module, to the loggers ``scheduler.worker``, ``scheduler.leader``, ``scheduler.service``...,
  and never to stdout (structlog's unconfigured default would print them there). The
  application's handlers, filters and levels decide; with no handler at all, Python's
  last-resort handler writes warnings and errors to stderr. Each record carries:

  - ``getMessage()``: one readable line, ``job_failed job_id=3 task=mail.send attempt=1
    error="RuntimeError: smtp down"`` (logfmt fields after the event name);
  - ``record.scheduler_event`` (``"job_failed"``) and ``record.scheduler_fields`` (a dict of
    the fields, structlog contextvars included);
  - ``exc_info`` when the event has one (a formatter prints the traceback);
  - the attributes of structlog's ``ProcessorFormatter.wrap_for_formatter``: a
    ``structlog.stdlib.ProcessorFormatter`` on the application's handler renders the event
    with every field as a key (JSON logs get ``"job_id": 3``), as for its own structlog events.

The library never configures logging (no handler, no level, no structlog configuration)
unless :func:`configure` is called.
"""

from __future__ import annotations

import logging
import os
import re
import sys
from types import FrameType
from typing import Any, cast

import structlog
from structlog.typing import EventDict, WrappedLogger

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
    """Configure structlog for a process the library owns (the ``scheduler`` CLI, the
    benchmarks): every structlog event of the process, the library's included, is rendered on
    stderr. An application embedding the library does not call it (see the module docstring).

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


class _Message(dict[str, Any]):
    """A record's ``msg``: the event dict (what ``ProcessorFormatter`` renders), whose ``str``
    is the readable line (what a plain ``logging.Formatter`` prints)."""

    __slots__ = ("line",)
    line: str

    def __str__(self) -> str:
        return self.line


_FIELDS = structlog.processors.LogfmtRenderer(bool_as_flag=False)


def _to_logging(logger: WrappedLogger, method_name: str, event_dict: EventDict) -> Any:
    """Last processor of the stdlib path: the arguments of the ``logging.Logger`` call."""
    event = str(event_dict.get("event", ""))
    fields = {k: v for k, v in event_dict.items() if k != "event" and k != "exc_info"}
    exc_info = event_dict.get("exc_info")
    if exc_info is True:
        exc_info = event_dict["exc_info"] = sys.exc_info()
    message = _Message(event_dict)
    shown = {k: v for k, v in fields.items() if v is not None}
    message.line = f"{event} {_FIELDS(logger, method_name, shown)}" if shown else event
    extra = {
        "scheduler_event": event,
        "scheduler_fields": fields,
        # what ProcessorFormatter.wrap_for_formatter sets: the record is a structlog event
        "_logger": logger,
        "_name": method_name,
    }
    return (message,), {"extra": extra, "exc_info": exc_info or None, "stacklevel": _depth()}


_STRUCTLOG_DIR = os.path.dirname(structlog.__file__) + os.sep


def _depth() -> int:
    """The ``stacklevel`` that makes a record's ``pathname``, ``lineno`` and ``funcName`` the
    library's line that logged, not structlog's call of ``logging``: one for each frame of
    structlog and of this module above the processors (called from structlog's
    ``_process_event``, called from its ``_proxy_to_logger``, which calls ``logging``)."""
    frame: FrameType | None = sys._getframe(3)
    depth = 1
    while frame is not None:
        path = frame.f_code.co_filename
        if path != __file__ and not path.startswith(_STRUCTLOG_DIR):
            break
        frame, depth = frame.f_back, depth + 1
    return depth


class _LoggingBoundLogger(structlog.stdlib.BoundLogger):
    """structlog's stdlib BoundLogger that drops a debug or info event before any processing
    when its logger does not want it (the worker logs two debug events per job)."""

    def debug(self, event: str | None = None, *args: Any, **kw: Any) -> Any:
        if not self._logger.isEnabledFor(logging.DEBUG):
            return None
        return super().debug(event, *args, **kw)

    def info(self, event: str | None = None, *args: Any, **kw: Any) -> Any:
        if not self._logger.isEnabledFor(logging.INFO):
            return None
        return super().info(event, *args, **kw)


_PROCESSORS: list[Any] = [
    structlog.stdlib.filter_by_level,
    structlog.contextvars.merge_contextvars,
    _to_logging,
]


class _Logger:
    """:func:`get_logger`'s logger: each event goes where the module docstring says, decided
    when it is logged (or when :meth:`bind` makes a concrete logger)."""

    __slots__ = ("_logging", "_structlog", "name")

    def __init__(self, name: str):
        self.name = name
        self._structlog: Any = structlog.get_logger(name, component=name)
        self._logging: Any = None

    def _target(self) -> Any:
        if structlog.is_configured():
            return self._structlog
        if self._logging is None:
            self._logging = _LoggingBoundLogger(logging.getLogger(self.name), _PROCESSORS, {})
        return self._logging

    def bind(self, **fields: Any) -> Any:
        """A concrete logger with ``fields``, for the configuration of this moment."""
        return self._target().bind(**fields)

    def debug(self, event: str, **fields: Any) -> Any:
        return self._target().debug(event, **fields)

    def info(self, event: str, **fields: Any) -> Any:
        return self._target().info(event, **fields)

    def warning(self, event: str, **fields: Any) -> Any:
        return self._target().warning(event, **fields)

    def error(self, event: str, **fields: Any) -> Any:
        return self._target().error(event, **fields)

    def critical(self, event: str, **fields: Any) -> Any:
        return self._target().critical(event, **fields)

    def exception(self, event: str, **fields: Any) -> Any:
        return self._target().exception(event, **fields)


def get_logger(name: str) -> structlog.typing.FilteringBoundLogger:
    """The library's logger ``name`` (``scheduler.worker``): structlog's configuration when
    structlog is configured (bound with ``component=name``), else the standard ``logging``
    logger of that name (see the module docstring). Created at import time, it follows a
    configuration made later."""
    return cast("structlog.typing.FilteringBoundLogger", _Logger(name))
