"""Job headers and OpenTelemetry (scheduler.tracing) with a real worker and the SDK's
in-memory exporter: the attempt's CONSUMER span is the child of the enqueue's PRODUCER span,
in the same trace; a failure records its exception; headers round-trip to ``ctx.headers``;
hostile headers are refused before any SQL; the enqueue counter; a Sentry-style reporter
registered as a failure hook."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from opentelemetry.util._once import Once

from scheduler import (
    JobContext,
    JobSpec,
    enqueue,
    enqueue_many,
    metrics,
    schedule_many,
    task,
    tracing,
)
from scheduler.errors import InvalidArgumentError
from scheduler.hooks import add_failure_hook
from scheduler.store import Store
from tests.integration.test_worker import _run_worker_until

SEEN: dict[int, dict[str, Any]] = {}  # job id -> ctx.headers and current span its handler saw


def _saw(ctx: JobContext) -> None:
    SEEN[ctx.job_id] = {"headers": dict(ctx.headers),
                        "span_id": trace.get_current_span().get_span_context().span_id}  # fmt: skip


@task(name="test_tracing.sync_ok")
def sync_ok(ctx: JobContext, n: int) -> None:
    _saw(ctx)


@task(name="test_tracing.async_ok")
async def async_ok(ctx: JobContext) -> None:
    await asyncio.sleep(0)
    _saw(ctx)


@task(name="test_tracing.boom", max_attempts=1)
async def boom(ctx: JobContext) -> None:
    raise KeyError("customer 9")


@task(name="test_tracing.cron_like")
def cron_like(ctx: JobContext) -> None:
    _saw(ctx)


def _reset_provider() -> None:
    # opentelemetry-api sets its global provider once per process; its own tests reset it so
    # (opentelemetry.test.globals_test), which lets the rest of the suite run untraced
    trace._TRACER_PROVIDER_SET_ONCE = Once()  # type: ignore[attr-defined]
    trace._TRACER_PROVIDER = None  # type: ignore[attr-defined]


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    _reset_provider()
    trace.set_tracer_provider(provider)
    SEEN.clear()
    try:
        yield exporter
    finally:
        _reset_provider()
        provider.shutdown()


def _done(states: str = "'pending', 'running'") -> Any:
    async def finished(c: psycopg.AsyncConnection[Any]) -> bool:
        cur = await c.execute(f"SELECT count(*) FROM scheduler.jobs WHERE state IN ({states})")
        return (await cur.fetchone())[0] == 0

    return finished


def _one(found: list[ReadableSpan], name: str) -> ReadableSpan:
    (span,) = [s for s in found if s.name == name]
    return span


def test_the_attempt_span_is_the_child_of_the_enqueue_span(
    db: psycopg.Connection, db_url: str, spans: InMemorySpanExporter
) -> None:
    tracer = trace.get_tracer("test")
    with tracer.start_as_current_span("POST /orders") as request:
        sync_id = enqueue(sync_ok, args={"n": 1}, headers={"tenant": "acme"}, connection=db)
        second_id = sync_ok.configure(connection=db).defer(n=2)  # its own send span
        async_id = async_ok.configure(connection=db, headers={"x-from": "handle"}).defer()
    # a job written without an enqueue call (as a schedule's job is): no trace context
    cron_id = asyncio.run(_insert_plain(db_url, "test_tracing.cron_like"))
    asyncio.run(_run_worker_until(db_url, _done(), timeout=10))

    found = spans.get_finished_spans()
    trace_id = request.get_span_context().trace_id
    sends = [s for s in found if s.kind is SpanKind.PRODUCER]
    processes = {s.attributes["messaging.message.id"]: s for s in found if s.kind is SpanKind.CONSUMER}
    assert len(sends) == 3 and len(processes) == 4
    for send in sends:  # children of the request
        assert send.parent is not None and send.parent.span_id == request.get_span_context().span_id
        assert send.context.trace_id == trace_id
        assert send.attributes["messaging.system"] == "scheduler"
        assert send.attributes["messaging.operation.type"] == "send"
    send = next(s for s in sends if s.attributes["messaging.message.id"] == str(sync_id))
    assert send.name == "send test_tracing.sync_ok"
    assert send.attributes["messaging.destination.name"] == "default"
    process = processes[str(sync_id)]
    assert process.name == "process test_tracing.sync_ok"
    assert process.parent is not None and process.parent.span_id == send.context.span_id
    assert process.context.trace_id == trace_id
    assert dict(process.attributes) == {
        "messaging.system": "scheduler", "messaging.operation.type": "process",
        "messaging.operation.name": "process", "messaging.destination.name": "default",
        "messaging.message.id": str(sync_id), "scheduler.task": "test_tracing.sync_ok",
        "scheduler.attempt": 1, "scheduler.max_attempts": 20, "scheduler.outcome": "succeeded",
    }  # fmt: skip
    assert process.status.status_code is StatusCode.UNSET
    # the handler ran inside the process span (sync: in its thread), and saw the headers
    assert SEEN[sync_id]["span_id"] == process.context.span_id
    headers = SEEN[sync_id]["headers"]
    assert set(headers) == {"tenant", "traceparent"} and headers["tenant"] == "acme"
    assert headers["traceparent"].startswith(f"00-{trace_id:032x}-{send.context.span_id:016x}-")
    assert processes[str(second_id)].parent.span_id != send.context.span_id  # its own send
    assert processes[str(second_id)].context.trace_id == trace_id
    async_process = processes[str(async_id)]
    assert SEEN[async_id]["span_id"] == async_process.context.span_id
    assert SEEN[async_id]["headers"]["x-from"] == "handle"
    assert async_process.context.trace_id == trace_id
    # the job without headers starts its own trace
    assert SEEN[cron_id]["headers"] == {}
    assert processes[str(cron_id)].parent is None
    assert processes[str(cron_id)].context.trace_id != trace_id


async def _insert_plain(url: str, task_name: str) -> int:
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        return await Store("scheduler").insert_job(conn, {
            "queue": "default", "task": task_name, "args": "{}", "priority": 0, "run_at": None,
            "delay_s": 0.0, "max_attempts": 1, "backoff_base_s": 1.0, "backoff_max_s": 1.0,
            "backoff_jitter": 0.0, "idempotency_key": None, "concurrency_key": None})  # fmt: skip


def test_a_failed_attempt_records_its_exception(
    db: psycopg.Connection, db_url: str, spans: InMemorySpanExporter
) -> None:
    enqueue(boom, connection=db)
    asyncio.run(_run_worker_until(db_url, _done(), timeout=10))
    process = _one(spans.get_finished_spans(), "process test_tracing.boom")
    assert process.status.status_code is StatusCode.ERROR
    assert process.status.description == "KeyError: 'customer 9'"
    assert process.attributes["scheduler.outcome"] == "failed"
    assert process.attributes["error.type"] == "KeyError"
    (event,) = process.events
    assert event.name == "exception" and event.attributes["exception.type"] == "KeyError"
    assert "customer 9" in event.attributes["exception.message"]


def test_a_bulk_enqueue_is_one_send_span_whose_context_every_job_carries(
    db: psycopg.Connection, spans: InMemorySpanExporter
) -> None:
    ids = enqueue_many(sync_ok, [{"n": 1}, {"n": 2}], headers={"batch": "7"}, connection=db)
    ids += schedule_many([JobSpec(async_ok, headers={"one": "1"}), JobSpec(cron_like)],
                         connection=db)  # fmt: skip
    first, second = [s for s in spans.get_finished_spans() if s.kind is SpanKind.PRODUCER]
    assert first.name == "send test_tracing.sync_ok"
    assert first.attributes["messaging.batch.message_count"] == 2
    assert second.name == "send" and "scheduler.task" not in second.attributes
    rows = dict(db.execute("SELECT id, headers FROM scheduler.jobs").fetchall())
    parent = f"-{first.context.span_id:016x}-"
    assert rows[ids[0]]["batch"] == "7" and parent in rows[ids[0]]["traceparent"]
    assert rows[ids[1]] == rows[ids[0]]
    assert rows[ids[2]]["one"] == "1" and f"-{second.context.span_id:016x}-" in (
        rows[ids[2]]["traceparent"]
    )
    assert set(rows[ids[3]]) == {"traceparent"}


def test_headers_round_trip_without_tracing(db: psycopg.Connection, db_url: str) -> None:
    SEEN.clear()
    sync_id = enqueue(sync_ok, args={"n": 1}, headers={"tenant": "ä", "empty": ""}, connection=db)
    key = {"idempotency_key": "k1", "on_conflict": "replace"}
    enqueue(async_ok, headers={"v": "1"}, **key, connection=db)
    enqueue(async_ok, headers={"v": "2"}, **key, connection=db)  # replaces the headers
    enqueue_many(cron_like, [{}], headers={"bulk": 'y"e\\s\t✓\n'}, connection=db)  # COPY
    rows = db.execute("SELECT task, headers FROM scheduler.jobs ORDER BY id").fetchall()
    assert rows == [("test_tracing.sync_ok", {"tenant": "ä", "empty": ""}),
                    ("test_tracing.async_ok", {"v": "2"}),
                    ("test_tracing.cron_like", {"bulk": 'y"e\\s\t✓\n'})]  # fmt: skip
    asyncio.run(_run_worker_until(db_url, _done(), timeout=10))
    assert sorted((s["headers"] for s in SEEN.values()), key=str) == sorted((h for _, h in rows), key=str)
    assert SEEN[sync_id]["span_id"] == 0  # no tracer provider: no span


def test_ctx_headers_are_read_only() -> None:
    ctx = JobContext(1, "t", 1, 1, "default", headers=tracing.frozen({"a": "b"}))
    with pytest.raises(TypeError):
        ctx.headers["a"] = "c"  # type: ignore[index]
    assert JobContext(1, "t", 1, 1, "default").headers == {}


HOSTILE: list[tuple[Any, str]] = [
    ("tenant=acme", "headers must be a mapping"),
    ({f"h{i}": "v" for i in range(65)}, "65 headers, at most 64"),
    ({"": "v"}, "headers['']: a name must be 1-128 characters"),
    ({"x" * 129: "v"}, "a name must be 1-128 characters, not 129"),
    ({"bad name": "v"}, "headers['bad name']: the name contains whitespace"),
    ({"nul\x00": "v"}, "headers['nul\\x00']: the name contains"),
    ({"sur\ud800": "v"}, "the name contains"),
    ({1: "v"}, "the name 1 is a int"),
    ({"tenant": 5}, "headers['tenant'] must be a string, not int"),
    ({"tenant": None}, "headers['tenant'] must be a string, not NoneType"),
    ({"tenant": "a\x00b"}, "headers['tenant'] contains NUL"),
    ({"tenant": "\udc80"}, "headers['tenant'] contains an unpaired surrogate"),
    ({"tenant": "v" * 8193}, "headers['tenant'] is too long: 8,193 characters"),
    ({f"h{i}": "v" * 8000 for i in range(5)}, "characters of names and values, at most 32,768"),
]  # fmt: skip


def test_hostile_headers_are_refused_before_any_sql(db: psycopg.Connection) -> None:
    with db.transaction():  # the caller's transaction stays usable
        for headers, message in HOSTILE:
            with pytest.raises(InvalidArgumentError) as caught:
                enqueue(sync_ok, args={"n": 1}, headers=headers, connection=db)
            assert message in str(caught.value)
            with pytest.raises(InvalidArgumentError, match="headers"):
                sync_ok.configure(headers=headers, connection=db).defer(n=1)
            with pytest.raises(InvalidArgumentError, match="headers"):
                sync_ok.configure(headers=headers, connection=db).defer_many([{"n": 1}])
            with pytest.raises(InvalidArgumentError, match=r"JobSpec\.headers"):
                JobSpec(sync_ok, args={"n": 1}, headers=headers)
        assert db.execute("SELECT count(*) FROM scheduler.jobs").fetchone() == (0,)


def test_the_enqueue_counter_counts_jobs_inserted(db: psycopg.Connection) -> None:
    def count(task_name: str) -> float:
        value = metrics.REGISTRY.get_sample_value(
            "scheduler_jobs_enqueued_total", {"queue": "default", "task": task_name}
        )
        return value or 0.0

    before = count("test_tracing.sync_ok"), count("test_tracing.async_ok")
    enqueue(sync_ok, args={"n": 1}, connection=db)
    enqueue_many(sync_ok, [{"n": 2}, {"n": 3}], connection=db)
    enqueue(async_ok, idempotency_key="once", connection=db)
    enqueue(async_ok, idempotency_key="once", connection=db)  # found: nothing inserted
    with pytest.raises(InvalidArgumentError):
        enqueue(async_ok, headers={"x": 1}, connection=db)  # type: ignore[dict-item]
    assert (count("test_tracing.sync_ok") - before[0], count("test_tracing.async_ok") - before[1]) == (3, 1)


class FakeReporter:
    """What a Sentry-style SDK offers: capture an exception with tags."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []

    def capture_exception(self, exc: BaseException, tags: dict[str, Any]) -> None:
        self.events.append({"exception": exc, "tags": tags})


