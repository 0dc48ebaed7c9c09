"""Transform presets built from ``torchvision.transforms.v2``.

>>> from samix.data import build_transform, dataset_info
>>> t = build_transform("cifar", train=True, info_or_mean_std=dataset_info("cifar100"))
>>> x = t(pil_image)        # float32 [3, 32, 32], normalised      # doctest: +SKIP

Every preset is ``ToImage -> [augmentation] -> ToDtype(float32, scale=True) -> Normalize(mean, std)``:
the input (PIL image, HWC ``numpy`` array or ``[C, H, W]`` tensor) is turned into a
``tv_tensors.Image`` first, so the augmentations run on uint8 tensors, and the output is
always a float32 ``[C, H, W]`` tensor with ``(x / 255 - mean) / std`` per channel.

=========  ==========================================================  =========================
preset     train                                                       test
=========  ==========================================================  =========================
cifar      RandomCrop(size, padding=4, zero fill) + HorizontalFlip      nothing
           (smaller images are zero-padded up to ``size`` first)
grayscale  RandomCrop(size, padding=2, zero fill) + HorizontalFlip      nothing
imagenet   RandomResizedCrop(size, scale=(0.08, 1)) + HorizontalFlip    Resize(size / crop_pct) +
                                                                       CenterCrop(size)
moco       MoCo v2: RandomResizedCrop(size, scale=(0.2, 1)), ColorJitter  as ``imagenet``
           (0.4, 0.4, 0.4, 0.1) with p=0.8, RandomGrayscale(p=0.2),
           GaussianBlur(sigma in [0.1, 2]) with p=0.5, HorizontalFlip
deit       DeiT: RandomResizedCrop(size, scale=(0.08, 1)) +             as ``imagenet``
           HorizontalFlip + RandAugment(2 ops, magnitude 9) +
           RandomErasing(p=0.25)
none       nothing                                                     nothing
=========  ==========================================================  =========================

Choices: the MoCo v2 blur kernel is 23 px at 224 px (about 10 % of the side, as in MoCo v2
and SAMix A.4); here it is ``2 * floor(0.05 * size) + 1`` (23 at 224, 9 at 96, 3 at 32), at
least 3. Colour jitter's saturation/hue and RandomGrayscale leave 1-channel images unchanged.
The ``imagenet`` test transform resizes the short side to ``round(size / crop_pct)``;
``crop_pct`` defaults to the dataset's (1.0 for Tiny-ImageNet and STL-10, whose images
already have the training size, 0.875 otherwise). ``flip=False`` turns the horizontal
flip off (e.g. for digits). ``deit`` is the DeiT recipe's augmentation (timm's ``rand-m9-mstd0.5-inc1``,
``reprob 0.25``) from torchvision's ``v2.RandAugment`` and ``v2.RandomErasing``: torchvision's RandAugment
draws its op list and a fixed magnitude (timm's adds magnitude noise, std 0.5), and the erased box is
filled with random uint8 values before normalisation (timm: per-pixel normal noise after it). Repeated
augmentation (DeiT's sampler) is not built.
"""

from __future__ import annotations

import inspect
import math
from typing import Callable, Optional, Sequence, Tuple, Union

import torch
from torchvision.transforms import v2

from samix._checks import check_bool, check_number
from samix._registry import Registry

from .base import DatasetInfo, dataset_info

Size = Union[int, Tuple[int, int]]

#: Transform presets by name: ``fn(train, size, *, crop_pct, **options) -> list[v2.Transform]``.
PRESETS: Registry[Callable[..., list]] = Registry("preset")
_PRESETS = PRESETS.entries


def register_preset(name: str):
    """Register ``fn(train: bool, size, *, crop_pct, **options) -> list[v2.Transform]`` (the
    augmentation part, applied to uint8 ``tv_tensors.Image``) as preset ``name``."""
    return PRESETS.register(name)


def list_presets() -> list[str]:
    """Names of every transform preset, sorted."""
    return PRESETS.list()


def _flip(flip: bool) -> list:
    return [v2.RandomHorizontalFlip()] if flip else []


def _need_size(preset: str, size):
    if size is None:
        raise ValueError(f"preset {preset!r} needs image_size (an int or (h, w)); got None and no DatasetInfo")
    return size


def _short_side(size: Size) -> int:
    return size if isinstance(size, int) else min(size)


