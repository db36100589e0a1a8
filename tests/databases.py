"""Real databases for the tests: a SQLite file, a fresh PostgreSQL database, a PostgreSQL server
of the test's own (to stop and start).

PostgreSQL is found through `GRAD_TEST_POSTGRES_URL` (default: the local server on
127.0.0.1:5432, database `test`, as CI provides it; `.ci/services` exports it). Tests that need
it are skipped, with the reason, when it does not answer. Each test gets a database of its own,
created from that URL and dropped after.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import shutil
import socket
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from pathlib import Path
from types import ModuleType

import pytest
from pydantic_settings import BaseSettings, SettingsConfigDict
from sqlalchemy import create_engine, pool, text
from sqlalchemy.engine import make_url

from schemas.events import InspectionResult, StageTimings

BACKENDS = ["sqlite", pytest.param("postgresql", marks=pytest.mark.integration)]


class DatabaseTestSettings(BaseSettings):
    """Where the tests find PostgreSQL (GRAD_TEST_POSTGRES_URL)."""

    __test__ = False
    model_config = SettingsConfigDict(env_prefix="GRAD_TEST_", extra="ignore")
    postgres_url: str = "postgresql+psycopg://postgres@127.0.0.1:5432/test"


SETTINGS = DatabaseTestSettings()


@functools.cache
def postgres_unavailable() -> str | None:
    """Why PostgreSQL cannot be used, or None when it answers."""
    url = make_url(SETTINGS.postgres_url)
    engine = create_engine(url, poolclass=pool.NullPool, connect_args={"connect_timeout": 3})
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else repr(exc)
        return (
            f"PostgreSQL at {url.render_as_string(hide_password=True)} does not answer "
            f"({first}); set GRAD_TEST_POSTGRES_URL (CI always has one: .ci/services)"
        )
    finally:
        engine.dispose()
    return None


@contextmanager
def fresh_postgres_database() -> Iterator[str]:
    """A new, empty database on the test server, dropped afterwards; yields its URL."""
    reason = postgres_unavailable()
    if reason is not None:
        pytest.skip(reason)
    base = make_url(SETTINGS.postgres_url)
    name = f"grad_test_{uuid.uuid4().hex[:12]}"
    admin = create_engine(base, isolation_level="AUTOCOMMIT", poolclass=pool.NullPool)
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
        yield base.set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@contextmanager
def database(backend: str, tmp_path: Path) -> Iterator[str]:
    """An empty database of the given kind ('sqlite' or 'postgresql'); yields its URL."""
    if backend == "sqlite":
        yield f"sqlite:///{tmp_path / 'records.sqlite3'}"
    else:
        with fresh_postgres_database() as url:
            yield url


def free_port() -> int:
    """A loopback port nothing listens on (right now)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def closed_port_url() -> str:
    """A PostgreSQL URL pointing at a loopback port where no server listens."""
    return f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/test"


T0 = datetime(2026, 11, 29, 10, 0, 0, 123456, tzinfo=timezone.utc)


def make_result(event_id: str, *, score: float = 0.4, seconds: int = 0) -> InspectionResult:
    """A result as the worker publishes it (times in a non-UTC zone, to test the round trip)."""
    cet = timezone(timedelta(hours=1))
    captured = (T0 + timedelta(seconds=seconds)).astimezone(cet)
    return InspectionResult(
        event_id=event_id,
        line="line-3",
        station="cam-1",
        product_class="hazelnut",
        captured_at=captured,
        score=score,
        threshold=0.5,
        confidence=0.4,
        is_anomalous=score > 0.5,
        calibrated=True,
        heatmap_uri=f"file:///heatmaps/{event_id}.png",
        model_version="grad-0123456789abcdef",
        processed_at=captured + timedelta(milliseconds=250),
        timings=StageTimings(
            queue_ms=1.0, fetch_decode_ms=2.0, infer_ms=3.0, heatmap_ms=4.0, batch_size=1
        ),
    )


def _pg_bindir() -> Path | None:
    found = shutil.which("initdb")
    if found:
        return Path(found).resolve().parent
    versions = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    return versions[-1].parent if versions else None


class PostgresServer:
    """A throwaway PostgreSQL server on a free loopback port, to stop and start at will.

    Runs as the `postgres` OS user when the tests run as root (PostgreSQL refuses root). Trust
    authentication, no fsync: for tests only.
    """

    def __init__(self) -> None:
        bindir = _pg_bindir()
        if bindir is None:
            pytest.skip("PostgreSQL server binaries (initdb, pg_ctl) not installed")
        self.bindir = bindir
        self.as_user: list[str] = []
        self.root = Path(tempfile.mkdtemp(prefix="grad-pg-"))
        if os.geteuid() == 0:
            if shutil.which("runuser") is None:
                pytest.skip("running as root, and no runuser to start PostgreSQL as postgres")
            self.as_user = ["runuser", "-u", "postgres", "--"]
            shutil.chown(self.root, "postgres", "postgres")
        self.data = self.root / "data"
        self.port = free_port()
        self._run("initdb", "-D", str(self.data), "-A", "trust", "-U", "postgres", "--no-sync")

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, tool: str, *args: str) -> None:
        subprocess.run(
            [*self.as_user, str(self.bindir / tool), *args],
            check=True,
            capture_output=True,
            timeout=120,
        )

    def start(self) -> None:
        opts = (
            f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 "
            "-c fsync=off -c full_page_writes=off"
        )
        self._run(
            "pg_ctl", "-D", str(self.data), "-l", str(self.root / "log"), "-o", opts, "-w",
            "start",
        )  # fmt: skip

    def stop(self) -> None:
        self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop")

    def close(self) -> None:
        try:
            subprocess.run(
                [*self.as_user, str(self.bindir / "pg_ctl"), "-D", str(self.data), "-m",
                 "immediate", "-w", "stop"],
                capture_output=True,
                timeout=60,
            )  # fmt: skip
        finally:
            shutil.rmtree(self.root, ignore_errors=True)


def migration_module(filename: str) -> ModuleType:
    """A revision file of migrations/versions, loaded as a module (they are not a package), to
    compare the SQL it wrote out with the code's own."""
    path = Path(__file__).resolve().parents[1] / "migrations" / "versions" / filename
    spec = importlib.util.spec_from_file_location(path.stem, path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
