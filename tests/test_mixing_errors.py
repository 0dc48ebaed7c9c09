"""Every bad input to a mixer raises ValueError/TypeError with a message naming the argument."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch

from samix.mixing import build_mixer, get_mixer_class, list_mixers

IMAGE_POLICIES = [n for n in list_mixers()
                  if not (get_mixer_class(n).needs_model or get_mixer_class(n).needs_pretrained)]


def good_images(b=4):
    return torch.rand(b, 3, 8, 8)


# ---------------------------------------------------------------------------- registry


@pytest.mark.parametrize("name", ["nope", "CutMix", "", None, 3])
def test_unknown_policy_lists_known_ones(name):
    with pytest.raises(ValueError) as err:
        build_mixer(name)
    msg = str(err.value)
    assert repr(name) in msg
    for known in list_mixers():
        assert known in msg


# ---------------------------------------------------------------------------- common arguments


@pytest.mark.parametrize("name", IMAGE_POLICIES)
@pytest.mark.parametrize("kwargs,exc,word", [
    ({"alpha": 0.0}, ValueError, "alpha"),
    ({"alpha": -1.0}, ValueError, "alpha"),
    ({"alpha": float("nan")}, ValueError, "alpha"),
    ({"alpha": "1"}, TypeError, "alpha"),
    ({"prob": -0.1}, ValueError, "prob"),
    ({"prob": 1.5}, ValueError, "prob"),
    ({"prob": None}, TypeError, "prob"),
    ({"mode": "pixel"}, ValueError, "mode"),
    ({"mode": "Batch"}, ValueError, "mode"),
    ({"label_smoothing": -0.1}, ValueError, "label_smoothing"),
    ({"label_smoothing": 1.1}, ValueError, "label_smoothing"),
    ({"num_classes": 0}, ValueError, "num_classes"),
    ({"num_classes": 2.5}, ValueError, "num_classes"),
    ({"generator": 0}, TypeError, "generator"),
    ({"generator": np.random.default_rng(0)}, TypeError, "generator"),
])
def test_bad_common_arguments(name, kwargs, exc, word):
    with pytest.raises(exc, match=word):
        build_mixer(name, **kwargs)


@pytest.mark.parametrize("name", IMAGE_POLICIES)
@pytest.mark.parametrize("mode", ["batch", "elem"])
def test_bad_images(name, mode):
    mixer = build_mixer(name, num_classes=3, mode=mode)
    labels = torch.zeros(4, dtype=torch.long)
    cases = [
        (torch.randint(0, 255, (4, 3, 8, 8), dtype=torch.uint8), TypeError, r"images.*floating.*uint8"),
        (torch.zeros(4, 3, 8, 8, dtype=torch.long), TypeError, r"images.*int64"),
        (torch.rand(3, 8, 8), ValueError, r"images.*4-D.*3-D"),
        (torch.rand(1, 4, 3, 8, 8), ValueError, r"images.*4-D.*5-D"),
        (np.zeros((4, 3, 8, 8), dtype=np.float32), TypeError, r"images.*torch\.Tensor.*ndarray"),
        (torch.rand(0, 3, 8, 8), ValueError, r"images.*empty"),
    ]
    for images, exc, pattern in cases:
        with pytest.raises(exc, match=pattern):
            mixer.mix(images)
        with pytest.raises(exc, match=pattern):
            mixer(images, labels)


@pytest.mark.parametrize("name", IMAGE_POLICIES)
def test_bad_labels(name):
    images = good_images(4)
    mixer = build_mixer(name, num_classes=3)
    cases = [
        (torch.zeros(5, dtype=torch.long), ValueError, r"labels.*batch size 4.*\(5,\)"),
        (torch.zeros(3, 3), ValueError, r"labels.*batch size 4"),
        (torch.tensor([0, 1, 2, 3]), ValueError, r"labels.*num_classes=3.*\[0, 3\]"),
        (torch.tensor([0, -1, 2, 1]), ValueError, r"labels.*\[-1, 2\]"),
        (torch.zeros(4), TypeError, r"labels.*integer dtype.*float32"),
        (torch.zeros(4, dtype=torch.bool), TypeError, r"labels.*bool"),
        (torch.zeros(4, 5), ValueError, r"num_classes=3.*5"),
        (torch.zeros(4, 3, dtype=torch.long), TypeError, r"labels.*floating"),
        (torch.zeros(4, 3, 1), ValueError, r"labels.*shape"),
        ([0, 1, 2, 0], TypeError, r"labels.*torch\.Tensor.*list"),
    ]
    for labels, exc, pattern in cases:
        with pytest.raises(exc, match=pattern):
            mixer(images, labels)


@pytest.mark.parametrize("name", IMAGE_POLICIES)
def test_integer_labels_need_num_classes(name):
    with pytest.raises(ValueError, match="num_classes"):
        build_mixer(name)(good_images(2), torch.tensor([0, 1]))
    # probability labels carry K themselves
    _, targets = build_mixer(name)(good_images(2), torch.tensor([[1.0, 0.0], [0.0, 1.0]]))
    assert targets.shape == (2, 2)


@pytest.mark.parametrize("name", IMAGE_POLICIES)
def test_errors_are_raised_before_any_random_draw(name):
    """A rejected call must not advance the generator (reproducibility survives a caught error)."""
    g = torch.Generator().manual_seed(0)
    mixer = build_mixer(name, num_classes=3, generator=g)
    state = g.get_state()
    with pytest.raises(ValueError):
        mixer(good_images(4), torch.tensor([0, 1, 2, 3]))
    assert torch.equal(g.get_state(), state)


# ---------------------------------------------------------------------------- policy options

OPTION_CASES = [
    ("fmix", {"decay_power": 0.0}, ValueError, "decay_power"),
    ("fmix", {"decay_power": "3"}, TypeError, "decay_power"),
    ("gridmix", {"n_holes": 0}, ValueError, "n_holes"),
    ("gridmix", {"n_holes": (4, 2)}, ValueError, "n_holes"),
    ("gridmix", {"n_holes": (2.0, 4)}, TypeError, "n_holes"),
    ("gridmix", {"n_holes": (2, 3, 4)}, TypeError, "n_holes"),
    ("resizemix", {"scope": (0.0, 0.5)}, ValueError, "scope"),
    ("resizemix", {"scope": (0.8, 0.1)}, ValueError, "scope"),
    ("resizemix", {"scope": (0.1, 1.5)}, ValueError, "scope"),
    ("resizemix", {"scope": 0.5}, TypeError, "scope"),
    ("smoothmix", {"shape": "triangle"}, ValueError, "shape"),
    ("smoothmix", {"softness": 0.0}, ValueError, "softness"),
    ("smoothmix", {"softness": 1.5}, ValueError, "softness"),
    ("saliencymix", {"saliency_size": 0}, ValueError, "saliency_size"),
    ("saliencymix", {"saliency_size": 64.0}, ValueError, "saliency_size"),
    ("mixup_cutmix", {"switch_prob": 1.2}, ValueError, "switch_prob"),
    ("mixup_cutmix", {"switch_prob": -0.5}, ValueError, "switch_prob"),
    ("mixup_cutmix", {"cutmix_alpha": 0.0}, ValueError, "cutmix_alpha"),
]


@pytest.mark.parametrize("name,kwargs,exc,word", OPTION_CASES,
                         ids=[f"{n}-{next(iter(k))}-{i}" for i, (n, k, _, _) in enumerate(OPTION_CASES)])
def test_bad_policy_options(name, kwargs, exc, word):
    with pytest.raises(exc) as err:
        build_mixer(name, **kwargs)
    assert re.search(word, str(err.value)), str(err.value)


@pytest.mark.parametrize("name", IMAGE_POLICIES)
def test_unknown_keyword_is_a_type_error(name):
    with pytest.raises(TypeError, match="not_an_option"):
        build_mixer(name, not_an_option=1)
