"""samix.data: loaders on tiny files in the real on-disk formats, stratified subsets,
transform presets, two-view wrapper, and (when installed) the real Fashion-MNIST."""

from __future__ import annotations

import logging
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image
from torch.utils.data import ConcatDataset, Dataset, Subset

import samix.data as sd
from samix.data import datasets as sdd
from fake_datasets import (idx_bytes, stl_bytes, write_cifar, write_idx, write_image_folder, write_stl10,
                           write_tiny_imagenet)

REQUIRED = ("cifar10", "cifar100", "fashion_mnist", "mnist", "stl10", "tiny_imagenet", "image_folder")


def pixels(img) -> np.ndarray:
    return np.asarray(img)


# ============================================================================ registry / API
def test_registry_lists_required_datasets_and_rejects_unknown():
    names = sd.list_datasets()
    assert names == sorted(names)
    assert set(REQUIRED) <= set(names)
    with pytest.raises(ValueError, match="known datasets:.*cifar10"):
        sd.build_dataset("cifar1000", "/nonexistent")
    with pytest.raises(ValueError, match="known datasets"):
        sd.dataset_info("svhn")


@pytest.mark.parametrize("name", REQUIRED)
def test_dataset_info_is_consistent(name):
    info = sd.dataset_info(name)
    assert len(info.mean) == len(info.std) == info.in_chans
    assert all(0 < m < 1 for m in info.mean) and all(0 < s < 1 for s in info.std)
    assert info.default_preset in sd.list_presets()
    assert info.num_classes is None or info.num_classes >= 2
    if info.splits is not None:
        assert info.train_split in info.splits and info.test_split in info.splits


def test_dataset_info_values_used_by_models():
    def head(name):
        info = sd.dataset_info(name)
        return info.num_classes, info.in_chans, info.image_size

    assert head("cifar100") == (100, 3, 32) and head("cifar10") == (10, 3, 32)
    assert head("fashion_mnist") == head("mnist") == (10, 1, 28)
    assert head("stl10") == (10, 3, 96)
    assert head("tiny_imagenet") == (200, 3, 64)
    assert sd.dataset_info("image_folder").num_classes is None
    assert sd.dataset_info("cub200").num_classes == 200


def test_build_dataset_argument_errors(tmp_path):
    write_cifar(tmp_path, "cifar10", n_per_file=1)
    with pytest.raises(ValueError, match="unknown split 'val'.*train, test"):
        sd.build_dataset("cifar10", tmp_path, split="val")
    with pytest.raises(TypeError, match="train must be a bool"):
        sd.build_dataset("cifar10", tmp_path, train="yes")
    with pytest.raises(TypeError, match="root must be"):
        sd.build_dataset("cifar10", 3)
    with pytest.raises(TypeError, match="no option.*'folds'.*verify"):
        sd.build_dataset("cifar10", tmp_path, folds=1)
    with pytest.raises(TypeError, match="transform must be callable"):
        sd.build_dataset("cifar10", tmp_path, transform="flip")


# ============================================================================ CIFAR
@pytest.mark.parametrize("kind,protocol,n_train", [("cifar10", 2, 5 * 3), ("cifar100", 4, 3)])
def test_cifar_round_trip(tmp_path, kind, protocol, n_train):
    written = write_cifar(tmp_path, kind, n_per_file=3, protocol=protocol)
    info = sd.dataset_info(kind)
    for train, split in ((True, "train"), (False, "test")):
        ds = sd.build_dataset(kind, tmp_path, train=train)
        images, labels = written[split]
        assert len(ds) == len(images) == (n_train if train else 3)
        assert len(ds.classes) == info.num_classes
        for i in range(len(ds)):
            img, label = ds[i]
            assert isinstance(label, int) and label == labels[i]
            assert img.mode == "RGB" and img.size == (32, 32)
            np.testing.assert_array_equal(pixels(img), images[i])   # exact: HWC order, channel-major on disk
        np.testing.assert_array_equal(sd.dataset_labels(ds), labels)
    assert sd.build_dataset(kind, tmp_path, split="test").train is False


