"""AutoMix's Mix Block: a lambda-embedded cross-attention that turns features into a mixing mask.

Paper: AutoMix (automix.txt, Sec. 4.1, Eq. 4-5). Given the stage-``l`` features
``z`` of a batch, the partner of sample ``i`` is ``j = index[i]`` and::

    z_{i,lam}   = concat(z_i, lam)            # a constant channel filled with lam
    z_{j,1-lam} = concat(z_j, 1 - lam)        # ... and with 1 - lam for the partner
    P   = softmax_q( (W_P z_{i,lam})[p] . (W_P z_{j,1-lam})[q] / N )     # [hw, hw]
    C_i = W_Z z_{i,lam}                                                    # [hw]
    s_i = U( sigmoid( P @ C_i ) )            # s_i[p] = sigmoid(sum_q P[p, q] C_i[q])

``W_P`` is one shared 1x1 convolution (query and key, as printed in Eq. 4)
with ``attn_channels`` outputs (default ``in_channels // 2``, the reference
width), ``W_Z`` a 1x1 convolution to one channel, ``N = sqrt(attn_channels)``
(scaled dot product; ``attn_norm="cosine"`` bounds the logits to
``[-sqrt(d), sqrt(d)]`` instead) and ``U`` nearest upsampling (``"bilinear"``
optional). Rows of ``P`` are positions of ``z_i``, columns positions of
``z_j``; the softmax runs over the partner's positions.

Lambda embedding (a documented choice). The paper's ``concat(z, lam)`` is read
as appending one *constant* channel filled with ``lam`` (``1 - lam`` for the
partner). A 1x1 convolution over ``[z; lam]`` equals ``W z + w_lam * lam``, so
that is how it is computed here: the convolution over ``z`` plus a learnable
per-output-channel weight ``w_lam`` times ``lam`` (no ``C + 1`` channel tensor
is materialised, channels_last survives). The weights are initialised like
the extra input column of the concatenated convolution would be.

Mask convention (the one of :mod:`samix.mixing`): ``s_i`` weights the
ORIGINAL sample, ``mixed = s_i * x_i + (1 - s_i) * x_j`` with
``x_j = x[index]``; the partner's mask is ``s_j = 1 - s_i``. (AutoMix's Eq. 7
writes the opposite roles; the mask here is the one of Eq. 5, ``s_i``, the
probability that a pixel comes from ``x_i``.)

Numerics: the attention logits, the softmax, ``P @ C``, the sigmoid, the
upsampling and every later step run in float32 with autocast disabled, so
bf16/fp16 features (also under ``torch.autocast``) cannot overflow the
``hw x hw`` product; the 1x1 convolutions run in the parameters' dtype (or
the autocast dtype). Returned masks have the dtype of ``z``; the diagnostic
maps (``logits``, ``content``, ``attention``) are float32.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from samix.mixing.base import mask_mix

UPSAMPLE_MODES = ("nearest", "bilinear")
ATTN_NORMS = ("scaled", "cosine")
INITS = ("reference", "default")
#: std of the reference implementation's init of every Mix Block convolution (OpenMixup: normal_init std 0.01)
REFERENCE_INIT_STD = 0.01

__all__ = ["ATTN_NORMS", "GeneratorOutput", "INITS", "MixBlock", "UPSAMPLE_MODES", "init_generator_weights",
           "self_attention_weight"]


@dataclass
class GeneratorOutput:
    """What a mask generator returns.

    Attributes:
        mask: ``[B, 1, H, W]`` in ``[0, 1]``, weight of the ORIGINAL sample ``x_i``
            (after lambda adjusting when it was applied); the partner's weight is
            ``1 - mask``. Dtype of the features.
        mask_small: ``[B, 1, h, w]`` the mask at feature resolution, before upsampling
            and before lambda adjusting.
        mask_raw: ``[B, 1, H, W]`` the upsampled mask before lambda adjusting. Compute
            the mask losses on this one (after adjusting the mean equals ``lam`` by
            construction and the mean loss carries no signal).
        logits: float32 ``[B, 1, h, w]``, ``P @ C`` before the sigmoid.
        content: float32 ``[B, 1, h, w]``, the content map ``C_i``.
        attention: float32 ``[B, hw, hw]`` (rows sum to 1), or ``None`` without attention.
        lam: float32 ``[B]``, the lambda the mask was generated for (share of ``x_i``).
        index: long ``[B]``, the partner of each sample.
        adjusted: bool ``[B]``, which samples were lambda-adjusted.
    """

    mask: Tensor
    mask_small: Tensor
    mask_raw: Tensor
    logits: Tensor
    content: Tensor
    attention: Optional[Tensor]
    lam: Tensor
    index: Tensor
    adjusted: Tensor

    @property
    def mask_partner(self) -> Tensor:
        """``s_j = 1 - s_i``: the weight of the partner ``x[index]``."""
        return 1 - self.mask

    def mix(self, images: Tensor) -> Tensor:
        """``mask * images + (1 - mask) * images[index]`` (dtype and memory format of ``images``)."""
        if not isinstance(images, Tensor):
            raise TypeError(f"images must be a torch.Tensor, got {type(images).__name__}")
        if images.dim() != 4 or images.shape[0] != self.mask.shape[0] \
                or tuple(images.shape[-2:]) != tuple(self.mask.shape[-2:]):
            raise ValueError(
                f"images must be [B, C, H, W] with B={self.mask.shape[0]} and (H, W)="
                f"{tuple(self.mask.shape[-2:])} (the mask's), got shape {tuple(images.shape)}"
            )
        return mask_mix(images, self.index, self.mask)


# ---------------------------------------------------------------------- shared helpers
def check_generator_inputs(z, lam, index, in_channels: int) -> Tuple[Tensor, Tensor]:
    """Validate ``(z, lam, index)``; return ``lam`` as float32 ``[B]`` and ``index`` as long ``[B]``
    on ``z``'s device. ``lam`` may be a number, a 0-d tensor or a ``[B]`` tensor."""
    if not isinstance(z, Tensor):
        raise TypeError(f"z must be a torch.Tensor, got {type(z).__name__}")
    if z.dim() != 4:
        raise ValueError(f"z must be 4-D [B, C, h, w], got {z.dim()}-D tensor of shape {tuple(z.shape)}")
    if not z.is_floating_point():
        raise TypeError(f"z must be a floating-point tensor, got {z.dtype}")
    b, c, h, w = z.shape
    if b < 1 or h < 1 or w < 1:
        raise ValueError(f"z must have B, h, w >= 1, got shape {tuple(z.shape)}")
    if c != in_channels:
        raise ValueError(f"z must have in_channels={in_channels} channels, got {c} (shape {tuple(z.shape)})")
    if isinstance(lam, bool):
        raise TypeError("lam must be a float tensor [B] or a number, got bool")
    if isinstance(lam, (int, float)):
        lam = torch.tensor(float(lam))
    if not isinstance(lam, Tensor):
        raise TypeError(f"lam must be a float tensor [B] or a number, got {type(lam).__name__}")
    if not lam.is_floating_point():
        raise TypeError(f"lam must be a floating-point tensor, got {lam.dtype}")
    if lam.dim() == 0:
        lam = lam.expand(b)
    if lam.shape != (b,):
        raise ValueError(f"lam must have shape [B]=[{b}] (or be a scalar), got {tuple(lam.shape)}")
    if not isinstance(index, Tensor):
        raise TypeError(f"index must be a torch.Tensor of integers, got {type(index).__name__}")
    if index.dtype == torch.bool or index.is_floating_point() or index.is_complex():
        raise TypeError(f"index must be an integer (long) tensor, got {index.dtype}")
    if index.shape != (b,):
        raise ValueError(f"index must have shape [B]=[{b}], got {tuple(index.shape)}")
    lam = lam.to(device=z.device, dtype=torch.float32)
    index = index.to(device=z.device, dtype=torch.long)
    lam_ok, index_ok = ((lam >= 0) & (lam <= 1)).all(), ((index >= 0) & (index < b)).all()
    if z.device.type != "cpu":
        # no host sync per call on an accelerator: the check runs asynchronously and fails the
        # next synchronising operation with the message
        torch._assert_async(lam_ok, "lam must lie in [0, 1] (share of the original sample)")
        torch._assert_async(index_ok, f"index must hold partners in [0, B-1]=[0, {b - 1}]")
        return lam, index
    ok = torch.stack([lam_ok, index_ok]).tolist()
    if not ok[0]:
        raise ValueError(f"lam must lie in [0, 1] (share of the original sample), got values "
                         f"in [{lam.min().item():.4g}, {lam.max().item():.4g}]")
    if not ok[1]:
        raise ValueError(f"index must hold partners in [0, B-1]=[0, {b - 1}], got values in "
                         f"[{index.min().item()}, {index.max().item()}]")
    return lam, index


