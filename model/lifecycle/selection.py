"""Which recorded inspections a retrain learns from, and which it checks the candidate on.

Rules, per product class, over the inspections processed in the window:

- **Training normals**: images an operator labelled normal; plus, when enabled, unlabelled
  images scored against their class's own calibration with a score below
  `threshold x (1 - margin)` (clearly normal to the model that saw them). Labelled ones come
  first, newest first, then the unlabelled, newest first.
- **Never** an image labelled anomalous: a row labelled anomalous is not a training image, and
  neither is any other row with the same image URI (an image labelled anomalous once, in any
  inspection at any time, is out).
- One image once: rows repeating an image URI already chosen are left out.
- A per-class cap on the images used, so one busy class does not drown the others.
- **Confirmed anomalies** (labelled anomalous in the window) are read too: the gate checks
  candidates on them; they never train.

Images are read back through their recorded URI (`model.data.recorded_images`): inline images and
unreadable or out-of-roots URIs are counted as unavailable. A class with fewer usable normal
images than the minimum is skipped when it simply has too few recorded, and is an error
(`SelectionError`, naming the class) when unreadable images brought it below the minimum.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal

from model.data.recorded_images import ImageUnavailable, LoadedImage, RecordedImages
from model.stores.records import RecordStore
from model.training.split import TooFewNormals, split_tiers
from schemas.records import InspectionRecord

Source = Literal["labelled_normal", "unlabelled_below_margin", "confirmed_anomaly"]


class SelectionError(RuntimeError):
    """The window does not hold enough usable data; the message names the class."""


@dataclass(frozen=True)
class Candidate:
    row: InspectionRecord
    source: Source


@dataclass(frozen=True)
class Picked:
    image: LoadedImage
    row: InspectionRecord
    source: Source


@dataclass
class ClassSelection:
    product_class: str
    window: dict[str, int]  # counts of the window (RecordStore.window_counts)
    candidates: list[Candidate] = field(default_factory=list)
    excluded: Counter = field(default_factory=Counter)  # why rows were left out before reading
    normals: list[Picked] = field(default_factory=list)
    anomalies: list[Picked] = field(default_factory=list)
    unavailable: Counter = field(default_factory=Counter)  # normals that could not be read
    anomalies_unavailable: Counter = field(default_factory=Counter)
    capped: int = 0  # usable candidates left out by the cap
    status: Literal["train", "skipped"] = "train"
    note: str = ""

    def summary(self) -> dict:
        sources = Counter(p.source for p in self.normals)
        return {
            "window": dict(self.window),
            "status": self.status,
            "note": self.note,
            "normal_images": len(self.normals),
            "labelled_normal": sources["labelled_normal"],
            "unlabelled_below_margin": sources["unlabelled_below_margin"],
            "confirmed_anomalies": len(self.anomalies),
            "excluded": dict(self.excluded),
            "unavailable": dict(self.unavailable),
            "anomalies_unavailable": dict(self.anomalies_unavailable),
            "capped": self.capped,
        }


def confidently_normal(row: InspectionRecord, margin: float) -> bool:
    """An unlabelled row the model that scored it found clearly normal: scored against its
    class's own calibration, with score < threshold x (1 - margin)."""
    return row.label is None and row.calibrated and row.score < row.threshold * (1.0 - margin)


