import pytest

from model.data import mvtec as ds
from model.data.mvtec import DatasetError, discover_classes, train_images
from model.training.split import split_heldout


def test_split_is_seeded_disjoint_and_per_class(sample_data):
    images = train_images(sample_data)
    train, held = split_heldout(images, 0.15, 5, seed=3)
    again_train, again_held = split_heldout(images, 0.15, 5, seed=3)
    assert held == again_held and train == again_train
    for c, paths in images.items():
        assert not set(train[c]) & set(held[c])
        assert sorted(train[c] + held[c]) == paths
        assert len(held[c]) >= 5
    assert split_heldout(images, 0.15, 5, seed=4)[1] != held
    with pytest.raises(ValueError, match="held-out minimum 1"):
        split_heldout(images, 0.01, 1, seed=3)


def test_training_never_lists_test_images(sample_data):
    train = {p for ps in train_images(sample_data).values() for p in ps}
    tests = {t.path for t in ds.test_items(sample_data)}
    assert train and tests and not train & tests
    assert all("train" in p.parts and "good" in p.parts for p in train)


def test_test_items_pair_masks(sample_data):
    items = ds.test_items(sample_data)
    assert {t.product_class for t in items} == set(discover_classes(sample_data))
    for t in items:
        assert (t.mask_path is None) == (t.defect_type == "good")


def test_bad_data_directories_are_reported(tmp_path):
    with pytest.raises(DatasetError, match="not found"):
        discover_classes(tmp_path / "missing")
    with pytest.raises(DatasetError, match="train/good"):
        discover_classes(tmp_path)
