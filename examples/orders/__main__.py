"""``python -m examples.orders``: serve the app on http://127.0.0.1:8000 (uvicorn).

Database: ``DATABASE_URL`` (``postgresql+psycopg://...``), else ``SCHEDULER_DATABASE_URL``,
else the embedded PostgreSQL in ``.scheduler/`` (started, as ``scheduler run`` does).
"""

from __future__ import annotations

import logging
import os

import uvicorn

from scheduler import embedded

from .app import create_app
from .database import sqlalchemy_url


def main() -> None:
    url = os.environ.get("DATABASE_URL") or sqlalchemy_url(
        os.environ.get("SCHEDULER_DATABASE_URL") or embedded.start(".scheduler")
    )
    # the app owns logging: the scheduler's events (scheduler.*) go through it
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    app = create_app(url, products={"tea": 100, "mug": 3})
    uvicorn.run(app, host="127.0.0.1", port=int(os.environ.get("PORT", "8000")))


if __name__ == "__main__":
    main()
