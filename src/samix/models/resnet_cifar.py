"""CIFAR-stem ResNets, ResNeXt and WideResNet (the backbones of the papers' CIFAR/Tiny tables).

CIFAR stem (as in the papers and OpenMixup's ``ResNet_CIFAR``): one 3x3 convolution with stride 1,
batch norm and ReLU, **no** max-pool, so a 32x32 image gives stage maps of 32, 16, 8 and 4 pixels.

====================  ==========================  =======================================
name                  blocks per stage            ``stage_channels`` at ``width=1``
====================  ==========================  =======================================
``resnet18``          basic   (2, 2, 2, 2)        (64, 128, 256, 512)
``resnet34``          basic   (3, 4, 6, 3)        (64, 128, 256, 512)
``resnet50``          bottleneck (3, 4, 6, 3)     (256, 512, 1024, 2048)
``resnet101``         bottleneck (3, 4, 23, 3)    (256, 512, 1024, 2048)
``resnext50``         bottleneck 32x4d (3, 4, 6, 3)  (256, 512, 1024, 2048)
``wrn28_8``           pre-act wide (4, 4, 4) + BN-ReLU  (128, 256, 512, 512)
====================  ==========================  =======================================

``width`` multiplies every channel count (``width=0.25``: a ResNet of base width 16). Bottleneck
blocks use the stride on their 3x3 convolution (ResNet v1.5); the 1x1 shortcut projection (+BN)
appears where the shape changes.

WideResNet-28-8 (Zagoruyko & Komodakis, 2016) is pre-activation with three groups of 4 blocks;
its groups map to stages 1..3 and **stage 4 is the final BN-ReLU** (no convolution, same
channels and resolution as stage 3), so ``features(x, 4)`` is the activated map the classifier
pools, and ``stage_channels == (16k, 32k, 64k, 64k)`` with ``k = 8``.
"""

from __future__ import annotations

from typing import Sequence, Type, Union

from torch import Tensor, nn

from samix._checks import check_int

from ._common import (ClassifierMixin, PoolLinearHead, check_builder_args, check_rate, conv1x1, conv3x3,
                      init_conv_bn, scaled, stage_list)
from .base import Backbone, register_model


