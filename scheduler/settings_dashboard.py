"""The web dashboard's settings (:mod:`scheduler.web`, docs/dashboard.md), a base of
:class:`scheduler.settings.Settings`: read from the same ``SCHEDULER_`` environment, checked
the same way (passwords, tokens and the CSRF secret are ``SecretStr``, never shown, not even
redacted, in a :class:`~scheduler.errors.SettingsError`)."""

from __future__ import annotations

import re
from typing import Self

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings


class DashboardSettings(BaseSettings):
    """The ``SCHEDULER_DASHBOARD_*`` fields; see :class:`scheduler.settings.Settings`."""

    # the web dashboard (scheduler.web; docs/dashboard.md)
    dashboard_port: int | None = Field(
        default=None,
        ge=0,
        le=65535,
        description="port of the web dashboard served inside `scheduler run` (unset: none); "
        "also the default port of `scheduler dashboard` (else 8080)",
    )
    dashboard_host: str = Field(
        default="127.0.0.1",
        description="address the dashboard binds to; a non-loopback one needs a credential",
    )
    dashboard_user: str | None = Field(default=None, description="basic-auth user who may act")
    dashboard_password: SecretStr | None = None
    dashboard_readonly_user: str | None = Field(
        default=None, description="basic-auth user who may only read"
    )
    dashboard_readonly_password: SecretStr | None = None
    dashboard_token: SecretStr | None = Field(default=None, description="bearer token that may act")
    dashboard_readonly_token: SecretStr | None = Field(
        default=None, description="bearer token that may only read"
    )
    dashboard_secret: SecretStr | None = Field(
        default=None,
        description="key of the CSRF tokens (default: random per process; set it when "
        "several processes serve one dashboard address)",
    )
    dashboard_read_only: bool = Field(default=False, description="refuse every action")
    dashboard_statement_timeout_s: float = Field(
        default=2.0,
        gt=0,
        le=60,
        description="a dashboard statement is cancelled after this long, so the dashboard "
        "cannot load the database",
    )

    @model_validator(mode="after")
    def _dashboard_credentials_paired(self) -> Self:
        for user, password in (
            ("dashboard_user", "dashboard_password"),
            ("dashboard_readonly_user", "dashboard_readonly_password"),
        ):
            if (getattr(self, user) is None) != (getattr(self, password) is None):
                raise ValueError(
                    f"SCHEDULER_{user.upper()} and SCHEDULER_{password.upper()} go together: "
                    "set both or neither"
                )
        return self

    @field_validator("dashboard_user", "dashboard_readonly_user")
    @classmethod
    def _dashboard_user_name(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"[^\x00-\x20:\x7f\ud800-\udfff]{1,200}", value):
            raise ValueError("1-200 characters, no ':', spaces, control characters or NUL")
        return value

    @field_validator("dashboard_host")
    @classmethod
    def _host_name(cls, value: str) -> str:
        if not re.fullmatch(r"[^\x00-\x20\x7f\ud800-\udfff]{1,255}", value):
            raise ValueError("a host name or address: 1-255 characters, no spaces or NUL")
        return value

    @field_validator(
        "dashboard_password",
        "dashboard_readonly_password",
        "dashboard_token",
        "dashboard_readonly_token",
        "dashboard_secret",
    )
    @classmethod
    def _dashboard_secrets(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            text = value.get_secret_value()
            if not text or len(text) > 1000 or re.search("[\x00-\x1f\x7f\ud800-\udfff]", text):
                raise ValueError("1-1000 characters, no control characters (value not shown)")
        return value
