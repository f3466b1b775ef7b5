"""Who may read and act on the dashboard: authentication, roles, CSRF, confirmations.

Authentication (:class:`AuthMiddleware`, in this order):

- ``create_app(authenticate=callable)``: the host app's own (when mounted in FastAPI or
  Starlette). The callable takes the :class:`~starlette.requests.Request` (sync or async) and
  returns ``(user, can_act)`` or ``None`` (401).
- Else credentials from the settings: HTTP basic auth (``SCHEDULER_DASHBOARD_USER`` /
  ``_PASSWORD``: may act; ``SCHEDULER_DASHBOARD_READONLY_USER`` / ``_PASSWORD``: reads only)
  or a bearer token (``SCHEDULER_DASHBOARD_TOKEN``: may act; ``_READONLY_TOKEN``: reads only).
  Missing or wrong credentials: 401 with ``WWW-Authenticate: Basic``.
- Else (nothing configured) an anonymous operator who may act, answered only for loopback
  clients (403 for any other): :func:`require_safe_listen` also refuses to *listen* on a
  non-loopback address without credentials.

``/healthz`` and ``/static/`` need no credentials. A dashboard built read-only
(``SCHEDULER_DASHBOARD_READ_ONLY``, ``--read-only``, ``create_app(read_only=True)``) refuses
every action whoever asks.

CSRF: a double-submit cookie bound to the user. The cookie holds a random nonce; a form's
``csrf_token`` field (or an ``X-CSRF-Token`` header) must be the HMAC-SHA256 of the nonce and
the user under the dashboard's secret (``SCHEDULER_DASHBOARD_SECRET``, else random per
process: set it when several processes serve one address). Every action handler starts with
:func:`confirmed_action`.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import inspect
import ipaddress
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from http.cookies import SimpleCookie

from starlette.datastructures import FormData
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..errors import SettingsError
from ..settings import Settings, env_name

Authenticate = Callable[[Request], "tuple[str, bool] | None | Awaitable[tuple[str, bool] | None]"]

CSRF_COOKIE = "scheduler_csrf"
CSRF_FIELD = "csrf_token"
_PUBLIC_PREFIXES = ("/healthz", "/static/")
_FORM_MAX_FIELDS = 100
_FORM_MAX_PART_BYTES = 64 * 1024


@dataclass(frozen=True)
class Credentials:
    """The credentials of the settings, as bytes (compared in constant time)."""

    basic: tuple[tuple[bytes, bytes, bool], ...]  # (user, password, can_act)
    tokens: tuple[tuple[bytes, str, bool], ...]  # (token, user shown, can_act)

    @classmethod
    def of(cls, settings: Settings) -> Credentials:
        basic = []
        for user, password, act in (
            (settings.dashboard_user, settings.dashboard_password, True),
            (settings.dashboard_readonly_user, settings.dashboard_readonly_password, False),
        ):
            if user is not None and password is not None:
                basic.append((user.encode(), password.get_secret_value().encode(), act))
        tokens = []
        for token, name, act in (
            (settings.dashboard_token, "token", True),
            (settings.dashboard_readonly_token, "readonly-token", False),
        ):
            if token is not None:
                tokens.append((token.get_secret_value().encode(), name, act))
        return cls(tuple(basic), tuple(tokens))

    def __bool__(self) -> bool:
        return bool(self.basic or self.tokens)

    def check(self, authorization: str) -> tuple[str, bool] | None:
        """``(user, can_act)`` for an ``Authorization`` header value, or None."""
        scheme, _, value = authorization.strip().partition(" ")
        value = value.strip()
        if scheme.lower() == "basic":
            try:
                user, sep, password = base64.b64decode(value, validate=True).partition(b":")
            except (binascii.Error, ValueError):
                return None
            found = None
            for known_user, known_password, act in self.basic:  # no early exit: same timing
                if sep and _same(user, known_user) & _same(password, known_password):
                    found = (user.decode("utf-8", "replace"), act)
            return found
        if scheme.lower() == "bearer":
            found = None
            for token, name, act in self.tokens:
                if _same(value.encode("utf-8", "replace"), token):
                    found = (name, act)
            return found
        return None


def _same(a: bytes, b: bytes) -> bool:
    return hmac.compare_digest(a, b)


def is_loopback(host: str) -> bool:
    """True for ``localhost``, ``127.0.0.0/8`` and ``::1``."""
    if host.strip("[]").lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def require_safe_listen(settings: Settings, host: str, option: str | None = None) -> None:
    """Refuse to serve the dashboard on ``host`` when it is not a loopback address and no
    credential is configured.

    Raises:
        SettingsError: names ``option`` (default ``SCHEDULER_DASHBOARD_HOST``) and the
            credential settings to set.
    """
    if is_loopback(host) or Credentials.of(settings):
        return
    raise SettingsError(
        [
            (
                f"{option or env_name('dashboard_host')}={host!r}: the dashboard would listen "
                "on a non-loopback address without credentials; set SCHEDULER_DASHBOARD_USER "
                "and SCHEDULER_DASHBOARD_PASSWORD (or SCHEDULER_DASHBOARD_TOKEN), or listen "
                "on 127.0.0.1"
            )
        ]
    )


class AuthMiddleware:
    """ASGI middleware: authenticates every request but ``/healthz`` and ``/static/``, puts
    ``dashboard_user`` and ``dashboard_can_act`` on ``request.state``, and sets the CSRF
    cookie when the request has none."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        credentials: Credentials,
        authenticate: Authenticate | None,
        read_only: bool,
        secret: bytes,
    ) -> None:
        self.app = app
        self.credentials = credentials
        self.authenticate = authenticate
        self.read_only = read_only
        self.secret = secret

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request = Request(scope)
        path = scope.get("path", "")[len(scope.get("root_path", "")) :] or "/"
        if path.startswith(_PUBLIC_PREFIXES) or scope.get("path", "").startswith(_PUBLIC_PREFIXES):
            await self.app(scope, receive, send)
            return
        who = await self._identify(request)
        if isinstance(who, Response):
            await who(scope, receive, send)
            return
        user, act = who
        nonce = request.cookies.get(CSRF_COOKIE, "")
        new_cookie = None
        if not (16 <= len(nonce) <= 64 and nonce.isalnum()):
            nonce = new_cookie = secrets.token_hex(16)
        state = scope.setdefault("state", {})
        state.update(
            dashboard_user=user,
            dashboard_can_act=act and not self.read_only,
            dashboard_csrf_nonce=nonce,
            dashboard_csrf_secret=self.secret,
        )
        if new_cookie is None:
            await self.app(scope, receive, send)
            return
        cookie = SimpleCookie()
        cookie[CSRF_COOKIE] = new_cookie
        cookie[CSRF_COOKIE]["path"] = scope.get("root_path") or "/"
        cookie[CSRF_COOKIE]["httponly"] = True
        cookie[CSRF_COOKIE]["samesite"] = "Strict"
        if scope.get("scheme") == "https":
            cookie[CSRF_COOKIE]["secure"] = True
        header = cookie.output(header="").strip().encode("latin-1")

        async def send_with_cookie(message: Message) -> None:
            if message["type"] == "http.response.start":
                message.setdefault("headers", [])
                message["headers"] = [*message["headers"], (b"set-cookie", header)]
            await send(message)

        await self.app(scope, receive, send_with_cookie)

    async def _identify(self, request: Request) -> tuple[str, bool] | Response:
        if self.authenticate is not None:
            found = self.authenticate(request)
            if inspect.isawaitable(found):
                found = await found
            if found is None:
                return PlainTextResponse("authentication required", status_code=401)
            user, act = found
            return str(user), bool(act)
        if self.credentials:
            found = self.credentials.check(request.headers.get("authorization", ""))
            if found is None:
                return PlainTextResponse(
                    "authentication required",
                    status_code=401,
                    headers={"WWW-Authenticate": 'Basic realm="scheduler", charset="UTF-8"'},
                )
            return found
        client = request.client.host if request.client else ""
        if not is_loopback(client):
            return PlainTextResponse(
                "the dashboard has no credentials configured and answers loopback clients "
                "only; set SCHEDULER_DASHBOARD_USER and SCHEDULER_DASHBOARD_PASSWORD",
                status_code=403,
            )
        return "local", True


