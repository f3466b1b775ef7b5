"""Job headers, and OpenTelemetry tracing of enqueues and attempts.

**Headers** (``jobs.headers``, jsonb, migration 0023): string metadata an enqueue call writes
with its job (``enqueue(..., headers={"tenant": "acme"})``, ``Task.configure(headers=...)``,
``JobSpec(headers=...)``), returned by the claim and given to the handler as
:attr:`scheduler.JobContext.headers` (a read-only mapping). Bounds, checked before any SQL
(:func:`check_headers`): at most :data:`HEADERS_MAX` (64) headers; names 1-128 characters
without whitespace, control characters, NUL or unpaired surrogates; values strings of at most
8,192 characters without NUL or unpaired surrogates; names and values together at most
32,768 characters. Jobs a schedule materialises carry none (``{}``).

**OpenTelemetry** (the ``otel`` extra, ``opentelemetry-api`` at run time), used only when the
application uses it: nothing here imports ``opentelemetry`` unless the application has
imported ``opentelemetry.trace`` and set a tracer provider (an SDK's), so without it an
enqueue or an attempt pays one dictionary look-up.

* Enqueue (every call of :mod:`scheduler.jobs` and :mod:`scheduler.bulk`): a ``PRODUCER``
  span ``send <task>`` (``send`` for a bulk call of several tasks) around the insert, child of
  the current span if any, whose context the global propagator (W3C ``traceparent`` /
  ``tracestate``, and ``baggage`` by default) writes into the job's headers: trace fields
  replace user headers of the same name. Attributes: ``messaging.system = "scheduler"``,
  ``messaging.operation.type / .name = "send"``, ``messaging.destination.name`` (the queue),
  ``messaging.message.id`` (the job id; bulk: ``messaging.batch.message_count``),
  ``scheduler.task``. A failed insert records its exception and status ERROR.
* Attempt (an attempt hook, :mod:`scheduler.hooks`, that a worker installs when it starts
  if the application has imported ``opentelemetry.trace`` by then, else :func:`install`):
  a ``CONSUMER`` span ``process <task>``, the child of the context
  extracted from the job's headers (so of the enqueue's ``send`` span; every attempt of a job
  is a child of it; a job without a trace context, e.g. a cron job, starts a trace), current
  while the handler runs (its logs, spans and enqueues join it). Attributes:
  ``messaging.system``, ``messaging.operation.type / .name = "process"``,
  ``messaging.destination.name``, ``messaging.message.id``, ``scheduler.task``,
  ``scheduler.attempt``, ``scheduler.max_attempts``, ``scheduler.schedule`` (cron jobs) and
  ``scheduler.outcome``: ``succeeded``, ``failed``, ``timeout``, ``cancelled`` (an operator's
  cancel) or ``interrupted`` (a shutdown: the job is released and runs again). A failure
  records the exception (``exception`` event), ``error.type`` and status ERROR.

``messaging.system`` is ``"scheduler"``, not ``"postgresql"``: the messaging semantics
(queues, attempts, retries) are this library's; PostgreSQL is its store, and a database
instrumentation (psycopg's) already reports the statements as ``db.system.name =
"postgresql"`` client spans. Span names use the task, not the queue the conventions
suggest (``process default`` would name every job alike); the queue is
``messaging.destination.name``. The consumer span is a child of the producer span, without a
link to it: the link would repeat the parent.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import json
import re
import sys
from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractContextManager
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Self

from . import hooks
from .errors import InvalidArgumentError
from .limits import exception_text, shown

if TYPE_CHECKING:
    from .job_context import JobContext

HEADERS_MAX = 64  # headers per job
HEADER_NAME_MAX = 128  # characters of a name
HEADER_VALUE_MAX = 8_192  # characters of a value (W3C baggage may take 8,192 bytes)
HEADERS_TOTAL_MAX = 32_768  # characters of every name and value together

EMPTY: Mapping[str, str] = MappingProxyType({})
_BAD_NAME = re.compile(r"[\x00-\x20\x7f-\xa0\u2028\u2029]|[\ud800-\udfff]")
_SURROGATE = re.compile("[\ud800-\udfff]")
SYSTEM = "scheduler"  # messaging.system


# ---- headers --------------------------------------------------------------------------------


def check_headers(headers: Any, what: str = "headers") -> dict[str, str] | None:
    """A job's headers as a new dict (``None`` for none), once checked.

    Raises:
        InvalidArgumentError: ``headers`` is not a mapping (or ``None``), has more than
            :data:`HEADERS_MAX` entries, a name that is not a string of 1-128 characters
            without whitespace, control characters, NUL or unpaired surrogates, a value that
            is not a string of at most 8,192 characters without NUL or unpaired surrogates,
            or more than 32,768 characters in all. The message names the header
            (``headers['x-tenant']``).
    """
    if headers is None:
        return None
    if not isinstance(headers, Mapping):
        raise InvalidArgumentError(
            f"{what} must be a mapping of strings to strings, not {type(headers).__name__} "
            f"{shown(headers)}"
        )
    if len(headers) > HEADERS_MAX:
        raise InvalidArgumentError(f"{what}: {len(headers):,} headers, at most {HEADERS_MAX}")
    checked: dict[str, str] = {}
    total = 0
    for name, value in headers.items():
        if not isinstance(name, str):
            raise InvalidArgumentError(
                f"{what}: the name {shown(name)} is a {type(name).__name__}, not a string"
            )
        where = f"{what}[{shown(name)}]"
        if not 0 < len(name) <= HEADER_NAME_MAX:
            raise InvalidArgumentError(
                f"{where}: a name must be 1-{HEADER_NAME_MAX} characters, not {len(name):,}"
            )
        if _BAD_NAME.search(name):
            raise InvalidArgumentError(
                f"{where}: the name contains whitespace, a control character, NUL or an "
                "unpaired surrogate"
            )
        if not isinstance(value, str):
            raise InvalidArgumentError(
                f"{where} must be a string, not {type(value).__name__} {shown(value)}"
            )
        if len(value) > HEADER_VALUE_MAX:
            raise InvalidArgumentError(
                f"{where} is too long: {len(value):,} characters, at most {HEADER_VALUE_MAX:,}"
            )
        if "\x00" in value:
            raise InvalidArgumentError(
                f"{where} contains NUL (\\x00), which PostgreSQL jsonb cannot store"
            )
        if _SURROGATE.search(value):
            raise InvalidArgumentError(
                f"{where} contains an unpaired surrogate, which is not valid UTF-8"
            )
        total += len(name) + len(value)
        checked[name] = value
    if total > HEADERS_TOTAL_MAX:
        raise InvalidArgumentError(
            f"{what}: {total:,} characters of names and values, at most {HEADERS_TOTAL_MAX:,}"
        )
    return checked or None


def headers_json(headers: Mapping[str, str] | None) -> str | None:
    """The JSON text stored in ``jobs.headers`` (``None``: none, stored as ``{}``)."""
    return json.dumps(dict(headers), separators=(",", ":")) if headers else None


def frozen(headers: Mapping[str, str] | None) -> Mapping[str, str]:
    """A claimed job's headers as the read-only mapping handlers see."""
    return MappingProxyType(dict(headers)) if headers else EMPTY


