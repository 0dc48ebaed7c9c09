"""Tests of samix.evaluate: top-k, median_last, ECE, reliability diagrams, evaluate_classifier, corruption_accuracy."""

from __future__ import annotations

import math
import statistics

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

from samix.evaluate import (
    CorruptionReport,
    calibration_bin_stats,
    corruption_accuracy,
    ece_from_bin_stats,
    evaluate_classifier,
    expected_calibration_error,
    list_corruptions,
    local_sample_limit,
    median_last,
    reliability_diagram,
    reliability_grid,
    topk_accuracy,
)


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


# ------------------------------------------------------------------------------------------ top-k


def test_topk_on_hand_made_logits():
    logits = torch.tensor(
        [
            [9.0, 1.0, 2.0, 3.0],  # label 0 is rank 1
            [1.0, 9.0, 8.0, 0.0],  # label 2 is rank 2
            [4.0, 3.0, 2.0, 1.0],  # label 3 is rank 4
            [0.0, 5.0, 7.0, 6.0],  # label 1 is rank 3
        ]
    )
    labels = torch.tensor([0, 2, 3, 1])
    assert topk_accuracy(logits, labels, ks=(1, 2, 3, 4)) == [25.0, 50.0, 75.0, 100.0]
    top1, top5 = topk_accuracy(logits, labels)  # k = 5 > K = 4 is clipped to 4
    assert (top1, top5) == (25.0, 100.0)
    assert topk_accuracy(logits, labels, ks=3) == [75.0]


def test_topk_agrees_with_torchmetrics():
    from torchmetrics.classification import MulticlassAccuracy

    logits = torch.randn(64, 7, generator=gen(1))
    labels = torch.randint(0, 7, (64,), generator=gen(2))
    for k in (1, 3, 5):
        ref = MulticlassAccuracy(num_classes=7, top_k=k, average="micro")(logits, labels)
        assert topk_accuracy(logits, labels, ks=(k,))[0] == pytest.approx(100 * float(ref))


def test_topk_bad_inputs():
    logits, labels = torch.randn(3, 4), torch.tensor([0, 1, 2])
    with pytest.raises(ValueError, match="labels must lie in"):
        topk_accuracy(logits, torch.tensor([0, 1, 4]))
    with pytest.raises(TypeError, match="integer class indices"):
        topk_accuracy(logits, labels.float())
    with pytest.raises(ValueError, match="shape"):
        topk_accuracy(logits, labels[:2])
    with pytest.raises(ValueError, match="2-D"):
        topk_accuracy(logits[0], labels)
    with pytest.raises(ValueError, match="positive ints"):
        topk_accuracy(logits, labels, ks=(0,))


# ------------------------------------------------------------------------------------ median_last


def test_median_last_protocol():
    assert median_last(list(range(1, 21))) == 15.5  # last 10: 11..20
    assert median_last([70.0, 80.0, 79.0, 81.0, 78.0], k=3) == 79.0
    assert median_last([3.0, 1.0, 2.0]) == 2.0  # fewer than k: all of them
    assert median_last(torch.tensor([1.0, 5.0, 3.0, 4.0]), k=10) == 3.5
    assert median_last((x for x in [2, 9]), k=1) == 9.0


@settings(max_examples=25, deadline=None)
@given(st.lists(st.floats(0, 100), min_size=1, max_size=30), st.integers(1, 15))
def test_median_last_property(values, k):
    m = median_last(values, k)
    tail = values[-k:]
    assert m == statistics.median(tail)
    assert min(tail) <= m <= max(tail)


def test_median_last_errors():
    with pytest.raises(ValueError, match="empty"):
        median_last([])
    with pytest.raises(ValueError, match="k must be a positive int"):
        median_last([1.0], k=0)
    with pytest.raises(ValueError, match="finite"):
        median_last([1.0, float("nan")])
    with pytest.raises(TypeError, match="numbers"):
        median_last(["a"])


# ---------------------------------------------------------------------------------------- ECE


def test_ece_is_zero_when_perfectly_calibrated():
    # three confidence levels; in each, exactly that share of the predictions is right
    rows, labels = [], []
    for conf, n, n_right in [(0.6, 5, 3), (0.8, 10, 8), (0.5, 4, 2)]:
        for i in range(n):
            p = torch.full((3,), (1 - conf) / 2)
            p[0] = conf
            rows.append(p)
            labels.append(0 if i < n_right else 1)
    probs, labels = torch.stack(rows), torch.tensor(labels)
    assert expected_calibration_error(probs, labels, n_bins=15) == pytest.approx(0.0, abs=1e-4)
    assert expected_calibration_error(probs.log(), labels) == pytest.approx(0.0, abs=1e-4)  # as logits


