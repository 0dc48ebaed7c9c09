"""Tests of samix.viz: sample photos, the mixing grid (its data and its layout), generic plots."""

from __future__ import annotations

import matplotlib.image as mpimg
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from samix import viz
from samix.mixing import Mixer, MixResult, get_mixer_class, list_mixers
from samix.mixing import registry as mixer_registry

SMALL = 16  # photo side used by the tests (fast)


@pytest.fixture(scope="module")
def pair() -> torch.Tensor:
    return viz.load_sample_photos(SMALL, n=2)


def _dist(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).abs().mean())


# --------------------------------------------------------------------------- photos
def test_load_sample_photos_shape_range_and_distinct():
    photos = viz.load_sample_photos(24, n=4)
    assert photos.shape == (4, 3, 24, 24) and photos.dtype == torch.float32
    assert float(photos.min()) >= 0.0 and float(photos.max()) <= 1.0
    # real, different photos: no constant image, no two alike
    assert float(photos.flatten(1).std(1).min()) > 0.05
    for i in range(4):
        for j in range(i + 1, 4):
            assert _dist(photos[i], photos[j]) > 0.05


def test_load_sample_photos_names_and_grayscale():
    photos = viz.load_sample_photos(SMALL, names=("camera", "chelsea"))
    assert photos.shape == (2, 3, SMALL, SMALL)
    assert torch.equal(photos[0, 0], photos[0, 1]) and torch.equal(photos[0, 0], photos[0, 2])  # gray x3
    assert not torch.equal(photos[1, 0], photos[1, 2])  # colour photo keeps its colours
    # same photo by name or by position
    assert torch.equal(viz.load_sample_photos(SMALL, names=("chelsea",))[0],
                       viz.load_sample_photos(SMALL, n=2)[1])


@pytest.mark.parametrize("kwargs, err", [
    (dict(size=4), ValueError), (dict(size=16.0), TypeError), (dict(n=0), ValueError),
    (dict(n=len(viz.SAMPLE_PHOTOS) + 1), ValueError), (dict(names=("nope",)), ValueError),
    (dict(names="astronaut"), ValueError),
])
def test_load_sample_photos_bad_input(kwargs, err):
    with pytest.raises(err):
        viz.load_sample_photos(**kwargs)


# --------------------------------------------------------------------------- the data of the grid
def test_default_policies_are_the_registered_image_only_ones():
    names = viz.default_policies()
    assert names == [n for n in list_mixers()
                     if not (get_mixer_class(n).needs_model or get_mixer_class(n).needs_pretrained)]
    assert {"mixup", "cutmix"} <= set(names)


def test_mixup_cells_move_from_partner_to_original(pair):
    a, b = pair
    cells = viz.mixing_cells("mixup", pair, lams=(0.1, 0.9))
    low, high = cells.images
    assert _dist(low, b) < _dist(low, a)    # lam = 0.1: mostly B (the partner)
    assert _dist(high, a) < _dist(high, b)  # lam = 0.9: mostly A (the original)
    np.testing.assert_allclose(cells.realised, [0.1, 0.9], atol=1e-6)
    assert cells.masks is None


@settings(max_examples=25, deadline=None)
@given(lam=st.floats(0.0, 1.0))
def test_mixup_cell_is_the_convex_combination(pair, lam):
    a, b = pair
    cell = viz.mixing_cells("mixup", pair, lams=[lam]).images[0]
    torch.testing.assert_close(cell, lam * a + (1 - lam) * b, atol=1e-5, rtol=0)
    # the distance to A shrinks linearly with lam
    assert _dist(cell, a) == pytest.approx((1 - lam) * _dist(a, b), abs=1e-5)


