"""`model.retrain` on real images recorded in a real database, with the workers' state in a real
Redis: a new class is learned, calibrated and promoted; the gate refuses worse candidates and
says why; a dry run changes nothing; a class the active model serves is never silently dropped.

The active model knows hazelnut (15 epochs on 30 images); the record holds labelled normal
images of hazelnut and of transistor, a class new to it, operator-confirmed anomalies of both,
and one inline image the worker did not archive (no URI). The window repeats the images the
active model trained on, which favours it in the gate: a candidate passes despite that."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest
import torch

from model.inference.checkpoint import from_bytes
from model.lifecycle import retraining
from model.lifecycle.retraining import RetrainError, RetrainOptions, run
from model.lifecycle.selection import SelectionError
from model.retrain import main
from model.settings import RetrainSettings
from model.stores.migrations import migrate
from model.stores.records import RecordStore
from model.stores.state import RedisStateStore
from tests.retraining import defect_images, good_images, hazelnut_only, inspection

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def feature_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.getbasetemp() / "retrain-features"


@pytest.fixture(scope="module")
def hazelnut_model(industrial: Path, feature_cache: Path, tmp_path_factory):
    """The active model: hazelnut only (shared with test_retrain_stream)."""
    return hazelnut_only(industrial, tmp_path_factory.getbasetemp(), feature_cache)


def record_window(url: str, industrial: Path, n_transistor: int = 30) -> None:
    """What a line recorded in the last minutes, labels included."""
    rows = []
    for i, img in enumerate(good_images(industrial, "hazelnut")):
        rows.append(inspection(f"h-{i}", "hazelnut", img, label="normal", score=0.4))
    for i, img in enumerate(defect_images(industrial, "hazelnut")):
        rows.append(inspection(f"hd-{i}", "hazelnut", img, label="anomalous", score=2.0))
    for i, img in enumerate(good_images(industrial, "transistor")[:n_transistor]):
        rows.append(inspection(f"t-{i}", "transistor", img, label="normal", calibrated=False))
    for i, img in enumerate(defect_images(industrial, "transistor")):
        rows.append(inspection(f"td-{i}", "transistor", img, label="anomalous", calibrated=False))
    rows.append(inspection("inline", "transistor", None, label="normal", calibrated=False))
    with RecordStore(url) as store:
        store.upsert_inspections(rows)


@pytest.fixture
def line(industrial, hazelnut_model, own_redis, feature_cache, tmp_path):
    """A database with the window recorded, Redis serving the hazelnut model, settings."""
    url = f"sqlite:///{tmp_path / 'records.sqlite3'}"
    migrate(url)
    record_window(url, industrial)
    ckpt, meta = hazelnut_model
    store = RedisStateStore(own_redis.url, "line")
    store.put_model(meta.version, ckpt.read_bytes())  # as a worker seeds it
    store.set_active(meta.version)
    settings = RetrainSettings(
        database_url=url,
        redis_url=own_redis.url,
        state_prefix="line",
        artifact_store=str(tmp_path / "models"),
        image_roots=[str(industrial)],
        cache_dir=feature_cache,
        device="cpu",
        retrain_epochs=8,
        retrain_batch_size=8,
        retrain_dir=tmp_path / "runs",
        promoted_by="retrain-test",
    )
    yield settings, store, meta.version
    store.close()


def test_a_new_class_is_learned_calibrated_and_promoted(line, capsys):
    settings, store, parent = line
    changes, announced = [], threading.Event()
    unsubscribe = store.subscribe(lambda c: (changes.append(c), announced.set()))
    time.sleep(0.3)
    try:
        report = run(settings, RetrainOptions(since="1h"))
    finally:
        unsubscribe()
    out = capsys.readouterr().out
    assert "selection" in out and "transistor" in out and "unavailable: 1 inline" in out
    version = report["candidate"]
    assert report["decision"]["promote"], report["decision"]["reasons"]
    assert report["gate"]["classes"]["transistor"]["verdict"] == "ok"
    assert "PROMOTE" in out and "gate: candidate" in out

    # The workers' state store serves it, and the promotion was announced.
    assert store.active_version() == version
    assert announced.wait(5)
    assert any(c and c.kind == "promotion" and c.model_version == version for c in changes)
    _, meta = from_bytes(store.get_model(version))
    assert set(meta.calibration) == {"hazelnut", "transistor"}
    assert meta.training["parent"] == parent and meta.training["warm_start"] is True

    # The registry: lineage, window, images, both models' figures, the gate's decision.
    with RecordStore(settings.database_url.get_secret_value()) as records:
        assert records.active_version() == version
        rows = {v.version: v for v in records.model_versions()}
        cand, par = rows[version], rows[parent]
        assert par.status == "retired"  # registered as serving, then replaced
        assert cand.parent_version == parent and cand.status == "active"
        assert cand.images_per_class == {"hazelnut": 50, "transistor": 30}
        assert cand.train_window_start <= cand.train_window_end
        assert set(cand.metrics["candidate"]) == {"hazelnut", "transistor"}
        assert cand.metrics["active"]["hazelnut"]["auroc"] is not None
        assert cand.gate_decision["promote"] is True and cand.gate_decision["against"] == parent
        assert set(records.calibrations(version)) == {"hazelnut", "transistor"}
        assert "transistor" not in records.calibrations(parent)
    saved = json.loads(Path(report["checkpoint"]).with_name("report.json").read_text())
    assert saved["candidate"] == version and saved["selection"]["transistor"]["unavailable"] == {
        "inline": 1
    }


def test_the_gate_refuses_an_untrained_candidate_and_says_why(line, capsys, monkeypatch):
    settings, store, parent = line
    monkeypatch.setenv("GRAD_CACHE_DIR", str(settings.cache_dir))
    monkeypatch.setenv("GRAD_DEVICE", "cpu")
    monkeypatch.setenv("GRAD_STATE_PREFIX", settings.state_prefix)
    code = main(
        [
            *("--since", "1h", "--from-scratch", "--epochs", "0"),
            *("--database-url", settings.database_url.get_secret_value()),
            *("--redis-url", settings.redis_url.get_secret_value()),
            *("--artifact-store", settings.artifact_store, "--image-root", settings.image_roots[0]),
            *("--out", str(settings.retrain_dir / "untrained")),
        ]
    )
    out = capsys.readouterr().out
    assert code == 0  # the run completed; the verdict is in the report
    assert "gate: candidate" in out and f"against active {parent}" in out
    assert "NOT PROMOTED" in out
    report = json.loads((settings.retrain_dir / "untrained" / "report.json").read_text())
    assert report["decision"]["promote"] is False and report["gate"]["pass"] is False
    why = " ".join(report["decision"]["reasons"])
    assert "hazelnut" in why and ("AUROC" in why or "recall" in why), why
    assert store.active_version() == parent
    with RecordStore(settings.database_url.get_secret_value()) as records:
        assert records.active_version() == parent
        cand = records.model_version(report["candidate"])
        assert cand is not None and cand.status == "candidate"
        assert cand.gate_decision["promote"] is False and cand.gate_decision["reasons"]


@pytest.fixture
def anomalies_in_training(monkeypatch: pytest.MonkeyPatch) -> None:
    """What the selection must never do, forced from outside: the confirmed anomalies' features
    join each class's training features, so the gate meets a model that learned the defects."""
    gather = retraining.gather_features

    def with_anomalies(*args, **kwargs) -> retraining.Features:
        feats = gather(*args, **kwargs)
        for c, a in feats.anomalies.items():
            feats.train[c] = torch.cat([feats.train[c], a])
        return feats

    monkeypatch.setattr(retraining, "gather_features", with_anomalies)