def test_ece_equals_a_hand_computed_value():
    # confidences away from the bin edges (float32 rounding must not move a sample across one)
    probs = torch.tensor([[0.93, 0.07], [0.86, 0.14], [0.17, 0.83], [0.57, 0.43], [0.36, 0.64]])
    labels = torch.tensor([0, 1, 1, 0, 0])
    # independent computation, Guo et al.'s formula with 10 bins [b/10, (b+1)/10)
    conf = [max(r) for r in probs.tolist()]
    right = [float(r.index(max(r)) == y) for r, y in zip(probs.tolist(), labels.tolist())]
    total = 0.0
    for b in range(10):
        idx = [i for i, c in enumerate(conf) if b / 10 <= c < (b + 1) / 10]
        if idx:
            total += len(idx) / 5 * abs(sum(right[i] for i in idx) / len(idx) - sum(conf[i] for i in idx) / len(idx))
    # by hand: bins 0.9 {0.93 right}, 0.8 {0.86 wrong, 0.83 right}, 0.6 {0.64 wrong}, 0.5 {0.57 right}
    by_hand = (abs(1 - 0.93) + 2 * abs(0.5 - 0.845) + abs(0 - 0.64) + abs(1 - 0.57)) / 5
    assert by_hand == pytest.approx(0.366)
    assert total == pytest.approx(by_hand)
    assert expected_calibration_error(probs, labels, n_bins=10) == pytest.approx(100 * by_hand, abs=1e-4)


def test_accumulated_bins_equal_torchmetrics_ece_including_confidence_one():
    logits = torch.randn(200, 5, generator=gen(3)) * 4
    logits[:7, 0] = 200.0  # softmax confidence exactly 1.0 (own bin in torchmetrics)
    labels = torch.randint(0, 5, (200,), generator=gen(4))
    probs = logits.softmax(1)
    assert int((probs.max(1).values == 1).sum()) == 7
    stats = calibration_bin_stats(probs[:120], labels[:120], 15) + calibration_bin_stats(probs[120:], labels[120:], 15)
    assert ece_from_bin_stats(stats) == pytest.approx(expected_calibration_error(logits, labels), abs=1e-4)


def test_ece_input_kinds_and_errors():
    logits = torch.randn(10, 3, generator=gen(5))
    labels = torch.randint(0, 3, (10,), generator=gen(6))
    e = expected_calibration_error(logits, labels)
    assert e == pytest.approx(expected_calibration_error(logits.softmax(1), labels), abs=1e-5)
    assert e == pytest.approx(expected_calibration_error(logits, labels, inputs="logits"), abs=1e-5)
    with pytest.raises(ValueError, match="inputs must be one of"):
        expected_calibration_error(logits, labels, inputs="scores")
    with pytest.raises(ValueError, match="n_bins"):
        expected_calibration_error(logits, labels, n_bins=0)
    with pytest.raises(ValueError, match="labels must lie in"):
        expected_calibration_error(logits, labels + 3)


def test_reliability_diagram_writes_a_png(tmp_path):
    import matplotlib.image as mpimg

    logits = torch.randn(300, 10, generator=gen(7)) * 3
    labels = torch.randint(0, 10, (300,), generator=gen(8))
    path = reliability_diagram(tmp_path / "sub" / "rel.png", logits, labels, title="test")
    assert path.exists() and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    img = mpimg.imread(path)
    assert img.ndim == 3 and min(img.shape[:2]) > 300
    grid = reliability_grid(tmp_path / "grid.png", {"a": (logits, labels), "b": (logits * 0.3, labels)}, ncols=2)
    g = mpimg.imread(grid)
    assert g.shape[1] > 1.5 * g.shape[0]  # two panels side by side
    with pytest.raises(ValueError, match="at least one"):
        reliability_grid(tmp_path / "x.png", {})


# ------------------------------------------------------------------------------ evaluate_classifier


class Linear(nn.Module):
    def __init__(self, k=6, d=12, seed=0):
        super().__init__()
        g = gen(seed)
        self.fc = nn.Linear(d, k)
        with torch.no_grad():
            self.fc.weight.copy_(torch.randn(k, d, generator=g))
            self.fc.bias.copy_(torch.randn(k, generator=g))
        self.drop = nn.Dropout(0.5)  # must be off in eval

    def forward(self, x):
        return self.fc(self.drop(x.flatten(1)))


def data(n=23, d=12, k=6, seed=1):
    g = gen(seed)
    return TensorDataset(torch.randn(n, d, generator=g), torch.randint(0, k, (n,), generator=g))


