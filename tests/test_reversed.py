"""motion_nbs.reversed against Captum 0.9 (Saliency, GuidedBackprop, Deconvolution) on torchvision's AlexNet and
VGG-16 with random weights, a loop transcription of unpooling to the centre, and reliability (hooks removed on error).

Captum's three methods keep max pooling and LRN BP-reversed, so the matching rules are
saliency = (saliency, switches, bp), GuidedBackprop = (guided, switches, bp), Deconvolution = (deconvnet, switches, bp).
"""
from collections import OrderedDict

import pytest
import torch
import torch.nn as nn

from conftest import require_reference

from motion_nbs.models import AlexNetCPFS, alexnet_cpfs_small
from motion_nbs.reversed import (ARCHITECTURES, POOL_RULES, RELU_RULES, Channel, deconvnet, guided_backprop, reverse,
                                 saliency, without_inplace)

RTOL = 1e-5  # the bound, relative to the largest magnitude of the reference map


@pytest.fixture(scope="module")
def captum():
    captum = require_reference("captum")
    import captum.attr  # noqa: F401
    return captum


def _close(a, b, rtol=RTOL):
    assert a.shape == b.shape
    assert b.abs().max() > 0, "degenerate reference (all zero)"
    err = ((a - b).abs().max() / b.abs().max().clamp_min(1e-30)).item()
    assert err <= rtol, f"relative max difference {err:.3g} > {rtol}"


def _tv(name):
    import torchvision
    torch.manual_seed(0)
    return getattr(torchvision.models, name)(weights=None).eval()


def _kw(method):
    return dict(abs=False) if method == "Saliency" else {}  # Captum's Saliency takes |gradient| by default


CAPTUM_RULES = {"Saliency": dict(relu="saliency", pool="switches", lrn="bp"),
                "GuidedBackprop": dict(relu="guided", pool="switches", lrn="bp"),
                "Deconvolution": dict(relu="deconvnet", pool="switches", lrn="bp")}


@pytest.mark.parametrize("net,batch,size", [("alexnet", 2, 128), ("vgg16", 1, 64)])
def test_equal_to_captum_torchvision(captum, net, batch, size):
    model = _tv(net)
    ours = without_inplace(model)  # torchvision's ReLUs are in place; Captum gets the original model
    x = torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(1))
    targets = ours(x).argmax(1)  # active units (random ReLU nets have dead ones)
    named = {"Saliency": saliency, "GuidedBackprop": guided_backprop, "Deconvolution": deconvnet}
    for method, rules in CAPTUM_RULES.items():
        ref = getattr(captum.attr, method)(model).attribute(x, target=targets, **_kw(method))
        _close(reverse(ours, x, targets, **rules), ref)
        _close(named[method](ours, x, targets), ref)  # the named architectures: same, as these models have no LRN


def test_equal_to_captum_with_lrn(captum):
    "AlexNetCPFS (appendix A) has LRN layers; with lrn='bp' the reversal is Captum's."
    torch.manual_seed(0)
    model = nn.Sequential(alexnet_cpfs_small(), nn.AdaptiveAvgPool2d(1), nn.Flatten()).eval()
    x = torch.rand(1, 3, 96, 96, generator=torch.Generator().manual_seed(2))
    t = int(model(x).argmax())  # an active unit (random ReLU nets have dead ones)
    for method, rules in CAPTUM_RULES.items():
        ref = getattr(captum.attr, method)(model).attribute(x, target=t, **_kw(method))
        _close(reverse(model, x, t, **rules), ref)
    # with the LRN reversed as the identity the result differs (slightly: alpha is small)
    a, b = reverse(model, x, t, relu="guided", lrn="identity"), reverse(model, x, t, relu="guided", lrn="bp")
    assert not torch.equal(a, b)
    torch.testing.assert_close(a, b, rtol=0.05, atol=0.05 * b.abs().max().item())


def test_saliency_is_the_float64_gradient():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.LocalResponseNorm(3), nn.MaxPool2d(3, 2, 1),
                          nn.Conv2d(4, 2, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(8, 3)).double()
    x = torch.rand(2, 3, 11, 13, dtype=torch.float64, requires_grad=True)
    want = torch.autograd.grad(model(x)[:, 1].sum(), x)[0]
    got = saliency(model, x.detach(), 1)
    assert got.dtype == torch.float64
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-14)