@pytest.mark.slow
def test_the_gate_refuses_a_candidate_trained_on_confirmed_anomalies(line, anomalies_in_training):
    settings, store, parent = line
    settings = settings.model_copy(update={"retrain_epochs": 8})
    report = run(settings, RetrainOptions(since="1h"))
    assert report["decision"]["promote"] is False
    why = " ".join(report["decision"]["reasons"])
    assert "recall" in why or "AUROC" in why, why
    assert store.active_version() == parent


def test_a_dry_run_reports_and_changes_nothing(line, capsys):
    settings, store, parent = line
    report = run(settings, RetrainOptions(since="1h", dry_run=True))
    out = capsys.readouterr().out
    assert report["dry_run"] and report["plan"]["classes"] == ["hazelnut", "transistor"]
    assert report["plan"]["warm_start_from"] == parent
    assert f"plan: train from {parent} for 8 epochs on hazelnut, transistor" in out
    assert "dry run: nothing trained" in out
    assert not settings.retrain_dir.exists()
    with RecordStore(settings.database_url.get_secret_value()) as records:
        assert records.model_versions() == []
    assert store.active_version() == parent


def test_a_class_the_active_model_serves_is_not_dropped(line, tmp_path):
    settings, store, parent = line
    with pytest.raises(RetrainError, match=r"serves 'hazelnut' \(not in the window\)"):
        run(settings, RetrainOptions(since="1h", classes=["transistor"], dry_run=True))
    few = settings.model_copy(update={"min_images_per_class": 60})
    with pytest.raises(RetrainError, match="no class has 60 usable normal images"):
        run(few, RetrainOptions(since="1h", dry_run=True))
    # Images gone since they were recorded: counted, and an error naming the class.
    roots = settings.model_copy(update={"image_roots": [str(tmp_path)]})
    with pytest.raises(SelectionError, match=r"'hazelnut': only 0 of 50 .*50 outside_roots"):
        run(roots, RetrainOptions(since="1h", dry_run=True))
    assert store.active_version() == parent


def test_bad_windows_and_missing_roots_are_usage_errors(line, capsys):
    settings, _, _ = line
    db = ["--database-url", settings.database_url.get_secret_value(), "--redis-url", ""]
    assert main(["--since", "yesterday", *db, "--image-root", "/tmp"]) == 1
    assert "not a duration" in capsys.readouterr().err
    assert main(["--since", "1h", *db]) == 1
    assert "GRAD_IMAGE_ROOTS" in capsys.readouterr().err
