"""Streaming throughput and latency: the worker through a real broker against the bare model.

    python -m bench.stream --data ../shared/data/industrial [--checkpoint CKPT] [--batches 1 8 32]

Both sides get the same encoded images in the same run, on the same machine:
- bare: `Inspector.inspect` on images decoded in the loop (what `model.evaluate` does offline),
  and, for reference, on images decoded beforehand;
- worker: a real `python -m worker.run` process consuming from the embedded broker (tansu),
  fetching each image by URI, decoding, scoring, writing heatmaps, publishing, committing.
  Throughput is measured on a backlog (all events sent at once); latency (processed_at minus
  captured_at, the moment the event was sent) at a steady offered rate below capacity.

The speed of a GRAD model does not depend on its weights, so without `--checkpoint` a model is
trained for one epoch on the generated sample set. Writes JSON (default runs/bench/stream.json)
and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import itertools
import json
import platform
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from model.data.images import decode_image
from model.inference.inspector import Inspector, ServeOptions
from model.inference.precision import PRECISIONS
from schemas import InspectionResult
from worker.embedded_broker import EmbeddedBroker
from worker.feed import feed, inspection_images, make_event, producer_for, read_topics
from worker.process import WorkerProcess


def quick_model(out: Path) -> Path:
    """A one-epoch model on the generated sample, trained in a child process: a process that
    has just trained scores faster afterwards (its allocator and caches are warm), which the
    worker never is, so the bare side must not run in one."""
    ckpt = out / "stream-model.safetensors"
    if not ckpt.exists():
        script = (
            "import sys; from pathlib import Path\n"
            "from model.net.config import TrainConfig\n"
            "from model.data.sample import make_sample\n"
            "from model.settings import ModelSettings\n"
            "from model.training.run import train\n"
            "out = Path(sys.argv[1])\n"
            "data = make_sample(out / 'sample', n_train=24, n_test_good=4, n_test_defect=4)\n"
            "settings = ModelSettings(device='cpu', cache_dir=out / 'cache')\n"
            "train(data, out / 'stream-model.safetensors', "
            "TrainConfig(epochs=1, batch_size=8, seed=0), settings)\n"
        )
        subprocess.run([sys.executable, "-c", script, str(out)], check=True)
    return ckpt


def bare_seconds(inspector: Inspector, blobs: list[bytes], batch: int, decoded: bool) -> float:
    """Seconds to score `blobs` through the inference API (decoding in the loop unless
    `decoded`), in batches of `batch`."""
    pre = [decode_image(b) for b in blobs] if decoded else None
    t0 = time.perf_counter()
    for i in range(0, len(blobs), batch):
        chunk = blobs[i : i + batch]
        inspector.inspect(
            pre[i : i + batch] if pre is not None else [decode_image(b) for b in chunk]
        )
    return time.perf_counter() - t0


class WorkerUnderTest:
    """A real `python -m worker.run` process at one batch size, on its own fresh topic."""

    def __init__(
        self,
        broker: EmbeddedBroker,
        ckpt: Path,
        roots: list[Path],
        out: Path,
        batch: int,
        env: dict[str, str] | None = None,
        name: str = "",
    ) -> None:
        self.broker = broker
        self.topic = f"bench-{batch}-{uuid.uuid4().hex[:6]}"
        broker.create_topic(self.topic, 4)
        broker.create_topic(f"{self.topic}.results", 4)
        broker.create_topic(f"{self.topic}.dlq", 1)
        self.done = 0
        self.proc = WorkerProcess(
            bootstrap=broker.bootstrap,
            topic=self.topic,
            checkpoint=ckpt,
            image_roots=roots,
            heatmaps=out / "heatmaps",
            log=out / f"worker-b{batch}{name}.log",
            group=f"bench-{batch}{name}",
            max_batch=batch,
            max_wait_ms=50,
            extra_env={"WORKER_LOG_LEVEL": "warning", **(env or {})},
        )

    def __enter__(self) -> WorkerUnderTest:
        self.proc.start().wait_ready(180)
        self.producer = producer_for(self.broker.bootstrap)
        return self

    def __exit__(self, *exc: object) -> None:
        self.producer.close()
        self.proc.stop()

    def send(self, picks: list[tuple[str, Path, bool]], rate_hz: float = 0.0) -> list:
        """Send one event per pick and wait for all their results; returns the results."""
        events = [make_event(p, c) for c, p, _ in picks]
        ids = {e.event_id for e in events}
        feed(self.producer, self.topic, events, rate_hz=rate_hz)
        self.done += len(events)
        got = read_topics(self.broker.bootstrap, [f"{self.topic}.results"], self.done, 900)
        res = [InspectionResult.model_validate_json(r.value) for r in got]
        res = [r for r in res if r.event_id in ids]
        assert len(res) == len(events), f"{len(events) - len(res)} results missing"
        return res

    def seconds(self, picks: list[tuple[str, Path, bool]]) -> tuple[float, float]:
        """Seconds from sending a backlog to the last result being published, and the seconds
        of those spent in forward passes (from the results' own timings)."""
        t0 = time.time()
        res = self.send(picks)
        infer_s = sum(r.timings.infer_ms / r.timings.batch_size for r in res) / 1000
        return max(r.processed_at.timestamp() for r in res) - t0, infer_s


def state_cost(args, broker, ckpt, data, out, picks, report) -> dict:
    """The cost of recording (SQL) and shared state (Redis): at the best batch size, a worker
    with them and one without take turns on the same chunks of images."""
    best = max(report["batches"], key=lambda b: report["batches"][b]["worker_images_per_s"])
    with_env = {"WORKER_DATABASE_URL": args.database_url or "", "WORKER_DATABASE_MIGRATE": "true"}
    if args.redis_url:
        with_env |= {"WORKER_REDIS_URL": args.redis_url, "WORKER_STATE_PREFIX": uuid.uuid4().hex}
    without_env = {"WORKER_DATABASE_URL": ""}
    t_with = t_without = 0.0
    step = len(picks) // args.rounds
    with (
        WorkerUnderTest(broker, ckpt, [data], out, best, with_env, "-state") as w_with,
        WorkerUnderTest(broker, ckpt, [data], out, best, without_env, "-bare") as w_without,
    ):
        w_with.send(picks[:best])
        w_without.send(picks[:best])
        for r in tqdm(range(args.rounds), desc="with and without SQL + Redis, in turns"):
            chunk = picks[r * step : (r + 1) * step]
            t_without += w_without.seconds(chunk)[0]
            t_with += w_with.seconds(chunk)[0]
    n = step * args.rounds
    return {
        "batch": best,
        "database": "postgresql" if (args.database_url or "").startswith("postgres") else "sqlite",
        "redis": bool(args.redis_url),
        "with_images_per_s": n / t_with,
        "without_images_per_s": n / t_without,
        "ratio": t_without / t_with,
    }


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m bench.stream", description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, required=True, help="MVTec-layout images")
    ap.add_argument("--checkpoint", type=Path)
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 8, 32])
    ap.add_argument("--images", type=int, default=192, help="events per throughput run")
    ap.add_argument(
        "--rounds",
        type=int,
        default=4,
        help="turns each side takes (each turn the worker starts from an empty topic, so few, "
        "long turns: a backlog, not a series of cold starts)",
    )
    ap.add_argument("--steady", type=int, default=96, help="events per latency run")
    ap.add_argument(
        "--load",
        type=float,
        default=0.5,
        help="offered rate for latency, as a fraction of the slowest worker's throughput",
    )
    ap.add_argument("--out", type=Path, default=Path("runs/bench"))
    ap.add_argument("--database-url", help="also measure the worker recording to this database")
    ap.add_argument("--redis-url", help="... and keeping its model state in this Redis")
    ap.add_argument(
        "--runtime",
        default="auto",
        choices=["auto", "torch", "onnxruntime", "openvino"],
        help="what scores, on both sides (model.inference.runtimes)",
    )
    ap.add_argument(
        "--precision",
        default="fp32",
        choices=PRECISIONS,
        help="served only where the gate approved it in --graph-cache (model.export --precision)",
    )
    ap.add_argument("--graph-cache", type=Path, help="default: OUT/graphs")
    args = ap.parse_args(argv)
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    ckpt = (args.checkpoint or quick_model(out)).resolve()
    data = args.data.resolve()

    items = list(inspection_images(data))
    # Every class, spread evenly (the data may hold far more of one class than another).
    by_class: dict[str, list] = {}
    for item in items:
        by_class.setdefault(item[0], []).append(item)
    rounds = itertools.zip_longest(*by_class.values())
    picks = [x for r in rounds for x in r if x is not None][: args.images]
    picks = (picks * (args.images // len(picks) + 1))[: args.images]
    blobs = [p.read_bytes() for _, p, _ in picks]

    graphs = (args.graph_cache or out / "graphs").resolve()
    serve = ServeOptions(args.runtime, graphs, args.precision)
    inspector = Inspector.from_checkpoint(ckpt, "cpu", serve=serve)
    runtime_env = {
        "WORKER_RUNTIME": args.runtime,
        "WORKER_GRAPH_CACHE": str(graphs),
        "WORKER_PRECISION": args.precision,
    }
    report: dict = {
        "runtime": inspector.runtime.name,
        "precision": inspector.runtime.precision,
        "machine": f"{platform.machine()}, {torch.get_num_threads()} torch threads",
        "checkpoint": inspector.version,
        "images": len(blobs),
        "batches": {},
    }
    # This machine's speed drifts by up to 2x over minutes (shared cores), so the bare model and
    # the worker take turns on the same chunks of images, and each side sums its own time.
    bare_seconds(inspector, blobs[:8], 8, decoded=False)  # warm-up
    with EmbeddedBroker(log_path=out / "broker.log") as broker:
        for b in tqdm(args.batches, desc="throughput, bare and worker in turns", unit="batch"):
            with WorkerUnderTest(broker, ckpt, [data], out, b, runtime_env) as w:
                w.send(picks[:b])  # warm-up: first forward pass, connections
                rounds: dict[str, list[float]] = {"bare": [], "worker": [], "pre": [], "infer": []}
                step = len(picks) // args.rounds
                for r in range(args.rounds):
                    chunk = slice(r * step, (r + 1) * step)
                    rounds["bare"].append(bare_seconds(inspector, blobs[chunk], b, False))
                    worker_s, infer_s = w.seconds(picks[chunk])
                    rounds["worker"].append(worker_s)
                    rounds["infer"].append(infer_s)
                    rounds["pre"].append(bare_seconds(inspector, blobs[chunk], b, True))
                n = step * args.rounds
                report["batches"][b] = {
                    "bare_images_per_s": n / sum(rounds["bare"]),
                    "bare_predecoded_images_per_s": n / sum(rounds["pre"]),
                    "worker_images_per_s": n / sum(rounds["worker"]),
                    # The worker's forward passes alone, from the results' timings.
                    "worker_infer_images_per_s": n / sum(rounds["infer"]),
                    "images_per_round": step,
                    "seconds_per_round": rounds,
                }
        slowest = min(v["worker_images_per_s"] for v in report["batches"].values())
        rate = args.load * slowest
        report["offered_rate_hz"] = rate
        for b in tqdm(args.batches, desc="latency at a steady rate", unit="batch"):
            with WorkerUnderTest(broker, ckpt, [data], out, b, runtime_env) as w:
                w.send(picks[:b])
                res = w.send(picks[: args.steady], rate_hz=rate)
            lat = np.array([(r.processed_at - r.captured_at).total_seconds() for r in res]) * 1000
            report["batches"][b] |= {
                "p50_ms": float(np.percentile(lat, 50)),
                "p99_ms": float(np.percentile(lat, 99)),
                "n_latency": int(lat.size),
            }

        if args.database_url or args.redis_url:
            report["state"] = state_cost(args, broker, ckpt, data, out, picks, report)

    best_bare = max(v["bare_images_per_s"] for v in report["batches"].values())
    best_worker = max(v["worker_images_per_s"] for v in report["batches"].values())
    report["ratio_best_worker_to_best_bare"] = best_worker / best_bare
    (out / "stream.json").write_text(json.dumps(report, indent=2))
    print(
        f"\n{report['machine']}; {len(blobs)} images; offered rate {rate:.1f} images/s for latency"
    )
    print(
        "| batch | bare (decode+infer) img/s | bare (pre-decoded) img/s | worker img/s "
        "| worker / bare | worker's forward passes img/s | p50 ms | p99 ms |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    for b, v in report["batches"].items():
        print(
            f"| {b} | {v['bare_images_per_s']:.1f} | {v['bare_predecoded_images_per_s']:.1f} | "
            f"{v['worker_images_per_s']:.1f} | "
            f"{v['worker_images_per_s'] / v['bare_images_per_s']:.2f} | "
            f"{v['worker_infer_images_per_s']:.1f} | "
            f"{v['p50_ms']:.0f} | {v['p99_ms']:.0f} |"
        )
    print(
        f"best worker / best bare: {report['ratio_best_worker_to_best_bare']:.2f} (target >= 0.85)"
    )
    if "state" in report:
        st = report["state"]
        print(
            f"with SQL ({st['database']}) and Redis: {st['with_images_per_s']:.1f} img/s, "
            f"without: {st['without_images_per_s']:.1f} img/s, ratio {st['ratio']:.2f} "
            f"(batch {st['batch']})"
        )
    print(f"wrote {out / 'stream.json'}")


if __name__ == "__main__":
    main()
