"""`python -m model.evaluate --ckpt CKPT --data DIR`: the field's metrics, per class and mean.

Image AUROC, pixel AUROC at 224 x 224 whatever the model's input size, AUPRO up to 30 % FPR,
and, at each class's calibrated threshold, the false-positive rate on good test images and the
recall on defective ones (`model.evaluation`). Writes a JSON report, an ROC-curve PNG and
heatmap overlays for a sample of images.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from model.evaluation.run import evaluate, format_table
from model.inference.inspector import Inspector, ServeOptions
from model.inference.precision import PRECISIONS
from model.settings import ModelSettings


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(
        prog="python -m model.evaluate", description=__doc__.splitlines()[0]
    )
    p.add_argument("--ckpt", type=Path, required=True)
    p.add_argument("--data", type=Path, required=True, help="MVTec-layout directory")
    p.add_argument("--out", type=Path, help="report directory (default: beside the checkpoint)")
    p.add_argument("--classes", nargs="*")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--device", help="cpu, cuda or auto")
    p.add_argument("--runtime", choices=["auto", "torch", "onnxruntime", "openvino"])
    p.add_argument("--precision", choices=PRECISIONS, help="gate-approved only")
    args = p.parse_args(argv)
    given = {k: getattr(args, k) for k in ("device", "runtime", "precision") if getattr(args, k)}
    settings = ModelSettings(**given)
    inspector = Inspector.from_checkpoint(
        args.ckpt,
        settings.device,
        settings.backbone_weights,
        serve=ServeOptions(settings.runtime, settings.graph_cache, settings.precision),
    )
    print(f"scoring with {inspector.runtime.name} in {inspector.runtime.precision}")
    out = args.out or args.ckpt.with_suffix("").with_name(args.ckpt.stem + "-eval")
    report = evaluate(inspector, args.data, out, args.classes, batch_size=args.batch_size)
    print(format_table(report))
    print(f"report: {out / 'report.json'}  ROC: {out / 'roc.png'}  heatmaps: {out / 'heatmaps'}")


if __name__ == "__main__":
    main()
