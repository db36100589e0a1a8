"""What a retraining reports: one `RetrainReport` filled step by step, written as
`<out>/report.json` (atomically, so a reader never sees half a file) and printed as a table.

The JSON is what an operator or an audit reads after the fact, and what the registry's
`metrics` and `gate_decision` columns hold: NaN becomes null and numpy scalars plain numbers,
the two things JSON columns and files refuse.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from model.core.files import atomic_write_bytes


@dataclass
class RetrainReport:
    """Everything one retraining used, measured and decided. The first five fields are known
    once the run is planned (a dry run stops there); the rest as the steps complete."""

    window: dict[str, str]
    active: str | None
    selection: dict[str, dict]
    plan: dict[str, object]
    settings: dict[str, object]
    dry_run: bool = False
    candidate: str | None = None
    artifact_uri: str | None = None
    checkpoint: str | None = None
    gate: dict | None = None
    decision: dict | None = None
    # "pending" while a decided promotion has not been carried out (the report is written
    # before it, so that a failed promotion still leaves the report); then its outcome.
    promotion: dict | str | None = None
    images: dict[str, dict[str, int]] = field(default_factory=dict)
    train_seconds: float | None = None
    feature_seconds: float | None = None
    device: str | None = None
    total_seconds: float | None = None

    def as_dict(self) -> dict:
        """The JSON document: a dry run's report holds the plan only."""
        doc: dict[str, object] = {
            "window": self.window,
            "active": self.active,
            "selection": self.selection,
            "plan": self.plan,
            "settings": self.settings,
        }
        if self.dry_run:
            doc["dry_run"] = True
        else:
            doc.update(
                candidate=self.candidate,
                artifact_uri=self.artifact_uri,
                checkpoint=self.checkpoint,
                gate=self.gate,
                decision=self.decision,
                promotion=self.promotion,
                images=self.images,
                train_seconds=self.train_seconds,
                feature_seconds=self.feature_seconds,
                device=self.device,
                total_seconds=self.total_seconds,
            )
        clean = jsonable(doc)
        assert isinstance(clean, dict)
        return clean

    def write(self, out_dir: Path) -> dict:
        """Write `<out_dir>/report.json`; returns the document written."""
        doc = self.as_dict()
        atomic_write_bytes(out_dir / "report.json", json.dumps(doc, indent=2).encode())
        return doc


def jsonable(obj: object) -> object:
    """NaN and infinities to None, numpy scalars to Python: what JSON columns and files accept."""
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, (np.floating, float)):
        f = float(obj)
        return None if math.isnan(f) or math.isinf(f) else f
    if isinstance(obj, np.integer):
        return int(obj)
    return obj


def _fmt(x: float | int | None, digits: int = 3) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    return f"{x:.{digits}f}"


def format_gate(gate: dict, candidate: str, active: str | None) -> str:
    """The gate's figures per class, candidate beside active, and each class's verdict."""
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
        lines.append(_gate_row(c, e))
    return "\n".join(lines)


def _gate_row(c: str, e: dict) -> str:
    if "candidate" not in e:
        return f"{c:<18} {'-':>5} {'-':>5} | {'':>15} | {'':>17} | {'':>16} | missing"
    cm, am = e["candidate"], e.get("active") or {}

    def pair(k: str) -> str:
        return f"{_fmt(cm.get(k))} / {_fmt(am.get(k))}"

    return (
        f"{c:<18} {cm['n_normals']:>5} {cm['n_anomalies']:>5} | {pair('fpr'):>15} | "
        f"{pair('recall'):>17} | {pair('auroc'):>16} | {e['verdict']}"
    )
