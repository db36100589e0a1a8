"""Retraining benchmark: a model trained on three classes, then retrained from recorded
inspections that add a fourth; per-class image AUROC before and after, and the retrain's time.

    python -m bench.retrain --data ../shared/data/industrial --out runs/bench-retrain

1. Base model: `model.train` on the `train/good` images of every class but `--new-class`
   (at most `--per-class` images each, so the run fits a CPU session).
2. The line's record: the base model registered as active, and a SQLite database of
   inspections as a worker writes them (each image
   scored by the base model: score, threshold, calibrated or not): the same `train/good`
   images of all four classes, labelled normal by an operator, and a quarter of each class's
   defect images (`test/<defect>`), labelled anomalous; the gate checks candidates on those,
   they never train.
3. `model.retrain --since 1h` in process (warm start from the base, `--epochs`, the gate, auto
   promotion into the SQL registry; no Redis), timed.
4. Both models evaluated with `model.evaluate` on the whole test split of every class.

Writes OUT/retrain.json and prints a table for bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

import torch

from model.data.images import read_image
from model.data.mvtec import discover_classes
from model.evaluation.run import evaluate
from model.inference.inspector import Inspector
from model.lifecycle.promotion import register
from model.lifecycle.retraining import RetrainOptions, run
from model.net.config import DECODERS, DEFAULT_VARIANT, TrainConfig
from model.settings import ModelSettings, RetrainSettings
from model.stores.artifacts import ArtifactStore
from model.stores.migrations import migrate
from model.stores.records import RecordStore
from model.training.options import TrainOptions
from model.training.run import train
from schemas.records import InspectionRecord


def goods(data: Path, c: str) -> list[Path]:
    return sorted((data / c / "train" / "good").glob("*.png"))


def split_goods(data: Path, classes: list[str], new: str, cap: int) -> tuple[dict, dict]:
    """Per class, the normal images of the base model and those of the recorded window."""
    base, window = {}, {}
    for c in classes:
        g = goods(data, c)
        if c == new:
            base[c], window[c] = [], g[:cap]
        else:
            k = min(len(g) // 2, cap)
            base[c], window[c] = g[:k], g[k : k + cap]
    return base, window


def link_subset(root: Path, images: dict[str, list[Path]]) -> Path:
    """An MVTec-layout directory of links to the given train/good images."""
    for c, paths in images.items():
        if not paths:
            continue
        folder = root / c / "train" / "good"
        folder.mkdir(parents=True, exist_ok=True)
        for img in paths:
            if not (folder / img.name).exists():
                os.symlink(img.resolve(), folder / img.name)
    return root


def recorded_rows(
    inspector: Inspector, data: Path, window: dict[str, list[Path]]
) -> list[InspectionRecord]:
    """Inspections of normal and defect images as a worker records them, labels included."""
    rows = []
    now = datetime.now(timezone.utc) - timedelta(minutes=10)
    for c, normals in window.items():
        test = data / c / "test"
        defects = sorted(p for d in test.iterdir() if d.name != "good" for p in d.glob("*.png"))
        defects = defects[::4]  # a quarter, spread over the defect types
        items = [(p, "normal") for p in normals] + [(p, "anomalous") for p in defects]
        for i in range(0, len(items), 32):
            chunk = items[i : i + 32]
            res = inspector.inspect([read_image(p) for p, _ in chunk], [c] * len(chunk))
            for (path, label), v in zip(chunk, res.verdicts, strict=True):
                at = now + timedelta(milliseconds=len(rows))
                rows.append(
                    InspectionRecord(
                        event_id=f"bench-{uuid.uuid4().hex[:12]}",
                        line="bench",
                        station="cam-1",
                        product_class=c,
                        captured_at=at,
                        processed_at=at,
                        image_uri=path.resolve().as_uri(),
                        heatmap_uri="file:///dev/null",
                        score=v.score,
                        threshold=v.threshold,
                        confidence=v.confidence,
                        is_anomalous=v.is_anomalous,
                        calibrated=v.calibrated,
                        model_version=inspector.version,
                        label=label,
                        labelled_by="bench",
                        labelled_at=at + timedelta(seconds=1),
                    )
                )
    return rows


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.retrain", description=__doc__.split("\n")[0])
    p.add_argument("--data", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--new-class", default="transistor", help="the class the base model lacks")
    p.add_argument(
        "--per-class", type=int, default=150, help="normal images per class, base and window"
    )
    p.add_argument("--base-epochs", type=int, default=10)
    p.add_argument(
        "--variant",
        choices=sorted(DECODERS),
        default=DEFAULT_VARIANT,
        help="the base model's decoder (the retrain warm-starts from it, so keeps it)",
    )
    p.add_argument("--epochs", type=int, default=10, help="retrain epochs (warm start)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--device", default="auto")
    args = p.parse_args(argv)
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    classes = discover_classes(args.data)
    base_classes = [c for c in classes if c != args.new_class]
    base_images, window_images = split_goods(args.data, classes, args.new_class, args.per_class)
    settings = ModelSettings(device=args.device)

    base_ckpt = out / "base.safetensors"
    t0 = time.perf_counter()
    if not base_ckpt.is_file():
        subset = link_subset(out / "base-data", base_images)
        cfg = TrainConfig(epochs=args.base_epochs, batch_size=args.batch_size, step_epochs=30)
        train(subset, base_ckpt, cfg, settings, TrainOptions(variant=args.variant))
    base_seconds = time.perf_counter() - t0
    base = Inspector.from_checkpoint(base_ckpt, settings.device)

    db = out / "records.sqlite3"
    db.unlink(missing_ok=True)
    url = f"sqlite:///{db}"
    migrate(url)
    with RecordStore(url) as records:
        # The base model is the one serving the line: registered and active.
        blob = base_ckpt.read_bytes()
        register(records, ArtifactStore(out / "models"), blob, base.meta)
        records.set_active(base.version, by="bench.retrain")
        records.upsert_inspections(recorded_rows(base, args.data, window_images))
        counts = records.window_counts(
            datetime.now(timezone.utc) - timedelta(hours=1), datetime.now(timezone.utc)
        )

    rsettings = RetrainSettings(
        database_url=url,
        redis_url=None,
        artifact_store=str(out / "models"),
        image_roots=[str(args.data.resolve())],
        device=args.device,
        cache_dir=settings.cache_dir,
        retrain_epochs=args.epochs,
        retrain_batch_size=args.batch_size,
        max_images_per_class=args.per_class,
        retrain_dir=out / "runs",
        promoted_by="bench.retrain",
    )
    t1 = time.perf_counter()
    report = run(rsettings, RetrainOptions(since="1h", out=out / "retrain"))
    retrain_seconds = time.perf_counter() - t1
    after = Inspector.from_checkpoint(Path(report["checkpoint"]), settings.device)

    before_eval = evaluate(base, args.data, out / "eval-before", classes)
    after_eval = evaluate(after, args.data, out / "eval-after", classes)
    result = {
        "command": "python -m bench.retrain " + " ".join(sys.argv[1:] if argv is None else argv),
        "base": base.version,
        "base_classes": base_classes,
        "base_images": {c: len(v) for c, v in base_images.items()},
        "base_seconds": round(base_seconds, 1),  # ~0 when base.safetensors was reused
        "base_training": base.meta.training,
        "candidate": after.version,
        "promoted": report["decision"]["promote"],
        "decision": report["decision"]["reasons"],
        "window": counts,
        "images": report["images"],
        "retrain_seconds": round(retrain_seconds, 1),
        "retrain_feature_seconds": report["feature_seconds"],
        "retrain_train_seconds": report["train_seconds"],
        "device": report["device"],
        "threads": torch.get_num_threads(),
        "before": {c: before_eval["classes"][c] for c in classes},
        "after": {c: after_eval["classes"][c] for c in classes},
        "gate": report["gate"]["classes"],
    }
    (out / "retrain.json").write_text(json.dumps(result, indent=2, default=str))

    print(
        f"\nbase {base.version} ({', '.join(base_classes)}; {args.base_epochs} epochs), "
        f"retrained {after.version} ({args.epochs} epochs warm start): "
        f"{'promoted' if result['promoted'] else 'NOT promoted'}; retrain "
        f"{retrain_seconds:.0f} s on {report['device']} ({report['feature_seconds']} s features, "
        f"{report['train_seconds']} s training)"
    )
    print(
        "\n| class | base model's normals | window's normals (train + held-out) "
        "| image AUROC before | after | calibrated before / after | FPR / recall after |"
    )
    print("|---|---|---|---|---|---|---|")
    for c in classes:
        b, a = result["before"][c], result["after"][c]
        used = report["images"].get(c, {})
        print(
            f"| {c} | {len(base_images[c])} | {used.get('train', 0)} + {used.get('heldout', 0)} | "
            f"{b['image_auroc']:.3f} | {a['image_auroc']:.3f} | "
            f"{'yes' if b['calibrated'] else 'no'} / {'yes' if a['calibrated'] else 'no'} | "
            f"{a['fpr_at_threshold']:.3f} / {a['recall_at_threshold']:.3f} |"
        )


if __name__ == "__main__":
    main()
