"""The example's settings, read from the environment, and the demo's recipient domains.

=========================  =================================  ==============================
variable                   meaning                            default
=========================  =================================  ==============================
``SCHEDULER_DATABASE_URL`` database of both schemas           embedded server (demo only)
``SCHEDULER_EMBEDDED_DIR`` embedded server's folder           ``.scheduler``
``NEWSLETTER_SMTP_HOST``   SMTP server host                   ``127.0.0.1``
``NEWSLETTER_SMTP_PORT``   SMTP server port                   ``8025``
``NEWSLETTER_MAILBOX``     Maildir where the server files     ``<SCHEDULER_EMBEDDED_DIR>/
                           accepted mail                      mailbox``
=========================  =================================  ==============================
"""

from __future__ import annotations

import os
from pathlib import Path

#: Recipients in this domain are refused with 550 (permanent): their jobs end dead.
BOUNCE_DOMAIN = "bounce.invalid"
#: Recipients in this domain are refused with 451 once, then accepted: their jobs retry.
GREYLIST_DOMAIN = "greylist.example"


def smtp_host() -> str:
    """``NEWSLETTER_SMTP_HOST`` (default ``127.0.0.1``)."""
    return os.environ.get("NEWSLETTER_SMTP_HOST", "127.0.0.1")


def smtp_port() -> int:
    """``NEWSLETTER_SMTP_PORT`` (default ``8025``)."""
    return int(os.environ.get("NEWSLETTER_SMTP_PORT", "8025"))


def embedded_dir() -> Path:
    """``SCHEDULER_EMBEDDED_DIR`` (default ``.scheduler``), as the scheduler CLI reads it."""
    return Path(os.environ.get("SCHEDULER_EMBEDDED_DIR", ".scheduler"))


def mailbox_dir() -> Path:
    """``NEWSLETTER_MAILBOX``, else ``<SCHEDULER_EMBEDDED_DIR>/mailbox``."""
    configured = os.environ.get("NEWSLETTER_MAILBOX")
    return Path(configured) if configured else embedded_dir() / "mailbox"
