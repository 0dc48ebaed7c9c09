"""timm models behind the samix :class:`~samix.models.base.Backbone` interface.

Named builders: ``timm_resnet18``, ``timm_resnet50`` (torchvision-style stem: 7x7 stride-2 conv +
max-pool), ``deit_small``, ``vit_small``, ``swin_tiny``; and any ``timm.create_model`` name of a
supported family through ``build_model("timm:<name>", ...)`` (e.g. ``"timm:resnext50_32x4d"``,
``"timm:convnext_atto"``, ``"timm:vit_tiny_patch16_224"``). Weights are never downloaded
(``pretrained=False`` always); load local files with ``build_model(..., pretrained="file")``.

The timm model is kept whole as ``self.net``, so the state dict is timm's with a ``net.`` prefix
and timm checkpoints load directly (:mod:`samix.models.weights` aligns the prefix). ``stem`` and
``stages`` are *views* built on access from ``net``'s modules (for parameter groups and freezing);
they run in timm's native layout (tokens for ViT, NHWC for Swin). The interface methods
(``features``, ``forward_from``) always speak ``[B, C, H, W]``.

Stage mapping per family:

* **ResNet** (timm ``ResNet``): stem = conv1/bn1/act1/maxpool, stages = layer1..layer4.
  ``width`` scales the stage channels (and the stem of deep-stem variants; timm's plain 7x7 stem
  stays at 64 channels).
* **ConvNeXt**: stem = ``net.stem``, stages = ``net.stages[0..3]``; ``width`` scales the dims.
* **ViT / DeiT** (timm ``VisionTransformer``): stem = patch embedding, class (and register) tokens,
  position embedding; the blocks split into 4 groups of equal size (``depth % 4 == 0``; otherwise
  sizes differ by one, larger groups first) = stages; the final norm belongs to the head.
  ``features(x, l)`` returns the *patch* tokens as a ``[B, C, H/p, W/p]`` map. The class/register
  ("prefix") tokens are not in the map: ``features`` keeps them in a one-entry cache
  (``(stage, tokens [B, P, C])``, holding the autograd graph) and ``forward_from(h, l)`` prepends
  them again, so ``forward_from(features(x, l), l) == model(x)``. The cached tokens match ``h``
  when the stage and batch size agree; pass ``prefix_tokens=`` explicitly otherwise.
  :meth:`TimmViT.mix_extra_state` mixes the cached tokens with the same ``(lam, index)`` as a
  mixed map (ManifoldMix calls it), so mixing at a hidden stage mixes the whole token sequence.
  The cache is dropped by ``copy.deepcopy``/pickling; ``model(x)`` neither reads nor writes it.
  ``width`` scales ``embed_dim`` (kept a multiple of the head count). ``stage_channels = (C,) * 4``.
* **Swin** (timm ``SwinTransformer``): stem = patch embedding, stages = ``net.layers[0..3]``;
  timm's NHWC maps are permuted to NCHW at the interface and back inside (the permuted view is
  a channels_last tensor, no copy); the final norm belongs to the head. ``width`` scales
  ``embed_dim`` (kept a multiple of the first stage's head count).

ViT/DeiT/Swin take ``img_size`` (default 224; e.g. 32 or 64 for tests); the input must have that
size. Extra keyword arguments go to ``timm.create_model`` (``drop_path_rate``, ``patch_size``, ...).
"""

from __future__ import annotations

from typing import Dict, List, Optional, Tuple

import torch
from torch import Tensor, nn

from ._common import check_builder_args, scaled
from .base import Backbone, _check_stage, register_model, register_model_namespace

SUPPORTED_FAMILIES = ("ResNet", "ConvNeXt", "VisionTransformer", "SwinTransformer")


def _timm():
    try:
        import timm
    except ImportError as err:  # pragma: no cover - timm is installed in the dev environment
        raise ImportError("timm backbones need the timm package: pip install 'samix[timm]'") from err
    return timm


# --------------------------------------------------------------------------------------- base
class TimmBackbone(Backbone):
    """Common part of the timm adapters: ``self.net`` is the timm model."""

    family = "timm"

    def __init__(self, net: nn.Module, timm_name: str) -> None:
        super().__init__()
        self.net = net
        self.timm_name = timm_name
        self.num_classes = int(getattr(net, "num_classes", 0))

    @property
    def num_features(self) -> int:
        return int(self.stage_channels[-1])

    def get_classifier(self) -> nn.Module:
        return self.net.get_classifier()

    def reset_classifier(self, num_classes: int) -> None:
        check_builder_args(num_classes, 1, 1.0)
        self.net.reset_classifier(num_classes)
        self.num_classes = num_classes

    def extra_repr(self) -> str:
        return f"timm_name={self.timm_name!r}, stage_channels={tuple(self.stage_channels)}"


