"""Inference throughput of backbone plus head (plus scoring), images per second.

    python -m bench.throughput --ckpt runs/q.safetensors --batches 1 32
    python -m bench.throughput --backbone tf_efficientnet_b4 --variant crad --untrained \
        --batches 1 32 128 --device cuda      # the paper's configuration, for speed only

Inputs are uint8 tensors already at the model's size (a checkpoint's, or --image-size), so
decoding is not timed. On CUDA the
timing synchronises the device and uses the same mixed precision as the worker.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import timm
import torch
from tqdm import tqdm

from model.inference.graph import autocast_for, head_scores
from model.inference.inspector import Inspector, resolve_device
from model.net.backbone import build_backbone, wrap_network
from model.net.config import DECODERS, DEFAULT_VARIANT, HeadConfig
from model.net.grad import GRADHead, count_trainable


def untrained_head(channels: int, variant: str, device: torch.device, image_size: int) -> GRADHead:
    """A head shaped for `image_size` input (its stride-8 grid): speed does not need training."""
    cfg = HeadConfig(channels=channels, variant=variant, feature_size=image_size // 8)
    return GRADHead(cfg).to(device).eval()


def untrained_inspector_parts(name: str, variant: str, device: torch.device, image_size: int = 224):
    """Backbone with random weights (no file needed) and an untrained head: speed only."""
    backbone = wrap_network(timm.create_model(name, pretrained=False), name, "untrained")
    return backbone.to(device), untrained_head(backbone.info.channels, variant, device, image_size)


def measure(
    backbone,
    head,
    batch: int,
    device: torch.device,
    seconds: float = 5.0,
    image_size: int = 224,
) -> float:
    x = torch.randint(0, 255, (batch, 3, image_size, image_size), dtype=torch.uint8, device=device)

    def step() -> None:
        with torch.no_grad(), autocast_for(device):
            feats = backbone(x)
        head_scores(head, feats.float(), image_size, device)

    for _ in range(3):  # warm-up (cuDNN autotune, allocator)
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds or n < 3:
        step()
        n += 1
    if device.type == "cuda":
        torch.cuda.synchronize()
    return n * batch / (time.perf_counter() - t0)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.throughput")
    p.add_argument("--ckpt", type=Path, help="trained checkpoint (default: --untrained)")
    p.add_argument("--untrained", action="store_true")
    p.add_argument("--backbone", default="tf_efficientnet_lite0")
    p.add_argument("--variant", choices=sorted(DECODERS), default=DEFAULT_VARIANT)
    p.add_argument("--batches", type=int, nargs="+", default=[1, 32])
    p.add_argument("--seconds", type=float, default=5.0)
    p.add_argument("--image-size", type=int, default=224, help="ignored with --ckpt")
    p.add_argument("--device", default="auto")
    p.add_argument("--json", type=Path, help="append results here")
    args = p.parse_args(argv)
    device = resolve_device(args.device)
    size = args.image_size
    if args.ckpt:
        insp = Inspector.from_checkpoint(args.ckpt, device)
        backbone, head, size = insp.backbone, insp.head, insp.meta.image_size
        label = f"{insp.meta.backbone}/{insp.meta.variant}"
    elif args.untrained:
        backbone, head = untrained_inspector_parts(args.backbone, args.variant, device, size)
        label = f"{args.backbone}/{args.variant} (untrained)"
    else:
        backbone = build_backbone(args.backbone).to(device)
        head = untrained_head(backbone.info.channels, args.variant, device, size)
        label = f"{args.backbone}/{args.variant} (untrained head)"
    label += f" at {size} px"
    rows = []
    for b in tqdm(args.batches, desc="throughput", unit="batch size"):
        ips = measure(backbone, head, b, device, args.seconds, size)
        rows.append(
            {
                "model": label,
                "device": str(device),
                "batch": b,
                "image_size": size,
                "images_per_s": ips,
                "head_params_m": count_trainable(head) / 1e6,
            }
        )
        tqdm.write(f"{label} on {device}, batch {b}: {ips:.1f} images/s")
    if args.json:
        old = json.loads(args.json.read_text()) if args.json.is_file() else []
        args.json.write_text(json.dumps(old + rows, indent=1))


if __name__ == "__main__":
    main()
