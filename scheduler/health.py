"""The optional HTTP port of a replica: ``/metrics``, ``/healthz`` and ``/readyz``.

``SCHEDULER_METRICS_PORT`` (unset: no server) and ``SCHEDULER_METRICS_HOST`` (default
``127.0.0.1``, so nothing is exposed beyond the host unless configured):

* ``GET /metrics``: the registry of :mod:`scheduler.metrics`, plus the queue gauges read from
  the database here (at most once per :data:`scheduler.probes.CACHE_S`); or, when the metrics are exposed in
  another registry (``SCHEDULER_METRICS_REGISTRY=default``,
  :func:`scheduler.metrics.use_registry`), that registry, where the replica registers its
  :class:`~scheduler.probes.QueueGauges`.
* ``GET /healthz`` (liveness; never touches the database): 200 ``ok: loop beat 0.4 s ago``
  while the replica's event loop turns (a beat every second) and the ``health`` callback (the
  supervisor of the replica's loops) reports nothing; else 503 with one line:
  ``stalled: event loop beat 12.0 s ago`` (older than ``STALL_S``, 10 s: a blocked loop), or
  what ``health`` reports (``loop scheduler-complete crashed 5 times in 60 s``).
* ``GET /readyz`` (readiness): 200 ``ready`` when ``/healthz`` is 200, the database answers
  and every shipped migration is applied; else 503 with one line: the ``/healthz`` reason,
  ``database unreachable: connection refused``, ``database too slow: no answer within 2 s``,
  ``database error: ...`` or ``migrations not applied: 0008_robustness``. Never a libpq hint
  line, never a password (:func:`scheduler.log.redact_text`).
* Anything else: 404; a method other than GET: 405; a malformed request line: 400.

Bounds, so that no client (a flood of probes, idle or slow sockets) exhausts the replica or
the database:

* A connection lives at most ``REQUEST_TIMEOUT_S`` (5 s) from accept to the last byte of the
  answer, whatever the client does (sends nothing, sends a byte a second, never reads); then
  the server closes it. Request line and headers: at most ``HEAD_LIMIT`` (8 KiB). One request
  per connection (``Connection: close``).
* At most ``MAX_CONNECTIONS`` (256) open connections; one more is answered 503 at once.
* Threads: the server's own (``scheduler-metrics``, an asyncio loop) and ``WORKER_THREADS``
  (2) for the blocking work (database probes, rendering ``/metrics``), however many
  connections are open: an idle socket holds no thread and does not delay ``/healthz``.
* Database: one long-lived session, 2 s timeouts, answers reused for 1 s (see
  :mod:`scheduler.probes`): a flood of probes costs about one readiness check and one queue
  query a second.

Why not a server library: prometheus-client's ``start_http_server`` (wsgiref) and
``http.server`` spend a thread per connection with no timeout, and capping those threads still
lets a handful of idle sockets take every slot and fail the liveness probe; an ASGI or aiohttp
server is a new dependency for three GET endpoints. Asyncio streams of the standard library
make idle sockets cost no thread, and the server's loop is not the replica's, so a blocked
replica loop is reported (``stalled``) instead of the probe just timing out. Only the request
line and the ``Accept`` header are read; the exposition itself is prometheus-client's.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from http import HTTPStatus
from typing import Any

import psycopg
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder

from .limits import exception_text
from .log import get_logger
from .metrics import REGISTRY
from .probes import _ProbeSession, _QueueCollector, _status_queues, one_line
from .store import Store

log = get_logger("scheduler.health")

STALL_S = 10.0
REQUEST_TIMEOUT_S = 5.0  # a connection's whole life, from accept to the answer's last byte
MAX_CONNECTIONS = 256  # open at once; one more is answered 503 at once
WORKER_THREADS = 2  # run the database probes and render /metrics, off the server's loop
HEAD_LIMIT = 8192  # bytes of request line and headers

_TEXT = "text/plain; charset=utf-8"


class HealthServer:
    """``/metrics``, ``/healthz`` and ``/readyz`` on ``host:port``, served by a thread of its
    own (the answers and the bounds: see the module docstring). The address is bound here.

    Args:
        url: libpq URL for the readiness check and the queue gauges.
        store: statements for the schema.
        host: address to bind (``127.0.0.1``; one with ``:`` is IPv6).
        port: TCP port; 0 picks a free one (see :attr:`port`).
        health: ``None`` while the replica's supervised loops are healthy, else why not;
            called by ``/healthz`` and ``/readyz`` from the server's thread, so it must be
            quick and thread-safe (default: none, only the loop beat counts).
        replica: the replica id, in the session's ``application_name``.
        timeout_s: a connection's whole life in seconds (default ``REQUEST_TIMEOUT_S``, 5).
        registry: what ``/metrics`` serves, as it is (an application's registry the metrics
            are exposed in, with their :class:`~scheduler.probes.QueueGauges`); default: the
            service's own registry and the queue gauges, read through this server's session.

    Raises:
        OSError: the address cannot be bound (port in use, unknown host).
    """

    def __init__(
        self,
        url: str,
        store: Store,
        host: str,
        port: int,
        *,
        health: Callable[[], str | None] | None = None,
        replica: str | None = None,
        timeout_s: float = REQUEST_TIMEOUT_S,
        registry: CollectorRegistry | None = None,
    ):
        self.store, self.timeout_s, self._health = store, timeout_s, health
        self.last_beat = time.monotonic()
        name = one_line(f"scheduler metrics {replica}" if replica else "scheduler metrics", 63)
        self._db = _ProbeSession(url, store, name)
        if registry is None:
            registry = CollectorRegistry(auto_describe=False)  # this server's: no global state
            registry.register(REGISTRY)
            registry.register(_QueueCollector(self._queue_rows))
        self._registry = registry
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self._sock = socket.create_server((host, port), family=family)
        self.port: int = self._sock.getsockname()[1]
        self._workers = ThreadPoolExecutor(WORKER_THREADS, "scheduler-metrics-worker")
        self._thread = threading.Thread(target=self._serve, name="scheduler-metrics", daemon=True)
        self._started = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None
        self._open = 0  # connections open (touched by the server's loop only)

    def start(self) -> None:
        self._thread.start()
        self._started.wait(5)
        log.info("metrics_serving", host=self._sock.getsockname()[0], port=self.port)

    def stop(self) -> None:
        """Stop serving and close the database session (also without :meth:`start`, twice)."""
        if self._loop is not None and self._stopping is not None and self._thread.is_alive():
            with contextlib.suppress(RuntimeError):  # the loop just closed
                self._loop.call_soon_threadsafe(self._stopping.set)
            self._thread.join(timeout=5)
        self._sock.close()
        self._workers.shutdown(wait=False, cancel_futures=True)
        self._db.close()

    def beat(self) -> None:
        """Called by the event loop every second (liveness)."""
        self.last_beat = time.monotonic()

    def unhealthy(self, now: float | None = None) -> str | None:
        """``None`` while the loop beats and ``health`` reports nothing, else why not (one line).

        Args:
            now: ``time.monotonic()`` seconds (default: the clock).
        """
        age = (time.monotonic() if now is None else now) - self.last_beat
        if age >= STALL_S:
            return f"stalled: event loop beat {age:.1f} s ago"
        if self._health is None:
            return None
        try:
            problem = self._health()
        except Exception as exc:  # noqa: BLE001 - the supervisor's bug is an unhealthy replica
            return one_line(f"health check failed: {exception_text(exc, 200)}")
        return (one_line(str(problem)) or "unhealthy") if problem else None

    def not_ready(self) -> str | None:
        """``None`` when healthy, the database answers and is fully migrated, else why not
        (one line). Blocks up to about 4 s on a slow database; reuses answers ``probes.CACHE_S``."""
        problem = self.unhealthy()
        if problem is None:
            missing, problem = self._db.read("readiness", self._pending)
            if problem is None and missing:
                problem = f"migrations not applied: {', '.join(missing)}"
        return problem

    def _pending(self, conn: psycopg.Connection[Any]) -> list[str]:
        return [f"{m.version:04d}_{m.name}" for m in self.store.pending_migrations_sync(conn)]

    def _queue_rows(self) -> list[tuple[Any, ...]]:
        rows, _ = self._db.read("queues", _status_queues(self.store))
        return rows or []

    # ---- the server's thread ---------------------------------------------------------------

    def _serve(self) -> None:
        try:
            asyncio.run(self._main())
        finally:
            self._started.set()

    async def _main(self) -> None:
        self._loop, self._stopping = asyncio.get_running_loop(), asyncio.Event()
        # backlog: a burst of MAX_CONNECTIONS is queued by the kernel at once; with asyncio's
        # default (100) a busy loop left the rest to SYN retransmits (1, 2, 4 s late)
        server = await asyncio.start_server(
            self._connection, sock=self._sock, limit=HEAD_LIMIT, backlog=MAX_CONNECTIONS
        )
        self._started.set()
        await self._stopping.wait()
        server.close()  # connections under way are cancelled by asyncio.run

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._open >= MAX_CONNECTIONS:
            writer.write(_response(503, f"busy: {MAX_CONNECTIONS} connections open"))
            writer.close()  # after the answer is flushed, or at once if it cannot be
            return
        self._open += 1
        answered = False
        try:
            async with asyncio.timeout(self.timeout_s):
                head = await reader.readuntil(b"\r\n\r\n")
                writer.write(await self._answer(head))
                await writer.drain()
                answered = True
        except (TimeoutError, OSError, EOFError, asyncio.LimitOverrunError):
            pass  # idle, too slow, gone, or a head over HEAD_LIMIT: closed without an answer
        finally:
            self._open -= 1
            if answered:
                writer.close()
            else:
                writer.transport.abort()

    async def _answer(self, head: bytes) -> bytes:
        try:
            method, path, accept = _request(head)
        except ValueError:
            return _response(400, "bad request")
        if method != "GET":
            return _response(405, "only GET")
        loop = asyncio.get_running_loop()
        try:
            if path == "/healthz":
                problem = self.unhealthy()
                ok = f"ok: loop beat {time.monotonic() - self.last_beat:.1f} s ago"
                return _response(503 if problem else 200, problem or ok)
            if path == "/readyz":
                problem = await loop.run_in_executor(self._workers, self.not_ready)
                return _response(503 if problem else 200, problem or "ready")
            if path == "/metrics":
                encoder, content_type = choose_encoder(accept)
                body = await loop.run_in_executor(self._workers, encoder, self._registry)
                return _response(200, body, content_type)
        except Exception as exc:  # noqa: BLE001 - a bug answers 500 and is logged, once
            log.error("metrics_request_failed", path=path, error=exception_text(exc, 300))
            return _response(500, "internal error")
        return _response(404, "not found: /metrics, /healthz, /readyz")


def _request(head: bytes) -> tuple[str, str, str]:
    """``(method, path without the query, Accept header)`` of a request head.

    Raises:
        ValueError: not an HTTP request line.
    """
    lines = head.decode("latin-1").split("\r\n")
    method, target, version = lines[0].split(" ")
    if not version.startswith("HTTP/"):
        raise ValueError(version)
    accept = ""
    for line in lines[1:]:
        name, _, value = line.partition(":")
        if name.strip().lower() == "accept":
            accept = value.strip()
    return method, target.split("?", 1)[0], accept


def _response(code: int, body: str | bytes, content_type: str = _TEXT) -> bytes:
    data = body if isinstance(body, bytes) else body.encode("utf-8", "replace")
    allow = "Allow: GET\r\n" if code == 405 else ""
    head = (
        f"HTTP/1.1 {code} {HTTPStatus(code).phrase}\r\nContent-Type: {content_type}\r\n"
        f"Content-Length: {len(data)}\r\n{allow}Connection: close\r\n\r\n"
    )
    return head.encode("latin-1") + data