def test_datasets_pickle_for_dataloader_workers(tmp_path):
    write_cifar(tmp_path, "cifar100", n_per_file=2)
    write_tiny_imagenet(tmp_path, n_val=2)
    write_stl10(tmp_path, n_train=2, n_test=1, n_unlabeled=1)
    t = sd.build_transform("cifar", True, "cifar100")
    for ds in (sd.build_dataset("cifar100", tmp_path, transform=t), sd.build_dataset("stl10", tmp_path),
               sd.build_dataset("tiny_imagenet", tmp_path, split="val"), sd.TwoViewDataset(
                   sd.build_dataset("tiny_imagenet", tmp_path, split="train"), t)):
        clone = pickle.loads(pickle.dumps(ds))
        assert len(clone) == len(ds)
        np.testing.assert_array_equal(sd.dataset_labels(clone), sd.dataset_labels(ds))


def test_cifar_accepts_root_pointing_at_base_folder(tmp_path):
    write_cifar(tmp_path, "cifar10", n_per_file=1)
    ds = sd.build_dataset("cifar10", tmp_path / "cifar-10-batches-py", train=False)
    assert len(ds) == 1


def test_cifar_missing_files_name_the_path(tmp_path):
    with pytest.raises(FileNotFoundError) as e:
        sd.build_dataset("cifar100", tmp_path)
    msg = str(e.value)
    assert str(tmp_path / "cifar-100-python") in msg and "cifar-100-python.tar.gz" in msg
    write_cifar(tmp_path, "cifar10", n_per_file=1)
    (tmp_path / "cifar-10-batches-py" / "data_batch_3").unlink()
    with pytest.raises(FileNotFoundError, match="data_batch_3"):
        sd.build_dataset("cifar10", tmp_path, train=False)


def test_cifar_verify_checks_md5(tmp_path):
    write_cifar(tmp_path, "cifar10", n_per_file=1)
    assert len(sd.build_dataset("cifar10", tmp_path, verify=False)) == 5
    with pytest.raises(ValueError, match="MD5"):
        sd.build_dataset("cifar10", tmp_path, verify=True)


class _Evil:
    def __reduce__(self):
        return (print, ("pwned",))


def test_cifar_pickle_never_runs_code(tmp_path, capsys):
    write_cifar(tmp_path, "cifar10", n_per_file=1)
    with open(tmp_path / "cifar-10-batches-py" / "test_batch", "wb") as f:
        pickle.dump({"data": np.zeros((1, 3072), np.uint8), "labels": [0], "x": _Evil()}, f)
    with pytest.raises(ValueError, match="refusing to load builtins.print"):
        sd.build_dataset("cifar10", tmp_path, train=False)
    assert "pwned" not in capsys.readouterr().out


def test_cifar_wrong_shape_is_a_clear_error(tmp_path):
    write_cifar(tmp_path, "cifar10", n_per_file=1)
    with open(tmp_path / "cifar-10-batches-py" / "test_batch", "wb") as f:
        pickle.dump({"data": np.zeros((1, 100), np.uint8), "labels": [0]}, f)
    with pytest.raises(ValueError, match=r"test_batch.*\[N, 3072\]"):
        sd.build_dataset("cifar10", tmp_path, train=False)


# ============================================================================ MNIST / Fashion-MNIST
@pytest.mark.parametrize("name,folder", [("mnist", "MNIST"), ("fashion_mnist", "FashionMNIST")])
def test_mnist_like_round_trip(tmp_path, monkeypatch, name, folder):
    monkeypatch.setattr(sdd, "FASHION_MNIST_SYSTEM_DIR", tmp_path / "no-system-files")
    written = write_idx(tmp_path / folder / "raw", n_train=12, n_test=6)
    for train, split in ((True, "train"), (False, "test")):
        ds = sd.build_dataset(name, tmp_path, train=train)
        images, labels = written[split]
        assert len(ds) == len(images)
        img, label = ds[3]
        assert img.mode == "L" and img.size == (28, 28)
        assert isinstance(label, int) and label == labels[3]
        np.testing.assert_array_equal(pixels(img), images[3])
        np.testing.assert_array_equal(sd.dataset_labels(ds), labels)


