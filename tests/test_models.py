"""Models: equality with torchvision's networks, appendix-A geometry, batch-norm folding, receptive fields
against gradient supports, pretrained loading without downloads, the offline ImageNet classifier."""
import math
import os
import urllib.request
from pathlib import Path

import pytest
import torch
import torch.nn as nn
import torchvision
from hypothesis import assume, given, settings, strategies as st

from motion_nbs.core import sample_image
from motion_nbs.models import (AlexNet, AlexNetCPFS, FCN8s, VGG16, alexnet_cpfs_small, create_model, efficientnet_lite0,
                               fcn8s_small, fold_batchnorm, imagenet_categories, imagenet_preprocess, layer_names,
                               layer_outputs, load_pretrained, receptive_fields, vgg16_small)


@pytest.fixture
def no_downloads(monkeypatch, tmp_path):
    "An empty torch hub cache, and any attempt to reach the network fails the test."
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    def refuse(*a, **k): raise AssertionError("a download was attempted")
    monkeypatch.setattr(urllib.request, "urlopen", refuse)
    monkeypatch.setattr(torch.hub, "download_url_to_file", refuse)
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", refuse)
    return tmp_path / "torch" / "hub" / "checkpoints"


def test_pretrained_alexnet_from_the_hub_cache_is_torchvisions_network(no_downloads):
    torch.manual_seed(0)
    ref = torchvision.models.alexnet().eval()
    no_downloads.mkdir(parents=True)
    torch.save(ref.state_dict(), no_downloads / "alexnet-owt-7be5be79.pth")  # where torchvision caches it
    ours = load_pretrained("alexnet")
    assert not ours.training
    x = torch.rand(2, 3, 96, 104)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), ref(x), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(layer_outputs(ours, x, "relu1")["relu1"], ref.features[:2](x))  # names address the same layers


def test_vgg16_is_torchvisions_network():
    "torchvision's VGG class with VGG-16's configuration (channels / 8 to stay small) against ours, same weights."
    from torchvision.models.vgg import VGG, make_layers
    from motion_nbs.models import _copy_by_position
    torch.manual_seed(0)
    cfg = [8, 8, "M", 16, 16, "M", 32, 32, 32, "M", 64, 64, 64, "M", 64, 64, 64, "M"]
    ref = VGG(make_layers(cfg), num_classes=10).eval()
    ref.classifier = nn.Sequential(nn.Linear(64 * 49, 512), nn.ReLU(True), nn.Dropout(), nn.Linear(512, 512), nn.ReLU(True),
                                   nn.Dropout(), nn.Linear(512, 10)).eval()
    ours = _copy_by_position(ref.state_dict(), vgg16_small(num_classes=10), "ref").eval()
    x = torch.rand(2, 3, 64, 72)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), ref(x), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(layer_outputs(ours, x, "pool3")["pool3"], ref.features[:17](x))
    with torch.device("meta"):  # the full-size network has torchvision's parameter shapes, in order
        shapes = [tuple(v.shape) for v in VGG16().state_dict().values()]
        assert shapes == [tuple(v.shape) for v in torchvision.models.vgg16().state_dict().values()]


def test_pretrained_missing_file_names_the_file(no_downloads):
    with pytest.raises(FileNotFoundError) as e:
        load_pretrained("alexnet")
    msg = str(e.value)
    assert str(no_downloads / "alexnet-owt-7be5be79.pth") in msg and "https://download.pytorch.org/models/alexnet-owt-7be5be79.pth" in msg


def test_pretrained_bad_inputs(tmp_path, no_downloads):
    with pytest.raises(ValueError, match="valid names: alexnet, vgg16, efficientnet_lite0"):
        load_pretrained("resnet18")
    with pytest.raises(FileNotFoundError, match="nothere.pth"):
        load_pretrained("vgg16", tmp_path / "nothere.pth")
    (tmp_path / "corrupt.pth").write_bytes(b"\x80\x04garbage")
    with pytest.raises(ValueError, match="corrupt.pth: cannot read weights"):
        load_pretrained("vgg16", tmp_path / "corrupt.pth")
    torch.save(alexnet_cpfs_small().state_dict(), tmp_path / "cpfs.pth")
    with pytest.raises(ValueError, match=r"cpfs.pth: expected 32 tensors for VGG16, found 14"):
        load_pretrained("vgg16", tmp_path / "cpfs.pth")