def check_out_size(out_size, hw: Tuple[int, int]) -> Tuple[int, int]:
    """``None`` -> ``hw`` (no upsampling); an int ``n`` -> ``(n, n)``; a pair of positive ints."""
    if out_size is None:
        return hw
    if isinstance(out_size, int) and not isinstance(out_size, bool):
        out_size = (out_size, out_size)
    if isinstance(out_size, torch.Size):
        out_size = tuple(out_size)
    if not isinstance(out_size, (tuple, list)) or len(out_size) != 2 or not all(
            isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in out_size):
        raise ValueError(f"out_size must be None, a positive int or a pair (H, W) of positive ints, got {out_size!r}")
    return int(out_size[0]), int(out_size[1])


def check_choice(name: str, value, choices: Sequence[str]) -> str:
    if value not in choices:
        raise ValueError(f"{name} must be one of {list(choices)}, got {value!r}")
    return value


def check_positive_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return value


def lam_column_init(weight: Tensor, fan_in: int) -> None:
    """Init a ``[out]`` lambda-weight like one more input column of a default-initialised 1x1 conv."""
    bound = 1.0 / math.sqrt(fan_in)
    with torch.no_grad():
        weight.uniform_(-bound, bound)


def attention_logits_softmax(q: Tensor, k: Tensor, attn_norm: str) -> Tensor:
    """``softmax_q(q[p] . k[q] / N)`` for ``q, k: [B, d, h, w]`` -> float32 ``[B, hw, hw]``.

    Runs in float32 with autocast off. ``"scaled"``: ``N = sqrt(d)``. ``"cosine"``:
    ``q`` and ``k`` are L2-normalised per position and multiplied by ``sqrt(d)``, so the
    logits lie in ``[-sqrt(d), sqrt(d)]`` whatever the feature magnitude.
    """
    d = q.shape[1]
    with torch.autocast(device_type=q.device.type, enabled=False):
        qf = q.float().flatten(2)  # [B, d, hw]
        kf = k.float().flatten(2)
        if attn_norm == "cosine":
            qf = F.normalize(qf, dim=1)
            kf = F.normalize(kf, dim=1)
            scale = math.sqrt(d)
        else:
            scale = 1.0 / math.sqrt(d)
        logits = torch.bmm(qf.transpose(1, 2), kf) * scale  # [B, hw_q, hw_k]
        return logits.softmax(dim=-1)


