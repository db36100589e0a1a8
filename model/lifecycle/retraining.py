"""The retraining: learn from what the line recorded, check the result against the active
model, promote it only if it is at least as good (`python -m model.retrain --since 7d`).

1. **Select** the inspections processed in the window (`--since`, `--until`: durations such as
   `12h`, `7d`, `2w`, or ISO dates) from the SQL record (`model.lifecycle.selection`):
   images an operator labelled normal, plus, when enabled, unlabelled images scored well below their
   class's threshold; never an image labelled anomalous; capped per class. The images are read back
   through their recorded URIs, under the configured image roots only. The selection and its
   counts are printed first; `--dry-run` stops there.
2. **Train** one unified model on every selected class, warm-started from the active model
   (`--from-scratch` to start anew), with backbone features cached by image content, on the GPU
   when there is one. A seeded share of each class's normals is held out: the best epoch is
   chosen and each class calibrated on it. A class new to the line is learned and calibrated
   here, with no other step.
3. **Gate** (`model.lifecycle.gate`): candidate and active model, per class, on the same
   held-out normals and the window's operator-confirmed anomalies: false-positive rate at the
   recalibrated threshold, recall, image AUROC; the candidate must not be worse beyond the
   tolerances.
4. **Record and promote** (`--promote auto|never|force`): the candidate's checkpoint goes to
   the artifact store and the SQL registry with its lineage (parent, window, images per class,
   both models' figures, the gate's decision) whatever the verdict; when promoted it becomes
   active in SQL and in the workers' state store, whose announcement makes running workers
   switch between two batches. `python -m model.promote VERSION` rolls back.

A JSON report (`<out>/report.json`) and a table say what was used, measured and decided.
Settings: `RetrainSettings` (`model.settings`), read once by the command.
Exit status 0 when the run completed (promoted or not: the report says why), 1 when it could
not (no usable data for a class, a store unreachable), 2 for a usage error.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from model.data.feature_cache import content_features
from model.data.recorded_images import RecordedImages
from model.inference.checkpoint import from_bytes, load_checkpoint
from model.inference.inspector import Inspector, head_config_from, image_scores, resolve_device
from model.lifecycle.gate import ClassScores, Tolerances, decide
from model.lifecycle.promotion import find_bytes, promote, register
from model.lifecycle.selection import (
    ClassSelection,
    Picked,
    SelectionRules,
    format_selection,
    select,
    split_normals,
)
from model.lifecycle.window import WindowError, resolve_window
from model.net.backbone import FrozenBackbone, build_backbone
from model.net.config import DEFAULT_VARIANT, TrainConfig
from model.net.grad import GRADHead
from model.settings import RetrainSettings
from model.stores.artifacts import ArtifactStore
from model.stores.records import RecordStore
from model.stores.sql import safe_url
from model.stores.state import RedisStateStore, StateStore, StateStoreUnavailable
from model.training.options import TrainOptions
from model.training.run import train_from_features
from schemas import CheckpointMeta

PromoteMode = Literal["auto", "never", "force"]


class RetrainError(RuntimeError):
    """The retrain cannot go on; the message says why (exit status 1)."""


@dataclass(frozen=True)
class RetrainOptions:
    since: str
    until: str | None = None
    classes: list[str] | None = None
    dry_run: bool = False
    promote: PromoteMode = "auto"
    from_scratch: bool = False
    out: Path | None = None


@dataclass(frozen=True)
class TestHooks:
    """For tests only, never reachable from the command line."""

    __test__ = False
    # Put the confirmed anomalies into the training set (what the selection must never do),
    # to show that the gate refuses the model this produces.
    train_on_anomalies: bool = False


@dataclass
class ActiveModel:
    version: str
    blob: bytes
    meta: CheckpointMeta
    source: str


def find_active(
    records: RecordStore, store: StateStore | None, artifacts: ArtifactStore, say: Callable
) -> ActiveModel | None:
    """The model the workers serve: the state store's active version when there is a state
    store, else the registry's; its bytes from the state store, the artifact store, or the URI
    the registry recorded."""
    in_store = store.active_version() if store is not None else None
    in_sql = records.active_version()
    version = in_store or in_sql
    if version is None:
        return None
    if in_store and in_sql and in_store != in_sql:
        say(
            f"note: the state store serves {in_store}, the SQL registry says {in_sql} is active; "
            f"starting from {in_store}, the one the workers serve"
        )
    recorded = records.model_version(version)
    blob = find_bytes(
        version,
        store=store,
        artifacts=artifacts,
        artifact_uri=recorded.artifact_uri if recorded else None,
    )
    _, meta = from_bytes(blob)
    if meta.version != version:
        raise RetrainError(f"the bytes stored as {version} hold model {meta.version}")
    return ActiveModel(version, blob, meta, "state store" if in_store else "SQL registry")


def _now_tag() -> str:
    return datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")


def _fmt(x: float | int | None, digits: int = 3) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    return f"{x:.{digits}f}"


def format_gate(gate: dict, candidate: str, active: str | None) -> str:
    t = gate["tolerances"]
    lines = [
        f"gate: candidate {candidate} against "
        + (f"active {active}" if active else "no active model")
        + f" (target FPR {gate['target_fpr']:.3f}; tolerances FPR {t['fpr']:.3f}, "
        f"recall {t['recall']:.3f}, AUROC {t['auroc']:.3f}; differences of "
        f"{t['noise_images']} image(s) are noise)",
        f"{'class':<18} {'held':>5} {'anom':>5} | {'FPR cand / act':>15} | "
        f"{'recall cand / act':>17} | {'AUROC cand / act':>16} | verdict",
    ]
    lines.append("-" * len(lines[1]))
    for c, e in sorted(gate["classes"].items()):
        if "candidate" not in e:
            lines.append(f"{c:<18} {'-':>5} {'-':>5} | {'':>15} | {'':>17} | {'':>16} | missing")
            continue
        cm, am = e["candidate"], e.get("active") or {}

        def pair(k: str, cm=cm, am=am) -> str:
            return f"{_fmt(cm.get(k))} / {_fmt(am.get(k))}"

        lines.append(
            f"{c:<18} {cm['n_normals']:>5} {cm['n_anomalies']:>5} | {pair('fpr'):>15} | "
            f"{pair('recall'):>17} | {pair('auroc'):>16} | {e['verdict']}"
        )
    return "\n".join(lines)


def run(
    settings: RetrainSettings,
    opts: RetrainOptions,
    *,
    hooks: TestHooks | None = None,
    say: Callable[[str], None] = print,
) -> dict:
    """One retrain; returns the report (also written to `<out>/report.json` unless a dry run)."""
    hooks = hooks or TestHooks()
    started = time.perf_counter()
    try:
        start, end = resolve_window(opts.since, opts.until)
    except WindowError as exc:
        raise RetrainError(str(exc)) from exc
    reader = RecordedImages(settings.image_roots, settings.max_image_bytes, settings.max_pixels)
    if not reader.configured:
        raise RetrainError(
            "no image roots configured: set GRAD_IMAGE_ROOTS (or --image-root) to the "
            "directories or URL prefixes the recorded image URIs lie under"
        )
    db_url = settings.database_url.get_secret_value()
    records = RecordStore(db_url)
    store: StateStore | None = None
    if settings.redis_url is not None and settings.redis_url.get_secret_value():
        store = RedisStateStore(settings.redis_url.get_secret_value(), settings.state_prefix)
    artifacts = ArtifactStore(settings.artifact_store)
    try:
        return _run(
            settings, opts, hooks, say, start, end, reader, records, store, artifacts, started
        )
    finally:
        records.close()
        if store is not None:
            store.close()


def _run(
    settings: RetrainSettings,
    opts: RetrainOptions,
    hooks: TestHooks,
    say: Callable[[str], None],
    start: datetime,
    end: datetime,
    reader: RecordedImages,
    records: RecordStore,
    store: StateStore | None,
    artifacts: ArtifactStore,
    started: float,
) -> dict:
    say(
        f"window: {start.isoformat(timespec='seconds')} to {end.isoformat(timespec='seconds')} "
        f"(records: {safe_url(records.url)})"
    )
    active = find_active(records, store, artifacts, say)
    if active is None:
        say("active model: none (training from scratch; nothing to compare with)")
    else:
        say(f"active model: {active.version} (from the {active.source})")
    states = store.class_states() if store is not None else {}
    overrides = {c: s.calibration for c, s in states.items() if s.calibration is not None}

    selection = select(
        records,
        reader,
        start,
        end,
        classes=opts.classes,
        rules=SelectionRules(
            include_unlabelled=settings.include_unlabelled,
            margin=settings.unlabelled_margin,
            max_images=settings.max_images_per_class,
            max_anomalies=settings.max_anomalies_per_class,
            min_images=settings.min_images_per_class,
        ),
    )
    say(
        "selection (normal images labelled by an operator"
        + (
            f", plus unlabelled ones scored below {1 - settings.unlabelled_margin:.2f} x their "
            "class threshold"
            if settings.include_unlabelled
            else "; unlabelled images not used (GRAD_INCLUDE_UNLABELLED=false)"
        )
        + f"; at most {settings.max_images_per_class} per class):"
    )
    say(format_selection(selection) if selection else "  (no inspections in the window)")
    for c in sorted(set(opts.classes or []) - set(selection)):
        say(f"note: no inspections of {c!r} in the window")
    trainable = sorted(c for c, s in selection.items() if s.status == "train")
    served = set(active.meta.calibration) | set(overrides) if active else set()
    missing = sorted(served - set(trainable))
    if not trainable:
        raise RetrainError(
            f"no class has {settings.min_images_per_class} usable normal images in the window: "
            "nothing to train on (widen --since, or label more inspections normal)"
        )
    if missing and opts.promote == "auto":
        raise RetrainError(
            "the active model serves "
            + ", ".join(
                f"{c!r} ({selection[c].note if c in selection else 'not in the window'})"
                for c in missing
            )
            + " calibrated, but the window has too few usable normal images to calibrate a "
            "candidate on it, so the gate would refuse it: widen --since, label more images "
            "normal, or use --promote never|force"
        )
    warm = active is not None and not opts.from_scratch
    plan = {
        "classes": trainable,
        "images": {c: len(selection[c].normals) for c in trainable},
        "warm_start_from": active.version if warm else None,
        "epochs": settings.retrain_epochs,
        "promote": opts.promote,
    }
    say(
        f"plan: train {'from ' + active.version if warm and active else 'from scratch'} "
        f"for {settings.retrain_epochs} epochs on {', '.join(trainable)} "
        f"({sum(plan['images'].values())} normal images), gate against "
        f"{active.version if active else 'nothing'}, promote: {opts.promote}"
        + (f"; classes the candidate will not calibrate: {', '.join(missing)}" if missing else "")
    )
    report: dict = {
        "window": {"start": start.isoformat(), "end": end.isoformat()},
        "active": active.version if active else None,
        "selection": {c: s.summary() for c, s in selection.items()},
        "plan": plan,
        "settings": settings.public(),
    }
    if opts.dry_run:
        say("dry run: nothing trained, recorded or promoted")
        report["dry_run"] = True
        return report

    out_dir = opts.out or settings.retrain_dir / _now_tag()
    out_dir.mkdir(parents=True, exist_ok=True)
    device = resolve_device(settings.device)
    active_inspector = (
        Inspector.from_checkpoint(active.blob, device, settings.backbone_weights)
        if active
        else None
    )
    backbone: FrozenBackbone = (
        active_inspector.backbone
        if active_inspector
        else build_backbone(settings.backbone, settings.backbone_weights).to(device)
    )
    size = active.meta.image_size if active else settings.image_size

    # Features: held-out normals, training normals, confirmed anomalies (content-cached).
    t0 = time.perf_counter()
    train_sets: dict[str, list[Picked]] = {}
    held_sets: dict[str, list[Picked]] = {}
    train_feats: dict[str, torch.Tensor] = {}
    held_feats: dict[str, torch.Tensor] = {}
    anomaly_feats: dict[str, torch.Tensor] = {}
    cache = settings.cache_dir
    for c in trainable:
        s: ClassSelection = selection[c]
        train_sets[c], held_sets[c] = split_normals(
            s.normals, settings.heldout_fraction, settings.heldout_min, settings.seed, c
        )

        def feats(picked: list[Picked], what: str, c: str = c) -> torch.Tensor:
            return content_features(
                backbone, [p.image for p in picked], size, device, cache, f"{what} {c}"
            )

        train_feats[c] = feats(train_sets[c], "train")
        held_feats[c] = feats(held_sets[c], "held-out")
        if s.anomalies:
            anomaly_feats[c] = feats(s.anomalies, "anomalies")
    feature_seconds = time.perf_counter() - t0
    if hooks.train_on_anomalies:
        for c, a in anomaly_feats.items():
            train_feats[c] = torch.cat([train_feats[c], a])
        say("TEST HOOK: confirmed anomalies were put into the training set")

    cfg = TrainConfig(
        epochs=settings.retrain_epochs,
        batch_size=settings.retrain_batch_size,
        seed=settings.seed,
        heldout_fraction=settings.heldout_fraction,
        heldout_min=settings.heldout_min,
        target_fpr=settings.target_fpr,
    )
    init_from = None
    if warm and active is not None:
        init_from = (from_bytes(active.blob)[0], active.meta)
    ckpt = out_dir / "candidate.safetensors"
    t1 = time.perf_counter()
    meta = train_from_features(
        train_feats,
        held_feats,
        ckpt,
        cfg,
        backbone.info,
        size,
        device,
        TrainOptions(
            variant=active.meta.variant if active else DEFAULT_VARIANT,
            init_from=init_from,
            provenance={
                "feature_seconds": round(feature_seconds, 1),
                "parent": active.version if warm and active else None,
                "warm_start": warm,
                "window_start": start.isoformat(),
                "window_end": end.isoformat(),
            },
        ),
    )
    train_seconds = time.perf_counter() - t1
    say(f"trained {meta.version} in {train_seconds:.1f} s ({feature_seconds:.1f} s features)")

    # The gate: both models on the same held-out normals and confirmed anomalies.
    tensors, _ = load_checkpoint(ckpt)
    cand_head = GRADHead(head_config_from(meta))
    cand_head.load_state_dict(tensors, strict=True)
    cand_head.to(device)
    empty = torch.zeros(0)

    def class_scores(head: GRADHead, c: str, served: float | None = None) -> ClassScores:
        return ClassScores(
            normals=image_scores(head, held_feats[c], size, device),
            anomalies=image_scores(head, anomaly_feats.get(c, empty), size, device),
            served_threshold=served,
        )

    cand_scores = {c: class_scores(cand_head, c) for c in trainable}
    act_scores = None
    if active_inspector is not None:
        act_scores = {
            c: class_scores(
                active_inspector.head,
                c,
                active_inspector.calibration_for(c, overrides)[0].threshold,
            )
            for c in trainable
        }
    gate = decide(
        cand_scores,
        act_scores,
        required=served,
        target_fpr=settings.target_fpr,
        tolerances=Tolerances(
            fpr=settings.gate_fpr_tolerance,
            recall=settings.gate_recall_tolerance,
            auroc=settings.gate_auroc_tolerance,
            noise_images=settings.gate_noise_images,
        ),
    )
    if opts.promote == "force":
        promote_it = True
        why = ["forced (--promote force)"]
        why += [] if gate["pass"] else ["gate: " + r for r in gate["reasons"]]
    elif opts.promote == "never":
        promote_it = False
        why = ["not asked to (--promote never)", "gate: " + "; ".join(gate["reasons"])]
    else:
        promote_it = gate["pass"]
        why = gate["reasons"]
    decision = {
        "promote": promote_it,
        "mode": opts.promote,
        "gate_pass": gate["pass"],
        "reasons": why,
        "tolerances": gate["tolerances"],
        "target_fpr": gate["target_fpr"],
        "against": active.version if active else None,
        "decided_at": datetime.now(timezone.utc).isoformat(),
        "by": settings.promoted_by,
    }
    say(format_gate(gate, meta.version, active.version if active else None))
    say(("PROMOTE: " if promote_it else "NOT PROMOTED: ") + "; ".join(why))

    # Record the candidate (whatever the verdict), then promote it.
    used = [p for c in trainable for p in (*train_sets[c], *held_sets[c])]
    when = [p.row.processed_at for p in used]
    images = {
        c: {
            "train": len(train_sets[c]),
            "heldout": len(held_sets[c]),
            "confirmed_anomalies": len(selection[c].anomalies),
        }
        for c in trainable
    }
    metrics = {
        "candidate": {c: e.get("candidate") for c, e in gate["classes"].items()},
        "active": {c: e.get("active") for c, e in gate["classes"].items()},
        "active_as_served": {c: e.get("active_as_served") for c, e in gate["classes"].items()},
        "active_version": active.version if active else None,
        "images": images,
        "window": report["window"],
        "warm_start": warm,
        "epochs": settings.retrain_epochs,
        "train_seconds": round(train_seconds, 1),
        "feature_seconds": round(feature_seconds, 1),
        "device": str(device),
    }
    blob = ckpt.read_bytes()
    if active is not None and records.model_version(active.version) is None:
        # The workers' model was seeded from a file nobody registered: register it, so the
        # candidate's lineage points at it and a rollback to it is possible.
        register(records, artifacts, active.blob, active.meta)
        if records.active_version() is None:
            records.set_active(active.version, by=f"{settings.promoted_by} (registered as serving)")
        say(f"registered the serving model {active.version} in the SQL registry")
    uri = register(
        records,
        artifacts,
        blob,
        meta,
        parent_version=active.version if active else None,
        train_window=(min(when), max(when)),
        images_per_class={c: v["train"] + v["heldout"] for c, v in images.items()},
        metrics=_jsonable(metrics),
        gate_decision=_jsonable(decision),
    )
    say(f"recorded {meta.version} ({uri})")
    report.update(
        {
            "candidate": meta.version,
            "artifact_uri": uri,
            "checkpoint": str(ckpt),
            "gate": gate,
            "decision": decision,
            "promotion": "pending" if promote_it else None,
            "images": images,
            "train_seconds": round(train_seconds, 1),
            "feature_seconds": round(feature_seconds, 1),
            "device": str(device),
        }
    )
    write_report(out_dir, report)  # kept even if the promotion below fails
    promotion = None
    if promote_it:
        try:
            promotion = promote(
                meta.version,
                blob,
                records=records,
                store=store,
                by=settings.promoted_by,
                gate_decision=_jsonable(decision),
            ).as_dict()
        except StateStoreUnavailable as exc:
            raise RetrainError(
                f"{meta.version} is recorded, and active in SQL, but the state store could not "
                f"be updated ({exc}): run `python -m model.promote {meta.version}` once Redis "
                "answers"
            ) from exc
        where = (
            "SQL and the state store (workers switch between batches)"
            if store
            else f"SQL (no state store configured: workers without one serve their --checkpoint; "
            f"start them with {uri})"
        )
        say(f"promoted {meta.version} in {where}")
        if promotion["canaries_kept"]:
            say(f"classes pinned to a canary version stay on it: {promotion['canaries_kept']}")
    report["promotion"] = promotion
    report["total_seconds"] = round(time.perf_counter() - started, 1)
    report = write_report(out_dir, report)
    say(f"report: {out_dir / 'report.json'}")
    return report


def write_report(out_dir: Path, report: dict) -> dict:
    clean = _jsonable(report)
    assert isinstance(clean, dict)
    tmp = out_dir / "report.json.tmp"
    tmp.write_text(json.dumps(clean, indent=2))
    tmp.replace(out_dir / "report.json")
    return clean


def _jsonable(obj: object) -> object:
    """NaN to None, numpy scalars to Python: what JSON columns and files accept."""
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, (np.floating, float)):
        f = float(obj)
        return None if math.isnan(f) or math.isinf(f) else f
    if isinstance(obj, np.integer):
        return int(obj)
    return obj