@pytest.mark.parametrize("policy", viz.default_policies())
def test_every_cell_follows_the_mask_convention(pair, policy):
    a, b = pair
    lams = (0.1, 0.5, 0.9)
    cells = viz.mixing_cells(policy, pair, lams=lams, seed=3)
    assert cells.images.shape == (3, 3, SMALL, SMALL)
    assert np.all((cells.realised >= 0) & (cells.realised <= 1))
    if cells.masks is not None:
        m = cells.masks.to(torch.float32)
        np.testing.assert_allclose(cells.realised, cells.masks.mean((1, 2, 3)).numpy(), atol=1e-9)
        if getattr(get_mixer_class(policy), "pixel_aligned", True):
            torch.testing.assert_close(cells.images, m * a + (1 - m) * b, atol=1e-5, rtol=0)
        else:  # the partner is transformed (e.g. resized) first: A is kept exactly where mask == 1
            keep = (m == 1).expand_as(cells.images)
            torch.testing.assert_close(cells.images[keep], a.expand_as(cells.images)[keep], atol=1e-6, rtol=0)
            assert bool((m < 1).any())  # something of B is shown
    # same seed -> same cells (the grid is reproducible)
    again = viz.mixing_cells(policy, pair, lams=lams, seed=3)
    torch.testing.assert_close(again.images, cells.images, atol=0, rtol=0)


def test_cutmix_box_is_fixed_across_columns_and_grows_as_lam_falls(pair):
    cells = viz.mixing_cells("cutmix", pair, lams=(0.2, 0.5, 0.8), seed=1)
    partner_area = 1 - cells.masks.mean((1, 2, 3))  # share of B
    assert partner_area[0] > partner_area[1] > partner_area[2]
    # same centre draw in every column: the smaller boxes lie inside the bigger ones
    inside = cells.masks < 0.5
    assert bool((inside[2] <= inside[1]).all()) and bool((inside[1] <= inside[0]).all())


