"""Learnable mask generators: AutoMix's :class:`MixBlock` and SAMix's :class:`Mixer`.

They know tensors, not training (no optimizer, no model, no config)::

    gen = Mixer(in_channels=256)
    out = gen(z, lam, index, out_size=(32, 32))   # z: [B, C, h, w] stage features
    mixed = out.mix(images)                       # out.mask * x + (1 - out.mask) * x[index]
    loss = beta * (mask_l1_loss(out.mask_raw, lam) + mask_variance_loss(out.mask_raw))

``lam`` is the share of the ORIGINAL sample ``i`` and ``out.mask`` its weight
(the :mod:`samix.mixing` convention); the partner ``index[i]`` gets ``1 - mask``.
"""

from .mask_losses import linear_weight, mask_l1_loss, mask_l2_loss, mask_mean, mask_variance_loss
from .mixblock import GeneratorOutput, MixBlock
from .mixer import Mixer, lambda_adjust

GENERATORS = {"mixblock": MixBlock, "mixer": Mixer}


def list_generators() -> list:
    """Names accepted by :func:`build_generator`."""
    return sorted(GENERATORS)


def build_generator(name: str, **kwargs):
    """``build_generator("mixblock" | "mixer", in_channels=..., ...)``; an unknown name raises ``ValueError``."""
    if name not in GENERATORS:
        raise ValueError(f"unknown generator {name!r}; known: {list_generators()}")
    return GENERATORS[name](**kwargs)


__all__ = ["GENERATORS", "GeneratorOutput", "MixBlock", "Mixer", "build_generator", "lambda_adjust",
           "linear_weight", "list_generators", "mask_l1_loss", "mask_l2_loss", "mask_mean",
           "mask_variance_loss"]
