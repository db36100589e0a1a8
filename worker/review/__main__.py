"""`python -m worker.review`: serve the review station; `add-user` manages its accounts.

    python -m worker.review [--host H] [--port P]
    python -m worker.review add-user NAME --role reviewer|viewer   (password asked, or on stdin)
    python -m worker.review demo [--out runs/worker-demo]   (what `python -m worker.demo` left)

Settings: REVIEW_* environment variables or `.env` (worker/review/settings.py); the stores are
the worker's: REVIEW_DATABASE_URL, REVIEW_IMAGE_ROOTS, REVIEW_HEATMAP_STORE.
"""

from __future__ import annotations

import argparse
import getpass
import sys
from pathlib import Path

from worker.review.accounts import ROLES, AccountError, add_user
from worker.review.settings import ReviewSettings


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m worker.review", description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="command")
    add = sub.add_parser("add-user", help="create or replace an account in REVIEW_USERS_FILE")
    add.add_argument("name")
    add.add_argument("--role", choices=ROLES, default="reviewer")
    demo = sub.add_parser("demo", help="serve the records `python -m worker.demo` left")
    demo.add_argument("--out", type=Path, default=Path("runs/worker-demo"))
    demo.add_argument("--port", dest="demo_port", type=int, help="port (default 8600)")
    ap.add_argument("--host", help="address to listen on (REVIEW_HOST, default 127.0.0.1)")
    ap.add_argument("--port", type=int, help="port (REVIEW_PORT, default 8600)")
    args = ap.parse_args(argv)
    if args.command == "demo":
        return serve_demo(args.out, args.demo_port or args.port)
    overrides = {k: v for k, v in (("host", args.host), ("port", args.port)) if v is not None}
    settings = ReviewSettings(**overrides)  # type: ignore[arg-type]
    if args.command == "add-user":
        if sys.stdin.isatty():
            password = getpass.getpass(f"password for {args.name}: ")
        else:
            password = sys.stdin.readline().rstrip("\n")
        try:
            add_user(settings.users_file, args.name, password, args.role)
        except AccountError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        print(f"{args.name} ({args.role}) saved in {settings.users_file}")
        return 0
    from worker.review.serve import serve

    serve(settings)
    return 0


def serve_demo(out: Path, port: int | None) -> int:
    from worker.review.demo import DEMO_USER, NoDemo, demo_account, demo_settings
    from worker.review.serve import serve

    try:
        settings = demo_settings(out, port)
    except NoDemo as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    password = demo_account(settings)
    print(f"review station on http://{settings.host}:{settings.port}/", flush=True)
    print(f"sign in as {DEMO_USER} with the password {password}", flush=True)
    serve(settings)
    return 0


if __name__ == "__main__":
    sys.exit(main())
