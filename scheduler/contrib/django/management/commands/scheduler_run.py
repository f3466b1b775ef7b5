"""``manage.py scheduler_run``: one replica (leader candidate + workers), as ``scheduler run``.

Imports every installed app's ``tasks`` module first
(``django.utils.module_loading.autodiscover_modules("tasks")``) and marks the task registry
complete, adds the database-connection attempt hook (:mod:`scheduler.contrib.django.db`),
puts the Django project's scheduler settings into the environment
(:func:`scheduler.contrib.django.conf.export_to_environment`), then runs the scheduler's own
``run`` command: the same migration at start, signals (SIGTERM/SIGINT: graceful stop; a second
one: exit at once), logging and exit codes (2: bad settings or options, 1: the database is
unreachable, a schedules file is invalid, the replica failed).
"""

from __future__ import annotations

import sys
from typing import Any

from django.apps import apps  # type: ignore[import-untyped]
from django.core.management.base import BaseCommand, CommandError, CommandParser  # type: ignore[import-untyped]
from django.utils.module_loading import autodiscover_modules, module_has_submodule  # type: ignore[import-untyped]

from scheduler.cli.main import main as scheduler_cli
from scheduler.contrib.django import db
from scheduler.contrib.django.conf import export_to_environment, schedules_file
from scheduler.errors import SettingsError
from scheduler.registry import load_tasks


def discover_tasks() -> None:
    """Import the ``tasks`` module of every installed app that has one.

    Raises:
        CommandError: importing one raised (its module and the error on one line; the
            traceback with ``--traceback``).
    """
    try:
        autodiscover_modules("tasks")
    except Exception as exc:
        failed = [
            f"{app.name}.tasks"
            for app in apps.get_app_configs()
            if module_has_submodule(app.module, "tasks") and f"{app.name}.tasks" not in sys.modules
        ]
        where = failed[0] if failed else "the installed apps' tasks modules"
        message = " ".join(f"{type(exc).__name__}: {exc}".split())[:500]
        raise CommandError(f"importing {where} raised {message}") from exc


class Command(BaseCommand):  # type: ignore[misc]
    help = (
        "Run one scheduler replica with the tasks of every installed app's tasks.py: "
        "`scheduler run`."
    )
    requires_system_checks = ()  # its own settings errors are named below

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--config",
            help="YAML schedules file (default settings.SCHEDULER['CONFIG']; neither: a "
            "worker-only replica)",
        )
        parser.add_argument("--queues", help="comma-separated queues to work (default: default)")
        parser.add_argument("--concurrency", help="jobs run at once, 1-1000 (default 100)")
        parser.add_argument(
            "--import",
            dest="imports",
            action="append",
            metavar="MODULE",
            help="also import MODULE for its @task functions (repeatable)",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        discover_tasks()
        load_tasks()  # the registry is complete: task names are checked from now on
        try:
            export_to_environment()
            config = options["config"] or schedules_file()
        except SettingsError as exc:
            raise CommandError("\n".join(exc.problems), returncode=2) from None
        argv = ["run"]
        if config:
            argv.append(f"--config={config}")  # one token: a value may start with "-"
        for option in ("queues", "concurrency"):
            if options[option] is not None:
                argv.append(f"--{option}={options[option]}")
        argv += [f"--import={module}" for module in options["imports"] or []]
        db.install()
        code = scheduler_cli(argv)
        if code:
            raise SystemExit(code)
