"""The model's life on a line: from recorded inspections to a promoted (or refused) version.

- `window`: the retraining's time window (`--since 7d`, ISO dates).
- `selection`: which recorded inspections a retrain may learn from, read back under the roots.
- `gate`: candidate against active model, per class, on the same held-out normals and the
  window's confirmed anomalies.
- `promotion`: registering a version (artifact store and SQL) and making it the active one.
- `retraining`: the steps of `python -m model.retrain`, and their report.

Imports: every layer below (`stores`, `inference`, `training`, ...) and `model.settings`.
"""
