"""SAMix's Mixer ("Mix Block+"), the class :class:`SAMixGenerator`: adaptive lambda encoding, mixing
attention, non-linear content, lambda adjusting.

Papers: samix.txt Sec. 3.2 (Eq. 9-11) and A.2; amix.txt Sec. 3.2 (Eq. 5). With
``j = index[i]``::

    z_{i,lam}   = (1 + gamma * lam) z_i              # adaptive lambda encoding, gamma in [0, 1]
    z_{j,1-lam} = (1 + gamma * (1 - lam)) z_j
    z~  = concat_channels(z_{i,lam}, z_{j,1-lam})   # [B, 2C, h, w]
    P   = softmax_q( (W_P z~)[p] . (W_P z~)[q] / N )   # "mixing attention", [hw, hw]
    C_i = C_NC(z_{i,lam})                            # 1x1 conv, BN, ReLU, Dropout(0.1), 1x1 conv -> 1
    s_i = U( sigmoid( P @ C_i ) )                    # U: bilinear upsampling

Because ``W_P z~ = W_a z_i + W_b z_j``, the dot products hold the cross terms
between the two samples and the self terms of each one: cross- and
self-attention at once (Eq. 10). Eq. 10 prints one ``W_P`` for query and key
(``qk="shared"``); the default ``qk="separate"`` follows the reference
implementation, which builds separate query and key projections whenever it
concatenates the two samples: with one shared projection the logit of a
position with itself, ``|W_P z~_p|^2``, is the largest of its row for any
features, so the attention is biased towards identity and a sample's mask
becomes a saliency map of that sample alone, blind to its partner. Their width
``attn_channels`` defaults to ``in_channels // 2``, like the content module's
hidden width. Every convolution starts N(0, 0.01) (``init="reference"``, see
:func:`~samix.generators.mixblock.init_generator_weights`): the attention starts
near uniform.

Every module can be switched off for the ablation of samix.txt Table 10:

- ``attention=False``: no ``W_P``; ``s_i = U(sigmoid(C_i))`` (content only).
- ``adaptive_lambda=False``: lambda enters by concatenation as in AutoMix's
  :class:`~samix.generators.MixBlock` (a constant ``lam`` / ``1 - lam`` channel,
  computed as a learnable weight times ``lam`` added to the first 1x1
  convolution of each branch, after the content module's BatchNorm); no ``gamma``.
- ``nonlinear_content=False``: ``C_i`` is a single 1x1 convolution (no BN, no Dropout).
- ``lam_adjust=False``: never adjust (see below).

``gamma`` (a documented choice). The paper asks for a learnable scalar
constrained to ``[0, 1]`` and initialised to 0. It is stored unconstrained in
``gamma_raw`` (initialised to 0) and used as ``clamp(gamma_raw, 0, 1)``, so the
value in the forward pass lies in ``[0, 1]`` by construction. The gradient is
projected-gradient style: it passes inside the interval, and at or beyond a
bound only when a descent step moves the parameter back inside. A plain clamp
would block the gradient as soon as one step pushed the parameter below 0 -
where it starts - and freeze the encoding off for good; a straight-through
clamp would let pushes against the bound drag the raw value arbitrarily far
out. Here a push against the bound leaves ``gamma_raw`` where it is (up to the
optimizer's momentum) and the first gradient pointing inward moves it back.
Read the effective value with :attr:`SAMixGenerator.gamma`. With ``gamma = 0`` (the init)
the mask does not depend on ``lam`` except through lambda adjusting; the mask
and generation losses teach ``gamma`` to grow. Measured with the mask loss
alone on fixed random features, ``gamma`` climbs to its bound 1 and the mask
mean follows ``lam`` to about 0.06-0.09 (mean absolute error; the lambda
channel of :class:`~samix.generators.MixBlock` gets to about 0.02): scaling the
features by at most 2x is a weak handle on the mean, which lambda adjusting
then fixes exactly.

Initial gamma (``gamma_init``). The paper initialises ``gamma`` to 0; the reference implementation
uses a fixed multiplier of 1 (no learned ``gamma``). At ``gamma = 0`` the content logit is ``f(z)``
and the sign of ``f`` gets no pressure from ``lam``, while the gradient reaching ``gamma`` is
``~ E[sign(lam - mu) lam f]``: with ``f`` mostly negative it points below 0, the projected clamp
holds ``gamma`` at 0, and the mask stays blind to ``lam`` (measured on the real Fashion-MNIST SAMix
run: ``gamma`` at 0.000 after 24 epochs, raw masks identical for lam 0 ... 1; on the toy
mask-loss task with one lam per batch, stuck in 1 of 3 seeds). Starting at ``gamma_init = 1`` (the
reference's multiplier, still learned within [0, 1]) avoids that saddle: in the same run, gamma
stays near 1, the raw masks' mean error |mu - lam| falls to 0.09-0.11 by epoch 12 (0.19-0.26 with
gamma_init = 0) and at epoch 10 their mean rises from about 0.2 to 0.7 as lam goes from 0 to 1 on
fixed test pairs. The default stays the paper's 0.

Where lambda enters the content module (a documented deviation from the letter of Eq. 9). The
paper scales the *input* ``z_i`` by ``(1 + gamma * lam)`` before the content module
conv-BN-ReLU-Dropout-conv. The pipelines draw one ``lam`` per batch, and a per-batch constant
factor in front of a bias-free convolution followed by BatchNorm in training mode is normalised
away exactly: ``BN(s * W z) = BN(W z)``. As printed, the content map - and with it the level of the
mask - could not depend on ``lam`` at all and ``gamma`` would receive no gradient from it (measured:
raw masks identical for lam 0.2 and 0.8, gamma stuck at 0). So the factor is applied right after
the BatchNorm, on the normalised hidden map. Without BatchNorm this is the same function (ReLU and
Dropout are positively homogeneous, the convolutions linear): the content logit becomes
``(1 + gamma * lam) * f(z_i) + b``, the handle on the mask's level the encoding is meant to give.
The attention path (no normalisation) takes the scaled ``z_i`` and ``z_j`` as printed. The same
holds for the ablation ``adaptive_lambda=False``: the lambda channel of the content module is added
after the BatchNorm (``BN(W z) + w_lam * lam``).

Lambda adjusting (samix.txt A.2; a documented reading). As printed, "if
``mu_i < lam``, ``s^_i = (mu_i / lam) s_i``" would lower the mean further. The
rule implemented (:func:`lambda_adjust`) scales down the mask of whichever
sample is over-represented, by the ratio of target to realised mean, and keeps
``s^_j = 1 - s^_i``:

- ``mu_i > lam``:  ``s^_i = (lam / mu_i) s_i``                       (``x_i`` has too much)
- ``mu_i < lam``:  ``s^_j = ((1 - lam) / (1 - mu_i)) s_j``, i.e.
  ``s^_i = 1 - (1 - lam) / (1 - mu_i) (1 - s_i)``                   (``x_j`` has too much)

Both give ``mean(s^_i) = lam`` exactly, stay in ``[0, 1]``, keep the order of
the pixels and keep every pixel that fully belongs to the under-represented
sample; the printed ratio of means is applied to the sample whose mean exceeds
its target. The mean it compares with is the ``lam`` given to this call (the
one the mask was generated for - the reference compared the Mixer's own
lambda with the student's mask, a pitfall). When to adjust: in eval mode
always (a frozen SAMix-P Mixer), in training mode each sample independently
with probability ``lam_adjust_prob`` (0.25 in the 800-epoch recipe), and
``forward(..., adjust=True/False)`` overrides both. ``adjust`` may also be a bool
``[B]`` tensor: the samples it marks follow that policy, the others are never
adjusted - how the training pipelines restrict adjusting to the student's
(detached) masks, as the reference does, and keep it off the masks the Mixer
learns from (an adjusted mask has its mean pinned to ``lam``, which removes the
gradient through the mean that the mask loss and the generation loss need).
"""

