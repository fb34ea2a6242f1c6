# %%
#| default_exp preimage

# %% [markdown]
# # Natural pre-images
#
# > One regularised energy and one optimiser for inversion, activation maximisation and caricaturisation of any differentiable representation (thesis sections 5.2, 5.4–5.6).

# %% [markdown]
# *Default run: **14 s** on 2 CPU cores with the default parameters (measured by `make book` on 6 Dec 2026, reusing the training and caches that earlier runs left in the runs folder, `core.runs_dir`; where a first run on a new machine takes longer, the chapter says so).*

# %% [markdown]
# Chapter 5 of the thesis visualises a representation $\Phi$ — HOG, dense SIFT, a layer of a CNN — by
# finding an image $\mathbf{x}$ whose code $\Phi(\mathbf{x})$ has a chosen property, while the image stays
# *natural*. All three visualisations are instances of one problem (section 5.2, eq 5.1):
#
# $$\mathbf{x}^* = \operatorname*{argmin}_{\mathbf{x}}\ \mathcal{R}_\alpha(\mathbf{x}) + \mathcal{R}_{TV^\beta}(\mathbf{x}) + C\,\ell(\Phi(\mathbf{x}), \Phi_0).$$
#
# The loss $\ell$ decides *which* visualisation we get: a distance to the code of a probe image
# (**inversion**), an inner product with an indicator vector (**activation maximisation**) or with the
# probe's own positive activations (**caricaturisation**). The regularisers are the natural-image prior.
# This chapter builds the pieces in that order — regularisers, losses, jitter, Algorithm 1 — and then the
# three public entry points `invert`, `maximize` and `caricature`, plus the metrics of section 5.4.
# The experiments (table 5.2, figs 5.2–5.20) live in `05c_preimage_experiments`.
#
# **Units.** The thesis works with zero-mean images whose pixel values span $0..255$ (the convention of
# MatConvNet's networks); its constants $B = 80$ ("the typical $L^2$ norm of a pixel's RGB vector") and
# $V = B/6.5$ only make sense there. The book's images are floats in $[0,1]$. So the solver's variable
# $\mathbf{x}$ lives in the thesis' units, and $\Phi$ always sees the book's image
# $\text{image} = \text{mean} + \mathbf{x}/255$ (`mean` defaults to the ImageNet mean). Every
# representation therefore takes the same inputs as everywhere else in the book, and every constant keeps
# the thesis' value.

# %%
#| export
import math
from dataclasses import dataclass, fields, replace

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

# the book's natural images (`natural_images`, chapter 00) are importable from here as before
from motion_nbs.core import IMAGE_SUFFIXES, check_choice, check_image, check_int, frozen, natural_images, renamed, tqdm
from motion_nbs.models import layer_outputs, receptive_fields

try: import numba
except ImportError: numba = None  # the tensor code path below does the same work without it

# %%
#| hide
import warnings

from fastcore.test import test_close, test_eq, test_fail

from motion_nbs.core import sample_image, show_images
from motion_nbs.features import HOG


# %% [markdown]
# ## One parameter set
#
# "All the regularizers have been carefully normalized to balance the different terms [...] in all our
# experiments we use one set of values: $C = 1$, $\alpha = 6$, $\beta = 2$, $B = 80$, $B_+ = 2B$, and
# $V = B/6.5$" (section 5.2.2). Algorithm 1 adds the momentum $\rho = 0.9$, the initial learning rate
# $\eta_0 = 0.01\,B^2/\alpha$ and $T = 300$ iterations, followed for inversion with jitter by 50 more
# without jitter at $\eta_0/10$ (section 5.2.3).
#
# **$\eta_0$: the thesis and the author's code differ.** The thesis prints $\eta_0 = 0.01\,B^2/\alpha$; the
# author's `get_defaults.m` sets `LR = 0.05 * x0_sigma^2 / alpha`, i.e. $\eta_0 = 0.05\,B^2/\alpha$, five times
# larger, and every experiment script takes its rates from there. The default here is the thesis' value;
# `eta0_scale=AUTHOR_ETA0_SCALE` (0.05) gives the author's (`lr=` sets $\eta_0$ itself). Measured on table 5.2's HOG
# (chapter 05c, `table52_hog_diagnostics`): at 300 iterations the two differ by less than a point of error.
#
# `PreimageParams` holds them; every entry point takes
# overrides as keyword arguments (`invert(phi, x0, C=100)`), and a misspelt name is an error, not a
# silently ignored option.

# %%
#| export
@dataclass(frozen=True)
class PreimageParams:
    "The normalised parameters of section 5.2 (thesis units: zero-mean images in 0..255)."
    C: float = 1.0  # weight of the loss against the regularisers
    alpha: float = 6.0  # exponent of the bounded-range regulariser (eq 5.5)
    beta: float = 2.0  # exponent of the TV regulariser
    B: float = 80.0  # typical norm of a pixel's colour vector
    B_plus: float | None = None  # hard bound on a pixel's norm (eq 5.6); None: 2B
    V: float | None = None  # typical norm of the image gradient; None: B/6.5
    jitter: int = 1  # T of eq 5.7: shifts in {0..T-1}^2; 1 means no jitter
    num_iters: int = 300  # iterations of Algorithm 1
    finetune_iters: int = 50  # inversion with jitter: further iterations without jitter at lr/10
    momentum: float = 0.9  # rho of Algorithm 1
    lr: float | None = None  # eta_0 of Algorithm 1; None: eta0_scale B^2 / alpha
    eta0_scale: float = 0.01  # eta_0 = eta0_scale B^2 / alpha: the thesis prints 0.01, the author's get_defaults.m uses 0.05
    scale: float = 255.0  # thesis units per book unit: image = mean + x / scale

    @property
    def bound(self) -> float: return 2 * self.B if self.B_plus is None else self.B_plus
    @property
    def tv_scale(self) -> float: return self.B / 6.5 if self.V is None else self.V
    @property
    def lr0(self) -> float: return self.eta0_scale * self.B ** 2 / self.alpha if self.lr is None else self.lr

AUTHOR_ETA0_SCALE = 0.05   # get_defaults.m: LR = 0.05 * x0_sigma^2 / alpha (the thesis prints 0.01)

def preimage_params(base: PreimageParams | None = None,  # parameters to start from; None: the thesis' set
                    **overrides  # any field of `PreimageParams`
                   ) -> PreimageParams:
    "The thesis' parameter set with `overrides`; unknown names and out-of-range values raise `ValueError`."
    valid = [f.name for f in fields(PreimageParams)]; unknown = sorted(set(overrides) - set(valid))
    if unknown: raise ValueError(f"unknown pre-image parameter(s) {unknown}; valid: {', '.join(valid)}")
    p = replace(base or PreimageParams(), **overrides)
    positive = dict(alpha=p.alpha, B=p.B, bound=p.bound, V=p.tv_scale, lr=p.lr0, scale=p.scale, beta=p.beta)
    bad = {k: v for k, v in positive.items() if not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0)}
    if bad: raise ValueError(f"pre-image parameters must be finite and > 0, got {bad}")
    if not (math.isfinite(p.C) and p.C >= 0): raise ValueError(f"C must be finite and >= 0, got {p.C!r}")
    if not 0 <= p.momentum < 1: raise ValueError(f"momentum must be in [0, 1), got {p.momentum!r}")
    for name in ("jitter", "num_iters", "finetune_iters"): check_int(name, getattr(p, name), 1 if name == "jitter" else 0)
    return p


# %%
p = preimage_params()
test_eq((p.C, p.alpha, p.beta, p.B, p.bound, p.num_iters, p.momentum), (1.0, 6.0, 2.0, 80.0, 160.0, 300, 0.9))
test_close(p.tv_scale, 80 / 6.5); test_close(p.lr0, 0.01 * 6400 / 6)
test_close(preimage_params(eta0_scale=AUTHOR_ETA0_SCALE).lr0, 0.05 * 6400 / 6)     # the author's get_defaults.m
test_eq(preimage_params(eta0_scale=AUTHOR_ETA0_SCALE, lr=2.0).lr0, 2.0)               # an explicit eta_0 wins
test_eq(preimage_params(C=100, jitter=4).C, 100)
test_fail(lambda: preimage_params(lamda=1), contains="valid: C, alpha")
test_fail(lambda: preimage_params(beta=0), contains="> 0")
test_fail(lambda: preimage_params(jitter=0), contains="jitter=0; expected an int >= 1")


# %% [markdown]
# ## Regularisers (section 5.2.2)
#
# **Bounded range.** For a colour image the term is isotropic in RGB: with $\|\mathbf{x}(v,u)\|$ the norm of
# pixel $(v,u)$'s colour vector,
#
# $$N_\alpha(\mathbf{x}) = \frac{1}{HWB^\alpha}\sum_{v,u}\|\mathbf{x}(v,u)\|^\alpha \quad (5.5)$$
#
# so $N_\alpha \approx 1$ for an image of typical contrast; eq 5.6 adds the hard constraint
# $\|\mathbf{x}(v,u)\| \le B_+$, enforced by the optimiser's projection below. Without the soft term,
# pixels saturate; without the hard one, a network with normalisation layers could rescale the image at
# will.
#
# **Bounded variation.** With forward differences per channel (zero at the last row and column),
#
# $$\mathcal{R}_{TV^\beta}(\mathbf{x}) = \frac{1}{HWV^\beta}\sum_{uvk}\left((x_{v,u+1,k} - x_{v,u,k})^2 + (x_{v+1,u,k} - x_{v,u,k})^2\right)^{\beta/2}.$$
#
# $\beta = 1$ is the usual TV norm, which leaves "spikes" (fig 5.2); $\beta = 2$ is the quadratic prior the
# thesis uses. For $\beta < 2$ the term is not differentiable where the local gradient vanishes (nor, for
# $\alpha < 2$, $N_\alpha$ at a black pixel); there we take the subgradient 0 instead of a NaN.
#
# Both return one value per image of the batch: the solver optimises a batch of independent problems.

# %%
#| export
def _safe_pow(s, exponent):
    "s ** exponent for s >= 0, with value and derivative 0 (not NaN/inf) where s == 0."
    if exponent == 1: return s
    nz = s > 0
    return torch.where(nz, torch.where(nz, s, torch.ones_like(s)) ** exponent, torch.zeros_like(s))

def alpha_norm(x: torch.Tensor,  # (B,C,H,W) images in thesis units
               alpha: float = 6.0,  # exponent
               B: float = 80.0  # typical pixel norm
              ) -> torch.Tensor:
    """$N_\\alpha$ of eq 5.5, one value per image.

    Shape: `(B,C,H,W)` → `(B,)`."""
    H, W = x.shape[-2:]
    return _safe_pow(x.square().sum(1), alpha / 2).flatten(1).sum(1) / (H * W * B ** alpha)

def tv_beta(x: torch.Tensor,  # (B,C,H,W) images in thesis units
            beta: float = 2.0,  # exponent
            V: float = 80.0 / 6.5  # typical norm of the image gradient
           ) -> torch.Tensor:
    """$\\mathcal{R}_{TV^\\beta}$ of section 5.2.2, forward differences per channel, one value per image.

    Shape: `(B,C,H,W)` → `(B,)`."""
    H, W = x.shape[-2:]
    dx, dy = F.pad(x.diff(dim=-1), (0, 1)), F.pad(x.diff(dim=-2), (0, 0, 0, 1))
    return _safe_pow(dx.square() + dy.square(), beta / 2).flatten(1).sum(1) / (H * W * V ** beta)


