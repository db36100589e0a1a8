"""The SQL database as the stores use it: engines set up for the worker's durability needs,
URLs (a password never printed), one transaction per call, and the two kinds of failure.

Failures come in two kinds. `RecordStoreUnavailable`: the database cannot be reached, the
connection dropped, it is locked or busy; nothing was written, and the same call can simply be
retried later (the worker backs off and stops committing offsets meanwhile). Anything else
(an integrity error, a missing table, a bug) propagates unchanged: retrying would not help.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import Any, TypeVar

from sqlalchemy import Connection, Engine, create_engine, event, select, text
from sqlalchemy import exc as sa_exc
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import URL, make_url

from model.core.clock import utc_now

DEFAULT_URL = "sqlite:///inspections.sqlite3"

# PostgreSQL: one advisory-lock key guarding "is there an inspection row for this event id?".
# Upserts take it shared (they never wait for each other), `label` exclusive, so a label and the
# inspection it belongs to cannot pass each other unseen (the label left pending forever).
LABEL_LOCK_KEY = 0x67726164  # "grad"
# Ids per IN (...) list: far below SQLite's and PostgreSQL's bound-parameter limits.
CHUNK = 500


class RecordStoreUnavailable(RuntimeError):
    """The database cannot be reached, or dropped the connection, or is busy; retry later.

    Each call is one transaction, so the failed call happened whole or not at all; when the
    connection dropped during the commit itself, nobody can tell which. Every write here is
    idempotent, so retrying the same call is always safe.
    """


def database_url(url: str | URL) -> URL:
    """The URL as SQLAlchemy should use it: PostgreSQL through psycopg 3 unless told otherwise."""
    u = make_url(url)
    if u.drivername in ("postgresql", "postgres"):
        u = u.set(drivername="postgresql+psycopg")
    return u


def safe_url(url: str | URL) -> str:
    """The URL for messages and logs: password hidden."""
    return make_url(url).render_as_string(hide_password=True)


# SQLite reports these as OperationalError although they are mistakes in the program or the
# schema (a database nobody migrated), not outages: they propagate instead of being retried.
_SQLITE_PROGRAMMING = ("no such table", "no such column", "has no column", "syntax error")


def is_unavailable(exc: BaseException) -> bool:
    """True for a failure that retrying later can fix: unreachable, disconnected, locked, busy."""
    if isinstance(exc, sa_exc.TimeoutError):  # no connection free in the pool in time
        return True
    if not isinstance(exc, sa_exc.DBAPIError):
        return False
    if exc.connection_invalidated or isinstance(exc, sa_exc.InterfaceError):
        return True
    if isinstance(exc, sa_exc.OperationalError):
        message = str(exc.orig).lower()
        return not any(m in message for m in _SQLITE_PROGRAMMING)
    return False


@contextmanager
def translate_errors(url: URL) -> Iterator[None]:
    try:
        yield
    except (sa_exc.DBAPIError, sa_exc.TimeoutError) as exc:
        if is_unavailable(exc):
            detail = str(getattr(exc, "orig", None) or exc).strip().splitlines()
            raise RecordStoreUnavailable(
                f"database {safe_url(url)} unavailable: {detail[0] if detail else exc!r}"
            ) from exc
        raise


def aware(at: datetime | None, name: str) -> datetime:
    if at is None:
        return utc_now()
    if at.utcoffset() is None:
        raise ValueError(f"{name} must carry a time zone, got {at!r}")
    return at


def make_engine(url: str | URL, *, connect_timeout_s: float = 5.0, echo: bool = False) -> Engine:
    """An engine set up for the worker's use of the database.

    SQLite: WAL journal (readers never block the writer), `synchronous=FULL` (a committed row
    survives a power cut: offsets are committed on the strength of it), foreign keys enforced,
    and a busy timeout; write transactions start with BEGIN IMMEDIATE so two writers queue on
    the busy timeout instead of failing on a lock upgrade. PostgreSQL: a connect timeout and
    TCP keepalives, so an outage or a dropped connection surfaces in seconds, not minutes.
    Every checkout is pinged first (`pool_pre_ping`), so a connection that died while idle is
    replaced instead of failing the next write.
    """
    u = database_url(url)
    backend = u.get_backend_name()
    connect_args: dict[str, Any] = {}
    if backend == "sqlite":
        connect_args["timeout"] = connect_timeout_s  # sqlite3's busy timeout, in seconds
    elif backend == "postgresql":
        timeout = max(2, round(connect_timeout_s))  # libpq: whole seconds, at least 2
        connect_args.update(
            connect_timeout=timeout,
            keepalives=1,
            keepalives_idle=10,
            keepalives_interval=5,
            keepalives_count=3,
            # Unacknowledged data for this long means the server is gone (Linux only).
            tcp_user_timeout=30_000,
            application_name="grad-inspect",
        )
    engine = create_engine(u, pool_pre_ping=True, connect_args=connect_args, echo=echo)
    if backend == "sqlite":
        busy_ms = int(connect_timeout_s * 1000)

        @event.listens_for(engine, "connect")
        def _sqlite_connect(dbapi_connection: Any, _record: Any) -> None:
            # Take transaction control from the sqlite3 module (it would BEGIN too late and
            # never for a SELECT); SQLAlchemy's "begin" event below emits BEGIN instead.
            dbapi_connection.isolation_level = None
            cur = dbapi_connection.cursor()
            try:
                cur.execute("PRAGMA journal_mode=WAL")
                cur.execute("PRAGMA synchronous=FULL")
                cur.execute("PRAGMA foreign_keys=ON")
                cur.execute(f"PRAGMA busy_timeout={busy_ms}")
            finally:
                cur.close()

        @event.listens_for(engine, "begin")
        def _sqlite_begin(conn: Connection) -> None:
            immediate = conn.get_execution_options().get("grad_write", False)
            conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")

    return engine


_S = TypeVar("_S", bound="SqlStore")


class SqlStore:
    """One database behind a pooled engine; every method of a store built on it is one
    transaction, whole or not at all. Thread-safe (one connection per call, from a pool)."""

    def __init__(self, url: str, *, connect_timeout_s: float = 5.0, echo: bool = False) -> None:
        self.url = database_url(url)
        self.engine = make_engine(self.url, connect_timeout_s=connect_timeout_s, echo=echo)
        self.dialect = self.engine.dialect.name

    def __repr__(self) -> str:
        return f"{type(self).__name__}({safe_url(self.url)!r})"

    def close(self) -> None:
        """Close every pooled connection (a later call opens new ones)."""
        self.engine.dispose()

    def __enter__(self: _S) -> _S:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- transactions -------------------------------------------------------------------------

    @contextmanager
    def _read(self) -> Iterator[Connection]:
        with translate_errors(self.url), self.engine.connect() as conn, conn.begin():
            yield conn

    @contextmanager
    def _write(self, label_lock: str | None = None) -> Iterator[Connection]:
        """A write transaction; `label_lock` 'shared' or 'exclusive' orders it against labels."""
        with translate_errors(self.url), self.engine.connect() as conn:
            conn.execution_options(grad_write=True)
            with conn.begin():
                if label_lock is not None and self.dialect == "postgresql":
                    shared = "_shared" if label_lock == "shared" else ""
                    lock = text(f"SELECT pg_advisory_xact_lock{shared}(:key)")
                    conn.execute(lock, {"key": LABEL_LOCK_KEY})
                yield conn

    def _insert(self, table: Any) -> Any:
        if self.dialect == "postgresql":
            return postgresql.insert(table)
        if self.dialect == "sqlite":
            return sqlite.insert(table)
        raise NotImplementedError(f"upserts on {self.dialect} are not implemented")

    # -- health -------------------------------------------------------------------------------

    def ping(self) -> None:
        """Raises `RecordStoreUnavailable` unless the database answers a query now."""
        with self._read() as conn:
            conn.execute(select(1)).scalar_one()
