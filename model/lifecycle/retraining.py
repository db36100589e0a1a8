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

Each step is one function below, and `run` reads as the list above. A JSON report
(`model.lifecycle.report`, `<out>/report.json`) and a table say what was used, measured and
decided.
Settings: `RetrainSettings` (`model.settings`), read once by the command.
Exit status 0 when the run completed (promoted or not: the report says why), 1 when it could
not (no usable data for a class, a store unreachable), 2 for a usage error.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Literal

import torch

from model.core.clock import time_tag, utc_now
from model.data.feature_cache import content_features
from model.data.recorded_images import RecordedImages
from model.inference.checkpoint import from_bytes, load_checkpoint
from model.inference.inspector import Inspector, head_config_from, image_scores, resolve_device
from model.lifecycle.gate import ClassScores, Tolerances, decide
from model.lifecycle.promotion import promote, register
from model.lifecycle.report import RetrainReport, format_gate, jsonable
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
from model.stores.checkpoints import find_model_bytes
from model.stores.connect import Stores, connect
from model.stores.sql import safe_url
from model.stores.state import StateStoreUnavailable
from model.training.options import TrainOptions
from model.training.run import train_from_features
from schemas import CheckpointMeta, ClassCalibration

PromoteMode = Literal["auto", "never", "force"]
Say = Callable[[str], None]


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


@dataclass
class ActiveModel:
    version: str
    blob: bytes
    meta: CheckpointMeta
    source: str


@dataclass
class Plan:
    """Step 1's outcome: the window, what is served, what was selected and what will be trained."""

    start: datetime
    end: datetime
    active: ActiveModel | None
    overrides: dict[str, ClassCalibration]  # the state store's per-class calibrations
    selection: dict[str, ClassSelection]
    trainable: list[str]  # classes with enough usable normal images
    served: set[str]  # classes the active model serves calibrated
    missing: list[str]  # served classes the candidate will not calibrate
    warm: bool  # warm start from the active model
    epochs: int
    promote: PromoteMode

    def summary(self) -> dict[str, object]:
        return {
            "classes": self.trainable,
            "images": {c: len(self.selection[c].normals) for c in self.trainable},
            "warm_start_from": self.active.version if self.warm and self.active else None,
            "epochs": self.epochs,
            "promote": self.promote,
        }


@dataclass
class Scoring:
    """What both models are scored with: one device, one frozen backbone, one input size."""

    device: torch.device
    backbone: FrozenBackbone
    image_size: int
    active: Inspector | None


@dataclass
class Features:
    """Step 2's input: per class, the split of its normals and their backbone features."""

    train_sets: dict[str, list[Picked]] = field(default_factory=dict)
    held_sets: dict[str, list[Picked]] = field(default_factory=dict)
    train: dict[str, torch.Tensor] = field(default_factory=dict)
    held: dict[str, torch.Tensor] = field(default_factory=dict)
    anomalies: dict[str, torch.Tensor] = field(default_factory=dict)
    seconds: float = 0.0

    def counts(self, plan: Plan) -> dict[str, dict[str, int]]:
        """Images per class: trained on, held out, confirmed anomalies measured."""
        return {
            c: {
                "train": len(self.train_sets[c]),
                "heldout": len(self.held_sets[c]),
                "confirmed_anomalies": len(plan.selection[c].anomalies),
            }
            for c in plan.trainable
        }


@dataclass
class Candidate:
    meta: CheckpointMeta
    checkpoint: Path
    seconds: float
    device: str


@dataclass
class Verdict:
    """Step 3's outcome: the gate's figures and whether the candidate is promoted, and why."""

    gate: dict
    promote: bool
    decision: dict


