"""`python -m model.promote VERSION`, run as a person runs it: any recorded version becomes
active in SQL and in the workers' state store (Redis), loaded from the artifact store when Redis
does not hold it; a version never recorded is refused."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

import pytest

from model.inference.checkpoint import from_bytes, read_meta
from model.lifecycle.promotion import register
from model.stores.artifacts import ArtifactStore
from model.stores.migrations import migrate
from model.stores.records import RecordStore
from model.stores.state import RedisStateStore
from schemas import ClassCalibration, ClassState

pytestmark = pytest.mark.integration


def promote_cli(*args: str, env: dict[str, str], cwd: Path):
    return subprocess.run(
        [sys.executable, "-m", "model.promote", *args],
        cwd=cwd,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_promote_and_roll_back_a_recorded_version(tiny_ckpt, tiny_ckpt_b, own_redis, tmp_path):
    url = f"sqlite:///{tmp_path / 'records.sqlite3'}"
    migrate(url)
    models = tmp_path / "models"
    env = {
        "GRAD_DATABASE_URL": url,
        "GRAD_REDIS_URL": own_redis.url,
        "GRAD_STATE_PREFIX": "promo",
        "GRAD_ARTIFACT_STORE": str(models),
    }
    v_a, v_b = read_meta(tiny_ckpt).version, read_meta(tiny_ckpt_b).version
    artifacts = ArtifactStore(models)
    with RecordStore(url) as records:
        for ckpt in (tiny_ckpt, tiny_ckpt_b):
            blob = ckpt.read_bytes()
            register(records, artifacts, blob, from_bytes(blob)[1])
        records.set_active(v_a, by="bootstrap")
    store = RedisStateStore(own_redis.url, "promo")
    store.put_model(v_a, tiny_ckpt.read_bytes())
    store.set_active(v_a)
    cal = ClassCalibration(threshold=1e6, scale=1, target_fpr=0.01, n_images=9, mean=1, std=0.1,
                           median=1, q99=1.2, max=1.3, method="empirical")  # fmt: skip
    now = datetime.now(timezone.utc).isoformat()
    store.set_class_state("cookie", ClassState(calibration=cal, updated_at=now))
    store.set_class_state("hazelnut", ClassState(model_version=v_a, updated_at=now))
    seen, announced = [], threading.Event()
    unsubscribe = store.subscribe(lambda c: (seen.append(c), announced.set()))
    time.sleep(0.3)
    try:
        # v_b's bytes are only in the artifact store: Redis gets them before the switch.
        assert store.get_model(v_b) is None
        out = promote_cli(v_b, "--by", "qa-anna", env=env, cwd=tmp_path)
        assert out.returncode == 0, out.stderr
        assert f"{v_b} is active (was {v_a})" in out.stdout
        assert "calibration overrides cleared for: cookie" in out.stdout
        assert "hazelnut" in out.stdout  # the canary pin stays, and says so
        assert store.active_version() == v_b and store.get_model(v_b) == tiny_ckpt_b.read_bytes()
        assert store.class_states()["cookie"].calibration is None
        assert store.class_states()["hazelnut"].model_version == v_a
        assert announced.wait(5)
        assert any(c is not None and c.kind == "promotion" and c.model_version == v_b
                   for c in seen)  # fmt: skip
        with RecordStore(url) as records:
            assert records.active_version() == v_b
            rows = {v.version: v for v in records.model_versions()}
            assert rows[v_a].status == "retired" and rows[v_b].promoted_by == "qa-anna"

        # Rollback, with Redis flushed: the bytes come back from the artifact store.
        store.r.delete(f"promo:model:{v_a}")
        back = promote_cli(v_a, env=env, cwd=tmp_path)
        assert back.returncode == 0, back.stderr
        assert store.active_version() == v_a and store.get_model(v_a) == tiny_ckpt.read_bytes()
        with RecordStore(url) as records:
            assert records.active_version() == v_a

        listed = promote_cli("--list", env=env, cwd=tmp_path)
        assert listed.returncode == 0 and v_a in listed.stdout and "<- serving" in listed.stdout

        unknown = promote_cli("grad-ffffffffffffffff", env=env, cwd=tmp_path)
        assert unknown.returncode == 1
        assert "not recorded" in unknown.stderr and v_a in unknown.stderr
        assert store.active_version() == v_a
    finally:
        unsubscribe()
        store.close()


def test_promote_without_a_state_store_updates_sql(tiny_ckpt, tmp_path):
    from model.promote import main

    url = f"sqlite:///{tmp_path / 'records.sqlite3'}"
    migrate(url)
    blob = tiny_ckpt.read_bytes()
    with RecordStore(url) as records:
        register(records, ArtifactStore(tmp_path / "models"), blob, from_bytes(blob)[1])
    version = read_meta(tiny_ckpt).version
    code = main(
        [
            version,
            "--database-url",
            url,
            "--redis-url",
            "",
            "--artifact-store",
            str(tmp_path / "models"),
        ]
    )
    assert code == 0
    with RecordStore(url) as records:
        assert records.active_version() == version
        assert set(records.calibrations(version)) == set(read_meta(tiny_ckpt).calibration)