def test_fashion_mnist_auto_extracts_system_gz(tmp_path, monkeypatch, caplog):
    system = tmp_path / "usr-share"
    written = write_idx(system, n_train=10, n_test=5, gz=True, seed=3)
    monkeypatch.setattr(sdd, "FASHION_MNIST_SYSTEM_DIR", system)
    root = tmp_path / "data"
    with caplog.at_level(logging.INFO, logger="samix.data.datasets"):
        ds = sd.build_dataset("fashion_mnist", root, train=True)
    lines = [r.getMessage() for r in caplog.records if r.name == "samix.data.datasets"]
    assert len(lines) == 1 and str(system) in lines[0] and str(root / "FashionMNIST" / "raw") in lines[0]
    raw = root / "FashionMNIST" / "raw"
    assert sorted(p.name for p in raw.iterdir()) == sorted(
        ["train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"])
    np.testing.assert_array_equal(ds.data.numpy(), written["train"][0])
    assert len(sd.build_dataset("fashion_mnist", root, train=False)) == 5
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="samix.data.datasets"):
        sd.build_dataset("fashion_mnist", root, train=True)
    assert not [r for r in caplog.records if r.name == "samix.data.datasets"]   # nothing left to extract


def test_mnist_extracts_gz_in_raw_folder(tmp_path):
    written = write_idx(tmp_path / "MNIST" / "raw", n_train=10, n_test=5, gz=True, seed=4)
    ds = sd.build_dataset("mnist", tmp_path, train=False)
    np.testing.assert_array_equal(ds.targets.numpy(), written["test"][1])


def test_fashion_mnist_missing_names_path_and_debian_package(tmp_path, monkeypatch):
    monkeypatch.setattr(sdd, "FASHION_MNIST_SYSTEM_DIR", tmp_path / "empty")
    with pytest.raises(FileNotFoundError) as e:
        sd.build_dataset("fashion_mnist", tmp_path / "data")
    msg = str(e.value)
    assert str(tmp_path / "data" / "FashionMNIST" / "raw") in msg
    assert "dataset-fashion-mnist" in msg and "dpkg -L" in msg and "download=True" in msg
    with pytest.raises(FileNotFoundError, match=r"MNIST[/\\]raw"):
        sd.build_dataset("mnist", tmp_path / "data")


def test_corrupt_idx_file_is_a_clear_error(tmp_path):
    raw = tmp_path / "MNIST" / "raw"
    write_idx(raw)
    (raw / "t10k-images-idx3-ubyte").write_bytes(b"\x00\x00\x08\x07garbage")
    with pytest.raises(ValueError, match="not valid idx-ubyte"):
        sd.build_dataset("mnist", tmp_path, train=False)
    (raw / "t10k-images-idx3-ubyte").write_bytes(idx_bytes(np.zeros((4, 28, 28), np.uint8)))   # 6 labels
    with pytest.raises(ValueError, match="do not match"):
        sd.build_dataset("mnist", tmp_path, train=False)


def test_idx_writer_matches_format():
    # IDX header: 0x00000803 then the dims, big-endian.
    b = idx_bytes(np.zeros((2, 28, 28), np.uint8))
    assert b[:4] == b"\x00\x00\x08\x03" and int.from_bytes(b[4:8], "big") == 2 and len(b) == 16 + 2 * 784


# ============================================================================ STL-10
def test_stl10_round_trip_all_splits(tmp_path):
    written = write_stl10(tmp_path, n_train=5, n_test=3, n_unlabeled=2)
    for split in ("train", "test"):
        ds = sd.build_dataset("stl10", tmp_path, split=split)
        images, labels = written[split]
        assert len(ds) == len(images)
        img, label = ds[1]
        assert img.mode == "RGB" and img.size == (96, 96) and label == labels[1]
        np.testing.assert_array_equal(pixels(img), images[1])    # column-major on disk
        np.testing.assert_array_equal(sd.dataset_labels(ds), labels)
    assert len(sd.build_dataset("stl10", tmp_path, train=False)) == 3
    un = sd.build_dataset("stl10", tmp_path, split="unlabeled")
    assert len(un) == 2 and un[0][1] == -1
    np.testing.assert_array_equal(pixels(un[1][0]), written["unlabeled"][0][1])
    both = sd.build_dataset("stl10", tmp_path, split="train+unlabeled")
    assert len(both) == 7 and list(sd.dataset_labels(both)[-2:]) == [-1, -1]


