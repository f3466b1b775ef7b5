"""Benchmarks (a script, not a test): ``python -m bench.run [--pg 18|15] [--quick] [--only W1,W4]``.

Run from the repository root in the project's virtualenv; the peers come from the optional
``bench`` extra (``pip install -e '.[bench]'``) and are skipped when absent. Starts its own
PostgreSQL of the major given by ``--pg`` (bench/servers.py: over TCP, fsync on; or uses
``SCHEDULER_BENCH_DSN``, a superuser URL) and prints one table, every figure next to a
reference measured in the same run. Our replica runs with default settings (log level
``info``, ``concurrency`` 100) unless a line says otherwise.

* W1 drain: 20,000 no-op jobs, one worker, jobs/s until all finished (3 repetitions, median
  [range]), async and sync handlers. References: PgQueuer at its best batch size of
  10/50/100/200 in this run, and the raw SQL of our claim + complete statements in batches
  of 100 driven by pgbench (no Python) with 1 and 2 clients.
* W2 enqueue: 5,000 single enqueues from one client (jobs/s, p50/p99 ms); bulk 100,000; with
  ``{}`` and with realistic arguments. Reference: a bare ``INSERT`` + commit in the same loop.
* W3 delayed lateness: 200 jobs spread over 10 s while a worker idles, default settings.
* W4 cron: an every-second schedule, 2 replicas, 30 s; then again with the leader SIGKILLed
  at 10 s: missing and duplicate fire times, lateness.
* W5 scale: claim latency with 1M due jobs, and with 1M future jobs and a trickle of due ones;
  start lateness of a trickle of due jobs run by a real replica beside 1M future jobs.
* W6 idle: statements per second per idle replica (1 and 3 replicas), RSS while draining.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys

import psycopg

from scheduler import log
from scheduler.settings import Settings

from . import cluster, peers, scale, servers, workloads

ALL = ("W1", "W2", "W3", "W4", "W5", "W6")


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    return values[min(len(values) - 1, int(len(values) * q))]


def lateness(values: list[float]) -> str:
    return (
        f"p50 {pct(values, 0.5):,.1f}  p95 {pct(values, 0.95):,.1f}  "
        f"p99 {pct(values, 0.99):,.1f}  max {values[-1] if values else float('nan'):,.1f} ms"
    )


def row(label: str, result: str) -> None:
    print(f"{label:<50} {result}", flush=True)


def rate(values: list[float]) -> str:
    return f"{statistics.median(values):>9,.0f} jobs/s [{min(values):,.0f}-{max(values):,.0f}]"


def w1(dsn: str, n: int, reps: int, have: dict[str, str]) -> None:
    ours = [workloads.w1_drain(dsn, n) for _ in range(reps)]
    sync = [workloads.w1_drain(dsn, n, task="bench.sync_noop") for _ in range(reps)]
    med = statistics.median(ours)
    row("W1 drain: scheduler, async handlers", rate(ours))
    row("W1 drain: scheduler, sync handlers", rate(sync))
    row("   sync / async", f"{statistics.median(sync) / med:>9.2f}x")
    for conc in (10, 1000):
        row(f"W1 drain: async, concurrency {conc} (not default)",
            rate([workloads.w1_drain(dsn, n, concurrency=conc)]))  # fmt: skip
        row(f"W1 drain: sync, concurrency {conc} (not default)",
            rate([workloads.w1_drain(dsn, n, concurrency=conc, task="bench.sync_noop")]))  # fmt: skip
    if "pgqueuer" in have:
        tries = {b: peers.pgqueuer_drain(dsn, n, batch_size=b) for b in (10, 50, 100, 200)}
        best = max(tries, key=tries.__getitem__)
        row("W1 drain: PgQueuer batch 10/50/100/200 (1 run each)",
            " / ".join(f"{v:,.0f}" for v in tries.values()) + " jobs/s")  # fmt: skip
        pgq = [tries[best]] + [
            peers.pgqueuer_drain(dsn, n, batch_size=best) for _ in range(reps - 1)
        ]
        row(f"W1 drain: PgQueuer at its best batch ({best})", rate(pgq))
        row("   scheduler (async) / PgQueuer", f"{med / statistics.median(pgq):>9.2f}x")
        row(
            "   scheduler (sync) / PgQueuer",
            f"{statistics.median(sync) / statistics.median(pgq):>9.2f}x",
        )
    if "procrastinate" in have:
        pro = [peers.procrastinate_drain(dsn, n)]
        row("W1 drain: Procrastinate (1 run)", rate(pro))
        row("   scheduler / Procrastinate", f"{med / statistics.median(pro):>9.1f}x")
    for clients in (1, 2):
        raw = workloads.w1_pgbench(dsn, n, clients=clients)
        if raw:
            row(f"W1 raw SQL, pgbench, {clients} client(s), batch 100", f"{raw:>9,.0f} jobs/s")
            row("   scheduler / raw SQL", f"{med / raw:>9.0%}")


def w2(dsn: str, singles: int, bulk: int, have: dict[str, str]) -> None:
    floor = workloads.w2_bare_insert(dsn, singles)
    row("W2 reference: bare INSERT + commit, 1 client", f"{floor:>9,.0f} rows/s")
    bulk_rates = {}
    for label, args in (("{}", None), ("realistic args", workloads.REALISTIC_ARGS)):
        single, p50, p99, bulk_rates[label] = workloads.w2_enqueue(dsn, singles, bulk, args)
        row(f"W2 single enqueue(), {label}",
            f"{single:>9,.0f} jobs/s  p50 {p50:.2f} ms  p99 {p99:.2f} ms  "
            f"= {single / floor:.0%} of bare INSERT")  # fmt: skip
    peer_bulk = {}
    for name, fn in (
        ("PgQueuer", peers.pgqueuer_enqueue),
        ("Procrastinate", peers.procrastinate_enqueue),
    ):
        if name.lower() in have:
            s, a, b, peer_bulk[name] = fn(dsn, singles, bulk)
            row(f"W2 single enqueue: {name}", f"{s:>9,.0f} jobs/s  p50 {a:.2f} ms  p99 {b:.2f} ms")
    for label, value in bulk_rates.items():
        row(f"W2 bulk enqueue_many(), {label}", f"{value:>9,.0f} jobs/s")
    for name, value in peer_bulk.items():
        row(f"W2 bulk: {name}", f"{value:>9,.0f} jobs/s")


def w3(dsn: str, jobs: int, have: dict[str, str]) -> None:
    row("W3 delayed lateness: scheduler", lateness(workloads.w3_lateness(dsn, jobs, 10.0)))
    if "pgqueuer" in have:
        row("W3 delayed lateness: PgQueuer", lateness(peers.pgqueuer_lateness(dsn, jobs, 10.0)))
    if "procrastinate" in have:
        row("W3 delayed lateness: Procrastinate",
            lateness(peers.procrastinate_lateness(dsn, jobs, 10.0)))  # fmt: skip


def w4(dsn: str, quick: bool) -> None:
    duration = 10.0 if quick else 30.0
    for kill in (None, 4.0 if quick else 10.0):
        r = cluster.w4_cron(dsn, duration, kill)
        label = "W4 cron 1/s, 2 replicas" + (f", leader killed at {kill:.0f} s" if kill else "")
        row(label,
            f"{r.expected} fire times: {r.missing} missing, {r.duplicate} duplicate; "
            + lateness(r.lateness_ms)
            + (f"; new leader after {r.takeover_s * 1000:.0f} ms" if r.takeover_s else ""))  # fmt: skip


def w5(dsn: str, size: int) -> None:
    for shape in ("due", "future"):
        lat = scale.w5_claim_latency(dsn, size, shape)
        row(f"W5 claim (batch 10), {size:,} {shape} jobs",
            f"p50 {pct(lat, 0.5):.2f} ms  p99 {pct(lat, 0.99):.2f} ms  max {lat[-1]:.2f} ms")  # fmt: skip
    row(f"W5 trickle start lateness, {size:,} future jobs",
        lateness(scale.w5_trickle_lateness(dsn, size)))  # fmt: skip


def w6(dsn: str, n: int, quick: bool) -> None:
    window = 10.0 if quick else 30.0
    for replicas in (1, 3):
        per, source = cluster.w6_idle(dsn, replicas, window)
        row(f"W6 idle: {replicas} replica(s), per replica", f"{per:>9.2f} {source}/s")
    peak, drain = cluster.w6_rss_under_drain(dsn, n)
    row("W6 RSS of a replica draining W1",
        f"{peak:>9.0f} MB peak  ({drain:,.0f} jobs/s incl. start-up)")  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.run")
    parser.add_argument("--pg", choices=servers.MAJORS, default="18", help="PostgreSQL major")
    parser.add_argument("--quick", action="store_true", help="small workloads (a smoke run)")
    parser.add_argument("--only", default=",".join(ALL), help="comma-separated workloads")
    args = parser.parse_args()
    only = {w.strip().upper() for w in args.only.split(",")}
    log.configure("json", Settings().log_level)  # the default level; lines go to stderr
    q = args.quick
    n, reps, singles, bulk, w3_jobs = (
        (2_000, 1, 500, 10_000, 50) if q else (20_000, 3, 5_000, 100_000, 200)
    )
    have = peers.available()
    with servers.server(args.pg) as dsn:
        with psycopg.connect(dsn) as conn:
            version = conn.execute("SHOW server_version").fetchone()[0]
            sync = conn.execute("SHOW synchronous_commit").fetchone()[0]
            buffers = conn.execute("SHOW shared_buffers").fetchone()[0]
        print(
            f"# PostgreSQL {version} (synchronous_commit={sync}, shared_buffers={buffers}), "
            f"{os.cpu_count()} cores, Python {sys.version.split()[0]}, peers: "
            + (", ".join(f"{k} {v}" for k, v in have.items()) or "none installed")
        )
        if "W1" in only:
            w1(dsn, n, reps, have)
        if "W2" in only:
            w2(dsn, singles, bulk, have)
        if "W3" in only:
            w3(dsn, w3_jobs, have)
        if "W4" in only:
            w4(dsn, q)
        if "W5" in only:
            w5(dsn, 100_000 if q else 1_000_000)
        if "W6" in only:
            w6(dsn, n, q)
    return 0


if __name__ == "__main__":
    sys.exit(main())