class _OwnBox(Mixer):
    """A policy that ignores the requested lam (like resizemix): always the same quarter box."""

    def _mix(self, images, index, lam):
        h, w = images.shape[-2:]
        mask = torch.ones(images.shape[0], 1, h, w, dtype=images.dtype)
        mask[:, :, : h // 2, : w // 2] = 0
        mixed = mask * images + (1 - mask) * images[index]
        return MixResult(mixed, mask.mean((1, 2, 3)).float(), index, mask)


class _NeedsModel(Mixer):
    needs_model = True


def test_policy_ignoring_lam_shows_its_realised_lam(pair, monkeypatch):
    monkeypatch.setitem(mixer_registry._MIXERS, "_ownbox", _OwnBox)
    cells = viz.mixing_cells("_ownbox", pair, lams=(0.1, 0.9))
    np.testing.assert_allclose(cells.realised, [0.75, 0.75])


def test_mixing_cells_bad_input(pair, monkeypatch):
    monkeypatch.setitem(mixer_registry._MIXERS, "_needs_model", _NeedsModel)
    with pytest.raises(ValueError, match="needs a model"):
        viz.mixing_cells("_needs_model", pair)
    with pytest.raises(ValueError, match="known mixers"):
        viz.mixing_cells("no_such_policy", pair)
    with pytest.raises(ValueError, match="lams"):
        viz.mixing_cells("mixup", pair, lams=(0.5, 1.5))
    with pytest.raises(ValueError, match="lams"):
        viz.mixing_cells("mixup", pair, lams=())
    with pytest.raises(ValueError, match="at least 2"):
        viz.mixing_cells("mixup", pair[:1])
    with pytest.raises(TypeError, match="floating point"):
        viz.mixing_cells("mixup", (pair * 255).to(torch.uint8))


class _NeedsFile(Mixer):
    needs_pretrained = True


def test_default_policies_skip_policies_that_need_a_model_or_a_file(monkeypatch):
    monkeypatch.setitem(mixer_registry._MIXERS, "_needs_model", _NeedsModel)
    monkeypatch.setitem(mixer_registry._MIXERS, "_needs_file", _NeedsFile)
    assert {"_needs_model", "_needs_file"} <= set(list_mixers())
    assert not {"_needs_model", "_needs_file"} & set(viz.default_policies())


# --------------------------------------------------------------------------- the PNG of the grid
def _png_shape(path):
    img = mpimg.imread(path)
    assert img.ndim == 3 and img.shape[2] in (3, 4) and np.isfinite(img).all()
    assert float(img[..., :3].std()) > 0.01  # not a blank canvas
    return img.shape[:2]


def test_mixing_grid_png_layout_grows_with_rows_and_columns(pair, tmp_path):
    kw = dict(photos=pair, dpi=40, cell_inches=1.0)
    base = viz.mixing_grid(tmp_path / "a.png", ["mixup", "cutmix"], lams=(0.2, 0.8), **kw)
    more_cols = viz.mixing_grid(tmp_path / "b.png", ["mixup", "cutmix"], lams=(0.2, 0.4, 0.6, 0.8), **kw)
    more_rows = viz.mixing_grid(tmp_path / "sub" / "c.png", ["mixup", "cutmix", "mixup"], lams=(0.2, 0.8),
                                **kw)
    h0, w0 = _png_shape(base)
    h1, w1 = _png_shape(more_cols)
    h2, w2 = _png_shape(more_rows)
    assert h1 == h0 and w1 == w0 + 2 * 40  # two more columns of 1 inch at 40 dpi
    assert w2 == w0 and h2 == h0 + 40      # one more row
    assert more_rows.parent.name == "sub"


def test_mixing_grid_draws_the_cells_of_mixing_cells(pair, tmp_path, monkeypatch):
    calls = []
    real = viz.mixing_cells

    def spy(policy, photos, lams, seed, **kw):
        calls.append((policy, tuple(lams), seed))
        return real(policy, photos, lams, seed, **kw)

    monkeypatch.setattr(viz, "mixing_cells", spy)
    out = viz.mixing_grid(tmp_path / "g.png", ["cutmix", "mixup"], lams=(0.3, 0.7), photos=pair, seed=5,
                          dpi=30)
    assert out == tmp_path / "g.png" and out.stat().st_size > 0
    assert calls == [("cutmix", (0.3, 0.7), 5), ("mixup", (0.3, 0.7), 5)]


def test_mixing_grid_palette_png_is_smaller_and_keeps_the_layout(tmp_path):
    photos = viz.load_sample_photos(48, n=2)
    kw = dict(policies=["mixup", "cutmix"], lams=(0.3, 0.7), photos=photos, dpi=50)
    full = viz.mixing_grid(tmp_path / "full.png", **kw)
    pal = viz.mixing_grid(tmp_path / "pal.png", colors=64, **kw)
    assert _png_shape(pal) == _png_shape(full)
    assert pal.stat().st_size < full.stat().st_size
    from PIL import Image

    with Image.open(pal) as im:
        assert im.mode == "P" and len(im.getcolors(256)) <= 64
    with pytest.raises(ValueError, match="colors"):
        viz.mixing_grid(tmp_path / "x.png", colors=1000, **kw)


def test_mixing_grid_single_row_and_errors(pair, tmp_path):
    _png_shape(viz.mixing_grid(tmp_path / "one.png", "mixup", lams=(0.5,), photos=pair, dpi=30))
    with pytest.raises(ValueError, match="at least one policy"):
        viz.mixing_grid(tmp_path / "x.png", [], photos=pair)
    with pytest.raises(TypeError, match="path"):
        viz.mixing_grid(123, ["mixup"], photos=pair)


# --------------------------------------------------------------------------- generic helpers
def test_save_image_grid_layout_and_titles(tmp_path):
    imgs = torch.rand(5, 3, 8, 8)
    h_a, w_a = _png_shape(viz.save_image_grid(tmp_path / "a.png", imgs, nrow=5, dpi=20))
    h_b, w_b = _png_shape(viz.save_image_grid(tmp_path / "b.png", imgs, nrow=2, dpi=20))
    assert w_a > w_b and h_b > h_a  # 1 x 5 vs 3 x 2
    titled = viz.save_image_grid(tmp_path / "c.png", list(imgs), nrow=5, titles=list("abcde"), dpi=20)
    h_c, _ = _png_shape(titled)
    assert h_c > h_a  # room for the titles
    _png_shape(viz.save_image_grid(tmp_path / "gray.png", torch.rand(3, 1, 8, 8) * 2 - 0.5, nrow=3, dpi=20))


@pytest.mark.parametrize("images, nrow, titles, err", [
    (torch.rand(2, 3, 8, 8), 0, None, ValueError),
    (torch.rand(2, 3, 8, 8), 2, ["only one"], ValueError),
    (torch.rand(2, 2, 8, 8), 2, None, ValueError),
    (torch.zeros(2, 3, 8, 8, dtype=torch.uint8), 2, None, TypeError),
    (np.zeros((2, 3, 8, 8)), 2, None, TypeError),
    ([], 2, None, ValueError),
])
def test_save_image_grid_bad_input(tmp_path, images, nrow, titles, err):
    with pytest.raises(err):
        viz.save_image_grid(tmp_path / "x.png", images, nrow=nrow, titles=titles)


def test_plot_curves(tmp_path):
    out = viz.plot_curves(tmp_path / "curves.png", {"train": [2.0, 1.5, 1.1, 0.9], "val": [2.1, 1.8, float("nan")]},
                          xlabel="epoch", ylabel="loss", title="loss", dpi=30)
    _png_shape(out)
    _png_shape(viz.plot_curves(tmp_path / "x.png", {"lr": [0.1, 0.05]}, x=[0, 10], dpi=30))
    with pytest.raises(ValueError, match="non-empty"):
        viz.plot_curves(tmp_path / "e.png", {})
    with pytest.raises(ValueError, match="empty"):
        viz.plot_curves(tmp_path / "e.png", {"a": []})
    with pytest.raises(TypeError, match="series"):
        viz.plot_curves(tmp_path / "e.png", {"a": ["x", "y"]})
    with pytest.raises(ValueError, match="x must have"):
        viz.plot_curves(tmp_path / "e.png", {"a": [1, 2, 3]}, x=[0, 1])


# --------------------------------------------------------------------------- learned-mask grid
def _masks(n_lam, n_pairs, h, w, seed=0):
    return torch.rand(n_lam, n_pairs, 1, h, w, generator=torch.Generator().manual_seed(seed))


def test_mask_grid_cells_pairs_and_formula():
    g = torch.Generator().manual_seed(0)
    images = torch.rand(5, 3, 8, 8, generator=g)  # 2 pairs + a spare image
    masks = _masks(3, 2, 8, 8)
    a, b, m, mixed = viz.mask_grid_cells(images, masks)
    assert torch.equal(a, images[[0, 2]]) and torch.equal(b, images[[1, 3]])  # pairs (0, 1), (2, 3)
    torch.testing.assert_close(mixed, m * a + (1 - m) * b)
    assert mixed.shape == (3, 2, 3, 8, 8)
    # a mask of ones shows A, of zeros shows B
    _, _, _, ext = viz.mask_grid_cells(images, torch.stack([torch.ones(2, 1, 8, 8), torch.zeros(2, 1, 8, 8)]))
    torch.testing.assert_close(ext[0], a)
    torch.testing.assert_close(ext[1], b)


def test_mask_grid_cells_normalised_images_and_small_masks():
    g = torch.Generator().manual_seed(1)
    raw = torch.rand(4, 1, 8, 8, generator=g)
    normalised = (raw - 0.3) / 0.2  # outside [0, 1]: rescaled by one affine map for display
    masks = _masks(2, 2, 4, 4)      # half resolution: resized to 8 x 8
    a, b, m, mixed = viz.mask_grid_cells(normalised, masks)
    assert float(torch.cat([a, b]).min()) == pytest.approx(0.0, abs=1e-6)
    assert float(torch.cat([a, b]).max()) == pytest.approx(1.0, abs=1e-6)
    assert m.shape == (2, 2, 1, 8, 8)
    # the common map commutes with mixing: display(mix) == mix(display)
    lo, hi = float(normalised.min()), float(normalised.max())
    mix_raw = m * normalised[0::2] + (1 - m) * normalised[1::2]
    torch.testing.assert_close(mixed, (mix_raw - lo) / (hi - lo), atol=1e-5, rtol=0)


def test_save_mask_grid_png_layout(tmp_path):
    images = torch.rand(6, 3, 8, 8)
    lams = [0.0, 0.5, 1.0]
    kw = dict(dpi=30, cell_inches=1.0)
    h0, w0 = _png_shape(viz.save_mask_grid(tmp_path / "a.png", images[:4], _masks(3, 2, 8, 8), lams, **kw))
    h1, w1 = _png_shape(viz.save_mask_grid(tmp_path / "b.png", images, _masks(3, 3, 8, 8), lams, **kw))
    h2, w2 = _png_shape(viz.save_mask_grid(tmp_path / "c.png", images[:4], _masks(4, 2, 8, 8), lams + [0.7], **kw))
    assert (h1, w1) == (h0 + 2 * 30, w0)  # one more pair = two more rows (mix + mask)
    assert (h2, w2) == (h0, w0 + 30)      # one more lam = one more column
    titled = viz.save_mask_grid(tmp_path / "m" / "t.png", images[:4], _masks(3, 2, 8, 8)[:, :, 0], lams,
                                title="automix: learned masks, epoch 1", **kw)
    assert _png_shape(titled)[0] > h0


@pytest.mark.parametrize("images, masks, lams, match", [
    (torch.rand(3, 3, 8, 8), _masks(2, 2, 8, 8), [0.2, 0.8], "2 \\* P"),
    (torch.rand(4, 3, 8, 8), _masks(2, 2, 8, 8), [0.5], "one value per mask"),
    (torch.rand(4, 3, 8, 8), torch.rand(2, 2, 3, 8, 8), [0.2, 0.8], "one channel"),
    (torch.rand(4, 3, 8, 8), torch.rand(2, 8, 8), [0.2, 0.8], "masks must be"),
    (torch.rand(4, 2, 8, 8), _masks(2, 2, 8, 8), [0.2, 0.8], "images must be"),
])
def test_save_mask_grid_bad_input(tmp_path, images, masks, lams, match):
    with pytest.raises(ValueError, match=match):
        viz.save_mask_grid(tmp_path / "x.png", images, masks, lams)


def test_curves_join_the_epochs_that_have_a_value(tmp_path, monkeypatch):
    """A metric evaluated every 10 epochs (NaN in between) is drawn through its values, not as isolated NaN-
    separated segments that matplotlib would not show."""
    import matplotlib.axes
    import numpy as np

    from samix.viz import plot_curves

    seen = []
    orig = matplotlib.axes.Axes.plot

    def spy(self, x, y, *a, **k):
        seen.append((np.asarray(x), np.asarray(y)))
        return orig(self, x, y, *a, **k)

    monkeypatch.setattr(matplotlib.axes.Axes, "plot", spy)
    vals = [float("nan")] * 30
    vals[9], vals[19], vals[29] = 50.0, 60.0, 70.0
    plot_curves(tmp_path / "c.png", {"knn": vals}, x=list(range(1, 31)))
    x, y = seen[0]
    assert x.tolist() == [10, 20, 30] and y.tolist() == [50.0, 60.0, 70.0]


def test_model_guided_policies_are_drawn_on_photos_with_a_stand_in_signal(tmp_path):
    """puzzlemix and attentivemix read the model; on photos alone the grid feeds them a model-free stand-in
    (spectral-residual saliency) and the realised share is the mask's mean."""
    pytest.importorskip("gco")
    from samix.cli import main

    pair = torch.rand(2, 3, 32, 32)
    for policy in ("puzzlemix", "attentivemix"):
        cells = viz.mixing_cells(policy, pair, lams=(0.3, 0.7))
        assert cells.masks is not None
        assert np.allclose(cells.realised, cells.masks.flatten(1).mean(1).numpy())
    out = tmp_path / "g.png"
    assert main(["show", "--policies", "cutmix", "puzzlemix", "--out", str(out)]) == 0
    assert out.stat().st_size > 1000


def test_token_policies_are_drawn_on_photos_with_a_token_grid_that_divides_the_image():
    """SMMix needs a square token grid dividing the image: the attention stand-in is 8 x 8 at 128 px (a ViT/16's
    grid), so its window is a whole number of 16-px tokens; TokenMix's realised share follows lam."""
    photos = torch.rand(2, 3, 128, 128)
    from samix.viz.grid import stand_in_signals

    att = stand_in_signals(("attention",), photos)["attention"]
    assert att.shape == (2, 8, 8)
    cells = viz.mixing_cells("smmix", photos, lams=(0.5,))
    mask = cells.masks[0, 0]
    rows = (mask < 1).any(1).nonzero().flatten()
    assert len(rows) > 0 and len(rows) % 16 == 0 and int(rows.min()) % 16 == 0
    tok = viz.mixing_cells("tokenmix", photos, lams=(0.2, 0.8))
    assert np.allclose(tok.realised, [0.2, 0.8], atol=0.05)
