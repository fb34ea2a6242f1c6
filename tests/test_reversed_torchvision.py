"""`reverse` on every torchvision classification model (random weights, small inputs), against Captum.

The 80 classifiers are built from 22 distinct sets of layer types (ResNet-50 to -152, the ResNeXts and Wide ResNets share
one; the eight EfficientNets another; ...): the smallest model of each set is run, the others meet exactly the same
reversal rules on more or wider layers (building all 80 with their initialisation and reversing the largest, RegNet-Y
128GF's 644M weights, took most of the suite's time). Which model stands for which is printed by
`test_every_classifier_has_a_representative`.

For each model run, saliency, DeConvNet and Guided Backprop give an output of the input's shape, finite, and:
- saliency equals the plain gradient (what Captum's Saliency computes) on every model;
- Guided Backprop and DeConvNet equal Captum's on every model whose non-linearities are all `nn.ReLU`
  modules (Captum overrides the gradient of those modules only);
- where a model also calls ReLU functionally (DenseNet, GoogLeNet, Inception-v3), Captum silently leaves
  those ReLUs BP: our result differs from Captum's on the model as it is, and equals Captum's on the same
  model with every ReLU call routed through an `nn.ReLU` module that Captum can see.
Other rectifiers (ReLU6, SiLU, GELU, Hardswish) and layer norms have no Captum counterpart: shape and
finiteness only (their rules are tested by hand in chapter 07).
"""
import contextlib
import functools
from unittest import mock

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from conftest import require_reference

from motion_nbs.reversed import ARCHITECTURES, reverse

torchvision = pytest.importorskip("torchvision")
MODELS = torchvision.models.list_models(module=torchvision.models)
SIZE = {"alexnet": 64, "inception_v3": 80, "maxvit_t": 224, "vit_h_14": 28}   # the smallest inputs the architectures take; else 32
KWARGS = {name: dict(image_size=28 if "_14" in name else 32) for name in MODELS if name.startswith("vit_")}
RTOL = 1e-5   # float32 through up to ~300 layers: the summation order (threads, torch build) moves the last bits; measured up to 1.2e-6 (5 Dec 2026)
_RELUS = {F.relu, torch.relu, torch.Tensor.relu, F.relu_, torch.relu_, torch.Tensor.relu_}
_OTHER = {F.relu6, F.hardtanh, F.silu, F.gelu, F.hardswish, F.elu, F.leaky_relu, F.mish, F.softplus, F.selu, F.layer_norm,
          F.group_norm, F.local_response_norm}


@pytest.fixture(scope="module")
def captum():
    captum = require_reference("captum")
    import captum.attr  # noqa: F401
    return captum


class _Record(TorchFunctionMode):
    "Counts the ReLU calls and notes the other non-linearities a forward pass makes."
    def __init__(self):
        super().__init__()
        self.relus, self.other = 0, set()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func in _RELUS: self.relus += 1
        elif func in _OTHER: self.other.add(getattr(func, "__name__", str(func)))
        return func(*args, **(kwargs or {}))


class _ReluThroughModule(TorchFunctionMode):
    "Routes every ReLU call through one nn.ReLU module, so that Captum's module hooks see it."
    def __init__(self, module):
        super().__init__()
        self.module = module

    def __torch_function__(self, func, types, args=(), kwargs=None):
        return self.module(args[0]) if func in _RELUS else func(*args, **(kwargs or {}))


class _Visible(nn.Module):
    def __init__(self, net):
        super().__init__()
        self.net, self.relu = net, nn.ReLU()

    def forward(self, x):
        with _ReluThroughModule(self.relu): return self.net(x)


def _forward(model, x):
    "The top class, and which Captum comparison applies: 'relu_modules', 'functional_relu' or 'other'."
    calls = []
    hooks = [m.register_forward_hook(lambda *a: calls.append(1)) for m in model.modules() if isinstance(m, nn.ReLU)]
    try:
        with torch.no_grad(), _Record() as rec: target = int(model(x).argmax())
    finally:
        for h in hooks: h.remove()
    return target, "other" if rec.other else "relu_modules" if rec.relus == len(calls) else "functional_relu"


