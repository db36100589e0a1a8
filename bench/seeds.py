"""Compare configurations over several seeds: mean, spread and each run, from evaluation reports.

    python -m bench.seeds lite0=runs/lite0-40s30-seed*/eval/report.json \
        lite1=runs/lite1-40s30*/eval/report.json

Run-to-run variation on these images (about 0.015 image AUROC on magnetic_tile) is as large as
most single changes, so a configuration is judged on the mean of its seeds, with their spread
beside it; one run each decides nothing. Each argument is LABEL=GLOB over the `report.json`
files `model.evaluate` writes. Prints a Markdown table for bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import glob
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

# (column heading, path into a report): the figures the targets are set on.
COLUMNS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("mean image AUROC", ("mean", "image_auroc")),
    ("mean pixel AUROC", ("mean", "pixel_auroc")),
    ("mean AUPRO", ("mean", "aupro")),
    ("magnetic_tile image AUROC", ("classes", "magnetic_tile", "image_auroc")),
    ("by folder", ("classes", "magnetic_tile", "image_auroc_folder_labels")),
    ("crack", ("classes", "magnetic_tile", "image_auroc_by_defect", "crack")),
    ("cookie image AUROC", ("classes", "cookie", "image_auroc")),
)


@dataclass(frozen=True)
class Group:
    label: str
    reports: tuple[Path, ...]


def parse_group(arg: str) -> Group:
    label, sep, pattern = arg.partition("=")
    if not sep or not label or not pattern:
        raise argparse.ArgumentTypeError(f"expected LABEL=GLOB, got {arg!r}")
    files = tuple(sorted(Path(p) for p in glob.glob(pattern)))
    if not files:
        raise argparse.ArgumentTypeError(f"{label}: no report matches {pattern!r}")
    return Group(label, files)


def pick(report: dict, path: tuple[str, ...]) -> float:
    """A figure from a report, NaN where that run has no such class, defect type or figure."""
    node = report
    for key in path:
        if not isinstance(node, dict) or key not in node:
            return math.nan
        node = node[key]
    return math.nan if node is None else float(node)


def summarise(values: list[float]) -> str:
    """`mean ± sample sd (min–max)`; one run is shown as itself."""
    v = np.array([x for x in values if not math.isnan(x)])
    if v.size == 0:
        return "–"
    if v.size == 1:
        return f"{v[0]:.3f}"
    return f"{v.mean():.3f} ± {v.std(ddof=1):.3f} ({v.min():.3f}–{v.max():.3f})"


def table(groups: list[Group]) -> str:
    head = ["configuration", "runs", *(c for c, _ in COLUMNS)]
    rows = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for g in groups:
        reports = [json.loads(p.read_text()) for p in g.reports]
        cells = [summarise([pick(r, path) for r in reports]) for _, path in COLUMNS]
        rows.append("| " + " | ".join([g.label, str(len(reports)), *cells]) + " |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.seeds", description=__doc__.split("\n")[0])
    p.add_argument("groups", nargs="+", type=parse_group, metavar="LABEL=GLOB")
    args = p.parse_args(argv)
    print(table(args.groups))
    for g in args.groups:
        print(f"{g.label}: " + ", ".join(str(r) for r in g.reports))


if __name__ == "__main__":
    main()