def run(settings: RetrainSettings, opts: RetrainOptions, *, say: Say = print) -> dict:
    """One retrain; returns the report as written to `<out>/report.json` (a dry run writes
    nothing and returns its plan)."""
    started = time.perf_counter()
    try:
        start, end = resolve_window(opts.since, opts.until)
    except WindowError as exc:
        raise RetrainError(str(exc)) from exc
    images = RecordedImages(settings.image_roots, settings.max_image_bytes, settings.max_pixels)
    if not images.configured:
        raise RetrainError(
            "no image roots configured: set GRAD_IMAGE_ROOTS (or --image-root) to the "
            "directories or URL prefixes the recorded image URIs lie under"
        )
    with connect(settings) as stores:
        plan = make_plan(settings, opts, stores, images, (start, end), say)
        report = RetrainReport(
            window={"start": start.isoformat(), "end": end.isoformat()},
            active=plan.active.version if plan.active else None,
            selection={c: s.summary() for c, s in plan.selection.items()},
            plan=plan.summary(),
            settings=settings.public(),
        )
        if opts.dry_run:
            say("dry run: nothing trained, recorded or promoted")
            report.dry_run = True
            return report.as_dict()
        out_dir = opts.out or settings.retrain_dir / time_tag()
        out_dir.mkdir(parents=True, exist_ok=True)
        scoring = prepare_scoring(settings, plan)
        feats = gather_features(settings, plan, scoring)
        candidate = train_candidate(settings, plan, feats, scoring, out_dir, say)
        verdict = judge(settings, plan, feats, candidate, scoring, say)
        record_candidate(stores, plan, feats, candidate, verdict, report, say)
        report.write(out_dir)  # kept even if the promotion below fails
        report.promotion = promote_candidate(stores, candidate, verdict, report, say)
        report.total_seconds = round(time.perf_counter() - started, 1)
        doc = report.write(out_dir)
    say(f"report: {out_dir / 'report.json'}")
    return doc


# -- 1. plan: what is served, what the window holds, what will be trained ---------------------


def find_active(stores: Stores, say: Say) -> ActiveModel | None:
    """The model the workers serve: the state store's active version when there is a state
    store, else the registry's; its bytes from wherever they are kept, verified to be it."""
    in_store = stores.state.active_version() if stores.state is not None else None
    in_sql = stores.records.active_version()
    version = in_store or in_sql
    if version is None:
        return None
    if in_store and in_sql and in_store != in_sql:
        say(
            f"note: the state store serves {in_store}, the SQL registry says {in_sql} is active; "
            f"starting from {in_store}, the one the workers serve"
        )
    recorded = stores.records.model_version(version)
    blob = find_model_bytes(
        version,
        stores.state,
        stores.artifacts,
        artifact_uri=recorded.artifact_uri if recorded else None,
    )
    _, meta = from_bytes(blob, expect=version)
    return ActiveModel(version, blob, meta, "state store" if in_store else "SQL registry")


def make_plan(
    settings: RetrainSettings,
    opts: RetrainOptions,
    stores: Stores,
    images: RecordedImages,
    window: tuple[datetime, datetime],
    say: Say,
) -> Plan:
    """Find the active model, select the window's images, and check that the candidate can
    replace the active model: every class it serves calibrated must be trainable (under
    `--promote auto`), and at least one class must be."""
    start, end = window
    say(
        f"window: {start.isoformat(timespec='seconds')} to {end.isoformat(timespec='seconds')} "
        f"(records: {safe_url(stores.records.url)})"
    )
    active = find_active(stores, say)
    if active is None:
        say("active model: none (training from scratch; nothing to compare with)")
    else:
        say(f"active model: {active.version} (from the {active.source})")
    states = stores.state.class_states() if stores.state is not None else {}
    overrides = {c: s.calibration for c, s in states.items() if s.calibration is not None}
    selection = _select(settings, opts, stores, images, window, say)
    trainable = sorted(c for c, s in selection.items() if s.status == "train")
    served = set(active.meta.calibration) | set(overrides) if active else set()
    missing = sorted(served - set(trainable))
    _check_trainable(settings, opts, selection, trainable, missing)
    plan = Plan(
        start=start,
        end=end,
        active=active,
        overrides=overrides,
        selection=selection,
        trainable=trainable,
        served=served,
        missing=missing,
        warm=active is not None and not opts.from_scratch,
        epochs=settings.retrain_epochs,
        promote=opts.promote,
    )
    say(_describe(plan))
    return plan