def normal_candidates(
    labelled: Iterable[InspectionRecord],
    unlabelled: Iterable[InspectionRecord],
    anomalous_uris: set[str],
    *,
    include_unlabelled: bool,
    margin: float,
) -> tuple[list[Candidate], Counter]:
    """The training candidates in order of preference, and the count of rows left out by reason.

    `labelled`: rows labelled normal; `unlabelled`: rows with no label. Rows of any other kind
    passed in are left out (never trusted to the caller's filtering).
    """
    out: list[Candidate] = []
    excluded: Counter = Counter()
    seen: set[str] = set()

    def newest_first(rows: Iterable[InspectionRecord]) -> list[InspectionRecord]:
        return sorted(rows, key=lambda r: (r.processed_at, r.event_id), reverse=True)

    def consider(row: InspectionRecord, source: Source) -> None:
        if row.label == "anomalous":
            excluded["labelled_anomalous"] += 1
            return
        if row.image_uri is not None and row.image_uri in anomalous_uris:
            excluded["image_labelled_anomalous_elsewhere"] += 1
            return
        if row.image_uri is not None:
            if row.image_uri in seen:
                excluded["duplicate_image"] += 1
                return
            seen.add(row.image_uri)
        out.append(Candidate(row, source))

    for row in newest_first(labelled):
        if row.label != "normal":
            excluded["labelled_anomalous" if row.label == "anomalous" else "not_labelled"] += 1
            continue
        consider(row, "labelled_normal")
    if include_unlabelled:
        for row in newest_first(unlabelled):
            if row.label is not None:
                excluded[f"labelled_{row.label}"] += 1
                continue
            if not confidently_normal(row, margin):
                excluded["unlabelled_not_below_margin"] += 1
                continue
            consider(row, "unlabelled_below_margin")
    return out, excluded


def read_until(
    rows: Sequence[tuple[InspectionRecord, Source]], reader: RecordedImages, cap: int
) -> tuple[list[Picked], Counter, int]:
    """Read rows in order until `cap` images are usable; (usable, unavailable by reason, number
    of rows left unread because the cap was reached)."""
    picked: list[Picked] = []
    unavailable: Counter = Counter()
    for i, (row, source) in enumerate(rows):
        if len(picked) >= cap:
            return picked, unavailable, len(rows) - i
        try:
            picked.append(Picked(reader.load(row.image_uri), row, source))
        except ImageUnavailable as exc:
            unavailable[exc.reason] += 1
    return picked, unavailable, 0


@dataclass(frozen=True)
class SelectionRules:
    """What a retrain may learn from (the settings' selection fields, `model.settings`)."""

    include_unlabelled: bool = False
    margin: float = 0.5  # unlabelled images only below threshold x (1 - margin)
    max_images: int = 400
    max_anomalies: int = 200
    min_images: int = 10


def select(
    records: RecordStore,
    reader: RecordedImages,
    start: datetime,
    end: datetime,
    *,
    classes: Sequence[str] | None,
    rules: SelectionRules,
) -> dict[str, ClassSelection]:
    """The selection for every class recorded in the window (or only `classes`); a
    `SelectionError` naming every class whose readable images fell below the minimum."""
    counts = records.window_counts(start, end, classes)
    out: dict[str, ClassSelection] = {}
    errors = []
    for c, window in counts.items():
        sel = ClassSelection(c, window)
        _select_normals(sel, records, reader, (start, end), rules)
        _select_anomalies(sel, records, reader, (start, end), rules)
        error = _judge(sel, rules.min_images)
        if error:
            errors.append(error)
        out[c] = sel
    if errors:
        raise SelectionError("; ".join(errors))
    return out


def _select_normals(
    sel: ClassSelection,
    records: RecordStore,
    reader: RecordedImages,
    window: tuple[datetime, datetime],
    rules: SelectionRules,
) -> None:
    """Labelled normals (and, when enabled, clearly normal unlabelled images), never an image
    labelled anomalous anywhere, read until the cap."""
    start, end, c = *window, sel.product_class
    fetch = 2 * rules.max_images + 50  # rows per kind fetched: room for duplicates, unreadable
    labelled = records.inspections_in_window(start, end, c, label="normal", limit=fetch)
    unlabelled = (
        records.inspections_in_window(
            start,
            end,
            c,
            label=None,
            calibrated_only=True,
            max_score_ratio=1.0 - rules.margin,
            with_image_uri=True,
            limit=fetch,
        )
        if rules.include_unlabelled
        else []
    )
    uris = [r.image_uri for r in (*labelled, *unlabelled) if r.image_uri is not None]
    anomalous = records.anomalous_image_uris(uris)
    sel.candidates, sel.excluded = normal_candidates(
        labelled,
        unlabelled,
        anomalous,
        include_unlabelled=rules.include_unlabelled,
        margin=rules.margin,
    )
    if rules.include_unlabelled:
        # Unlabelled rows the query did not return: not clearly normal, or inline.
        sel.excluded["unlabelled_not_used"] += max(0, sel.window["unlabelled"] - len(unlabelled))
    sel.normals, sel.unavailable, sel.capped = read_until(
        [(cand.row, cand.source) for cand in sel.candidates], reader, rules.max_images
    )


