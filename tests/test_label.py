"""`python -m model.label`, run as a person runs it: a subprocess against a real database."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from model.label import main
from model.stores.migrations import migrate
from model.stores.records import RecordStore
from schemas.records import InspectionRecord
from tests.databases import closed_port_url, make_result


def label_cli(*args: str, cwd: Path, env: dict[str, str] | None = None):
    return subprocess.run(
        [sys.executable, "-m", "model.label", *args],
        cwd=cwd,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.fixture
def db(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'inspections.sqlite3'}"
    migrate(url)
    with RecordStore(url) as store:
        store.upsert_inspections([InspectionRecord.from_result(make_result("ev-1"), None)])
    return url


def test_a_label_for_a_recorded_inspection_is_applied(db: str, tmp_path: Path):
    out = label_cli(
        "ev-1", "--anomalous", "--by", "ana", "--note", "scratch", "--database-url", db,
        cwd=tmp_path,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert "applied" in out.stdout and "anomalous" in out.stdout
    with RecordStore(db) as store:
        got = store.get("ev-1")
    assert got is not None
    assert (got.label, got.labelled_by, got.label_note) == ("anomalous", "ana", "scratch")
    assert got.labelled_at is not None and got.labelled_at.tzinfo is not None


def test_a_label_for_an_unknown_event_is_kept_and_applied_on_arrival(db: str, tmp_path: Path):
    # The URL from GRAD_DATABASE_URL this time, as an operator's shell would have it.
    out = label_cli("ev-2", "--normal", "--by", "bo", cwd=tmp_path, env={"GRAD_DATABASE_URL": db})
    assert out.returncode == 0, out.stderr
    assert "no inspection recorded yet" in out.stdout
    assert "kept and will be applied when the inspection arrives" in out.stdout
    with RecordStore(db) as store:
        assert store.pending_labels() == {"ev-2": "normal"}
        store.upsert_inspections([InspectionRecord.from_result(make_result("ev-2"), None)])
        got = store.get("ev-2")
    assert got is not None and (got.label, got.labelled_by) == ("normal", "bo")


def test_an_older_decision_than_the_recorded_one_changes_nothing(db: str, tmp_path: Path):
    first = label_cli("ev-1", "--normal", "--by", "ana", "--database-url", db, cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    late = label_cli(
        "ev-1", "--anomalous", "--by", "bo", "--at", "2020-01-01T00:00:00+00:00",
        "--database-url", db, cwd=tmp_path,
    )  # fmt: skip
    assert late.returncode == 0, late.stderr
    assert "not changed" in late.stdout
    with RecordStore(db) as store:
        got = store.get("ev-1")
    assert got is not None and (got.label, got.labelled_by) == ("normal", "ana")


def test_an_unreachable_database_is_a_clear_failure(tmp_path: Path):
    out = label_cli(
        "ev-1", "--anomalous", "--by", "ana", "--database-url", closed_port_url(), cwd=tmp_path
    )
    assert out.returncode == 1
    assert "cannot reach the database" in out.stderr
    assert "Traceback" not in out.stderr


def test_a_missing_sqlite_file_is_not_created(tmp_path: Path):
    path = tmp_path / "absent.sqlite3"
    out = label_cli(
        "ev-1", "--normal", "--by", "ana", "--database-url", f"sqlite:///{path}", cwd=tmp_path
    )
    assert out.returncode == 1 and "no database at" in out.stderr
    assert not path.exists()


def test_an_unmigrated_database_is_a_clear_failure(tmp_path: Path):
    path = tmp_path / "empty.sqlite3"
    path.touch()
    out = label_cli(
        "ev-1", "--normal", "--by", "ana", "--database-url", f"sqlite:///{path}", cwd=tmp_path
    )
    assert out.returncode == 1 and "alembic upgrade head" in out.stderr
    assert "Traceback" not in out.stderr


@pytest.mark.parametrize(
    "args",
    [
        ["ev-1", "--by", "ana"],  # no verdict
        ["ev-1", "--normal", "--anomalous", "--by", "ana"],  # two verdicts
        ["ev-1", "--normal"],  # nobody
        ["bad id!", "--normal", "--by", "ana"],
        ["ev-1", "--normal", "--by", "ana", "--at", "2026-01-01T00:00:00"],  # no zone
    ],
)
def test_usage_errors(args: list[str]):
    with pytest.raises(SystemExit) as exit_:
        main(args)
    assert exit_.value.code == 2