def test_stl10_needs_only_the_files_of_its_split(tmp_path):
    write_stl10(tmp_path)
    (tmp_path / "stl10_binary" / "unlabeled_X.bin").unlink()
    assert len(sd.build_dataset("stl10", tmp_path, split="train")) == 6
    with pytest.raises(FileNotFoundError) as e:
        sd.build_dataset("stl10", tmp_path, split="unlabeled")
    assert str(tmp_path / "stl10_binary" / "unlabeled_X.bin") in str(e.value)
    assert "stl10_binary.tar.gz" in str(e.value)
    with pytest.raises(ValueError, match="MD5"):
        sd.build_dataset("stl10", tmp_path, split="train", verify=True)


def test_stl10_bad_files(tmp_path):
    write_stl10(tmp_path)
    base = tmp_path / "stl10_binary"
    (base / "test_y.bin").write_bytes(bytes([0, 1, 2, 3]))          # label 0 is not 1-based
    with pytest.raises(ValueError, match="1..10"):
        sd.build_dataset("stl10", tmp_path, split="test")
    (base / "train_X.bin").write_bytes(b"\x00" * 100)
    with pytest.raises(ValueError, match="train_X.bin"):
        sd.build_dataset("stl10", tmp_path, split="train")


def test_stl_writer_is_column_major():
    img = np.zeros((1, 96, 96, 3), np.uint8)
    img[0, 0, 1, 0] = 7                 # row 0, column 1, red
    raw = np.frombuffer(stl_bytes(img), np.uint8)
    assert raw[96] == 7                 # column-major: (col 1, row 0) is element 96 of channel 0


# ============================================================================ Tiny-ImageNet
def test_tiny_imagenet_train_and_val(tmp_path):
    written = write_tiny_imagenet(tmp_path, wnids=("n02", "n01", "n03"), n_train=2, n_val=5)
    train = sd.build_dataset("tiny_imagenet", tmp_path, train=True)
    val = sd.build_dataset("tiny_imagenet", tmp_path, train=False)
    assert train.classes == val.classes == ["n01", "n02", "n03"]      # sorted wnids, both splits
    assert len(train) == 6 and len(val) == 5
    train_targets = sd.dataset_labels(train)
    for i, (path, target) in enumerate(train.samples):
        wnid = Path(path).parent.parent.name
        assert target == train_targets[i] == train.classes.index(wnid)
    for i, (fname, wnid, colour, box) in enumerate(written["val"]):
        img, label = val[i]
        assert img.mode == "RGB" and img.size == (8, 8)
        assert label == val.classes.index(wnid)
        assert np.abs(pixels(img).astype(int) - np.array(colour)).max() <= 3   # JPEG: nearly lossless here
        assert tuple(val.boxes[i]) == box
    colours = {f: c for _, f, c in written["train"]}
    for i in range(len(train)):
        img, label = train[i]
        assert img.size == (8, 8) and label == train_targets[i]
        assert np.abs(pixels(img).astype(int) - np.array(colours[Path(train.samples[i][0]).name])).max() <= 3


def test_tiny_imagenet_errors(tmp_path):
    with pytest.raises(FileNotFoundError) as e:
        sd.build_dataset("tiny_imagenet", tmp_path)
    assert str(tmp_path / "tiny-imagenet-200" / "wnids.txt") in str(e.value)
    assert "tiny-imagenet-200.zip" in str(e.value)
    write_tiny_imagenet(tmp_path, n_val=2)
    with pytest.raises(ValueError, match="unknown split 'test'"):
        sd.build_dataset("tiny_imagenet", tmp_path, split="test")
    base = tmp_path / "tiny-imagenet-200"
    (base / "val" / "val_annotations.txt").write_text("val_0.JPEG\tn99\t0\t0\t1\t1\n")
    with pytest.raises(ValueError, match="val_annotations.txt:1"):
        sd.build_dataset("tiny_imagenet", tmp_path, split="val")
    # accepts the tiny-imagenet-200 folder itself as root
    assert len(sd.build_dataset("tiny_imagenet", base, split="train")) == 6