def user(request: Request) -> str:
    """The authenticated user's name (``local`` when no credential is configured)."""
    return str(getattr(request.state, "dashboard_user", "anonymous"))


def can_act(request: Request) -> bool:
    """True when this request's user may run actions (not read-only by role or setting)."""
    return bool(getattr(request.state, "dashboard_can_act", False))


def csrf_token(request: Request) -> str:
    """The CSRF token to put in a form's ``csrf_token`` field (also a Jinja global)."""
    nonce: str = getattr(request.state, "dashboard_csrf_nonce", "")
    key: bytes = getattr(request.state, "dashboard_csrf_secret", b"")
    message = f"{nonce}\x00{user(request)}".encode("utf-8", "replace")
    return hmac.new(key, message, hashlib.sha256).hexdigest()


def _csrf_ok(request: Request, form: FormData) -> bool:
    given = form.get(CSRF_FIELD) or request.headers.get("x-csrf-token") or ""
    if not isinstance(given, str) or not getattr(request.state, "dashboard_csrf_nonce", ""):
        return False
    return hmac.compare_digest(given.encode("utf-8", "replace"), csrf_token(request).encode())


def _refused(request: Request, message: str) -> Response:
    from .context import render  # context imports this module

    return render(request, "error.html", status_code=403, title="Refused", message=message)


async def confirmed_action(request: Request, what: str) -> tuple[FormData, str] | Response:
    """Gate of every POST action handler.

    Returns a 403 page when the dashboard or the user is read-only or the CSRF token is
    missing or wrong; the confirmation page (``confirm.html``: states ``what`` and re-posts
    the same fields with ``confirmed=yes`` and a fresh token) when the form lacks
    ``confirmed=yes``; else ``(form, actor)`` with actor ``"dashboard:<user>"``.
    """
    from .context import render

    if not can_act(request):
        return _refused(request, "This dashboard or your user is read-only: actions are refused.")
    form = await request.form(
        max_files=0, max_fields=_FORM_MAX_FIELDS, max_part_size=_FORM_MAX_PART_BYTES
    )
    if not _csrf_ok(request, form):
        return _refused(
            request,
            "The form's CSRF token is missing or stale: reload the page and try again.",
        )
    if form.get("confirmed") != "yes":
        fields = [
            (k, v)
            for k, v in form.multi_items()
            if k not in (CSRF_FIELD, "confirmed") and isinstance(v, str)
        ]
        root = request.scope.get("root_path", "")
        action = request.url.path.removeprefix(root) if root else request.url.path
        back = form.get("next")
        if not (isinstance(back, str) and back.startswith("/") and not back.startswith("//")):
            back = "/"
        return render(request, "confirm.html", what=what, action=action, fields=fields, back=back)
    return form, f"dashboard:{user(request)}"