# ---- OpenTelemetry, when the application uses it -------------------------------------------

_cached: tuple[object, Any] | None = None  # (tracer provider, our tracer from it)


def _tracer() -> Any:
    """Our tracer, or ``None`` when the application has not imported OpenTelemetry or set a
    tracer provider (spans could not be recorded: nothing to do). Imports nothing."""
    global _cached
    trace = sys.modules.get("opentelemetry.trace")
    if trace is None:
        return None
    provider = trace.get_tracer_provider()
    if isinstance(provider, trace.ProxyTracerProvider):
        return None
    cached = _cached
    if cached is None or cached[0] is not provider:
        from . import __version__

        cached = _cached = (provider, provider.get_tracer("scheduler", __version__))
    return cached[1]


class Send:
    """What one enqueue writes: ``headers`` (the user's, plus the trace context when traced)
    and, after the insert, :meth:`sent` tells its span the ids."""

    __slots__ = ("headers", "span")

    def __init__(self, headers: dict[str, str] | None, span: Any = None):
        self.headers = headers
        self.span = span

    def params(self, params: dict[str, Any]) -> dict[str, Any]:
        """``params`` of a single insert with ``headers`` as the JSON text to store."""
        return {**params, "headers": headers_json(self.headers)}

    def sent(self, ids: list[int], created: bool = True) -> None:
        """Record the job id (one job) on the span; ``created`` False: a job holding the
        idempotency key was found, nothing inserted."""
        if self.span is not None and len(ids) == 1:
            self.span.set_attribute("messaging.message.id", str(ids[0]))
            if not created:
                self.span.set_attribute("scheduler.created", False)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        return None


def sending(
    tasks: set[str] | str, queue: str | None, headers: dict[str, str] | None, count: int = 1
) -> AbstractContextManager[Send]:
    """The context of an enqueue of ``count`` jobs of ``tasks`` into ``queue`` (``None``:
    several): a ``send`` span when traced, else nothing but the headers."""
    tracer = _tracer()
    if tracer is None:
        return Send(headers)
    return _traced_send(tracer, tasks, queue, headers, count)


