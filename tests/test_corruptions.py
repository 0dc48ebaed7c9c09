"""Tests of samix.evaluate.corruptions: the 15 CIFAR-C corruptions in torch."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from samix.evaluate import CORRUPTION_CATEGORIES, CORRUPTION_PARAMS, SEVERITIES, corrupt, list_corruptions
from samix.evaluate import corruptions as C

BENCHMARK = [
    "gaussian_noise", "shot_noise", "impulse_noise",
    "defocus_blur", "glass_blur", "motion_blur", "zoom_blur",
    "snow", "frost", "fog", "brightness",
    "contrast", "elastic_transform", "pixelate", "jpeg_compression",
]  # fmt: skip
RANDOM = {"gaussian_noise", "shot_noise", "impulse_noise", "glass_blur", "motion_blur", "snow", "frost", "fog",
          "elastic_transform"}  # fmt: skip
SPATIAL = ["defocus_blur", "glass_blur", "motion_blur", "zoom_blur", "elastic_transform", "pixelate"]


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def smooth_images(b: int = 4, c: int = 3, h: int = 32, w: int = 32, seed: int = 0) -> torch.Tensor:
    """Natural-ish test images: smooth random colour fields plus a sharp edge, inside (0.1, 0.9)."""
    g = gen(seed)
    low = torch.rand(b, c, 6, 6, generator=g)
    x = F.interpolate(low, size=(h, w), mode="bicubic", align_corners=False).clamp(0, 1)
    x[..., :, : w // 3] = 0.3 * x[..., :, : w // 3]  # an edge
    return 0.1 + 0.8 * x


def mad(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).abs().mean())


# ------------------------------------------------------------------------------------------ registry


def test_registry_lists_the_benchmark_in_order_with_five_severities():
    assert list_corruptions() == BENCHMARK
    assert SEVERITIES == (1, 2, 3, 4, 5)
    for name in BENCHMARK:
        assert len(CORRUPTION_PARAMS[name]) == 5
    grouped = [n for names in CORRUPTION_CATEGORIES.values() for n in names]
    assert sorted(grouped) == sorted(BENCHMARK)  # the four groups partition the 15


def test_parameter_tables_are_the_cifar_generator_values():
    # Spot checks against make_cifar_c.py (hendrycks/robustness).
    assert CORRUPTION_PARAMS["gaussian_noise"] == (0.04, 0.06, 0.08, 0.09, 0.10)
    assert CORRUPTION_PARAMS["shot_noise"] == (500, 250, 100, 75, 50)
    assert CORRUPTION_PARAMS["jpeg_compression"] == (80, 65, 58, 50, 40)
    assert CORRUPTION_PARAMS["pixelate"] == (0.95, 0.9, 0.85, 0.75, 0.65)
    # np.arange(1, 1 + m, 0.01) lengths, floating point included
    assert CORRUPTION_PARAMS["zoom_blur"] == tuple(len(np.arange(1, m, 0.01)) for m in (1.06, 1.11, 1.16, 1.21, 1.26))
    with pytest.raises(TypeError):
        CORRUPTION_PARAMS["contrast"] = (1, 1, 1, 1, 1)  # read-only view


# ------------------------------------------------------------------------------------ the contract


@pytest.mark.parametrize("name", BENCHMARK)
def test_shape_dtype_range_and_determinism(name):
    x = smooth_images(2)
    for severity in (1, 5):
        a = corrupt(x, name, severity, generator=gen(3))
        b = corrupt(x, name, severity, generator=gen(3))
        assert a.shape == x.shape and a.dtype == x.dtype and a.device == x.device
        assert torch.isfinite(a).all()
        assert float(a.min()) >= 0.0 and float(a.max()) <= 1.0
        assert torch.equal(a, b), "same seed must give the same corruption"
        assert not torch.equal(a, x), "a corruption must change the image"
    if name in RANDOM:
        c = corrupt(x, name, 5, generator=gen(4))
        assert not torch.equal(a, c), "another seed must give other draws"
        # each image of the batch gets its own draws: corrupting a pair of identical images differs
        twins = x[:1].expand(2, -1, -1, -1).contiguous()
        t = corrupt(twins, name, 5, generator=gen(5))
        assert not torch.equal(t[0], t[1])


def test_global_rng_is_used_without_generator():
    x = smooth_images(1)
    torch.manual_seed(11)
    a = corrupt(x, "gaussian_noise", 2)
    torch.manual_seed(11)
    b = corrupt(x, "gaussian_noise", 2)
    assert torch.equal(a, b)


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16, torch.float16])
def test_dtype_is_kept_for_every_corruption(dtype):
    x = smooth_images(1, h=16, w=16).to(dtype)
    for name in BENCHMARK:
        y = corrupt(x, name, 3, generator=gen())
        assert y.dtype == dtype, name
        assert float(y.min()) >= 0 and float(y.max()) <= 1, name


def test_channels_last_is_kept():
    x = smooth_images(2).contiguous(memory_format=torch.channels_last)
    for name in ("gaussian_noise", "defocus_blur", "elastic_transform", "jpeg_compression"):
        y = corrupt(x, name, 2, generator=gen())
        assert y.is_contiguous(memory_format=torch.channels_last), name
        ref = corrupt(x.contiguous(), name, 2, generator=gen())
        torch.testing.assert_close(y, ref)


@pytest.mark.parametrize("shape", [(2, 1, 28, 28), (1, 3, 20, 44), (1, 1, 7, 5)])
def test_any_size_and_one_channel(shape):
    g = gen(1)
    x = torch.rand(shape, generator=g)
    for name in BENCHMARK:
        y = corrupt(x, name, 5, generator=gen())
        assert y.shape == x.shape, name
        assert float(y.min()) >= 0 and float(y.max()) <= 1, name


@settings(max_examples=25, deadline=None)
@given(
    name=st.sampled_from(BENCHMARK),
    severity=st.integers(1, 5),
    seed=st.integers(0, 2**31 - 1),
    channels=st.sampled_from([1, 3]),
    h=st.integers(4, 24),
    w=st.integers(4, 24),
)
def test_property_output_is_a_valid_image(name, severity, seed, channels, h, w):
    x = torch.rand(2, channels, h, w, generator=gen(seed))
    y = corrupt(x, name, severity, generator=gen(seed))
    assert y.shape == x.shape and y.dtype == x.dtype
    assert torch.isfinite(y).all() and float(y.min()) >= 0 and float(y.max()) <= 1
    assert torch.equal(y, corrupt(x, name, severity, generator=gen(seed)))


# --------------------------------------------------------------------------------- errors


def test_bad_name_and_severity_name_the_allowed_values():
    x = smooth_images(1)
    with pytest.raises(ValueError, match="gaussian_noise.*jpeg_compression"):
        corrupt(x, "speckle", 1)
    for bad in (0, 6, -1, 2.0, True, "3", None):
        with pytest.raises(ValueError, match=r"\[1, 2, 3, 4, 5\]"):
            corrupt(x, "contrast", bad)


def test_bad_images_and_generator_raise_clear_errors():
    x = smooth_images(1)
    with pytest.raises(TypeError, match="images"):
        corrupt(x.numpy(), "contrast", 1)
    with pytest.raises(TypeError, match="floating"):
        corrupt((x * 255).to(torch.uint8), "contrast", 1)
    with pytest.raises(ValueError, match="4-D"):
        corrupt(x[0], "contrast", 1)
    with pytest.raises(ValueError, match="1 or 3 channels"):
        corrupt(x[:, :2], "contrast", 1)
    with pytest.raises(ValueError, match=r"un-normalised.*\[0, 1\]"):
        corrupt((x - 0.5) / 0.25, "contrast", 1)
    with pytest.raises(TypeError, match="generator"):
        corrupt(x, "gaussian_noise", 1, generator=np.random.default_rng(0))


# ------------------------------------------------------------------------------ severity ordering


MONOTONE = ["gaussian_noise", "shot_noise", "impulse_noise", "defocus_blur", "zoom_blur", "fog", "brightness",
            "contrast", "jpeg_compression"]  # fmt: skip


@pytest.mark.parametrize("name", MONOTONE)
def test_change_grows_with_severity(name):
    x = smooth_images(4)
    d = [mad(corrupt(x, name, s, generator=gen(s)), x) for s in SEVERITIES]
    assert all(b > a for a, b in zip(d, d[1:])), d


def test_pixelate_loses_more_detail_with_severity():
    # On smooth images non-integer BOX ratios can cancel out (32->20->32 vs 32->24->32), so measure
    # on white noise, where every lost sample is lost detail.
    x = torch.rand(4, 3, 32, 32, generator=gen(9))
    d = [mad(corrupt(x, "pixelate", s), x) for s in SEVERITIES]
    assert all(b > a for a, b in zip(d, d[1:])), d


@pytest.mark.parametrize("name", ["motion_blur", "snow", "frost"])
def test_severity_five_changes_more_than_severity_one(name):
    # Not strictly monotone in the benchmark's tables (motion blur 3 and 4 differ only in a radius
    # beyond the kernel's mass; frost trades image weight for frost weight), but 5 beats 1.
    x = smooth_images(4)
    assert mad(corrupt(x, name, 5, generator=gen()), x) > mad(corrupt(x, name, 1, generator=gen()), x)


def test_elastic_severity_trades_affine_for_elastic_deformation():
    # The generator's tables: the affine jitter shrinks with severity, the elastic field grows.
    alpha = [p[0] for p in CORRUPTION_PARAMS["elastic_transform"]]
    jitter = [p[2] for p in CORRUPTION_PARAMS["elastic_transform"]]
    assert alpha[0] == 0 and alpha == sorted(alpha) and jitter == sorted(jitter, reverse=True)
    x = smooth_images(2)
    y = corrupt(x, "elastic_transform", 1, generator=gen())
    assert mad(y, x) > 0.005  # severity 1 is a pure random affine warp, not the identity


# ------------------------------------------------------------------------ what each one must keep


@pytest.mark.parametrize("name", SPATIAL)
def test_spatial_corruptions_keep_a_constant_image(name):
    x = torch.full((2, 3, 32, 32), 0.37)
    # glass blur truncates to 8 bits between its steps, like the generator's np.uint8
    expected = torch.floor(x * 255) / 255 if name == "glass_blur" else x
    for s in SEVERITIES:
        torch.testing.assert_close(corrupt(x, name, s, generator=gen()), expected, atol=1e-5, rtol=0)


def test_gaussian_noise_has_the_table_std():
    x = torch.full((4, 3, 32, 32), 0.5)
    for s, std in zip(SEVERITIES, CORRUPTION_PARAMS["gaussian_noise"]):
        r = corrupt(x, "gaussian_noise", s, generator=gen(s)) - x
        assert abs(float(r.mean())) < 0.01
        assert float(r.std()) == pytest.approx(std, rel=0.05)


def test_shot_noise_is_poisson_with_the_table_rate():
    x = torch.full((4, 3, 32, 32), 0.5)
    c = CORRUPTION_PARAMS["shot_noise"][4]
    y = corrupt(x, "shot_noise", 5, generator=gen())
    assert float(y.mean()) == pytest.approx(0.5, abs=0.01)  # unbiased
    assert float(y.var()) == pytest.approx(0.5 / c, rel=0.1)  # Var(Poisson(x c) / c) = x / c
    assert torch.allclose(y * c, (y * c).round(), atol=1e-4)  # multiples of 1/c


def test_impulse_noise_flips_the_table_share_to_salt_or_pepper():
    x = torch.full((4, 3, 32, 32), 0.5)
    amount = CORRUPTION_PARAMS["impulse_noise"][4]
    y = corrupt(x, "impulse_noise", 5, generator=gen())
    changed = y != 0.5
    assert float(changed.float().mean()) == pytest.approx(amount, rel=0.2)
    assert set(torch.unique(y[changed]).tolist()) <= {0.0, 1.0}
    salt = float((y == 1).float().sum() / changed.float().sum())
    assert 0.4 < salt < 0.6


def test_pixel_parameters_scale_up_from_cifar_but_never_down():
    assert C._scale(torch.zeros(1, 3, 32, 32)) == 1.0
    assert C._scale(torch.zeros(1, 1, 28, 28)) == 1.0  # smaller images keep CIFAR's pixel values
    assert C._scale(torch.zeros(1, 3, 64, 96)) == 2.0
    x28 = smooth_images(4, h=28, w=28)
    d = [mad(corrupt(x28, "defocus_blur", s), x28) for s in SEVERITIES]
    assert all(b > a for a, b in zip(d, d[1:])), d
    x64 = smooth_images(2, h=64, w=64)
    small = F.avg_pool2d(corrupt(x64, "motion_blur", 5, generator=gen()), 2)  # blur scales with the image
    ref = corrupt(F.avg_pool2d(x64, 2), "motion_blur", 5, generator=gen())
    assert mad(small, ref) < 0.5 * mad(F.avg_pool2d(x64, 2), ref)


def test_defocus_kernel_is_a_normalised_symmetric_disk():
    for radius, alias in CORRUPTION_PARAMS["defocus_blur"]:
        k = C._disk_kernel(float(radius), float(alias))
        assert float(k.sum()) == pytest.approx(1.0, abs=1e-9)
        torch.testing.assert_close(k, k.flip(0))
        torch.testing.assert_close(k, k.t())
        centre = k.shape[0] // 2
        assert k.shape[0] % 2 == 1 and float(k[centre, centre]) == float(k.max())  # peak at the centre
        if radius >= 1:  # a disk: the corners of its support are (nearly) empty
            assert float(k[0, 0]) < 1e-6
        else:  # sub-pixel radius: just the 3x3 anti-aliasing Gaussian
            assert k.shape == (3, 3) and float(k[0, 0]) > 0


def test_glass_shuffle_equals_the_sequential_raster_loop():
    """The wave schedule must reproduce the generator's sequential swap loop exactly."""
    for delta, h, w in [(1, 9, 9), (2, 11, 8), (1, 6, 13)]:
        x = torch.rand(2, 3, h, w, generator=gen(delta))
        g = gen(7)
        dy = torch.randint(-delta, delta, (2, h, w), generator=g)
        dx = torch.randint(-delta, delta, (2, h, w), generator=g)
        fast = C._swap_pixels(x, delta, dy, dx)
        ref = x.clone()
        for b in range(2):
            for row in range(h - delta, delta, -1):
                for col in range(w - delta, delta, -1):
                    r2, c2 = row + int(dy[b, row, col]), col + int(dx[b, row, col])
                    tmp = ref[b, :, row, col].clone()
                    ref[b, :, row, col] = ref[b, :, r2, c2]
                    ref[b, :, r2, c2] = tmp
        assert torch.equal(fast, ref)