def attend(attention: Optional[Tensor], content: Tensor) -> Tensor:
    """``P @ C``: float32 ``[B, 1, h, w]`` (the content itself when there is no attention)."""
    with torch.autocast(device_type=content.device.type, enabled=False):
        c = content.float()
        if attention is None:
            return c
        b, _, h, w = c.shape
        return torch.bmm(attention, c.reshape(b, h * w, 1)).view(b, 1, h, w)


def upsample_mask(mask: Tensor, size: Tuple[int, int], mode: str) -> Tensor:
    """Upsample a float32 ``[B, 1, h, w]`` mask to ``size`` (identity when the size already matches)."""
    if tuple(mask.shape[-2:]) == tuple(size):
        return mask
    with torch.autocast(device_type=mask.device.type, enabled=False):
        if mode == "bilinear":
            return F.interpolate(mask.float(), size=size, mode="bilinear", align_corners=False)
        return F.interpolate(mask.float(), size=size, mode="nearest")


def param_dtype(module: nn.Module) -> torch.dtype:
    return next(module.parameters()).dtype


def init_generator_weights(module: nn.Module, init: str) -> None:
    """``"reference"``: every convolution weight (and every lambda weight, the extra input column of a
    lambda-concatenating convolution) ~ N(0, 0.01^2), biases 0 - the reference implementation's init of
    the Mix Block. With it the attention logits start near 0, so the attention starts near *uniform*
    (every position weighs every other alike) instead of near identity, and the content starts near 0
    (masks near 0.5): the masks are shaped by training, not by the random projection. PyTorch's
    default init (``"default"``) is 5-7x larger and starts the Mixer's attention near identity (measured
    on the CPU recipe's 7x7 stage-3 map: mean self-attention weight 0.64 at init, uniform is 0.02).
    BatchNorm layers keep their init (weight 1, bias 0)."""
    check_choice("init", init, INITS)
    if init == "default":
        return
    with torch.no_grad():
        for name, p in module.named_parameters():
            leaf = name.rsplit(".", 1)[-1]
            owner = module.get_submodule(name.rsplit(".", 1)[0]) if "." in name else module
            if isinstance(owner, nn.modules.batchnorm._BatchNorm):
                continue
            if leaf == "bias":
                p.zero_()
            elif leaf == "weight" or leaf.endswith("lam") or leaf == "lam_weight":
                p.normal_(0.0, REFERENCE_INIT_STD)


def self_attention_weight(attention: Optional[Tensor]) -> Optional[Tensor]:
    """Mean weight a position gives to itself, ``mean_{b,p} P[b, p, p]`` (a detached 0-d float32 tensor; ``None``
    without attention). Uniform attention over ``hw`` positions gives ``1 / hw``, identity gives 1: a
    Mixer whose value is near 1 makes each sample's mask from its own position alone."""
    if attention is None:
        return None
    return attention.detach().float().diagonal(dim1=1, dim2=2).mean()