@contextlib.contextmanager
def _traced_send(
    tracer: Any, tasks: set[str] | str, queue: str | None, headers: dict[str, str] | None,
    count: int,
) -> Iterator[Send]:  # fmt: skip
    from opentelemetry import propagate, trace

    task = tasks if isinstance(tasks, str) else next(iter(tasks)) if len(tasks) == 1 else None
    attributes: dict[str, Any] = {
        "messaging.system": SYSTEM, "messaging.operation.type": "send",
        "messaging.operation.name": "send",
    }  # fmt: skip
    if queue is not None:
        attributes["messaging.destination.name"] = queue
    if task is not None:
        attributes["scheduler.task"] = task
    if count != 1:
        attributes["messaging.batch.message_count"] = count
    name = f"send {task}" if task is not None else "send"
    with tracer.start_as_current_span(name, kind=trace.SpanKind.PRODUCER,
                                      attributes=attributes) as span:  # fmt: skip
        carrier = dict(headers or {})
        propagate.inject(carrier)  # the current context: this span's
        yield Send(carrier or None, span)


def _process(ctx: JobContext) -> AbstractContextManager[object]:
    """The attempt hook: a ``process`` span around the attempt when traced."""
    tracer = _tracer()
    if tracer is None:
        return contextlib.nullcontext()
    return _traced_process(tracer, ctx)


def _interrupted() -> bool:
    """Whether this asyncio task is being cancelled by the worker (not the handler's own
    CancelledError); False in a sync handler's thread."""
    try:
        current = asyncio.current_task()
    except RuntimeError:
        return False
    return current is not None and current.cancelling() > 0


@contextlib.contextmanager
def _traced_process(tracer: Any, ctx: JobContext) -> Iterator[None]:
    from opentelemetry import context, propagate, trace
    from opentelemetry.trace import Status, StatusCode

    # the job's own context only: a cron job starts a trace, whatever the worker's task holds
    parent = propagate.extract(ctx.headers, context=context.Context())
    attributes: dict[str, Any] = {
        "messaging.system": SYSTEM, "messaging.operation.type": "process",
        "messaging.operation.name": "process", "messaging.destination.name": ctx.queue,
        "messaging.message.id": str(ctx.job_id), "scheduler.task": ctx.task,
        "scheduler.attempt": ctx.attempt, "scheduler.max_attempts": ctx.max_attempts,
    }  # fmt: skip
    if ctx.schedule_name is not None:
        attributes["scheduler.schedule"] = ctx.schedule_name
    token = context.attach(parent)  # its baggage too, for the handler
    try:
        with tracer.start_as_current_span(
            f"process {ctx.task}", kind=trace.SpanKind.CONSUMER, attributes=attributes,
            record_exception=False, set_status_on_exception=False,
        ) as span:  # fmt: skip
            try:
                yield
            except asyncio.CancelledError:
                if not _interrupted():
                    _failed(span, ctx, asyncio.CancelledError(), Status, StatusCode)
                    raise
                span.set_attribute(
                    "scheduler.outcome", "cancelled" if ctx.cancel_requested else "interrupted"
                )
                raise
            except BaseException as exc:
                _failed(span, ctx, exc, Status, StatusCode)
                raise
            span.set_attribute("scheduler.outcome", "succeeded")
    finally:
        context.detach(token)


def _failed(span: Any, ctx: JobContext, exc: BaseException, status: Any, code: Any) -> None:
    """Record a failed attempt on its span; never raises (a hostile exception included)."""
    outcome = "timeout" if isinstance(exc, TimeoutError) else "failed"
    span.set_attribute("scheduler.outcome", outcome)
    span.set_attribute("error.type", type(exc).__qualname__)
    span.set_status(status(code.ERROR, exception_text(exc, 500)))
    with contextlib.suppress(Exception):  # an exception whose str() raises
        span.record_exception(exc)


_removers: list[Callable[[], None]] = []


def install() -> bool:
    """Add the attempt hook that traces attempts (once per process). A worker does this
    itself when it starts if the application has imported ``opentelemetry.trace`` by then
    (:func:`install_if_used`); call it yourself when OpenTelemetry is set up after the replica
    starts, or before adding your own attempt hooks to have the ``process`` span around them
    (hooks are entered in the order they were added). Returns False, and adds nothing, when
    ``opentelemetry-api`` is not installed."""
    if _removers:
        return True
    try:
        found = importlib.util.find_spec("opentelemetry") is not None
    except (ImportError, ValueError):
        found = False
    if found:
        _removers.append(hooks.add_attempt_hook(_process))
    return found


def install_if_used() -> bool:
    """:func:`install` when the application has imported ``opentelemetry.trace`` (a process
    where opentelemetry-api is only installed, as another package's dependency, then pays
    nothing per attempt: the hook's ``ExitStack`` costs a few microseconds); what every
    worker calls when it starts."""
    return install() if "opentelemetry.trace" in sys.modules else bool(_removers)


def uninstall() -> None:
    """Remove the hook :func:`install` added (tests)."""
    while _removers:
        _removers.pop()()
