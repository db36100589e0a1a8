"""`python -m model.export CKPT [--runtime onnxruntime] [--data DIR] [--out DIR]`: export a
checkpoint's whole scoring graph for an exported runtime, checked to decide as the checkpoint
does (`model.inference.graph_export`), into a graph cache to ship with the model.

The export is made on demand by any worker anyway; this command is for an edge box that should
not spend its first minute exporting, or a release that wants the check on its own test images
(`--data`, MVTec layout; without it the generated sample). The checkpoint's version id still
names the model. Exit status 0 when exported and checked, 1 when the check failed (the file is
removed) or the runtime is not installed, 2 for a usage error.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from model.inference.checkpoint import CheckpointError
from model.inference.graph_export import ExportError, check_set, export_verified
from model.settings import ModelSettings


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m model.export", description=__doc__.splitlines()[0])
    p.add_argument("ckpt", type=Path, metavar="CKPT")
    p.add_argument("--runtime", choices=["onnxruntime", "openvino"], default="onnxruntime")
    p.add_argument("--out", type=Path, help="graph cache to write (default: GRAD_GRAPH_CACHE)")
    p.add_argument("--data", type=Path, help="MVTec-layout test images to check on")
    p.add_argument("--per-class", type=int, default=16, help="check images per class")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    settings = ModelSettings()
    out = args.out or settings.graph_cache
    try:
        with tempfile.TemporaryDirectory() as scratch:
            items = check_set(args.ckpt, args.data, args.per_class, Path(scratch))
            report = export_verified(args.ckpt, out, args.runtime, items)
    except (ExportError, CheckpointError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    p = report.parity
    print(
        f"{report.version} exported for {report.runtime}: {report.path}\n"
        f"checked on {p.images} images: scores within {p.max_score_rel:.1e} of themselves, "
        f"{p.verdict_flips} verdicts changed"
        + (
            f", pixel AUROC within {p.pixel_auroc_delta:.1e}"
            if p.pixel_auroc_delta is not None
            else ""
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
