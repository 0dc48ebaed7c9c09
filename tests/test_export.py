"""samix.models.export: encoder-only safetensors in torchvision / timm / samix key names."""

from __future__ import annotations

import os
import stat

import pytest
import torch

from samix.models import build_model
from samix.models.export import backbone_state_for_export, export_backbone, load_exported_backbone

torchvision = pytest.importorskip("torchvision")
pytest.importorskip("timm")

torch.set_num_threads(1)

CASES = {  # name -> (build kwargs, expected key_format)
    "resnet18": (dict(width=0.25), "torchvision"),
    "resnet50": (dict(width=0.125), "torchvision"),
    "resnext50": (dict(width=0.25), "torchvision"),
    "preact_resnet18": (dict(width=0.25), "samix"),
    "wrn28_8": (dict(width=0.125), "samix"),
    "convnet": (dict(width=0.25), "samix"),
    "timm_resnet18": (dict(width=0.25), "timm"),
    "deit_small": (dict(width=0.25, img_size=32, patch_size=8), "timm"),
}


def build(name, seed, num_classes=7, in_chans=3, **kw):
    torch.manual_seed(seed)
    return build_model(name, num_classes=num_classes, in_chans=in_chans, **{**CASES[name][0], **kw})


def perturb_bn(model):
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.running_mean.uniform_(-1, 1)
                m.running_var.uniform_(0.5, 2)


@pytest.mark.parametrize("name", sorted(CASES))
def test_round_trip_into_a_fresh_model(tmp_path, name):
    src = build(name, 0, in_chans=1)
    perturb_bn(src)
    path = export_backbone(src, tmp_path / "enc.safetensors", metadata={"model": name, "width": 0.25, "run": "x"})
    state, meta = load_exported_backbone(path)
    assert meta["key_format"] == CASES[name][1]
    assert meta["model"] == name and meta["width"] == 0.25 and meta["run"] == "x" and meta["in_chans"] == 1
    assert meta["feature_dim"] == src.num_features and meta["stage_channels"] == list(src.stage_channels)
    assert meta["format"] == "pt" and isinstance(meta["samix_version"], str)
    # encoder only: no classifier tensors (the only [7, D] / [7] entries)
    assert not any(v.shape[:1] == (7,) for v in state.values())
    dst = build(name, 1, in_chans=1)
    load_exported_backbone(path, model=dst)  # strict on the encoder: raises on a missing/extra key
    own = {k: v for k, v in dst.state_dict().items()}
    for k, v in src.state_dict().items():
        if "fc" not in k and not k.startswith("net.head"):
            assert torch.equal(own[k], v), k
    x = torch.randn(2, 1, 32, 32)
    src.eval(), dst.eval()
    with torch.no_grad():
        for stage in range(5):
            torch.testing.assert_close(dst.features(x, stage), src.features(x, stage), rtol=0, atol=0)


def test_cifar_resnet_keys_are_torchvision_keys():
    ours = build_model("resnet18", num_classes=10)  # width 1, CIFAR stem
    state, meta = backbone_state_for_export(ours)
    tv = torchvision.models.resnet18(weights=None).state_dict()
    assert meta["key_format"] == "torchvision"
    assert set(state) <= set(tv)
    assert set(tv) - set(state) == {"fc.weight", "fc.bias"}
    mismatched = {k for k in state if state[k].shape != tv[k].shape}
    assert mismatched == {"conv1.weight"}  # the 3x3 CIFAR stem vs torchvision's 7x7
    # a torchvision model loads everything else
    net = torchvision.models.resnet18(weights=None)
    res = net.load_state_dict({k: v for k, v in state.items() if k not in mismatched}, strict=False)
    assert set(res.missing_keys) == {"conv1.weight", "fc.weight", "fc.bias"} and not res.unexpected_keys
    torch.testing.assert_close(net.layer3[1].bn2.running_var, state["layer3.1.bn2.running_var"])


def test_bottleneck_keys_match_torchvision_resnet50():
    state, _ = backbone_state_for_export(build_model("resnet50", num_classes=10))
    tv = torchvision.models.resnet50(weights=None).state_dict()
    assert set(state) <= set(tv) and set(tv) - set(state) == {"fc.weight", "fc.bias"}
    assert {k for k in state if state[k].shape != tv[k].shape} == {"conv1.weight"}


def test_timm_resnet_keys_are_timm_and_torchvision_keys():
    import timm

    state, meta = backbone_state_for_export(build_model("timm_resnet18", num_classes=10))
    assert meta["key_format"] == "timm" and meta["timm_name"] == "resnet18"
    ref = timm.create_model("resnet18", pretrained=False).state_dict()
    tv = torchvision.models.resnet18(weights=None).state_dict()
    assert set(state) == set(ref) - {"fc.weight", "fc.bias"}
    assert set(state) <= set(tv) and all(state[k].shape == tv[k].shape for k in state)


def test_samix_format_keeps_samix_names_without_head():
    model = build("preact_resnet18", 0)
    state, meta = backbone_state_for_export(model)
    assert meta["key_format"] == "samix"
    assert set(state) == {k for k in model.state_dict() if not k.startswith("head.fc")}
    model.reset_classifier(0)  # no classifier at all: same keys
    assert set(backbone_state_for_export(model)[0]) == set(state)


def test_file_permissions_follow_umask_and_write_is_atomic(tmp_path):
    old = os.umask(0o027)
    try:
        path = export_backbone(build("convnet", 0), tmp_path / "sub" / "a.safetensors")
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~0o027
    assert [p.name for p in path.parent.iterdir()] == ["a.safetensors"]  # no temporary left behind
    # overwriting replaces the file; a failed write leaves the old one intact
    before = path.read_bytes()
    with pytest.raises(TypeError, match="JSON"):
        export_backbone(build("convnet", 1), path, metadata={"bad": object()})
    assert path.read_bytes() == before and len(list(path.parent.iterdir())) == 1


def test_bad_inputs(tmp_path):
    model = build("convnet", 0)
    with pytest.raises(ValueError, match="safetensors"):
        export_backbone(model, tmp_path / "a.pt")
    with pytest.raises(ValueError, match="key_format"):
        export_backbone(model, tmp_path / "a.safetensors", metadata={"key_format": "timm"})
    with pytest.raises(FileNotFoundError, match="nope"):
        load_exported_backbone(tmp_path / "nope.safetensors")
    path = export_backbone(model, tmp_path / "a.safetensors")
    with pytest.raises(ValueError, match="does not fit"):
        load_exported_backbone(path, model=build("preact_resnet18", 0))