@register_preset("cifar")
def _cifar(train: bool, size: Optional[Size], *, crop_pct: float, padding: int = 4, flip: bool = True) -> list:
    if not train:
        return []
    return [v2.RandomCrop(_need_size("cifar", size), padding=padding, fill=0, pad_if_needed=True), *_flip(flip)]


@register_preset("grayscale")
def _grayscale(train: bool, size: Optional[Size], *, crop_pct: float, padding: int = 2, flip: bool = True) -> list:
    if not train:
        return []
    return [v2.RandomCrop(_need_size("grayscale", size), padding=padding, fill=0, pad_if_needed=True),
            *_flip(flip)]


def _center(size: Size, crop_pct: float) -> list:
    check_number("crop_pct", crop_pct, low=0.0, low_open=True, high=1.0)
    resize = round(_short_side(size) / crop_pct) if isinstance(size, int) \
        else tuple(round(s / crop_pct) for s in size)
    return [v2.Resize(resize, antialias=True), v2.CenterCrop(size)]


@register_preset("imagenet")
def _imagenet(train: bool, size: Optional[Size], *, crop_pct: float, scale: Sequence[float] = (0.08, 1.0),
              ratio: Sequence[float] = (3 / 4, 4 / 3), flip: bool = True) -> list:
    size = _need_size("imagenet", size)
    if not train:
        return _center(size, crop_pct)
    return [v2.RandomResizedCrop(size, scale=tuple(scale), ratio=tuple(ratio), antialias=True), *_flip(flip)]


@register_preset("deit")
def _deit(train: bool, size: Optional[Size], *, crop_pct: float, scale: Sequence[float] = (0.08, 1.0),
          num_ops: int = 2, magnitude: int = 9, erase_p: float = 0.25, flip: bool = True) -> list:
    size = _need_size("deit", size)
    if not train:
        return _center(size, crop_pct)
    check_number("erase_p", erase_p, low=0.0, high=1.0)
    return [v2.RandomResizedCrop(size, scale=tuple(scale), antialias=True), *_flip(flip),
            v2.RandAugment(num_ops=int(num_ops), magnitude=int(magnitude)),
            v2.RandomErasing(p=float(erase_p), value="random")]


def moco_blur_kernel(size: Size) -> int:
    """Odd Gaussian-blur kernel of about 10 % of the image side: ``2 * floor(0.05 * side) + 1``, >= 3."""
    return max(3, 2 * int(math.floor(0.05 * _short_side(size))) + 1)


@register_preset("moco")
def _moco(train: bool, size: Optional[Size], *, crop_pct: float, scale: Sequence[float] = (0.2, 1.0),
          jitter: Sequence[float] = (0.4, 0.4, 0.4, 0.1), jitter_p: float = 0.8, grayscale_p: float = 0.2,
          blur_p: float = 0.5, blur_sigma: Sequence[float] = (0.1, 2.0), blur_kernel: Optional[int] = None,
          flip: bool = True) -> list:
    size = _need_size("moco", size)
    if not train:
        return _center(size, crop_pct)
    k = moco_blur_kernel(size) if blur_kernel is None else blur_kernel
    return [
        v2.RandomResizedCrop(size, scale=tuple(scale), antialias=True),
        v2.RandomApply([v2.ColorJitter(*jitter)], p=jitter_p),
        v2.RandomGrayscale(p=grayscale_p),
        v2.RandomApply([v2.GaussianBlur(k, sigma=tuple(blur_sigma))], p=blur_p),
        *_flip(flip),
    ]


@register_preset("moco_grayscale")
def _moco_grayscale(train: bool, size: Optional[Size], *, crop_pct: float, scale: Sequence[float] = (0.2, 1.0),
                    jitter: Sequence[float] = (0.4, 0.4), jitter_p: float = 0.8, blur_p: float = 0.5,
                    blur_sigma: Sequence[float] = (0.1, 2.0), blur_kernel: Optional[int] = None,
                    flip: bool = True) -> list:
    """MoCo v2 views for one-channel images (Fashion-MNIST, MNIST): random resized crop (scale 0.2-1),
    brightness/contrast jitter (0.4, 0.4) with p = 0.8, Gaussian blur with p = 0.5, flip. It drops
    what has no meaning on one channel: saturation and hue jitter and random grayscale. The test variant
    is the image itself (no resize, no crop: the images are already at their size)."""
    size = _need_size("moco_grayscale", size)
    if not train:
        return []
    k = moco_blur_kernel(size) if blur_kernel is None else blur_kernel
    return [
        v2.RandomResizedCrop(size, scale=tuple(scale), antialias=True),
        v2.RandomApply([v2.ColorJitter(*jitter)], p=jitter_p),
        v2.RandomApply([v2.GaussianBlur(k, sigma=tuple(blur_sigma))], p=blur_p),
        *_flip(flip),
    ]


