"""Integrations with frameworks, each an optional sub-package that imports its framework only
when it is used: :mod:`scheduler.contrib.django` (a Django app)."""