def test_a_sentry_style_reporter_as_failure_hook(db: psycopg.Connection, db_url: str) -> None:
    reporter = FakeReporter()

    def report(ctx: JobContext, exc: BaseException) -> None:
        reporter.capture_exception(exc, tags={
            "job_id": ctx.job_id, "task": ctx.task, "attempt": ctx.attempt, "queue": ctx.queue,
            "tenant": ctx.headers.get("tenant"), "traceparent": ctx.headers.get("traceparent")})  # fmt: skip

    remove = add_failure_hook(report)
    try:
        job_id = enqueue(boom, headers={"tenant": "acme"}, connection=db)
        enqueue(async_ok, connection=db)  # succeeds: not reported
        asyncio.run(_run_worker_until(db_url, _done(), timeout=10))
    finally:
        remove()
    (event,) = reporter.events
    assert isinstance(event["exception"], KeyError)
    assert event["tags"] == {"job_id": job_id, "task": "test_tracing.boom", "attempt": 1,
                             "queue": "default", "tenant": "acme", "traceparent": None}  # fmt: skip


def test_nothing_imports_opentelemetry_unless_the_application_does() -> None:
    code = (
        "import sys\n"
        "import scheduler, scheduler.tracing as t\n"
        "from scheduler import JobContext\n"
        "with t.sending('x', 'default', {'a': 'b'}) as send: assert send.headers == {'a': 'b'}\n"
        "with t._process(JobContext(1, 'x', 1, 1, 'default')): pass\n"
        "assert not any(m.startswith('opentelemetry') for m in sys.modules), sorted(sys.modules)\n"
        "assert t.install_if_used() is False and not t._removers  # installed, not used\n"
        "sys.modules['opentelemetry'] = None  # as if not installed\n"
        "assert t.install() is False\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
