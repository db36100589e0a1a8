"""The streaming inspection worker (`python -m worker.run`). One record's way through it:

- `kafka_io`: the Kafka clients built from the settings (`settings`, read once in `run`);
- `loop`: poll, micro-batch, commit; rebalances and shutdown; the only module that drives the
  consumer;
- `breaker`: the crash-loop breaker's in-flight markers (a record that kills workers becomes a
  `poison` dead letter);
- `intake`: limits before parsing, strict contracts (`schemas`);
- `pipeline`: the per-record boundary: fetch and decode (`image_source`), score (`router`
  routes each class to its model version), heatmaps (`heatmaps`), results; Kafka-free;
- `rejected`, `dead_letters`: a record's failure and the dead letter that records it (spilled
  to a store when it does not fit);
- `publisher`: send until acknowledged, telling the record's refusals from the moment's;
- `recorder`: the batch's inspection rows and labels made durable in SQL before its commit;
- `endpoints`, `metrics`: /livez, /readyz, /metrics; `drift`: each class's drift figure from
  the results it publishes (`grad_score_drift`, alert rules under `deploy/`);
- `embedded_broker`, `process`, `feed`, `demo`: the embedded broker, a worker as a child
  process, a feeder of test images, the demo.

`review` is the review station (`python -m worker.review`), the web page where quality engineers
judge and label what the workers recorded (its map: `worker/review/__init__.py`).

Imports go one way: `worker` -> `model` -> `schemas`.
"""