def _select(
    settings: RetrainSettings,
    opts: RetrainOptions,
    stores: Stores,
    images: RecordedImages,
    window: tuple[datetime, datetime],
    say: Say,
) -> dict[str, ClassSelection]:
    rules = SelectionRules(
        include_unlabelled=settings.include_unlabelled,
        margin=settings.unlabelled_margin,
        max_images=settings.max_images_per_class,
        max_anomalies=settings.max_anomalies_per_class,
        min_images=settings.min_images_per_class,
    )
    selection = select(stores.records, images, *window, classes=opts.classes, rules=rules)
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
    return selection


def _check_trainable(
    settings: RetrainSettings,
    opts: RetrainOptions,
    selection: dict[str, ClassSelection],
    trainable: list[str],
    missing: list[str],
) -> None:
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


def _describe(plan: Plan) -> str:
    active = plan.active
    n_images = sum(len(plan.selection[c].normals) for c in plan.trainable)
    return (
        f"plan: train {'from ' + active.version if plan.warm and active else 'from scratch'} "
        f"for {plan.epochs} epochs on {', '.join(plan.trainable)} "
        f"({n_images} normal images), gate against "
        f"{active.version if active else 'nothing'}, promote: {plan.promote}"
        + (
            f"; classes the candidate will not calibrate: {', '.join(plan.missing)}"
            if plan.missing
            else ""
        )
    )


# -- 2. features and training --------------------------------------------------------------


def prepare_scoring(settings: RetrainSettings, plan: Plan) -> Scoring:
    """The device, and the active model's backbone and input size (the candidate must see the
    features the active model sees), or the settings' when there is no active model."""
    device = resolve_device(settings.device)
    active = plan.active
    inspector = (
        Inspector.from_checkpoint(active.blob, device, settings.backbone_weights)
        if active
        else None
    )
    backbone = (
        inspector.backbone
        if inspector
        else build_backbone(
            settings.backbone, settings.backbone_weights, settings.tap_strides, settings.grid_stride
        ).to(device)
    )
    size = active.meta.image_size if active else settings.image_size
    return Scoring(device, backbone, size, inspector)


def gather_features(settings: RetrainSettings, plan: Plan, scoring: Scoring) -> Features:
    """Per trainable class: the one seeded held-out split of its normals, then the backbone
    features of the training normals, the held-out normals and the confirmed anomalies, cached
    by image content (a retrain over an overlapping window recomputes only new images)."""
    t0 = time.perf_counter()
    feats = Features()
    for c in plan.trainable:
        s = plan.selection[c]
        feats.train_sets[c], feats.held_sets[c] = split_normals(
            s.normals, settings.heldout_fraction, settings.heldout_min, settings.seed, c
        )

        def of(picked: list[Picked], what: str, c: str = c) -> torch.Tensor:
            return content_features(
                scoring.backbone,
                [p.image for p in picked],
                scoring.image_size,
                scoring.device,
                settings.cache_dir,
                f"{what} {c}",
            )

        feats.train[c] = of(feats.train_sets[c], "train")
        feats.held[c] = of(feats.held_sets[c], "held-out")
        if s.anomalies:
            feats.anomalies[c] = of(s.anomalies, "anomalies")
    feats.seconds = time.perf_counter() - t0
    return feats