def test_evaluate_classifier_matches_direct_computation_and_restores_mode():
    model, ds = Linear(), data()
    model.train()
    out = evaluate_classifier(model, DataLoader(ds, batch_size=5), return_logits=True)
    assert model.training  # restored
    x, y = ds.tensors
    with torch.no_grad():
        model.eval()
        logits = model(x)
    top1, top5 = topk_accuracy(logits, y)
    assert out["n"] == 23
    assert out["top1"] == pytest.approx(top1) and out["top5"] == pytest.approx(top5)
    assert out["loss"] == pytest.approx(float(F.cross_entropy(logits, y)), rel=1e-5)
    assert out["ece"] == pytest.approx(expected_calibration_error(logits, y), abs=1e-4)
    torch.testing.assert_close(out["logits"], logits)
    assert torch.equal(out["labels"], y)
    model.eval()
    evaluate_classifier(model, DataLoader(ds, batch_size=5))
    assert not model.training


def test_evaluate_classifier_options():
    model, ds = Linear(), data()
    loader = DataLoader(ds, batch_size=5)
    part = evaluate_classifier(model, loader, max_batches=2, ks=(1, 2))
    assert part["n"] == 10 and set(part) >= {"top1", "top2", "loss", "ece", "n"}
    shifted = evaluate_classifier(model, loader, input_transform=lambda t: t * 0)  # every input -> bias only
    bias_pred = int(model.fc.bias.argmax())
    assert shifted["top1"] == pytest.approx(100 * float((ds.tensors[1] == bias_pred).float().mean()))
    amp = evaluate_classifier(model, loader, amp_dtype=torch.bfloat16)
    assert abs(amp["top1"] - evaluate_classifier(model, loader)["top1"]) <= 100 * 2 / 23
    with pytest.raises(ValueError, match="num_classes=7"):
        evaluate_classifier(model, loader, num_classes=7)
    with pytest.raises(TypeError, match="tuple/list"):
        evaluate_classifier(model, [torch.zeros(2, 12)])
    with pytest.raises(ValueError, match="max_batches"):
        evaluate_classifier(model, loader, max_batches=0)


@pytest.mark.parametrize("n,world", [(10, 3), (7, 4), (12, 3), (2, 3)])
def test_distributed_sampler_padding_is_removed_exactly(n, world):
    model, ds = Linear(), data(n=n)
    full = evaluate_classifier(model, DataLoader(ds, batch_size=4))
    total_n, total_hits = 0, 0.0
    for rank in range(world):
        sampler = DistributedSampler(ds, num_replicas=world, rank=rank, shuffle=True, seed=3)
        loader = DataLoader(ds, batch_size=2, sampler=sampler)
        limit = local_sample_limit(loader)
        assert limit in (sampler.num_samples, sampler.num_samples - 1)
        if limit == 0:
            continue
        out = evaluate_classifier(model, loader)
        total_n += out["n"]
        total_hits += out["top1"] * out["n"] / 100
    assert total_n == n  # the padded duplicates were not counted
    assert total_hits == pytest.approx(full["top1"] * n / 100)


def _ddp_worker(rank, world, init_file, n, result_file):
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    torch.set_num_threads(1)
    model, ds = Linear(), data(n=n)
    loader = DataLoader(ds, batch_size=3, sampler=DistributedSampler(ds, shuffle=False))
    out = evaluate_classifier(model, loader)
    torch.save({k: out[k] for k in ("top1", "top5", "loss", "ece", "n")}, f"{result_file}.{rank}")
    dist.destroy_process_group()


@pytest.mark.slow  # two spawned processes import torch: ~3 s idle, more on a busy machine
@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed unavailable")
def test_ddp_two_processes_return_the_global_numbers(tmp_path):
    import torch.multiprocessing as mp

    n = 11  # odd: the sampler pads one sample
    mp.spawn(_ddp_worker, args=(2, str(tmp_path / "init"), n, str(tmp_path / "res")), nprocs=2, join=True)
    single = evaluate_classifier(Linear(), DataLoader(data(n=n), batch_size=4))
    for rank in range(2):
        got = torch.load(f"{tmp_path / 'res'}.{rank}", weights_only=True)
        assert got["n"] == n
        for key in ("top1", "top5", "loss", "ece"):
            assert got[key] == pytest.approx(single[key], rel=1e-5, abs=1e-6), key


# --------------------------------------------------------------------------- corruption_accuracy


