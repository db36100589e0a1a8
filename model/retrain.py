"""`python -m model.retrain --since 7d`: learn from what the line recorded, check the result
against the active model, promote it only if it is at least as good.

The steps (select, train, gate, record and promote) and what each decides are described where
they run, `model.lifecycle.retraining`. Settings: `GRAD_*` environment variables
(`model.settings.RetrainSettings`); flags override them. Exit status 0 when the run completed
(promoted or not: the report says why), 1 when it could not (no usable data for a class, a
store unreachable), 2 for a usage error.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from model.inference.checkpoint import CheckpointError
from model.lifecycle.retraining import RetrainError, RetrainOptions, run
from model.lifecycle.selection import SelectionError
from model.settings import RetrainSettings
from model.stores.checkpoints import ModelNotFound
from model.stores.failures import report_failures


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m model.retrain",
        description="Retrain from recorded inspections, gate against the active model, promote.",
    )
    p.add_argument("--since", required=True, help="window start: 12h, 7d, 2w, or an ISO date")
    p.add_argument("--until", help="window end (default now): a duration ago or an ISO date")
    p.add_argument("--classes", nargs="+", metavar="CLASS", help="only these product classes")
    p.add_argument(
        "--dry-run", action="store_true", help="report the selection and the plan, then stop"
    )
    p.add_argument("--promote", choices=["auto", "never", "force"], default="auto")
    p.add_argument(
        "--from-scratch", action="store_true", help="do not warm-start from the active model"
    )
    p.add_argument(
        "--epochs", type=int, dest="retrain_epochs", help="GRAD_RETRAIN_EPOCHS; 0: recalibrate"
    )
    p.add_argument("--batch-size", type=int, dest="retrain_batch_size")
    p.add_argument(
        "--include-unlabelled",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="also train on unlabelled images scored well below their class threshold",
    )
    p.add_argument("--margin", type=float, dest="unlabelled_margin", help="for those: 0 to 1")
    p.add_argument("--max-per-class", type=int, dest="max_images_per_class")
    p.add_argument("--min-per-class", type=int, dest="min_images_per_class")
    p.add_argument("--database-url", help="SQL record (GRAD_DATABASE_URL)")
    p.add_argument("--redis-url", help="workers' state store (GRAD_REDIS_URL)")
    p.add_argument("--state-prefix", help="key prefix in Redis (GRAD_STATE_PREFIX)")
    p.add_argument("--artifact-store", help="directory or fsspec URL for checkpoints")
    p.add_argument(
        "--image-root",
        dest="image_roots",
        action="append",
        help="directory or URL prefix recorded images may be read from (repeatable)",
    )
    p.add_argument("--device", help="auto, cpu, cuda, cuda:1 ...")
    p.add_argument("--out", type=Path, help="directory for the candidate and the report")
    p.add_argument("--by", dest="promoted_by", help="who the promotion is recorded as made by")
    return p


_OPTION_KEYS = ("since", "until", "classes", "dry_run", "promote", "from_scratch", "out")


def main(argv: list[str] | None = None) -> int:
    args = vars(build_parser().parse_args(argv))
    opts = RetrainOptions(**{k: args.pop(k) for k in _OPTION_KEYS})
    overrides = {k: v for k, v in args.items() if v is not None}
    try:
        settings = RetrainSettings(**overrides)
    except ValueError as exc:
        print(f"error: invalid settings: {exc}", file=sys.stderr)
        return 2

    def retrain() -> int:
        run(settings, opts)
        return 0

    return report_failures(retrain, (RetrainError, SelectionError, ModelNotFound, CheckpointError))


if __name__ == "__main__":
    sys.exit(main())
