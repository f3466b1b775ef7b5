"""The ``scheduler`` command (see :mod:`scheduler.cli.main`), one module per group of
commands: ``main`` (migrate, check, run), ``schedules``, ``jobs`` (status, jobs, dead letters),
``tasks`` (tasks list, enqueue), and the helpers they share in ``common``."""

from .main import build_parser, main

__all__ = ["build_parser", "main"]