def _centre_unpool_loop(g, shape, k, s, p, d):
    "Loop transcription: each pooled value goes to its window's centre (shared by the middle taps of even windows)."
    out = torch.zeros(shape, dtype=g.dtype)
    def taps(kk, dd):
        return [((kk // 2) * dd, 1.0)] if kk % 2 else [((kk // 2 - 1) * dd, 0.5), ((kk // 2) * dd, 0.5)]
    for i in range(g.shape[-2]):
        for j in range(g.shape[-1]):
            for di, wi in taps(k[0], d[0]):
                for dj, wj in taps(k[1], d[1]):
                    r, c = i * s[0] - p[0] + di, j * s[1] - p[1] + dj
                    if 0 <= r < shape[-2] and 0 <= c < shape[-1]:
                        out[..., r, c] += wi * wj * g[..., i, j]
    return out


@pytest.mark.parametrize("k,s,p,d,ceil", [((3, 3), (2, 2), (0, 0), (1, 1), False), ((2, 2), (2, 2), (0, 0), (1, 1), False),
                                          ((3, 2), (2, 1), (1, 1), (1, 1), True), ((3, 3), (1, 2), (1, 0), (2, 1), False),
                                          ((4, 3), (3, 2), (2, 1), (1, 1), True)])
def test_centre_unpool_matches_loop(k, s, p, d, ceil):
    pool = nn.MaxPool2d(k, s, p, d, ceil_mode=ceil)
    net = nn.Sequential(pool, nn.Flatten())
    x = torch.rand(2, 3, 9, 10, dtype=torch.float64)
    y = pool(x)
    sel = torch.randn(y.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(3)).flatten(1)
    got = reverse(net, x, sel, pool="center", relu="identity")
    torch.testing.assert_close(got, _centre_unpool_loop(sel.view_as(y), x.shape, k, s, p, d))


def test_eight_architectures_on_a_hand_set_network():
    "Two channels, two pools: every (relu, pool) pair, computed by hand."
    net = nn.Sequential(nn.Conv2d(1, 2, 1), nn.ReLU(), nn.MaxPool2d((1, 2)), nn.Flatten(), nn.Linear(4, 1, bias=False))
    with torch.no_grad():
        net[0].weight.copy_(torch.tensor([1.0, -1.0]).view(2, 1, 1, 1)); net[0].bias.copy_(torch.tensor([0.0, 1.0]))
        net[4].weight.copy_(torch.tensor([[1.0, -2.0, -1.0, 3.0]]))
    x = torch.tensor([2.0, -1.0, 0.5, 3.0]).view(1, 1, 1, 4)
    # conv: ch0 = x = (2, -1, .5, 3), ch1 = 1 - x = (-1, 2, .5, -2); masks (1,0,1,1), (0,1,1,0)
    # pools: ch0 (2, 3) at positions 0, 3; ch1 (2, .5) at 1, 2. fc^T: ch0 (1, -2), ch1 (-1, 3)
    g_sw = {0: [1, 0, 0, -2], 1: [0, -1, 3, 0]}          # unpooled by the switches
    g_ce = {0: [.5, .5, -1, -1], 1: [-.5, -.5, 1.5, 1.5]}  # unpooled to the window centres
    mask = {0: [1, 0, 1, 1], 1: [0, 1, 1, 0]}
    rules = {"saliency": lambda g, m: g * m, "deconvnet": lambda g, m: max(g, 0), "guided": lambda g, m: max(g, 0) * m,
             "identity": lambda g, m: g}
    for relu in RELU_RULES:
        for pool in POOL_RULES:
            gs = g_sw if pool == "switches" else g_ce
            back = {c: [rules[relu](g, m) for g, m in zip(gs[c], mask[c])] for c in (0, 1)}
            want = [1.0 * a - 1.0 * b for a, b in zip(back[0], back[1])]  # conv transpose: weights (1, -1)
            got = reverse(net, x, 0, relu=relu, pool=pool)[0, 0, 0].tolist()
            assert got == pytest.approx(want), (relu, pool, got, want)


def test_selectors_agree():
    torch.manual_seed(0)
    model = AlexNetCPFS(widths=(8, 8, 8, 8, 8, 8, 6)).eval()
    x = torch.rand(2, 3, 64, 64)
    y = model(x)
    # "max" is the one-hot of each image's argmax; Channel(c) is the indicator of channel c
    flat = y.flatten(1)
    onehot = torch.zeros_like(flat).scatter_(1, flat.argmax(1, keepdim=True), 1.0).view_as(y)
    torch.testing.assert_close(reverse(model, x, "max"), reverse(model, x, onehot))
    chan = torch.zeros_like(y); chan[:, 4] = 1
    torch.testing.assert_close(reverse(model, x, Channel(4)), reverse(model, x, chan))
    c = flat.argmax(1) // (flat.shape[1] // y.shape[1])
    chan_max = torch.zeros_like(y); chan_max[torch.arange(2), c] = 1
    torch.testing.assert_close(reverse(model, x, Channel("max"), relu="deconvnet"), reverse(model, x, chan_max, relu="deconvnet"))
    # a selector at an inner layer equals the same selector on the truncated model
    children = list(model.named_children())
    trunk = nn.Sequential(OrderedDict(children[:[n for n, _ in children].index("pool5") + 1]))
    p = torch.rand_like(trunk(x))
    torch.testing.assert_close(reverse(model, x, p, layer="pool5", relu="guided", lrn="bp"),
                               reverse(trunk, x, p, relu="guided", lrn="bp"))


def _hook_count(model):
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks) for m in model.modules())


class _Boom(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv, self.relu = nn.Conv2d(3, 2, 3), nn.ReLU()

    def forward(self, x):
        self.relu(self.conv(x))
        raise RuntimeError("boom")


class _LateFunctional(nn.Module):
    "A ReLU module, then a functional ReLU in the middle of the forward pass, then an error."
    def __init__(self):
        super().__init__()
        self.conv, self.relu = nn.Conv2d(3, 2, 3), nn.ReLU()

    def forward(self, x):
        torch.relu(self.relu(self.conv(x)) - 1)
        raise RuntimeError("late")


def test_hooks_removed_and_mode_restored_on_error():
    model = _Boom().train()
    before = _hook_count(model)
    for rules in (ARCHITECTURES["guided"], ARCHITECTURES["saliency"], dict(relu="identity", pool="center")):
        with pytest.raises(RuntimeError, match="boom"):
            reverse(model, torch.rand(1, 3, 8, 8), 0, **rules)
        assert _hook_count(model) == before
        assert model.training
    # also after an error in the middle of the forward pass (the mode active), and after a bad selector
    net = _LateFunctional()
    with pytest.raises(RuntimeError, match="late"):
        reverse(net, torch.rand(1, 3, 8, 8), 0)
    assert _hook_count(net) == 0
    net = nn.Sequential(nn.Conv2d(3, 2, 3), nn.ReLU())
    with pytest.raises(ValueError, match="outside"):
        reverse(net, torch.rand(1, 3, 8, 8), 10**6, layer="1")
    assert _hook_count(net) == 0
    # and the mode is gone: a functional ReLU is the plain one again outside reverse
    x = torch.tensor([-1.0, 2.0], requires_grad=True)
    assert torch.autograd.grad(torch.nn.functional.relu(x), x, torch.tensor([-3.0, -3.0]))[0].tolist() == [0.0, -3.0]


def test_refusals_and_what_is_no_longer_refused():
    x = torch.rand(1, 3, 8, 8)
    with pytest.raises(ValueError, match="valid: 'switches', 'center'"):
        reverse(nn.Conv2d(3, 2, 3), x, 0, pool="avg")
    with pytest.raises(ValueError, match=r"\(B,C,H,W\)"):
        reverse(nn.Conv2d(3, 2, 3), x[0], 0)
    with pytest.raises(ValueError, match="one unit per image"):
        reverse(nn.Conv2d(3, 2, 3), x, torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="does not fit"):
        reverse(nn.Conv2d(3, 2, 3), x, torch.rand(5, 5))

    class IndexedPool(nn.Module):
        def forward(self, x): return nn.functional.max_pool2d(x, 2, return_indices=True)[0]
    with pytest.raises(ValueError, match="pool='center' cannot reverse a max pooling that returns its indices"):
        reverse(IndexedPool(), x, 0, pool="center")
    # once refused: a gate (Tanh), torchvision's in-place ReLUs (the model is left as it was), functional calls
    assert reverse(nn.Sequential(nn.Conv2d(3, 2, 3), nn.ReLU(), nn.Tanh()), x, 0).shape == x.shape
    alex = _tv("alexnet")
    assert reverse(alex, torch.rand(1, 3, 64, 64), 0).shape == (1, 3, 64, 64) and alex.features[1].inplace
    plain, functional = nn.Sequential(nn.Conv2d(3, 2, 3), nn.ReLU()), _TensorRelu()
    functional.conv = plain[0]
    for rule in RELU_RULES: assert torch.equal(reverse(functional, x, 0, relu=rule), reverse(plain, x, 0, relu=rule))


class _TensorRelu(nn.Module):  # a Tensor.relu() call in a container's forward
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 2, 3)

    def forward(self, x):
        return self.conv(x).relu()


def test_relu6_models_and_no_grad_context():
    "ReLU6 (EfficientNet) is reversed with the mask [0 < x < 6]; reverse works inside torch.no_grad()."
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU6(), nn.Conv2d(4, 2, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    with torch.no_grad(): net[0].weight.mul_(20)  # push some activations above 6
    x = torch.rand(1, 3, 12, 12)
    xr = x.clone().requires_grad_()
    want = torch.autograd.grad(net(xr)[0, 1], xr)[0]
    with torch.no_grad():
        got = reverse(net, x, 1, relu="saliency")
    torch.testing.assert_close(got, want)
    assert (net[0](x) > 6).any()