class TimmResNet(TimmBackbone):
    family = "ResNet"

    def __init__(self, net: nn.Module, timm_name: str) -> None:
        super().__init__(net, timm_name)
        self.stage_channels = tuple(int(f["num_chs"]) for f in net.feature_info[-4:])

    @property
    def stem(self) -> nn.Module:
        n = self.net
        return nn.Sequential(n.conv1, n.bn1, n.act1, n.maxpool)

    @property
    def stages(self) -> nn.ModuleList:
        return nn.ModuleList([getattr(self.net, f"layer{i}") for i in range(1, 5)])

    def forward_stem(self, x: Tensor) -> Tensor:
        n = self.net
        return n.maxpool(n.act1(n.bn1(n.conv1(x))))

    def forward_stage(self, h: Tensor, stage: int) -> Tensor:
        return getattr(self.net, f"layer{stage}")(h)

    def forward_head(self, h: Tensor, pre_logits: bool = False) -> Tensor:
        return self.net.forward_head(h, pre_logits=pre_logits)


class TimmConvNeXt(TimmBackbone):
    family = "ConvNeXt"

    def __init__(self, net: nn.Module, timm_name: str) -> None:
        super().__init__(net, timm_name)
        self.stage_channels = tuple(int(f["num_chs"]) for f in net.feature_info[-4:])

    @property
    def stem(self) -> nn.Module:
        return self.net.stem

    @property
    def stages(self) -> nn.ModuleList:
        return nn.ModuleList(list(self.net.stages))

    def forward_stem(self, x: Tensor) -> Tensor:
        return self.net.stem(x)

    def forward_stage(self, h: Tensor, stage: int) -> Tensor:
        return self.net.stages[stage - 1](h)

    def forward_head(self, h: Tensor, pre_logits: bool = False) -> Tensor:
        return self.net.forward_head(self.net.norm_pre(h), pre_logits=pre_logits)


# ---------------------------------------------------------------------------------------- Swin
class _SwinStemView(nn.Module):
    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.patch_embed = net.patch_embed

    def forward(self, x: Tensor) -> Tensor:
        return self.patch_embed(x)


def _to_nhwc(h: Tensor) -> Tensor:
    return h.permute(0, 2, 3, 1).contiguous()


def _to_nchw(h: Tensor) -> Tensor:
    return h.permute(0, 3, 1, 2)


class TimmSwin(TimmBackbone):
    family = "SwinTransformer"

    def __init__(self, net: nn.Module, timm_name: str) -> None:
        super().__init__(net, timm_name)
        self.stage_channels = tuple(int(f["num_chs"]) for f in net.feature_info[-4:])

    @property
    def stem(self) -> nn.Module:
        return _SwinStemView(self.net)

    @property
    def stages(self) -> nn.ModuleList:
        return nn.ModuleList(list(self.net.layers))

    def forward_stem(self, x: Tensor) -> Tensor:
        return _to_nchw(self.net.patch_embed(x))

    def forward_stage(self, h: Tensor, stage: int) -> Tensor:
        return _to_nchw(self.net.layers[stage - 1](_to_nhwc(h)))

    def forward_head(self, h: Tensor, pre_logits: bool = False) -> Tensor:
        return self.net.forward_head(self.net.norm(_to_nhwc(h)), pre_logits=pre_logits)

    def forward(self, x: Tensor) -> Tensor:
        n = self.net
        return n.forward_head(n.norm(n.layers(n.patch_embed(x))))