def test_motion_blur_smears_along_the_angle_one_sided():
    x = torch.zeros(2, 1, 21, 21)
    x[:, :, 10, 10] = 1.0
    y = C._motion_blur(x, radius=4, sigma=2, angles_deg=torch.tensor([0.0, 90.0]))
    # angle 0: out(p) gathers x(p + (i, 0)), so the dot spreads to the left along its row
    nz0 = y[0, 0].nonzero().tolist()
    assert {r for r, _ in nz0} == {10} and max(c for _, c in nz0) == 10 and min(c for _, c in nz0) == 2
    # angle 90: along the column, upwards
    nz1 = y[1, 0].nonzero().tolist()
    assert {c for _, c in nz1} == {10} and max(r for r, _ in nz1) == 10
    torch.testing.assert_close(y.sum((1, 2, 3)), torch.ones(2, dtype=y.dtype))  # mass kept inside


def test_brightness_matches_an_hsv_round_trip_and_raises_the_mean():
    skcolor = pytest.importorskip("skimage.color")
    x = smooth_images(2, h=16, w=16)
    x[0, :, 0, 0] = 0.0  # a black pixel: becomes grey
    delta = CORRUPTION_PARAMS["brightness"][2]
    y = corrupt(x, "brightness", 3)
    for i in range(2):
        hsv = skcolor.rgb2hsv(x[i].permute(1, 2, 0).double().numpy())
        hsv[..., 2] = np.clip(hsv[..., 2] + delta, 0, 1)
        ref = torch.from_numpy(skcolor.hsv2rgb(hsv)).permute(2, 0, 1).float()
        torch.testing.assert_close(y[i], ref, atol=1e-5, rtol=0)
    assert float(y.mean()) > float(x.mean())
    assert bool((y >= x - 1e-6).all())


