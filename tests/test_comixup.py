"""Co-Mixup: each output is a block-wise composition of several inputs whose targets are exactly their pixel
shares (rows sum to 1), partitions do not mix, the assignment lowers its objective, salient inputs get
mixed, and bad input gets a sentence."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("gco", reason="comixup needs gco-wrapper (samix[dev] installs it)")

from samix.mixing import build_mixer  # noqa: E402
from samix.mixing.comixup import labeling_objective  # noqa: E402
from samix.targets import mix_targets  # noqa: E402


def _cm(**kw):
    kw.setdefault("generator", torch.Generator().manual_seed(0))
    return build_mixer("comixup", num_classes=10, **kw)


def _quadrant_saliency(b, side=16, seed=1):
    g = torch.Generator().manual_seed(seed)
    s = torch.zeros(b, side, side)
    h = side // 2
    for i in range(b):
        r0, c0 = divmod(int(torch.randint(0, 4, (1,), generator=g)), 2)
        s[i, r0 * h:(r0 + 1) * h, c0 * h:(c0 + 1) * h] = 1 + torch.rand(h, h, generator=g)
    return s


def test_targets_are_the_pixel_shares_of_the_inputs_and_sum_to_one():
    b = 12
    x = torch.arange(1, b + 1, dtype=torch.float32).view(b, 1, 1, 1).expand(b, 1, 16, 16).contiguous()
    r = _cm(part=6).mix(x, saliency=_quadrant_saliency(b))
    assert torch.allclose(r.sources.sum(1), torch.ones(b))
    for i in range(b):
        vals = r.images[i].flatten()
        # every pixel is one input's value (hard blocks), and its share is that input's source weight
        share = torch.stack([(vals == j + 1).float().mean() for j in range(b)])
        assert torch.allclose(share.sum(), torch.tensor(1.0))
        assert torch.allclose(share, r.sources[i], atol=1e-6)
    # partitions of 6 do not mix across
    assert float(r.sources[:6, 6:].abs().sum()) == 0 and float(r.sources[6:, :6].abs().sum()) == 0
    y = torch.randint(0, 10, (b,))
    t = mix_targets(y, r, num_classes=10)
    assert torch.allclose(t, r.sources @ F.one_hot(y, 10).float()) and torch.allclose(t.sum(1), torch.ones(b))


def test_salient_inputs_are_mixed_several_to_an_output():
    r = _cm().mix(torch.randn(40, 1, 16, 16), saliency=_quadrant_saliency(40))
    per_output = (r.sources > 0).sum(1).float()
    assert float(per_output.mean()) > 1.5        # several inputs per output (3.2 on average at this seed)
    # diversity: no input dominates the batch's outputs
    assert float(r.sources.sum(0).max()) < 5


def test_the_assignment_lowers_its_objective_from_the_random_start():
    cm = _cm()
    m, n = 8, 4
    sal = F.avg_pool2d(_quadrant_saliency(m).unsqueeze(1), 4).squeeze(1)
    A = torch.eye(m)
    prior = np.full(m, 1.0 / m)
    start = torch.as_tensor(np.random.default_rng(5).integers(0, m, (m, n, n)))
    norm = sal / sal.flatten(1).sum(1).view(m, 1, 1)
    cost = -norm.double() - cm.eta / 16 * torch.log(torch.as_tensor(prior) + 1e-8).view(m, 1, 1)
    before = labeling_objective(cost, F.one_hot(start, m).double(), cm.beta / 16, cm.gamma / 16)
    onehot = cm.assign(sal, A, prior, np.random.default_rng(5))
    after = labeling_objective(cost, onehot, cm.beta / 16, cm.gamma / 16)
    assert float(after) < float(before)
    assert torch.equal(onehot.sum(-1), torch.ones(m, n, n, dtype=onehot.dtype))   # one input per block


def test_a_supervised_step_trains_on_the_soft_targets():
    from samix.algorithms import build_algorithm
    from samix.models import build_model

    torch.manual_seed(0)
    net = build_model("convnet", num_classes=10, in_chans=1, width=0.25)
    algo = build_algorithm("supervised", model=net, num_classes=10, mixer=_cm(part=4))
    out = algo((torch.randn(8, 1, 28, 28), torch.randint(0, 10, (8,))))
    out["loss"].backward()
    assert torch.isfinite(out["loss"]) and all(p.grad is not None for p in net.parameters() if p.requires_grad)


def test_bad_inputs_get_a_sentence():
    x = torch.randn(4, 1, 16, 16)
    with pytest.raises(TypeError, match="saliency"):
        _cm().mix(x)
    with pytest.raises(ValueError, match="block_num 3 must divide"):
        _cm(block_num=3).mix(x, saliency=torch.rand(4, 16, 16))
    with pytest.raises(ValueError, match="square"):
        _cm().mix(torch.randn(4, 1, 16, 20), saliency=torch.rand(4, 16, 20))
    with pytest.raises(ValueError, match="at least 2"):
        _cm().mix(torch.randn(1, 1, 16, 16), saliency=torch.rand(1, 16, 16))
    with pytest.raises(ValueError, match="thres_type"):
        _cm(thres_type="medium")
