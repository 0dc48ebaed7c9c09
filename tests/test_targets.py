"""Labels -> (smoothed) soft targets, and their mixing (samix.targets)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from samix.mixing import MixResult
from samix.targets import check_labels, mix_targets, to_probs

FEW = settings(max_examples=25, deadline=None)


def result(lam, index):
    lam = torch.as_tensor(lam, dtype=torch.float32)
    return MixResult(images=torch.zeros(len(lam), 1, 1, 1), lam=lam, index=torch.as_tensor(index))


@FEW
@given(b=st.integers(1, 8), k=st.integers(1, 12), eps=st.floats(0.0, 1.0), seed=st.integers(0, 999))
def test_to_probs_smoothed_one_hot(b, k, eps, seed):
    labels = torch.randint(0, k, (b,), generator=torch.Generator().manual_seed(seed))
    probs = to_probs(labels, k, eps)
    assert probs.shape == (b, k) and probs.dtype == torch.float32
    expected = np.full((b, k), eps / k)
    expected[np.arange(b), labels.numpy()] += 1.0 - eps
    np.testing.assert_allclose(probs.numpy(), expected, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(probs.sum(1).numpy(), 1.0, rtol=1e-6)


def test_to_probs_on_probability_rows_and_dtype():
    p = torch.tensor([[0.2, 0.8, 0.0], [1 / 3, 1 / 3, 1 / 3]], dtype=torch.float64)
    out = to_probs(p, None, 0.3, dtype=torch.float64)
    torch.testing.assert_close(out, 0.7 * p + 0.1)
    assert to_probs(p, None, 0.0, dtype=torch.bfloat16).dtype == torch.bfloat16
    # smoothing keeps a uniform row uniform
    torch.testing.assert_close(out[1], p[1])


@FEW
@given(b=st.integers(1, 8), k=st.integers(2, 10), eps=st.sampled_from([0.0, 0.1, 0.5]),
       seed=st.integers(0, 999))
def test_mix_targets_is_convex_combination_of_smoothed_rows(b, k, eps, seed):
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, k, (b,), generator=g)
    lam = torch.rand(b, generator=g)
    index = torch.randperm(b, generator=g)
    targets = mix_targets(labels, result(lam, index), num_classes=k, label_smoothing=eps)
    onehot = torch.nn.functional.one_hot(labels, k).float() * (1 - eps) + eps / k
    expected = lam[:, None] * onehot + (1 - lam[:, None]) * onehot[index]
    torch.testing.assert_close(targets, expected)
    torch.testing.assert_close(targets.sum(1), torch.ones(b))
    assert bool((targets >= 0).all())
    # the mass on the two labels: lam on y_i, 1 - lam on y_index (when they differ, without smoothing)
    if eps == 0.0:
        diff = labels != labels[index]
        rows = torch.arange(b)
        torch.testing.assert_close(targets[rows, labels][diff], lam[diff])
        torch.testing.assert_close(targets[rows, labels[index]][diff], 1 - lam[diff])


def test_mix_targets_with_probability_labels():
    probs = torch.softmax(torch.randn(5, 4, generator=torch.Generator().manual_seed(1)), 1)
    lam = torch.tensor([1.0, 0.0, 0.5, 0.25, 0.9])
    index = torch.tensor([1, 2, 3, 4, 0])
    t = mix_targets(probs, result(lam, index))
    torch.testing.assert_close(t[0], probs[0])  # lam = 1: own row
    torch.testing.assert_close(t[1], probs[2])  # lam = 0: partner's row
    torch.testing.assert_close(t[2], 0.5 * probs[2] + 0.5 * probs[3])
    torch.testing.assert_close(t.sum(1), torch.ones(5))


def test_mix_targets_identity_pairing_gives_the_labels_back():
    labels = torch.tensor([2, 0, 1])
    t = mix_targets(labels, result([0.3, 0.6, 0.1], [0, 1, 2]), num_classes=3)
    torch.testing.assert_close(t, torch.nn.functional.one_hot(labels, 3).float())


def test_mix_targets_dtype():
    t = mix_targets(torch.tensor([0, 1]), result([0.5, 0.5], [1, 0]), num_classes=2, dtype=torch.float64)
    assert t.dtype == torch.float64
    torch.testing.assert_close(t, torch.full((2, 2), 0.5, dtype=torch.float64))


def test_check_labels_accepts_good_labels():
    check_labels(torch.tensor([0, 4, 2]), 3, 5)
    check_labels(torch.tensor([0, 4, 2], dtype=torch.int32), 3, 5)
    check_labels(torch.rand(3, 5).softmax(1), 3, None)  # probability rows (issue 18: they must sum to 1)
    check_labels(torch.rand(3, 5).softmax(1), 3, 5)


@pytest.mark.parametrize("labels,b,k,exc,pattern", [
    ([0, 1], 2, 3, TypeError, r"labels must be a torch\.Tensor, got list"),
    (torch.tensor(1), 1, 3, ValueError, r"labels.*batch size 1.*\(\)"),
    (torch.tensor([0, 1, 2]), 2, 3, ValueError, r"labels.*batch size 2.*\(3,\)"),
    (torch.tensor([0, 3]), 2, 3, ValueError, r"labels must lie in \[0, num_classes=3\).*\[0, 3\]"),
    (torch.tensor([-2, 1]), 2, 3, ValueError, r"\[-2, 1\]"),
    (torch.tensor([0, 1]), 2, None, ValueError, r"num_classes is required"),
    (torch.tensor([0.0, 1.0]), 2, 3, TypeError, r"integer dtype.*float32"),
    (torch.rand(2, 4), 2, 3, ValueError, r"num_classes=3 columns, got 4"),
    (torch.ones(2, 3, dtype=torch.long), 2, 3, TypeError, r"floating point.*int64"),
    (torch.rand(2, 3, 4), 2, 3, ValueError, r"int \[B\] or probabilities \[B, K\]"),
])
def test_check_labels_errors(labels, b, k, exc, pattern):
    with pytest.raises(exc, match=pattern):
        check_labels(labels, b, k)
