"""Acceptance: the Django app (scheduler.contrib.django) through the example project's real
``manage.py`` (examples/django_app), in subprocesses.

* the example end to end: ``scheduler_migrate`` (and again: nothing to do), Django's
  ``migrate``, an order placed in a committed ``transaction.atomic()`` block (its two jobs
  exist) and one rolled back (neither the order nor its jobs), ``scheduler_run`` runs both
  jobs (a sync and an async handler, both using the ORM) and the schedules of
  ``SCHEDULER["CONFIG"]``;
* connections: 40 sync jobs using the ORM on a replica with concurrency 8, plus async ones
  using the async ORM, leave no backend of Django's open once they are done (without the
  attempt hook, each handler thread kept one);
* a sync ORM call in an async handler fails the attempt with ``SynchronousOnlyOperation``;
* settings: the precedence of the command line, ``SCHEDULER_*`` and ``settings.SCHEDULER``,
  and bad values named with where they came from (no database needed).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict

from scheduler import enqueue
from tests.conftest import wait_until

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "django_app"
ORM_SESSIONS = (
    "SELECT count(*) FROM pg_stat_activity "
    "WHERE datname = current_database() AND application_name = 'django_app'"
)


def django_env(url: str, tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("SCHEDULER_")}
    env.pop("DJANGO_SETTINGS_MODULE", None)
    env.update(
        DJANGO_DATABASE_URL=url,
        SCHEDULER_EMBEDDED_DIR=str(tmp_path / "embedded"),  # never used: the URL is set
        SCHEDULER_LOG_FORMAT="json",
        SCHEDULER_LEADER_RETRY_S="0.2",
        SCHEDULER_POLL_INTERVAL_S="0.5",
        PYTHONPATH=os.pathsep.join([str(ROOT), str(tmp_path)]),
        **extra,
    )
    return env


def manage(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=EXAMPLE,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.fixture
def start_worker(tmp_path: Path) -> Iterator[Callable[..., subprocess.Popen[bytes]]]:
    """Start ``manage.py scheduler_run ARGS``; every worker is stopped (SIGTERM, then kill)
    after the test. Its output is in ``tmp_path / "worker.log"``."""
    procs: list[subprocess.Popen[bytes]] = []
    log = open(tmp_path / "worker.log", "wb")  # noqa: SIM115 - closed below

    def start(env: dict[str, str], *args: str) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(
            [sys.executable, "manage.py", "scheduler_run", *args],
            cwd=EXAMPLE,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    log.close()


def stop(proc: subprocess.Popen[bytes], tmp_path: Path) -> None:
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(20) == 0, (tmp_path / "worker.log").read_text(errors="replace")


def job_states(conn: psycopg.Connection) -> dict[str, list[str]]:
    rows = conn.execute("SELECT task, state FROM scheduler.jobs ORDER BY id").fetchall()
    states: dict[str, list[str]] = {}
    for task, state in rows:
        states.setdefault(task, []).append(state)
    return states


SETUP = """
import json

import django

django.setup()
from django.core.management import call_command  # noqa: E402

from shop.orders import OrderRejected, place_order  # noqa: E402

call_command("scheduler_migrate")  # prints "applied: ..."
call_command("scheduler_migrate")  # prints "schema is up to date"
call_command("migrate", "--no-input", verbosity=0)
order = place_order("book", 2)  # committed: the order and its two jobs
try:
    place_order("cursed", reject=True)  # rolled back: neither
except OrderRejected:
    pass
else:
    raise SystemExit("place_order(reject=True) did not raise")
print(json.dumps({"order": order.pk}))
"""

WRONG_TASKS = """
from scheduler import task


@task(name="wrong.sync_orm_in_async")
async def sync_orm_in_async() -> int:
    from shop.models import Order

    return Order.objects.count()  # a sync ORM call on the event loop
