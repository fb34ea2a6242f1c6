# %%
#| default_exp attribution

# %% [markdown]
# # Attribution with Captum's interface
#
# > `GuidedBackprop`, `Saliency` and `Deconvolution` called the way Captum calls them, `Method(model).attribute(inputs, target=...)`, computed by chapter 7's reversed networks.

# %% [markdown]
# *Default run: **9 s** on 2 CPU cores with the default parameters (measured by `make book` on 6 Dec 2026, reusing the training and caches that earlier runs left in the runs folder, `core.runs_dir`; where a first run on a new machine takes longer, the chapter says so).*

# %% [markdown]
# Chapter 7 builds every "deconvolutional" visualisation from one function, `reversed.reverse(model, x,
# selector, relu=..., pool=...)`. Users of [Captum](https://captum.ai) know three of them under another
# shape of call: one class per method, constructed on the model, with an `attribute` method that takes the
# inputs and a `target` class. This chapter gives them that shape, so a Captum user can switch by changing an
# import:
#
# ```python
# from captum.attr import GuidedBackprop      # before
# from motion_nbs.attribution import GuidedBackprop   # after
# attr = GuidedBackprop(model).attribute(images, target=281)
# ```
#
# | class | chapter 7 | reverse of a ReLU | Captum's |
# |---|---|---|---|
# | `Saliency(model)` | `saliency` (network saliency, eq 7.5) | backprop: $g \cdot [x > 0]$ | `captum.attr.Saliency` |
# | `GuidedBackprop(model)` | `guided_backprop` | $\max(g, 0) \cdot [x > 0]$ | `captum.attr.GuidedBackprop` |
# | `Deconvolution(model)` | `deconvnet` (DeConvNet) | $\max(g, 0)$ | `captum.attr.Deconvolution` |
#
# What is the same as Captum: the arguments (`inputs`, `target`, `additional_forward_args`, Saliency's `abs=True`
# default), the result (a tensor of the inputs' shape and dtype) and the numbers wherever Captum sees the
# rectifiers (`tests/test_attribution.py` checks them equal). What differs, on purpose:
#
# - every rectifier is reversed, functional calls (`F.relu`) and in-place ones included; Captum's hooks see only
#   `nn.ReLU` modules, so on networks that call `F.relu` its Guided Backprop silently falls back to saliency;
# - local response normalisation is reversed as the identity (the thesis' choice for DeConvNet and Guided Backprop);
#   Captum back-propagates through it;
# - the model runs in eval mode (batch norm with its running statistics, no dropout), as chapter 7's reverses do,
#   and every module's `training` flag is put back afterwards; the model is otherwise not touched (no hooks left,
#   no parameter gradients);
# - bad input stops with a `ValueError` that says what was wrong: NaN or infinite images, images with a channel
#   count the network's first convolution does not take, a target outside the model's classes, a model whose
#   output is NaN (where "the most active class" would be an arbitrary one).

# %%
#| export
import numbers

import torch
from torch import nn

from motion_nbs.core import check_image
from motion_nbs.reversed import _channels_error, deconvnet, guided_backprop, saliency

# %%
#| hide
from fastcore.test import test_close, test_eq, test_fail


# %% [markdown]
# ## Checking what comes in and what the model gives
#
# The checks need the model's output, which only the forward pass inside `reverse` computes; a thin wrapper
# module checks it there, before anything is back-propagated. The target is Captum's: an int (one class for
# every image), a list or an integer tensor with one class per image, or `None` for a model with one output per
# image.

# %%
#| exporti
def _targets(target, batch: int, name: str):
    "Captum's `target` as `reverse`'s selector: None, an int, or a `(B,)` long tensor."
    if target is None: return None
    if isinstance(target, tuple):
        raise ValueError(f"{name}: target={target!r}; tuple targets (an index into a multi-dimensional output) are not "
                         "supported: give an int, or one int per image (a list or an integer tensor)")
    if isinstance(target, list): target = torch.tensor(target)
    if torch.is_tensor(target):
        if target.is_floating_point() or target.dtype == torch.bool:
            raise ValueError(f"{name}: target must hold integer class indices, got a {target.dtype} tensor")
        target = target.reshape(-1)
        if target.numel() == 1: return int(target)
        if target.numel() != batch:
            raise ValueError(f"{name}: target has {target.numel()} entries for {batch} input(s); give one class per image or one int")
        return target.long()
    if isinstance(target, bool) or not isinstance(target, numbers.Integral):
        raise ValueError(f"{name}: target must be an int, a list or tensor of ints, or None; got {type(target).__name__}")
    return int(target)   # numpy integers too