# ----------------------------------------------------------------------------------------- ViT
class _ViTStemView(nn.Module):
    """The ViT stem (patch embedding, prefix tokens, position embedding) as a module of its own;
    registers only the stem's modules and parameters, runs through the owning model."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.patch_embed = net.patch_embed
        for name in ("cls_token", "reg_token", "pos_embed"):
            p = getattr(net, name, None)
            if isinstance(p, nn.Parameter):
                self.register_parameter(name, p)
        self.pos_drop, self.patch_drop, self.norm_pre = net.pos_drop, net.patch_drop, net.norm_pre
        object.__setattr__(self, "_net", net)  # not a submodule: parameters() stays the stem's

    def forward(self, x: Tensor) -> Tensor:
        return self.norm_pre(self.patch_drop(self._net._pos_embed(self.patch_embed(x))))


def _block_groups(depth: int, groups: int = 4) -> List[Tuple[int, int]]:
    if depth < groups:
        raise ValueError(f"a ViT needs at least {groups} blocks to form {groups} stages, got depth {depth}")
    base, extra = divmod(depth, groups)
    bounds, start = [], 0
    for g in range(groups):
        size = base + (1 if g < extra else 0)
        bounds.append((start, start + size))
        start += size
    return bounds


class TimmViT(TimmBackbone):
    """ViT/DeiT adapter; see the module docstring for the token map and the prefix-token cache."""

    family = "VisionTransformer"

    def __init__(self, net: nn.Module, timm_name: str) -> None:
        super().__init__(net, timm_name)
        self.stage_channels = (int(net.embed_dim),) * 4
        self.block_groups = _block_groups(len(net.blocks))
        self.num_prefix_tokens = int(net.num_prefix_tokens)
        self._token_cache: Optional[Tuple[int, Tensor]] = None

    # -- views ---------------------------------------------------------------------------
    @property
    def stem(self) -> nn.Module:
        return _ViTStemView(self.net)

    @property
    def stages(self) -> nn.ModuleList:
        return nn.ModuleList([nn.Sequential(*self.net.blocks[a:b]) for a, b in self.block_groups])

    # -- token helpers ---------------------------------------------------------------------
    def _tokens_stem(self, x: Tensor) -> Tensor:
        n = self.net
        return n.norm_pre(n.patch_drop(n._pos_embed(n.patch_embed(x))))

    def _run_blocks(self, tokens: Tensor, first: int, last: int) -> Tensor:
        """Blocks of stages ``first..last`` (1-based, inclusive)."""
        if first > last:
            return tokens
        a, b = self.block_groups[first - 1][0], self.block_groups[last - 1][1]
        for blk in self.net.blocks[a:b]:
            tokens = blk(tokens)
        return tokens

    def _grid(self, x: Tensor) -> Tuple[int, int]:
        pe = self.net.patch_embed
        if hasattr(pe, "dynamic_feat_size"):
            return tuple(int(s) for s in pe.dynamic_feat_size(tuple(x.shape[-2:])))
        return tuple(int(s) for s in pe.grid_size)

    def tokens_to_map(self, tokens: Tensor, grid: Tuple[int, int]) -> Tuple[Tensor, Tensor]:
        """Split ``[B, P + N, C]`` tokens into the prefix ``[B, P, C]`` and the patch map ``[B, C, gh, gw]``
        (a channels_last view of the tokens, no copy)."""
        p = self.num_prefix_tokens
        prefix, patches = tokens[:, :p], tokens[:, p:]
        b, n, c = patches.shape
        if n != grid[0] * grid[1]:
            raise ValueError(f"expected {grid[0]}x{grid[1]} patch tokens, got {n}")
        return patches.transpose(1, 2).reshape(b, c, grid[0], grid[1]), prefix

    def map_to_tokens(self, h: Tensor, prefix: Optional[Tensor]) -> Tensor:
        patches = h.flatten(2).transpose(1, 2)
        return patches if prefix is None or prefix.shape[1] == 0 else torch.cat([prefix.to(patches.dtype), patches], 1)

    # -- interface -------------------------------------------------------------------------
    def features_with_prefix(self, x: Tensor, stage: int) -> Tuple[Tensor, Tensor]:
        """``(map [B, C, H/p, W/p], prefix tokens [B, P, C])`` after ``stage``, without touching the cache."""
        _check_stage(stage, self.num_stages)
        tokens = self._run_blocks(self._tokens_stem(x), 1, stage)
        return self.tokens_to_map(tokens, self._grid(x))

    def features(self, x: Tensor, stage: int) -> Tensor:
        """Patch-token map after ``stage`` ``[B, C, H/p, W/p]``; caches the prefix tokens (see module doc)."""
        h, prefix = self.features_with_prefix(x, stage)
        self._token_cache = (stage, prefix) if self.num_prefix_tokens else None
        return h

    def forward_from(self, h: Tensor, stage: int, prefix_tokens: Optional[Tensor] = None) -> Tensor:
        """Logits from the patch map after ``stage``; the prefix tokens come from ``prefix_tokens`` or
        from the cache of the last :meth:`features` call (same stage and batch size)."""
        _check_stage(stage, self.num_stages)
        if not isinstance(h, Tensor) or h.dim() != 4 or h.shape[1] != self.stage_channels[0]:
            got = tuple(h.shape) if isinstance(h, Tensor) else type(h).__name__
            raise ValueError(f"h must be a [B, {self.stage_channels[0]}, H/p, W/p] token map, got {got}")
        if self.num_prefix_tokens and prefix_tokens is None:
            cache = self._token_cache
            if cache is None or cache[0] != stage or cache[1].shape[0] != h.shape[0]:
                have = "nothing" if cache is None else f"stage {cache[0]}, batch {cache[1].shape[0]}"
                raise ValueError(
                    f"forward_from(h, stage={stage}) on a ViT needs the class/register tokens of the same batch: "
                    f"call features(x, {stage}) first or pass prefix_tokens= (cache holds {have}; "
                    f"h has batch {h.shape[0]})")
            prefix_tokens = cache[1]
        if prefix_tokens is not None and prefix_tokens.shape != (h.shape[0], self.num_prefix_tokens, h.shape[1]):
            raise ValueError(f"prefix_tokens must have shape {(h.shape[0], self.num_prefix_tokens, h.shape[1])}, "
                             f"got {tuple(prefix_tokens.shape)}")
        tokens = self._run_blocks(self.map_to_tokens(h, prefix_tokens), stage + 1, self.num_stages)
        return self.forward_head_tokens(tokens)

    def forward_head_tokens(self, tokens: Tensor, pre_logits: bool = False) -> Tensor:
        return self.net.forward_head(self.net.norm(tokens), pre_logits=pre_logits)

    def forward_head(self, h: Tensor, pre_logits: bool = False) -> Tensor:
        """Head on a stage-4 map (uses the cached stage-4 prefix tokens when the model has them)."""
        prefix = None
        if self.num_prefix_tokens:
            cache = self._token_cache
            if cache is None or cache[0] != 4 or cache[1].shape[0] != h.shape[0]:
                raise ValueError("forward_head(h) on a ViT needs the prefix tokens of features(x, 4) of the same batch")
            prefix = cache[1]
        return self.forward_head_tokens(self.map_to_tokens(h, prefix), pre_logits=pre_logits)

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head_tokens(self._run_blocks(self._tokens_stem(x), 1, self.num_stages))

    def mix_extra_state(self, index: Tensor, lam: Tensor) -> None:
        """Mix the cached prefix tokens like the map: ``t = lam * t + (1 - lam) * t[index]`` per sample."""
        if self._token_cache is None:
            return
        stage, t = self._token_cache
        w = lam.to(device=t.device, dtype=t.dtype).view(-1, 1, 1)
        self._token_cache = (stage, torch.lerp(t[index.to(t.device)], t, w))

    def clear_cache(self) -> None:
        self._token_cache = None

    def __getstate__(self) -> Dict:
        state = self.__dict__.copy()
        state["_token_cache"] = None
        return state


# ------------------------------------------------------------------------------------ builders
_ADAPTERS = {"ResNet": TimmResNet, "ConvNeXt": TimmConvNeXt, "VisionTransformer": TimmViT,
             "SwinTransformer": TimmSwin}


def _family(net: nn.Module) -> str:
    for cls in type(net).__mro__:
        if cls.__name__ in _ADAPTERS:
            return cls.__name__
    raise ValueError(f"timm model class {type(net).__name__} is not supported by the samix stage interface; "
                     f"supported families: {', '.join(SUPPORTED_FAMILIES)}")


def _width_kwargs(meta: nn.Module, family: str, width: float) -> Dict:
    """Keyword arguments of ``timm.create_model`` that scale the model read from ``meta`` by ``width``."""
    if family == "ResNet":
        chans = [int(f["num_chs"]) for f in meta.feature_info[-4:]]
        expansion = getattr(type(meta.layer1[0]), "expansion", 1)
        kw = {"channels": tuple(scaled(c // expansion, width) for c in chans)}
        if isinstance(meta.conv1, nn.Sequential):  # deep stem: stem_width scales
            kw["stem_width"] = scaled(meta.conv1[-1].out_channels // 2, width)
        return kw
    if family == "ConvNeXt":
        return {"dims": tuple(scaled(int(f["num_chs"]), width) for f in meta.feature_info[-4:])}
    if family == "VisionTransformer":
        heads = int(meta.blocks[0].attn.num_heads)
        return {"embed_dim": scaled(int(meta.embed_dim), width, multiple=heads)}
    if family == "SwinTransformer":
        heads = int(meta.layers[0].blocks[0].attn.num_heads)
        return {"embed_dim": scaled(int(meta.embed_dim), width, multiple=heads)}
    raise AssertionError(family)


def create_timm_backbone(timm_name: str, num_classes: int, in_chans: int = 3, width: float = 1.0,
                         **kwargs) -> TimmBackbone:
    """``timm.create_model(timm_name, pretrained=False, ...)`` wrapped in the samix interface.

    Raises ``ValueError`` for an unknown timm name or an unsupported model family.
    """
    timm = _timm()
    width = check_builder_args(num_classes, in_chans, width)
    if not isinstance(timm_name, str) or not timm_name:
        raise ValueError(f"timm model name must be a non-empty string, got {timm_name!r}")
    if "pretrained" in kwargs:
        raise TypeError("timm backbones never download weights; load a local file with "
                        "samix.models.build_model(..., pretrained='path/to/weights.safetensors')")
    if kwargs.get("features_only"):
        raise ValueError("features_only is not supported: the samix interface provides features(x, stage)")
    if not timm.is_model(timm_name):
        raise ValueError(f"unknown timm model {timm_name!r} (see timm.list_models())")
    if width != 1.0:
        with torch.device("meta"):
            meta = timm.create_model(timm_name, pretrained=False, **kwargs)
        kwargs = {**kwargs, **_width_kwargs(meta, _family(meta), width)}
    net = timm.create_model(timm_name, pretrained=False, num_classes=num_classes, in_chans=in_chans, **kwargs)
    return _ADAPTERS[_family(net)](net, timm_name)


@register_model("timm_resnet18")
def timm_resnet18(num_classes: int, in_chans: int = 3, width: float = 1.0, **kwargs) -> TimmBackbone:
    """timm ResNet-18 (torchvision-style stem: 7x7 stride-2 conv + max-pool)."""
    return create_timm_backbone("resnet18", num_classes, in_chans, width, **kwargs)


@register_model("timm_resnet50")
def timm_resnet50(num_classes: int, in_chans: int = 3, width: float = 1.0, **kwargs) -> TimmBackbone:
    """timm ResNet-50 (torchvision-style stem)."""
    return create_timm_backbone("resnet50", num_classes, in_chans, width, **kwargs)


@register_model("deit_small")
def deit_small(num_classes: int, in_chans: int = 3, width: float = 1.0, img_size: int = 224,
               **kwargs) -> TimmBackbone:
    """DeiT-S/16 (``deit_small_patch16_224``: 12 blocks, 384 dims, 6 heads); stages = 4 x 3 blocks."""
    return create_timm_backbone("deit_small_patch16_224", num_classes, in_chans, width, img_size=img_size, **kwargs)


@register_model("vit_small")
def vit_small(num_classes: int, in_chans: int = 3, width: float = 1.0, img_size: int = 224,
              **kwargs) -> TimmBackbone:
    """ViT-S/16 (``vit_small_patch16_224``); stages = 4 x 3 blocks."""
    return create_timm_backbone("vit_small_patch16_224", num_classes, in_chans, width, img_size=img_size, **kwargs)


@register_model("swin_tiny")
def swin_tiny(num_classes: int, in_chans: int = 3, width: float = 1.0, img_size: int = 224,
              **kwargs) -> TimmBackbone:
    """Swin-T (``swin_tiny_patch4_window7_224``): 4 stages of (2, 2, 6, 2) blocks, 96 * 2**i dims."""
    return create_timm_backbone("swin_tiny_patch4_window7_224", num_classes, in_chans, width, img_size=img_size,
                                **kwargs)


@register_model_namespace("timm")
def build_timm(name: str, num_classes: int, in_chans: int = 3, width: float = 1.0, **kwargs) -> TimmBackbone:
    """The ``timm:<name>`` namespace of :func:`samix.models.build_model`."""
    return create_timm_backbone(name, num_classes, in_chans, width, **kwargs)
