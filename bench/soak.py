"""Soak benchmark (a script, not a test): ``python -m bench.soak [--pg 18|15] [--minutes 10]``.

Does the jobs table stay small under a steady load? First measures the maximum drain of one
replica (W1 of bench/run.py: 20,000 no-op jobs, concurrency 100), unless ``--rate`` is given;
then runs the real service (one ``scheduler run`` process, ``bench.noop``, concurrency 100,
succeeded jobs kept ``--retention-s`` = 60 s, default prune interval) while a producer
enqueues a steady ``--load`` (50 %) of that rate for ``--minutes`` (10). Every ``--sample-s``
(30 s) it samples:

* the jobs heap, its indexes, and job_runs (heap + indexes), in MB;
* live and dead tuples of jobs: ``pgstattuple_approx`` when the server has the extension
  (Debian's PostgreSQL 15 does; the embedded 18 does not), else ``pg_stat_user_tables``'
  estimates (the table says which);
* the claim latency p99 of the window: ``locked_at - run_at`` of the jobs claimed in it (due
  until claimed, from the table's own timestamps, database clock);
* autovacuum runs on jobs so far, and HOT updates / updates.

Prints the samples as a table, writes ``soak-pg<major>.csv`` and ``soak-pg<major>.png`` (needs
matplotlib) in ``--out`` (default the current directory), and at the end compares the sample
at minute 3 with the last one against the target: total jobs size and claim p99 within ±20 %.

Server: as bench/run.py (bench/servers.py): a fresh PostgreSQL of ``--pg`` (18 or 15) over TCP
with fsync on, or ``SCHEDULER_BENCH_DSN`` (a superuser URL).
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

import psycopg

from scheduler import enqueue_many, log
from scheduler.settings import Settings

from .cluster import start_replica, stop_replicas
from .servers import MAJORS, server
from .workloads import fresh_db, w1_drain

COLUMNS = ("t_s", "heap_mb", "index_mb", "total_mb", "runs_mb", "live", "dead", "p99_ms",
           "claimed", "due", "autovacuums", "hot_pct")  # fmt: skip


class Producer(threading.Thread):
    """Enqueues ``rate`` no-op jobs a second, in small bulk statements (every 50 ms, the
    jobs due by then), until stopped; ``behind`` is the largest deficit seen (jobs)."""

    def __init__(self, url: str, rate: float):
        super().__init__(daemon=True)
        self.url, self.rate, self.stop, self.sent, self.behind = url, rate, threading.Event(), 0, 0

    def run(self) -> None:
        with psycopg.connect(self.url) as conn:
            started = time.monotonic()
            while not self.stop.is_set():
                due = int(self.rate * (time.monotonic() - started)) - self.sent
                self.behind = max(self.behind, due)
                if due > 0:
                    n = min(due, 5_000)
                    enqueue_many("bench.noop", [{}] * n, connection=conn)
                    conn.commit()
                    self.sent += n
                self.stop.wait(0.05)


def has_pgstattuple(conn: psycopg.Connection) -> bool:
    try:
        conn.execute("CREATE EXTENSION IF NOT EXISTS pgstattuple")
        return True
    except psycopg.Error:
        return False


def sample(conn: psycopg.Connection, since: object, exact: bool) -> tuple[dict, object]:
    """One row of the table; ``since``: the database time of the previous sample."""
    sizes = conn.execute(
        "SELECT pg_relation_size('scheduler.jobs'), pg_indexes_size('scheduler.jobs'), "
        "pg_total_relation_size('scheduler.job_runs'), now()"
    ).fetchone()
    if exact:
        live, dead = conn.execute(
            "SELECT approx_tuple_count, dead_tuple_count FROM pgstattuple_approx('scheduler.jobs')"
        ).fetchone()
    else:
        live, dead = 0, 0
    stats = conn.execute(
        "SELECT n_live_tup, n_dead_tup, autovacuum_count, n_tup_upd, n_tup_hot_upd "
        "FROM pg_stat_user_tables WHERE relid = 'scheduler.jobs'::regclass"
    ).fetchone()
    if not exact:
        live, dead = stats[0], stats[1]
    claims = conn.execute(
        "SELECT count(*), percentile_cont(0.99) WITHIN GROUP "
        "       (ORDER BY extract(epoch FROM locked_at - run_at)) * 1000 "
        "FROM scheduler.jobs WHERE locked_at > %s AND locked_at <= %s",
        [since, sizes[3]],
    ).fetchone()
    due = conn.execute(
        "SELECT count(*) FROM scheduler.jobs WHERE state = 'pending' AND run_at <= now()"
    ).fetchone()[0]
    mb = 1024 * 1024
    row = {
        "heap_mb": sizes[0] / mb, "index_mb": sizes[1] / mb, "total_mb": (sizes[0] + sizes[1]) / mb,
        "runs_mb": sizes[2] / mb, "live": int(live), "dead": int(dead),
        "p99_ms": float(claims[1] or 0.0), "claimed": int(claims[0]), "due": int(due),
        "autovacuums": int(stats[2]), "hot_pct": 100.0 * stats[4] / stats[3] if stats[3] else 0.0,
    }  # fmt: skip
    return row, sizes[3]


def print_row(row: dict) -> None:
    print(
        f"{row['t_s']:>6.0f} {row['heap_mb']:>8.1f} {row['index_mb']:>8.1f} {row['total_mb']:>8.1f}"
        f" {row['runs_mb']:>8.1f} {row['live']:>9,} {row['dead']:>9,} {row['p99_ms']:>8.1f}"
        f" {row['claimed']:>9,} {row['due']:>7,} {row['autovacuums']:>5} {row['hot_pct']:>6.1f}",
        flush=True,
    )


def plot(rows: list[dict], path: Path, title: str) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("# matplotlib is not installed: no plot (pip install matplotlib)")
        return False
    minutes = [r["t_s"] / 60 for r in rows]
    fig, axes = plt.subplots(3, 1, figsize=(8, 9), sharex=True)
    for key, label in (("heap_mb", "jobs heap"), ("index_mb", "jobs indexes"),
                       ("runs_mb", "job_runs")):  # fmt: skip
        axes[0].plot(minutes, [r[key] for r in rows], marker=".", label=label)
    axes[0].set_ylabel("MB")
    for key in ("live", "dead"):
        axes[1].plot(minutes, [r[key] for r in rows], marker=".", label=f"{key} tuples (jobs)")
    axes[1].set_ylabel("tuples")
    axes[2].plot(
        minutes, [r["p99_ms"] for r in rows], marker=".", label="claim p99 (due → claimed)"
    )
    axes[2].set_ylabel("ms")
    axes[2].set_xlabel("minutes")
    for ax in axes:
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
        ax.legend(loc="upper left")
    axes[0].set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return True


def compare(rows: list[dict], from_min: float) -> bool:
    """Sample nearest ``from_min`` minutes vs the last one: total jobs size and claim p99
    within ±20 %. Prints the comparison; returns whether both are within the target."""
    first = min(rows, key=lambda r: abs(r["t_s"] - from_min * 60))
    last = rows[-1]
    ok = True
    print(f"\n# minute {first['t_s'] / 60:.1f} vs minute {last['t_s'] / 60:.1f} (target ±20 %)")
    for key, label in (("total_mb", "jobs heap + indexes, MB"), ("heap_mb", "jobs heap, MB"),
                       ("p99_ms", "claim p99, ms")):  # fmt: skip
        a, b = first[key], last[key]
        change = (b - a) / a if a else float("inf")
        verdict = "ok" if abs(change) <= 0.20 else "OUT"
        if key != "heap_mb":
            ok = ok and verdict == "ok"
        print(f"{label:<28} {a:>9.1f} -> {b:>9.1f}  {change:>+7.1%}  {verdict}")
    return ok


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.soak")
    parser.add_argument(
        "--pg",
        choices=MAJORS,
        default="18",
        help="server to start (ignored with SCHEDULER_BENCH_DSN)",
    )
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--rate", type=float, help="jobs/s to enqueue (default: --load x max)")
    parser.add_argument("--load", type=float, default=0.5, help="share of the max drain")
    parser.add_argument("--concurrency", type=int, default=100)
    parser.add_argument("--retention-s", type=float, default=60.0)
    parser.add_argument("--sample-s", type=float, default=30.0)
    parser.add_argument("--compare-from", type=float, default=3.0, help="minute of reference")
    parser.add_argument("--out", type=Path, default=Path("."))
    args = parser.parse_args()  # fmt: skip
    log.configure("json", Settings().log_level)
    with server(args.pg) as admin:
        with psycopg.connect(admin) as conn:
            version = conn.execute("SHOW server_version").fetchone()[0]
        rate = args.rate
        if rate is None:
            drain = w1_drain(admin, 20_000, concurrency=args.concurrency)
            rate = args.load * drain
            print(f"# max drain (W1, 20,000 jobs, concurrency {args.concurrency}): "
                  f"{drain:,.0f} jobs/s; soak at {args.load:.0%}: {rate:,.0f} jobs/s")  # fmt: skip
        url = fresh_db(admin, "bench_soak")
        with psycopg.connect(url, autocommit=True) as conn:
            exact = has_pgstattuple(conn)
            since = conn.execute("SELECT now()").fetchone()[0]
        print(f"# PostgreSQL {version}, {os.cpu_count()} cores; {rate:,.0f} jobs/s for "
              f"{args.minutes:g} min, retention {args.retention_s:g} s; live/dead tuples from "
              + ("pgstattuple_approx" if exact else "pg_stat_user_tables (estimates: no "
                 "pgstattuple on this server)"))  # fmt: skip
        print(f"{'t_s':>6} {'heap_MB':>8} {'idx_MB':>8} {'jobs_MB':>8} {'runs_MB':>8} "
              f"{'live':>9} {'dead':>9} {'p99_ms':>8} {'claimed':>9} {'due':>7} "
              f"{'avac':>5} {'hot%':>6}")  # fmt: skip
        rows: list[dict] = []
        with tempfile.TemporaryDirectory(prefix="bench-soak-") as tmp:
            proc = start_replica(
                url, None, Path(tmp), SCHEDULER_CONCURRENCY=str(args.concurrency),
                SCHEDULER_RETENTION_SUCCEEDED_S=str(args.retention_s),
            )  # fmt: skip
            producer = Producer(url, rate)
            try:
                producer.start()
                started = time.monotonic()
                with psycopg.connect(url, autocommit=True) as conn:
                    for i in range(1, int(args.minutes * 60 / args.sample_s) + 1):
                        time.sleep(max(0.0, started + i * args.sample_s - time.monotonic()))
                        row, since = sample(conn, since, exact)
                        row["t_s"] = time.monotonic() - started
                        rows.append(row)
                        print_row(row)
                        if proc.poll() is not None:
                            raise RuntimeError(f"the replica exited ({proc.returncode})")
            finally:
                producer.stop.set()
                producer.join()
                stop_replicas([proc])
        print(f"# producer: {producer.sent:,} jobs, at most {producer.behind:,} behind its rate")
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.out / f"soak-pg{version.split('.')[0].split()[0]}"
    with open(stem.with_suffix(".csv"), "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows({k: r[k] for k in COLUMNS} for r in rows)
    title = f"PostgreSQL {version}: {rate:,.0f} jobs/s, retention {args.retention_s:g} s"
    if plot(rows, stem.with_suffix(".png"), title):
        print(f"# wrote {stem}.csv and {stem}.png")
    from_min = args.compare_from if args.compare_from < args.minutes else args.minutes / 3
    return 0 if compare(rows, from_min) else 1


if __name__ == "__main__":
    sys.exit(main())