@register_preset("none")
def _none(train: bool, size: Optional[Size], *, crop_pct: float) -> list:
    return []


def _check_stats(mean, std) -> Tuple[Tuple[float, ...], Tuple[float, ...]]:
    try:
        mean = tuple(float(m) for m in mean)
        std = tuple(float(s) for s in std)
    except TypeError:
        raise TypeError(f"mean and std must be sequences of numbers, got {mean!r} and {std!r}") from None
    if not mean or len(mean) != len(std):
        raise ValueError(f"mean and std must be non-empty and of equal length (one value per channel), "
                         f"got {len(mean)} and {len(std)} values")
    if not all(math.isfinite(s) and s > 0 for s in std) or not all(math.isfinite(m) for m in mean):
        raise ValueError(f"std must be > 0 and mean/std finite, got mean={mean}, std={std}")
    return mean, std


def build_transform(preset: str, train: bool, info_or_mean_std, image_size: Optional[Size] = None,
                    **options) -> v2.Compose:
    """Build a transform preset.

    Args:
        preset: one of :func:`list_presets`.
        train: training (random augmentation) or test (deterministic) variant.
        info_or_mean_std: a :class:`~samix.data.DatasetInfo`, a dataset name, or a
            ``(mean, std)`` pair of per-channel sequences in [0, 1] units.
        image_size: output side (int) or ``(h, w)``; default the dataset's ``image_size``.
        **options: preset options, e.g. ``padding`` (cifar, grayscale), ``flip`` (all but
            none), ``scale`` / ``ratio`` (imagenet), ``scale``, ``jitter``, ``jitter_p``,
            ``grayscale_p``, ``blur_p``, ``blur_sigma``, ``blur_kernel`` (moco), ``crop_pct``
            (test variant of imagenet and moco).

    Returns:
        a ``v2.Compose`` mapping an image to a normalised float32 ``[C, H, W]`` tensor.
    """
    fn = PRESETS.get(preset)
    check_bool("train", train)
    if isinstance(info_or_mean_std, str):
        info_or_mean_std = dataset_info(info_or_mean_std)
    crop_pct = 0.875
    if isinstance(info_or_mean_std, DatasetInfo):
        mean, std = info_or_mean_std.mean, info_or_mean_std.std
        crop_pct = info_or_mean_std.crop_pct
        if image_size is None:
            image_size = info_or_mean_std.image_size
    elif isinstance(info_or_mean_std, (tuple, list)) and len(info_or_mean_std) == 2:
        mean, std = info_or_mean_std
    else:
        raise TypeError(f"info_or_mean_std must be a DatasetInfo, a dataset name or a (mean, std) pair, "
                        f"got {type(info_or_mean_std).__name__}")
    mean, std = _check_stats(mean, std)
    if image_size is not None:
        ok_int = isinstance(image_size, int) and not isinstance(image_size, bool) and image_size > 0
        ok_pair = isinstance(image_size, (tuple, list)) and len(image_size) == 2 and all(
            isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in image_size)
        if not (ok_int or ok_pair):
            raise ValueError(f"image_size must be a positive int or (h, w) pair, got {image_size!r}")
        image_size = image_size if ok_int else tuple(image_size)
    crop_pct = float(options.pop("crop_pct", crop_pct))
    accepted = [n for n, p in inspect.signature(fn).parameters.items()
                if p.kind == p.KEYWORD_ONLY and n != "crop_pct"]
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise TypeError(f"preset {preset!r} takes no option(s) {unknown}; its options: "
                        f"{accepted + ['crop_pct'] if accepted else ['crop_pct']}")
    augment = fn(train, image_size, crop_pct=crop_pct, **options)
    return v2.Compose([
        v2.ToImage(),
        *augment,
        v2.ToDtype(torch.float32, scale=True),
        v2.Normalize(mean=list(mean), std=list(std)),
    ])