# %% [markdown]
# A hand computation on a $2\times2$ image: pixel norms $5, 0, 0, 1$ give $N_2 = (25 + 0 + 0 + 1)/(4B^2)$;
# the gradient of $N_\alpha$ at a pixel is $\alpha\|\mathbf{x}\|^{\alpha-2}\mathbf{x}/(HWB^\alpha)$. For TV with
# $\beta = 2$ on a single-channel $[[0, 1], [2, 4]]$ the squared forward differences are
# $(1 + 4) + (0 + 9) + (2^2) + 0 = 18$.

# %%
x = torch.tensor([[[[3.0, 0.0], [0.0, 1.0]], [[4.0, 0.0], [0.0, 0.0]]]], dtype=torch.float64, requires_grad=True)
test_close(alpha_norm(x, 2, 10.0), torch.tensor([26 / 400], dtype=torch.float64))
alpha_norm(x, 6, 10.0).sum().backward()
test_close(x.grad[0, :, 0, 0], 6 * 5.0 ** 4 * torch.tensor([3.0, 4.0], dtype=torch.float64) / (4 * 10.0 ** 6))
test_eq(x.grad[0, :, 0, 1].tolist(), [0.0, 0.0])
y = torch.tensor([[[[0.0, 1.0], [2.0, 4.0]]]], dtype=torch.float64, requires_grad=True)
test_close(tv_beta(y, 2, 1.0), torch.tensor([18 / 4], dtype=torch.float64))
test_close(tv_beta(y, 1, 1.0), torch.tensor([(math.sqrt(5) + 3 + 2) / 4], dtype=torch.float64))
tv_beta(y, 2, 1.0).sum().backward()    # d/dx00 of (1 + 4): -2*1 - 2*2 = -6
test_close(y.grad[0, 0, 0, 0], -6 / 4)
flat = torch.zeros(1, 3, 4, 4, requires_grad=True)
(tv_beta(flat, 1.0) + alpha_norm(flat, 1.0)).sum().backward()
assert torch.isfinite(flat.grad).all()  # the subgradient 0, not NaN, on a flat black image


# %% [markdown]
# The solver needs both regularisers and their gradients at every iteration. Through autograd they cost
# about as much as HOG's own forward and backward pass on a $224\times224$ image (a dozen whole-image
# operations each way), so `regularizer_terms` computes the values and the gradients in closed form:
# $\nabla N_\alpha = \alpha\|\mathbf{x}\|^{\alpha-2}\mathbf{x}/(HWB^\alpha)$ per pixel, and for $TV^\beta$ with
# $d_{uv} = \delta_x^2 + \delta_y^2$ (forward differences) and $q = \tfrac\beta2 d^{\beta/2-1}$ (0 where $d = 0$),
# $\nabla = 2\,[\,q\delta_x\,]_{u-1} - 2q\delta_x + 2\,[\,q\delta_y\,]_{v-1} - 2q\delta_y$ over $HWV^\beta$.
# The check below compares them with autograd through `alpha_norm` and `tv_beta`.

# %%
#| export
def _pow_nonneg(s, exponent):
    "s ** exponent for s >= 0 (0 where s == 0 if the exponent is negative), by multiplications for small integer exponents."
    if exponent < 0: return _safe_pow(s, exponent)
    if exponent == int(exponent) and exponent <= 4:
        out = torch.ones_like(s) if exponent == 0 else s
        for _ in range(int(exponent) - 1): out = out * s
        return out
    return s.pow(exponent)