class BasicBlock(nn.Module):
    """``relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x))`` (two 3x3 convolutions)."""

    expansion = 1

    def __init__(self, cin: int, planes: int, stride: int = 1, **_) -> None:
        super().__init__()
        cout = planes * self.expansion
        self.conv1 = conv3x3(cin, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = conv3x3(planes, cout)
        self.bn2 = nn.BatchNorm2d(cout)
        self.act = nn.ReLU(inplace=True)
        self.shortcut = _projection(cin, cout, stride)

    def forward(self, x: Tensor) -> Tensor:
        out = self.act(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.act(out + self.shortcut(x))


class Bottleneck(nn.Module):
    """1x1 (reduce) -> 3x3 (stride, ``groups``) -> 1x1 (expand x4), BN after each, residual, ReLU.

    Inner width ``groups * max(1, int(planes * width_per_group / 64))``: ``planes`` for ResNet-50
    (``groups=1, width_per_group=64``), ``32 * 4 = 128`` at the first stage of ResNeXt-50 32x4d.
    """

    expansion = 4

    def __init__(self, cin: int, planes: int, stride: int = 1, groups: int = 1, width_per_group: int = 64) -> None:
        super().__init__()
        inner = groups * max(1, int(planes * width_per_group / 64))
        cout = planes * self.expansion
        self.conv1 = conv1x1(cin, inner)
        self.bn1 = nn.BatchNorm2d(inner)
        self.conv2 = conv3x3(inner, inner, stride, groups=groups)
        self.bn2 = nn.BatchNorm2d(inner)
        self.conv3 = conv1x1(inner, cout)
        self.bn3 = nn.BatchNorm2d(cout)
        self.act = nn.ReLU(inplace=True)
        self.shortcut = _projection(cin, cout, stride)

    def forward(self, x: Tensor) -> Tensor:
        out = self.act(self.bn1(self.conv1(x)))
        out = self.act(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.act(out + self.shortcut(x))


def _projection(cin: int, cout: int, stride: int) -> nn.Module:
    if stride == 1 and cin == cout:
        return nn.Identity()
    return nn.Sequential(conv1x1(cin, cout, stride), nn.BatchNorm2d(cout))


class CifarResNet(ClassifierMixin, Backbone):
    """ResNet / ResNeXt with the CIFAR stem (3x3 conv, stride 1, no max-pool).

    Args:
        block: :class:`BasicBlock` or :class:`Bottleneck`.
        layers: number of blocks in each of the 4 stages.
        num_classes: classifier outputs (0: ``model(x)`` returns pooled features).
        in_chans: input channels.
        width: multiplier of the base width 64.
        groups, width_per_group: ResNeXt cardinality and group width (bottleneck only).
        drop_rate: dropout before the classifier.
        zero_init_residual: start every residual branch at zero (last BN weight = 0).
    """

    def __init__(self, block: Type[Union[BasicBlock, Bottleneck]], layers: Sequence[int], num_classes: int,
                 in_chans: int = 3, width: float = 1.0, groups: int = 1, width_per_group: int = 64,
                 drop_rate: float = 0.0, zero_init_residual: bool = False) -> None:
        super().__init__()
        width = check_builder_args(num_classes, in_chans, width)
        drop_rate = check_rate("drop_rate", drop_rate)
        if len(layers) != 4:
            raise ValueError(f"layers must list the blocks of 4 stages, got {list(layers)}")
        self.num_classes = num_classes
        base = scaled(64, width)
        self.stem = nn.Sequential(conv3x3(in_chans, base), nn.BatchNorm2d(base), nn.ReLU(inplace=True))
        stages, channels, cin = [], [], base
        for i, n in enumerate(layers):
            planes = scaled(64 * 2**i, width)
            blocks = []
            for j in range(n):
                stride = 2 if (i > 0 and j == 0) else 1
                blocks.append(block(cin, planes, stride, groups=groups, width_per_group=width_per_group))
                cin = planes * block.expansion
            stages.append(nn.Sequential(*blocks))
            channels.append(cin)
        self.stages = stage_list(*stages)
        self.stage_channels = tuple(channels)
        self.head = PoolLinearHead(cin, num_classes, drop_rate)
        last_bn = {BasicBlock: "bn2", Bottleneck: "bn3"}[block]
        init_conv_bn(self, zero_init_last=last_bn if zero_init_residual else None)


class WideBasic(nn.Module):
    """Pre-activation wide block: ``o = relu(bn1(x))``, ``y = conv2(drop(relu(bn2(conv1(o)))))``,
    output ``y + shortcut`` with ``shortcut = conv1x1(o)`` when the shape changes, else ``x``.
    The stride sits on ``conv1`` (as in Zagoruyko & Komodakis)."""

    def __init__(self, cin: int, cout: int, stride: int, drop_rate: float) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin)
        self.conv1 = conv3x3(cin, cout, stride)
        self.bn2 = nn.BatchNorm2d(cout)
        self.drop = nn.Dropout(drop_rate) if drop_rate > 0 else nn.Identity()
        self.conv2 = conv3x3(cout, cout)
        self.act = nn.ReLU(inplace=False)
        self.shortcut = conv1x1(cin, cout, stride) if (stride != 1 or cin != cout) else None

    def forward(self, x: Tensor) -> Tensor:
        o = self.act(self.bn1(x))
        y = self.conv1(o)
        y = self.conv2(self.drop(self.act(self.bn2(y))))
        return y + (x if self.shortcut is None else self.shortcut(o))


class WideResNet(ClassifierMixin, Backbone):
    """WideResNet-``depth``-``widen`` (pre-activation), CIFAR stem: a 3x3 conv to 16 channels.

    Groups 1..3 (widths 16k, 32k, 64k; strides 1, 2, 2) are stages 1..3; stage 4 is the final
    BN-ReLU (see the module docstring). ``width`` multiplies every channel count.
    """

    def __init__(self, num_classes: int, in_chans: int = 3, width: float = 1.0, depth: int = 28, widen: int = 8,
                 drop_rate: float = 0.0, head_drop_rate: float = 0.0) -> None:
        super().__init__()
        width = check_builder_args(num_classes, in_chans, width)
        drop_rate = check_rate("drop_rate", drop_rate)
        head_drop_rate = check_rate("head_drop_rate", head_drop_rate)
        if isinstance(depth, bool) or not isinstance(depth, int) or depth < 10 or (depth - 4) % 6:
            raise ValueError(f"depth must be an int of the form 6n + 4 (e.g. 28), got {depth!r}")
        check_int("widen", widen, low=1, type_error=ValueError)
        self.num_classes = num_classes
        n = (depth - 4) // 6
        base = scaled(16, width)
        self.stem = conv3x3(in_chans, base)
        groups, cin = [], base
        for i in range(3):
            cout = scaled(16 * widen * 2**i, width)
            groups.append(nn.Sequential(*[WideBasic(cin if j == 0 else cout, cout, (1 if i == 0 else 2) if j == 0
                                                    else 1, drop_rate) for j in range(n)]))
            cin = cout
        final = nn.Sequential(nn.BatchNorm2d(cin), nn.ReLU(inplace=True))
        self.stages = stage_list(*groups, final)
        self.stage_channels = tuple(scaled(16 * widen * 2**i, width) for i in range(3)) + (cin,)
        self.head = PoolLinearHead(cin, num_classes, head_drop_rate)
        init_conv_bn(self)


@register_model("resnet18")
def resnet18(num_classes: int, in_chans: int = 3, width: float = 1.0, **kwargs) -> CifarResNet:
    """ResNet-18, CIFAR stem."""
    return CifarResNet(BasicBlock, (2, 2, 2, 2), num_classes, in_chans, width, **kwargs)


@register_model("resnet34")
def resnet34(num_classes: int, in_chans: int = 3, width: float = 1.0, **kwargs) -> CifarResNet:
    """ResNet-34, CIFAR stem."""
    return CifarResNet(BasicBlock, (3, 4, 6, 3), num_classes, in_chans, width, **kwargs)


@register_model("resnet50")
def resnet50(num_classes: int, in_chans: int = 3, width: float = 1.0, **kwargs) -> CifarResNet:
    """ResNet-50 (bottleneck), CIFAR stem."""
    return CifarResNet(Bottleneck, (3, 4, 6, 3), num_classes, in_chans, width, **kwargs)


@register_model("resnet101")
def resnet101(num_classes: int, in_chans: int = 3, width: float = 1.0, **kwargs) -> CifarResNet:
    """ResNet-101 (bottleneck), CIFAR stem."""
    return CifarResNet(Bottleneck, (3, 4, 23, 3), num_classes, in_chans, width, **kwargs)


@register_model("resnext50")
def resnext50(num_classes: int, in_chans: int = 3, width: float = 1.0, **kwargs) -> CifarResNet:
    """ResNeXt-50 32x4d, CIFAR stem (32 groups of width 4 at the first stage)."""
    kwargs.setdefault("groups", 32)
    kwargs.setdefault("width_per_group", 4)
    return CifarResNet(Bottleneck, (3, 4, 6, 3), num_classes, in_chans, width, **kwargs)


@register_model("wrn28_8")
def wrn28_8(num_classes: int, in_chans: int = 3, width: float = 1.0, **kwargs) -> WideResNet:
    """WideResNet-28-8 (pre-activation), CIFAR stem; stage 4 = final BN-ReLU."""
    kwargs.setdefault("depth", 28)
    kwargs.setdefault("widen", 8)
    return WideResNet(num_classes, in_chans, width, **kwargs)
