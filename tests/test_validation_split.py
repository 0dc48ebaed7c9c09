"""``data.val_subset`` (issue 15, a fair protocol): held-out training images, the same for every seed,
disjoint from every training subset, evaluated instead of the test set, which a validation run never reads."""

from __future__ import annotations

import json

import numpy as np
import pytest
from omegaconf import OmegaConf

from engine_utils import make_fashion_mnist
from samix.data import build_dataset, dataset_labels
from samix.engine import assembly
from samix.engine.assembly import _training_images, labeled_train_set
from samix.engine.config import ConfigError, load_config
from samix.engine.trainer import train

TINY = ["data.name=fashion_mnist", "model.name=convnet", "model.width=0.25", "batch_size=20", "epochs=1",
        "num_workers=0", "threads=1", "log_interval=1000"]


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return make_fashion_mnist(tmp_path_factory.mktemp("val") / "data", n_train=200, n_test=30)


def _indices(subset):
    """Indices into the root dataset of a (nested) Subset."""
    idx = np.arange(len(subset))
    while hasattr(subset, "indices"):
        idx = np.asarray(subset.indices)[idx]
        subset = subset.dataset
    return set(idx.tolist())


def _cfg(root, *over):
    return load_config(None, TINY + [f"data.root={root}", *over])


def test_validation_images_are_stratified_fixed_across_seeds_and_disjoint_from_training(root):
    raw = build_dataset("fashion_mnist", root, train=True)
    seen_val = None
    for seed in (0, 1, 2):
        cfg = _cfg(root, "data.val_subset=50", "data.train_subset=100", f"seed={seed}")
        tr, val = _training_images(cfg, raw)
        assert len(val) == 50 and len(tr) == 100
        assert not _indices(tr) & _indices(val)
        assert np.bincount(dataset_labels(val), minlength=10).tolist() == [5] * 10
        seen_val = seen_val or _indices(val)
        assert _indices(val) == seen_val  # the same images whatever the seed
    # without train_subset, the pool is every other training image
    tr, val = _training_images(_cfg(root, "data.val_subset=50"), raw)
    assert len(tr) == 150 and _indices(tr) | _indices(val) == set(range(200))
    # the labeled set of kNN monitors and probes is the training images, never the validation ones
    lab = labeled_train_set(_cfg(root, "data.val_subset=50", "data.train_subset=100"))
    assert _indices(lab) == _indices(_training_images(_cfg(root, "data.val_subset=50", "data.train_subset=100"),
                                                      raw)[0])


def test_a_validation_run_evaluates_on_the_held_out_images_and_never_reads_the_test_set(root, tmp_path, monkeypatch):
    real = assembly.build_dataset

    def no_test(name, r, train=True, **kw):
        if not train:
            raise AssertionError("a validation run read the test set")
        return real(name, r, train=train, **kw)

    monkeypatch.setattr(assembly, "build_dataset", no_test)
    out = tmp_path / "run"
    train(_cfg(root, "data.val_subset=40", "data.train_subset=100", f"out_dir={out}"))
    summary = json.loads((out / "summary.json").read_text())
    assert summary["eval_split"] == "val"
    assert "40)" in (out / "train.log").read_text().split("val ")[1][:4]  # the log line names the val size
    with pytest.raises(AssertionError, match="test set"):
        train(_cfg(root, "data.train_subset=100", f"out_dir={tmp_path / 'test_run'}"))


def test_bad_validation_sizes_get_a_sentence(root, tmp_path):
    with pytest.raises(ConfigError, match="data.val_subset=200 leaves no training images"):
        train(_cfg(root, "data.val_subset=200", f"out_dir={tmp_path / 'a'}"))
    with pytest.raises(ConfigError, match="data.train_subset=180 is larger than the data \\(150 images\\)"):
        train(_cfg(root, "data.val_subset=50", "data.train_subset=180", f"out_dir={tmp_path / 'b'}"))
    with pytest.raises(ConfigError, match="test_subset and data.val_subset"):
        train(_cfg(root, "data.val_subset=50", "data.test_subset=10", f"out_dir={tmp_path / 'c'}"))
    with pytest.raises(ConfigError, match="val_subset"):
        load_config(None, TINY + ["data.val_subset=0"])
    assert OmegaConf.select(load_config(None, TINY), "data.val_subset") is None
