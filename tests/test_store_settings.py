"""The stores' settings are declared once (`model.stores.settings`) and read by every program
under its own prefix: the worker as `WORKER_*`, the retraining, promotion and labelling as
`GRAD_*`. A program must never pick up another's variable, nor an unprefixed one."""

from __future__ import annotations

import pytest

from model.settings import LabelSettings, RetrainSettings
from model.stores.settings import StoreSettings
from worker.settings import WorkerSettings


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in ("DATABASE_URL", "IMAGE_ROOTS", "REDIS_URL", "ARTIFACT_STORE"):
        for prefix in ("", "GRAD_", "WORKER_"):
            monkeypatch.delenv(prefix + name, raising=False)
    return monkeypatch


def test_each_program_reads_the_store_fields_under_its_own_prefix(env) -> None:
    env.setenv("GRAD_DATABASE_URL", "sqlite:///grad.db")
    env.setenv("GRAD_IMAGE_ROOTS", "/a, /b,")
    env.setenv("GRAD_REDIS_URL", "redis://grad:6379/0")
    env.setenv("WORKER_DATABASE_URL", "sqlite:///worker.db")
    env.setenv("WORKER_IMAGE_ROOTS", "/c")
    env.setenv("DATABASE_URL", "sqlite:///nobody.db")  # unprefixed: read by no program
    retrain = RetrainSettings()
    assert retrain.database_url.get_secret_value() == "sqlite:///grad.db"
    assert retrain.image_roots == ["/a", "/b"] and retrain.redis() == "redis://grad:6379/0"
    assert LabelSettings().database_url.get_secret_value() == "sqlite:///grad.db"
    worker = WorkerSettings(topic="line-3")
    assert worker.database_url.get_secret_value() == "sqlite:///worker.db"
    assert worker.image_roots == ["/c"] and worker.redis() is None


def test_the_store_fields_are_declared_once(env) -> None:
    shared = set(StoreSettings.model_fields)
    assert {"database_url", "redis_url", "state_prefix", "artifact_store", "image_roots"} <= shared
    for program in (RetrainSettings, WorkerSettings):
        assert shared <= set(program.model_fields)
        for name in shared:  # inherited, not declared again with another default
            assert program.model_fields[name].default == StoreSettings.model_fields[name].default


def test_secrets_stay_masked_in_what_programs_print(env) -> None:
    env.setenv("GRAD_DATABASE_URL", "postgresql://grad:s3cret@db/grad")
    env.setenv("GRAD_REDIS_URL", "redis://:s3cret@redis:6379/0")
    assert "s3cret" not in str(RetrainSettings().public())
    assert "s3cret" not in repr(RetrainSettings())
