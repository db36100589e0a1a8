"""Where does a trained model lose the defects it misses: in its reconstruction or in scoring?

    python -m bench.score_ablation --ckpt runs/q40/model.safetensors \
        --data ../shared/data/industrial --classes magnetic_tile

A diagnostic, not a change to the method: production scoring stays the spec's (model.net.scoring).
For each test image of the chosen classes it keeps the backbone features x, the decoder's
normal reconstruction f_n and the refined x_hat, then computes image AUROC (overall and per
defect type) for several image scores built from them:

- `spec`: the spec's score (refined distance, 21 x 21 smoothing, max of a 32 x 32 pool);
- `no-pool`: the max of the same smoothed map, without the 32 x 32 pool;
- `raw-max`: the max of the 28 x 28 distance map, before upsampling and smoothing;
- `unrefined`: the spec's score on ||f_n - x|| (what refinement pulls back towards x is kept);
- `unrefined-raw-max`: the max of that distance at 28 x 28.

If a variant separates the defects that `spec` misses, scoring is the limit; if none does, the
features or the reconstruction are. Pixel AUROC is given for the refined and unrefined maps.
Writes the table as JSON (and prints it).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from model.data.images import read_image, read_mask, to_batch
from model.data.mvtec import TestItem, test_items
from model.evaluation.run import METRIC_SIZE, at_metric_size, image_labels
from model.inference.graph import autocast_for
from model.inference.inspector import Inspector
from model.metrics.curves import auroc
from model.net.scoring import distance_map, image_scores, smooth_map

# Distances (B x 1 x 28 x 28) and smoothed maps (B x S x S), keyed "refined" / "unrefined".
Views = dict[str, torch.Tensor]

SCORES: dict[str, Callable[[Views, Views], torch.Tensor]] = {
    "spec": lambda dist, maps: image_scores(maps["refined"]),
    "top-1pct": lambda dist, maps: image_scores(maps["refined"], rule="top-1pct"),
    "no-pool": lambda dist, maps: maps["refined"].flatten(1).amax(dim=1),
    "raw-max": lambda dist, maps: dist["refined"].flatten(1).amax(dim=1),
    "unrefined": lambda dist, maps: image_scores(maps["unrefined"]),
    "unrefined-raw-max": lambda dist, maps: dist["unrefined"].flatten(1).amax(dim=1),
}


@torch.no_grad()
def score_variants(
    inspector: Inspector, items: list[TestItem], batch_size: int
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], np.ndarray]:
    """Image scores per variant, refined/unrefined maps (float16) and masks, in item order;
    maps and masks at evaluation's METRIC_SIZE, as `model.evaluate` measures them."""
    size = inspector.meta.image_size
    head, device = inspector.head, inspector.device
    scores: dict[str, list[np.ndarray]] = {k: [] for k in SCORES}
    maps: dict[str, list[np.ndarray]] = {"refined": [], "unrefined": []}
    masks = []
    for i in tqdm(range(0, len(items), batch_size), desc="score variants", unit="batch"):
        chunk = items[i : i + batch_size]
        batch = to_batch([read_image(t.path) for t in chunk], size).to(device)
        with autocast_for(device):
            x = head.prepare(inspector.backbone(batch).float())
            f_n = head.reconstruct(x)
            x_hat = head.refine(f_n, x)
        dist = {"refined": distance_map(x, x_hat), "unrefined": distance_map(x, f_n)}
        smoothed = {k: smooth_map(d, size) for k, d in dist.items()}
        for name, fn in SCORES.items():
            scores[name].append(fn(dist, smoothed).cpu().numpy())
        for k, m in smoothed.items():
            maps[k].append(
                np.stack([at_metric_size(x) for x in m.cpu().numpy()]).astype(np.float16)
            )
        masks.extend(read_mask(t.mask_path, METRIC_SIZE) for t in chunk)
    return (
        {k: np.concatenate(v) for k, v in scores.items()},
        {k: np.concatenate(v) for k, v in maps.items()},
        np.stack(masks),
    )


def class_table(items: list[TestItem], scores, maps, masks) -> dict:
    """Image AUROC per score as model.evaluate reports it: `all` labels by mask (the spec),
    `folder` by folder (anomalib), each defect type against the `good` folder."""
    labels = image_labels(masks)
    types = np.array([t.defect_type for t in items])
    good = types == "good"
    table: dict = {"image_auroc": {}, "pixel_auroc": {}, "n_good": int(good.sum())}
    for name, s in scores.items():
        row = {"all": auroc(labels, s), "folder": auroc(~good, s)}
        for t in sorted(set(types) - {"good"}):
            sel = good | (types == t)
            row[t] = auroc(~good[sel], s[sel])
        table["image_auroc"][name] = row
    for name, m in maps.items():
        table["pixel_auroc"][name] = auroc(masks.ravel(), m.astype(np.float32).ravel())
    return table


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.score_ablation", description=__doc__)
    p.add_argument("--ckpt", type=Path, required=True)
    p.add_argument("--data", type=Path, required=True, help="MVTec-layout directory")
    p.add_argument("--classes", nargs="*", default=["magnetic_tile"])
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--device", default="auto")
    p.add_argument("--out", type=Path, help="JSON file (default: beside the checkpoint)")
    args = p.parse_args(argv)

    inspector = Inspector.from_checkpoint(args.ckpt, device=args.device)
    report: dict = {"checkpoint": inspector.version, "classes": {}}
    for c in args.classes:
        items = test_items(args.data, [c])
        scores, maps, masks = score_variants(inspector, items, args.batch_size)
        report["classes"][c] = class_table(items, scores, maps, masks)
        rows = report["classes"][c]["image_auroc"]
        types = list(next(iter(rows.values())))
        print(f"\n{c}: image AUROC by score ({report['classes'][c]['n_good']} in good/)")
        print(f"{'score':<20}" + "".join(f"{t:>10}" for t in types))
        for name, row in rows.items():
            print(f"{name:<20}" + "".join(f"{row[t]:>10.3f}" for t in types))
        for name, v in report["classes"][c]["pixel_auroc"].items():
            print(f"pixel AUROC, {name} map: {v:.3f}")
    out = args.out or args.ckpt.with_name(args.ckpt.stem + "-score-ablation.json")
    out.write_text(json.dumps(report, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
