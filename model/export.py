"""`python -m model.export CKPT [--runtime onnxruntime] [--data DIR] [--out DIR]`: export a
checkpoint's whole scoring graph for an exported runtime, checked to decide as the checkpoint
does (`model.inference.graph_export`), into a graph cache to ship with the model.

`--precision int8` (or `bf16`: OpenVINO, or torch, on a CPU that has it; or `fp16` / `bf16`
for torch on a GPU, `--runtime torch --device cuda`) with `--data DIR` runs the precision gate
instead (`model.evaluation.precision_gate`): the reduced form is made (int8: calibrated on the
checkpoint's held-out normal training images), judged against fp32 on the test images,
approved in the graph cache when image AUROC drops by at most 0.005 and pixel AUROC by at most
0.01, refused otherwise (exit status 1); `--report FILE` keeps the figures as JSON. Serve it
with `WORKER_PRECISION` / `GRAD_PRECISION` and the same graph cache.

The export is made on demand by any worker anyway; this command is for an edge box that should
not spend its first minute exporting, or a release that wants the check on its own test images
(`--data`, MVTec layout; without it the generated sample). The checkpoint's version id still
names the model. Exit status 0 when exported and checked, 1 when the check failed (the file is
removed) or the runtime is not installed, 2 for a usage error.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from model.data.mvtec import DatasetError
from model.evaluation.precision_gate import GateOptions, as_json, format_report, judge
from model.inference.checkpoint import CheckpointError
from model.inference.graph_export import ExportError, check_set, export_verified
from model.inference.precision import PRECISIONS, PrecisionError
from model.inference.quantize import SCOPES, TOOLS
from model.settings import ModelSettings


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m model.export", description=__doc__.splitlines()[0])
    p.add_argument("ckpt", type=Path, metavar="CKPT")
    p.add_argument(
        "--runtime",
        choices=["onnxruntime", "openvino", "torch"],
        default="onnxruntime",
        help="torch: for the precision gate only (it needs no export)",
    )
    p.add_argument("--device", default="cpu", help="where the precision gate judges: cpu, cuda")
    p.add_argument("--out", type=Path, help="graph cache to write (default: GRAD_GRAPH_CACHE)")
    p.add_argument("--data", type=Path, help="MVTec-layout test images to check on")
    p.add_argument("--per-class", type=int, default=16, help="check images per class")
    p.add_argument("--precision", choices=PRECISIONS, default="fp32")
    p.add_argument("--report", type=Path, help="the precision gate's figures, as JSON")
    p.add_argument("--int8-scope", choices=SCOPES, default=GateOptions.int8_scope,
                   help="which operations int8 takes (default: the head's decoder)")  # fmt: skip
    p.add_argument("--int8-tool", choices=("auto", *TOOLS), default=GateOptions.int8_tool,
                   help="which quantiser makes the int8 graph (auto: the runtime's own, "
                   "NNCF for OpenVINO)")  # fmt: skip
    return p


def gate(args: argparse.Namespace, out: Path) -> int:
    """The precision gate on `--data`: 0 approved, 1 refused or not possible here."""
    if args.data is None:
        print("error: --precision needs --data (the images it is judged on)", file=sys.stderr)
        return 2
    options = GateOptions(int8_scope=args.int8_scope, int8_tool=args.int8_tool, device=args.device)
    report = judge(args.ckpt, args.data, args.runtime, args.precision, out, options, print)
    print(format_report(report))
    if args.report:
        args.report.parent.mkdir(parents=True, exist_ok=True)
        args.report.write_text(json.dumps(as_json(report), indent=2) + "\n")
        print(f"report: {args.report}")
    return 0 if report.passed else 1


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    settings = ModelSettings()
    out = args.out or settings.graph_cache
    if args.runtime == "torch" and args.precision == "fp32":
        print("error: torch serves the checkpoint itself; nothing to export", file=sys.stderr)
        return 2
    if args.precision != "fp32":
        try:
            return gate(args, out)
        except (PrecisionError, CheckpointError, DatasetError, FileNotFoundError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
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
