"""Properties every image-only mixing policy must have, plus policy-specific mathematics.

The contract tests are parametrised over every registered mixer whose class has
``needs_model == False`` and over both modes, so a new policy is covered as soon
as its file exists.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from samix.mixing import MODES, build_mixer, get_mixer_class, list_mixers
from samix.mixing.boxes import box_size
from samix.mixing.fmix import binarise_top_k
from samix.mixing.gridmix import grid_cell_mask
from samix.mixing.resizemix import resize_into_boxes
from samix.mixing.saliencymix import saliency_peaks

IMAGE_POLICIES = [n for n in list_mixers()
                  if not (get_mixer_class(n).needs_model or get_mixer_class(n).needs_pretrained)]
PAIRS = [(n, m) for n in IMAGE_POLICIES for m in MODES]
FEW = settings(max_examples=12, deadline=None)

TOL = {  # (rtol, atol) for comparing a mixed batch with its float32 reference
    torch.float64: (1e-6, 1e-6),  # lam is reported in float32
    torch.float32: (1e-5, 1e-5),
    torch.float16: (2e-3, 4e-3),
    torch.bfloat16: (1e-2, 3e-2),
}


def seeded(name, mode="batch", seed=0, **kw):
    kw.setdefault("num_classes", 5)
    return build_mixer(name, mode=mode, generator=torch.Generator().manual_seed(seed), **kw)


def images(b=4, c=3, h=8, w=8, seed=0, dtype=torch.float32):
    return torch.randn(b, c, h, w, generator=torch.Generator().manual_seed(1000 + seed)).to(dtype)


def fixed_lam(mixer, value):
    """Make ``mixer`` draw ``lam = value`` (scalar or per-sample array) from Beta."""

    def sample_lam(batch_size, alpha=None):
        n = 1 if mixer.mode == "batch" else batch_size
        return np.broadcast_to(np.asarray(value, dtype=np.float64), (n,)).copy()

    mixer.sample_lam = sample_lam
    return mixer


def check_contract(mixer, x, res):
    """The MixResult convention of samix.mixing.base, for any policy."""
    b, c, h, w = x.shape
    assert res.images.shape == x.shape and res.images.dtype == x.dtype and res.images.device == x.device
    assert res.lam.shape == (b,) and res.lam.dtype == torch.float32
    assert res.index.shape == (b,) and res.index.dtype == torch.long
    assert int(res.index.min()) >= 0 and int(res.index.max()) < b
    assert bool(((res.lam >= 0) & (res.lam <= 1)).all())
    rtol, atol = TOL[x.dtype]
    ref = torch.promote_types(x.dtype, torch.float32)
    xf, partner = x.to(ref), x[res.index].to(ref)
    out = res.images.to(ref)
    if res.mask is None:
        lam = res.lam.view(b, 1, 1, 1).to(ref)
        torch.testing.assert_close(out, lam * xf + (1 - lam) * partner, rtol=rtol, atol=atol)
        return
    mask = res.mask.to(ref)
    assert res.mask.shape == (b, 1, h, w)
    assert res.mask.is_floating_point()
    assert bool(((mask >= 0) & (mask <= 1)).all())
    torch.testing.assert_close(res.lam, mask.mean((1, 2, 3)).float(), rtol=0, atol=1e-6)
    if type(mixer).pixel_aligned:
        torch.testing.assert_close(out, mask * xf + (1 - mask) * partner, rtol=rtol, atol=atol)
    else:
        keep = (mask == 1).expand_as(out)
        assert torch.equal(out[keep], xf[keep])


# ---------------------------------------------------------------------------- the contract


@pytest.mark.parametrize("name,mode", PAIRS)
@FEW
@given(b=st.integers(1, 6), c=st.sampled_from([1, 3]), h=st.integers(1, 12), w=st.integers(1, 12),
       alpha=st.sampled_from([0.2, 1.0, 4.0]), seed=st.integers(0, 2**16))
def test_mix_contract(name, mode, b, c, h, w, alpha, seed):
    mixer = seeded(name, mode, seed, alpha=alpha)
    x = images(b, c, h, w, seed)
    check_contract(mixer, x, mixer.mix(x))


@pytest.mark.parametrize("name,mode", PAIRS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64])
def test_dtype_and_channels_last_kept(name, mode, dtype):
    x = images(5, 3, 10, 12, dtype=dtype).contiguous(memory_format=torch.channels_last)
    res = seeded(name, mode, 3).mix(x)
    assert res.images.dtype == dtype
    assert res.images.is_contiguous(memory_format=torch.channels_last)
    check_contract(seeded(name, mode, 3), x, res)
    # contiguous input stays contiguous
    res = seeded(name, mode, 3).mix(x.contiguous())
    assert res.images.is_contiguous()


@pytest.mark.parametrize("name,mode", PAIRS)
@pytest.mark.parametrize("b", [1, 3, 7])
def test_odd_batches_and_batch_of_one(name, mode, b):
    x = images(b, 3, 9, 7, seed=b)
    mixer = seeded(name, mode, b)
    res = mixer.mix(x)
    check_contract(mixer, x, res)
    if b == 1:  # the only partner of a single sample is itself
        assert torch.equal(res.index, torch.zeros(1, dtype=torch.long))
        if type(mixer).pixel_aligned:  # pasting a sample's own pixels in place gives it back
            torch.testing.assert_close(res.images, x)


@pytest.mark.parametrize("name,mode", PAIRS)
def test_lam_one_gives_input_back(name, mode):
    x = images(4, 3, 8, 8)
    res = fixed_lam(seeded(name, mode), 1.0).mix(x)
    assert torch.equal(res.images, x)
    assert torch.equal(res.lam, torch.ones(4))
    if res.mask is not None:
        assert bool((res.mask == 1).all())


@pytest.mark.parametrize("name,mode", PAIRS)
def test_prob_zero_is_identity(name, mode):
    x = images(4, 3, 8, 8)
    mixer = seeded(name, mode, prob=0.0)
    res = mixer.mix(x)
    assert torch.equal(res.images, x) and torch.equal(res.lam, torch.ones(4))
    labels = torch.tensor([0, 1, 2, 3])
    _, targets = seeded(name, mode, prob=0.0)(x, labels)
    torch.testing.assert_close(targets, F.one_hot(labels, 5).float())


@pytest.mark.parametrize("name", IMAGE_POLICIES)
def test_prob_half_in_elem_mode_leaves_about_half_unmixed(name):
    b = 400
    x = images(b, 1, 6, 6)
    mixer = seeded(name, "elem", 11, prob=0.5)
    seen = []
    inner = mixer._mix

    def spy(imgs, index, lam):
        seen.append(np.array(lam))
        return inner(imgs, index, lam)

    mixer._mix = spy
    res = mixer.mix(x)
    unmixed = seen[0] >= 1.0
    # Binomial(400, 0.5): sd = 10; 4 sd bounds
    assert 160 <= unmixed.sum() <= 240
    keep = torch.as_tensor(unmixed)
    assert torch.equal(res.images[keep], x[keep])
    assert bool((res.lam[keep] == 1).all())
    # most of the samples drawn for mixing really mix
    assert float((res.lam[~keep] < 1).float().mean()) > 0.5


@pytest.mark.parametrize("name,mode", PAIRS)
def test_gradients_flow_and_each_output_pixel_is_a_convex_combination(name, mode):
    x = images(4, 2, 9, 9, dtype=torch.float64).requires_grad_(True)
    res = seeded(name, mode, 1).mix(x)
    res.images.sum().backward()
    # every output pixel is a convex combination of input pixels: the weights sum to 1
    torch.testing.assert_close(x.grad.sum(), torch.tensor(float(x.numel()), dtype=torch.float64))
    assert bool((x.grad >= 0).all())


# ---------------------------------------------------------------------------- targets


@pytest.mark.parametrize("name,mode", PAIRS)
@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_call_agrees_with_mix_and_targets_are_mixed_one_hots(name, mode, smoothing):
    k = 5
    x = images(6, 3, 8, 8)
    labels = torch.tensor([0, 1, 2, 3, 4, 1])
    res = seeded(name, mode, 7, label_smoothing=smoothing).mix(x)
    mixed, targets = seeded(name, mode, 7, label_smoothing=smoothing)(x, labels)
    assert torch.equal(mixed, res.images)
    smooth = F.one_hot(labels, k).float() * (1 - smoothing) + smoothing / k
    lam = res.lam.view(-1, 1)
    torch.testing.assert_close(targets, lam * smooth + (1 - lam) * smooth[res.index])
    torch.testing.assert_close(targets.sum(1), torch.ones(6))
    assert targets.dtype == torch.float32 and bool((targets >= 0).all())


@pytest.mark.parametrize("name,mode", PAIRS)
def test_probability_labels(name, mode):
    x = images(4, 3, 8, 8)
    probs = torch.softmax(torch.randn(4, 5, generator=torch.Generator().manual_seed(0)), 1)
    res = seeded(name, mode, 2).mix(x)
    _, targets = seeded(name, mode, 2)(x, probs)
    lam = res.lam.view(-1, 1)
    torch.testing.assert_close(targets, lam * probs + (1 - lam) * probs[res.index])
    torch.testing.assert_close(targets.sum(1), torch.ones(4))


# ---------------------------------------------------------------------------- reproducibility


@pytest.mark.parametrize("name,mode", PAIRS)
def test_same_seed_same_output(name, mode):
    x = images(6, 3, 10, 10)
    a, b = seeded(name, mode, 5).mix(x), seeded(name, mode, 5).mix(x)
    assert torch.equal(a.images, b.images) and torch.equal(a.lam, b.lam) and torch.equal(a.index, b.index)
    # the global RNG is used (and seeded by torch.manual_seed) when no generator is given
    torch.manual_seed(123)
    c = build_mixer(name, mode=mode).mix(x)
    torch.manual_seed(123)
    d = build_mixer(name, mode=mode).mix(x)
    assert torch.equal(c.images, d.images) and torch.equal(c.lam, d.lam)


@pytest.mark.parametrize("name,mode", PAIRS)
def test_different_seeds_differ(name, mode):
    x = images(8, 3, 16, 16)
    outs = {seeded(name, mode, s).mix(x).lam.numpy().tobytes() for s in range(4)}
    assert len(outs) > 1


# ---------------------------------------------------------------------------- fmix


@FEW
@given(lam=st.lists(st.floats(0.0, 1.0), min_size=1, max_size=5), h=st.integers(1, 16),
       w=st.integers(1, 16), decay=st.sampled_from([1.0, 3.0, 5.0]), seed=st.integers(0, 999))
def test_fmix_keeps_exactly_round_lam_hw_original_pixels(lam, h, w, decay, seed):
    b = len(lam)
    x = images(b, 2, h, w, seed)
    mixer = fixed_lam(seeded("fmix", "elem", seed, decay_power=decay), lam)
    res = mixer.mix(x)
    expected = np.floor(np.asarray(lam) * h * w + 0.5)
    ones = res.mask.sum((1, 2, 3)).numpy()
    np.testing.assert_array_equal(ones, np.where(np.asarray(lam) >= 1.0, h * w, expected))
    assert set(np.unique(res.mask.numpy())) <= {0.0, 1.0}


def test_fmix_batch_mode_shares_one_mask_and_masks_are_low_frequency():
    x = images(4, 3, 32, 32)
    res = fixed_lam(seeded("fmix", "batch", 1), 0.5).mix(x)
    assert bool((res.mask == res.mask[:1]).all())
    assert int(res.mask[0].sum()) == 512
    # low frequency: far fewer 0/1 transitions between neighbours than a random mask with the same count
    m = res.mask[0, 0]
    edges = (m[1:] != m[:-1]).sum() + (m[:, 1:] != m[:, :-1]).sum()
    perm = m.flatten()[torch.randperm(1024, generator=torch.Generator().manual_seed(0))].view(32, 32)
    rand_edges = (perm[1:] != perm[:-1]).sum() + (perm[:, 1:] != perm[:, :-1]).sum()
    assert edges < 0.25 * rand_edges


def test_binarise_top_k_with_ties_and_order():
    grey = torch.tensor([[0.0, 0.0, 0.0, 0.0], [3.0, 1.0, 2.0, 0.0]])
    mask = binarise_top_k(grey, torch.tensor([2, 2]))
    assert mask.sum(1).tolist() == [2, 2]
    assert mask[0].tolist() == [True, True, False, False]  # ties to the lower index
    assert mask[1].tolist() == [True, False, True, False]  # the two largest


# ---------------------------------------------------------------------------- cutmix


@FEW
@given(lam=st.floats(0.0, 1.0, exclude_max=True), h=st.integers(2, 20), w=st.integers(2, 20),
       seed=st.integers(0, 999))
def test_cutmix_box_area_matches_one_minus_lam_up_to_clipping(lam, h, w, seed):
    res = fixed_lam(seeded("cutmix", "elem", seed), lam).mix(images(3, 1, h, w, seed))
    bh, bw = box_size(np.array([1.0 - lam]), h, w)
    for m in res.mask[:, 0] == 0:  # the partner's region of each sample (3 samples, not the hot path)
        rows, cols = m.any(1).nonzero().flatten(), m.any(0).nonzero().flatten()
        if rows.numel() == 0:  # the centre lies in the image, so only an empty box leaves no trace
            assert bh[0] * bw[0] == 0
            continue
        ry, rx = int(rows[-1] - rows[0] + 1), int(cols[-1] - cols[0] + 1)
        assert int(m.sum()) == ry * rx  # a filled rectangle
        assert ry <= bh[0] and rx <= bw[0]
        if 0 < rows[0] and rows[-1] < h - 1:
            assert ry == bh[0]
        if 0 < cols[0] and cols[-1] < w - 1:
            assert rx == bw[0]


# ---------------------------------------------------------------------------- gridmix


def test_grid_cell_mask_matches_nearest_interpolation():
    cells = torch.rand(3, 5, 5, generator=torch.Generator().manual_seed(0)) < 0.5
    n = torch.tensor([5, 3, 2])
    mask = grid_cell_mask(cells, n, 13, 11)
    for i, k in enumerate(n.tolist()):
        ref = F.interpolate(cells[i, :k, :k].float()[None, None], size=(13, 11), mode="nearest")[0]
        assert torch.equal(mask[i].float(), ref)


def test_gridmix_mask_is_constant_on_cells_and_lam_unbiased():
    x = images(300, 1, 12, 12)
    res = fixed_lam(seeded("gridmix", "elem", 4, n_holes=(3, 3)), 0.3).mix(x)
    blocks = res.mask[:, 0].reshape(300, 3, 4, 3, 4)
    assert bool((blocks == blocks[:, :, :1, :, :1]).all())
    # E[realised lam] = lam (Bernoulli cells): 300 x 9 cells, sd of the mean ~ 0.009
    assert abs(float(res.lam.mean()) - 0.3) < 0.04


def test_gridmix_grid_size_in_range():
    res = fixed_lam(seeded("gridmix", "elem", 2, n_holes=(2, 4)), 0.5).mix(images(64, 1, 12, 12))
    m = res.mask[:, 0]
    # n in {2, 3, 4} divides 12: the mask may change between rows only at a cell border 12 k / n
    rows_change = (m[:, 1:] != m[:, :-1]).any(2)  # [B, 11]: where the mask changes between rows
    allowed = torch.zeros(11, dtype=torch.bool)
    for n in (2, 3, 4):
        for k in range(1, n):
            allowed[12 * k // n - 1] = True
    assert not bool((rows_change & ~allowed).any())


# ---------------------------------------------------------------------------- resizemix


def test_resize_into_boxes_equals_interpolate():
    x = images(3, 2, 16, 12, dtype=torch.float64)
    boxes = np.array([[2, 9, 1, 6], [0, 16, 0, 12], [5, 8, 3, 11]])
    out = resize_into_boxes(x, boxes)
    for i, (y1, y2, x1, x2) in enumerate(boxes):
        ref = F.interpolate(x[i:i + 1], size=(y2 - y1, x2 - x1), mode="bilinear", align_corners=False)
        torch.testing.assert_close(out[i:i + 1, :, y1:y2, x1:x2], ref)


@pytest.mark.parametrize("mode", MODES)
def test_resizemix_pastes_the_resized_partner(mode):
    x = images(5, 3, 20, 20, dtype=torch.float64)
    res = seeded("resizemix", mode, 8).mix(x)
    for i in range(5):
        inside = (res.mask[i, 0] == 0).nonzero()
        y1, x1 = inside.min(0).values.tolist()
        y2, x2 = (inside.max(0).values + 1).tolist()
        side = ((y2 - y1) / 20, (x2 - x1) / 20)
        assert all(0.1 - 0.05 <= s <= 0.8 + 0.05 for s in side)  # tau in scope, up to rounding
        ref = F.interpolate(x[res.index[i]][None], size=(y2 - y1, x2 - x1), mode="bilinear",
                            align_corners=False)
        torch.testing.assert_close(res.images[i:i + 1, :, y1:y2, x1:x2], ref)
        assert math.isclose(float(res.lam[i]), 1 - (y2 - y1) * (x2 - x1) / 400, abs_tol=1e-6)


def test_resizemix_ignores_alpha():
    x = images(4, 3, 16, 16)
    a = seeded("resizemix", "elem", 3, alpha=0.2).mix(x)
    b = seeded("resizemix", "elem", 3, alpha=5.0).mix(x)
    assert torch.equal(a.images, b.images) and torch.equal(a.lam, b.lam)


# ---------------------------------------------------------------------------- smoothmix


@pytest.mark.parametrize("shape", ["square", "circle", "random"])
def test_smoothmix_mask_mean_is_lam_over_the_whole_range(shape):
    lam = np.array([0.02, 0.1, 0.3, 0.45, 0.5, 0.55, 0.7, 0.9, 0.98])
    res = fixed_lam(seeded("smoothmix", "elem", 1, shape=shape), lam).mix(images(9, 1, 48, 48))
    np.testing.assert_allclose(res.lam.numpy(), lam, atol=2e-3)  # only pixel discretisation
    soft = ((res.mask > 0) & (res.mask < 1)).flatten(1).any(1)
    assert bool(soft.all())  # soft edges, not a hard box
    # the shape holds the minority share: the partner for lam >= 1/2, the original below
    m = res.mask[:, 0]
    ring = torch.cat([m[:, 0], m[:, -1], m[:, :, 0], m[:, :, -1]], 1).mean(1)  # outside the shape
    np.testing.assert_array_equal((ring > 0.5).numpy(), lam >= 0.5)


def test_smoothmix_profile_is_a_trapezoid():
    res = fixed_lam(seeded("smoothmix", "batch", 3, softness=1.0), 0.75).mix(images(1, 1, 101, 101, dtype=torch.float64))
    partner = 1 - res.mask[0, 0].double()
    cy, cx = divmod(int(partner.argmax()), 101)
    row = partner[cy]
    # softness 1: a pyramid. Along a row through the apex the weight falls linearly with
    # slope 1 / (W rho) per pixel, rho = 2 k r, r = sqrt(a / (4 (1 + k^2 / 3))), a = 1 - lam
    r = math.sqrt(0.25 / (4 * (1 + 1 / 3)))
    slope = 1 / (101 * 2 * r)
    ramp = row[(row > 0.02) & (row < 0.98)]
    steps = (ramp[1:] - ramp[:-1]).abs()
    assert ramp.numel() > 40
    assert int((steps - slope).abs().gt(1e-9).sum()) <= 1  # only the step across the apex differs


# ---------------------------------------------------------------------------- saliencymix


def spot_images(spots, h=32, w=32, c=3, seed=0):
    x = 0.05 * torch.rand(len(spots), c, h, w, generator=torch.Generator().manual_seed(seed))
    for i, (y, xx) in enumerate(spots):
        x[i, :, y - 1:y + 2, xx - 1:xx + 2] += 1.0
    return x


@pytest.mark.parametrize("h,w", [(32, 32), (96, 80), (20, 50)])
def test_saliency_peak_on_single_bright_spot(h, w):
    spots = [(h // 4, w // 5), (h - 5, w // 2), (h // 2, w - 4)]
    peaks = saliency_peaks(spot_images(spots, h, w))
    scale = max(1.0, max(h, w) / 64)
    for (y, x), (py, px) in zip(spots, peaks.tolist()):
        assert abs(py - y) <= 1.5 * scale and abs(px - x) <= 1.5 * scale


@pytest.mark.parametrize("mode", MODES)
def test_saliencymix_box_centred_on_partner_peak(mode):
    spots = [(8, 8), (20, 12), (12, 22), (22, 22)]
    x = spot_images(spots)
    res = fixed_lam(seeded("saliencymix", mode, 6), 0.9).mix(x)  # 10 x 10 box, fits around all spots
    for i in range(4):
        inside = (res.mask[i, 0] == 0).nonzero().float()
        centre = (inside.min(0).values + inside.max(0).values + 1) / 2  # box centre (pixel edges)
        y, xx = spots[int(res.index[i])]
        assert torch.allclose(centre, torch.tensor([y + 0.5, xx + 0.5]), atol=1.0)
        # the partner's salient content is what gets pasted
        assert float(res.images[i, 0, y, xx]) > 0.9


# ---------------------------------------------------------------------------- mixup_cutmix


def test_mixup_cutmix_switch():
    x = images(200, 1, 8, 8)
    res = seeded("mixup_cutmix", "elem", 9).mix(x)
    m = res.mask.flatten(1)
    constant = (m == m[:, :1]).all(1)
    binary = ((m == 0) | (m == 1)).all(1)
    assert bool((constant | binary).all())
    cut = binary & ~constant
    assert 60 <= int(cut.sum()) <= 140  # switch_prob = 0.5: Binomial(200, .5), sd 7
    # switch_prob 0 / 1 in batch mode: pure mixup (no mask) / pure cutmix (binary mask)
    for s in range(5):
        assert seeded("mixup_cutmix", "batch", s, switch_prob=0.0).mix(x).mask is None
        mask = seeded("mixup_cutmix", "batch", s, switch_prob=1.0).mix(x).mask
        assert mask is not None and bool(((mask == 0) | (mask == 1)).all())
    assert seeded("mixup_cutmix", alpha=0.3).cutmix_alpha == 0.3
    assert seeded("mixup_cutmix", alpha=0.3, cutmix_alpha=2.0).cutmix_alpha == 2.0


# ------------------------------------------------------------------------------ spectral residual
def _spectral_residual_reference(images):
    """The module docstring's formula, literally, in NumPy float64 (complex FFTs, angle, polar)."""
    import math

    x = images.double().numpy()
    g = (0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]) if x.shape[1] == 3 else x.mean(1)
    spec = np.fft.fft2(g)
    amp = np.log(np.abs(spec) + 1e-8)
    local = sum(np.roll(amp, (dy, dx), axis=(1, 2)) for dy in (-1, 0, 1) for dx in (-1, 0, 1)) / 9.0
    sal = np.abs(np.fft.ifft2(np.exp(amp - local + 1j * np.angle(spec)))) ** 2
    h, w = g.shape[1:]
    sigma = max(h, w) / 25.0
    fy, fx = np.fft.fftfreq(h)[:, None], np.fft.fftfreq(w)[None, :]
    return np.fft.ifft2(np.fft.fft2(sal) * np.exp(-2 * math.pi ** 2 * sigma ** 2 * (fy ** 2 + fx ** 2))).real


@pytest.mark.parametrize("shape", [(3, 3, 32, 32), (2, 1, 7, 9), (2, 3, 8, 5), (2, 3, 1, 1), (2, 1, 1, 6),
                                   (2, 3, 6, 1), (2, 3, 33, 20)])
def test_spectral_residual_saliency_equals_the_documented_formula(shape):
    """The real-FFT implementation (Hermitian symmetry, no angle/polar) equals the literal formula
    for even and odd sides, down to 1 pixel."""
    from samix.mixing.saliencymix import spectral_residual_saliency

    x = torch.rand(*shape, generator=torch.Generator().manual_seed(sum(shape)), dtype=torch.float64)
    got = spectral_residual_saliency(x, size=64).numpy()
    ref = _spectral_residual_reference(x)
    assert got.shape == ref.shape
    assert np.abs(got - ref).max() <= 1e-6 * np.abs(ref).max()
