"""A local SMTP server for the demo (aiosmtpd), with two kinds of recipient failure.

Recipient policy (checked at ``RCPT TO``):

* ``@bounce.invalid``    → ``550`` permanent rejection: the delivery job fails every attempt
  and ends ``dead`` (a dead letter);
* ``@greylist.example``  → ``451`` temporary rejection the *first* time an address is seen
  (greylisting, as real mail servers do), accepted afterwards: the job fails once, is retried
  with backoff and succeeds;
* anything else          → accepted.

Accepted messages are stored in a :class:`mailbox.Maildir` (one file per recipient, with a
``Delivered-To`` header, as a real MTA would), so the demo and its test can see who got what.

Standalone: ``python -m examples.newsletter.smtp_server [--port 8025] [--mailbox DIR]``.
"""

from __future__ import annotations

import argparse
import mailbox
import threading
from pathlib import Path

from aiosmtpd.controller import Controller

from .settings import BOUNCE_DOMAIN, GREYLIST_DOMAIN, mailbox_dir, smtp_host, smtp_port


def _domain(address: str) -> str:
    return address.rpartition("@")[2].lower()


class MaildirHandler:
    """aiosmtpd handler: applies the recipient policy above and files accepted mail."""

    def __init__(self, maildir: Path):
        self.maildir = mailbox.Maildir(maildir, create=True)
        self._greylisted: set[str] = set()
        self._lock = threading.Lock()

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        domain = _domain(address)
        if domain == BOUNCE_DOMAIN:
            return f"550 5.1.1 <{address}>: mailbox unavailable (domain {domain} bounces)"
        if domain == GREYLIST_DOMAIN and address.lower() not in self._greylisted:
            self._greylisted.add(address.lower())
            return f"451 4.7.1 <{address}>: greylisted, please try again later"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        content = envelope.original_content or envelope.content
        if isinstance(content, str):
            content = content.encode("utf-8")
        with self._lock:
            for rcpt in envelope.rcpt_tos:
                self.maildir.add(f"Delivered-To: {rcpt}\r\n".encode() + content)
        return "250 Message accepted for delivery"


def start(port: int | None = None, maildir: Path | None = None) -> Controller:
    """Start the server in a background thread; call ``.stop()`` on the result to stop it.

    Args:
        port: TCP port on ``NEWSLETTER_SMTP_HOST``; default :func:`smtp_port`.
        maildir: where accepted mail goes; default :func:`mailbox_dir`.

    Raises:
        OSError: the port is in use (or the host cannot be bound).
    """
    maildir = maildir or mailbox_dir()
    maildir.parent.mkdir(parents=True, exist_ok=True)
    controller = Controller(MaildirHandler(maildir), hostname=smtp_host(), port=port or smtp_port())
    controller.start()
    return controller


def main() -> None:
    """Run the server in the foreground until Ctrl-C."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=smtp_port())
    parser.add_argument("--mailbox", type=Path, default=mailbox_dir())
    args = parser.parse_args()
    controller = start(args.port, args.mailbox)
    print(f"SMTP on {controller.hostname}:{controller.port}, mail in {args.mailbox}/new")
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    finally:
        controller.stop()


if __name__ == "__main__":
    main()