from __future__ import annotations

from typing import Optional, Tuple, Union

import torch
from torch import Tensor, nn

from .mixblock import (
    ATTN_NORMS,
    UPSAMPLE_MODES,
    GeneratorOutput,
    attend,
    attention_logits_softmax,
    check_choice,
    check_generator_inputs,
    check_out_size,
    check_positive_int,
    init_generator_weights,
    lam_column_init,
    param_dtype,
    upsample_mask,
)

QK_MODES = ("separate", "shared")

__all__ = ["QK_MODES", "SAMixGenerator", "lambda_adjust"]


def lambda_adjust(mask: Tensor, lam) -> Tensor:
    """Rescale each mask so that its mean equals ``lam`` exactly (see the module docstring).

    Args:
        mask: ``[B, ...]`` in ``[0, 1]``, weight of the original sample.
        lam: float ``[B]`` or a number in ``[0, 1]``: target mean of each mask.

    Returns:
        The adjusted mask (same shape and dtype; computed in float32, differentiable).
        ``mu > lam``: ``lam / mu * s``; ``mu < lam``: ``1 - (1 - lam) / (1 - mu) * (1 - s)``.
    """
    if not isinstance(mask, Tensor) or not mask.is_floating_point():
        raise TypeError(f"mask must be a floating-point torch.Tensor, got "
                        f"{type(mask).__name__ if not isinstance(mask, Tensor) else mask.dtype}")
    if mask.dim() < 2:
        raise ValueError(f"mask must be [B, ...] with at least 2 dims, got shape {tuple(mask.shape)}")
    b = mask.shape[0]
    lam_t = _lam_vector(lam, b, mask.device)
    if not bool(((lam_t >= 0) & (lam_t <= 1)).all()):
        raise ValueError(f"lam must lie in [0, 1], got values in [{lam_t.min().item():.4g}, {lam_t.max().item():.4g}]")
    return _lambda_adjust(mask, lam_t)