class _Checked(nn.Module):
    "The caller's model, its output checked inside `reverse`'s forward pass (shape against `target`, finite values)."
    def __init__(self, model: nn.Module, name: str, target, extra_args: tuple):
        super().__init__()
        self.model, self.name, self.target, self.extra_args = model, name, target, extra_args

    def forward(self, x):
        try: y = self.model(x, *self.extra_args)
        except RuntimeError as e:
            _channels_error(self.name, self.model, x, e)
            raise
        if not torch.is_tensor(y): raise ValueError(f"{self.name}: the model returned a {type(y).__name__}, expected a tensor")
        per_image = y.reshape(len(y), -1).shape[1] if y.ndim else 0
        if self.target is None and (y.ndim not in (1, 2) or per_image != 1):
            raise ValueError(f"{self.name}: target=None needs one output per image, the model gives shape {tuple(y.shape)}; "
                             "give target= (a class index, or one per image)")
        if self.target is not None:
            if y.ndim != 2: raise ValueError(f"{self.name}: target= indexes a (B,classes) output; the model gives shape {tuple(y.shape)}")
            t = torch.as_tensor(self.target)
            if (t < 0).any() or (t >= y.shape[1]).any():
                raise ValueError(f"{self.name}: target {self.target if isinstance(self.target, int) else t.tolist()} "
                                 f"is outside the model's {y.shape[1]} classes (0..{y.shape[1] - 1})")
        if not torch.isfinite(y.detach()).all():
            raise ValueError(f"{self.name}: the model's output has {int((~torch.isfinite(y.detach())).sum())} NaN or infinite "
                             "value(s) for finite inputs; an attribution of it would be meaningless")
        return y


# %% [markdown]
# ## The three methods
#
# One base class holds the checks and the call; each method is the reversed network it runs. Like Captum's
# classes, they keep the model and nothing else, so one object serves any number of calls.

# %%
#| export
class ReversedAttribution:
    "Captum-style attribution by one of chapter 7's reversed networks (the base of `Saliency`, `GuidedBackprop`, `Deconvolution`)."
    _reverse = staticmethod(saliency)
    multiplies_by_inputs = False   # Captum's flag: the attribution is not multiplied by the inputs

    def __init__(self, model: nn.Module  # a classifier: `(B,C,H,W)` images → `(B,classes)` scores
                ):
        if not isinstance(model, nn.Module): raise ValueError(f"{type(self).__name__} takes an nn.Module, got {type(model).__name__}")
        self.forward_func = self.model = model

    def _attribute(self, inputs, target, additional_forward_args) -> torch.Tensor:
        name = f"{type(self).__name__}.attribute"
        single = torch.is_tensor(inputs)
        if not single and not (isinstance(inputs, tuple) and len(inputs) == 1):
            raise ValueError(f"{name}: inputs must be one tensor (B,C,H,W) or a tuple holding one, got {type(inputs).__name__}")
        x = check_image(name, inputs if single else inputs[0])
        bad = ~torch.isfinite(x.detach())
        if bad.any(): raise ValueError(f"{name}: the inputs contain {int(bad.sum())} NaN or infinite value(s); expected finite images")
        extra = () if additional_forward_args is None else additional_forward_args
        extra = extra if isinstance(extra, tuple) else (extra,)
        sel = _targets(target, len(x), name)
        attr = type(self)._reverse(_Checked(self.model, name, sel, extra), x, 0 if sel is None else sel)
        return attr if single else (attr,)

    def attribute(self, inputs: torch.Tensor,  # `(B,C,H,W)` images (or a tuple holding them, as Captum allows)
                  target=None,  # the class: an int, one per image (list / integer tensor), or None for a one-output model
                  additional_forward_args=None  # further arguments of `model(inputs, *args)`
                 ) -> torch.Tensor:
        """The attribution of `target`'s score to each input value.

        Shape: `(B,C,H,W)` → `(B,C,H,W)`, the inputs' dtype."""
        return self._attribute(inputs, target, additional_forward_args)

    def has_convergence_delta(self) -> bool: return False

    def __repr__(self): return f"{type(self).__name__}({type(self.model).__name__})"

class Saliency(ReversedAttribution):
    "Network saliency (Simonyan et al.): the gradient of the target's score; its absolute value by default, as in Captum."
    _reverse = staticmethod(saliency)

    def attribute(self, inputs: torch.Tensor,  # `(B,C,H,W)` images (or a tuple holding them)
                  target=None,  # the class: an int, one per image (list / integer tensor), or None for a one-output model
                  abs: bool = True,  # the gradient's absolute value (Captum's default); False: the signed gradient
                  additional_forward_args=None  # further arguments of `model(inputs, *args)`
                 ) -> torch.Tensor:
        """|∂ score / ∂ inputs| (or the signed gradient with `abs=False`).

        Shape: `(B,C,H,W)` → `(B,C,H,W)`."""
        attr = self._attribute(inputs, target, additional_forward_args)
        if not abs: return attr
        return attr.abs() if torch.is_tensor(attr) else (attr[0].abs(),)

class GuidedBackprop(ReversedAttribution):
    "Guided Backprop (Springenberg et al.): every rectifier passes back only positive signals where its input was positive."
    _reverse = staticmethod(guided_backprop)

class Deconvolution(ReversedAttribution):
    "DeConvNet (Zeiler and Fergus): every rectifier passes back the positive part of the signal, whatever its input was."
    _reverse = staticmethod(deconvnet)