@contextlib.contextmanager
def _uninitialised():
    "Builds modules without filling their weights (every `torch.nn.init` fill is skipped): fast, for reading a model's layer types."
    fills = [f for f in dir(nn.init) if f.endswith("_") and not f.startswith("_")]
    with contextlib.ExitStack() as stack:
        for f in fills: stack.enter_context(mock.patch.object(nn.init, f, lambda t, *a, **k: t))
        yield


@functools.cache
def _layout(name: str) -> tuple[frozenset[str], int]:
    "A classifier's set of layer types and its number of weights, read from an uninitialised build."
    with _uninitialised(): model = torchvision.models.get_model(name, weights=None, **KWARGS.get(name, {}))
    return frozenset(f"{type(m).__module__}.{type(m).__qualname__}" for m in model.modules()), sum(p.numel() for p in model.parameters())


def _representatives() -> dict[str, list[str]]:
    "The smallest classifier (by weights) of each set of layer types -> the models built from that same set, smallest first."
    groups = {}
    for name in MODELS:
        types, size = _layout(name)
        groups.setdefault(types, []).append((size, name))
    return {min(g)[1]: [n for _, n in sorted(g)] for g in groups.values()}


GROUPS = _representatives()


def test_every_classifier_has_a_representative():
    """Each of torchvision's classifiers is run or stands behind a run model; a model and its representative are also written in
    the same torchvision source file (one `forward`, so the same functional ReLUs and rectifiers: what the layer types cannot show)."""
    print({rep: members[1:] for rep, members in GROUPS.items()})
    assert sorted(n for members in GROUPS.values() for n in members) == sorted(MODELS)
    source = lambda n: torchvision.models.get_model_builder(n).__module__
    for rep, members in GROUPS.items():
        assert {source(n) for n in members} == {source(rep)}, (rep, {n: source(n) for n in members})
    assert {"resnet18", "resnext50_32x4d", "vgg11", "vgg11_bn", "swin_t", "swin_v2_t"} <= set(GROUPS)   # block types split families
    assert len(MODELS) >= 80 and len(GROUPS) >= 22   # torchvision 0.2x: 80 classifiers, 22 sets of layer types


def _rel(a, b):
    assert a.shape == b.shape and b.abs().max() > 0
    return ((a - b).abs().max() / b.abs().max()).item()


@pytest.mark.parametrize("name", list(GROUPS))
def test_reverse_every_torchvision_classifier(captum, name):
    torch.manual_seed(0)
    model = torchvision.models.get_model(name, weights=None, **KWARGS.get(name, {})).eval().requires_grad_(False)
    for m in model.modules():   # ViT's head starts at zero: every output, and so every reversal, would be 0
        if isinstance(m, nn.Linear) and not m.weight.any(): nn.init.normal_(m.weight, std=0.02)
    size = SIZE.get(name, 32)
    x = torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(1))
    target, kind = _forward(model, x)
    ours = {m: reverse(model, x, target, **ARCHITECTURES[m]) for m in ("saliency", "deconvnet", "guided")}
    for m, r in ours.items(): assert r.shape == x.shape and torch.isfinite(r).all() and r.abs().max() > 0, m
    xg = x.clone().requires_grad_(True)
    assert _rel(ours["saliency"], torch.autograd.grad(model(xg)[0, target], xg)[0]) <= RTOL   # saliency is the plain gradient
    captums = {"guided": captum.attr.GuidedBackprop, "deconvnet": captum.attr.Deconvolution}
    for m, method in captums.items():
        if kind == "relu_modules":
            assert _rel(ours[m], method(model).attribute(x, target=target)) <= RTOL, m
        elif kind == "functional_relu":
            assert _rel(ours[m], method(model).attribute(x, target=target)) > 1e-3, f"{m}: Captum should miss the functional ReLUs"
            assert _rel(ours[m], method(_Visible(model)).attribute(x, target=target)) <= RTOL, m