def _lambda_adjust(mask: Tensor, lam_t: Tensor) -> Tensor:
    """:func:`lambda_adjust` without input checks (``lam_t``: float32 ``[B]`` on ``mask``'s device)."""
    b = mask.shape[0]
    with torch.autocast(device_type=mask.device.type, enabled=False):
        s = mask.float()
        view = (b,) + (1,) * (mask.dim() - 1)
        mu = s.mean(dim=tuple(range(1, mask.dim()))).view(view)
        lam4 = lam_t.view(view)
        shrink_i, shrink_j = mu > lam4, mu < lam4
        # each branch divides by its own (positive) excess mean and by 1 where it is not
        # selected, floored at 1e-12: no branch can reach inf, so torch.where's backward
        # never multiplies a zero gradient by inf (a NaN for masks with a mean near 0 or 1)
        mu_i = torch.where(shrink_i, mu, torch.ones_like(mu)).clamp_min(1e-12)
        mu_j = torch.where(shrink_j, 1 - mu, torch.ones_like(mu)).clamp_min(1e-12)
        down = s * (lam4 / mu_i)
        up = 1 - (1 - s) * ((1 - lam4) / mu_j)
        out = torch.where(shrink_i, down, torch.where(shrink_j, up, s))
    return out.clamp(0, 1).to(mask.dtype)


def _lam_vector(lam, b: int, device) -> Tensor:
    if isinstance(lam, bool):
        raise TypeError("lam must be a float tensor [B] or a number, got bool")
    if isinstance(lam, (int, float)):
        lam = torch.tensor(float(lam))
    if not isinstance(lam, Tensor) or not lam.is_floating_point():
        raise TypeError(f"lam must be a float tensor [B] or a number, got "
                        f"{type(lam).__name__ if not isinstance(lam, Tensor) else lam.dtype}")
    if lam.dim() == 0:
        lam = lam.expand(b)
    if lam.shape != (b,):
        raise ValueError(f"lam must have shape [B]=[{b}] (or be a scalar), got {tuple(lam.shape)}")
    return lam.to(device=device, dtype=torch.float32)


class _InwardClamp(torch.autograd.Function):
    """``clamp(x, low, high)`` whose gradient passes inside the interval and, at or beyond a bound,
    only when a descent step would move ``x`` back inside (projected-gradient style)."""

    @staticmethod
    def forward(ctx, x: Tensor, low: float, high: float) -> Tensor:
        ctx.save_for_backward(x)
        ctx.low, ctx.high = low, high
        return x.clamp(low, high)

    @staticmethod
    def backward(ctx, grad: Tensor):
        (x,) = ctx.saved_tensors
        inside = (x > ctx.low) & (x < ctx.high)
        # a descent step moves x by -grad: inward at the low bound iff grad < 0, at the high bound iff grad > 0
        inward = ((x <= ctx.low) & (grad < 0)) | ((x >= ctx.high) & (grad > 0))
        return torch.where(inside | inward, grad, torch.zeros_like(grad)), None, None


