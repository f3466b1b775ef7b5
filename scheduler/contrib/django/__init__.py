"""``scheduler.contrib.django``: the scheduler as a Django app.

::

    INSTALLED_APPS = [..., "scheduler.contrib.django"]
    SCHEDULER = {"DATABASE": "default", "CONCURRENCY": 8, "CONFIG": BASE_DIR / "schedules.yaml"}

    python manage.py scheduler_migrate      # the scheduler's tables (not `manage.py migrate`)
    python manage.py scheduler_run          # a replica; tasks from every app's tasks.py

What it gives:

* **settings** (:mod:`.conf`): the database URL from ``settings.DATABASES`` (the alias in
  ``SCHEDULER["DATABASE"]``), other settings from the ``SCHEDULER`` dict; the command line and
  the ``SCHEDULER_*`` environment variables win over both.
* **commands**: ``scheduler_run`` is ``scheduler run`` after importing every installed app's
  ``tasks`` module (``django.utils.module_loading.autodiscover_modules``); ``scheduler_migrate``
  is ``scheduler migrate``. Both run the scheduler's own CLI code.
* **connections** (:mod:`.db`): an attempt hook runs ``close_old_connections()`` around each
  attempt, as Django's request cycle does, so handler threads do not keep a connection each;
  async handlers reach the ORM through its async API (``aget``, ``acreate``...) or
  ``sync_to_async``, and the hook closes the connections of that thread too.
* **enqueue in the ORM's transaction**: ``task.configure(connection=django.db.connection)
  .defer(...)`` inside ``transaction.atomic()`` (:mod:`scheduler.adapters`; see
  ``examples/django_app``): the job exists if and only if the transaction commits.

**Why the schema is not Django migrations.** The scheduler's schema is forward-only SQL shipped
in the package (``scheduler/sql/migrations``), applied by ``scheduler migrate`` under an
advisory lock and recorded in its own version table, in its own PostgreSQL schema
(``SCHEDULER_SCHEMA``). Replicas started outside Django (``scheduler run``, another service
sharing the database) migrate the same schema the same way: ``scheduler run`` and
``scheduler_run`` apply what is pending at start, under that lock. Mirroring it as Django
migrations would give one schema two version records that can disagree (``migrate --fake``, a
squash, a backwards migration Django offers and forward-only SQL cannot do), and Django's
per-app migration graph has no place for the lock that makes concurrent deploys of several
services safe. So ``manage.py scheduler_migrate`` runs the scheduler's own migrator; run it
next to ``manage.py migrate`` in a deploy.
"""