# %% [markdown]
# A network small enough to check by hand: one 1×1 convolution with weights $(1, -1)$ over two input channels,
# a ReLU, and a sum over the pixels as the single class score. At a pixel where $x_0 - x_1 > 0$ the
# saliency is $(1, -1)$, elsewhere $0$; Guided Backprop passes back the positive signal where the ReLU was open,
# the same here because the signal from the sum is $+1$; DeConvNet ignores where the ReLU was open, so it is
# $(1, -1)$ at every pixel.

# %%
_net = nn.Sequential(nn.Conv2d(2, 1, 1, bias=False), nn.ReLU(), nn.Flatten(), nn.Linear(4, 1, bias=False))
with torch.no_grad(): _net[0].weight.copy_(torch.tensor([1.0, -1.0]).view(1, 2, 1, 1)); _net[3].weight.fill_(1.0)
_x = torch.tensor([[[[2.0, 0.0], [1.0, 3.0]], [[1.0, 1.0], [0.0, 5.0]]]])   # x0 - x1 > 0 at pixels (0,0) and (1,0)
_open = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
test_eq(Saliency(_net).attribute(_x, abs=False), torch.stack([_open, -_open])[None])
test_eq(Saliency(_net).attribute(_x), torch.stack([_open, _open])[None])           # abs=True: Captum's default
test_eq(GuidedBackprop(_net).attribute(_x), torch.stack([_open, -_open])[None])
test_eq(Deconvolution(_net).attribute(_x), torch.stack([torch.ones(2, 2), -torch.ones(2, 2)])[None])
test_eq(Saliency(_net).attribute((_x,), target=0)[0].shape, _x.shape)               # a tuple in, a tuple out

# %% [markdown]
# Bad input is named, and a wrong call leaves the model as it was:

# %%
_cls = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 5)).train()
_im = torch.rand(2, 3, 8, 8)
test_eq(GuidedBackprop(_cls).attribute(_im, target=[1, 4]).shape, (2, 3, 8, 8))
import numpy as np
test_eq(Saliency(_cls.eval()).attribute(_im, target=np.int64(3)), Saliency(_cls).attribute(_im, target=3)); _cls.train()
test_fail(lambda: GuidedBackprop(_cls).attribute(_im.masked_fill(_im > 0.9, float("nan")), target=1), contains="NaN or infinite value(s); expected finite images")
test_fail(lambda: Saliency(_cls).attribute(torch.rand(2, 1, 8, 8), target=1), contains="inputs have 1 channel(s), Sequential's first convolution takes 3")
test_fail(lambda: Saliency(_cls).attribute(_im, target=5), contains="target 5 is outside the model's 5 classes (0..4)")
test_fail(lambda: Saliency(_cls).attribute(_im), contains="target=None needs one output per image")
test_fail(lambda: Saliency(_cls).attribute(_im, target=[1, 2, 3]), contains="target has 3 entries for 2 input(s)")
test_fail(lambda: Saliency(_cls).attribute(_im, target=(0, 1)), contains="tuple targets")
test_fail(lambda: Saliency(_cls).attribute(_im[0], target=1), contains="expects images of shape (B,C,H,W), got (3, 8, 8)")
_nan = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Linear(4 * 6 * 6, 5))
torch.nn.init.constant_(_nan[2].weight, float("nan"))
test_fail(lambda: GuidedBackprop(_nan).attribute(_im, target=0), contains="the model's output has 10 NaN or infinite value(s)")
assert all(m.training for m in _cls.modules()) and all(p.grad is None and p.requires_grad for p in _cls.parameters())

# %% [markdown]
# ## On a torchvision classifier
#
# Any torchvision classifier works as it is (random weights here: the book does not download; the shapes and
# the calls are what matter). Guided Backprop gives the sharp, image-like maps of chapter 7; saliency the
# noisier gradient.

# %%
import torchvision

from motion_nbs.core import sample_image, show_images
from motion_nbs.reversed import to_display

torch.manual_seed(0)
_alex = torchvision.models.alexnet(weights=None).eval()
_img = torch.nn.functional.interpolate(sample_image("chelsea")[None], size=(224, 224), mode="bilinear", antialias=True)
_gb = GuidedBackprop(_alex).attribute(_img, target=281)
_sal = Saliency(_alex).attribute(_img, target=281)
test_eq((_gb.shape, _sal.shape), ((1, 3, 224, 224), (1, 3, 224, 224)))
show_images([_img[0], to_display(_gb)[0], _sal[0].amax(0) / _sal.max()], titles=["image", "GuidedBackprop", "Saliency (max over colour)"], ncols=3);

# %% [markdown]
# ## Summary
#
# - `Saliency(model).attribute(x, target=c)` is `|reversed.saliency(model, x, c)|` (or signed with `abs=False`),
#   `GuidedBackprop` and `Deconvolution` are `reversed.guided_backprop` and `reversed.deconvnet`, each with Captum's
#   call and result; `tests/test_attribution.py` checks them equal to Captum's classes.
# - NaN images, a channel count the network does not take, a target outside its classes and a NaN output are
#   `ValueError`s that say so; the model comes back as it was given.

# %%
#| hide
import nbdev; nbdev.nbdev_export()
