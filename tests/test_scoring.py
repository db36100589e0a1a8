import torch
import torch.nn.functional as F

from model.net.scoring import anomaly_maps, image_scores, score_pool, smooth_window


def reference_map(x: torch.Tensor, x_hat: torch.Tensor) -> torch.Tensor:
    """The spec's Scoring section, written the naive way."""
    d = torch.sqrt(((x_hat - x) ** 2).sum(1, keepdim=True))
    d = F.interpolate(d, scale_factor=8, mode="bilinear", align_corners=True)
    return F.avg_pool2d(d, 21, stride=1, padding=10, count_include_pad=True)[:, 0]


def test_map_and_score_match_the_naive_spec():
    torch.manual_seed(0)
    x, x_hat = torch.randn(3, 10, 28, 28), torch.randn(3, 10, 28, 28)
    maps = anomaly_maps(x, x_hat, 224)
    ref = reference_map(x, x_hat)
    assert maps.shape == (3, 224, 224)
    torch.testing.assert_close(maps, ref, atol=1e-5, rtol=1e-5)
    ref_scores = F.avg_pool2d(ref.unsqueeze(1), 32, stride=1).flatten(1).max(1).values
    torch.testing.assert_close(image_scores(maps), ref_scores, atol=1e-5, rtol=1e-5)


def test_a_local_defect_raises_the_score_where_it_is():
    x = torch.zeros(2, 4, 28, 28)
    x_hat = x.clone()
    x_hat[1, :, 5:7, 20:22] = 3.0
    maps = anomaly_maps(x, x_hat, 224)
    scores = image_scores(maps)
    assert scores[0] == 0 and scores[1] > 0
    peak = divmod(int(maps[1].argmax()), 224)
    assert 5 * 8 - 8 <= peak[0] <= 7 * 8 + 8 and 20 * 8 - 8 <= peak[1] <= 22 * 8 + 8


def test_windows_are_the_specs_at_224_and_scale_with_the_input():
    assert (smooth_window(224), score_pool(224)) == (21, 32)
    assert (smooth_window(448), score_pool(448)) == (41, 64)
    for size in (160, 256, 320, 512):
        k = smooth_window(size)
        assert k % 2 == 1  # centred, so the map keeps its size
        assert abs(k / size - 21 / 224) < 2 / size
        assert abs(score_pool(size) / size - 32 / 224) < 1 / size


def test_a_larger_input_averages_the_same_share_of_the_part():
    """A defect covering the same share of the image scores alike at 224 and at 448."""
    scores = []
    for size in (224, 448):
        f = size // 8
        x = torch.zeros(1, 4, f, f)
        x_hat = x.clone()
        x_hat[0, :, f // 4 : f // 4 + f // 14, f // 2 : f // 2 + f // 14] = 3.0
        maps = anomaly_maps(x, x_hat, size)
        assert maps.shape == (1, size, size)
        scores.append(float(image_scores(maps)[0]))
    assert abs(scores[0] - scores[1]) < 0.05 * scores[0]