def regularizer_terms(x: torch.Tensor,  # (B,C,H,W) images in thesis units
                      alpha: float = 6.0, B: float = 80.0,  # N_alpha's exponent and typical pixel norm
                      beta: float = 2.0, V: float = 80.0 / 6.5  # TV's exponent and typical gradient norm
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`alpha_norm(x)`, `tv_beta(x)` and the gradient of their sum, without autograd.

    Shape: `(B,C,H,W)` → `(B,)`, `(B,)`, `(B,C,H,W)`."""
    H, W = x.shape[-2:]
    with torch.no_grad():
        s = (x * x).sum(1, keepdim=True)                     # squared colour norm per pixel
        p = _pow_nonneg(s, alpha / 2 - 1)
        ra = (p * s).flatten(1).sum(1) / (H * W * B ** alpha)
        grad = x * (p * (alpha / (H * W * B ** alpha)))
        dx, dy = x[..., 1:] - x[..., :-1], x[..., 1:, :] - x[..., :-1, :]
        c = 2 / (H * W * V ** beta)
        if beta == 2:   # d^(beta/2) = d: the two squared differences add up separately, q = 1
            rtv = (torch.linalg.vecdot(dx.flatten(1), dx.flatten(1)) + torch.linalg.vecdot(dy.flatten(1), dy.flatten(1))) * (c / 2)
        else:
            d = torch.zeros_like(x)
            d[..., :-1] += dx * dx; d[..., :-1, :] += dy * dy
            rtv = _safe_pow(d, beta / 2).flatten(1).sum(1) * (c / 2)
            q = _safe_pow(d, beta / 2 - 1) * (beta / 2)
            dx, dy = dx * q[..., :-1], dy * q[..., :-1, :]
        grad[..., :-1].sub_(dx, alpha=c); grad[..., 1:].add_(dx, alpha=c)   # d/dx_j of the (x_{j+1} - x_j)^2 terms
        grad[..., :-1, :].sub_(dy, alpha=c); grad[..., 1:, :].add_(dy, alpha=c)
    return ra, rtv, grad


# %%
for a_, b_ in ((6.0, 2.0), (2.0, 1.0), (3.0, 1.5)):
    xr = (torch.randn(2, 3, 7, 9, dtype=torch.float64, generator=torch.Generator().manual_seed(2)) * 40)
    xr[0, :, :3, :3] = 0.0                                     # a flat black corner: singular points of both terms
    xa = xr.clone().requires_grad_()
    ra_ref, tv_ref = alpha_norm(xa, a_, 80.0), tv_beta(xa, b_, 12.0)
    (ra_ref + tv_ref).sum().backward()
    ra_, tv_, g_ = regularizer_terms(xr, a_, 80.0, b_, 12.0)
    test_close(ra_, ra_ref, eps=1e-12); test_close(tv_, tv_ref, eps=1e-12); test_close(g_, xa.grad, eps=1e-12)


# %% [markdown]
# **Texture and style (eq 5.8).** The texture term of Gatys et al. fits the same energy as one more
# regulariser: the cross-channel correlations (Gram matrices) $\psi\circ\Phi_l$ of a few layers should
# match those of a texture image,
#
# $$\mathcal{R}_{\text{tex}}(\mathbf{x}) = \sum_{l=1}^L w_l \left\|\psi\circ\Phi_l(\mathbf{x}) - \psi\circ\Phi_l(\mathbf{x}_{\text{tex}})\right\|^2_{\text{fro}},\qquad [\psi\circ\Phi_l(\mathbf{x})]_{cc'} = \sum_{uv}[\Phi_l]_{uvc}[\Phi_l]_{uvc'}.$$
#
# `TextureRegularizer` is a module from images to one value per image; pass it in `regularizers=` to any
# entry point (inversion + texture = style transfer; `C=0` + texture = texture synthesis).

# %%
#| export
def gram_matrix(features: torch.Tensor  # (B,C,...) feature maps
               ) -> torch.Tensor:
    """Cross-channel correlation $\\psi$ of eq 5.8: $\\sum_{uv} f_{uvc} f_{uvc'}$ (unnormalised, as in the thesis).

    Shape: `(B,C,H,W)` → `(B,C,C)`."""
    f = features.flatten(2)
    return f @ f.transpose(1, 2)

class TextureRegularizer(nn.Module):
    "$\\mathcal{R}_{\\text{tex}}$ of eq 5.8: weighted Gram-matrix distances to a texture image, one value per image."
    def __init__(self, phis,  # list of callables image -> feature maps (the layers Φ_l)
                 texture: torch.Tensor,  # (1,C,H,W) or (C,H,W) texture image in [0,1] (book units)
                 weights=None  # w_l, one per layer; None: all 1
                ):
        super().__init__()
        self.phis = list(phis)
        self.weights = [1.0] * len(self.phis) if weights is None else [float(w) for w in weights]
        if len(self.weights) != len(self.phis): raise ValueError(f"got {len(self.weights)} weights for {len(self.phis)} layers")
        texture = texture[None] if texture.ndim == 3 else texture
        with torch.no_grad(): self.targets = [gram_matrix(phi(texture)).detach() for phi in self.phis]

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return sum(w * (gram_matrix(phi(image)) - g).square().flatten(1).sum(1)
                   for phi, w, g in zip(self.phis, self.weights, self.targets))


# %%
f = torch.tensor([[[[1.0, 2.0]], [[0.0, 3.0]]]])    # 2 channels, 1x2 positions
test_eq(gram_matrix(f)[0].tolist(), [[5.0, 6.0], [6.0, 9.0]])
tex = TextureRegularizer([lambda im: im], torch.rand(3, 8, 8, generator=torch.Generator().manual_seed(0)), [2.0])
test_close(tex(tex_im := torch.rand(2, 3, 8, 8)), 2 * (gram_matrix(tex_im) - tex.targets[0]).square().sum((1, 2)), eps=1e-3)
test_eq(tex(torch.rand(3, 8, 8, generator=torch.Generator().manual_seed(0))[None]).item(), 0.0)


# %% [markdown]
# ## Losses (section 5.2.1)
#
# **Inversion** compares the code with the probe's, normalised by the probe's code so that one $C$ serves
# every representation; a binary mask $M$ restricts it to some channels or locations:
#
# $$\ell(\Phi(\mathbf{x}), \Phi_0; M) = \frac{\|(\Phi(\mathbf{x}) - \Phi_0)\odot M\|^2}{\|\Phi_0\odot M\|^2} \quad (5.2, 5.3)$$
#
# The same quantity is the **normalised reconstruction error** with which the thesis measures inversions
# (table 5.2, fig 5.5). **Activation maximisation** and **caricaturisation** use an inner product with a
# non-negative weight vector instead,
#
# $$\ell(\Phi(\mathbf{x}), \Phi_0) = -\frac{1}{Z}\langle\Phi(\mathbf{x}), \Phi_0\rangle. \quad (5.4)$$

# %%
#| export
def normalized_error(phi_x: torch.Tensor,  # (B,...) codes Φ(x)
                     phi0: torch.Tensor,  # (B,...) target codes Φ_0 (broadcastable to phi_x)
                     mask: torch.Tensor | None = None  # binary mask M broadcastable to phi_x (eq 5.3)
                    ) -> torch.Tensor:
    """$\\|(\\Phi(x) - \\Phi_0)\\odot M\\|^2 / \\|\\Phi_0\\odot M\\|^2$ (eq 5.2/5.3): the inversion loss and error, per image.

    Shape: `(B,...)` → `(B,)`."""
    d, t = phi_x - phi0, phi0.expand_as(phi_x)
    if mask is not None: d, t = d * mask, t * mask
    norm0 = t.square().flatten(1).sum(1)
    if norm0.device.type == "cpu" and (norm0 == 0).any():   # a zero target has no relative error (0/0 or x/0)
        raise ValueError(f"the target code Φ0 is all zeros (within the mask) for image(s) {torch.nonzero(norm0 == 0).flatten().tolist()[:10]}; "
                         "the normalised error is undefined")
    return d.square().flatten(1).sum(1) / norm0

def inner_product_loss(phi_x: torch.Tensor,  # (B,...) codes Φ(x)
                       phi0: torch.Tensor,  # (B,...) weights Φ_0 >= 0 (one-hot, or max(0, Φ(x0)))
                       Z  # normaliser: a number or a (B,) tensor
                      ) -> torch.Tensor:
    """$-\\langle\\Phi(x), \\Phi_0\\rangle / Z$ of eq 5.4, per image.

    Shape: `(B,...)` → `(B,)`."""
    return -(phi_x * phi0).flatten(1).sum(1) / Z


# %%
a, b = torch.tensor([[3.0, 4.0]]), torch.tensor([[0.0, 4.0]])
test_close(normalized_error(a, b), torch.tensor([9 / 16]))
test_fail(lambda: normalized_error(a, torch.zeros(1, 2)), contains="the target code Φ0 is all zeros")
test_close(normalized_error(a, torch.tensor([[1.0, 2.0]]), mask=torch.tensor([0.0, 1.0])), torch.tensor([1.0]))
test_close(inner_product_loss(a, torch.tensor([[0.0, 1.0]]), 2.0), torch.tensor([-2.0]))
test_close(inner_product_loss(torch.ones(2, 3), torch.ones(2, 3), torch.tensor([1.0, 3.0])), torch.tensor([-3.0, -1.0]))


# %% [markdown]
# ## Jitter (eq 5.7)
#
# The third regulariser is implicit: each iteration feeds $\Phi$ a randomly shifted crop,
# $[\operatorname{jitter}(\mathbf{x};\tau)](v,u) = \mathbf{x}(v + \tau_2, u + \tau_1)$ with
# $\tau \in \{0..T-1\}^2$ uniform, so that the energy is an expectation over shifts,
# $C\,\mathbb{E}_\tau[\ell(\Phi(\operatorname{jitter}(\mathbf{x};\tau)), \Phi_0)]$, sampled once per iteration.
# As in the author's code, the solver optimises an $(H+T-1)\times(W+T-1)$ canvas and $\Phi$ sees
# $H\times W$ crops of it, so the representation always gets images of the probe's size; the returned
# pre-image is the central crop. One shift is drawn per iteration for the whole batch.

# %%
#| export
def jitter(x: torch.Tensor,  # (B,C,H+T-1,W+T-1) canvas
           T: int,  # jitter amount: shifts in {0..T-1}^2
           generator: torch.Generator | None = None  # CPU generator for the shift; None: the central crop
          ) -> torch.Tensor:
    """The crop $\\operatorname{jitter}(x;\\tau)$ of eq 5.7 with a random shift, or the central crop without a generator.

    Shape: `(B,C,H+T-1,W+T-1)` → `(B,C,H,W)`."""
    H, W = x.shape[-2] - T + 1, x.shape[-1] - T + 1
    if H < 1 or W < 1: raise ValueError(f"canvas {tuple(x.shape[-2:])} is smaller than the jitter T={T}")
    if generator is None: ty = tx = (T - 1) // 2
    else: ty, tx = torch.randint(0, T, (2,), generator=generator).tolist()
    return x if T == 1 else x[..., ty:ty + H, tx:tx + W]


# %%
canvas = torch.arange(36.0).view(1, 1, 6, 6)
test_eq(jitter(canvas, 3)[0, 0, 0].tolist(), [7.0, 8.0, 9.0, 10.0])        # central crop: shift (1, 1)
g = torch.Generator().manual_seed(0)
crops = {tuple(jitter(canvas, 3, g)[0, 0, 0, :1].tolist()) for _ in range(200)}
test_eq(len(crops), 9)                                                      # all 3x3 shifts occur
test_eq(jitter(canvas, 1), canvas)


# %% [markdown]
# ## Algorithm 1
#
# The optimiser is a variant of AdaGrad that, like AdaDelta, forgets old gradients with the momentum
# factor $\rho = 0.9$, and then applies momentum to the scaled step:
#
# $$G_t = \rho G_{t-1} + g_t^2,\qquad \eta_t = \frac{1}{1/\eta_0 + \sqrt{G_t}},\qquad \mu_t = \rho\mu_{t-1} - \eta_t g_t,\qquad \mathbf{x}_{t+1} = \Pi_{B_+}(\mathbf{x}_t + \mu_t)$$
#
# all component-wise, with $\eta_0 = 0.01 B^2/\alpha$ (the thesis'; the author's code uses $0.05 B^2/\alpha$, see "One parameter set") (one gradient step of $\mathcal{R}_\alpha$ alone from a
# grey pixel of intensity $B$ lands at 0 for $\eta_0 = B^2/\alpha$; a hundredth of it is safe).
# $\Pi_{B_+}$ projects onto eq 5.6's feasible set: a pixel whose colour vector is longer than $B_+$ is
# rescaled to norm $B_+$, as in the author's code. `algorithm1_step` updates `x`, `G` and `mu` in place
# with a few fused tensor operations, and skips the projection when no pixel is beyond $B_+$.
#
# **What an iteration costs.** Besides $\Phi$'s forward and backward pass, an iteration does a fixed amount
# of whole-image work: the regularisers with their closed-form gradients (`regularizer_terms`), this
# update, and adding the mean image for $\Phi$. As tensor operations that is about 25 passes over the image
# of 20–80 µs each, 1–1.5 ms for a $224\times224$ colour image on 2 CPU threads: noise beside a CNN layer,
# but 1.27–1.31× the fused HOG's own forward+backward pass (about 5 ms), against the 1.15× goal.
# `torch.compile` of these operations (35 s to compile) and `vector_norm` reductions in place of the
# squared sums were both slower on this CPU. The closing section ("Making it fast") does all of it in one compiled
# pass; the tensor code stays as the reference it is checked against and as the path on a GPU.

# %%
#| export
def algorithm1_step(x: torch.Tensor,  # (B,C,H,W) current image x_t, updated in place to x_{t+1}
                    grad: torch.Tensor,  # g_t = ∇E(x_t)
                    G: torch.Tensor,  # accumulated squared gradient, updated in place
                    mu: torch.Tensor,  # momentum, updated in place
                    lr: float,  # η_0
                    momentum: float = 0.9,  # ρ
                    bound: float = 160.0  # B_+: the largest norm of a pixel's colour vector
                   ) -> torch.Tensor:
    "One iteration of Algorithm 1 (lines 4–8), in place; returns `x`."
    with torch.no_grad():
        G.mul_(momentum).addcmul_(grad, grad)
        mu.mul_(momentum).addcdiv_(grad, G.sqrt().add_(1.0 / lr), value=-1.0)   # eta_t g_t = g_t / (1/eta_0 + sqrt(G_t))
        x.add_(mu)
        norm2 = (x * x).sum(1, keepdim=True)
        if bool(norm2.max() > bound * bound):   # project the pixels beyond B+ (none, most of the time)
            x.mul_(norm2.sqrt_().clamp_(min=bound).reciprocal_().mul_(bound))   # min(1, B+/|x|) per pixel
    return x


# %% [markdown]
# A step by hand: from $G = \mu = 0$ with $g = 2$, $\eta_0 = 1$, $\rho = 0.9$: $G = 4$, $\eta = 1/(1 + 2) = 1/3$,
# $\mu = -2/3$; a second step with $g = -1$: $G = 3.6 + 1 = 4.6$, $\eta = 1/(1 + \sqrt{4.6})$,
# $\mu = 0.9\cdot(-2/3) + \eta$. A pixel pushed beyond $B_+$ comes back to the sphere of radius $B_+$,
# keeping its colour's direction.

# %%
x, G, mu = torch.zeros(1, 1, 1, 1, dtype=torch.float64), torch.zeros(1, 1, 1, 1, dtype=torch.float64), torch.zeros(1, 1, 1, 1, dtype=torch.float64)
algorithm1_step(x, torch.full_like(x, 2.0), G, mu, lr=1.0, momentum=0.9, bound=100.0)
test_close(x.item(), -2 / 3); test_close(G.item(), 4.0); test_close(mu.item(), -2 / 3)
algorithm1_step(x, torch.full_like(x, -1.0), G, mu, lr=1.0, momentum=0.9, bound=100.0)
m2 = 0.9 * (-2 / 3) + 1 / (1 + math.sqrt(4.6))
test_close(G.item(), 4.6); test_close(mu.item(), m2); test_close(x.item(), -2 / 3 + m2)
x = torch.tensor([[[[300.0]], [[400.0]]]])          # norm 500 > B+ = 160
algorithm1_step(x, torch.zeros_like(x), torch.zeros_like(x), torch.zeros_like(x), lr=1.0, bound=160.0)
test_close(x.flatten(), torch.tensor([96.0, 128.0]), eps=1e-4)

# %% [markdown]
# ## One update per iteration
#
# `regularize_and_step` does an iteration's whole update after $\Phi$'s backward pass: it recovers
# $\mathbf{x}_t = \text{scale}\cdot(\text{image} - \text{mean})$, adds the regularisers' gradient (`regularizer_terms`)
# to the data term's, takes the Algorithm 1 step (`algorithm1_step`) and writes back
# $\text{mean} + \mathbf{x}_{t+1}/\text{scale}$, returning $\mathcal{R}_\alpha(\mathbf{x}_t)$ and
# $\mathcal{R}_{TV^\beta}(\mathbf{x}_t)$. `prepare_update` prepares it once for the solver. On the CPU the package
# does the same work in one compiled pass over the image ("Making it fast", at the end of the chapter), checked
# there against this tensor code.

# %%
#| export
_FUSED_STEP = None   # the compiled one-pass update of "Making it fast" (end of the chapter) once it is defined

def fused_available(x: torch.Tensor) -> bool:
    "Whether `regularize_and_step` can take the compiled one-pass path for `x` (numba present, CPU, float32/64)."
    return _FUSED_STEP is not None and numba is not None and x.device.type == "cpu" and x.dtype in (torch.float32, torch.float64)

def prepare_update(image: torch.Tensor,  # (B,C,H,W) an iterate (book units): its shape, dtype and device
                   mean: torch.Tensor,  # (1,C,1,1) image mean
                   params,  # `PreimageParams` (alpha, B, beta, V, momentum, bound, scale)
                   grad_scale: float = 1.0,  # factor of the regularisers' gradient (the solver's area, see below)
                   fused: bool | None = None  # None: the one-pass kernel when `fused_available(image)`
                  ):
    """`regularize_and_step` with its constants and buffers prepared once (the solver calls it every iteration):
    returns `step(image, grad, G, mu, lr) -> terms`, where terms holds $\\mathcal{R}_\\alpha(x_t)$ and
    $\\mathcal{R}_{TV^\\beta}(x_t)$, shape `(2,B)`: a numpy array from the kernel, a tensor from the tensor path."""
    p = params
    if fused is None: fused = fused_available(image)
    elif fused and not fused_available(image):
        raise ValueError(f"the one-pass update needs numba and a float32/float64 CPU tensor; got {image.dtype} on {image.device}"
                         + ("" if numba is not None else " (numba is not installed)"))
    if not fused:
        def step(image, grad, G, mu, lr):
            x = (image - mean) * p.scale
            ra, rtv, reg_grad = regularizer_terms(x, p.alpha, p.B, p.beta, p.tv_scale)
            grad.add_(reg_grad, alpha=grad_scale)
            algorithm1_step(x, grad, G, mu, lr, p.momentum, p.bound)
            torch.add(mean, x, alpha=1 / p.scale, out=image)
            return torch.stack((ra, rtv))
        return step
    return _FUSED_STEP(image, mean, p, grad_scale)

def regularize_and_step(image: torch.Tensor,  # (B,C,H,W) mean + x_t/scale (book units); becomes mean + x_{t+1}/scale
                        grad: torch.Tensor,  # the data terms' gradient w.r.t. x_t (on the solver's scale); may be modified
                        G: torch.Tensor, mu: torch.Tensor,  # Algorithm 1's state, updated in place
                        mean: torch.Tensor,  # (1,C,1,1) image mean
                        params,  # `PreimageParams` (alpha, B, beta, V, momentum, bound, scale)
                        lr: float,  # η_0 of this stage
                        grad_scale: float = 1.0,  # factor of the regularisers' gradient (the solver's area, see below)
                        fused: bool | None = None  # None: the one-pass kernel when `fused_available(image)`
                       ) -> tuple[torch.Tensor, torch.Tensor]:
    """Add the regularisers' gradient at $x_t$ = scale·(image - mean) and take one Algorithm 1 step, in place on `image`.

    Returns $\\mathcal{R}_\\alpha(x_t)$ and $\\mathcal{R}_{TV^\\beta}(x_t)$. Shape: `(B,C,H,W)` → `(B,)`, `(B,)`."""
    terms = prepare_update(image, mean, params, grad_scale, fused)(image, grad, G, mu, lr)
    terms = torch.as_tensor(terms).to(image.dtype)
    return terms[0], terms[1]


# %% [markdown]
# ## The solver
#
# `solve_preimage` minimises eq 5.1 (with jitter, eq 5.7) for a batch of independent problems: the
# energy of the batch is the sum of the per-image energies, so each image gets exactly its own gradient
# ($\Phi$ must treat the images of a batch independently: models in `eval` mode). The data term is any
# callable from book-unit images to one loss per image. It records, per iteration and image, the energy
# and its terms, and stops with a clear error the first time a term is not finite — a representation
# that returns NaN would otherwise silently turn the whole image into NaN one step later.
#
# **Scale of the gradient.** Section 5.2.3 sets $\eta_0$ by reasoning that one gradient step of
# $\mathcal{R}_\alpha$ on a grey pixel of intensity $B$ moves it by $\eta_0\alpha/B$: the gradient of the
# regulariser *at one pixel* is taken to be $\alpha/B$, i.e. without the $1/HW$ of eq 5.5. Algorithm 1 is
# not invariant to the scale of $E$ (its steps are $\approx\eta_0 g$ for small gradients), so we run it on
# $HW\cdot\nabla E$ — the same minimiser, and the step sizes the $\eta_0$ heuristic assumes. With the
# literal $\nabla E$ every per-pixel gradient is $HW$ times smaller (about $10^{-5}$ of $B$ per step for a
# $224\times224$ image) and 300 iterations barely leave the initial noise. The recorded energies are
# those of eq 5.1.
#
# The solver keeps one image buffer, the canvas $\Phi$ sees, $\text{mean} + \mathbf{x}/\text{scale}$, and
# `regularize_and_step` updates it in place; $\mathbf{x}$ is recovered from it wherever it is needed, which
# costs a float32 rounding of about $10^{-5}$ grey levels per iteration.
#
# Initialisation follows the author's code: i.i.d. uniform noise scaled so that the 95% quantile of its
# magnitude is $B/\sqrt 3$ (so a pixel's colour norm is about $B\cdot 0.6$).
#
# **Fine-tuning.** With jitter, inversion adds 50 iterations without jitter at $\eta_0/10$ (section 5.2.3).
# The thesis does not say what happens to Algorithm 1's state there. In the author's code the two stages are two
# calls of `nnpreimage.m` (`exp_inversion.m` calls it once per stage, the second from the first's image), and each
# call starts from $G = 0$ and $\mu = 0$; so the fine-tuning stage restarts **both** the AdaGrad accumulator and the
# momentum, and so does `solve_preimage` (`tests/test_preimage.py` checks it). (Inside one call `nnpreimage.m` also
# zeroes the momentum whenever the learning rate changes; its line meant to zero $G$ there, `adagraD = 0`, is
# misspelt and does nothing — but with one rate per call it never fires.) An earlier version of this chapter kept
# $G$ across the stages.

# %%
#| export
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

@dataclass
class Preimage:
    "The result of `invert`, `maximize` or `caricature`."
    images: torch.Tensor  # (B,C,H,W) pre-images in book units (mean + x/scale; not clipped to [0,1])
    history: dict  # per-iteration (T,B) tensors: "energy", "loss" (ℓ, before C), "alpha", "tv", "extra"
    error: torch.Tensor | None = None  # inversion only: final normalised error (eq 5.2/5.3) per image, (B,)

def image_mean(channels: int,  # number of colour channels
               mean=None  # a number, a sequence of `channels` numbers, or None: the ImageNet mean
              ) -> torch.Tensor:
    "The mean image colour added to the solver's zero-mean variable, `(1,C,1,1)`; default ImageNet's (its average for C != 3)."
    if mean is None: mean = IMAGENET_MEAN if channels == 3 else [sum(IMAGENET_MEAN) / 3] * channels
    m = torch.as_tensor(mean, dtype=torch.float32).flatten()
    if m.numel() == 1: m = m.expand(channels)
    if m.numel() != channels: raise ValueError(f"mean has {m.numel()} values for images with {channels} channels")
    return m.view(1, channels, 1, 1).clone()

def initial_noise(shape,  # (B,C,H,W)
                  B: float = 80.0,  # typical pixel norm
                  generator: torch.Generator | None = None  # CPU generator
                 ) -> torch.Tensor:
    "I.i.d. uniform noise whose magnitude has its 95% quantile at $B/\\sqrt3$, drawn on the CPU (same bytes on any device)."
    return (torch.rand(shape, generator=generator) * 2 - 1) * (B / math.sqrt(3) / 0.95)

def _all_finite(v) -> bool:
    "Whether a few numbers (numpy array or tensor) are all finite; small CPU tensors go through numpy (cheaper)."
    if isinstance(v, np.ndarray): return bool(np.isfinite(v).all())
    if v.device.type == "cpu" and v.dtype in (torch.float32, torch.float64): return bool(np.isfinite(v.numpy()).all())
    return bool(torch.isfinite(v).all())

def solve_preimage(data_loss,  # callable: (B,C,H,W) book-unit images -> (B,) loss ℓ
                   x: torch.Tensor,  # (B,C,H+T-1,W+T-1) initial canvas in thesis units (not modified)
                   params: PreimageParams | None = None,  # `preimage_params(...)`; None: the thesis' set
                   mean: torch.Tensor | None = None,  # (1,C,1,1) from `image_mean`; None: ImageNet's
                   regularizers=(),  # callables image -> (B,), added to the energy (e.g. `TextureRegularizer`)
                   finetune: bool = False,  # add `finetune_iters` without jitter at lr/10 (inversion with jitter)
                   generator: torch.Generator | None = None,  # CPU generator for the jitter shifts
                   progress: bool = False,  # show a tqdm bar
                   fused: bool | None = None  # the one-pass update of `regularize_and_step`; None: where available
                  ) -> tuple[torch.Tensor, dict]:
    """Minimise eq 5.1/5.7 with Algorithm 1: returns the final canvas (thesis units) and the history.

    Shape: x `(B,C,H+T-1,W+T-1)` → `(B,C,H+T-1,W+T-1)`, history values `(iterations,B)`."""
    p = params or PreimageParams()
    T = p.jitter
    mean = (image_mean(x.shape[1]) if mean is None else mean).to(x)
    image = torch.add(mean, x.detach(), alpha=1 / p.scale)   # the canvas Φ sees; the variable is x = scale·(image - mean)
    area = x.shape[-2] * x.shape[-1]   # Algorithm 1 runs on the per-pixel scale of the η0 heuristic (see above)
    update = prepare_update(image, mean, p, area, fused)   # regularize_and_step, prepared once; updates image in place
    G, mu = torch.zeros_like(image), torch.zeros_like(image)
    no_extra = image.new_zeros(x.shape[0])
    weights = None   # d/dx = d/dimage / scale, times the area of the η0 heuristic: C·area/scale for ℓ, area/scale for the rest
    stages = [(p.num_iters, T > 1, p.lr0)]
    if finetune and T > 1: stages.append((p.finetune_iters, False, p.lr0 / 10))
    hist = {k: [] for k in ("loss", "terms", "extra")}
    bar = tqdm(total=sum(s[0] for s in stages), disable=not progress, desc="pre-image", leave=False)
    try:
        for stage, (iters, jittered, lr) in enumerate(stages):
            if stage: G.zero_(); mu.zero_()   # a new nnpreimage.m call in the author's code: Algorithm 1 starts afresh
            for t in range(iters):
                image.requires_grad_(True)
                view = jitter(image, T, generator if jittered else None)
                loss = data_loss(view)
                extra = sum((r(view) for r in regularizers), no_extra)
                if weights is None: weights = (torch.full_like(loss, p.C * area / p.scale), torch.full_like(extra, area / p.scale))
                if not loss.requires_grad and p.C > 0 and not hist["loss"]:
                    raise ValueError("phi's output does not depend differentiably on the image (no gradient flows back: "
                                     "a .detach(), torch.no_grad() or numpy inside phi?); the pre-image would be shaped by the "
                                     "regularisers alone")
                used = [(o, w) for o, w in zip((loss, extra), weights) if o.requires_grad]
                if used:
                    outputs, grad_outputs = zip(*used)
                    grad, = torch.autograd.grad(outputs, image, grad_outputs)
                else: grad = torch.zeros_like(image)
                image = image.detach()
                terms = update(image, grad, G, mu, lr)      # R_α(x_t), R_TV(x_t); image becomes mean + x_{t+1}/scale
                loss, extra = loss.detach(), extra.detach()
                if not (_all_finite(loss) and _all_finite(terms) and _all_finite(extra)):
                    bad = [k for k, v in (("loss (phi's output)", loss), ("alpha", terms[0]), ("tv", terms[1]),
                                          ("extra regularizers", extra)) if not _all_finite(v)]
                    raise ValueError(f"the pre-image energy is not finite at iteration {len(hist['loss'])}: "
                                     f"non-finite {', '.join(bad)} — does phi return NaN/inf for these images?")
                for k, v in zip(hist, (loss, terms, extra)): hist[k].append(v)
                bar.update()
    finally:
        bar.close()
    x = ((image - mean) * p.scale).detach()
    if not hist["loss"]: return x, {k: x.new_zeros(0, x.shape[0]) for k in ("energy", "loss", "alpha", "tv", "extra")}
    terms = hist["terms"]
    terms = (torch.from_numpy(np.stack(terms)) if isinstance(terms[0], np.ndarray) else torch.stack(terms)).to(x)
    out = dict(loss=torch.stack(hist["loss"]), alpha=terms[:, 0], tv=terms[:, 1], extra=torch.stack(hist["extra"]))
    out = dict(energy=out["alpha"] + out["tv"] + p.C * out["loss"] + out["extra"], **out)
    return x, out


# %%
n = initial_noise((2, 3, 64, 64), generator=torch.Generator().manual_seed(0))
test_close(n.abs().flatten().quantile(0.95).item(), 80 / math.sqrt(3), eps=1.0)
test_eq(image_mean(3).flatten().tolist(), list(torch.tensor(IMAGENET_MEAN).tolist()))
test_eq(image_mean(1, 0.5).shape, (1, 1, 1, 1))
test_fail(lambda: image_mean(3, (0.1, 0.2)), contains="2 values for images with 3 channels")

# %% [markdown]
# **An identity representation** is the simplest check of the whole loop: with $\Phi(\mathbf{x}) = \mathbf{x}$
# and a large $C$ (here $10^4$: at $C = 100$ the TV prior visibly blurs a natural image's code), the
# pre-image must converge to the probe itself, and the energy must go down. Note the floor: Algorithm 1's
# step is $\approx g/\sqrt{G}$ once gradients are large, which does not shrink, so the iterate keeps
# jittering by about one grey level around the minimiser (the 50 fine-tuning iterations at $\eta_0/10$ do
# not change that; the thesis' error floors include it).

# %%
x0 = sample_image("astronaut")[None, :, 80:112, 200:232]
mean = image_mean(3)
target = x0.clone()
xs, hist = solve_preimage(lambda im: normalized_error(im, target), initial_noise(x0.shape, generator=torch.Generator().manual_seed(0)),
                          preimage_params(C=1e4, num_iters=200), mean)
recon = xs / 255 + mean
assert (recon - x0).abs().mean() < 0.03, (recon - x0).abs().mean()
assert hist["loss"][-1, 0] < 0.005
assert hist["energy"][-1, 0] < 0.05 * hist["energy"][0, 0]
test_eq(hist["energy"].shape, (200, 1))


# %% [markdown]
# ## Has it converged?
#
# A pre-image shown as evidence should be a minimiser, not a snapshot of the descent. The book's criterion: the
# **last 50 iterations bring at most 1 % of the objective's fall**,
#
# $$\frac{|E_{T-50} - E_T|}{E_0 - E_T} \le 0.01,$$
#
# on the energy of eq 5.1 as `solve_preimage` records it (with jitter the energy is noisy from one iteration to
# the next; the criterion then reads the trend over the window, which is what it is for). `convergence` computes
# the ratio for every image of a result; a last window that climbs counts like one that falls, and an objective
# that did not fall at all counts as converged only if the last window did not move it either.

# %%
#| export
def convergence(energy: torch.Tensor,  # (T,B) energies per iteration and image (`Preimage.history["energy"]`)
                window: int = 50,  # the last iterations whose share of the fall is measured
                tol: float = 0.01  # the largest share of a converged run
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """The share of the objective's fall that the last `window` iterations brought, $|E_{T-w} - E_T|/(E_0 - E_T)$, and
    whether it is at most `tol`. Shape: `(T,B)` → `(B,)`, `(B,)`."""
    if energy.ndim == 1: energy = energy[:, None]
    check_int("window", window, 1)
    if energy.shape[0] <= window:
        raise ValueError(f"convergence over the last {window} iterations needs more than {window} recorded, got {energy.shape[0]}")
    e = energy.detach().double()
    total, last = e[0] - e[-1], (e[-window - 1] - e[-1]).abs()   # a window that climbs back is not converged either
    share = torch.where(total > 0, last / total.clamp(min=1e-300),
                        torch.where(last > 0, torch.full_like(last, math.inf), torch.zeros_like(last)))
    return share, share <= tol


# %% [markdown]
# An exponential decay $E_t = e^{-t/\tau}$ over 300 iterations brings $e^{-250/\tau} - e^{-300/\tau}$ of its fall in the
# last 50: about 0.4 % of its fall for $\tau = 50$ (converged), 13 % for $\tau = 500$ (not).

# %%
t = torch.arange(301, dtype=torch.float64)
share, ok = convergence(torch.stack([(-t / 50).exp(), (-t / 500).exp()], 1))
test_close(share, torch.tensor([(math.exp(-5) - math.exp(-6)) / (1 - math.exp(-6)), (math.exp(-0.5) - math.exp(-0.6)) / (1 - math.exp(-0.6))], dtype=torch.float64))
test_eq(ok.tolist(), [True, False])
test_eq(convergence(torch.ones(60, 1))[1].tolist(), [True])        # nothing to fall: converged
test_fail(lambda: convergence(torch.ones(50, 1)), contains="needs more than 50 recorded, got 50")


# %% [markdown]
# ## Inversion (section 5.4)
#
# `invert(phi, x0)` reconstructs an image from $\Phi_0 = \Phi(\mathbf{x}_0)$ starting from noise, so the only
# information the solver has about $\mathbf{x}_0$ is its code. `target=` gives $\Phi_0$ directly (with
# `shape=(C,H,W)` for the image), `mask=` restricts the loss (eq 5.3). A batch of probes is inverted
# together. The result carries the final normalised error (eq 5.2) of each pre-image, measured on the
# returned image without jitter.

# %%
#| export
def _codes(model, image, name="the model"):
    out = model(image)
    if not torch.is_tensor(out): raise ValueError(f"{name} must return a tensor, got {type(out).__name__}")
    if out.shape[0] != image.shape[0]:
        raise ValueError(f"{name} must return one code per image: {image.shape[0]} images gave shape {tuple(out.shape)}")
    return out

def _setup(shape, params, mean, seed, x_init=None):
    "Parameters, mean, CPU generator and the initial canvas (noise, or `x_init` padded for the jitter)."
    p = preimage_params(**params)
    gen = torch.Generator().manual_seed(int(seed))
    B, C, H, W = shape
    m = image_mean(C, mean)
    if x_init is None: x = initial_noise((B, C, H + p.jitter - 1, W + p.jitter - 1), p.B, gen)
    else:
        lo = (p.jitter - 1) // 2
        x = (x_init.detach().cpu().float() - m) * p.scale
        x = F.pad(x, (lo, p.jitter - 1 - lo, lo, p.jitter - 1 - lo), mode="replicate") if p.jitter > 1 else x
    return p, gen, m, x

@renamed(phi="model")  # phi until 0.1.0
def invert(model,  # the representation Φ: a module or callable, (B,C,H,W) images in [0,1] -> codes (B,...)
           x0: torch.Tensor | None = None,  # (B,C,H,W) probe images; or give `target` and `shape`
           target: torch.Tensor | None = None,  # (B,...) codes Φ_0 to invert (instead of x0)
           mask: torch.Tensor | None = None,  # binary mask broadcastable to the codes (eq 5.3)
           shape=None,  # (C,H,W) of the pre-images when only `target` is given
           mean=None,  # image mean (see `image_mean`); None: ImageNet's
           regularizers=(),  # extra regularisers, e.g. `TextureRegularizer`
           seed: int = 0,  # seeds the initial noise and the jitter
           progress: bool = False,  # show a tqdm bar
           **params  # overrides of `PreimageParams` (C, beta, jitter, num_iters, ...)
          ) -> Preimage:
    """Natural pre-images of the codes $\\Phi(x_0)$ (eq 5.1 with the loss eq 5.2/5.3), from random noise.

    Shape: x0 `(B,C,H,W)` or target `(B,...)` with shape `(C,H,W)` → images `(B,C,H,W)`, error `(B,)`."""
    if x0 is not None:
        check_image("x0", x0)
        with torch.no_grad(): computed = _codes(model, x0).detach()
        if target is not None and target.shape != computed.shape:
            raise ValueError(f"target has shape {tuple(target.shape)} but model(x0) has shape {tuple(computed.shape)}")
        target = computed if target is None else target.detach()
        shape = tuple(x0.shape)
    elif target is None: raise ValueError("invert needs x0 (probe images) or target (codes) with shape=(C,H,W)")
    else:
        if shape is None or len(shape) != 3: raise ValueError(f"with target only, give shape=(C,H,W) of the pre-images; got shape={shape!r}")
        shape = (target.shape[0], *shape)
        target = target.detach()
    p, gen, mean, x = _setup(shape, params, mean, seed)
    device = target.device
    x, mean = x.to(device), mean.to(device)
    with torch.no_grad(): probe = _codes(model, jitter(x, p.jitter) / p.scale + mean)
    if probe.shape != target.shape:
        raise ValueError(f"target has shape {tuple(target.shape)}, but the model gives codes of shape {tuple(probe.shape)} "
                         f"for images of shape {tuple(shape)}")
    if not torch.isfinite(target).all(): raise ValueError("the target codes contain NaN or inf (does the model return NaN for x0?)")
    if mask is not None:
        mask = torch.as_tensor(mask, dtype=target.dtype, device=device)
        try: torch.broadcast_shapes(mask.shape, target.shape)
        except RuntimeError: raise ValueError(f"mask of shape {tuple(mask.shape)} does not broadcast to the codes {tuple(target.shape)}") from None
    denom = (target * (1 if mask is None else mask)).square().flatten(1).sum(1)
    if (denom == 0).any():
        raise ValueError(f"the target code of image(s) {(denom == 0).nonzero().flatten().tolist()} is all zeros (under the mask): "
                         "the normalised loss of eq 5.2 is undefined")
    x, hist = solve_preimage(lambda im: normalized_error(model(im), target, mask), x, p, mean, regularizers,
                             finetune=True, generator=gen, progress=progress)
    images = jitter(x, p.jitter) / p.scale + mean
    with torch.no_grad(): err = normalized_error(model(images), target, mask)
    return Preimage(images, hist, err)


# %% [markdown]
# HOG of a $64\times64$ crop, inverted with the thesis' HOG settings ($C = 100$, no jitter): the pre-image
# is a different image with (nearly) the same HOG. The same seed gives the same bytes.

# %%
x0 = sample_image("astronaut")[None, :, 60:124, 190:254]
hog = HOG()
res = invert(hog, x0, C=100, num_iters=120)
test_eq(res.images.shape, x0.shape)
assert res.error.item() < 0.35, res.error
assert res.history["energy"][-1, 0] < res.history["energy"][0, 0]
test_eq(invert(hog, x0, C=100, num_iters=5, seed=3).images, invert(hog, x0, C=100, num_iters=5, seed=3).images)
test_fail(lambda: invert(hog, target=torch.rand(1, 31, 3, 3), shape=(3, 64, 64)), contains="the model gives codes of shape (1, 31, 8, 8)")
test_fail(lambda: invert(lambda im: im * float("nan"), x0), contains="NaN")
fig = show_images([x0[0], res.images[0].clamp(0, 1)], titles=["x0", f"HOG pre-image, error {100 * res.error.item():.1f}%"], size=3)


# %% [markdown]
# ## Activation maximisation (section 5.5)
#
# With $\Phi_0 = \mathbf{e}_i$ the indicator of one component, eq 5.4 maximises that component. The thesis
# normalises by $Z = M\rho^2$ (eq 5.9): $M$ is the typical maximum of the component (its maximum over the
# ILSVRC validation images; here over the book's natural images, `natural_images`), $\rho$ the size of its
# receptive field (`motion_nbs.models.receptive_fields`).
#
# **Scaling.** As printed, $Z = M\rho^2$ makes the data term $\rho^2$ times weaker than the area-normalised
# regularisers of eq 5.5, and the unit is hardly activated. The author's `exp_maximization.m` multiplies
# the data term by `innerWeight = 10000/rf^2/max`, that is $Z = M\rho^2/10^4$ — the printed formula with
# the factor that makes it work with $\eta_0$. That is `maximize`'s default (`scaling="author"`), with $\rho$
# the largest side of the unit's receptive field, measured by `receptive_fields` when `phi` is a
# `LayerPhi` (or given as `rho=`). It is about $80\times$ stronger than $Z = M$ at AlexNet's conv1
# ($\rho = 11$) and $3.8\times$ weaker at pool5 ($\rho = 195$). `scaling="thesis"` is the printed
# $Z = M\rho^2$, and `scaling="unit"` is $Z = M$, this book's earlier default (the loss is then about $-1$
# when the unit reaches its typical maximum, like $\mathcal{R}_\alpha$ and $\mathcal{R}_{TV}$).
# Measured on the offline EfficientNet-lite0 (96×96 pre-images, jitter 4, 60 iterations): unit 0 of
# `blocks.2` ($M = 27$, $\rho = 67$) ends at 75 with the author's $Z$, 73 with $Z = M$ and $-1.3$ with the
# printed $Z = M\rho^2$; class 31 ("tree frog", $M = 5.4$, $\rho = 915$ — EfficientNet's theoretical field
# is far larger than the image) ends at 9.3, 57 and 0.5. The author's scaling activates the units, less
# strongly where the field is huge.
#
# A unit is a channel index — the channel at the centre of a feature map, as in the thesis —
# or a full index into one code (`(c, y, x)`); a list of units is solved as one batch, one image each.

# %%
#| export
def _unit_index(unit, code_shape):
    "Index tuple of `unit` (an int channel, taken at the map's centre, or a full index) into one code of `code_shape`."
    if isinstance(unit, int) and not isinstance(unit, bool):
        idx = (unit,) + tuple(s // 2 for s in code_shape[1:])
    elif isinstance(unit, (tuple, list)) and all(isinstance(u, int) for u in unit): idx = tuple(unit)
    else: raise ValueError(f"a unit is an int channel or a tuple of ints, got {unit!r}")
    if len(idx) != len(code_shape) or any(not 0 <= i < s for i, s in zip(idx, code_shape)):
        raise ValueError(f"unit {unit!r} is out of range for codes of shape {tuple(code_shape)} (per image)")
    return idx

@renamed(phi="model", units="selectors")
def unit_maximum(model,  # the representation Φ: a module or callable from images to codes
                 selectors,  # a neuron selector or a list of them (see `maximize`)
                 images: torch.Tensor  # (N,C,H,W) probe images, e.g. `natural_images`
                ) -> torch.Tensor:
    "M of eq 5.9: the largest value of each unit over `images` (its magnitude if it is never positive), `(len(units),)`."
    units = selectors if isinstance(selectors, list) else [selectors]
    with torch.no_grad(): codes = _codes(model, images)
    idx = [_unit_index(u, codes.shape[1:]) for u in units]
    vals = torch.stack([codes[(slice(None),) + i] for i in idx], 1)   # (N, units)
    m = vals.amax(0)
    return torch.where(m > 0, m, vals.abs().amax(0).clamp_min(1e-6))

AM_SCALINGS = {"author": 1e-4, "thesis": 1.0, "unit": None}  # Z = M ρ² × factor (exp_maximization.m; eq 5.9 as printed); Z = M

def _am_normaliser(phi, M, scaling: str, rho, shape) -> float:
    "Z of eq 5.4 for activation maximisation under `scaling` (see `AM_SCALINGS`)."
    check_choice("scaling", scaling, AM_SCALINGS)
    if AM_SCALINGS[scaling] is None: return M
    if rho is None:
        if not hasattr(phi, "field_size"):   # a `LayerPhi` measures its layer's field
            raise ValueError(f"scaling={scaling!r} needs rho, the unit's receptive-field size (table 5.1): give rho=, or use a "
                             "LayerPhi (whose field is measured), or scaling='unit' (Z = M)")
        rho = phi.field_size(shape[1:])
    return M * float(rho) ** 2 * AM_SCALINGS[scaling]

@renamed(phi="model", unit="selector")
def maximize(model,  # the representation Φ: a module or callable, (B,C,H,W) images in [0,1] -> codes (B,...)
             selector,  # the neuron selector e: an int channel (centre location), index tuple, or a list of them (one pre-image each)
             shape=(3, 224, 224),  # (C,H,W) of the pre-images
             M=None,  # typical maximum of the unit(s) (number or (B,)); None: `unit_maximum` over 8 natural images
             scaling: str = "author",  # Z: "author" M ρ²/10⁴ (exp_maximization.m), "thesis" M ρ² (eq 5.9), "unit" M
             rho=None,  # ρ, the unit's receptive-field size; None: measured (`LayerPhi.field_size`)
             Z=None,  # the normaliser of eq 5.4 directly (overrides M, scaling and rho)
             mean=None,  # image mean (see `image_mean`); None: ImageNet's
             regularizers=(),  # extra regularisers
             seed: int = 0,  # seeds the initial noise and the jitter
             progress: bool = False,  # show a tqdm bar
             **params  # overrides of `PreimageParams` (jitter, num_iters, ...)
            ) -> Preimage:
    """Activation maximisation (eq 5.4 with $\\Phi_0 = e_i$, by default the author's $Z = M\\rho^2/10^4$), from random noise.

    Shape: `len(units)` pre-images `(B,*shape)`."""
    units = list(selector) if isinstance(selector, list) else [selector]
    if len(shape) != 3: raise ValueError(f"shape must be (C,H,W), got {shape!r}")
    p, gen, mean, x = _setup((len(units), *shape), params, mean, seed)
    with torch.no_grad(): codes = _codes(model, jitter(x, p.jitter) / p.scale + mean)
    phi0 = torch.zeros_like(codes)
    for b, u in enumerate(units): phi0[(b,) + _unit_index(u, codes.shape[1:])] = 1.0
    if Z is None:
        if M is None: M = unit_maximum(model, units, natural_images(8, max(shape[1:]), shape[0])[..., :shape[1], :shape[2]])
        Z = _am_normaliser(model, torch.as_tensor(M, dtype=codes.dtype), scaling, rho, shape)
    Z = torch.as_tensor(Z, dtype=codes.dtype, device=codes.device)
    x, hist = solve_preimage(lambda im: inner_product_loss(model(im), phi0, Z), x.to(codes.device), p, mean.to(codes.device),
                             regularizers, generator=gen, progress=progress)
    return Preimage(jitter(x, p.jitter) / p.scale + mean.to(x.device), hist)


# %%
test_eq(_unit_index(5, (10, 7, 9)), (5, 3, 4))
test_eq(_unit_index((1, 0, 2), (10, 7, 9)), (1, 0, 2))
test_eq(_unit_index(3, (10,)), (3,))
test_fail(lambda: _unit_index(10, (10, 7, 9)), contains="out of range for codes of shape (10, 7, 9)")
test_fail(lambda: _unit_index((1, 2), (10, 7, 9)), contains="out of range")


# %% [markdown]
# A toy unit: the mean of the green channel minus the red one over the central region. Maximising it must
# produce a green centre — bounded by the regularisers, not an unbounded blow-up.

# %%
def green_minus_red(im):
    c = im[..., 8:24, 8:24]
    return (c[:, 1] - c[:, 0]).mean((1, 2))[:, None]
r = maximize(green_minus_red, 0, shape=(3, 32, 32), M=1.0, scaling="unit", num_iters=150)
centre = r.images[0, :, 8:24, 8:24].mean((1, 2))
assert centre[1] - centre[0] > 0.15, centre
assert (r.images - image_mean(3)).square().sum(1).sqrt().max() <= 160 / 255 + 1e-5   # |x| <= B+ (eq 5.6)
test_fail(lambda: maximize(green_minus_red, 1, shape=(3, 32, 32), M=1.0, scaling="unit"), contains="out of range for codes of shape (1,)")
test_fail(lambda: maximize(green_minus_red, 0, shape=(3, 32, 32), M=1.0), contains="scaling='author' needs rho")


# %% [markdown]
# ## Caricaturisation (section 5.6)
#
# A caricature starts from the probe $\mathbf{x}_0$ itself and maximises the inner product with the
# probe's own positive activations, $\Phi_0 = \max\{0, \Phi(\mathbf{x}_0)\}$ (eq 5.10), with $Z = \|\Phi_0\|^2$
# (so the loss starts at $-1$): whatever in $\mathbf{x}_0$ excites the representation gets exaggerated.

# %%
#| export
@renamed(phi="model")
def caricature(model,  # the representation Φ: a module or callable, (B,C,H,W) images in [0,1] -> codes (B,...)
               x0: torch.Tensor,  # (B,C,H,W) probe images; the optimisation starts from them
               mean=None,  # image mean (see `image_mean`); None: ImageNet's
               regularizers=(),  # extra regularisers
               seed: int = 0,  # seeds the jitter
               progress: bool = False,  # show a tqdm bar
               **params  # overrides of `PreimageParams` (C, jitter, num_iters, ...)
              ) -> Preimage:
    """Caricatures (eq 5.4 with $\\Phi_0 = \\max\\{0, \\Phi(x_0)\\}$, $Z = \\|\\Phi_0\\|^2$, eq 5.10), started from x0.

    Shape: `(B,C,H,W)` → images `(B,C,H,W)`."""
    check_image("x0", x0)
    with torch.no_grad(): phi0 = F.relu(_codes(model, x0)).detach()
    Z = phi0.square().flatten(1).sum(1)
    if (Z == 0).any(): raise ValueError(f"model(x0) has no positive component for image(s) {(Z == 0).nonzero().flatten().tolist()}: nothing to caricature")
    p, gen, mean, x = _setup(tuple(x0.shape), params, mean, seed, x_init=x0)
    x, mean = x.to(x0.device), mean.to(x0.device)
    x, hist = solve_preimage(lambda im: inner_product_loss(model(im), phi0, Z), x, p, mean, regularizers,
                             generator=gen, progress=progress)
    return Preimage(jitter(x, p.jitter) / p.scale + mean, hist)


# %%
r = caricature(hog, x0, C=100, num_iters=60)   # HOG is block-normalised: <Φ(x), Φ0> is bounded, a large C shows it
test_close(r.history["loss"][0, 0], -1.0, eps=1e-4)            # the loss starts at -<Φ0, Φ0>/|Φ0|^2
assert r.history["loss"][-1, 0] < -1.1                          # and the HOG response is exaggerated
fig = show_images([x0[0], r.images[0].clamp(0, 1)], titles=["x0", "HOG caricature"], size=3)


# %% [markdown]
# ## Representations from networks
#
# Any callable works as $\Phi$. For a layer of a network, `LayerPhi` normalises the book's $[0,1]$ images
# the way the network was trained and returns one named layer's output (through
# `motion_nbs.models.layer_outputs`, which stops the forward pass at that layer — inverting a shallow
# layer costs only the shallow part of the network). The model is put in `eval` mode and its parameters
# are frozen.

# %%
#| export
class LayerPhi(nn.Module):
    "Φ = one named layer of `model` applied to normalised images: `(B,3,H,W)` in [0,1] → that layer's output."
    def __init__(self, model: nn.Module,  # any network; layers addressed by `named_modules()` names
                 layer: str,  # e.g. "relu3", "blocks.2", "classifier"
                 mean=IMAGENET_MEAN,  # the network's input normalisation
                 std=IMAGENET_STD):
        super().__init__()
        self.model, self.layer = model, layer   # borrowed, not changed: each pass runs it `frozen` (eval, no parameter grads)
        self.register_buffer("mean", torch.as_tensor(mean, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.as_tensor(std, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        with frozen(self.model): return layer_outputs(self.model, (image - self.mean) / self.std, [self.layer])[self.layer]

    def field_size(self, input_size) -> float:
        "ρ of eq 5.9: the largest side of the layer's receptive field (table 5.1) at images of `input_size` (H, W)."
        rf = receptive_fields(self.model, tuple(input_size))
        if self.layer not in rf: raise ValueError(f"no receptive field measured for layer {self.layer!r}")
        return float(max(rf[self.layer].size))

    def extra_repr(self) -> str: return f"layer={self.layer!r}"


# %%
net = nn.Sequential()
net.add_module("conv", nn.Conv2d(3, 4, 3)); net.add_module("relu", nn.ReLU()); net.add_module("fc", nn.Flatten())
phi = LayerPhi(net, "relu", mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
im = torch.rand(2, 3, 8, 8)
test_close(phi(im), F.relu(net.conv(im * 2 - 1)))
test_eq(phi(im).shape, (2, 4, 6, 6))
test_eq(phi.field_size((8, 8)), 3.0)
assert net.training and all(p.requires_grad for p in net.parameters())   # the caller's network is given back as it came
_Z = _am_normaliser(phi, torch.tensor(2.0), "author", None, (3, 8, 8))
test_close(_Z, 2.0 * 9 / 1e4); test_close(_am_normaliser(phi, torch.tensor(2.0), "thesis", None, (3, 8, 8)), 18.0)
test_eq(_am_normaliser(phi, 2.0, "unit", None, (3, 8, 8)), 2.0)
test_fail(lambda: _am_normaliser(phi, 2.0, "paper", None, (3, 8, 8)), contains="valid: author, thesis, unit")
with warnings.catch_warnings(record=True) as _w:   # the names before 0.1.0 (phi=, unit=, units=) still work, with a warning
    warnings.simplefilter("always")
    test_eq(unit_maximum(phi=phi, units=[(0, 2, 2), 1], images=im), unit_maximum(phi, [(0, 2, 2), 1], im))
test_eq([str(w.message) for w in _w], ["unit_maximum(phi=...) is deprecated: use model=", "unit_maximum(units=...) is deprecated: use selectors="])


# %% [markdown]
# ## Metrics (section 5.4.2)
#
# Besides the normalised error, the thesis checks inversions of a classifier's layers by **classification
# consistency** — the fraction of pre-images that the network assigns the same class as their probe — and
# **naturalness** by comparing the histograms of gradient magnitudes of pre-image and probe with histogram
# intersection (fig 5.6; natural images have a characteristic, roughly exponential, gradient distribution).

# %%
#| export
def classification_consistency(classifier,  # callable: (B,C,H,W) images in [0,1] -> (B,classes) scores
                               x: torch.Tensor,  # (B,C,H,W) pre-images
                               x0: torch.Tensor  # (B,C,H,W) their probes
                              ) -> float:
    "Fraction of pre-images whose top class equals their probe's (fig 5.5, bottom)."
    if x.shape[0] != x0.shape[0]: raise ValueError(f"{x.shape[0]} pre-images for {x0.shape[0]} probes")
    with torch.no_grad():
        return (classifier(x).argmax(1) == classifier(x0).argmax(1)).float().mean().item()

def gradient_histogram_intersection(x: torch.Tensor,  # (B,C,H,W) pre-images in [0,1]
                                    x0: torch.Tensor,  # (B,C,H,W) their probes
                                    bins: int = 50,  # histogram bins over [0, max_value]
                                    max_value: float = 0.5  # magnitudes above go to the last bin
                                   ) -> torch.Tensor:
    """Histogram intersection $\\sum_k \\min(h_k, h^0_k)$ of the normalised gradient-magnitude histograms (fig 5.6), per image.

    Shape: `(B,C,H,W)` → `(B,)` in [0, 1]."""
    if x.shape != x0.shape: raise ValueError(f"pre-images {tuple(x.shape)} and probes {tuple(x0.shape)} differ in shape")
    def hists(im):
        im = im.detach().float().clamp(0, 1)
        dx, dy = im.diff(dim=-1)[..., :-1, :], im.diff(dim=-2)[..., :, :-1]
        mag = (dx.square() + dy.square()).sum(1).sqrt().clamp(max=max_value * (1 - 1e-6))
        return torch.stack([torch.histc(m, bins, 0, max_value) / m.numel() for m in mag])
    return torch.minimum(hists(x), hists(x0)).sum(1)


# %%
test_close(gradient_histogram_intersection(x0, x0), torch.ones(1))
flat = torch.full_like(x0, 0.5)
assert gradient_histogram_intersection(flat, x0).item() < 0.5     # a flat image has only zero gradients
test_eq(classification_consistency(lambda im: im.mean((2, 3)), x0.repeat(2, 1, 1, 1), x0.repeat(2, 1, 1, 1)), 1.0)

# %% [markdown]
# ## The effect of $C$ and $\beta$ (fig 5.2)
#
# A small version of fig 5.2 on HOG: small $C$ lets the prior dominate (smooth, low contrast); large $C$
# fits the code more closely at the cost of noise; $\beta = 1$ keeps sharp steps.

# %%
#| slow
runs = {f"C={C}, β={beta}": invert(hog, x0, C=C, beta=beta, num_iters=300) for C, beta in ((1, 2), (100, 2), (100, 1))}
fig = show_images([x0[0]] + [r.images[0].clamp(0, 1) for r in runs.values()],
                  titles=["x0"] + [f"{k}: {100 * r.error.item():.0f}%" for k, r in runs.items()], size=2.5)

# %% [markdown]
# ## Making it fast: one pass per iteration on the CPU
#
# `regularize_and_step` does the whole update in one pass over the image, in place: for each pixel it reads
# the image $\Phi$ saw, recovers $\mathbf{x}_t = \text{scale}\cdot(\text{image} - \text{mean})$, reads its
# neighbours and the data term's gradient, updates $G_t$ and $\mu_t$, and writes back
# $\text{mean} + \mathbf{x}_{t+1}/\text{scale}$ (projected), accumulating $\mathcal{R}_\alpha(\mathbf{x}_t)$ and
# $\mathcal{R}_{TV^\beta}(\mathbf{x}_t)$ on the way. The solver's only image buffer is thus the image itself,
# which saves two of the eight arrays a pass would otherwise stream (a separate $\mathbf{x}$, and a second
# buffer for $\mathbf{x}_{t+1}$). The kernel is compiled by numba (compiled once per dtype and cached on
# disk). It is parallel over chunks of rows, one chunk per thread. Each chunk updates its rows in order,
# keeping the previous row's $\mathbf{x}_t$ in a small buffer. The rows just outside a chunk are saved
# before any chunk starts, because their own chunk overwrites them. With $\beta = 2$ (the thesis' setting)
# the TV gradient is a discrete Laplacian with replicated borders, $2\,(4x_{uv} - x_{u\pm1,v} - x_{u,v\pm1})$
# over $HWV^2$. The regularisers' gradient, Algorithm 1 and the projection then run in a single loop per
# row and channel. Other $\beta$ take `regularizer_terms`' tensor code for the regularisers and the kernel
# for the rest. On a GPU, or without numba, `prepare_update` runs `regularizer_terms` and `algorithm1_step`.
# The cell below checks that both paths agree to float64 round-off, with pixels beyond $B_+$, a flat black
# corner, and 1, 2 and 3 chunks.
#
# **Measured** (`bench/bench_preimage.py`, 2 threads, HOG of a 224×224 image; each figure is the median of
# 9 paired rounds):
#
# - An iteration against HOG's forward+backward pass was 1.27–1.31× with tensor operations. A first
#   compiled pass, with separate $\mathbf{x}$ and $\mathbf{x}_{t+1}$ buffers and one loop per term, brought
#   that to 1.09–1.18×: the median of thirteen runs was 1.16, and the 1.15× goal was met in 5 of them.
# - That kernel took about 0.2 ms alone but 0.4 ms inside the loop, where HOG has evicted its inputs from
#   the cache. Another 0.18 ms per iteration went to the solver's own Python work.
# - The in-place, single-loop kernel (0.24 ms alone, against 0.29 ms for the first one on the same day) and
#   the leaner solver loop below are 1.04–1.14×: the median of fourteen runs is 1.11, and all of them meet the goal.
#   In the same session the first kernel measured 1.14 and 1.15×. The solver's Python work fell to about
#   0.07 ms. It now passes the data term's weights to `autograd.grad` instead of building the weighted sum,
#   and it assembles the energies once at the end.
# - 350 iterations take 1.9–2.1 s. This machine was slower that day: HOG's forward+backward pass took
#   5.4–6 ms, against 4 ms before.
#
# - With HOG's forward and backward passes compiled too (chapter 05a, `_HOGCellsCompiled`), 350 iterations
#   take 0.74 s on 2 threads (1.0 s on one); an iteration is 1.9 ms against 1.6 ms for HOG's forward+backward
#   (1.13–1.20×: the solver's own 0.3 ms — the update, the loss's autograd, Python — is now a larger share of a
#   cheaper Φ). In a batch of 8 an image takes 0.50 s, 0.68× the single image: HOG's two passes run one
#   task per image, but the update and the loss remain per-batch tensor work.
# - Beside one other busy process on the same two cores, the batch ran 3.6× slower than idle: after every
#   parallel region OpenMP's threads spin (libgomp's default 300,000 rounds), and with one core shared the
#   spinners starve the thread the region waits for. `make` sets `GOMP_SPINCOUNT=1000` for every command and
#   kernel it starts (set it before Python starts when running the book otherwise): the idle speed is the
#   same and the slowdown is 1.8–2.0×.
# - With HOG's block normalisation compiled as well (05a, `_UOCTTICompiled`), 350 iterations take 0.41–0.50 s on
#   2 threads; per image in a batch of 8, 0.37–0.47 s (0.9× the single image). That is where the batch's gain
#   ends on two cores: HOG's cell passes already split one image's rows between both threads, so a batch saves
#   only per-call costs (`bench_preimage`'s `profile_per_image_ms`: the cell passes take about 0.8 ms of a 1.1–1.2 ms
#   iteration either way). (Until then the bench timed the batch over 50+50 iterations scaled by 7, i.e. 700
#   iterations against 350+50 for one image, so the batch looked 1.75× slower per image than it was.) An
#   iteration is 1.1–1.3× HOG's forward+backward: the update streams the canvas, its gradient and two state
#   arrays (about 0.11 ms), a fixed cost that weighs more the cheaper $\Phi$ gets.
#
# The kernel is compiled on first use (about 6 s per dtype) and then loaded from numba's cache. It runs on
# as many threads as torch uses. numba's OpenMP layer loads the system's libgomp beside the copy torch
# ships (two thread pools in one process). Setting numba's thread count has been seen to change torch's, so
# the step puts torch's back when it does.

# %%
#| export
if numba is not None:
    @numba.njit(parallel=True, cache=True, fastmath={"reassoc", "contract", "nsz", "arcp"})
    def _fused_kernel(im, g, G, mu, mean, rows, edges, nchunks, reg, k):
        """In place on `im`: x_t = (im - mean)*scale; the regularisers at x_t (their sums per chunk into `rows`); Algorithm 1
        with g plus their gradient, into G and mu; and im <- mean + x_{t+1}/scale. `nchunks` chunks of rows per image;
        `edges` receives x_t of the rows just outside each chunk. k = (alpha/2 - 1, c_alpha, c_tv, 1/lr, rho, B+, scale, 1/scale).
        Without `reg` the regularisers are left out (g already holds their gradient; the caller passes c_tv = 0)."""
        pa, ca, ct, inv_lr, rho, bound, scale, inv_scale = k[0], k[1], k[2], k[3], k[4], k[5], k[6], k[7]
        nb, nc, H, W = im.shape
        b2 = bound * bound
        size = (H + nchunks - 1) // nchunks           # rows per chunk
        for t in numba.prange(nb * nchunks):          # x_t of the rows next to each chunk, before anyone overwrites them
            b, q = t // nchunks, t % nchunks
            r0, r1 = q * size, min(H, (q + 1) * size)
            for c in range(nc):
                if 0 < r0 < H:
                    for j in range(W): edges[b, q, 0, c, j] = (im[b, c, r0 - 1, j] - mean[c]) * scale
                if r1 < H:
                    for j in range(W): edges[b, q, 1, c, j] = (im[b, c, r1, j] - mean[c]) * scale
        for t in numba.prange(nb * nchunks):          # one chunk per task, its rows in order
            b, q = t // nchunks, t % nchunks
            r0, r1 = q * size, min(H, (q + 1) * size)
            ra, tv = 0.0, 0.0
            if r0 < r1:
                # x_t of the rows above, at and below row i, with one replicated pixel at each end (the TV border)
                up, cur, dn = np.empty((nc, W + 2), im.dtype), np.empty((nc, W + 2), im.dtype), np.empty((nc, W + 2), im.dtype)
                out = np.empty((nc, W), im.dtype)
                s, n2, cp = np.empty(W, im.dtype), np.empty(W, im.dtype), np.zeros(W, im.dtype)
                for c in range(nc):
                    for j in range(W): cur[c, j + 1] = (im[b, c, r0, j] - mean[c]) * scale
                    if r0 > 0:
                        for j in range(W): up[c, j + 1] = edges[b, q, 0, c, j]
                for i in range(r0, r1):
                    if i + 1 < H:
                        for c in range(nc):
                            if i + 1 < r1:
                                for j in range(W): dn[c, j + 1] = (im[b, c, i + 1, j] - mean[c]) * scale
                            else:
                                for j in range(W): dn[c, j + 1] = edges[b, q, 1, c, j]
                    xu_rows = up if i > 0 else cur       # replicated border rows
                    xd_rows = dn if i + 1 < H else cur
                    if reg:                               # alpha-norm: value p*s and gradient ca*p*x per pixel (else cp = 0)
                        for j in range(W): s[j] = 0
                        for c in range(nc):
                            for j in range(W): s[j] += cur[c, j + 1] * cur[c, j + 1]
                        for j in range(W):
                            if pa == 2.0: p = s[j] * s[j]
                            elif pa == 0.0: p = s[j] * 0 + 1
                            elif s[j] > 0: p = s[j] ** pa
                            else: p = s[j] * 0
                            ra += p * s[j]
                            cp[j] = ca * p
                    for j in range(W): n2[j] = 0
                    for c in range(nc):
                        xr, xu, xd = cur[c], xu_rows[c], xd_rows[c]
                        xr[0], xr[W + 1] = xr[1], xr[W]
                        gr, Gr, mr, o = g[b, c, i], G[b, c, i], mu[b, c, i], out[c]
                        for j in range(W):                # TV with beta = 2 (a Laplacian) and Algorithm 1, lines 4-7
                            x0 = xr[j + 1]
                            dv, dh = xd[j + 1] - x0, xr[j + 2] - x0
                            tv += dv * dv + dh * dh
                            gj = gr[j] + cp[j] * x0 + ct * (4 * x0 - xu[j + 1] - xd[j + 1] - xr[j] - xr[j + 2])
                            Gv = rho * Gr[j] + gj * gj
                            Gr[j] = Gv
                            m = rho * mr[j] - gj / (inv_lr + math.sqrt(Gv))
                            mr[j] = m
                            w = x0 + m
                            o[j] = w
                            n2[j] += w * w
                    for j in range(W):                    # line 8: the projection onto |x_pixel| <= B+
                        n2[j] = bound / math.sqrt(n2[j]) if n2[j] > b2 else n2[j] * 0 + 1
                    for c in range(nc):
                        o, ir, mc = out[c], im[b, c, i], mean[c]
                        for j in range(W): ir[j] = mc + o[j] * n2[j] * inv_scale
                    up, cur, dn = cur, dn, up             # row i's x_t is the next row's upper neighbour
            rows[0, t] = ra
            rows[1, t] = tv

def _fused_step(image, mean, p, grad_scale):
    "`prepare_update`'s step through `_fused_kernel`: constants and buffers prepared once."
    Bn, nc, H, W = image.shape
    in_kernel = p.beta == 2.0        # other β: the TV term through regularizer_terms, the rest in the kernel
    norm = np.array([[1 / (H * W * p.B ** p.alpha)], [1 / (H * W * p.tv_scale ** 2)]])
    m = mean.reshape(-1).to(image.dtype).numpy()
    # constants in the images' precision (float32 loops vectorise); k[3] = 1/lr is set per call
    # (without in_kernel the regularisers' gradient comes with grad: the kernel's TV coefficient is 0)
    k = np.array([p.alpha / 2 - 1, grad_scale * p.alpha / (H * W * p.B ** p.alpha),
                  grad_scale * 2 / (H * W * p.tv_scale ** 2) if in_kernel else 0.0,
                  1.0, p.momentum, p.bound, p.scale, 1 / p.scale], dtype=m.dtype)
    buf = {}                         # per-chunk sums and saved edge rows, by number of chunks
    def step(image, grad, G, mu, lr):
        if not in_kernel:
            ra, rtv, reg_grad = regularizer_terms((image - mean) * p.scale, p.alpha, p.B, p.beta, p.tv_scale)
            grad.add_(reg_grad, alpha=grad_scale)
        n = torch.get_num_threads()
        numba.set_num_threads(max(1, min(n, numba.config.NUMBA_NUM_THREADS)))
        nch = max(1, min(H, n))      # one chunk of rows per thread
        if nch not in buf: buf[nch] = (np.zeros((2, Bn * nch)), np.empty((Bn, nch, 2, nc, W), m.dtype))
        rows, edges = buf[nch]
        k[3] = 1 / lr
        _fused_kernel(image.detach().numpy(), grad.detach().numpy(), G.numpy(), mu.numpy(), m, rows, edges, nch, in_kernel, k)
        if torch.get_num_threads() != n: torch.set_num_threads(n)   # numba's thread setting can leak into torch's
        if in_kernel: return rows.reshape(2, Bn, nch).sum(2) * norm
        return torch.stack((ra, rtv)).numpy()
    return step

_FUSED_STEP = _fused_step if numba is not None else None   # from here on `prepare_update` takes the one-pass kernel

# %%
g64 = torch.Generator().manual_seed(5)
mean = torch.tensor([0.485, 0.456, 0.406], dtype=torch.float64).view(1, 3, 1, 1)
for (a_, b_), threads in zip(((6.0, 2.0), (2.0, 2.0), (3.0, 2.0), (1.0, 2.0), (6.0, 1.5), (6.0, 1.0)), (1, 2, 3, 2, 3, 1)):
    pr = preimage_params(alpha=a_, beta=b_, B_plus=100.0)
    x = torch.randn(2, 3, 9, 11, dtype=torch.float64, generator=g64) * 60
    x[0, :, :3, :3] = 0.0                                    # flat black corner; |x| > B+ = 100 elsewhere
    grad = torch.randn(x.shape, dtype=torch.float64, generator=g64) * 50
    G0, mu0 = torch.rand(x.shape, dtype=torch.float64, generator=g64) * 9, torch.randn(x.shape, dtype=torch.float64, generator=g64)
    res, before = [], torch.get_num_threads()
    torch.set_num_threads(threads)                           # the kernel splits the rows into one chunk per thread
    try:
        for fused in (False, True):
            G, mu, im = G0.clone(), mu0.clone(), mean + x / 255
            ra_, tv_ = regularize_and_step(im, grad.clone(), G, mu, mean, pr, lr=2.0, grad_scale=99.0, fused=fused)
            res.append((ra_, tv_, G, mu, im))
    finally: torch.set_num_threads(before)
    for a, b in zip(*res): test_close(a, b, eps=1e-10)
    x1 = (res[1][4] - mean) * 255
    assert (x1.square().sum(1) <= 100.0 ** 2 * (1 + 1e-10)).all() and (x1 - x).abs().max() > 1
test_fail(lambda: regularize_and_step(x.half(), grad.half(), G.half(), mu.half(), mean.half(), pr, 1.0, fused=True),
          contains="float32/float64 CPU tensor")

# %% [markdown]
# The one-pass update and the tensor code give the same solver run: a smooth $\Phi$ (a fixed random
# convolution), with jitter and the fine-tuning stage, 30 iterations in float64.

# %%
wconv = torch.randn(4, 3, 3, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
x0c = sample_image("astronaut")[None, :, 80:104, 200:224].double()
target = F.conv2d(x0c, wconv)
init = initial_noise((1, 3, 26, 26), generator=torch.Generator().manual_seed(1)).double()
pr = preimage_params(C=100, num_iters=20, finetune_iters=10, jitter=3)
runs = [solve_preimage(lambda im: normalized_error(F.conv2d(im, wconv), target), init, pr, image_mean(3).double(),
                       finetune=True, generator=torch.Generator().manual_seed(2), fused=f) for f in (False, True)]
test_close(runs[0][0], runs[1][0], eps=1e-8)
for k in ("energy", "loss", "alpha", "tv"): test_close(runs[0][1][k], runs[1][1][k], eps=1e-10)
test_eq(runs[1][1]["energy"].shape, (30, 1))

# %% [markdown]
# ## Summary
#
# - `PreimageParams` / `preimage_params` hold the thesis' single parameter set ($C = 1$, $\alpha = 6$,
#   $\beta = 2$, $B = 80$, $B_+ = 2B$, $V = B/6.5$, $\rho = 0.9$, $\eta_0 = 0.01B^2/\alpha$, 300 + 50 iterations).
# - Regularisers `alpha_norm` (eq 5.5; the bound of eq 5.6 is the optimiser's projection), `tv_beta`, the
#   texture term `TextureRegularizer` (eq 5.8); losses `normalized_error` (eq 5.2/5.3, also the error metric)
#   and `inner_product_loss` (eq 5.4); `jitter` (eq 5.7); `algorithm1_step` and `solve_preimage`.
# - Entry points: `invert(phi, x0 | target)`, `maximize(phi, unit)` with the author's $Z = M\rho^2/10^4$ (eq 5.9, `unit_maximum`),
#   `caricature(phi, x0)` (eq 5.10) — batched, seeded, returning images and the energy history.
# - `LayerPhi` turns a network layer into a representation; `classification_consistency` and
#   `gradient_histogram_intersection` are the quality measures of figs 5.5 and 5.6; `natural_images` is the
#   offline probe set.
# - The experiments of the chapter (table 5.2 and figs 5.2–5.20) are in `05c_preimage_experiments`.

# %%
#| hide
import nbdev; nbdev.nbdev_export()