# ============================================================================ ImageFolder
def test_image_folder_round_trip_and_split_names(tmp_path):
    written = write_image_folder(tmp_path, classes=("b_cls", "a_cls"), n_per_class=2, splits=("train", "val", "test"))
    train = sd.build_dataset("image_folder", tmp_path, train=True)
    val = sd.build_dataset("image_folder", tmp_path, train=False)
    test = sd.build_dataset("image_folder", tmp_path, split="test")
    assert train.classes == ["a_cls", "b_cls"] and len(train) == len(val) == len(test) == 4
    by_name = {(c, f"{i % 2}.png"): arr for i, (c, arr) in enumerate(written["test"])}
    for i in range(len(test)):
        img, label = test[i]
        path = Path(test.samples[i][0])
        assert label == test.classes.index(path.parent.name)
        np.testing.assert_array_equal(pixels(img), by_name[(path.parent.name, path.name)])   # PNG: exact


def test_image_folder_errors(tmp_path):
    write_image_folder(tmp_path, classes=("x", "y"), splits=("train",))
    with pytest.raises(FileNotFoundError) as e:
        sd.build_dataset("image_folder", tmp_path, train=False)
    assert str(tmp_path / "val") in str(e.value)
    with pytest.raises(ValueError, match="200 classes, found 2"):
        sd.build_dataset("cub200", tmp_path, train=True)


# ============================================================================ labels / stratified subsets
class LabelsOnly(Dataset):
    """Labels through ``.targets``; decoding an image is an error (the subset must not need it)."""

    def __init__(self, labels):
        self.targets = list(labels)

    def __len__(self):
        return len(self.targets)

    def __getitem__(self, i):
        raise AssertionError("stratified_subset must not decode images")


class NoAttr(Dataset):
    def __init__(self, labels):
        self._labels = labels

    def __len__(self):
        return len(self._labels)

    def __getitem__(self, i):
        return torch.zeros(1), int(self._labels[i])


def test_dataset_labels_follows_wrappers():
    a, b = LabelsOnly([0, 1, 2, 1]), NoAttr([5, 6])
    np.testing.assert_array_equal(sd.dataset_labels(Subset(a, [3, 0])), [1, 0])
    np.testing.assert_array_equal(sd.dataset_labels(ConcatDataset([a, b])), [0, 1, 2, 1, 5, 6])
    np.testing.assert_array_equal(sd.dataset_labels(b), [5, 6])      # fallback: reads items


class_counts = st.lists(st.integers(3, 12), min_size=2, max_size=6)


@settings(max_examples=25, deadline=None)
@given(counts=class_counts, seed=st.integers(0, 2**31), data=st.data())
def test_stratified_subset_per_class_is_balanced_and_seeded(counts, seed, data):
    labels = np.repeat(np.arange(len(counts)), counts)
    labels = labels[np.random.default_rng(seed).permutation(len(labels))]
    k = data.draw(st.integers(1, min(counts)))
    ds = LabelsOnly(labels)
    sub = sd.stratified_subset(ds, per_class=k, seed=seed)
    idx = np.asarray(sub.indices)
    assert len(np.unique(idx)) == len(idx) == k * len(counts) and np.all(np.diff(idx) > 0)
    np.testing.assert_array_equal(np.bincount(labels[idx], minlength=len(counts)), k)
    assert sd.stratified_subset(ds, per_class=k, seed=seed).indices == sub.indices
    if k < max(counts):   # room for another draw: some other seed must choose differently
        others = [sd.stratified_subset(ds, per_class=k, seed=seed + s).indices for s in range(1, 6)]
        assert any(o != sub.indices for o in others)


@settings(max_examples=25, deadline=None)
@given(counts=class_counts, seed=st.integers(0, 1000), data=st.data())
def test_stratified_subset_n_total_spreads_the_remainder(counts, seed, data):
    labels = np.repeat(np.arange(len(counts)), counts)
    n_total = data.draw(st.integers(1, min(counts) * len(counts)))
    sub = sd.stratified_subset(LabelsOnly(labels), n_total=n_total, seed=seed)
    per = np.bincount(labels[np.asarray(sub.indices)], minlength=len(counts))
    assert per.sum() == n_total and per.max() - per.min() <= 1