class _LamConv(nn.Module):
    """A 1x1 convolution over ``concat(x, lam-map)``: ``conv(x) + w_lam * lam`` (optional lam term)."""

    def __init__(self, in_channels: int, out_channels: int, with_lam: bool, bias: bool = True) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size=1, bias=bias)
        if with_lam:
            self.lam_weight = nn.Parameter(torch.empty(out_channels))
            lam_column_init(self.lam_weight, in_channels + 1)
        else:
            self.register_parameter("lam_weight", None)

    def forward(self, x: Tensor, lam4: Optional[Tensor]) -> Tensor:
        y = self.conv(x)
        if self.lam_weight is not None:
            y = y + self.lam_weight.view(1, -1, 1, 1) * lam4.to(y.dtype)
        return y


class SAMixGenerator(nn.Module):
    """SAMix's Mixer (see the module docstring for formulas and documented choices).

    Args:
        in_channels: channels ``C`` of the feature map ``z``.
        attn_channels: width of the query/key projections (default ``max(1, C // 2)``).
        content_channels: hidden width of the non-linear content module (default ``max(1, C // 2)``).
        dropout: dropout ratio inside the non-linear content module (0.1 in the paper).
        upsample: ``"bilinear"`` (SAMix) or ``"nearest"``.
        attention: use the mixing attention (off: mask from the content only).
        adaptive_lambda: ``(1 + gamma * lam)`` encoding (off: lambda concatenation).
        nonlinear_content: conv-BN-ReLU-Dropout-conv content (off: one 1x1 conv).
        lam_adjust: allow lambda adjusting.
        lam_adjust_prob: per-sample probability of adjusting in training mode.
        attn_norm: ``"scaled"`` (``N = sqrt(d)``) or ``"cosine"`` (bounded logits).
        gamma_init: initial ``gamma`` in ``[0, 1]`` (0, the paper; see "Initial gamma" in the module
            docstring for why the CPU recipe starts at 1).
        qk: ``"separate"`` query and key projections (the reference) or one ``"shared"`` ``W_P`` (Eq. 10
            as printed; see the module docstring for why it starts near identity).
        init: ``"reference"`` (every convolution N(0, 0.01)) or ``"default"`` (PyTorch's).

    A frozen, pre-trained Mixer (SAMix-P) is ``mixer.eval().requires_grad_(False)``:
    deterministic (Dropout off, BN running statistics) and always lambda-adjusted.
    """

    def __init__(
        self,
        in_channels: int,
        attn_channels: Optional[int] = None,
        content_channels: Optional[int] = None,
        dropout: float = 0.1,
        upsample: str = "bilinear",
        attention: bool = True,
        adaptive_lambda: bool = True,
        nonlinear_content: bool = True,
        lam_adjust: bool = True,
        lam_adjust_prob: float = 0.25,
        attn_norm: str = "scaled",
        gamma_init: float = 0.0,
        qk: str = "separate",
        init: str = "reference",
    ) -> None:
        super().__init__()
        self.in_channels = check_positive_int("in_channels", in_channels)
        half = max(1, in_channels // 2)
        self.attn_channels = check_positive_int("attn_channels", half if attn_channels is None else attn_channels)
        self.content_channels = check_positive_int(
            "content_channels", half if content_channels is None else content_channels)
        for name, flag in (("attention", attention), ("adaptive_lambda", adaptive_lambda),
                           ("nonlinear_content", nonlinear_content), ("lam_adjust", lam_adjust)):
            if not isinstance(flag, bool):
                raise TypeError(f"{name} must be a bool, got {type(flag).__name__} ({flag!r})")
        for name, value in (("dropout", dropout), ("lam_adjust_prob", lam_adjust_prob), ("gamma_init", gamma_init)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be a number in [0, 1], got {value!r}")
        self.dropout = float(dropout)
        self.upsample = check_choice("upsample", upsample, UPSAMPLE_MODES)
        self.attn_norm = check_choice("attn_norm", attn_norm, ATTN_NORMS)
        self.qk = check_choice("qk", qk, QK_MODES)
        self.init = init
        self.use_attention = attention
        self.adaptive_lambda = adaptive_lambda
        self.nonlinear_content = nonlinear_content
        self.lam_adjust = lam_adjust
        self.lam_adjust_prob = float(lam_adjust_prob)

        concat_lam = not adaptive_lambda
        if adaptive_lambda:
            self.gamma_raw = nn.Parameter(torch.tensor(float(gamma_init)))
        else:
            self.register_parameter("gamma_raw", None)
        if attention:
            # W_P over z~ = concat(z_i, z_j) [+ lam channels]
            self.proj = _LamConv(2 * in_channels, self.attn_channels, with_lam=concat_lam)
            self.key_proj = (_LamConv(2 * in_channels, self.attn_channels, with_lam=concat_lam)
                             if qk == "separate" else None)
        else:
            self.proj = None
            self.key_proj = None
        if nonlinear_content:
            # lambda enters after the BatchNorm (see "Where lambda enters" in the module docstring)
            self.content_in = _LamConv(in_channels, self.content_channels, with_lam=False, bias=False)
            if concat_lam:
                self.content_lam = nn.Parameter(torch.empty(self.content_channels))
                lam_column_init(self.content_lam, in_channels + 1)
            else:
                self.register_parameter("content_lam", None)
            self.content_body = nn.Sequential(
                nn.BatchNorm2d(self.content_channels),
                nn.ReLU(inplace=True),
                nn.Dropout(self.dropout),
                nn.Conv2d(self.content_channels, 1, kernel_size=1),
            )
        else:
            self.content_in = _LamConv(in_channels, 1, with_lam=concat_lam)
            self.content_body = None
            self.register_parameter("content_lam", None)
        init_generator_weights(self, init)

    # ------------------------------------------------------------------ gamma
    def gamma_tensor(self) -> Tensor:
        """``clamp(gamma_raw, 0, 1)`` with the inward-only gradient of :class:`_InwardClamp` (0-d)."""
        if self.gamma_raw is None:
            raise AttributeError("gamma exists only with adaptive_lambda=True")
        return _InwardClamp.apply(self.gamma_raw, 0.0, 1.0)

    @property
    def gamma(self) -> float:
        """The effective gamma in ``[0, 1]`` (a float, for logging); ``0.0`` without adaptive lambda."""
        if self.gamma_raw is None:
            return 0.0
        return float(self.gamma_raw.detach().clamp(0.0, 1.0))

    def extra_repr(self) -> str:
        return (f"in_channels={self.in_channels}, attn_channels={self.attn_channels}, "
                f"content_channels={self.content_channels}, dropout={self.dropout}, "
                f"upsample={self.upsample!r}, attention={self.use_attention}, "
                f"adaptive_lambda={self.adaptive_lambda}, nonlinear_content={self.nonlinear_content}, "
                f"lam_adjust={self.lam_adjust}, lam_adjust_prob={self.lam_adjust_prob}, "
                f"attn_norm={self.attn_norm!r}, qk={self.qk!r}, init={self.init!r}, gamma={self.gamma:.3g}")

    # ------------------------------------------------------------------ forward
    def forward(self, z: Tensor, lam, index: Tensor,
                out_size: Union[None, int, Tuple[int, int]] = None,
                adjust: Union[None, bool, Tensor] = None,
                generator: Optional[torch.Generator] = None) -> GeneratorOutput:
        """Generate ``s_i`` for every sample and its partner ``index[i]``.

        Args:
            z: features ``[B, C, h, w]`` of the batch (any float dtype, channels_last kept).
            lam: float ``[B]`` (or a scalar): share of the ORIGINAL sample ``i``.
            index: long ``[B]``: partner ``j = index[i]``.
            out_size: ``(H, W)`` of the images to mix (``None``: feature resolution).
            adjust: ``None``: the module's policy (never if ``lam_adjust=False``; always in
                eval mode; with probability ``lam_adjust_prob`` per sample in training);
                ``True``/``False``: adjust every sample / none; a bool ``[B]`` tensor: the marked
                samples follow the module's policy, the others are never adjusted.
            generator: ``torch.Generator`` for the adjust draws (``None``: global RNG).
        """
        lam, index = check_generator_inputs(z, lam, index, self.in_channels)
        b, _, h, w = z.shape
        eligible = None
        if isinstance(adjust, Tensor):
            if adjust.dtype != torch.bool or adjust.shape != (b,):
                raise ValueError(f"adjust as a tensor must be bool of shape [B]=[{b}] (the samples that may be "
                                 f"adjusted), got {adjust.dtype} of shape {tuple(adjust.shape)}")
            eligible, adjust = adjust.to(z.device), None
        elif adjust is not None and not isinstance(adjust, bool):
            raise TypeError(f"adjust must be None, a bool or a bool [B] tensor, got {type(adjust).__name__}")
        size = check_out_size(out_size, (h, w))
        if self.nonlinear_content and self.training and b * h * w == 1:
            raise ValueError("Mixer with nonlinear_content in training mode needs more than one value per "
                             f"channel for BatchNorm, got z of shape {tuple(z.shape)} (B*h*w == 1); "
                             "use eval mode or a larger batch/feature map")
        x = z.to(param_dtype(self))
        lam4 = lam.view(b, 1, 1, 1)
        x_j = x[index]
        if self.adaptive_lambda:
            g = self.gamma_tensor()
            scale_i = (1 + g * lam4).to(x.dtype)
            zi = x * scale_i
            zj = x_j * (1 + g * (1 - lam4)).to(x.dtype)
        else:
            zi, zj = x, x_j

        attention = None
        if self.proj is not None:
            # concat(z_i, lam, z_j, 1 - lam): the two constant channels fold into one lam
            # weight (w_a lam + w_b (1 - lam) = (w_a - w_b) lam + w_b, w_b joining the bias)
            pair = torch.cat([zi, zj], dim=1)
            q = self.proj(pair, lam4)
            k = q if self.key_proj is None else self.key_proj(pair, lam4)
            attention = attention_logits_softmax(q, k, self.attn_norm)
        if self.content_body is None:
            content = self.content_in(zi, lam4)
        else:
            # BN(conv(z_i)), then the lambda encoding, then ReLU-Dropout-conv: a per-batch constant
            # applied before the BatchNorm would be normalised away (module docstring)
            hidden = self.content_body[0](self.content_in(x, None))
            if self.adaptive_lambda:
                hidden = hidden * scale_i.to(hidden.dtype)
            else:
                hidden = hidden + self.content_lam.view(1, -1, 1, 1) * lam4.to(hidden.dtype)
            content = self.content_body[1:](hidden)
        logits = attend(attention, content)
        small = torch.sigmoid(logits)
        mask_raw = upsample_mask(small, size, self.upsample)

        if adjust is None:
            if not self.lam_adjust:
                adjust = False
            elif not self.training or self.lam_adjust_prob >= 1.0:
                adjust = True
            elif self.lam_adjust_prob <= 0.0:
                adjust = False
        if adjust is None:  # per-sample draws (training mode, 0 < prob < 1)
            gen_device = generator.device if generator is not None else z.device
            draws = torch.rand(b, generator=generator, device=gen_device).to(z.device)
            do = draws < self.lam_adjust_prob
        else:
            do = torch.full((b,), adjust, dtype=torch.bool, device=z.device)
        if eligible is not None:
            do = do & eligible
        if eligible is None and adjust is not None:
            mask = _lambda_adjust(mask_raw, lam) if adjust else mask_raw
        else:
            mask = torch.where(do.view(b, 1, 1, 1), _lambda_adjust(mask_raw, lam), mask_raw)

        out_dtype = z.dtype
        return GeneratorOutput(
            mask=mask.to(out_dtype), mask_small=small.to(out_dtype), mask_raw=mask_raw.to(out_dtype),
            logits=logits, content=content.float(), attention=attention,
            lam=lam, index=index, adjusted=do,
        )
