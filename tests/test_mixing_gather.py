"""Tests of the fast batch gather and the in-place mask blend of samix.mixing.base."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from samix.mixing.base import gather_batch, mask_mix
from samix.targets import mix_targets
from samix.mixing import MixResult


def _reference(x, index, mask):
    m = mask.to(x.dtype)
    return m * x + (1 - m) * x[index]


@pytest.mark.parametrize("fmt", ["contiguous", "channels_last", "strided"])
def test_gather_batch_equals_advanced_indexing_and_keeps_the_format(fmt):
    g = torch.Generator().manual_seed(0)
    x = torch.rand(5, 3, 4, 6, generator=g)
    if fmt == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    elif fmt == "strided":
        x = torch.rand(5, 3, 4, 12, generator=g)[..., ::2]
    index = torch.randperm(5, generator=g)
    out = gather_batch(x, index)
    assert torch.equal(out, x[index])
    assert out.data_ptr() != x.data_ptr()
    if fmt == "channels_last":
        assert out.is_contiguous(memory_format=torch.channels_last) and not out.is_contiguous()
    # a 2-D tensor (targets) too
    y = torch.rand(5, 7, generator=g)
    assert torch.equal(gather_batch(y, index), y[index])


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), b=st.integers(1, 5), per_sample=st.booleans(),
       binary=st.booleans(), channels_last=st.booleans())
def test_mask_mix_matches_the_formula_and_leaves_the_input_alone(seed, b, per_sample, binary, channels_last):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(b, 3, 5, 4, generator=g)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    before = x.clone()
    index = torch.randperm(b, generator=g)
    mask = torch.rand(b if per_sample else 1, 1, 5, 4, generator=g)
    mask = mask > 0.5 if binary else mask
    out = mask_mix(x, index, mask)
    torch.testing.assert_close(out, _reference(x, index, mask), atol=1e-6, rtol=0)
    assert torch.equal(x, before)  # the blend writes into the gathered partner, never into x
    assert out.shape == x.shape and out.dtype == x.dtype
    if channels_last and b > 1:
        assert out.is_contiguous(memory_format=torch.channels_last)


def test_mask_mix_keeps_gradients_when_autograd_tracks_the_inputs():
    g = torch.Generator().manual_seed(1)
    x = torch.rand(4, 2, 3, 3, generator=g, requires_grad=True)
    mask = torch.rand(4, 1, 3, 3, generator=g, requires_grad=True)
    index = torch.tensor([1, 2, 3, 0])
    out = mask_mix(x, index, mask)
    out.sum().backward()
    # d/dmask of sum(m x + (1 - m) x[index]) = sum over channels of (x - x[index])
    torch.testing.assert_close(mask.grad, (x - x[index]).sum(1, keepdim=True).detach())
    # d/dx: m (own term) + (1 - m) routed back to the sample each partner came from
    expected = mask.detach().expand_as(x).clone()
    expected[index] += (1 - mask.detach()).expand_as(x)
    torch.testing.assert_close(x.grad, expected)


def test_mix_targets_pairs_rows_by_index():
    labels = torch.tensor([0, 1, 2])
    res = MixResult(images=torch.zeros(3, 1, 1, 1), lam=torch.tensor([0.25, 0.5, 1.0]),
                    index=torch.tensor([2, 0, 1]))
    t = mix_targets(labels, res, num_classes=3)
    expected = torch.tensor([[0.25, 0.0, 0.75], [0.5, 0.5, 0.0], [0.0, 0.0, 1.0]])
    torch.testing.assert_close(t, expected)