def test_stratified_subset_errors():
    ds = LabelsOnly([0, 0, 0, 1])
    with pytest.raises(ValueError, match="class 1 has 1 samples, fewer than the 2"):
        sd.stratified_subset(ds, per_class=2, seed=0)
    with pytest.raises(ValueError, match="exactly one of n_total or per_class"):
        sd.stratified_subset(ds, seed=0)
    with pytest.raises(ValueError, match="exactly one"):
        sd.stratified_subset(ds, n_total=2, per_class=1)
    with pytest.raises(TypeError, match="per_class must be an int"):
        sd.stratified_subset(ds, per_class=1.5)
    with pytest.raises(ValueError, match="labels >= 0"):
        sd.stratified_subset(LabelsOnly([-1, 0]), per_class=1)


# ============================================================================ transforms
def _constant(colour, size, mode="RGB"):
    return Image.new(mode, (size, size), colour)


def _mean_colour(mean):
    return tuple(int(round(m * 255)) for m in mean)


@pytest.mark.parametrize("name", REQUIRED)
def test_test_transform_of_default_preset_centres_the_mean(name):
    info = sd.dataset_info(name)
    t = sd.build_transform(info.default_preset, False, info)
    mode = "L" if info.in_chans == 1 else "RGB"
    colour = _mean_colour(info.mean)
    img = _constant(colour[0] if mode == "L" else colour, info.image_size + 3, mode)
    x = t(img)
    side = info.image_size if info.default_preset == "imagenet" else info.image_size + 3
    assert x.dtype == torch.float32 and x.shape == (info.in_chans, side, side)
    # only the uint8 rounding of the mean colour remains: |error| <= 0.5 / 255 / std
    assert x.abs().max() <= 0.5 / 255 / min(info.std) + 1e-6


@pytest.mark.parametrize("preset,size", [("cifar", 32), ("grayscale", 28), ("imagenet", 24), ("moco", 24),
                                         ("none", 20)])
def test_train_presets_shapes_and_dtypes(preset, size):
    chans = 1 if preset == "grayscale" else 3
    mean, std = (0.5,) * chans, (0.25,) * chans
    t = sd.build_transform(preset, True, (mean, std), image_size=size)
    img = Image.fromarray(np.random.default_rng(0).integers(0, 256, (20, 20, chans) if chans == 3 else (20, 20),
                                                            dtype=np.uint8))
    x = t(img)
    out = 20 if preset == "none" else size
    assert x.dtype == torch.float32 and x.shape == (chans, out, out)
    assert x.min() >= (0 - 0.5) / 0.25 - 1e-6 and x.max() <= (1 - 0.5) / 0.25 + 1e-6


def test_none_preset_is_exactly_the_normalisation():
    arr = np.random.default_rng(1).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    mean, std = (0.1, 0.5, 0.9), (0.2, 0.3, 0.4)
    for inp in (Image.fromarray(arr), arr, torch.from_numpy(arr).permute(2, 0, 1).contiguous()):
        x = sd.build_transform("none", True, (mean, std))(inp)
        ref = (torch.from_numpy(arr).permute(2, 0, 1).float() / 255 - torch.tensor(mean)[:, None, None]) \
            / torch.tensor(std)[:, None, None]
        torch.testing.assert_close(x, ref)


@pytest.mark.parametrize("preset,pad", [("cifar", 4), ("grayscale", 2)])
def test_random_crop_is_a_window_of_the_zero_padded_image(preset, pad):
    torch.manual_seed(0)
    size = 8
    arr = np.random.default_rng(2).integers(1, 256, (size, size), dtype=np.uint8)   # no zeros inside
    t = sd.build_transform(preset, True, ((0.0,), (1.0,)), image_size=size)
    padded = np.pad(arr, pad)
    windows = [padded[i:i + size, j:j + size] for i in range(2 * pad + 1) for j in range(2 * pad + 1)]
    windows += [w[:, ::-1] for w in windows]
    seen_shift = False
    for _ in range(20):
        out = np.rint(t(Image.fromarray(arr))[0].numpy() * 255).astype(np.uint8)
        match = [k for k, w in enumerate(windows) if np.array_equal(w, out)]
        assert match, "output must be a (possibly flipped) window of the zero-padded image"
        seen_shift |= not np.array_equal(out, arr) and not np.array_equal(out, arr[:, ::-1])
    assert seen_shift


