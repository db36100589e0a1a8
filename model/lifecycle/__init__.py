"""The model's life on a line: from recorded inspections to a promoted (or refused) version.

- `window`: the retraining's time window (`--since 7d`, ISO dates).
- `selection`: which recorded inspections a retrain may learn from, read back under the roots.
- `gate`: candidate against active model, per class, on the same held-out normals and the
  window's confirmed anomalies.
- `promotion`: registering a version (artifact store and SQL) and making it the active one
  (after a retrain's gate, or `model.promote` for any recorded version).
- `retraining`: the steps of `python -m model.retrain`, one function each; `report`: what a
  retrain used, measured and decided (`report.json`, the gate's table).

Imports: every layer below (`stores`, `inference`, `training`, ...) and `model.settings`.
"""
