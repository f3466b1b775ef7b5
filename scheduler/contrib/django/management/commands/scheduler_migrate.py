"""``manage.py scheduler_migrate``: ``scheduler migrate`` with the Django project's settings
(:mod:`scheduler.contrib.django.conf`): applies the scheduler's pending SQL migrations to
its schema, under its advisory lock; idempotent."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError  # type: ignore[import-untyped]

from scheduler.cli.main import main as scheduler_cli
from scheduler.contrib.django.conf import export_to_environment
from scheduler.errors import SettingsError


class Command(BaseCommand):  # type: ignore[misc]
    help = "Apply the scheduler's schema migrations (idempotent): `scheduler migrate`."
    requires_system_checks = ()  # its own settings errors are named below

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            export_to_environment()
        except SettingsError as exc:
            raise CommandError("\n".join(exc.problems), returncode=2) from None
        code = scheduler_cli(["migrate"])
        if code:
            raise SystemExit(code)