def test_efficientnet_lite0_classifies_chelsea_as_a_cat(no_downloads):
    model = efficientnet_lite0()
    with torch.no_grad():
        logits = model(imagenet_preprocess(sample_image("chelsea"), model))
    top3 = logits[0].topk(3).indices.tolist()
    assert {281, 282, 285} & set(top3), [imagenet_categories()[i] for i in top3]
    cats = imagenet_categories()
    assert len(cats) == 1000 and cats[285] == "Egyptian cat"


def test_alexnet_cpfs_follows_appendix_a():
    net = AlexNetCPFS()
    names = layer_names(net)
    assert names == ["pad", "conv1", "relu1", "pad1", "pool1", "norm1", "conv2", "relu2", "pad2", "pool2", "norm2",
                     "conv3", "relu3", "conv4", "relu4", "conv5", "relu5", "pad5", "pool5",
                     "fc6", "relu6", "drop6", "fc7", "relu7", "drop7"]
    assert net.pad.padding == (3, 4, 3, 4) and net.pad1.padding == net.pad2.padding == net.pad5.padding == (0, 1, 0, 1)
    convs = {n: (m.out_channels, m.kernel_size, m.stride, m.padding, m.groups) for n, m in net.named_children() if isinstance(m, nn.Conv2d)}
    assert convs == {"conv1": (96, (11, 11), (4, 4), (0, 0), 1), "conv2": (256, (5, 5), (1, 1), (2, 2), 1),
                     "conv3": (384, (3, 3), (1, 1), (1, 1), 1), "conv4": (384, (3, 3), (1, 1), (1, 1), 1),
                     "conv5": (256, (3, 3), (1, 1), (1, 1), 1), "fc6": (256, (7, 7), (1, 1), (3, 3), 1),
                     "fc7": (256, (1, 1), (1, 1), (0, 0), 1)}
    assert (net.norm1.size, net.norm1.alpha, net.norm1.beta, net.norm1.k) == (5, 0.0005, 0.75, 1.0)
    assert net.drop6.p == net.drop7.p == 0.5
    assert all(not m.inplace for m in net.modules() if isinstance(m, nn.ReLU))
    bn = AlexNetCPFS(batchnorm=True)
    assert [n for n in layer_names(bn) if n.startswith("bn")] == [f"bn{i}" for i in range(1, 8)]
    assert all(not m.affine for m in bn.modules() if isinstance(m, nn.BatchNorm2d))


def test_lrn_matches_caffe_formula():
    "Caffe's LRN: b = a / (k + alpha/n * sum over the 5 nearest channels of a^2)^beta."
    torch.manual_seed(0)
    a = torch.randn(1, 7, 3, 3, dtype=torch.float64) * 10
    b = AlexNetCPFS().norm1.double()(a)
    sq = torch.nn.functional.pad(a ** 2, (0, 0, 0, 0, 2, 2))
    ref = a / (1 + 0.0005 / 5 * sum(sq[:, i:i + 7] for i in range(5))) ** 0.75
    torch.testing.assert_close(b, ref)


@settings(max_examples=12, deadline=None)
@given(st.integers(1, 12))
def test_same_padding_sizes(m):
    "TensorFlow SAME padding: for inputs that are multiples of 32, every stage has ceil(n / stride) pixels."
    n = 32 * m
    net = alexnet_cpfs_small().eval()
    with torch.device("meta"):
        net = alexnet_cpfs_small()
    x = torch.zeros(1, 3, n, n, device="meta")
    feats = layer_outputs(net, x, ["conv1", "pool1", "conv2", "pool2", "conv5", "pool5", "fc6", "fc7"], stop_early=False)
    strides = {"conv1": 4, "pool1": 8, "conv2": 8, "pool2": 16, "conv5": 16, "pool5": 32, "fc6": 32, "fc7": 32}
    assert {k: v.shape[-1] for k, v in feats.items()} == {k: math.ceil(n / s) for k, s in strides.items()}


