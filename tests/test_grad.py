import pytest
import torch

from model.net.config import HeadConfig
from model.net.grad import GRADHead, count_trainable


@pytest.mark.parametrize(("variant", "millions"), [("grad", 26.4), ("crad", 15.4), ("crad-s", 5.3)])
def test_trainable_parameter_counts_match_the_spec(variant, millions):
    head = GRADHead(HeadConfig(channels=216, variant=variant))
    assert count_trainable(head) / 1e6 == pytest.approx(millions, abs=0.1)
    assert head.global_grid.numel() == 216 * 28 * 28 * 16  # about 2.7 M values


def small_head(jitter_prob: float = 0.5) -> GRADHead:
    return GRADHead(
        HeadConfig(
            channels=12,
            feature_size=7,
            variant="crad-s",
            jitter_prob=jitter_prob,
            refine_threshold=1.0,
        )
    )


def test_forward_shapes_and_grid_reads():
    head = small_head().eval()
    x = torch.randn(3, 12, 7, 7)
    local, glob = head.coordinates(x)
    assert local.shape == (3, 2, 7, 7) and glob.shape == (3, 2)
    assert local.abs().max() < 1 and glob.abs().max() < 1
    assert head(x).shape == x.shape


def test_jitter_acts_only_in_training():
    torch.manual_seed(0)
    head = small_head(jitter_prob=1.0)
    x = torch.randn(2, 12, 7, 7)
    head.eval()
    clean, _ = head.coordinates(x)
    again, _ = head.coordinates(x)
    torch.testing.assert_close(clean, again)
    head.train()
    jittered, glob = head.coordinates(x)
    noise = jittered - clean
    assert noise.abs().max() > 0
    assert noise.std().item() == pytest.approx(0.05, rel=0.2)
    torch.testing.assert_close(glob, head.eval().coordinates(x)[1])  # global: never jittered


def test_no_jitter_when_probability_is_zero():
    head = small_head(jitter_prob=0.0)
    x = torch.randn(2, 12, 7, 7)
    a = head.train().coordinates(x)[0]
    b = head.eval().coordinates(x)[0]
    torch.testing.assert_close(a, b)


def test_initialisation_follows_the_spec():
    head = small_head()
    conv = head.local_coord[0]
    assert conv.weight.std().item() == pytest.approx(0.01, rel=0.3)
    assert conv.bias.abs().max() == 0
    bn = head.decoder[0].bn1
    assert torch.all(bn.weight == 1) and torch.all(bn.bias == 0)
    recover = head.decoder[-1]
    assert recover.bias is None and recover.out_channels == 12 and recover.in_channels == 24
