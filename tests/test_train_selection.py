"""Which model a training run exports: the held-out choice, and with `keep_last` the final one."""

import itertools
import json
from pathlib import Path

import pytest
import torch

from model.inference.checkpoint import load_checkpoint
from model.inference.inspector import head_config_from
from model.net.backbone import BackboneInfo
from model.net.config import TrainConfig
from model.net.grad import GRADHead
from model.train import build_parser, config_from_args
from model.training.fit import build_scheduler, heldout_loss
from model.training.options import TrainOptions
from model.training.run import train_from_features

INFO = BackboneInfo(
    name="synthetic",
    weights_sha256="0" * 64,
    taps=(2, 3),
    tap_channels=(4, 4),
    mean=(0.5, 0.5, 0.5),
    std=(0.5, 0.5, 0.5),
)


def _features(n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 8, 28, 28, generator=g) * 3.0


def test_keep_last_exports_the_final_epoch_beside_the_selected_one(tmp_path: Path):
    train = {"a": _features(12, 1), "b": _features(12, 2)}
    held = {"a": _features(5, 3), "b": _features(5, 4)}
    out = tmp_path / "m.safetensors"
    # A learning rate far above the reference makes the held-out loss rise again at the end, so
    # the held-out choice and the final epoch are different models.
    cfg = TrainConfig(epochs=4, batch_size=6, seed=3, lr=0.1, clip_norm=100.0)
    options = TrainOptions(keep_last=True)
    meta = train_from_features(train, held, out, cfg, INFO, 224, torch.device("cpu"), options)
    last_tensors, last = load_checkpoint(tmp_path / "m-last.safetensors")
    history = json.loads(Path(f"{out}.history.json").read_text())

    assert meta.training["selection"] == "heldout"
    assert last.training["selection"] == "last"
    assert last.training["best_epoch"] == 4 == len(history)
    chosen = [r for r in history if r.get("selected")][-1]
    assert meta.training["best_epoch"] == chosen["epoch"] < 4
    chosen_tensors = load_checkpoint(out)[0]
    assert any(not torch.equal(chosen_tensors[k], last_tensors[k]) for k in last_tensors)

    # The weights written are the final epoch's: their held-out loss is the one logged for it.
    head = GRADHead(head_config_from(last))
    head.load_state_dict(last_tensors)
    held_all = torch.cat([held["a"], held["b"]])
    loss = heldout_loss(head, held_all, torch.device("cpu"))
    assert abs(loss - history[-1]["heldout_loss"]) < 1e-4 * max(1.0, loss)
    assert last.calibration.keys() == meta.calibration.keys()


def test_without_keep_last_only_the_selected_model_is_written(tmp_path: Path):
    train = {"a": _features(8, 1)}
    held = {"a": _features(5, 3)}
    out = tmp_path / "m.safetensors"
    train_from_features(
        train, held, out, TrainConfig(epochs=1, batch_size=4), INFO, 224, torch.device("cpu")
    )
    assert out.exists() and not (tmp_path / "m-last.safetensors").exists()


def _lrs(cfg: TrainConfig) -> list[list[float]]:
    """Learning rates of both parameter groups at the start of each epoch."""
    params = [torch.nn.Parameter(torch.zeros(1)), torch.nn.Parameter(torch.zeros(1))]
    opt = torch.optim.AdamW(
        [{"params": [params[0]], "lr": cfg.lr_grid}, {"params": [params[1]], "lr": cfg.lr}]
    )
    sched = build_scheduler(opt, cfg)
    rates = []
    for _ in range(cfg.epochs):
        rates.append([g["lr"] for g in opt.param_groups])
        opt.step()
        sched.step()
    return rates


def test_step_schedule_divides_both_groups_by_ten_at_each_step():
    rates = _lrs(TrainConfig(epochs=9, step_epochs=4))
    assert [r[0] for r in rates] == pytest.approx([0.1] * 4 + [0.01] * 4 + [0.001])
    assert [r[1] for r in rates] == pytest.approx([1e-3] * 4 + [1e-4] * 4 + [1e-5])


def test_cosine_schedule_anneals_smoothly_to_zero_keeping_the_groups_ratio():
    cfg = TrainConfig(epochs=10, step_epochs=4, schedule="cosine")
    rates = _lrs(cfg)
    grid = [r[0] for r in rates]
    assert grid[0] == pytest.approx(0.1)
    assert all(a > b for a, b in itertools.pairwise(grid))  # no plateau at step_epochs
    assert grid[5] == pytest.approx(0.05)  # half-way down at half the run
    assert grid[-1] < 0.003
    assert all(r[0] / r[1] == pytest.approx(100.0) for r in rates)


def test_unknown_schedule_is_refused_by_name():
    with pytest.raises(ValueError, match="'linear'"):
        _lrs(TrainConfig(epochs=2, schedule="linear"))


def test_command_line_trains_each_decoder_for_the_specs_length_unless_told():
    def cfg(*extra: str) -> TrainConfig:
        return config_from_args(build_parser().parse_args(["--data", "d", "--out", "o", *extra]))

    # "100 epochs (GRAD) or 50 (CRAD)"; the default decoder is CRAD.
    assert cfg().epochs == 50
    assert cfg("--variant", "grad").epochs == 100
    assert cfg("--variant", "crad-s").epochs == 50
    assert cfg("--variant", "grad", "--epochs", "7").epochs == 7
    assert cfg("--epochs", "0").epochs == 0  # 0 is a length (calibrate only), not "unset"
