"""Runnable examples of the scheduler (``python -m examples.<name>`` from the repo root)."""