# ---------------------------------------------------------------------- MixBlock
class MixBlock(nn.Module):
    """AutoMix's Mix Block (see the module docstring for the formula).

    Args:
        in_channels: channels ``C`` of the feature map ``z``.
        attn_channels: width ``d`` of the shared query/key projection ``W_P``
            (default ``max(1, in_channels // 2)``, the reference width).
        upsample: ``"nearest"`` (AutoMix) or ``"bilinear"``.
        attn_norm: ``"scaled"`` (``N = sqrt(d)``, the reference) or ``"cosine"``
            (bounded logits, see :func:`attention_logits_softmax`).
        lam_concat: embed lambda by concatenation (the paper's Eq. 4, and the reference on large
            data sets); ``False`` leaves lambda out of the block, as the reference's CIFAR configs do
            ("no lambda concat for small-scale datasets"): the mask then depends on lambda only
            through the mask loss's pressure on its mean.
        init: ``"reference"`` (N(0, 0.01) convolutions, :func:`init_generator_weights`) or
            ``"default"`` (PyTorch's).

    Call ``gen(z, lam, index, out_size=(H, W))`` -> :class:`GeneratorOutput`.
    """

    def __init__(self, in_channels: int, attn_channels: Optional[int] = None,
                 upsample: str = "nearest", attn_norm: str = "scaled", lam_concat: bool = True,
                 init: str = "reference") -> None:
        super().__init__()
        self.in_channels = check_positive_int("in_channels", in_channels)
        if not isinstance(lam_concat, bool):
            raise TypeError(f"lam_concat must be a bool, got {type(lam_concat).__name__} ({lam_concat!r})")
        self.lam_concat = lam_concat
        self.init = check_choice("init", init, INITS)
        if attn_channels is None:
            attn_channels = max(1, in_channels // 2)
        self.attn_channels = check_positive_int("attn_channels", attn_channels)
        self.upsample = check_choice("upsample", upsample, UPSAMPLE_MODES)
        self.attn_norm = check_choice("attn_norm", attn_norm, ATTN_NORMS)
        # W_P over concat(z, lam) = conv(z) + w_lam * lam (shared by query and key)
        self.proj = nn.Conv2d(in_channels, self.attn_channels, kernel_size=1)
        # W_Z over concat(z_i, lam)
        self.content = nn.Conv2d(in_channels, 1, kernel_size=1)
        if lam_concat:
            self.proj_lam = nn.Parameter(torch.empty(self.attn_channels))
            self.content_lam = nn.Parameter(torch.empty(1))
            lam_column_init(self.proj_lam, in_channels + 1)
            lam_column_init(self.content_lam, in_channels + 1)
        else:
            self.register_parameter("proj_lam", None)
            self.register_parameter("content_lam", None)
        init_generator_weights(self, init)

    def extra_repr(self) -> str:
        return (f"in_channels={self.in_channels}, attn_channels={self.attn_channels}, "
                f"upsample={self.upsample!r}, attn_norm={self.attn_norm!r}, lam_concat={self.lam_concat}, "
                f"init={self.init!r}")

    def forward(self, z: Tensor, lam, index: Tensor,
                out_size: Union[None, int, Tuple[int, int]] = None) -> GeneratorOutput:
        """Generate ``s_i`` for every sample and its partner ``index[i]``.

        Args:
            z: features ``[B, C, h, w]`` of the batch (any float dtype, channels_last kept).
            lam: float ``[B]`` (or a scalar): share of the ORIGINAL sample ``i``.
            index: long ``[B]``: partner ``j = index[i]``.
            out_size: ``(H, W)`` of the images to mix (``None``: feature resolution).
        """
        lam, index = check_generator_inputs(z, lam, index, self.in_channels)
        b, _, h, w = z.shape
        size = check_out_size(out_size, (h, w))
        x = z.to(param_dtype(self))
        lam4 = lam.view(b, 1, 1, 1)
        feat = self.proj(x)  # W z for every sample; the partner's is a gather
        q, k, content = feat, feat[index], self.content(x)
        if self.lam_concat:
            w_lam = self.proj_lam.view(1, -1, 1, 1)
            q = q + w_lam * lam4.to(feat.dtype)
            k = k + w_lam * (1 - lam4).to(feat.dtype)
            content = content + self.content_lam.view(1, 1, 1, 1) * lam4.to(x.dtype)
        attention = attention_logits_softmax(q, k, self.attn_norm)
        logits = attend(attention, content)
        small = torch.sigmoid(logits)
        mask = upsample_mask(small, size, self.upsample)
        out_dtype = z.dtype
        mask_out = mask.to(out_dtype)
        return GeneratorOutput(
            mask=mask_out, mask_small=small.to(out_dtype), mask_raw=mask_out,
            logits=logits, content=content.float(), attention=attention,
            lam=lam, index=index, adjusted=torch.zeros(b, dtype=torch.bool, device=z.device),
        )