class Constant(nn.Module):
    """Always predicts class ``c``; records the smallest input it saw."""

    def __init__(self, k=4, c=2):
        super().__init__()
        self.register_buffer("logits", F.one_hot(torch.tensor(c), k).float())
        self.min_seen = math.inf

    def forward(self, x):
        self.min_seen = min(self.min_seen, float(x.min()))
        return self.logits.expand(x.shape[0], -1)


class MeanThreshold(nn.Module):
    """Class 1 if the image is bright on average, else 0 (sensitive to brightness/fog/snow)."""

    def forward(self, x):
        m = x.mean((1, 2, 3))
        return torch.stack([0.5 - m, m - 0.5], 1)


def images(n=6, seed=0):
    g = gen(seed)
    x = F.interpolate(torch.rand(n, 3, 4, 4, generator=g), size=(32, 32), mode="bilinear", align_corners=False)
    return x.clamp(0, 1)


def test_constant_model_has_the_same_accuracy_everywhere():
    x = images(6)
    y = torch.tensor([2, 0, 2, 1, 2, 3])
    model = Constant()
    rep = corruption_accuracy(model, TensorDataset(x, y), mean=(1.0, 1.0, 1.0), std=(1.0, 1.0, 1.0), batch_size=4)
    assert isinstance(rep, CorruptionReport)
    assert list(rep.table) == list_corruptions() and all(list(row) == [1, 2, 3, 4, 5] for row in rep.table.values())
    assert all(v == pytest.approx(50.0) for row in rep.table.values() for v in row.values())
    assert rep.mean_top1 == pytest.approx(50.0) and rep.clean_top1 == pytest.approx(50.0)
    assert rep.mean_error == pytest.approx(50.0) and rep.n == 6
    assert set(rep.per_category()) == {"noise", "blur", "weather", "digital"}
    assert model.min_seen <= 0.0 and model.min_seen >= -1.0  # normalised after corrupting: (x - 1) / 1
    md = rep.to_markdown()
    assert md.count("\n| ") >= 16 and "gaussian_noise" in md


def test_corruption_table_is_consistent_and_reproducible():
    x = images(8, seed=1)
    y = (x.mean((1, 2, 3)) > 0.5).long()
    model = MeanThreshold()
    names = ["brightness", "gaussian_noise", "contrast"]
    a = corruption_accuracy(model, TensorDataset(x, y), corruptions=names, batch_size=3, seed=5)
    b = corruption_accuracy(model, DataLoader(TensorDataset(x, y), batch_size=3), corruptions=names, seed=5)
    assert a.table == b.table  # dataset or loader, same seed: same numbers
    assert a.clean_top1 == 100.0  # the labels are the model's clean decisions
    # a cell does not depend on the other cells evaluated
    only = corruption_accuracy(model, TensorDataset(x, y), corruptions=["gaussian_noise"], severities=[4], seed=5)
    assert only.table["gaussian_noise"][4] == a.table["gaussian_noise"][4]
    # brightness pushes dark images over the threshold: accuracy cannot rise with severity
    bright = [a.table["brightness"][s] for s in range(1, 6)]
    assert bright == sorted(bright, reverse=True) and bright[-1] < 100.0
    cells = [v for row in a.table.values() for v in row.values()]
    assert a.mean_top1 == pytest.approx(sum(cells) / len(cells))
    assert a.per_corruption()["brightness"] == pytest.approx(sum(bright) / 5)


def test_corruption_accuracy_quick_run_and_errors():
    x, y = images(10), torch.zeros(10, dtype=torch.long)
    model = Constant(c=0)
    rep = corruption_accuracy(model, TensorDataset(x, y), corruptions=["contrast"], severities=(1, 5), batch_size=4,
                              max_batches=1, clean=False)
    assert rep.n == 4 and rep.clean_top1 is None and rep.table == {"contrast": {1: 100.0, 5: 100.0}}
    ds = TensorDataset(x, y)
    with pytest.raises(ValueError, match="un-normalised"):
        corruption_accuracy(model, TensorDataset((x - 0.5) / 0.2, y), corruptions=["contrast"])
    with pytest.raises(ValueError, match="unknown corruption"):
        corruption_accuracy(model, ds, corruptions=["rain"])
    with pytest.raises(TypeError, match="single string"):
        corruption_accuracy(model, ds, corruptions="fog")
    with pytest.raises(ValueError, match="severities"):
        corruption_accuracy(model, ds, severities=(0, 1))
    with pytest.raises(ValueError, match="together"):
        corruption_accuracy(model, ds, corruptions=["fog"], mean=(0.5, 0.5, 0.5))
    with pytest.raises(ValueError, match="1 or 3 values"):
        corruption_accuracy(model, ds, corruptions=["fog"], mean=(0.5, 0.5), std=(1.0, 1.0))