"""


def test_example_runs_and_closes_orm_connections(
    fresh_db_url: Callable[..., str],
    tmp_path: Path,
    start_worker: Callable[..., subprocess.Popen[bytes]],
) -> None:
    """The example end to end, then 40 more sync and 10 more async jobs using the ORM on
    concurrency 8: no ORM session is left open (CONN_MAX_AGE 0) once they are done. Without
    the attempt hook each handler thread kept one (8), the async ORM's thread one."""
    url = fresh_db_url()  # empty: the commands create both schemas
    env = django_env(url, tmp_path, DJANGO_SETTINGS_MODULE="shopsite.settings")
    (tmp_path / "wrong_tasks.py").write_text(WRONG_TASKS)
    setup = subprocess.run(
        [sys.executable, "-c", SETUP],
        cwd=EXAMPLE,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert setup.returncode == 0, setup.stderr
    lines = setup.stdout.splitlines()
    assert lines[0].startswith("applied: 0001_"), setup.stdout
    assert lines[1] == "schema is up to date", setup.stdout
    order_id = json.loads(lines[-1])["order"]

    with psycopg.connect(url, autocommit=True) as conn:
        orders = conn.execute("SELECT id, item FROM shop_order").fetchall()
        assert orders == [(order_id, "book")]  # the rejected order rolled back
        jobs = conn.execute("SELECT task, args FROM scheduler.jobs ORDER BY task").fetchall()
        assert jobs == [  # the committed order's two jobs, none of the rolled-back one's
            ("shop.confirm_order", {"order_id": order_id}),
            ("shop.send_receipt", {"order_id": order_id}),
        ]
        ids = [
            row[0]
            for row in conn.execute(
                "INSERT INTO shop_order (item, quantity, status, receipt_sent, created_at) "
                "SELECT 'item ' || i, 1, 'placed', false, now() FROM generate_series(1, 40) i "
                "RETURNING id"
            )
        ]
        for i in ids:
            enqueue("shop.confirm_order", args={"order_id": i}, connection=conn)
        for i in ids[:10]:
            enqueue("shop.send_receipt", args={"order_id": i}, connection=conn)
        enqueue("wrong.sync_orm_in_async", max_attempts=1, connection=conn)

        worker = start_worker(env, "--concurrency=8", "--import=wrong_tasks")

        def finished() -> bool:
            """every job finished"""
            states = job_states(conn)
            return (
                states.get("shop.confirm_order") == ["succeeded"] * 41
                and states.get("shop.send_receipt") == ["succeeded"] * 11
                and states.get("wrong.sync_orm_in_async") == ["dead"]
            )

        wait_until(finished, timeout=20)
        order = conn.execute(
            "SELECT status, receipt_sent FROM shop_order WHERE id = %s", [order_id]
        ).fetchone()
        assert order == ("confirmed", True)
        results = conn.execute(
            "SELECT DISTINCT task, result FROM scheduler.jobs WHERE task LIKE 'shop.%' ORDER BY 1"
        ).fetchall()
        assert results == [("shop.confirm_order", "confirmed"), ("shop.send_receipt", True)]
        confirmed = conn.execute("SELECT count(*) FROM shop_order WHERE status = 'confirmed'")
        assert confirmed.fetchone() == (41,)
        error = conn.execute(
            "SELECT last_error FROM scheduler.jobs WHERE task = 'wrong.sync_orm_in_async'"
        ).fetchone()
        assert error is not None and "SynchronousOnlyOperation" in error[0]

        def orm_sessions_closed() -> bool:
            """Django's sessions (application_name django_app) are all closed"""
            return conn.execute(ORM_SESSIONS).fetchone() == (0,)

        wait_until(orm_sessions_closed, timeout=5)

        def declared() -> list[tuple[str, str]]:
            """the schedule of SCHEDULER["CONFIG"] is declared"""
            return conn.execute("SELECT name, task FROM scheduler.schedules").fetchall()

        assert wait_until(declared, timeout=5) == [
            ("expire_stale_orders", "shop.expire_stale_orders")
        ]
        stop(worker, tmp_path)


SETTINGS_PROBE = """
import json
import os

import django
from django.conf import settings

settings.configure(
    INSTALLED_APPS=["scheduler.contrib.django"],
    DATABASES={
        "default": {
            "ENGINE": "django.db.backends.postgresql",
            "NAME": "shop",
            "USER": "app",
            "PASSWORD": "s3cret",
            "HOST": "db.internal",
            "PORT": "5433",
            "OPTIONS": {  # libpq parameters are kept, Django's and psycopg's own are not
                "sslmode": "require",
                "application_name": "web",
                "pool": True,
                "server_side_binding": True,
                "prepare_threshold": 5,
            },
        },
        "lite": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"},
        "noname": {"ENGINE": "django.db.backends.postgresql", "NAME": ""},
    },
    SCHEDULER={"CONCURRENCY": 8, "QUEUES": ["default", "mail"]},
)
django.setup()
from django.test import override_settings  # noqa: E402
from psycopg.conninfo import conninfo_to_dict  # noqa: E402

from scheduler.contrib.django.apps import check_settings  # noqa: E402
from scheduler.contrib.django.conf import export_to_environment, scheduler_settings  # noqa: E402
from scheduler.errors import SettingsError  # noqa: E402

out = {}


def problems(conf, call=scheduler_settings):
    with override_settings(SCHEDULER=conf):
        try:
            call()
        except SettingsError as exc:
            return exc.problems
    return None


s = scheduler_settings()
out["url"] = conninfo_to_dict(s.database_url)
out["dict"] = [s.concurrency, s.queues]
os.environ["SCHEDULER_CONCURRENCY"] = "3"
out["env_wins"] = scheduler_settings().concurrency
out["option_wins"] = scheduler_settings({"concurrency": 5}).concurrency
del os.environ["SCHEDULER_CONCURRENCY"]
os.environ["SCHEDULER_DATABASE_URL"] = "postgresql://env@envhost/envdb"
out["env_url"] = scheduler_settings().database_url
del os.environ["SCHEDULER_DATABASE_URL"]
with override_settings(SCHEDULER={"DATABASE_URL": "postgresql://dict@dicthost/dictdb"}):
    out["dict_url"] = scheduler_settings().database_url
out["typo"] = problems({"CONCURENCY": 3})
out["zero"] = problems({"CONCURRENCY": 0})
out["not_dict"] = problems(["CONCURRENCY"])
out["alias"] = problems({"DATABASE": "nope"})
out["sqlite"] = problems({"DATABASE": "lite"})
out["noname"] = problems({"DATABASE": "noname"})
out["secret"] = problems({"DATABASE_URL": "postgresql://u:topsecret@h:99999/db"})
out["nul"] = problems({"METRICS_HOST": "a\\x00b"}, export_to_environment)
out["nul_env"] = "SCHEDULER_METRICS_HOST" in os.environ
with override_settings(SCHEDULER={"CONCURRENCY": 0}):
    out["check"] = [(m.id, m.msg) for m in check_settings()]
os.environ["SCHEDULER_QUEUES"] = "from_env"
export_to_environment()
out["exported"] = {k: v for k, v in os.environ.items() if k.startswith("SCHEDULER_")}
print(json.dumps(out))
"""


def test_settings_precedence_and_errors(tmp_path: Path) -> None:
    """Options > SCHEDULER_* > settings.SCHEDULER > DATABASES; every bad value named with
    where it came from, passwords redacted; nothing exported when a value cannot be."""
    env = django_env("postgresql://nohost/unused", tmp_path)
    probe = subprocess.run(
        [sys.executable, "-c", SETTINGS_PROBE],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert probe.returncode == 0, probe.stderr
    out = json.loads(probe.stdout)
    assert out["url"] == {
        "dbname": "shop",
        "user": "app",
        "password": "s3cret",
        "host": "db.internal",
        "port": "5433",
        "sslmode": "require",
        "client_encoding": "UTF8",
        "application_name": "scheduler",
    }
    assert out["dict"] == [8, ["default", "mail"]]
    assert (out["env_wins"], out["option_wins"]) == (3, 5)
    assert out["env_url"] == "postgresql://env@envhost/envdb"
    assert out["dict_url"] == "postgresql://dict@dicthost/dictdb"
    assert out["typo"] == [
        "settings.SCHEDULER['CONCURENCY']: not a scheduler setting; did you mean 'CONCURRENCY'?"
    ]
    assert out["zero"] == [
        "settings.SCHEDULER['CONCURRENCY']=0: input should be greater than or equal to 1"
    ]
    assert out["not_dict"] == ["settings.SCHEDULER must be a dict, not list ['CONCURRENCY']"]
    assert out["alias"] == [
        "settings.SCHEDULER['DATABASE']='nope': not an alias of settings.DATABASES "
        + "(aliases: 'default', 'lite', 'noname')"
    ]
    assert out["sqlite"][0].startswith(
        "settings.DATABASES['lite']: ENGINE 'django.db.backends.sqlite3' is not PostgreSQL"
    )
    assert out["noname"][0].startswith("settings.DATABASES['noname']: settings.DATABASES is")
    assert len(out["secret"]) == 1 and "99999" in out["secret"][0]
    assert "topsecret" not in out["secret"][0]
    assert out["secret"][0].startswith("settings.SCHEDULER['DATABASE_URL']=")
    assert out["nul"] == [
        "settings.SCHEDULER['METRICS_HOST']: contains NUL or characters that are not UTF-8"
    ]
    assert out["nul_env"] is False
    assert out["check"] == [
        [
            "scheduler.E001",
            "settings.SCHEDULER['CONCURRENCY']=0: input should be greater than or equal to 1",
        ]
    ]
    exported = out["exported"]
    assert exported["SCHEDULER_CONCURRENCY"] == "8"
    assert exported["SCHEDULER_QUEUES"] == "from_env"  # the environment's value is kept
    assert conninfo_to_dict(exported["SCHEDULER_DATABASE_URL"])["host"] == "db.internal"


def test_scheduler_run_refuses_bad_settings(tmp_path: Path) -> None:
    """manage.py scheduler_run: exit 2 and one line naming the setting; no traceback."""
    (tmp_path / "bad_settings.py").write_text(
        "from shopsite.settings import *  # noqa: F403\n"
        'SCHEDULER = {**SCHEDULER, "CONCURRENCY": 0}  # noqa: F405\n'
    )
    env = django_env("postgresql://nohost/unused", tmp_path, DJANGO_SETTINGS_MODULE="bad_settings")
    run = manage(env, "scheduler_run")
    assert run.returncode == 2, run.stderr
    assert run.stderr.strip() == (
        "CommandError: settings.SCHEDULER['CONCURRENCY']=0: input should be greater than or "
        "equal to 1"
    )