def test_contrast_keeps_the_channel_mean_and_scales_the_std():
    x = smooth_images(2)
    for s, c in zip(SEVERITIES, CORRUPTION_PARAMS["contrast"]):
        y = corrupt(x, "contrast", s)
        torch.testing.assert_close(y.mean((2, 3)), x.mean((2, 3)), atol=1e-6, rtol=0)
        torch.testing.assert_close(y.std((2, 3)), c * x.std((2, 3)), atol=1e-6, rtol=1e-5)


def test_pixelate_makes_constant_blocks_and_matches_pil_box():
    Image = pytest.importorskip("PIL.Image")
    x = (smooth_images(2, h=32, w=32) * 255).round() / 255
    for s, factor in zip(SEVERITIES, CORRUPTION_PARAMS["pixelate"]):
        y = corrupt(x, "pixelate", s)
        small = int(32 * factor)
        # at most `small` distinct columns/rows: runs of equal neighbours (the "blocks")
        col_changes = (y[..., :, 1:] != y[..., :, :-1]).any(dim=(1, 2)).sum(1)
        row_changes = (y[..., 1:, :] != y[..., :-1, :]).any(dim=(1, 3)).sum(1)
        assert int(col_changes.max()) <= small - 1 and int(row_changes.max()) <= small - 1
        for i in range(2):
            im = Image.fromarray((x[i].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8))
            im = im.resize((small, small), Image.BOX).resize((32, 32), Image.BOX)
            ref = torch.from_numpy(np.array(im)).permute(2, 0, 1).float() / 255
            assert float((y[i] - ref).abs().max()) <= 1.01 / 255  # PIL rounds to uint8 in between


