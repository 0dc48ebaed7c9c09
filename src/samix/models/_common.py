"""Shared pieces of the samix backbones: argument checks, width scaling, the classifier head, init."""

from __future__ import annotations

from typing import Optional

from torch import Tensor, nn

from samix._checks import argument_error, check_int, check_number, is_int
from samix._checks import check_choice  # noqa: F401 (the backbones import it from here)


def check_builder_args(num_classes, in_chans, width) -> float:
    """Validate the arguments every model builder takes; return ``width`` as a float."""
    if not is_int(num_classes) or num_classes < 0:
        raise argument_error("num_classes", "an int >= 0 (0: no classifier, pooled features)", num_classes)
    check_int("in_chans", in_chans, low=1, type_error=ValueError)
    return check_number("width", width, low=0.0, low_open=True)


def scaled(channels: int, width: float, multiple: int = 1) -> int:
    """``channels * width`` rounded to the nearest multiple of ``multiple`` (at least ``multiple``)."""
    return max(multiple, int(round(channels * width / multiple)) * multiple)


def check_rate(name: str, value) -> float:
    """A dropout-like rate in ``[0, 1)``."""
    return check_number(name, value, low=0.0, high=1.0, high_open=True, type_error=ValueError)


class PoolLinearHead(nn.Module):
    """Global average pooling -> dropout -> linear classifier (identity when ``num_classes == 0``).

    Pooling is ``h.mean((2, 3))``, which is memory-format agnostic (channels_last stays cheap).
    """

    def __init__(self, in_features: int, num_classes: int, drop_rate: float = 0.0) -> None:
        super().__init__()
        self.in_features = in_features
        self.drop = nn.Dropout(drop_rate) if drop_rate > 0 else nn.Identity()
        self.fc = nn.Linear(in_features, num_classes) if num_classes > 0 else nn.Identity()

    def forward(self, h: Tensor, pre_logits: bool = False) -> Tensor:
        pooled = self.drop(h.mean((2, 3)))
        return pooled if pre_logits else self.fc(pooled)

    def reset(self, num_classes: int) -> None:
        ref = next(self.parameters(), None)
        kw = {} if ref is None else {"device": ref.device, "dtype": ref.dtype}
        self.fc = nn.Linear(self.in_features, num_classes, **kw) if num_classes > 0 else nn.Identity()


class ClassifierMixin:
    """``get_classifier`` / ``reset_classifier`` for backbones whose head is a :class:`PoolLinearHead`
    stored as ``self.head`` (the timm convention, used by :mod:`samix.models.weights` to tell the
    classifier from the backbone)."""

    head: PoolLinearHead

    @property
    def num_features(self) -> int:
        return int(self.stage_channels[-1])

    def get_classifier(self) -> nn.Module:
        return self.head.fc

    def reset_classifier(self, num_classes: int) -> None:
        check_builder_args(num_classes, 1, 1.0)
        self.head.reset(num_classes)
        self.num_classes = num_classes

    def forward_head(self, h: Tensor, pre_logits: bool = False) -> Tensor:
        return self.head(h, pre_logits=pre_logits)


def init_conv_bn(module: nn.Module, zero_init_last: Optional[str] = None) -> None:
    """Kaiming-normal (fan_out, ReLU) convolutions, unit/zero norm affine, default linear init.

    ``zero_init_last``: attribute name of the last norm layer of each residual block to set to
    zero (each block then starts as the identity); ``None`` keeps 1.
    """
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
            if m.weight is not None:
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
    if zero_init_last:
        for m in module.modules():
            norm = getattr(m, zero_init_last, None)
            if isinstance(norm, nn.BatchNorm2d) and norm.weight is not None:
                nn.init.zeros_(norm.weight)


def conv3x3(cin: int, cout: int, stride: int = 1, groups: int = 1, bias: bool = False) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, stride=stride, padding=1, groups=groups, bias=bias)


def conv1x1(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 1, stride=stride, bias=False)


def stage_list(*stages: nn.Module) -> nn.ModuleList:
    if len(stages) != 4:
        raise AssertionError("a samix backbone has exactly 4 stages")
    return nn.ModuleList(stages)