@pytest.mark.parametrize("make", [lambda: alexnet_cpfs_small(batchnorm=True), lambda: vgg16_small(num_classes=7, batchnorm=True),
                                  lambda: fcn8s_small(num_classes=3, batchnorm=True)])
def test_fold_batchnorm(make):
    torch.manual_seed(0)
    model = make()
    with torch.no_grad():  # non-trivial running statistics
        for _ in range(2): model(torch.rand(4, 3, 32, 32) * 2 + 0.5)
    if isinstance(model, FCN8s):  # score layers start at zero; give them weights so the output depends on the trunk
        for s in (model.score_fr, model.score_pool4, model.score_pool3): nn.init.normal_(s.weight, std=0.1)
    model.eval()
    folded = fold_batchnorm(model)
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in folded.modules())
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        ref = model(x)
        torch.testing.assert_close(folded(x), ref, rtol=1e-5, atol=1e-5)
    assert ref.abs().max() > 1e-3
    assert model.training is False and any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())  # untouched


def test_fcn8s_from_vgg16_is_exact_and_trainable():
    torch.manual_seed(0)
    vgg = vgg16_small(num_classes=10).eval()
    fcn = FCN8s.from_vgg16(vgg, num_classes=4).eval()
    x = torch.rand(1, 3, 224, 224)
    with torch.no_grad():
        a = layer_outputs(fcn, x, "relu7")["relu7"][0, :, 3, 3]
        b = layer_outputs(vgg, x, "relu7")["relu7"][0]
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    fcn.train()
    out = fcn(torch.rand(2, 3, 40, 72))
    assert out.shape == (2, 4, 40, 72)
    out.sum().backward()
    assert fcn.score_fr.weight.grad.abs().sum() > 0 and fcn.upscore8.weight.grad is None


def _gradient_support(net, n, unit):
    "Rows of a ones input that output unit `unit` (row and column) depends on: (first, last)."
    x = torch.ones(1, 1, n, n, dtype=torch.float64, requires_grad=True)
    y = net(x)
    y[0, 0, unit, unit].backward()
    rows = (x.grad[0, 0].abs().sum(1) > 0).nonzero()[:, 0]
    return rows.min().item(), rows.max().item()


layer_st = st.one_of(
    st.tuples(st.just("conv"), st.integers(1, 5), st.integers(1, 3), st.integers(0, 2), st.integers(1, 2)),
    st.tuples(st.just("avg"), st.integers(1, 3), st.integers(1, 3), st.just(0), st.just(1)),
    st.tuples(st.just("pad"), st.integers(0, 3), st.just(1), st.integers(0, 3), st.just(1)))


@settings(max_examples=25, deadline=None)
@given(st.lists(layer_st, min_size=1, max_size=5))
def test_receptive_fields_match_gradient_support(spec):
    "With positive weights and average pooling, a unit's gradient support is exactly its receptive field."
    layers = []
    for kind, k, s, p, d in spec:
        if kind == "conv":
            c = nn.Conv2d(1, 1, k, stride=s, padding=p, dilation=d, bias=False).double()
            nn.init.ones_(c.weight); layers.append(c)
        elif kind == "avg": layers.append(nn.AvgPool2d(k, s))
        else: layers.append(nn.ZeroPad2d((k, p, k, p)))
        layers.append(nn.ReLU())
    net = nn.Sequential(*layers)
    n = 160
    try: out = net(torch.zeros(1, 1, n, n, dtype=torch.float64)).shape[-1]
    except RuntimeError: assume(False)   # strided pooling shrank the image below a kernel: no network for 160 px
    rf = receptive_fields(net, n, in_channels=1)[str(len(layers) - 1)]
    size, stride, center = rf.size[0], rf.stride[0], rf.center[0]
    # a unit whose field lies inside the image (not cut by the borders)
    inside = [u for u in range(out) if center + u * stride - (size - 1) / 2 >= 0 and center + u * stride + (size - 1) / 2 <= n - 1]
    if len(inside) < 2: return
    u = inside[0]
    lo, hi = _gradient_support(net, n, u)
    lo2, _ = _gradient_support(net, n, u + 1)
    assert (hi - lo + 1, lo2 - lo, (lo + hi) / 2) == (size, stride, center + u * stride), (spec, rf)


