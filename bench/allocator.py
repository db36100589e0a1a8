"""What the malloc tuning (`model/inference/allocator.py`) is worth: the inference API at one
batch size in fresh processes with and without it, taking turns.

    python -m bench.allocator --data ../shared/data/industrial [--checkpoint CKPT] [--batch 8]

Each turn is a new interpreter (the setting is process-wide and cannot be undone) that loads
the model, scores a warm-up batch, then times `Inspector.inspect` over the same images decoded
beforehand. "Without" marks the tuning as already done before the model loads, so glibc keeps
its defaults. The speed of a model does not depend on its weights: without `--checkpoint` a
one-epoch model is trained on the generated sample (in a child process, see bench.stream).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from tqdm import tqdm

from bench.stream import quick_model

TURN = """
import json, sys, time
from pathlib import Path
import model.inference.allocator
if sys.argv[1] == "without":
    model.inference.allocator._done = True  # glibc's defaults: the tuning is skipped, not undone
from model.data.images import decode_image
from model.inference.inspector import Inspector
from worker.feed import inspection_images
ckpt, data, batch, n = Path(sys.argv[2]), Path(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
items = list(inspection_images(data))  # every class: spread evenly over the test images
images = [decode_image(p.read_bytes()) for _, p, _ in items[:: max(1, len(items) // n)][:n]]
inspector = Inspector.from_checkpoint(ckpt, "cpu")
inspector.inspect(images[:batch])
t0 = time.perf_counter()
for i in range(0, len(images), batch):
    inspector.inspect(images[i : i + batch])
print(json.dumps({"images_per_s": len(images) / (time.perf_counter() - t0)}))
"""


def turn(mode: str, ckpt: Path, data: Path, batch: int, images: int) -> float:
    out = subprocess.run(
        [sys.executable, "-c", TURN, mode, str(ckpt), str(data), str(batch), str(images)],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])["images_per_s"]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(
        prog="python -m bench.allocator", description=__doc__.split("\n")[0]
    )
    ap.add_argument("--data", type=Path, required=True, help="MVTec-layout images")
    ap.add_argument("--checkpoint", type=Path)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--images", type=int, default=96, help="images per turn")
    ap.add_argument("--turns", type=int, default=3, help="turns each side takes")
    ap.add_argument("--out", type=Path, default=Path("runs/bench"))
    args = ap.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    ckpt = (args.checkpoint or quick_model(args.out.resolve())).resolve()
    rates: dict[str, list[float]] = {"without": [], "with": []}
    for _ in tqdm(range(args.turns), desc="without and with the tuning, in turns"):
        for mode in rates:
            rates[mode].append(turn(mode, ckpt, args.data.resolve(), args.batch, args.images))
    mean = {m: sum(v) / len(v) for m, v in rates.items()}
    report = {"batch": args.batch, "images": args.images, "rates": rates, "mean": mean}
    (args.out / "allocator.json").write_text(json.dumps(report, indent=2))
    print(f"batch {args.batch}, {args.images} images per turn, {args.turns} turns each")
    for m, v in rates.items():
        print(f"{m:>8} tuning: {mean[m]:.1f} img/s  ({', '.join(f'{x:.1f}' for x in v)})")
    print(f"with / without: {mean['with'] / mean['without']:.2f}")


if __name__ == "__main__":
    main()
