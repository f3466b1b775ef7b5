"""The Django app of the scheduler: ``INSTALLED_APPS = [..., "scheduler.contrib.django"]``."""

from __future__ import annotations

from typing import Any

from django.apps import AppConfig  # type: ignore[import-untyped]
from django.core import checks  # type: ignore[import-untyped]

from ...errors import SettingsError


def check_settings(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    """Django system check: every bad scheduler setting is an error (``scheduler.E001``),
    shown by ``manage.py check`` and before ``runserver`` / ``migrate`` run."""
    from .conf import scheduler_settings, schedules_file

    try:
        scheduler_settings()
        schedules_file()
    except SettingsError as exc:
        return [checks.Error(problem, id="scheduler.E001") for problem in exc.problems]
    return []


class SchedulerConfig(AppConfig):  # type: ignore[misc]
    """Registers the database-connection attempt hook (:mod:`.db`), the settings check, and
    makes the project's database the default of calls without ``connection=``
    (:func:`scheduler.connections.set_default_database_url`), unless its settings are bad
    (the check then says why)."""

    name = "scheduler.contrib.django"
    label = "scheduler"
    verbose_name = "Scheduler"

    def ready(self) -> None:
        from ...connections import set_default_database_url
        from . import db
        from .conf import scheduler_settings

        db.install()
        checks.register(check_settings)
        try:
            set_default_database_url(scheduler_settings().database_url)
        except SettingsError:
            pass  # reported by check_settings, and by the scheduler_* commands
