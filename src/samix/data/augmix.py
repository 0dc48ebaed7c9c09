"""Three views of each sample for AugMix + JSD (Hendrycks et al., ICLR 2020): the clean image and two
AugMix images of the same crop.

Every preset of :mod:`samix.data.transforms` is ``ToImage -> [augmentation] -> ToDtype -> Normalize``; the
wrapper runs the augmentation part once (one crop, one flip), then ``ToDtype + Normalize`` on the result
(the clean view) and on two independent draws of torchvision's ``v2.AugMix`` of it (the AugMix views), as
the official code applies its chains to the cropped image. The AugMix chains are torchvision's; their
defaults here are the official CIFAR ones: severity 3, width 3, depth 1-3 (``chain_depth=-1``), Dirichlet /
Beta concentration 1 (samix.txt A.3: AugMix alpha 1), and ``all_ops=False`` (the official default: no
colour, contrast, brightness or sharpness operations, which overlap with the corruptions of CIFAR-C).

>>> ds = AugMixDataset(base, build_transform("cifar", True, "cifar100"))     # doctest: +SKIP
>>> (clean, aug1, aug2), label = ds[0]
"""

from __future__ import annotations

from torch.utils.data import Dataset
from torchvision.transforms import v2

from samix._checks import check_bool, check_int, check_number

from .base import dataset_labels


def split_preset(transform) -> tuple:
    """``(augment, finish)`` of a preset ``v2.Compose``: everything up to the last two steps (the uint8
    image after augmentation), and the last two (``ToDtype`` + ``Normalize``)."""
    steps = list(getattr(transform, "transforms", []))
    if len(steps) < 3 or not isinstance(steps[-1], v2.Normalize) or not isinstance(steps[-2], v2.ToDtype):
        raise TypeError("AugMix views need a samix preset transform (a v2.Compose ending with ToDtype and "
                        f"Normalize, see samix.data.transforms), got {type(transform).__name__}")
    return v2.Compose(steps[:-2]), v2.Compose(steps[-2:])


class AugMixDataset(Dataset):
    """Item ``i`` is ``((clean, augmix_1, augmix_2), label)`` (module docstring)."""

    def __init__(self, dataset, transform, severity: int = 3, mixture_width: int = 3, chain_depth: int = -1,
                 alpha: float = 1.0, all_ops: bool = False) -> None:
        if not hasattr(dataset, "__getitem__") or not hasattr(dataset, "__len__"):
            raise TypeError(f"dataset must be a map-style dataset, got {type(dataset).__name__}")
        self.dataset = dataset
        self.augment, self.finish = split_preset(transform)
        self.augmix = v2.AugMix(severity=check_int("severity", severity, low=1, high=10, type_error=ValueError),
                                mixture_width=check_int("mixture_width", mixture_width, low=1, type_error=ValueError),
                                chain_depth=check_int("chain_depth", chain_depth, low=-1, type_error=ValueError),
                                alpha=check_number("alpha", alpha, low=0.0, low_open=True),
                                all_ops=check_bool("all_ops", all_ops))

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        img, label = self.dataset[index]
        base = self.augment(img)
        return (self.finish(base), self.finish(self.augmix(base)), self.finish(self.augmix(base))), label

    @property
    def targets(self):
        return dataset_labels(self.dataset)


__all__ = ["AugMixDataset", "split_preset"]
