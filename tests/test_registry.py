"""samix._registry.Registry: one registration rule and one error format for every registry."""

from __future__ import annotations

import pytest

from samix._registry import Registry


def make():
    reg = Registry("mixer", name_attr="name")

    @reg.register("mixup")
    class MixUp:
        def __init__(self, alpha=1.0):
            self.alpha = alpha

    class CutMix:
        pass

    assert reg.register("cutmix", CutMix) is CutMix
    return reg, MixUp, CutMix


def test_register_get_list_build_and_name_attr():
    reg, MixUp, CutMix = make()
    assert reg.list() == ["cutmix", "mixup"]
    assert reg.get("mixup") is MixUp and reg.get("cutmix") is CutMix
    assert MixUp.name == "mixup" and CutMix.name == "cutmix"
    built = reg.build("mixup", alpha=0.3)
    assert isinstance(built, MixUp) and built.alpha == 0.3
    assert "mixup" in reg and "nope" not in reg and None not in reg and ["mixup"] not in reg
    assert reg.items() == [("cutmix", CutMix), ("mixup", MixUp)]
    assert list(reg) == ["cutmix", "mixup"] and len(reg) == 2


@pytest.mark.parametrize("name", ["nope", "MixUp", "", None, 3])
def test_unknown_name_is_one_value_error_naming_the_known_ones(name):
    reg, _, _ = make()
    with pytest.raises(ValueError) as err:
        reg.get(name)
    assert str(err.value) == f"unknown mixer {name!r}; known mixers: cutmix, mixup"
    with pytest.raises(ValueError, match="known mixers: cutmix, mixup"):
        reg.build(name)


def test_unknown_can_name_more_known_entries_and_plurals_read_well():
    reg = Registry("loss")
    reg.register("ce", len)
    assert str(reg.unknown("x", also=["timm:<name>"])) == "unknown loss 'x'; known losses: ce, timm:<name>"
    assert str(Registry("preset", plural="presets").unknown("x")) == "unknown preset 'x'; known presets: none"


def test_duplicate_name_is_a_value_error_and_the_first_entry_stays():
    reg, MixUp, _ = make()

    class Other:
        pass

    with pytest.raises(ValueError, match=r"mixer 'mixup' is already registered \(.*MixUp\)"):
        reg.register("mixup", Other)
    with pytest.raises(ValueError, match="already registered"):
        reg.register("mixup")(Other)
    assert reg.get("mixup") is MixUp
    assert not hasattr(Other, "name")  # a refused object is left untouched
    # the same object again (a module imported twice) is a no-op
    assert reg.register("mixup", MixUp) is MixUp and reg.list() == ["cutmix", "mixup"]


@pytest.mark.parametrize("name", ["", None, 3, b"x"])
def test_a_name_must_be_a_non_empty_str(name):
    reg, _, _ = make()
    with pytest.raises(TypeError, match="non-empty str"):
        reg.register(name, object())


def test_unsorted_registry_keeps_registration_order():
    reg = Registry("corruption", sort=False)
    for name in ("gaussian_noise", "defocus_blur", "contrast"):
        reg.register(name, name.upper())
    assert reg.list() == ["gaussian_noise", "defocus_blur", "contrast"]
    with pytest.raises(ValueError, match="known corruptions: gaussian_noise, defocus_blur, contrast$"):
        reg.get("fog")


def test_entries_is_the_live_dict():
    reg, _, _ = make()
    reg.entries["tmp"] = object
    assert "tmp" in reg and reg.get("tmp") is object and "tmp" in reg.list()


def test_the_library_registries_share_the_format():
    from samix.data import build_dataset, build_transform, dataset_info
    from samix.evaluate import get_corruption
    from samix.losses import build_loss
    from samix.mixing import build_mixer
    from samix.models import build_model

    cases = [(lambda: build_mixer("nope"), "mixer", "mixers", "cutmix"),
             (lambda: build_loss("nope"), "loss", "losses", "eta_balanced"),
             (lambda: dataset_info("nope"), "dataset", "datasets", "cifar10"),
             (lambda: build_dataset("nope", "/nonexistent"), "dataset", "datasets", "fashion_mnist"),
             (lambda: build_transform("nope", True, "cifar10"), "preset", "presets", "moco"),
             (lambda: get_corruption("nope"), "corruption", "corruptions", "gaussian_noise"),
             (lambda: build_model("nope", num_classes=10), "model", "models", "resnet18")]
    for call, kind, plural, known in cases:
        with pytest.raises(ValueError) as err:
            call()
        msg = str(err.value)
        assert msg.startswith(f"unknown {kind} 'nope'; known {plural}: "), msg
        assert known in msg, msg