def train_candidate(
    settings: RetrainSettings,
    plan: Plan,
    feats: Features,
    scoring: Scoring,
    out_dir: Path,
    say: Say,
) -> Candidate:
    """One unified head on every trainable class, warm-started from the active model unless
    told otherwise, best epoch chosen and each class calibrated on its held-out normals."""
    cfg = TrainConfig(
        epochs=settings.retrain_epochs,
        batch_size=settings.retrain_batch_size,
        seed=settings.seed,
        heldout_fraction=settings.heldout_fraction,
        heldout_min=settings.heldout_min,
        target_fpr=settings.target_fpr,
    )
    active = plan.active
    parent = active if plan.warm else None
    options = TrainOptions(
        variant=active.meta.variant if active else DEFAULT_VARIANT,
        init_from=(from_bytes(parent.blob)[0], parent.meta) if parent else None,
        provenance={
            "feature_seconds": round(feats.seconds, 1),
            "parent": parent.version if parent else None,
            "warm_start": plan.warm,
            "window_start": plan.start.isoformat(),
            "window_end": plan.end.isoformat(),
        },
    )
    ckpt = out_dir / "candidate.safetensors"
    t0 = time.perf_counter()
    meta = train_from_features(
        feats.train,
        feats.held,
        ckpt,
        cfg,
        scoring.backbone.info,
        scoring.image_size,
        scoring.device,
        options,
    )
    seconds = time.perf_counter() - t0
    say(f"trained {meta.version} in {seconds:.1f} s ({feats.seconds:.1f} s features)")
    return Candidate(meta, ckpt, seconds, str(scoring.device))


# -- 3. the gate ---------------------------------------------------------------------------


def judge(
    settings: RetrainSettings,
    plan: Plan,
    feats: Features,
    candidate: Candidate,
    scoring: Scoring,
    say: Say,
) -> Verdict:
    """Both models on the same held-out normals and confirmed anomalies, the gate's verdict,
    and what `--promote` makes of it."""
    cand_scores = _gate_scores(_head_of(candidate, scoring.device), plan, feats, scoring)
    act_scores = None
    if scoring.active is not None:
        act_scores = _gate_scores(scoring.active.head, plan, feats, scoring, scoring.active)
    gate = decide(
        cand_scores,
        act_scores,
        required=plan.served,
        target_fpr=settings.target_fpr,
        tolerances=Tolerances(
            fpr=settings.gate_fpr_tolerance,
            recall=settings.gate_recall_tolerance,
            auroc=settings.gate_auroc_tolerance,
            noise_images=settings.gate_noise_images,
        ),
    )
    promote_it, why = _apply_mode(plan.promote, gate)
    active = plan.active.version if plan.active else None
    decision = {
        "promote": promote_it,
        "mode": plan.promote,
        "gate_pass": gate["pass"],
        "reasons": why,
        "tolerances": gate["tolerances"],
        "target_fpr": gate["target_fpr"],
        "against": active,
        "decided_at": utc_now().isoformat(),
        "by": settings.promoted_by,
    }
    say(format_gate(gate, candidate.meta.version, active))
    say(("PROMOTE: " if promote_it else "NOT PROMOTED: ") + "; ".join(why))
    return Verdict(gate, promote_it, decision)


def _head_of(candidate: Candidate, device: torch.device) -> GRADHead:
    tensors, _ = load_checkpoint(candidate.checkpoint)
    head = GRADHead(head_config_from(candidate.meta))
    head.load_state_dict(tensors, strict=True)
    return head.to(device)


def _gate_scores(
    head: GRADHead, plan: Plan, feats: Features, scoring: Scoring, served: Inspector | None = None
) -> dict[str, ClassScores]:
    """Image scores of held-out normals and confirmed anomalies per class; for the model the
    workers serve (`served`), also the threshold it serves each class with (its calibration or
    the state store's override)."""
    empty = torch.zeros(0)
    out = {}
    for c in plan.trainable:
        out[c] = ClassScores(
            normals=image_scores(head, feats.held[c], scoring.image_size, scoring.device),
            anomalies=image_scores(
                head, feats.anomalies.get(c, empty), scoring.image_size, scoring.device
            ),
            served_threshold=(
                served.calibration_for(c, plan.overrides)[0].threshold if served else None
            ),
        )
    return out


def _apply_mode(mode: PromoteMode, gate: dict) -> tuple[bool, list[str]]:
    if mode == "force":
        return True, ["forced (--promote force)"] + (
            [] if gate["pass"] else ["gate: " + r for r in gate["reasons"]]
        )
    if mode == "never":
        return False, ["not asked to (--promote never)", "gate: " + "; ".join(gate["reasons"])]
    return gate["pass"], gate["reasons"]