def test_receptive_fields_table_5_1_alexnet():
    with torch.device("meta"):
        rf = receptive_fields(AlexNet(), 224)
    table = {"conv1": (11, 4), "relu1": (11, 4), "pool1": (19, 8), "conv2": (51, 8), "relu2": (51, 8), "pool2": (67, 16),
             "conv3": (99, 16), "relu3": (99, 16), "conv4": (131, 16), "relu4": (131, 16), "conv5": (163, 16), "relu5": (163, 16),
             "pool5": (195, 32), "fc6": (355, 32), "relu6": (355, 32), "fc7": (355, 32), "relu7": (355, 32), "fc8": (355, 32)}
    assert {n: (rf[n].size[0], rf[n].stride[0]) for n in table} == table


def test_receptive_fields_table_5_1_vgg16_full():
    with torch.device("meta"):
        rf = receptive_fields(VGG16(), 224)
    table = {"conv1_1": 3, "relu1_1": 3, "conv1_2": 5, "pool1": 6, "conv2_1": 10, "conv2_2": 14, "pool2": 16, "conv3_1": 24,
             "conv3_2": 32, "conv3_3": 40, "pool3": 44, "conv4_1": 60, "conv4_2": 76, "conv4_3": 92, "pool4": 100,
             "conv5_1": 132, "conv5_2": 164, "conv5_3": 196, "relu5_3": 196, "pool5": 212, "fc6": 404, "relu7": 404, "fc8": 404}
    for name, size in table.items():
        assert rf[name].size == (size, size), name
        b = int(name[4]) if name.startswith("pool") else None
        stride = 2 ** b if b else 2 ** (int(name[-3]) - 1) if name[-2] == "_" else 32  # convB_I: 2^(B-1), poolB: 2^B
        assert rf[name].stride == (stride, stride), name


def test_layer_outputs_stop_early_gives_the_same_values():
    torch.manual_seed(0)
    net = vgg16_small().eval()
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        a = layer_outputs(net, x, ["pool2", "conv1_1"])
        b = layer_outputs(net, x, ["pool2", "conv1_1"], stop_early=False)
    for k in a: torch.testing.assert_close(a[k], b[k])


def test_bad_model_layer_and_input():
    with pytest.raises(ValueError, match="unknown model 'alexnet_v2'; valid names: alexnet_cpfs, alexnet_cpfs_small, alexnet, vgg16"):
        create_model("alexnet_v2")
    net = alexnet_cpfs_small()
    with pytest.raises(ValueError, match=r"unknown layer name\(s\) \['relu8'\].*valid names: pad, conv1"):
        layer_outputs(net, torch.rand(1, 3, 64, 64), ["relu1", "relu8"])
    with pytest.raises(ValueError, match="AlexNetCPFS needs inputs of at least 32x32 pixels, got 31x31"):
        net(torch.rand(1, 3, 31, 31))
    with pytest.raises(ValueError, match="VGG16 needs inputs of at least 32x32 pixels, got 16x40"):
        vgg16_small()(torch.rand(1, 3, 16, 40))
    with pytest.raises(ValueError, match=r"AlexNet needs inputs of at least 63x63 pixels, got 62x62"):
        with torch.device("meta"): AlexNet()(torch.rand(1, 3, 62, 62, device="meta"))
    with pytest.raises(ValueError, match=r"expects images of shape \(B,3,H,W\), got \(3, 64, 64\)"):
        net(torch.rand(3, 64, 64))
