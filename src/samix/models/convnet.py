"""A tiny 4-stage convnet for fast tests, CPU smoke runs and the DDP equivalence test.

Conv-4 style (conv -> norm -> ReLU, then a 2x2 max-pool where the resolution halves); at base
width ``c = 32 * width``::

    stem     conv(in_chans -> c)                [c,  H,   W  ]
    stage 1  conv(c  -> c),  max-pool 2         [c,  H/2, W/2]
    stage 2  conv(c  -> 2c), max-pool 2         [2c, H/4, W/4]
    stage 3  conv(2c -> 4c), max-pool 2         [4c, H/8, W/8]   (the map AutoMix/SAMix read)
    stage 4  conv(4c -> 8c)                     [8c, H/8, W/8]
    head     global average pool -> linear

About 24 M multiply-adds for a 32x32 RGB image at ``width=1``. Max-pooling (rather than strided
convolutions) made the network learn a toy position task (the engine test's bars) about as fast
as any variant tried, and it is the classic tiny-CNN layout.

``norm``: ``"bn"`` (BatchNorm), ``"gn"`` (GroupNorm with ``gcd(channels, 8)`` groups) or
``"none"`` (convolutions with bias). BatchNorm statistics depend on how the batch is split between
processes, so distributed-equivalence tests use ``"gn"`` or ``"none"``.
"""

from __future__ import annotations

import math

from torch import nn

from ._common import (ClassifierMixin, PoolLinearHead, check_builder_args, check_choice, check_rate, conv3x3,
                      init_conv_bn, scaled, stage_list)
from .base import Backbone, register_model

NORMS = ("bn", "gn", "none")


def _unit(cin: int, cout: int, norm: str, pool: bool) -> nn.Sequential:
    if norm == "none":
        layers = [conv3x3(cin, cout, bias=True), nn.ReLU(inplace=True)]
    else:
        layer = nn.BatchNorm2d(cout) if norm == "bn" else nn.GroupNorm(math.gcd(cout, 8), cout)
        layers = [conv3x3(cin, cout), layer, nn.ReLU(inplace=True)]
    if pool:
        layers.append(nn.MaxPool2d(2))
    return nn.Sequential(*layers)


class ConvNet(ClassifierMixin, Backbone):
    """See the module docstring. ``drop_rate``: dropout before the classifier."""

    def __init__(self, num_classes: int, in_chans: int = 3, width: float = 1.0, norm: str = "bn",
                 drop_rate: float = 0.0) -> None:
        super().__init__()
        width = check_builder_args(num_classes, in_chans, width)
        check_choice("norm", norm, NORMS)
        drop_rate = check_rate("drop_rate", drop_rate)
        self.num_classes = num_classes
        self.norm = norm
        c = scaled(32, width)
        chans = (c, 2 * c, 4 * c, 8 * c)
        self.stem = _unit(in_chans, c, norm, pool=False)
        ins = (c,) + chans[:3]
        self.stages = stage_list(*[_unit(i, o, norm, pool=k < 3) for k, (i, o) in enumerate(zip(ins, chans))])
        self.stage_channels = chans
        self.head = PoolLinearHead(chans[3], num_classes, drop_rate)
        init_conv_bn(self)


@register_model("convnet")
def convnet(num_classes: int, in_chans: int = 3, width: float = 1.0, **kwargs) -> ConvNet:
    """The tiny test convnet (``norm="bn"|"gn"|"none"``)."""
    return ConvNet(num_classes, in_chans, width, **kwargs)
