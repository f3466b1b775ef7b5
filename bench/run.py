"""Benchmarks (a script, not a test): ``python -m bench.run [--quick] [--only W1,W4]``.

Run from the repository root in the project's virtualenv; the peers come from the optional
``bench`` extra (``pip install -e '.[bench]'``) and are skipped when absent. Starts its own
embedded PostgreSQL (or uses ``SCHEDULER_BENCH_DSN``, a superuser URL) and prints one table,
every figure next to a reference measured in the same run:

* W1 drain: 20,000 no-op jobs, one worker, jobs/s until all finished (3 repetitions, median
  [range]). References: PgQueuer (batch 50), and the raw SQL of our claim + complete
  statements in batches of 100 driven by pgbench (no Python) with 1 and 2 clients.
* W2 enqueue: 5,000 single enqueues from one client (jobs/s, p50/p99 ms); bulk 100,000.
  Reference: a bare ``INSERT`` + commit in the same loop (the fsync floor).
* W3 delayed lateness: 200 jobs spread over 10 s while a worker idles, default settings.
* W4 cron: an every-second schedule, 2 replicas, 30 s; then again with the leader SIGKILLed
  at 10 s: missing and duplicate fire times, lateness.
* W5 scale: claim latency with 1M due jobs, and with 1M future jobs and a trickle of due ones.
* W6 idle: statements per second per idle replica (1 and 3 replicas), RSS while draining.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile

import psycopg

from scheduler import embedded, log

from . import cluster, peers, scale, workloads

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


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.run")
    parser.add_argument("--quick", action="store_true", help="small workloads (a smoke run)")
    parser.add_argument("--only", default=",".join(ALL), help="comma-separated workloads")
    args = parser.parse_args()
    only = {w.strip().upper() for w in args.only.split(",")}
    log.configure("json", "warning")  # as in production at level warning: no per-job lines
    q = args.quick
    n, reps, singles, bulk, w3_jobs = (
        (2_000, 1, 500, 10_000, 50) if q else (20_000, 3, 5_000, 100_000, 200)
    )
    dsn = os.environ.get("SCHEDULER_BENCH_DSN")
    tmp = None
    if not dsn:
        tmp = tempfile.mkdtemp(prefix="scheduler-bench-")
        dsn = embedded.start(tmp)
    have = peers.available()
    try:
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
            ours = [workloads.w1_drain(dsn, n, concurrency=100) for _ in range(reps)]
            raw1 = workloads.w1_pgbench(dsn, n, clients=1)
            raw2 = workloads.w1_pgbench(dsn, n, clients=2)
            row("W1 drain: scheduler, 1 replica (concurrency 100)", rate(ours))
            med = statistics.median(ours)
            if "pgqueuer" in have:
                pgq = [peers.pgqueuer_drain(dsn, n, batch_size=50) for _ in range(reps)]
                row("W1 drain: PgQueuer (batch 50)", rate(pgq))
                row("   scheduler / PgQueuer", f"{med / statistics.median(pgq):>9.2f}x")
            if "procrastinate" in have:
                pro = [peers.procrastinate_drain(dsn, n) for _ in range(1)]
                row("W1 drain: Procrastinate (1 run)", rate(pro))
                row("   scheduler / Procrastinate", f"{med / statistics.median(pro):>9.1f}x")
            for clients, raw in ((1, raw1), (2, raw2)):
                if raw:
                    row(
                        f"W1 raw SQL, pgbench, {clients} client(s), batch 100",
                        f"{raw:>9,.0f} jobs/s",
                    )
                    row("   scheduler / raw SQL", f"{med / raw:>9.0%}")
        if "W2" in only:
            floor = workloads.w2_bare_insert(dsn, singles)
            single, p50, p99, bulk_rate = workloads.w2_enqueue(dsn, singles, bulk)
            row("W2 reference: bare INSERT + commit, 1 client", f"{floor:>9,.0f} rows/s")
            row(
                "W2 single enqueue(): scheduler",
                f"{single:>9,.0f} jobs/s  p50 {p50:.2f} ms  p99 {p99:.2f} ms  "
                f"= {single / floor:.0%} of bare INSERT",
            )
            peer_bulk = {}
            for name, fn in (
                ("PgQueuer", peers.pgqueuer_enqueue),
                ("Procrastinate", peers.procrastinate_enqueue),
            ):
                if name.lower() in have:
                    s, a, b, peer_bulk[name] = fn(dsn, singles, bulk)
                    row(
                        f"W2 single enqueue: {name}",
                        f"{s:>9,.0f} jobs/s  p50 {a:.2f} ms  p99 {b:.2f} ms",
                    )
            row("W2 bulk enqueue_many(): scheduler", f"{bulk_rate:>9,.0f} jobs/s")
            for name, value in peer_bulk.items():
                row(f"W2 bulk: {name}", f"{value:>9,.0f} jobs/s")
        if "W3" in only:
            row(
                "W3 delayed lateness: scheduler",
                lateness(workloads.w3_lateness(dsn, w3_jobs, 10.0)),
            )
            if "pgqueuer" in have:
                row(
                    "W3 delayed lateness: PgQueuer",
                    lateness(peers.pgqueuer_lateness(dsn, w3_jobs, 10.0)),
                )
            if "procrastinate" in have:
                row(
                    "W3 delayed lateness: Procrastinate",
                    lateness(peers.procrastinate_lateness(dsn, w3_jobs, 10.0)),
                )
        if "W4" in only:
            duration = 10.0 if q else 30.0
            for kill in (None, 10.0 if not q else 4.0):
                r = cluster.w4_cron(dsn, duration, kill)
                label = "W4 cron 1/s, 2 replicas" + (
                    f", leader killed at {kill:.0f} s" if kill else ""
                )
                row(
                    label,
                    f"{r.expected} fire times: {r.missing} missing, {r.duplicate} duplicate; "
                    + lateness(r.lateness_ms)
                    + (f"; new leader after {r.takeover_s * 1000:.0f} ms" if r.takeover_s else ""),
                )
        if "W5" in only:
            size = 100_000 if q else 1_000_000
            for shape in ("due", "future"):
                lat = scale.w5_claim_latency(dsn, size, shape)
                row(
                    f"W5 claim (batch 10), {size:,} {shape} jobs",
                    f"p50 {pct(lat, 0.5):.2f} ms  p99 {pct(lat, 0.99):.2f} ms  max {lat[-1]:.2f} ms",
                )
        if "W6" in only:
            window = 10.0 if q else 30.0
            for replicas in (1, 3):
                per, source = cluster.w6_idle(dsn, replicas, window)
                row(f"W6 idle: {replicas} replica(s), per replica", f"{per:>9.2f} {source}/s")
            peak, drain = cluster.w6_rss_under_drain(dsn, n)
            row(
                "W6 RSS of a replica draining W1",
                f"{peak:>9.0f} MB peak  ({drain:,.0f} jobs/s incl. start-up)",
            )
    finally:
        if tmp:
            embedded.stop(tmp)
    return 0


if __name__ == "__main__":
    sys.exit(main())
