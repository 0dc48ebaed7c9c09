"""Old import paths after the split into packages: names are forwarded to their new modules."""

from __future__ import annotations

import types
from pathlib import Path

import pytest

from samix._facade import forward_names


def test_old_paths_still_import():
    import samix.data.datasets as sdd
    from samix.data.datasets import CIFAR10, FASHION_MNIST_SYSTEM_DIR, build_dataset, stratified_subset  # noqa: F401
    from samix.losses import _common, build_loss, list_losses, mixup_infonce, register_loss  # noqa: F401
    from samix.mixing.base import _check_number  # noqa: F401
    from samix.viz import mixing_grid, save_mask_comparison  # noqa: F401

    assert isinstance(FASHION_MNIST_SYSTEM_DIR, Path)
    assert "FASHION_MNIST_SYSTEM_DIR" in dir(sdd) and "build_dataset" in dir(sdd)


def test_setting_an_old_name_sets_it_where_the_code_reads_it(monkeypatch, tmp_path):
    import samix.data.datasets as sdd
    import samix.data.mnist as mnist
    import samix.viz as viz
    import samix.viz.grid as grid

    before = mnist.FASHION_MNIST_SYSTEM_DIR
    monkeypatch.setattr(sdd, "FASHION_MNIST_SYSTEM_DIR", tmp_path)
    assert mnist.FASHION_MNIST_SYSTEM_DIR == tmp_path == sdd.FASHION_MNIST_SYSTEM_DIR
    spy = lambda *a, **k: None  # noqa: E731
    monkeypatch.setattr(viz, "mixing_cells", spy)
    assert grid.mixing_cells is spy and viz.mixing_cells is spy
    monkeypatch.undo()
    assert mnist.FASHION_MNIST_SYSTEM_DIR == before == sdd.FASHION_MNIST_SYSTEM_DIR
    assert grid.mixing_cells is not spy and viz.mixing_cells is grid.mixing_cells


def test_forward_names_reads_writes_and_deletes_in_the_home():
    import sys

    home = types.ModuleType("_samix_test_home")
    home.value = 1
    facade = types.ModuleType("_samix_test_facade")
    facade.value = "stale copy"
    facade.other = 2
    sys.modules[facade.__name__] = facade
    try:
        forward_names(facade.__name__, {"value": home})
        assert facade.value == 1 and "value" not in facade.__dict__
        home.value = 3
        assert facade.value == 3
        facade.value = 4
        assert home.value == 4
        facade.other = 5  # not forwarded: an ordinary attribute
        assert facade.other == 5 and not hasattr(home, "other")
        del facade.value
        assert not hasattr(home, "value") and not hasattr(facade, "value")
        with pytest.raises(AttributeError, match="nope"):
            forward_names(facade.__name__, {"nope": home})
    finally:
        del sys.modules[facade.__name__]
