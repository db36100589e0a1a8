"""Alembic environment: which database, and the metadata migrations are compared against.

The URL comes from, in order: the caller (`model.stores.migrations.migrate(url)` puts it in
`config.attributes["url"]`), `alembic -x url=...`, the environment variable
`GRAD_DATABASE_URL`, and the embedded default `sqlite:///inspections.sqlite3`. A plain
`postgresql://` URL is run through psycopg 3, like everywhere else in the project.

SQLite cannot alter most of a table in place, so migrations run in batch mode there (Alembic
copies the table); on PostgreSQL the same operations are plain ALTERs.
"""

from __future__ import annotations

import os
from logging.config import fileConfig

from alembic import context
from sqlalchemy import Connection, create_engine, pool, text
from sqlalchemy.engine import make_url

from schemas.tables import UTCDateTime, metadata

DEFAULT_URL = "sqlite:///inspections.sqlite3"
# PostgreSQL advisory lock held while migrating: workers starting together migrate one by one
# (the later ones find the schema at head and do nothing) instead of racing to create tables.
MIGRATION_LOCK_KEY = 0x67726164_6D6967  # "grad" "mig"

config = context.config

# The alembic CLI configures logging from alembic.ini; a program calling migrate() keeps its own.
if config.config_file_name is not None and config.attributes.get("configure_logging", True):
    fileConfig(config.config_file_name, disable_existing_loggers=False)

target_metadata = metadata


def database_url() -> str:
    url = (
        config.attributes.get("url")
        or context.get_x_argument(as_dictionary=True).get("url")
        or os.environ.get("GRAD_DATABASE_URL")
        or DEFAULT_URL
    )
    u = make_url(url)
    if u.drivername in ("postgresql", "postgres"):
        u = u.set(drivername="postgresql+psycopg")
    return u.render_as_string(hide_password=False)


def render_item(type_: str, obj: object, autogen_context: object) -> str | bool:
    """Autogenerate writes the project's UTC wrapper as the plain type it stands for, so a
    revision never imports application code."""
    if type_ == "type" and isinstance(obj, UTCDateTime):
        return "sa.DateTime(timezone=True)"
    return False


def _configure(**kw) -> None:
    url = make_url(kw.get("url") or kw["connection"].engine.url)
    context.configure(
        target_metadata=target_metadata,
        render_as_batch=url.get_backend_name() == "sqlite",
        compare_type=True,
        compare_server_default=True,
        render_item=render_item,
        **kw,
    )


def run_migrations_offline() -> None:
    """`alembic upgrade head --sql`: print the SQL instead of running it."""
    _configure(url=database_url(), literal_binds=True, dialect_opts={"paramstyle": "named"})
    with context.begin_transaction():
        context.run_migrations()


def _migrate(connection: Connection) -> None:
    _configure(connection=connection)
    with context.begin_transaction():
        if connection.dialect.name == "postgresql":
            connection.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": MIGRATION_LOCK_KEY})
        context.run_migrations()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:  # a caller's open connection (tests, one-transaction setups)
        _migrate(connection)
        return
    engine = create_engine(database_url(), poolclass=pool.NullPool)
    try:
        with engine.connect() as connection:
            _migrate(connection)
    finally:
        engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
