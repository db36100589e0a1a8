"""`python -m model.label EVENT_ID (--anomalous | --normal) --by NAME [--note TEXT]`

A quality engineer's verdict on one inspection, recorded in the SQL database the workers write
(`--database-url`, else `GRAD_DATABASE_URL`, else `sqlite:///inspections.sqlite3`). Retraining
learns only from images labelled or left normal, so a wrongly passed part labelled anomalous here
never becomes "normal" to the next model.

An event the database has no inspection for yet (the worker is behind) keeps its label, which is
applied the moment the inspection is recorded; the command says so. Exit status 0 when the label
is recorded (applied, kept, or older than one already recorded); 1 when the database cannot be
reached or has no schema; 2 for a usage error.
"""

from __future__ import annotations

import argparse
import re
import sys
from datetime import datetime

from model.core.clock import utc_now
from model.settings import LabelSettings
from model.stores.labels import LabelError, record_label
from model.stores.sql import safe_url
from schemas.events import EVENT_ID_PATTERN


def _aware_time(value: str) -> datetime:
    try:
        at = datetime.fromisoformat(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not an ISO 8601 time: {value!r}") from exc
    if at.utcoffset() is None:
        raise argparse.ArgumentTypeError(f"give the time zone too, e.g. {value}+00:00")
    return at


def _event_id(value: str) -> str:
    if not re.match(EVENT_ID_PATTERN, value):
        raise argparse.ArgumentTypeError(f"not a valid event id: {value!r}")
    return value


def build_parser(default_url: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m model.label",
        description="Label one inspection normal or anomalous (operator feedback).",
    )
    p.add_argument("event_id", metavar="EVENT_ID", type=_event_id)
    verdict = p.add_mutually_exclusive_group(required=True)
    verdict.add_argument(
        "--anomalous", dest="label", action="store_const", const="anomalous", help="a defect"
    )
    verdict.add_argument(
        "--normal", dest="label", action="store_const", const="normal", help="a good part"
    )
    p.add_argument("--by", required=True, metavar="NAME", help="who decided (kept for audit)")
    p.add_argument("--note", default=None, metavar="TEXT", help="free text, e.g. the defect")
    p.add_argument(
        "--at",
        type=_aware_time,
        default=None,
        metavar="TIME",
        help="when the decision was made (ISO 8601 with zone; default now)",
    )
    p.add_argument(
        "--database-url",
        default=default_url,
        metavar="URL",
        help=f"SQLAlchemy URL (default: GRAD_DATABASE_URL, else {safe_url(default_url)})",
    )
    return p


def main(argv: list[str] | None = None) -> int:
    default_url = LabelSettings().database_url.get_secret_value()
    args = build_parser(default_url).parse_args(argv)
    at = args.at or utc_now()
    try:
        outcome = record_label(
            args.database_url, args.event_id, args.label, by=args.by, note=args.note, at=at
        )
    except LabelError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1

    event = f"event {args.event_id}"
    if outcome == "applied":
        print(f"{event}: labelled {args.label} by {args.by} (applied to the recorded inspection)")
    elif outcome == "pending":
        print(
            f"{event}: no inspection recorded yet; the label {args.label} by {args.by} is kept "
            "and will be applied when the inspection arrives"
        )
    else:
        print(
            f"{event}: not changed: a label given after {at.isoformat()} is already recorded "
            "(the latest decision wins)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
