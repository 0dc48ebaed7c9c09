"""Learnable mask generators: AutoMix's :class:`MixBlock` and SAMix's Mixer, :class:`SAMixGenerator`.

They know tensors, not training (no optimizer, no model, no config)::

    gen = SAMixGenerator(in_channels=256)
    out = gen(z, lam, index, out_size=(32, 32))   # z: [B, C, h, w] stage features
    mixed = out.mix(images)                       # out.mask * x + (1 - out.mask) * x[index]
    loss = beta * (mask_l1_loss(out.mask_raw, lam) + mask_variance_loss(out.mask_raw))

``lam`` is the share of the ORIGINAL sample ``i`` and ``out.mask`` its weight
(the :mod:`samix.mixing` convention); the partner ``index[i]`` gets ``1 - mask``.

A new generator is one file in this package plus one line in :data:`GENERATORS` below (the names are
also those a pre-trained Mixer file records). ``samix.generators.Mixer`` is a deprecated alias of
:class:`SAMixGenerator` (renamed: ``samix.mixing.Mixer`` is the base class of mixing policies).
"""

import warnings

from samix._registry import Registry

from .mask_losses import generator_mask_loss, linear_weight, mask_l1_loss, mask_l2_loss, mask_mean, mask_variance_loss
from .mixblock import GeneratorOutput, MixBlock, init_generator_weights, self_attention_weight
from .samix_generator import SAMixGenerator, lambda_adjust

GENERATORS = Registry("generator")
GENERATORS.register("mixblock", MixBlock)
GENERATORS.register("mixer", SAMixGenerator)


def list_generators() -> list:
    """Names accepted by :func:`build_generator`."""
    return GENERATORS.list()


def build_generator(name: str, **kwargs):
    """``build_generator("mixblock" | "mixer", in_channels=..., ...)``; an unknown name raises ``ValueError``."""
    return GENERATORS.build(name, **kwargs)


def generator_name(generator) -> str:
    """The registry name of a generator instance (``"mixblock"``, ``"mixer"``)."""
    for name, cls in GENERATORS.items():
        if type(generator) is cls:
            return name
    raise TypeError(f"generator must be one of {[c.__name__ for _, c in GENERATORS.items()]}, "
                    f"got {type(generator).__name__}")


def __getattr__(name):
    if name == "Mixer":
        warnings.warn("samix.generators.Mixer is deprecated: use samix.generators.SAMixGenerator",
                      DeprecationWarning, stacklevel=2)
        return SAMixGenerator
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["GENERATORS", "GeneratorOutput", "MixBlock", "SAMixGenerator", "build_generator", "generator_name",
           "lambda_adjust", "linear_weight", "list_generators", "mask_l1_loss", "mask_l2_loss", "mask_mean",
           "mask_variance_loss", "generator_mask_loss", "init_generator_weights", "self_attention_weight"]
