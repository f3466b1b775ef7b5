"""The scheduler's settings inside a Django project.

Every setting of :class:`scheduler.settings.Settings` is read, from highest precedence:

1. the command's options (``manage.py scheduler_run --queues mail --concurrency 8``);
2. the ``SCHEDULER_*`` environment variables (``SCHEDULER_CONCURRENCY=8``), so an operator
   can change one deployment without editing ``settings.py``;
3. the ``SCHEDULER`` dict of the Django settings, keyed by the variable's name without its
   prefix (``SCHEDULER = {"CONCURRENCY": 8, "QUEUES": ["default", "mail"]}``);
4. the defaults.

The database URL follows the same order; at level 3 ``SCHEDULER["DATABASE_URL"]`` is used if
set, else the URL is built from ``settings.DATABASES[SCHEDULER.get("DATABASE", "default")]``
(PostgreSQL backends only: name, user, password, host, port and the ``OPTIONS`` that are
libpq parameters, such as ``sslmode``; Django's own options such as ``pool`` or
``isolation_level`` are left out), with ``application_name=scheduler`` so the scheduler's
sessions are told apart from the ORM's in ``pg_stat_activity``.
``SCHEDULER["CONFIG"]`` is the default schedules file of ``scheduler_run`` (its ``--config``).

Every bad value raises :class:`~scheduler.errors.SettingsError` naming where it came from
(``settings.SCHEDULER['CONCURRENCY']=0: ...``, ``settings.DATABASES['default']: ...``),
passwords redacted.
"""

from __future__ import annotations

import difflib
import json
import os
from collections.abc import Mapping
from typing import Any

from django.conf import settings  # type: ignore[import-untyped]
from psycopg import pq
from psycopg.conninfo import make_conninfo

from ...errors import SettingsError
from ...limits import shown
from ...settings import Settings, env_name, load_settings

DEFAULT_ALIAS = "default"
APPLICATION_NAME = "scheduler"
_OWN_KEYS = ("DATABASE", "CONFIG")  # keys of settings.SCHEDULER that are not Settings fields
_FIELD_BY_KEY = {env_name(f).removeprefix("SCHEDULER_"): f for f in Settings.model_fields}
_LIBPQ_KEYWORDS = frozenset(o.keyword.decode() for o in pq.Conninfo.get_defaults())


def scheduler_dict() -> Mapping[Any, Any]:
    """``settings.SCHEDULER`` (``{}`` when unset).

    Raises:
        SettingsError: it is not a dict.
    """
    conf = getattr(settings, "SCHEDULER", None)
    if conf is None:
        return {}
    if not isinstance(conf, Mapping):
        raise SettingsError(
            [f"settings.SCHEDULER must be a dict, not {type(conf).__name__} {shown(conf)}"]
        )
    return conf


def database_alias() -> str:
    """``settings.SCHEDULER["DATABASE"]`` (default ``"default"``), checked against
    ``settings.DATABASES``.

    Raises:
        SettingsError: not a string, or not an alias of ``settings.DATABASES``.
    """
    alias = scheduler_dict().get("DATABASE", DEFAULT_ALIAS)
    known = list(getattr(settings, "DATABASES", {}) or {})
    if not isinstance(alias, str) or alias not in known:
        aliases = ", ".join(map(shown, known)) or "none"
        raise SettingsError(
            [
                f"settings.SCHEDULER['DATABASE']={shown(alias)}: not an alias of "
                + f"settings.DATABASES (aliases: {aliases})"
            ]
        )
    return alias


def database_url(alias: str | None = None) -> str:
    """A libpq key=value DSN for ``settings.DATABASES[alias]`` (default
    :func:`database_alias`), from Django's own connection parameters.

    Raises:
        SettingsError: the alias is unknown, its ENGINE is not a PostgreSQL backend, or
            Django finds it misconfigured (no NAME, a name too long).
    """
    from django.core.exceptions import ImproperlyConfigured  # type: ignore[import-untyped]
    from django.db import connections  # type: ignore[import-untyped]

    alias = database_alias() if alias is None else alias
    where = f"settings.DATABASES[{alias!r}]"
    wrapper = connections[alias]  # lazy: no connection is opened
    if wrapper.vendor != "postgresql":
        engine = wrapper.settings_dict.get("ENGINE")
        raise SettingsError(
            [
                f"{where}: ENGINE {shown(engine)} is not PostgreSQL; the scheduler needs "
                + "django.db.backends.postgresql (or set SCHEDULER_DATABASE_URL)"
            ]
        )
    try:
        params = wrapper.get_connection_params()
    except ImproperlyConfigured as exc:
        raise SettingsError([f"{where}: {' '.join(str(exc).split())}"]) from None
    libpq = {k: v for k, v in params.items() if k in _LIBPQ_KEYWORDS and v not in (None, "")}
    libpq["application_name"] = APPLICATION_NAME
    return make_conninfo("", **libpq)