def test_imagenet_test_transform_resize_then_centre_crop():
    arr = np.zeros((40, 40), np.uint8)
    arr[6:34, 6:34] = 255       # a centred white square of side 28 on black
    img = Image.fromarray(arr)
    # crop_pct 0.5: resize to 16 / 0.5 = 32 (square: 22.4 px), centre-crop 16 -> inside the square
    x = sd.build_transform("imagenet", False, ((0.0,), (1.0,)), image_size=16, crop_pct=0.5)(img)
    assert x.shape == (1, 16, 16) and x.min() > 0.99
    # crop_pct 1: resize to 16, crop 16 -> the whole image, black corners kept
    z = sd.build_transform("imagenet", False, ((0.0,), (1.0,)), image_size=16, crop_pct=1.0)(img)
    assert z.shape == (1, 16, 16) and z[0, 0, 0] < 0.01 and z[0, 8, 8] > 0.99
    # crop_pct 1 on an image of the target size: identity
    y = sd.build_transform("imagenet", False, ((0.0,), (1.0,)), image_size=40, crop_pct=1.0)(img)
    torch.testing.assert_close(y[0], torch.from_numpy(arr).float() / 255)


def test_moco_preset_options_and_blur_kernel():
    assert [sd.moco_blur_kernel(s) for s in (224, 96, 64, 32, 28)] == [23, 9, 7, 3, 3]
    torch.manual_seed(0)
    rgb = Image.fromarray(np.random.default_rng(3).integers(0, 256, (24, 24, 3), dtype=np.uint8))
    grey = sd.build_transform("moco", True, ((0.5,) * 3, (0.5,) * 3), image_size=16,
                              jitter_p=0.0, grayscale_p=1.0, blur_p=0.0)(rgb)
    assert grey.shape == (3, 16, 16)
    torch.testing.assert_close(grey[0], grey[1])
    torch.testing.assert_close(grey[1], grey[2])
    t = sd.build_transform("moco", True, "stl10")
    names = [type(m).__name__ for m in t.transforms]
    assert names[:2] == ["ToImage", "RandomResizedCrop"] and names[-2:] == ["ToDtype", "Normalize"]
    rrc = t.transforms[1]
    assert tuple(rrc.size) == (96, 96) and tuple(rrc.scale) == (0.2, 1.0)
    a, b = t(rgb), t(rgb)
    assert a.shape == (3, 96, 96) and not torch.equal(a, b)


def test_transform_argument_errors():
    with pytest.raises(ValueError, match="known presets: cifar"):
        sd.build_transform("autoaugment", True, "cifar10")
    with pytest.raises(ValueError, match="equal length"):
        sd.build_transform("none", True, ((0.5, 0.5), (0.2,)))
    with pytest.raises(ValueError, match="std must be > 0"):
        sd.build_transform("none", True, ((0.5,), (0.0,)))
    with pytest.raises(ValueError, match="needs image_size"):
        sd.build_transform("cifar", True, ((0.5,), (0.5,)))
    with pytest.raises(TypeError, match="takes no option.*'scale'"):
        sd.build_transform("cifar", True, "cifar10", scale=(0.5, 1))
    with pytest.raises(TypeError, match="DatasetInfo"):
        sd.build_transform("cifar", True, 0.5)
    with pytest.raises(ValueError, match="image_size"):
        sd.build_transform("cifar", True, "cifar10", image_size=0)
    with pytest.raises(ValueError, match="unknown dataset"):
        sd.build_transform("cifar", True, "cifar11")


def test_cifar_pipeline_end_to_end(tmp_path):
    write_cifar(tmp_path, "cifar10", n_per_file=2)
    t = sd.build_transform("cifar", True, "cifar10", padding=2)
    ds = sd.build_dataset("cifar10", tmp_path, train=True, transform=t)
    loader = torch.utils.data.DataLoader(ds, batch_size=4)
    x, y = next(iter(loader))
    assert x.shape == (4, 3, 32, 32) and x.dtype == torch.float32 and y.dtype == torch.int64


