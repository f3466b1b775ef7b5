"""FastAPI + SQLAlchemy 2 example: an order and its job in one transaction, the scheduler's
replica embedded in the app's lifespan (``python -m examples.orders``; see README.md)."""
