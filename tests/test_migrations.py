"""The Alembic migrations build the schema from empty, tear it down again, and agree with the ORM
models in `schemas.tables`, on SQLite and on a real PostgreSQL."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import create_engine, inspect, pool

from model.stores.migrations import alembic_config, migrate
from model.stores.sql import RecordStoreUnavailable
from schemas.tables import metadata
from tests.databases import BACKENDS, closed_port_url, database, fresh_postgres_database

REPO = Path(__file__).resolve().parents[1]
TABLES = {"inspections", "pending_labels", "model_versions", "class_calibrations", "in_flight"}


@pytest.fixture(params=BACKENDS)
def db_url(request: pytest.FixtureRequest, tmp_path: Path):
    with database(request.param, tmp_path) as url:
        yield url


def tables(url: str) -> set[str]:
    engine = create_engine(url, poolclass=pool.NullPool)
    try:
        return set(inspect(engine).get_table_names())
    finally:
        engine.dispose()


# Alembic compares an expression index by its SQL text, which PostgreSQL rewrites (casts,
# parentheses) and SQLite cannot reflect: such an index is checked on its own below instead.
EXPRESSION_INDEXES = {"ix_inspections_review_queue"}


def _comparable(obj, name, type_, reflected, compare_to) -> bool:  # type: ignore[no-untyped-def]
    return not (type_ == "index" and name in EXPRESSION_INDEXES)


def pending_diff(url: str) -> list:
    engine = create_engine(url, poolclass=pool.NullPool)
    try:
        with engine.connect() as conn:
            ctx = MigrationContext.configure(
                conn,
                opts={
                    "compare_type": True,
                    "compare_server_default": True,
                    "include_object": _comparable,
                },
            )
            return compare_metadata(ctx, metadata)
    finally:
        engine.dispose()


def test_upgrade_downgrade_upgrade(db_url: str, tmp_path: Path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # migrate() finds the migrations from any working directory
    migrate(db_url)
    assert tables(db_url) == TABLES | {"alembic_version"}

    command.downgrade(alembic_config(db_url), "base")
    assert tables(db_url) == {"alembic_version"}  # Alembic's bookkeeping, now empty

    migrate(db_url)
    assert tables(db_url) == TABLES | {"alembic_version"}
    migrate(db_url)  # already at head: nothing to do, no error


def test_models_and_migrations_agree(db_url: str):
    migrate(db_url)
    assert pending_diff(db_url) == []


def test_a_model_change_without_migration_is_detected(tmp_path: Path):
    """The agreement test can fail: a table missing from the database shows as a diff."""
    url = f"sqlite:///{tmp_path / 'half.sqlite3'}"
    migrate(url)
    command.downgrade(alembic_config(url), "base")
    assert any(d[0] == "add_table" for d in pending_diff(url))


def test_alembic_cli_from_elsewhere_uses_env_url(tmp_path: Path):
    """`alembic -c <repo>/alembic.ini upgrade head` from another directory, URL from
    GRAD_DATABASE_URL; `-x url=...` wins over it."""
    env_db = tmp_path / "from-env.sqlite3"
    x_db = tmp_path / "from-x.sqlite3"
    env = {**os.environ, "GRAD_DATABASE_URL": f"sqlite:///{env_db}"}
    alembic = [sys.executable, "-m", "alembic", "-c", str(REPO / "alembic.ini")]
    subprocess.run([*alembic, "upgrade", "head"], cwd=tmp_path, env=env, check=True, timeout=120)
    assert tables(f"sqlite:///{env_db}") >= TABLES
    subprocess.run(
        [*alembic, "-x", f"url=sqlite:///{x_db}", "upgrade", "head"],
        cwd=tmp_path,
        env=env,
        check=True,
        timeout=120,
    )
    assert tables(f"sqlite:///{x_db}") >= TABLES


def test_migrate_an_unreachable_server_says_so():
    with pytest.raises(RecordStoreUnavailable, match="unavailable"):
        migrate(closed_port_url())


@pytest.mark.integration
def test_workers_starting_together_migrate_one_at_a_time():
    """Several worker processes migrating one PostgreSQL database at once: all succeed."""
    with fresh_postgres_database() as url:
        code = "import sys; from model.stores.migrations import migrate; migrate(sys.argv[1])"
        procs = [
            subprocess.Popen([sys.executable, "-c", code, url], stderr=subprocess.PIPE, text=True)
            for _ in range(3)
        ]
        for p in procs:
            _, err = p.communicate(timeout=120)
            assert p.returncode == 0, err
        assert tables(url) == TABLES | {"alembic_version"}
        assert pending_diff(url) == []


def test_the_review_queue_index_is_on_its_expression_over_unlabelled_rows(db_url: str):
    migrate(db_url)
    engine = create_engine(db_url, poolclass=pool.NullPool)
    try:
        with engine.connect() as conn:
            name = "'ix_inspections_review_queue'"
            if conn.dialect.name == "sqlite":
                sql = f"SELECT sql FROM sqlite_master WHERE name = {name}"
            else:
                sql = f"SELECT indexdef FROM pg_indexes WHERE indexname = {name}"
            definition = conn.exec_driver_sql(sql).scalar()
    finally:
        engine.dispose()
    assert definition, "the migrations create the review queue's index"
    flat = " ".join(definition.split()).lower()
    assert "abs(" in flat and "is_anomalous" in flat and "event_id" in flat
    assert "where" in flat and "label is null" in flat.replace("(", "").replace(")", "")
