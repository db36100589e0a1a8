"""`python -m model.promote VERSION`: make a recorded model version the active one (a rollback,
or a candidate promoted by hand); `--list` shows the recorded versions.

The version must be recorded in the SQL registry (`model.retrain` records every candidate; a
model a worker seeded the fleet with is registered by the first retrain). Its checkpoint comes
from the workers' state store, else the artifact store, else the URI the registry recorded; the
bytes are verified against the version id (never unpickled). SQL marks it active (the one
before retired), the state store gets the bytes, and its announcement makes running workers
switch between two batches. Settings as for `model.retrain` (`GRAD_DATABASE_URL`,
`GRAD_REDIS_URL`, `GRAD_STATE_PREFIX`, `GRAD_ARTIFACT_STORE`); flags override them.

Exit status 0 when promoted (or listed), 1 when it could not be (not recorded, no bytes, a
store unreachable), 2 for a usage error.
"""

from __future__ import annotations

import argparse
import sys

from model.inference.checkpoint import CheckpointError
from model.lifecycle.promotion import PromotionError, PromotionOutcome, promote_recorded
from model.settings import RetrainSettings
from model.stores.checkpoints import ModelNotFound
from model.stores.connect import connect
from model.stores.failures import report_failures
from model.stores.records import RecordStore
from model.stores.state import StateStore


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m model.promote",
        description="Make a recorded model version active (SQL and the workers' state store).",
    )
    p.add_argument("version", nargs="?", metavar="VERSION", help="e.g. grad-0123456789abcdef")
    p.add_argument("--list", action="store_true", help="list the recorded versions and exit")
    p.add_argument("--by", dest="promoted_by", help="who the promotion is recorded as made by")
    p.add_argument("--database-url", help="SQL registry (GRAD_DATABASE_URL)")
    p.add_argument("--redis-url", help="workers' state store (GRAD_REDIS_URL)")
    p.add_argument("--state-prefix", help="key prefix in Redis (GRAD_STATE_PREFIX)")
    p.add_argument("--artifact-store", help="directory or fsspec URL (GRAD_ARTIFACT_STORE)")
    return p


def list_versions(records: RecordStore, store: StateStore | None) -> None:
    serving = store.active_version() if store is not None else None
    print(f"{'version':<22} {'status':<9} {'created':<20} {'parent':<22} images  gate")
    for v in records.model_versions():
        gate = v.gate_decision or {}
        verdict = "" if not gate else ("promote" if gate.get("promote") else "refused")
        mark = "  <- serving" if v.version == serving else ""
        print(
            f"{v.version:<22} {v.status:<9} {v.created_at.strftime('%Y-%m-%d %H:%M'):<20} "
            f"{v.parent_version or '-':<22} {sum(v.images_per_class.values()):>6}  "
            f"{verdict}{mark}"
        )


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = vars(parser.parse_args(argv))
    version, show = args.pop("version"), args.pop("list")
    if not version and not show:
        parser.error("give a VERSION to promote, or --list")
    try:
        settings = RetrainSettings(**{k: v for k, v in args.items() if v is not None})
    except ValueError as exc:
        print(f"error: invalid settings: {exc}", file=sys.stderr)
        return 2

    def run() -> int:
        with connect(settings) as stores:
            if show:
                list_versions(stores.records, stores.state)
            else:
                report(version, promote_recorded(version, stores, settings.promoted_by))
        return 0

    return report_failures(
        run,
        (PromotionError, ModelNotFound, CheckpointError),
        state_store_advice="; the SQL registry may already name the version active: run "
        "the command again once Redis answers",
    )


def report(version: str, outcome: PromotionOutcome) -> None:
    before = outcome.previous_state_store or outcome.previous_sql
    print(
        f"{version} is active"
        + (f" (was {before})" if before and before != version else "")
        + (
            "; announced to the workers, which switch between batches"
            if outcome.state_store
            else "; no state store configured (GRAD_REDIS_URL): recorded in SQL only"
        )
    )
    if outcome.overrides_cleared:
        print(f"calibration overrides cleared for: {', '.join(outcome.overrides_cleared)}")
    if outcome.canaries_kept:
        print(f"classes pinned to a canary version stay on it: {outcome.canaries_kept}")


if __name__ == "__main__":
    sys.exit(main())
