"""Newsletter example: a transactional outbox fanning out one delivery job per subscriber.

Modules:
    schema.sql      the ``newsletter`` schema (subscribers, newsletters, deliveries)
    settings.py     environment variables and the demo's recipient domains
    app.py          the "application": ``setup(conn)`` and ``send_newsletter(conn, ...)``
    tasks.py        the ``@task`` handlers: deliver_newsletter, weekly_digest, nightly_cleanup
    smtp_server.py  a local SMTP server (aiosmtpd) that bounces one domain, stores the rest
    __main__.py     ``python -m examples.newsletter [--once]``: the whole demo
"""
