"""The shop's tables (SQLAlchemy 2 models) and its async engine.

``DATABASE_URL`` is a SQLAlchemy URL with the psycopg 3 driver
(``postgresql+psycopg://user:password@host:5432/shop``): the scheduler's statements then run on
the same connection, in the same transaction as the ORM's. The scheduler itself gets the same
database as a libpq URL (:func:`libpq_url`).
"""

from __future__ import annotations

from datetime import datetime

from psycopg.conninfo import conninfo_to_dict
from sqlalchemy import CheckConstraint, ForeignKey, String, func
from sqlalchemy.engine import URL, make_url
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class Base(DeclarativeBase):
    pass


class Product(Base):
    __tablename__ = "products"
    __table_args__ = (CheckConstraint("stock >= 0", name="stock_not_negative"),)

    sku: Mapped[str] = mapped_column(String(40), primary_key=True)
    stock: Mapped[int]


class Order(Base):
    __tablename__ = "orders"
    __table_args__ = (CheckConstraint("quantity > 0", name="quantity_positive"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    sku: Mapped[str] = mapped_column(ForeignKey("products.sku"))
    quantity: Mapped[int]
    status: Mapped[str] = mapped_column(String(20), default="pending")
    created_at: Mapped[datetime] = mapped_column(server_default=func.now())
    confirmed_at: Mapped[datetime | None]


def libpq_url(url: str | URL) -> str:
    """The libpq URL of the database of a ``postgresql+psycopg://`` SQLAlchemy URL (for
    ``SCHEDULER_DATABASE_URL``); password kept."""
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


def sqlalchemy_url(libpq: str) -> URL:
    """The ``postgresql+psycopg://`` SQLAlchemy URL of a libpq URL or ``key=value`` string
    (e.g. the embedded server's, whose host is a socket directory)."""
    params = {key: str(value) for key, value in conninfo_to_dict(libpq).items() if value is not None}
    return URL.create("postgresql+psycopg", query=params)


class Database:
    """The app's engine and session factory: opened by the app's lifespan, closed after it.
    The task handlers use it too (they run in the same process)."""

    def __init__(self) -> None:
        self._engine: AsyncEngine | None = None
        self._sessions: async_sessionmaker[AsyncSession] | None = None

    def open(self, url: str | URL) -> None:
        self._engine = create_async_engine(url, pool_size=5)
        self._sessions = async_sessionmaker(self._engine, expire_on_commit=False)

    @property
    def engine(self) -> AsyncEngine:
        if self._engine is None:
            raise RuntimeError("the database is not open (the app's lifespan opens it)")
        return self._engine

    def session(self) -> AsyncSession:
        if self._sessions is None:
            raise RuntimeError("the database is not open (the app's lifespan opens it)")
        return self._sessions()

    async def create_tables(self) -> None:
        """The example's tables (a real app uses Alembic migrations)."""
        async with self.engine.begin() as conn:
            await conn.run_sync(Base.metadata.create_all)

    async def close(self) -> None:
        if self._engine is not None:
            await self._engine.dispose()
        self._engine = self._sessions = None


db = Database()
