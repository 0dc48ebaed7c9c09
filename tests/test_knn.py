"""samix.evaluate.knn: weighted kNN, feature extraction (eval mode, BN untouched, DDP gather)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, Dataset, TensorDataset

from samix.evaluate.knn import extract_features, knn_accuracy, knn_evaluate, knn_predict, pooled_features
from samix.models import build_model

torch.set_num_threads(1)


def clusters(n_per=40, c=5, d=16, noise=0.1, seed=0):
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(c, d, generator=g)
    labels = torch.arange(c).repeat_interleave(n_per)
    return centers[labels] + noise * torch.randn(len(labels), d, generator=g), labels


def bn_state(model):
    return {k: v.clone() for k, v in model.state_dict().items() if "running" in k or "num_batches" in k}


# --------------------------------------------------------------------------- knn on features
def test_clustered_features_are_classified_perfectly():
    xtr, ytr = clusters(seed=0)
    g = torch.Generator().manual_seed(1)
    xte = xtr + 0.05 * torch.randn(xtr.shape, generator=g)
    out = knn_accuracy(xtr, ytr, xte, ytr, num_classes=5, k=20)
    assert out["top1"] == pytest.approx(100.0)
    assert out["top5"] == pytest.approx(100.0)


def test_k1_is_the_nearest_neighbour_by_cosine():
    rng = np.random.default_rng(0)
    xtr, xte = rng.normal(size=(60, 8)), rng.normal(size=(25, 8))
    ytr = rng.integers(0, 7, size=60)
    # reference: cosine via explicit norms in float64 numpy, argmax over the training rows
    cos = (xte @ xtr.T) / np.linalg.norm(xte, axis=1)[:, None] / np.linalg.norm(xtr, axis=1)[None]
    expected = ytr[cos.argmax(1)]
    scores = knn_predict(torch.tensor(xtr, dtype=torch.float32), torch.tensor(ytr), torch.tensor(xte,
                         dtype=torch.float32), num_classes=7, k=1)
    assert scores.shape == (25, 7)
    assert (scores > 0).sum(1).eq(1).all()  # exactly one neighbour votes
    np.testing.assert_array_equal(scores.argmax(1).numpy(), expected)


def test_weighted_vote_matches_a_hand_computed_example():
    # 2-D unit vectors at angles 0, 60, 90, 180 degrees with labels 0, 1, 1, 0; query at 0 degrees
    ang = torch.tensor([0.0, 60.0, 90.0, 180.0]) * math.pi / 180
    train = torch.stack([ang.cos(), ang.sin()], 1) * torch.tensor([[1.0], [2.0], [3.0], [0.5]])  # norms ignored
    labels = torch.tensor([0, 1, 1, 0])
    query = torch.tensor([[3.0, 0.0]])
    t = 0.5
    # k = 3 neighbours: sims 1, 0.5, 0 -> class 0: e^(1/T); class 1: e^(0.5/T) + e^(0)
    scores = knn_predict(train, labels, query, num_classes=3, k=3, temperature=t)
    expected = torch.tensor([[math.exp(1 / t), math.exp(0.5 / t) + 1.0, 0.0]])
    torch.testing.assert_close(scores, expected)
    # k larger than the bank is clamped: the 180-degree neighbour adds e^(-1/T) to class 0
    scores = knn_predict(train, labels, query, num_classes=3, k=100, temperature=t)
    expected[0, 0] += math.exp(-1 / t)
    torch.testing.assert_close(scores, expected)


def test_chunking_gives_the_same_scores():
    xtr, ytr = clusters(n_per=30, c=6, noise=1.0, seed=2)
    xte, _ = clusters(n_per=9, c=6, noise=1.0, seed=3)
    full = knn_predict(xtr, ytr, xte, 6, k=17, chunk=10**6)
    for chunk in (1, 7, 53):
        got = knn_predict(xtr, ytr, xte, 6, k=17, chunk=chunk)
        torch.testing.assert_close(got, full, rtol=1e-5, atol=0)  # matmul blocking may differ in the last bit
        assert torch.equal(got.argmax(1), full.argmax(1))


@pytest.mark.parametrize(
    "kwargs, name",
    [
        (dict(k=0), "k"),
        (dict(k=2.0), "k"),
        (dict(k=True), "k"),
        (dict(temperature=0.0), "temperature"),
        (dict(temperature=-1), "temperature"),
        (dict(num_classes=3), "num_classes"),
        (dict(chunk=0), "chunk"),
        (dict(test_feats=torch.zeros(3, 5)), "test_feats"),
        (dict(train_labels=torch.zeros(7, dtype=torch.long)), "train_labels"),
        (dict(train_labels=torch.zeros(10)), "train_labels"),
        (dict(train_feats=torch.zeros(10, 4, dtype=torch.long)), "train_feats"),
    ],
)
def test_bad_arguments_name_the_argument(kwargs, name):
    args = dict(train_feats=torch.randn(10, 4), train_labels=torch.arange(10) % 5, test_feats=torch.randn(3, 4),
                num_classes=5)
    args.update(kwargs)
    with pytest.raises(ValueError, match=name) as err:
        knn_predict(**args)
    if name in ("k", "temperature", "num_classes"):
        assert repr(kwargs.get(name, "")) in str(err.value) or str(kwargs.get(name)) in str(err.value)


def test_knn_accuracy_checks_test_labels():
    x, y = clusters()
    with pytest.raises(ValueError, match="test_labels"):
        knn_accuracy(x, y, x, y[:-1], 5)
    with pytest.raises(ValueError, match="num_classes"):
        knn_accuracy(x, y, x, y + 1, 5)


# --------------------------------------------------------------------------- feature extraction
class DictData(Dataset):
    def __init__(self, x, y):
        self.x, self.y = x, y

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        return {"images": self.x[i], "labels": self.y[i], "index": i}


def image_data(n=24, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, 16, 16, generator=g) + 2.0, torch.arange(n) % 3


def tiny(**kw):
    torch.manual_seed(0)
    return build_model("convnet", num_classes=3, width=0.25, **kw)


@pytest.mark.parametrize("train_mode", [True, False])
def test_extract_features_leaves_batchnorm_and_mode_alone(train_mode):
    model = tiny()
    with torch.no_grad():  # non-trivial running statistics
        model.train()
        model(torch.randn(8, 3, 16, 16) * 3 + 1)
    model.train(train_mode)
    before = bn_state(model)
    x, y = image_data()
    feats, labels = extract_features(model, DataLoader(TensorDataset(x, y), batch_size=5), "cpu")
    assert model.training is train_mode
    assert all(m.training is train_mode for m in model.modules())
    after = bn_state(model)
    assert before.keys() == after.keys() and before
    for k in before:
        assert torch.equal(before[k], after[k]), k
    assert feats.shape == (24, model.num_features) and feats.dtype == torch.float32
    torch.testing.assert_close(feats.norm(dim=1), torch.ones(24))
    assert torch.equal(labels, y)
    # the same numbers as the eval-mode pooled pre-classifier vector, and as model(x) without a classifier
    model.eval()
    with torch.no_grad():
        ref = pooled_features(model, x)
        torch.testing.assert_close(feats, torch.nn.functional.normalize(ref, dim=1))
        headless = tiny(drop_rate=0.0)
        headless.reset_classifier(0)
        headless.load_state_dict({k: v for k, v in model.state_dict().items() if not k.startswith("head.fc")})
        torch.testing.assert_close(headless.eval()(x), ref)


def test_extract_features_accepts_dict_batches_and_raw_features():
    model = tiny()
    x, y = image_data(n=10)
    f_dict, y_dict = extract_features(model, DataLoader(DictData(x, y), batch_size=4), "cpu", normalize=False)
    f_tup, _ = extract_features(model, DataLoader(TensorDataset(x, y), batch_size=10), "cpu", normalize=False)
    assert torch.equal(y_dict, y)
    torch.testing.assert_close(f_dict, f_tup)
    assert not torch.allclose(f_dict.norm(dim=1), torch.ones(10))


def test_knn_evaluate_on_separable_images():
    # three classes with different brightness in each channel: the random-init features separate them
    g = torch.Generator().manual_seed(0)
    y = torch.arange(60) % 3
    x = torch.randn(60, 3, 16, 16, generator=g) * 0.3
    x[torch.arange(60), y] += 2.0
    model = tiny()
    tr = DataLoader(TensorDataset(x[:45], y[:45]), batch_size=16)
    te = DataLoader(TensorDataset(x[45:], y[45:]), batch_size=16)
    out = knn_evaluate(model, tr, te, "cpu", num_classes=3, k=10)
    assert out["top1"] == pytest.approx(100.0) and out["n_train"] == 45 and out["n_test"] == 15


# --------------------------------------------------------------------------- DDP gather
def _ddp_worker(rank, world, init_file, result_file):
    import torch.distributed as dist

    from samix.evaluate.knn import extract_features as ef

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    torch.set_num_threads(1)
    x, y = image_data(n=11)
    ds = TensorDataset(x, y)
    shard = torch.utils.data.Subset(ds, list(range(rank, 11, world)))  # the engine's ShardSampler layout
    model = tiny()
    feats, labels = ef(model, DataLoader(shard, batch_size=2), "cpu")
    tr = DataLoader(shard, batch_size=3)
    out = knn_evaluate(model, tr, tr, "cpu", num_classes=3, k=3)
    torch.save({"feats": feats, "labels": labels, "top1": out["top1"], "n_test": out["n_test"]},
               f"{result_file}.{rank}")
    dist.destroy_process_group()


@pytest.mark.slow
@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed unavailable")
def test_ddp_ranks_get_the_whole_set_in_dataset_order(tmp_path):
    import torch.multiprocessing as mp

    world = 3  # 11 samples: shards of 4, 4, 3 (unequal, so padding is exercised)
    mp.spawn(_ddp_worker, args=(world, str(tmp_path / "init"), str(tmp_path / "res")), nprocs=world, join=True)
    x, y = image_data(n=11)
    model = tiny()
    ref_feats, ref_labels = extract_features(model, DataLoader(TensorDataset(x, y), batch_size=4), "cpu")
    ref = knn_evaluate(model, DataLoader(TensorDataset(x, y)), DataLoader(TensorDataset(x, y)), "cpu", 3, k=3)
    for rank in range(world):
        got = torch.load(f"{tmp_path / 'res'}.{rank}", weights_only=True)
        assert torch.equal(got["labels"], ref_labels)
        torch.testing.assert_close(got["feats"], ref_feats)
        assert got["n_test"] == 11 and got["top1"] == pytest.approx(ref["top1"])


def test_extract_features_with_autocast_and_channels_last():
    model = tiny()
    x, y = image_data(n=8)
    loader = DataLoader(TensorDataset(x, y), batch_size=4)
    ref, _ = extract_features(model, loader, "cpu")
    got, _ = extract_features(model, loader, "cpu", amp_dtype=torch.bfloat16, channels_last=True)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, ref, rtol=0.05, atol=0.05)
    with pytest.raises(TypeError, match="amp_dtype"):
        extract_features(model, loader, "cpu", amp_dtype=torch.int8)
