"""motion_nbs.attribution against Captum's classes of the same names (Captum 0.7+), called the same way: a Captum user
switches by changing the import. Small hand-made networks (module ReLUs, max pooling, batch norm in eval mode) and
torchvision's AlexNet with random weights; int, per-image and list targets; Saliency's `abs` both ways."""
import pytest
import torch
import torch.nn as nn

from conftest import require_reference

from motion_nbs import attribution

METHODS = ("Saliency", "GuidedBackprop", "Deconvolution")


@pytest.fixture(scope="module")
def captum():
    captum = require_reference("captum")
    import captum.attr  # noqa: F401
    return captum


def _small_cnn(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(),
                         nn.Linear(64, 10), nn.ReLU(), nn.Linear(10, 6)).eval()


def _both(captum, method, model, x, **kw):
    ours = getattr(attribution, method)(model).attribute(x, **kw)
    ref = getattr(captum.attr, method)(model).attribute(x, **kw)
    return ours, ref


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("target", [3, [0, 5, 2], "tensor"])
def test_equal_to_captum_small(captum, method, target):
    model = _small_cnn()
    x = torch.rand(3, 3, 12, 12, generator=torch.Generator().manual_seed(1))
    if target == "tensor": target = torch.tensor([1, 4, 4])
    ours, ref = _both(captum, method, model, x, target=target)
    assert ref.abs().max() > 0
    assert ours.shape == ref.shape and ours.dtype == ref.dtype
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-6 * float(ref.abs().max()))


@pytest.mark.parametrize("abs_", [True, False])
def test_saliency_abs_like_captum(captum, abs_):
    model, x = _small_cnn(1), torch.rand(2, 3, 10, 10, generator=torch.Generator().manual_seed(2))
    ours, ref = _both(captum, "Saliency", model, x, target=2, abs=abs_)
    torch.testing.assert_close(ours, ref)
    assert bool((ours < 0).any()) is (not abs_)


def test_equal_to_captum_alexnet(captum):
    import torchvision
    torch.manual_seed(0)
    model = torchvision.models.alexnet(weights=None).eval()
    x = torch.rand(2, 3, 96, 96, generator=torch.Generator().manual_seed(3))
    with torch.no_grad(): t = model(x).argmax(1)   # active classes (random ReLU networks have dead ones)
    for method in METHODS:
        ours, ref = _both(captum, method, model, x, target=t)
        torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5 * float(ref.abs().max()))


def test_one_output_model_without_target(captum):
    model = nn.Sequential(_small_cnn(2), nn.Linear(6, 1))
    x = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(4))
    for method in METHODS:
        ours, ref = _both(captum, method, model, x)
        torch.testing.assert_close(ours, ref)


def test_additional_forward_args(captum):
    class Scaled(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = _small_cnn(3)
        def forward(self, x, scale): return self.net(x) * scale
    model, x = Scaled().eval(), torch.rand(1, 3, 8, 8, generator=torch.Generator().manual_seed(5))
    ours, ref = _both(captum, "GuidedBackprop", model, x, target=1, additional_forward_args=(2.0,))
    torch.testing.assert_close(ours, ref)


def test_functional_relu_is_reversed_where_captum_sees_none(captum):
    "On a network that calls F.relu, Captum's hooks see no ReLU: its Guided Backprop is plain saliency; ours is not."
    class Functional(nn.Module):
        def __init__(self):
            super().__init__()
            self.c1, self.c2, self.fc = nn.Conv2d(3, 6, 3), nn.Conv2d(6, 6, 3), nn.Linear(6, 4)
        def forward(self, x): return self.fc(torch.relu(self.c2(torch.relu(self.c1(x)))).mean((2, 3)))
    torch.manual_seed(4)
    model, x = Functional().eval(), torch.rand(1, 3, 10, 10)
    ours, ref = _both(captum, "GuidedBackprop", model, x, target=0)
    sal = attribution.Saliency(model).attribute(x, target=0, abs=False)
    torch.testing.assert_close(ref, sal)          # Captum: no ReLU module, so the plain gradient
    assert not torch.allclose(ours, sal)          # ours: every rectifier guided