def _unknown_key(key: object) -> str:
    keys = [*_OWN_KEYS, *_FIELD_BY_KEY]
    close = difflib.get_close_matches(key, keys, n=1, cutoff=0.6) if isinstance(key, str) else []
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return f"settings.SCHEDULER[{shown(key)}]: not a scheduler setting{hint}"


def django_overrides() -> tuple[dict[str, Any], dict[str, str]]:
    """The settings the Django project gives (level 3 and the URL from ``DATABASES``), minus
    those the environment sets: ``({field: value}, {field: where it came from})``.

    Raises:
        SettingsError: ``settings.SCHEDULER`` has an unknown key (every one is named), or
            the URL cannot be built from ``DATABASES`` (:func:`database_url`).
    """
    in_env = {k.upper() for k in os.environ}
    overrides: dict[str, Any] = {}
    options: dict[str, str] = {}
    problems = []
    for key, value in scheduler_dict().items():
        if key in _OWN_KEYS:
            continue
        field = _FIELD_BY_KEY.get(key) if isinstance(key, str) else None
        if field is None:
            problems.append(_unknown_key(key))
        elif env_name(field) not in in_env and value is not None:
            overrides[field] = value
            options[field] = f"settings.SCHEDULER[{key!r}]"
    if problems:
        raise SettingsError(problems)
    if "database_url" not in overrides and "SCHEDULER_DATABASE_URL" not in in_env:
        alias = database_alias()
        overrides["database_url"] = database_url(alias)
        options["database_url"] = f"settings.DATABASES[{alias!r}]"
    return overrides, options


def scheduler_settings(
    overrides: dict[str, Any] | None = None, options: dict[str, str] | None = None
) -> Settings:
    """The scheduler's settings in this Django project (precedence: the module docstring).

    Args:
        overrides: values of command-line options (field name to value), highest precedence.
        options: the option names to show in errors (``{"concurrency": "--concurrency"}``).

    Raises:
        SettingsError: any bad setting, each named with where it came from.
    """
    base, names = django_overrides()
    return load_settings({**base, **(overrides or {})}, options={**names, **(options or {})})


def _env_text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list | tuple):
        return ",".join(str(v) for v in value)
    if isinstance(value, Mapping):
        return json.dumps(value)
    return str(value)


def export_to_environment() -> Settings:
    """Check the settings (:func:`scheduler_settings`), then put the values the Django
    project gives into ``os.environ`` as ``SCHEDULER_*`` variables, so the scheduler's own
    commands (``scheduler run``, ``scheduler migrate``) and the handlers' default database
    read the same values in this process. Returns the checked settings.

    Raises:
        SettingsError: any bad setting (nothing is exported then).
    """
    checked = scheduler_settings()
    values, names = django_overrides()
    texts = {env_name(field): _env_text(value) for field, value in values.items()}
    for text, field in zip(texts.values(), values, strict=True):
        try:
            os.fsencode(text)
            if "\x00" in text:
                raise ValueError("NUL")
        except (ValueError, UnicodeError):
            raise SettingsError(
                [f"{names[field]}: contains NUL or characters that are not UTF-8"]
            ) from None
    os.environ.update(texts)
    return checked


def schedules_file() -> str | None:
    """``settings.SCHEDULER["CONFIG"]``: the default schedules file of ``scheduler_run``.

    Raises:
        SettingsError: it is set and is not a path (a string or ``os.PathLike``).
    """
    value = scheduler_dict().get("CONFIG")
    if value is None:
        return None
    if not isinstance(value, str | os.PathLike) or not str(value).strip():
        raise SettingsError(
            [f"settings.SCHEDULER['CONFIG']={shown(value)}: not a path of a schedules file"]
        )
    return os.fspath(value)
