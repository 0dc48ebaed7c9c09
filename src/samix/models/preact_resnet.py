"""Pre-activation ResNet-18 (He et al., 2016, "Identity Mappings"), CIFAR stem.

The network of the ManifoldMix paper and of the CPU recipes (``width=0.25``, ``in_chans=1``)::

    stem     conv3x3(in_chans, 64)                 (no BN/ReLU: each block pre-activates its input)
    stage l  2 pre-activation blocks, 64 * 2**(l-1) channels, stride 1 at l = 1 else 2
    stage 4  ... followed by the final BN-ReLU (so ``features(x, 4)`` is the activated map)
    head     global average pool -> linear

A block computes ``o = relu(bn1(x))``, ``y = conv2(relu(bn2(conv1(o))))`` and returns
``y + shortcut``, where ``shortcut = conv1x1(o)`` (stride 2) when the shape changes, else ``x``.
``stage_channels == (64, 128, 256, 512)`` times ``width``.
"""

from __future__ import annotations

from torch import Tensor, nn

from ._common import (ClassifierMixin, PoolLinearHead, check_builder_args, check_rate, conv1x1, conv3x3,
                      init_conv_bn, scaled, stage_list)
from .base import Backbone, register_model


class PreActBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin)
        self.conv1 = conv3x3(cin, cout, stride)
        self.bn2 = nn.BatchNorm2d(cout)
        self.conv2 = conv3x3(cout, cout)
        self.act = nn.ReLU(inplace=False)
        self.shortcut = conv1x1(cin, cout, stride) if (stride != 1 or cin != cout) else None

    def forward(self, x: Tensor) -> Tensor:
        o = self.act(self.bn1(x))
        y = self.conv2(self.act(self.bn2(self.conv1(o))))
        return y + (x if self.shortcut is None else self.shortcut(o))


class PreActResNet(ClassifierMixin, Backbone):
    """Pre-activation ResNet with the CIFAR stem; ``blocks`` per stage (``(2, 2, 2, 2)``: PreAct-18).

    Args:
        num_classes: classifier outputs (0: ``model(x)`` returns pooled features).
        in_chans: input channels.
        width: multiplier of the base width 64 (0.25: base width 16).
        blocks: blocks in each of the 4 stages.
        drop_rate: dropout before the classifier.
    """

    def __init__(self, num_classes: int, in_chans: int = 3, width: float = 1.0, blocks=(2, 2, 2, 2),
                 drop_rate: float = 0.0) -> None:
        super().__init__()
        width = check_builder_args(num_classes, in_chans, width)
        drop_rate = check_rate("drop_rate", drop_rate)
        if len(blocks) != 4 or any(isinstance(n, bool) or not isinstance(n, int) or n < 1 for n in blocks):
            raise ValueError(f"blocks must be 4 positive ints, got {blocks!r}")
        self.num_classes = num_classes
        base = scaled(64, width)
        self.stem = conv3x3(in_chans, base)
        stages, channels, cin = [], [], base
        for i, n in enumerate(blocks):
            cout = scaled(64 * 2**i, width)
            layers = [PreActBlock(cin if j == 0 else cout, cout, 2 if (i > 0 and j == 0) else 1) for j in range(n)]
            if i == 3:
                layers += [nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]
            stages.append(nn.Sequential(*layers))
            channels.append(cout)
            cin = cout
        self.stages = stage_list(*stages)
        self.stage_channels = tuple(channels)
        self.head = PoolLinearHead(cin, num_classes, drop_rate)
        init_conv_bn(self)


@register_model("preact_resnet18")
def preact_resnet18(num_classes: int, in_chans: int = 3, width: float = 1.0, **kwargs) -> PreActResNet:
    """PreAct ResNet-18, CIFAR stem (the CPU recipes use ``width=0.25, in_chans=1``)."""
    return PreActResNet(num_classes, in_chans, width, blocks=(2, 2, 2, 2), **kwargs)
