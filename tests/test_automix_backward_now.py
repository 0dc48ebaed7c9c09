"""AutoMix/SAMix: the backward through the frozen teacher runs inside forward (a memory optimisation).

It must not change anything but the peak memory: same losses and the same gradients, bit for bit,
as the step with the generation pass last and one backward at the end.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import samix.algorithms.early_backward as early_backward
from samix.algorithms import build_algorithm
from samix.algorithms.automix import AutoMix
from samix.algorithms.early_backward import backward_now as _backward_now
from samix.models import build_model

HYP = settings(max_examples=10, deadline=None)


def _algo(name="automix", model="convnet", seed=0, **options):
    torch.manual_seed(seed)
    m = build_model(model, num_classes=5, in_chans=1, width=0.25)
    return build_algorithm(name, model=m, num_classes=5, generator=torch.Generator().manual_seed(seed + 1), **options)


def _step(algo, seed=0, b=8, s=16, autocast=None):
    g = torch.Generator().manual_seed(seed)
    x, y = torch.randn(b, 1, s, s, generator=g), torch.randint(0, 5, (b,), generator=g)
    algo.set_progress(1, 10)
    algo.zero_grad(set_to_none=True)
    if autocast is None:
        out = algo((x, y))
    else:
        with torch.autocast("cpu", dtype=autocast):
            out = algo((x, y))
    out["loss"].backward()
    return ({k: v.detach() for k, v in out.items()},
            {n: p.grad.clone() for n, p in algo.named_parameters() if p.grad is not None})


def _late(monkeypatch):
    """Force the original schedule: generation pass last, everything differentiated at the end."""
    monkeypatch.setattr(AutoMix, "_teacher_backward_now", lambda self, device_type: False)


def _same(a, b):
    (oa, ga), (ob, gb) = a, b
    assert oa.keys() == ob.keys() and ga.keys() == gb.keys()
    for k in oa:
        assert torch.equal(oa[k], ob[k]), k
    for k in ga:
        assert torch.equal(ga[k], gb[k]), k


@HYP
@given(name=st.sampled_from(["automix", "samix"]), clean_ce=st.booleans(), seed=st.integers(0, 50),
       mask_loss=st.sampled_from(["l1", "l2", "none"]))
def test_values_and_gradients_equal_the_late_schedule(name, clean_ce, seed, mask_loss):
    opts = dict(clean_ce=clean_ce, mask_loss=mask_loss, mixup_fallback=0.0)
    early = _step(_algo(name, seed=seed, **opts), seed=seed)
    with pytest.MonkeyPatch.context() as mp:
        _late(mp)
        late = _step(_algo(name, seed=seed, **opts), seed=seed)
    _same(early, late)
    assert any(k.startswith("mix_block.") for k in early[1])  # the generator did receive its gradient
    assert not any(k.startswith("teacher.") for k in early[1])


def test_bf16_autocast_equal_too(monkeypatch):
    early = _step(_algo("samix"), autocast=torch.bfloat16)
    _late(monkeypatch)
    _same(early, _step(_algo("samix"), autocast=torch.bfloat16))


def test_when_it_applies():
    algo = _algo()
    assert algo._teacher_backward_now("cpu")
    with torch.no_grad():
        assert not algo._teacher_backward_now("cpu")
    with torch.autocast("cpu", dtype=torch.float16):  # an unscaled fp16 backward could underflow
        assert not algo._teacher_backward_now("cpu")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert algo._teacher_backward_now("cpu")
    assert not _algo(momentum_pipeline=False)._teacher_backward_now("cpu")  # the student is its teacher
    algo.teacher.requires_grad_(True)  # a teacher that learns would lose its gradient
    assert not algo._teacher_backward_now("cpu")


def test_teacher_activations_are_freed_before_the_students_passes(monkeypatch):
    from torch.profiler import ProfilerActivity, profile

    def peak(algo):
        g = torch.Generator().manual_seed(0)
        x, y = torch.randn(32, 1, 28, 28, generator=g), torch.randint(0, 5, (32,), generator=g)
        with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            algo((x, y))["loss"].backward()
        cur = top = 0
        events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
        for e in sorted(events, key=lambda e: e.start_ns()):
            cur += e.nbytes()
            top = max(top, cur)
        return top

    kw = dict(model="preact_resnet18", clean_ce=False, mixup_fallback=0.0)
    early = peak(_algo(**kw))
    _late(monkeypatch)
    late = peak(_algo(**kw))
    # two networks' activations at the peak before, one (plus the backward's transients) now
    assert early < 0.75 * late


def test_backward_now_keeps_the_value_and_the_upstream_gradient_and_frees_the_graph():
    torch.manual_seed(0)
    p = torch.randn(6, requires_grad=True)
    w = torch.randn(6, 6)  # frozen, like the teacher
    x = p.tanh()  # what the generator makes
    loss = (w @ x).sin().square().sum()
    (expected,) = torch.autograd.grad(loss, p, retain_graph=True)
    out = _backward_now(loss, x)
    assert torch.equal(out, loss.detach()) and out.requires_grad
    with pytest.raises(RuntimeError):  # the part between x and loss is already differentiated and freed
        loss.backward()
    (got,) = torch.autograd.grad(3.0 * out, p)
    torch.testing.assert_close(got, 3.0 * expected)  # the incoming gradient scales it (GradScaler)


def test_engine_step_uses_it(monkeypatch):
    calls = []
    orig = early_backward.backward_now
    monkeypatch.setattr(early_backward, "backward_now", lambda loss, x: calls.append(1) or orig(loss, x))
    _step(_algo())
    _step(_algo(momentum_pipeline=False))
    assert calls == [1]
