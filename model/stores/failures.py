"""How the model-management CLIs (`model.retrain`, `model.promote`) report a failure they can
name: one line on stderr that says what to do, and exit status 1, instead of a traceback. The
stores fail the same way under both, so they say the same thing; anything not listed here is a
bug and keeps its traceback.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

from sqlalchemy import exc as sa_exc

from model.stores.sql import RecordStoreUnavailable
from model.stores.state import StateStoreUnavailable

FAILED = 1


def report_failures(
    body: Callable[[], int],
    own: tuple[type[Exception], ...],
    state_store_advice: str = "",
) -> int:
    """Run `body`; its own errors (`own`, whose messages are already for the operator) and an
    unreachable or unmigrated store become `error: ...` and exit status 1."""
    try:
        return body()
    except own as exc:
        return _fail(str(exc))
    except RecordStoreUnavailable as exc:
        return _fail(f"cannot reach the database: {exc}")
    except (sa_exc.OperationalError, sa_exc.ProgrammingError) as exc:
        first_line = str(exc.orig).strip().splitlines()[0]
        return _fail(
            "the database has no inspection tables (a worker creates them, or run "
            f"`alembic upgrade head`): {first_line}"
        )
    except StateStoreUnavailable as exc:
        return _fail(f"cannot reach the state store (Redis): {exc}{state_store_advice}")


def _fail(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return FAILED