def test_jpeg_matches_pil_at_the_benchmark_qualities():
    Image = pytest.importorskip("PIL.Image")
    x = (smooth_images(2) * 255).round() / 255
    for s, q in zip(SEVERITIES, CORRUPTION_PARAMS["jpeg_compression"]):
        y = corrupt(x, "jpeg_compression", s)
        for i in range(2):
            buf = io.BytesIO()
            Image.fromarray((x[i].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)).save(buf, "JPEG", quality=q)
            ref = torch.from_numpy(np.array(Image.open(buf))).permute(2, 0, 1).float() / 255
            assert float((y[i] - ref).abs().max()) <= 1.01 / 255


def test_snow_only_brightens():
    x = smooth_images(2)
    for s in (1, 5):
        y = corrupt(x, "snow", s, generator=gen())
        assert bool((y >= x - 1e-6).all())  # whitening and additive flakes never darken
        assert float(y.mean()) > float(x.mean())


def test_frost_blends_the_table_weights_with_a_blue_white_texture():
    black = torch.zeros(2, 3, 32, 32)
    for s, (a, b) in zip(SEVERITIES, CORRUPTION_PARAMS["frost"]):
        tex = C._frost_texture(black, gen(s))
        assert float(tex.min()) >= 0 and float(tex.max()) <= 1
        assert bool((tex[:, 2] >= tex[:, 0]).all())  # tinted blue
        assert 0.3 < float(tex.mean()) < 0.7
        torch.testing.assert_close(corrupt(black, "frost", s, generator=gen(s)), (b * tex).clamp(0, 1))
        x = smooth_images(2)
        torch.testing.assert_close(corrupt(x, "frost", s, generator=gen(s)), (a * x + b * tex).clamp(0, 1))