def _select_anomalies(
    sel: ClassSelection,
    records: RecordStore,
    reader: RecordedImages,
    window: tuple[datetime, datetime],
    rules: SelectionRules,
) -> None:
    """The window's operator-confirmed anomalies (for the gate), one per image."""
    start, end = window
    confirmed = records.inspections_in_window(
        start, end, sel.product_class, label="anomalous", limit=2 * rules.max_anomalies + 50
    )
    seen: set[str] = set()
    rows = []
    for r in confirmed:
        if r.image_uri is not None and r.image_uri in seen:
            continue
        if r.image_uri is not None:
            seen.add(r.image_uri)
        rows.append((r, "confirmed_anomaly"))
    sel.anomalies, sel.anomalies_unavailable, _ = read_until(rows, reader, rules.max_anomalies)


def _judge(sel: ClassSelection, min_images: int) -> str | None:
    """Skip a class with too few usable normals; an error when unreadable images caused it."""
    usable, recorded = len(sel.normals), len(sel.candidates)
    if usable >= min_images:
        return None
    lost = sum(sel.unavailable.values())
    sel.status = "skipped"
    sel.note = f"{usable} usable normal images, at least {min_images} needed" + (
        f" ({lost} unavailable)" if lost else ""
    )
    if recorded >= min_images:
        return (
            f"class {sel.product_class!r}: only {usable} of {recorded} selected normal images "
            f"could be read ({_reasons(sel.unavailable)}), at least {min_images} are needed"
        )
    return None


def _reasons(counter: Counter) -> str:
    return ", ".join(f"{n} {reason}" for reason, n in sorted(counter.items())) or "none"


def split_normals(
    normals: Sequence[Picked], fraction: float, minimum: int, seed: int, product_class: str
) -> tuple[list[Picked], list[Picked]]:
    """Seeded (train, held out) split of a class's normal images.

    The held-out share (at least `minimum`, at most half) is drawn from operator-labelled
    images first: the gate's verdict should rest on verified normals, not on images chosen
    because the active model already found them normal.
    """
    labelled = sorted(
        (p for p in normals if p.source == "labelled_normal"), key=lambda p: p.image.sha256
    )
    other = sorted(
        (p for p in normals if p.source != "labelled_normal"), key=lambda p: p.image.sha256
    )
    try:
        return split_tiers([labelled, other], fraction, minimum, seed, product_class)
    except TooFewNormals as exc:
        raise SelectionError(str(exc)) from exc


def format_selection(selection: dict[str, ClassSelection]) -> str:
    """The selection as a table, for the terminal."""
    head = (
        f"{'class':<18} {'in window':>9} {'labelled N/A':>12} {'train imgs':>10} "
        f"{'(labelled':>9} {'+unlab.)':>8} {'anomalies':>9} {'unavail.':>8} {'capped':>6}  status"
    )
    lines = [head, "-" * len(head)]
    for c, s in sorted(selection.items()):
        d = s.summary()
        w = s.window
        status = s.status + (f": {s.note}" if s.note else "")
        lines.append(
            f"{c:<18} {w['inspected']:>9} "
            f"{w['labelled_normal']:>5}/{w['labelled_anomalous']:<6} {d['normal_images']:>10} "
            f"{d['labelled_normal']:>9} {d['unlabelled_below_margin']:>8} "
            f"{d['confirmed_anomalies']:>9} {sum(s.unavailable.values()):>8} {s.capped:>6}  "
            f"{status}"
        )
        if s.unavailable:
            lines.append(f"{'':<18} unavailable: {_reasons(s.unavailable)}")
        if s.excluded:
            lines.append(f"{'':<18} left out: {_reasons(s.excluded)}")
    return "\n".join(lines)
