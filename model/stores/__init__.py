"""Where things are kept: thin adapters to the stores, nothing numerical.

- `blobs`: bytes under a directory or an fsspec URL (heatmaps, archived images, dead letters).
- `artifacts`: checkpoints kept for good, `<store>/<version>.safetensors`.
- `state`: the workers' shared state (active model, per-class calibrations) in Redis, or in
  process; never unpickled.
- `sql`: engines, URLs, transactions and the two kinds of SQL failure; `records`: the
  `RecordStore`, assembled from one private part per domain (`_inspections`, `_versions`,
  `_windows`); `migrations`: the Alembic migrations, found from the installed package.
- `checkpoints`: where a version's checkpoint bytes are found (state store, artifact store,
  recorded URI).
- `settings`: the stores' settings every program shares (`StoreSettings`); `connect`: the
  stores a model-management program opens from them; `labels`: an operator's label recorded.
- `failures`: how a command reports a store it cannot reach, in one line.

Imports: `model.core` and `schemas`; no numerical code, no network or data layer.
"""