def test_fog_never_exceeds_the_image_maximum_and_keeps_black():
    x = smooth_images(2)
    y = corrupt(x, "fog", 5, generator=gen())
    assert bool((y.amax((1, 2, 3)) <= x.amax((1, 2, 3)) + 1e-6).all())  # (x + c f) M / (M + c) <= M
    assert float(y.std((2, 3)).mean()) < float(x.std((2, 3)).mean())  # haze flattens
    black = torch.zeros(1, 3, 16, 16)
    assert torch.equal(corrupt(black, "fog", 3, generator=gen()), black)


def test_plasma_fractal_is_normalised_and_seeded():
    ref = torch.zeros(1)
    f = C._plasma_fractal(3, 32, 32, 2.0, gen(1), ref)
    assert f.shape == (3, 1, 32, 32)
    torch.testing.assert_close(f.amin((1, 2, 3)), torch.zeros(3))
    torch.testing.assert_close(f.amax((1, 2, 3)), torch.ones(3))
    assert torch.equal(f, C._plasma_fractal(3, 32, 32, 2.0, gen(1), ref))
    # a larger decay gives a smoother map (smaller neighbour differences)
    rough = C._plasma_fractal(8, 32, 32, 1.5, gen(2), ref).diff(dim=-1).abs().mean()
    smooth = C._plasma_fractal(8, 32, 32, 3.0, gen(2), ref).diff(dim=-1).abs().mean()
    assert float(smooth) < float(rough)


def test_zoom_blur_keeps_the_centre_and_blurs_the_border_more():
    x = smooth_images(2, h=33, w=33)
    y = corrupt(x, "zoom_blur", 5)
    centre = (y[..., 14:19, 14:19] - x[..., 14:19, 14:19]).abs().mean()
    border = (y[..., :5, :] - x[..., :5, :]).abs().mean()
    assert float(centre) < float(border)
