import torch

from bench.throughput import measure, untrained_inspector_parts


def test_throughput_bench_builds_the_paper_configuration_and_measures():
    """B4 taps with the CRAD decoder, random weights: what a GPU session will time."""
    device = torch.device("cpu")
    backbone, head = untrained_inspector_parts("tf_efficientnet_b4", "crad", device)
    assert backbone.info.channels == 216
    assert sum(p.numel() for p in head.parameters()) / 1e6 > 15
    assert measure(backbone, head, batch=1, device=device, seconds=0.0) > 0
