"""The SQL record of inspections, operator labels, model versions and calibrations.

`RecordStore(url)` is the one door to the database for the worker, the retrain job and the
label CLI. PostgreSQL in production (`postgresql+psycopg://...`, psycopg 3; a plain
`postgresql://` URL means the same), a SQLite file as the embedded default
(`sqlite:///inspections.sqlite3`). The schema is `schemas.tables`, built by the Alembic
migrations (`model.stores.migrations.migrate(url)`).

One public class assembled from one private part per domain, the way kafka-python assembles its
admin client: engine and transactions (`sql`), inspections and labels (`_inspections`), the model
registry and calibrations (`_versions`), what a training window holds (`_windows`). A new query
goes into the part of its domain; the failure rules (`RecordStoreUnavailable`: retry later;
anything else propagates) are the engine's, shared by all.
"""

from __future__ import annotations

from model.stores._inspections import Inspections
from model.stores._versions import ModelRegistry
from model.stores._windows import TrainingWindows


class RecordStore(Inspections, ModelRegistry, TrainingWindows):
    """Inspections, labels, model versions and calibrations in one SQL database.

    Every method is one transaction: it either happens whole or raises. Thread-safe (one
    connection per call, from a pool). The schema must exist: `migrate(url)` first.
    """
