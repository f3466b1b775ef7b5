"""`scheduler schedules put | remove | backfill | apply` against a real database, and a
running leader that meets an applied file (issue 14, parts 1 and 2)."""

from __future__ import annotations

import json

from tests.conftest import wait_until

FILE_V1 = """\
timezone: Europe/Berlin
imports: [tests.acceptance.app_tasks]
schedules:
  - {name: hourly, cron: "0 * * * *", task: acceptance.tick}
  - {name: nightly, cron: "30 3 * * *", task: acceptance.tick}
  - {name: old, cron: "*/10 * * * *", task: acceptance.tick}
"""
FILE_V2 = """\
timezone: Europe/Berlin
imports: [tests.acceptance.app_tasks]
queues:
  mail: {concurrency: 2}
schedules:
  - {name: hourly, cron: "0 * * * *", task: acceptance.tick, max_attempts: 3}
  - {name: nightly, cron: "0 4 * * *", task: acceptance.tick}
  - {name: fresh, every: 90s, task: acceptance.tick}
"""


def _schedules(db) -> dict[str, tuple]:
    rows = db.execute("SELECT name, source, cron, max_attempts FROM scheduler.schedules")
    return {r[0]: r[1:] for r in rows.fetchall()}


def test_put_remove_backfill_from_the_command_line(db, run_cli):
    out = run_cli("schedules", "put", "digest", "--task", "acceptance.tick", "--cron",
                  "0 8 * * *", "--timezone", "Europe/Paris", "--set", "max_attempts=3",
                  "--set", "overlap_policy=skip")  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("digest: created; next fire time 20")
    assert _schedules(db)["digest"] == ("api", "0 8 * * *", 3)
    out = run_cli("schedules", "update", "digest", "--task", "acceptance.tick", "--cron",
                  "0 9 * * *", "--timezone", "Europe/Paris")  # fmt: skip
    assert out.returncode == 0 and "digest: rescheduled" in out.stdout, out.stderr

    # the file's checks and messages, every problem on its own line, exit 2
    out = run_cli("schedules", "put", "bad", "--task", "acceptance.tick", "--cron", "0 8 * *",
                  "--set", "max_atempts=3", "--import", "tests.acceptance.app_tasks")  # fmt: skip
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert any("did you mean 'max_attempts'" in line for line in lines), out.stderr
    assert any("field 'cron'" in line for line in lines), out.stderr
    assert "Traceback" not in out.stderr
    out = run_cli("schedules", "put", "bad", "--task", "acceptance.nope", "--every", "5m",
                  "--import", "tests.acceptance.app_tasks")  # fmt: skip
    assert out.returncode == 2 and "acceptance.nope" in out.stderr and "not registered" in out.stderr
    out = run_cli("schedules", "put", "bad", "--task", "t", "--every", "5m", "--set", "oops")
    assert out.returncode == 2 and "write KEY=VALUE" in out.stderr

    out = run_cli("schedules", "backfill", "digest", "--start", "2026-11-01T00:00+01:00",
                  "--end", "2026-11-03T23:59+01:00")  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert "3 job(s) enqueued for 3 fire time(s)" in out.stdout
    out = run_cli("schedules", "backfill", "digest", "--start", "2026-11-01T00:00",
                  "--end", "2026-11-03T00:00+01:00")  # fmt: skip
    assert out.returncode == 2 and "--start" in out.stderr and "offset" in out.stderr

    out = run_cli("schedules", "remove", "digest")
    assert out.returncode == 0 and "removed" in out.stdout
    out = run_cli("schedules", "remove", "digest")
    assert out.returncode == 1 and "no schedule named 'digest'" in out.stderr
    assert db.execute("SELECT count(*) FROM scheduler.jobs").fetchone()[0] == 3  # kept


def test_apply_prints_the_diff_and_a_dry_run_writes_nothing(db, tmp_path, run_cli):
    v1, v2 = tmp_path / "v1.yaml", tmp_path / "v2.yaml"
    v1.write_text(FILE_V1)
    v2.write_text(FILE_V2)
    out = run_cli("schedules", "apply", str(v1))
    assert out.returncode == 0, out.stderr
    assert out.stdout.count("(added)") == 3 and "changed 3 schedule(s), 0 unchanged" in out.stdout
    before = _schedules(db)

    out = run_cli("schedules", "apply", str(v2), "--dry-run")
    assert out.returncode == 0, out.stderr
    assert "+ fresh (added)" in out.stdout and "- old (removed)" in out.stdout
    assert "~ nightly (rescheduled)" in out.stdout and "~ hourly (updated)" in out.stdout
    assert "(dry run: nothing written)" in out.stdout
    assert "queue limits: written mail" in out.stdout
    assert db.execute("SELECT count(*) FROM scheduler.queues").fetchone()[0] == 0
    nightly = out.stdout.split("~ nightly (rescheduled)")[1].splitlines()
    assert "T03:30:00+01:00" in nightly[1] and "T04:00:00+01:00" in nightly[2]  # before, after
    assert _schedules(db) == before

    out = run_cli("schedules", "apply", str(v2), "--json")
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    kinds = {c["name"]: c["kind"] for c in result["changes"]}
    assert kinds == {"fresh": "added", "nightly": "rescheduled", "hourly": "updated",
                     "old": "removed"}  # fmt: skip
    assert len(next(c for c in result["changes"] if c["name"] == "fresh")["after"]) == 3
    assert set(_schedules(db)) == {"hourly", "nightly", "fresh"}
    assert result["queue_limits"]["written"] == ["mail"]
    limits = db.execute("SELECT name, concurrency, source FROM scheduler.queues").fetchall()
    assert limits == [("mail", 2, "config")]
    row = db.execute("SELECT applied_by, path FROM scheduler.schedules_file").fetchone()
    assert row == ("apply", str(v2))

    # a runtime schedule's name in the file: refused before anything is written
    assert run_cli("schedules", "put", "api-one", "--task", "acceptance.tick", "--every",
                   "1h").returncode == 0  # fmt: skip
    v3 = tmp_path / "v3.yaml"
    v3.write_text(FILE_V2 + '  - {name: api-one, cron: "0 1 * * *", task: acceptance.tick}\n')
    out = run_cli("schedules", "apply", str(v3))
    assert out.returncode == 1
    assert "api-one" in out.stderr and "runtime (api) schedule" in out.stderr
    assert "Nothing was applied" in out.stderr
    assert set(_schedules(db)) == {"hourly", "nightly", "fresh", "api-one"}


def test_a_leader_with_another_file_leaves_the_applied_one(db, tmp_path, run_cli, start_replica):
    v1, v2 = tmp_path / "v1.yaml", tmp_path / "v2.yaml"
    v1.write_text(FILE_V1)
    v2.write_text(FILE_V2)
    assert run_cli("schedules", "apply", str(v2)).returncode == 0
    replica = start_replica("run", "--config", str(v1))
    wait_until(lambda: "schedules_file_differs" in replica.output(), timeout=30)
    assert set(_schedules(db)) == {"hourly", "nightly", "fresh"}  # v2 stays
    line = next(x for x in replica.output().splitlines() if "schedules_file_differs" in x)
    event = json.loads(line)
    assert event["level"] == "error" and event["applied_file"] == str(v2)
    assert event["file"] == str(v1)
    replica.stop()
    # a leader whose file is the applied one reconciles it as before
    replica = start_replica("run", "--config", str(v2))
    wait_until(lambda: "schedules_reconciled" in replica.output(), timeout=30)
    assert "schedules_file_differs" not in replica.output()
    replica.stop()