# -- 4. record and promote -----------------------------------------------------------------


def record_candidate(
    stores: Stores,
    plan: Plan,
    feats: Features,
    candidate: Candidate,
    verdict: Verdict,
    report: RetrainReport,
    say: Say,
) -> None:
    """Keep the candidate in the artifact store and the registry with its lineage (parent,
    window, images, both models' figures, the decision), whatever the verdict; fill the report
    with what was trained and measured."""
    by = verdict.decision["by"]
    _register_serving(stores, plan.active, by, say)
    images = feats.counts(plan)
    when = [
        p.row.processed_at
        for c in plan.trainable
        for p in (*feats.train_sets[c], *feats.held_sets[c])
    ]
    gate = verdict.gate["classes"]
    metrics = {
        "candidate": {c: e.get("candidate") for c, e in gate.items()},
        "active": {c: e.get("active") for c, e in gate.items()},
        "active_as_served": {c: e.get("active_as_served") for c, e in gate.items()},
        "active_version": report.active,
        "images": images,
        "window": report.window,
        "warm_start": plan.warm,
        "epochs": plan.epochs,
        "train_seconds": round(candidate.seconds, 1),
        "feature_seconds": round(feats.seconds, 1),
        "device": candidate.device,
    }
    uri = register(
        stores.records,
        stores.artifacts,
        candidate.checkpoint.read_bytes(),
        candidate.meta,
        parent_version=report.active,
        train_window=(min(when), max(when)),
        images_per_class={c: v["train"] + v["heldout"] for c, v in images.items()},
        metrics=jsonable(metrics),
        gate_decision=jsonable(verdict.decision),
    )
    say(f"recorded {candidate.meta.version} ({uri})")
    report.candidate = candidate.meta.version
    report.artifact_uri = uri
    report.checkpoint = str(candidate.checkpoint)
    report.gate = verdict.gate
    report.decision = verdict.decision
    report.promotion = "pending" if verdict.promote else None
    report.images = images
    report.train_seconds = round(candidate.seconds, 1)
    report.feature_seconds = round(feats.seconds, 1)
    report.device = candidate.device


def _register_serving(stores: Stores, active: ActiveModel | None, by: str, say: Say) -> None:
    """The workers' model may have been seeded from a file nobody registered: register it, so
    the candidate's lineage points at it and a rollback to it is possible."""
    if active is None or stores.records.model_version(active.version) is not None:
        return
    register(stores.records, stores.artifacts, active.blob, active.meta)
    if stores.records.active_version() is None:
        stores.records.set_active(active.version, by=f"{by} (registered as serving)")
    say(f"registered the serving model {active.version} in the SQL registry")


def promote_candidate(
    stores: Stores, candidate: Candidate, verdict: Verdict, report: RetrainReport, say: Say
) -> dict | None:
    """Make a candidate the gate (or `--promote force`) let through the active model: in SQL,
    then in the state store, whose announcement switches the workers. None: not promoted."""
    if not verdict.promote:
        return None
    version = candidate.meta.version
    try:
        outcome = promote(
            version,
            candidate.checkpoint.read_bytes(),
            records=stores.records,
            store=stores.state,
            by=verdict.decision["by"],
            gate_decision=jsonable(verdict.decision),
        )
    except StateStoreUnavailable as exc:
        raise RetrainError(
            f"{version} is recorded, and active in SQL, but the state store could not "
            f"be updated ({exc}): run `python -m model.promote {version}` once Redis "
            "answers"
        ) from exc
    where = (
        "SQL and the state store (workers switch between batches)"
        if stores.state
        else f"SQL (no state store configured: workers without one serve their --checkpoint; "
        f"start them with {report.artifact_uri})"
    )
    say(f"promoted {version} in {where}")
    if outcome.canaries_kept:
        say(f"classes pinned to a canary version stay on it: {outcome.canaries_kept}")
    return outcome.as_dict()
