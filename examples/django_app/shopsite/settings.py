"""Settings of the example shop: the least a Django project needs, plus the scheduler app.

The database is PostgreSQL, from ``DJANGO_DATABASE_URL`` (a libpq URL, default
``postgresql:///django_app``: the local server's ``django_app`` database). The scheduler uses
the same database (``SCHEDULER["DATABASE"]``); a ``SCHEDULER_*`` environment variable wins
over the ``SCHEDULER`` dict (``SCHEDULER_CONCURRENCY=2 python manage.py scheduler_run``).
"""

import os
from pathlib import Path

from psycopg.conninfo import conninfo_to_dict

BASE_DIR = Path(__file__).resolve().parent.parent
SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "example-only-not-secret")
DEBUG = False
ALLOWED_HOSTS: list[str] = []
USE_TZ = True
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

INSTALLED_APPS = [
    "shop",
    "scheduler.contrib.django",
]

_db = conninfo_to_dict(os.environ.get("DJANGO_DATABASE_URL", "postgresql:///django_app"))
DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": _db.get("dbname", "django_app"),
        "USER": _db.get("user", ""),
        "PASSWORD": _db.get("password", ""),
        "HOST": _db.get("host", ""),
        "PORT": _db.get("port", ""),
        "CONN_MAX_AGE": 0,  # Django's default: a connection per request (here: per attempt)
        # the ORM's sessions show as "django_app" in pg_stat_activity, the scheduler's own
        # as "scheduler"
        "OPTIONS": {"application_name": "django_app"},
    }
}

SCHEDULER = {
    "DATABASE": "default",  # the alias of DATABASES the scheduler uses
    "CONCURRENCY": 8,  # SCHEDULER_CONCURRENCY, --concurrency win over this
    "CONFIG": str(BASE_DIR / "schedules.yaml"),  # the cron schedules of scheduler_run
}
