import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from model.data.images import resize
from model.net.backbone import WeightsError, build_backbone, load_imagenet_network

# ImageNet classes 281-285: tabby, tiger cat, Persian, Siamese, Egyptian cat.
CAT_CLASSES = set(range(281, 286))


def test_lite0_weights_classify_a_real_photo():
    from skimage import data

    net, _ = load_imagenet_network("tf_efficientnet_lite0")
    img = resize(data.chelsea(), 224)
    x = (torch.from_numpy(img).permute(2, 0, 1)[None].float() / 255 - 0.5) / 0.5
    with torch.no_grad():
        top3 = net(x).topk(3).indices[0].tolist()
    assert CAT_CLASSES & set(top3), top3


def test_lite0_taps_and_frozen(lite0):
    assert lite0.info.tap_channels == (40, 112)
    assert lite0.info.mean == (0.5, 0.5, 0.5)
    assert not any(p.requires_grad for p in lite0.parameters())
    lite0.train()
    assert not lite0.training
    x = lite0(torch.zeros(2, 3, 224, 224, dtype=torch.uint8))
    assert x.shape == (2, 152, 28, 28)


def test_operator_weights_file_is_loaded_strictly(tmp_path, lite0):
    net, _ = load_imagenet_network("tf_efficientnet_lite0")
    path = tmp_path / "lite0.safetensors"
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(path))
    own = build_backbone("tf_efficientnet_lite0", path)
    img = torch.from_numpy(np.random.default_rng(0).integers(0, 255, (1, 3, 224, 224), np.uint8))
    torch.testing.assert_close(own(img), lite0(img))
    # A file for another architecture fails loudly instead of scoring with random filters.
    with pytest.raises(WeightsError, match="do not fit"):
        build_backbone("tf_efficientnet_lite1", path)
    partial = tmp_path / "partial.safetensors"
    state = dict(net.state_dict())
    state.pop("conv_stem.weight")
    save_file({k: v.contiguous() for k, v in state.items()}, str(partial))
    with pytest.raises(WeightsError):
        build_backbone("tf_efficientnet_lite0", partial)


def test_paper_backbone_needs_a_weights_file(tmp_path):
    with pytest.raises(WeightsError, match="no built-in weights"):
        build_backbone("tf_efficientnet_b4")
    with pytest.raises(WeightsError, match="not found"):
        build_backbone("tf_efficientnet_b4", tmp_path / "b4.safetensors")


def test_b4_taps_from_an_operator_file(tmp_path):
    import timm

    net = timm.create_model("tf_efficientnet_b4", pretrained=False)
    path = tmp_path / "b4.safetensors"
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(path))
    b4 = build_backbone("tf_efficientnet_b4", path)
    assert b4.info.tap_channels == (56, 160)  # the spec's C = 216
    assert b4(torch.zeros(1, 3, 224, 224, dtype=torch.uint8)).shape == (1, 216, 28, 28)