# ============================================================================ two views
def test_two_view_dataset(tmp_path):
    write_stl10(tmp_path, n_train=4, n_test=1, n_unlabeled=1)
    base = sd.build_dataset("stl10", tmp_path, split="train")
    t = sd.build_transform("moco", True, "stl10", image_size=32)
    two = sd.TwoViewDataset(base, t)
    (q, k), label = two[2]
    assert q.shape == k.shape == (3, 32, 32) and label == base[2][1]
    assert not torch.equal(q, k)                      # independent draws
    assert len(two) == 4
    np.testing.assert_array_equal(two.targets, sd.dataset_labels(base))
    sub = sd.stratified_subset(two, per_class=1, seed=0)   # labels through .targets
    assert len(sub) == len(np.unique(sd.dataset_labels(base)))
    ident = sd.build_transform("none", False, "stl10")
    (q, k), _ = sd.TwoViewDataset(base, ident, t)[0]
    torch.testing.assert_close(q, ident(base[0][0]))
    assert k.shape == (3, 32, 32)
    with pytest.raises(TypeError, match="transform_q must be callable"):
        sd.TwoViewDataset(base, None)
    with pytest.raises(TypeError, match="map-style"):
        sd.TwoViewDataset(3, t)


# ============================================================================ the real Fashion-MNIST
SYSTEM = Path("/usr/share/datasets/fashion-mnist")


@pytest.mark.skipif(not (SYSTEM / "train-images-idx3-ubyte.gz").is_file(),
                    reason="Debian package dataset-fashion-mnist not installed")
def test_real_fashion_mnist_from_debian_package(tmp_path, monkeypatch):
    monkeypatch.setattr(sdd, "FASHION_MNIST_SYSTEM_DIR", SYSTEM)
    train = sd.build_dataset("fashion_mnist", tmp_path, train=True)
    test = sd.build_dataset("fashion_mnist", tmp_path, train=False)
    assert len(train) == 60000 and len(test) == 10000
    np.testing.assert_array_equal(np.bincount(sd.dataset_labels(train)), [6000] * 10)
    np.testing.assert_array_equal(np.bincount(sd.dataset_labels(test)), [1000] * 10)
    img, label = train[0]
    assert img.size == (28, 28) and img.mode == "L" and 0 <= label < 10
    info = sd.dataset_info("fashion_mnist")
    pix = train.data.float().div_(255)
    assert abs(pix.mean().item() - info.mean[0]) < 5e-4 and abs(pix.std().item() - info.std[0]) < 5e-4
    sub = sd.stratified_subset(train, n_total=2000, seed=0)
    np.testing.assert_array_equal(np.bincount(sd.dataset_labels(sub)), [200] * 10)


def test_deit_preset_erases_a_box_randaugments_and_tests_as_imagenet():
    """The DeiT recipe's train augmentation: with RandAugment off and erasing at p = 1, a flat image keeps its
    value everywhere but inside one random box; at p = 0 it stays flat. The test transform is ``imagenet``'s."""
    import torch

    from samix.data import build_transform, dataset_info

    info = dataset_info("imagenet")
    flat = torch.full((3, 40, 40), 128, dtype=torch.uint8)
    torch.manual_seed(0)
    kw = dict(image_size=32, scale=(1.0, 1.0), num_ops=0, flip=False)
    kept = build_transform("deit", True, info, erase_p=0.0, **kw)(flat)
    assert torch.allclose(kept, kept[:, :1, :1].expand_as(kept))
    erased = build_transform("deit", True, info, erase_p=1.0, **kw)(flat)
    changed = (erased != kept).any(0)
    rows, cols = changed.nonzero(as_tuple=True)
    assert 0 < int(changed.sum()) < 32 * 32
    # the changed pixels fill one axis-aligned box
    assert int(changed[rows.min():rows.max() + 1, cols.min():cols.max() + 1].sum()) > 0.9 * \
        (rows.max() - rows.min() + 1) * (cols.max() - cols.min() + 1)
    img = torch.randint(0, 256, (3, 40, 40), dtype=torch.uint8)
    aug = build_transform("deit", True, info, image_size=32, scale=(1.0, 1.0), erase_p=0.0, flip=False)
    assert any(not torch.equal(aug(img), aug(img)) for _ in range(5))   # RandAugment draws its ops
    assert torch.equal(build_transform("deit", False, info, image_size=32)(img),
                       build_transform("imagenet", False, info, image_size=32)(img))
    with pytest.raises(ValueError, match="erase_p"):
        build_transform("deit", True, info, image_size=32, erase_p=2.0)
