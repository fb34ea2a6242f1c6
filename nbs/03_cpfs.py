# %%
#| default_exp cpfs

# %% [markdown]
# # Cross-pixel optical-flow similarity (CPFS)
#
# > Chapter 3 of the thesis: learn per-pixel embeddings whose similarities match the similarities of the pixels' optical flow.

# %% [markdown]
# *Default run: **31 s** on 2 CPU cores with the default parameters (measured by `make book` on 6 Dec 2026, reusing the training and caches that earlier runs left in the runs folder, `core.runs_dir`; where a first run on a new machine takes longer, the chapter says so).*

# %% [markdown]
# Predicting the optical flow of a single frame is ambiguous: a parked car *can* move but usually does
# not, and the direction of a walking person is a coin toss. The thesis (section 3.2) sidesteps the
# ambiguity: rather than *what* the motion is, a network $\phi$ learns *which pixels move together*. It
# maps an image $I$ to an embedding $\phi_p = \phi(I, p \mid \Theta) \in \mathbb{R}^D$ for every pixel
# $p$, and asks that for every pair of pixels
#
# $$ K_\phi(\phi_p, \phi_q) \approx K_f(f_p, f_q) \qquad (3.1)$$
#
# where $K_\phi$ and $K_f$ are kernels on embeddings and on flow vectors. This chapter builds the
# kernels (3.2.1), the three losses that compare them (3.2.2), the sparse hypercolumn head that produces
# the embeddings (3.2.3), and the direct flow-classification baseline the thesis compares against
# (3.3.5). The training experiment is the papermill notebook `03_cpfs_train.ipynb`.
#
# Vocabulary: `emb` is a batch of embeddings `(B,N,D)` at $N$ sampled pixels, `flow` the flow at the
# same pixels `(B,N,2)`; `K_phi`, `K_f` are `(B,N,N)` kernel matrices.

# %% [markdown]
# ![Fig 3.1 (redrawn): the CPFS framework. A CNN φ sees one frame and gives every pixel a D-dimensional embedding; the loss (KTA, CE or CE-rev) asks the cosine kernel of the embeddings, K_φ, to match the RBF kernel of the optical flow, K_f (eq 3.1). Only the loss sees the flow.](figures/fig3_1_cpfs.svg)

# %%
#| export
import copy
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, ClassVar

import torch
import torch.nn as nn
import torch.nn.functional as F

from motion_nbs.core import (SAMPLE_VIDEOS, atomic_save, atomic_write, check_choice, check_image, check_int,
                             check_number, check_values, full_precision, load_model_file, renamed, runs_dir, seed_everything)
from motion_nbs.data import PRESETS as RENDER_PRESETS
from motion_nbs.data import (FlowPairDataset, ImageFlowSamples, PairedAugment, SceneDataset, paired_centre_crop, rendered_pool,
                             split_heldout, video_flow_pairs)
from motion_nbs.flow import add_flow_key, flow_to_classes, flow_to_rgb, normalize_flow_log
from motion_nbs.learner import ExperimentConfig, fit, init_distributed, is_main_process, process_share
from motion_nbs.models import create_model, fold_batchnorm, layer_outputs, receptive_fields

# matplotlib and scikit-learn are imported where they are used (the figures and the AUC): both are slow to import.

# %%
#| hide
import tempfile
import warnings

from fastcore.test import test_close, test_eq, test_fail

# %% [markdown]
# ## Kernels (section 3.2.1)
#
# Embeddings are compared with a scaled cosine similarity and flow vectors with a Gaussian (RBF) kernel:
#
# $$ K_\phi(\phi_p, \phi_q) = \frac{1}{4}\frac{\phi_p^\top\phi_q}{\|\phi_p\|_2\|\phi_q\|_2}, \qquad
#    K_f(f_p, f_q) = \exp\left(-\frac{\|f_p - f_q\|_2^2}{2\sigma^2}\right) \qquad (3.2)$$
#
# The cosine normalisation makes $K_\phi$ largest for identical embeddings, as the RBF kernel is for
# identical flows. The flow is first normalised by eq 3.8 (chapter 01) into $[-1, 1]$. A small
# bandwidth makes $K_f$ local, pushing the embedding to tell apart objects moving differently; the
# thesis learned $\sigma^2 = 0.0036$ in some experiments. Squared distances are computed as
# $\|a\|^2 + \|b\|^2 - 2a^\top b$, which needs no `(B,N,N,2)` difference tensor: memory stays
# $O(B N^2)$. Exponents below $-87$ are clamped there: $e^{-87} \approx 1.6 \times 10^{-38}$ is the smallest
# normal float32, and below it `exp` returns subnormal numbers, which the CPU computes about ten times slower
# (at $\sigma^2 = 0.0036$ most pairs of pixels are that far apart: the clamp made the kernel 8× faster and
# changes no value by more than $1.6 \times 10^{-38}$).
#
# Both kernels and the losses below are `full_precision` (chapter 00): under mixed-precision training
# they run in float32 whatever the caller does. At $\sigma = 0.06$ the RBF kernel divides the squared
# distance by $2\sigma^2 = 0.0072$, so bfloat16's relative error of $2^{-8}$ in $\|a\|^2 + \|b\|^2 - 2a^\top b$
# would move the kernel's values, which lie in $[0, 1]$, by up to 0.7.

# %%
#| export
THESIS_SIGMA2 = 0.0036  # the bandwidth the thesis learned (fig 3.2)
NEUTRAL_SIGMA2 = 0.04  # where a learned σ starts: σ = 0.2, a tenth of the normalised flow's range [-1, 1]

@full_precision
def cosine_kernel(emb: torch.Tensor  # `(B,N,D)` embeddings (any norm; zero vectors give zero rows)
                 ) -> torch.Tensor:
    """Eq 3.2, left: ¼ × cosine similarity of every pair of embeddings.

    Shape: `(B,N,D)` → `(B,N,N)`."""
    e = 0.5 * F.normalize(emb, dim=-1, eps=1e-8)   # ¼ e·e as (½e)·(½e): exact (powers of 2), and no N² product to scale
    return e @ e.transpose(-1, -2)

MIN_EXPONENT = -87.0  # exp(-87) ≈ 1.6e-38, the smallest normal float32: no subnormal (slow) kernel values

def _sq_dists(x):
    "Squared Euclidean distances of every pair of rows, ‖a‖² + ‖b‖² − 2a·b: `(B,N,d)` → `(B,N,N)`, in two N² passes."
    sq = (x * x).sum(-1)
    return torch.baddbmm(sq[..., :, None] + sq[..., None, :], x, x.transpose(-1, -2), alpha=-2).clamp_min_(0)

def _rbf(d2, sigma):
    "exp(−d²/2σ²) of squared distances, the exponent clamped at `MIN_EXPONENT`."
    return (d2 * (-0.5 / sigma ** 2)).clamp_min_(MIN_EXPONENT).exp_()   # in place on the one new tensor

@full_precision
def rbf_kernel(flow: torch.Tensor,  # `(B,N,2)` flow vectors (eq-3.8-normalised for CPFS)
               sigma  # bandwidth σ: a float or a scalar tensor (learnable)
              ) -> torch.Tensor:
    """Eq 3.2, right: Gaussian kernel exp(−‖f_p − f_q‖² / 2σ²) of every pair of flow vectors.

    Shape: `(B,N,2)` → `(B,N,N)`."""
    return _rbf(_sq_dists(flow), torch.as_tensor(sigma, dtype=flow.dtype, device=flow.device))


# %%
e = torch.tensor([[[1.0, 0], [0, 2], [-3, 0]]])
test_close(cosine_kernel(e), 0.25 * torch.tensor([[[1.0, 0, -1], [0, 1, 0], [-1, 0, 1]]]))
f = torch.tensor([[[0.0, 0], [0.1, 0], [0, 0.3]]])
test_close(rbf_kernel(f, 0.1), torch.exp(-torch.tensor([[[0, 0.01, 0.09], [0.01, 0, 0.1], [0.09, 0.1, 0]]]) / 0.02))
test_eq(cosine_kernel(torch.zeros(1, 2, 4)), torch.zeros(1, 2, 2))  # zero embeddings: finite, no NaN
_fl = torch.rand(2, 64, 2, generator=torch.Generator().manual_seed(0)) * 2 - 1
_k32 = rbf_kernel(_fl, 0.06)
with torch.autocast("cpu", torch.bfloat16):                           # as in mixed-precision training
    test_eq(rbf_kernel(_fl, 0.06), _k32)                               # computed in float32 all the same
    _sq = (_fl * _fl).sum(-1)
    _naive = torch.exp(-(_sq[..., :, None] + _sq[..., None, :] - 2 * _fl @ _fl.transpose(-1, -2)).clamp_min(0) / 0.0072)
assert (_naive.float() - _k32).abs().max() > 0.3                      # what autocast alone would have given

# %% [markdown]
# ## The three losses (section 3.2.2)
#
# **Kernel target alignment** (KTA, eq 3.3) is the normalised Frobenius inner product of the kernel
# matrices, a cosine between them:
#
# $$ \mathcal{A}(K, K') = \frac{\sum_{pq} K_{pq} K'_{pq}}{\sqrt{\sum_{pq} K_{pq}^2 \sum_{pq} K'^2_{pq}}} \qquad (3.3)$$
#
# The thesis calls this $\mathcal{L}_{KTA}$ but it is a *similarity* to maximise; we minimise
# $-\mathcal{A}(K_f, K_\phi)$.
#
# **Cross-entropy** (CE, eq 3.4–3.6) reads each row of a kernel as logits of a distribution over pixels:
# $S(p, \cdot)$ says which pixels go with $p$. Each pixel is trivially similar to itself, which would
# dominate the softmax, so the diagonal logit is replaced by 0 — it counts as $\exp(0) = 1$:
#
# $$ S(p, q) = \frac{\exp K(p, q)\,[p \ne q] + [p = q]}{\sum_{q' \ne p} \exp K(p, q') + 1} \qquad (3.5, 3.6)$$
#
# $$ \mathcal{L}_{CE} = -\sum_{p}\sum_{q} S_f(p, q) \log S_\phi(p, q) \qquad (3.4)$$
#
# and **reversed cross-entropy** (CE-rev, eq 3.7) swaps the roles: $-\sum S_\phi \log S_f$, an ablation
# in which the flow distribution is no longer the target.
#
# Two choices the equations leave open, stated here: (i) the thesis writes sums over all pixels; we
# average over the $N$ rows and the $B$ images (the sum would tie the learning rate to $N$), and KTA is
# averaged over images; (ii) the softmaxes are computed as `log_softmax` for numerical stability, and
# an $\epsilon = 10^{-12}$ inside the square root of eq 3.3 keeps KTA finite for all-zero embeddings.

# %%
#| export
CPFS_LOSSES = ("kta", "ce", "ce_rev")

@full_precision
def kernel_log_softmax(K: torch.Tensor  # `(B,N,N)` kernel matrix
                      ) -> torch.Tensor:
    """Eq 3.5/3.6: log S, the row-wise softmax of K in which the diagonal logit counts as 0 (exp(0) = 1).

    Shape: `(B,N,N)` → `(B,N,N)`."""
    n = K.shape[-1]
    diag = torch.eye(n, dtype=torch.bool, device=K.device)
    return torch.log_softmax(K.masked_fill(diag, 0.0), dim=-1)

@full_precision
def kernel_alignment(K1: torch.Tensor, K2: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """Eq 3.3: kernel target alignment of two batches of kernel matrices, in [-1, 1].

    Shape: `(B,N,N)`, `(B,N,N)` → `(B,)`."""
    num = (K1 * K2).sum((-2, -1))
    return num / torch.sqrt((K1 * K1).sum((-2, -1)) * (K2 * K2).sum((-2, -1)) + eps)

def _dots(a, b):
    "Per-image inner products ⟨a_b, b_b⟩ of `(B,…)` tensors."
    return torch.linalg.vecdot(a.flatten(1), b.flatten(1))

def _zero_diagonal_(K):
    K.diagonal(dim1=-2, dim2=-1).zero_()
    return K

class _KernelLoss(torch.autograd.Function):
    """A CPFS loss of K_phi and the RBF kernel of `flow` with its gradient written out.

    The same values as `kernel_alignment` / `kernel_log_softmax` composed by autograd (the tests compare them),
    but the backward pass is a few in-place N² operations instead of autograd's replay of every elementwise
    step, each into a new `(B,N,N)` tensor. With ℓ_i = Σ_j P_ij log Q_ij (CE: P = S_f, Q = S_phi; CE-rev:
    P = S_phi, Q = S_f) and logits z, the row gradients are ∂ℓ/∂z_Q = P − Q and ∂ℓ/∂z_P = P ⊙ (log Q − ℓ)
    (the diagonal logit is the constant 0); for KTA, A = ⟨Kf,Kp⟩/Z with Z = √(‖Kf‖²‖Kp‖² + ε):
    ∂A/∂Kp = (Kf − A Z⁻¹‖Kf‖² Kp)/Z, and symmetrically for Kf. σ's gradient goes through ∂Kf/∂σ = Kf ⊙ d²/σ³."""
    @staticmethod
    def forward(ctx, K_phi, flow, sigma, kind):
        B, n = K_phi.shape[0], K_phi.shape[-1]
        d2 = _sq_dists(flow)
        K_f = _rbf(d2, sigma)
        ctx.kind, ctx.count = kind, B if kind == "kta" else B * n
        if kind == "kta":
            ff, pp, fp = _dots(K_f, K_f), _dots(K_phi, K_phi), _dots(K_f, K_phi)
            Z = torch.sqrt(ff * pp + 1e-12)
            ctx.save_for_backward(K_phi, K_f, d2, sigma, ff, pp, fp, Z)
            return -(fp / Z).mean()
        lp = torch.log_softmax(_zero_diagonal_(K_phi.clone()), -1)
        lf = torch.log_softmax(_zero_diagonal_(K_f.clone()), -1)
        P, logQ = (lf.exp_(), lp) if kind == "ce" else (lp.exp_(), lf)   # log P is needed only as P
        ell = torch.linalg.vecdot(P, logQ)
        ctx.save_for_backward(K_f, d2, sigma, P, logQ, ell)
        return -ell.mean()

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g):
        c = -g / ctx.count
        want_sigma = ctx.needs_input_grad[2]
        if ctx.kind == "kta":
            K_phi, K_f, d2, sigma, ff, pp, fp, Z = ctx.saved_tensors
            A = fp / Z
            s = (c / Z).view(-1, 1, 1)
            dKp = K_phi.mul(-(A / Z * ff).view(-1, 1, 1)).add_(K_f).mul_(s)
            dKf = K_f.mul(-(A / Z * pp).view(-1, 1, 1)).add_(K_phi).mul_(s) if want_sigma else None
        else:
            K_f, d2, sigma, P, logQ, ell = ctx.saved_tensors
            grad_Q = _zero_diagonal_(logQ.exp().neg_().add_(P).mul_(c))                  # ∂/∂ logits of Q: P − Q
            grad_P = _zero_diagonal_(logQ.sub(ell[..., None]).mul_(P).mul_(c)) if ctx.kind == "ce_rev" or want_sigma else None
            dKp, dKf = (grad_Q, grad_P) if ctx.kind == "ce" else (grad_P, grad_Q)
        dsigma = None
        if want_sigma: dsigma = (_dots(dKf.mul_(K_f), d2).sum() / sigma ** 3).reshape(sigma.shape)
        return dKp, None, dsigma, None

def _check_pair(emb, flow):
    if emb.ndim != 3: raise ValueError(f"emb must have shape (B,N,D), got {tuple(emb.shape)}")
    if flow.ndim != 3 or flow.shape[-1] != 2: raise ValueError(f"flow must have shape (B,N,2), got {tuple(flow.shape)}")
    if emb.shape[:2] != flow.shape[:2]:
        raise ValueError(f"emb {tuple(emb.shape)} and flow {tuple(flow.shape)} differ in batch size or number of pixels")
    check_values("flow", flow)

@renamed(sigma=("sigma2", lambda s: s ** 2))  # σ until 0.1.0
@full_precision
def cpfs_loss(emb: torch.Tensor,  # `(B,N,D)` pixel embeddings
              flow: torch.Tensor,  # `(B,N,2)` flow at the same pixels, in pixels (or normalised: see `normalize`)
              kind: str = "ce",  # "kta" (eq 3.3), "ce" (eq 3.4) or "ce_rev" (eq 3.7)
              sigma2=THESIS_SIGMA2,  # σ² of the RBF kernel on the normalised flow (float or tensor; the thesis' 0.0036)
              normalize: bool = True,  # apply eq 3.8 (M = 56) to `flow` first
              max_flow: float = 56.0,  # M of eq 3.8
              fused: bool = True,  # gradient written out (`_KernelLoss`); False: autograd through the lines below
              temperature: float = 1.0  # CE / CE-rev: the softmax of eq 3.5 over K_φ / temperature (1: the thesis; an extension)
             ) -> torch.Tensor:
    """A CPFS loss between the cosine kernel of `emb` and the RBF kernel of `flow` (scalar; lower is better).

    Shape: `(B,N,D)`, `(B,N,2)` → `()`."""
    check_choice("kind", kind, CPFS_LOSSES)
    _check_pair(emb, flow)
    if not torch.is_tensor(sigma2): sigma = math.sqrt(check_number("sigma2", sigma2))
    elif sigma2.device.type == "cpu" and not (sigma2 > 0).all(): raise ValueError(f"sigma2={sigma2}; expected σ² > 0")
    else: sigma = sigma2.sqrt()
    if normalize: flow = normalize_flow_log(flow.transpose(-1, -2)[..., None], max_flow)[..., 0].transpose(-1, -2)
    check_number("temperature", temperature)
    if temperature != 1 and kind == "kta": raise ValueError(f"temperature={temperature}: KTA (eq 3.3) is invariant to the kernel's scale; use 1")
    flow, K_phi = flow.to(emb.dtype), cosine_kernel(emb)
    if temperature != 1: K_phi = K_phi / temperature
    if fused and not flow.requires_grad:   # the same loss, its gradient written out (`_KernelLoss`): faster
        return _KernelLoss.apply(K_phi, flow, torch.as_tensor(sigma, dtype=emb.dtype, device=emb.device), kind)
    K_f = rbf_kernel(flow, sigma)
    if kind == "kta": return -kernel_alignment(K_f, K_phi).mean()
    logS_phi, logS_f = kernel_log_softmax(K_phi), kernel_log_softmax(K_f)
    if kind == "ce": return -(logS_f.exp() * logS_phi).sum(-1).mean()
    return -(logS_phi.exp() * logS_f).sum(-1).mean()


# %% [markdown]
# `tests/test_cpfs.py` checks that these vectorised losses equal a direct transcription of eq 3.2–3.7
# with loops over pixels (float64, to 1e-10), pass `gradcheck`, are invariant to the order of the
# pixels, and stay finite for zero embeddings, identical flows and huge flows. Here, a case small
# enough to do by hand: two pixels with identical flow ($K_f = 1$ everywhere) and orthogonal embeddings
# ($K_\phi = \tfrac14 I$). With the diagonal logits set to 0, both rows of both kernels become uniform
# over the two pixels for $S_\phi$ ($\exp 0$ against $\exp 0$) and $S_f(p,\cdot) = (1, e)/(1 + e)$, so
# $\mathcal{L}_{CE} = \log 2$; and the alignment is $\tfrac12 / \sqrt{\tfrac18 \cdot 4} = 1/\sqrt 2$.

# %%
e2, f2 = torch.tensor([[[1.0, 0], [0, 1]]]), torch.zeros(1, 2, 2)
test_close(cpfs_loss(e2, f2, "ce"), math.log(2), eps=1e-6)
test_close(cpfs_loss(e2, f2, "kta"), -1 / math.sqrt(2), eps=1e-6)
_sf = torch.tensor([1, math.e]) / (1 + math.e)
test_close(cpfs_loss(e2, f2, "ce_rev"), -(0.5 * _sf.log()).sum(), eps=1e-6)

# %% [markdown]
# Sanity of the objectives: embeddings that copy the flow's grouping score better than random ones.
# Two groups of pixels with different flows: embeddings constant within each group and orthogonal
# across groups beat random embeddings under every loss.

# %%
fl = torch.zeros(1, 8, 2); fl[0, 4:] = 10.0                     # pixels 0-3 static, 4-7 moving
good = torch.zeros(1, 8, 16); good[0, :4, 0] = 1; good[0, 4:, 1] = 1
rand = torch.randn(1, 8, 16, generator=torch.Generator().manual_seed(1))
for kind in CPFS_LOSSES: assert cpfs_loss(good, fl, kind) < cpfs_loss(rand, fl, kind), kind
test_fail(lambda: cpfs_loss(good, fl, "mse"), contains="valid: kta, ce, ce_rev")
test_fail(lambda: cpfs_loss(good, fl[:, :5], "ce"), contains="differ in batch size or number of pixels")
test_fail(lambda: cpfs_loss(good, fl.masked_fill(fl > 5, float("nan")), "ce"), contains="NaN")
test_fail(lambda: cpfs_loss(good, fl, "ce", sigma2=0.0), contains="sigma2=0.0; expected a finite number > 0")
test_fail(lambda: cpfs_loss(good, fl, "kta", sigma2=torch.tensor(-1.0)), contains="expected σ² > 0")

# %% [markdown]
# `cpfs_loss` computes the loss of the lines above, but differentiates it with the gradients written out
# (`_KernelLoss`): autograd through those lines replays a dozen elementwise operations on $B \times N \times N$
# matrices, each into a new tensor, which made a CPFS training step 20–26 % slower than the same network with a
# trivial loss (`bench/bench_cpfs.py`, B = 16, N = 512, 2 threads). With the gradients written out and applied
# in place, per-image sums as `vecdot`, the squared distances in one `baddbmm`, the ¼ of the cosine kernel
# applied to the embeddings instead of the $N^2$ products, and the kernel's exponents clamped above the
# subnormal range (above), the step costs 1.05× (KTA), 1.06× (CE) and 1.07× (CE-rev) the trivial one
# (4 Dec 2026); the loss's forward and backward went from 55–77 ms to 30–36 ms. `fused=False` takes the
# autograd path; the two agree in value and in the gradients for the embeddings and for σ, and the
# written-out gradient passes `gradcheck` in float64:

# %%
_g = torch.Generator().manual_seed(3)
_e, _fl = torch.randn(2, 24, 5, generator=_g, dtype=torch.float64), torch.randn(2, 24, 2, generator=_g, dtype=torch.float64) * 8
for _kind in CPFS_LOSSES:
    _grads = []
    for _fused in (True, False):
        _ee, _s = _e.clone().requires_grad_(True), torch.tensor(0.04, dtype=torch.float64, requires_grad=True)
        _v = cpfs_loss(_ee, _fl, _kind, sigma2=_s, fused=_fused); _v.backward()
        _grads.append((_v.detach(), _ee.grad, _s.grad))
    for _a, _b in zip(*_grads): test_close(_a, _b, eps=1e-10)
    assert torch.autograd.gradcheck(lambda e, s: cpfs_loss(e, _fl[:, :8], _kind, sigma2=s),
                                    (_e[:, :8].clone().requires_grad_(True), torch.tensor(0.09, dtype=torch.float64, requires_grad=True)))
test_close(cpfs_loss(e2, f2, "ce", fused=False), math.log(2), eps=1e-6)


# %% [markdown]
# ## A learnable bandwidth
#
# When σ is learned, it is parametrised in log space ($\sigma = \exp(s)$), which keeps it positive and
# makes its updates scale-free. `CPFSLoss` bundles the loss kind with a fixed or learnable σ, so the
# learner's optimiser picks σ up with the network's parameters.
#
# **Where a learned σ starts, and how fast it moves.** $\sigma^2 = 0.0036$ is the thesis' *result*, so a run
# that starts there cannot show where σ goes. A learned σ starts from a neutral $\sigma^2 = 0.04$ — σ a tenth
# of the normalised flow's range $[-1, 1]$ — and has its own learning rate (`sigma_lr`, $10^{-2}$ in the
# presets): with the network's $10^{-4}$, Adam would move $\log\sigma$ by about $10^{-4}$ per step, 0.06 in a
# 600-step run.
#
# **KTA with a learned σ has a degenerate optimum.** As $\sigma \to \infty$ the flow kernel tends to the
# all-ones matrix, and so does the cosine kernel of *collapsed* embeddings (all pixels the same vector):
# the alignment of eq 3.3 is then perfect, better than any embedding that tells objects apart achieves at
# any σ, because real flow varies within an object. The cell below measures it on rendered scenes:
# one-hot embeddings of the true instances reach their best $-\mathcal{A} = -0.977$ at $\sigma^2 = 0.04$,
# while collapsed embeddings reach $-0.988$ at $\sigma^2 = 0.36$ and $-1.000$ at $\sigma^2 = 36$. Learning σ
# under KTA would therefore drive σ up and the embeddings to a constant. The book keeps KTA's σ fixed (the
# presets use the thesis' 0.0036, and `CPFSConfig` refuses `sigma="learned"` with KTA). The cross-entropy
# losses do not reward the collapse in the same way — their best one-hot value (at small σ) is below the
# collapsed one — so there σ is learned, from the neutral start, and `03_cpfs_train` reports where it ends.

# %%
#| export
class CPFSLoss(nn.Module):
    "A CPFS loss (`kind`) with a fixed or learnable (log-parametrised) RBF bandwidth σ."
    def __init__(self, kind: str = "ce",  # "kta", "ce" or "ce_rev"
                 sigma2: float = THESIS_SIGMA2,  # initial (or fixed) σ²
                 learn_sigma: bool = False,  # learn log σ with the network
                 temperature: float = 1.0):  # CE / CE-rev: softmax over K_φ / temperature (1: the thesis)
        super().__init__()
        check_choice("kind", kind, CPFS_LOSSES)
        self.temperature = temperature
        if not sigma2 > 0: raise ValueError(f"sigma2 must be positive, got {sigma2}")
        self.kind = kind
        log_sigma = torch.tensor(0.5 * math.log(sigma2))
        if learn_sigma: self.log_sigma = nn.Parameter(log_sigma)
        else: self.register_buffer("log_sigma", log_sigma)

    @property
    def sigma2(self) -> float: return float(torch.exp(2 * self.log_sigma.detach()))

    def forward(self, emb, flow):
        "Shape: `(B,N,D)`, `(B,N,2)` flow in pixels → `()`."
        return cpfs_loss(emb, flow, self.kind, sigma2=self.log_sigma.mul(2).exp(), temperature=self.temperature)

    def extra_repr(self):
        return (f"kind={self.kind!r}, sigma2={self.sigma2:.4g}, learned={isinstance(self.log_sigma, nn.Parameter)}"
                + (f", temperature={self.temperature:g}" if self.temperature != 1 else ""))


# %%
crit = CPFSLoss("ce", learn_sigma=True)
test_close(crit.sigma2, THESIS_SIGMA2, eps=1e-9)
crit(rand, fl).backward()
assert crit.log_sigma.grad is not None and torch.isfinite(crit.log_sigma.grad)
test_eq(len(list(CPFSLoss("kta").parameters())), 0)

# %%
from motion_nbs.data import SceneDataset

# %%
_sc = [SceneDataset("shapes", 4, seed=5, size=(128, 128))[i] for i in range(4)]
_idx = torch.randperm(128 * 128, generator=torch.Generator().manual_seed(0))[:256]   # 256 pixels per frame
_f = torch.stack([s["flow"].flatten(1)[:, _idx].T for s in _sc])                       # (4, 256, 2)
_ids = torch.stack([s["instances"].flatten()[_idx] for s in _sc])
_onehot, _collapsed = F.one_hot(_ids, 16).float(), torch.ones(4, 256, 16)
_kta = {s2: (float(cpfs_loss(_onehot, _f, "kta", sigma2=s2)), float(cpfs_loss(_collapsed, _f, "kta", sigma2=s2)))
        for s2 in (0.0036, 0.01, 0.04, 0.1, 0.36, 36.0)}
for s2, (oh, co) in _kta.items(): print(f"sigma^2 {s2:7g}: -KTA one-hot instances {oh:.3f}, collapsed {co:.3f}")
assert min(co for _, co in _kta.values()) < min(oh for oh, _ in _kta.values())   # the collapse wins under KTA

# %% [markdown]
# ## The printed CE is close to uniform; a temperature (an extension)
#
# With the thesis' kernels, $K_\phi \in [-\tfrac14, \tfrac14]$ and $K_f \in [0, 1]$, every row of
# $S_\phi$ and $S_f$ is a softmax over logits that differ by at most ½ and 1: both distributions are close
# to uniform over the $N$ pixels, so CE can move only a little below $\ln N$ (in `make demo`'s world it goes
# from 5.543 to 5.527 against $\ln 256 = 5.545$). The cell below shows CE relative to $\ln N$ for embeddings
# that group the pixels perfectly by instance (one-hot) and for collapsed ones, on the frames above. Whether
# that scaling limits CPFS is an empirical question, so the library offers a `temperature` $\tau$: the
# softmax of eq 3.5 over $K_\phi / \tau$ (`cpfs_loss(..., temperature=τ)`, `CPFSConfig.temperature`;
# $\tau = 1$ is the thesis). Chapter `03_cpfs_ambiguity` trains CE with $\tau < 1$ as a labelled extension arm.
# KTA is invariant to the kernel's scale, so a temperature is refused there.

# %%
_n = _f.shape[1]
for tau in (1.0, 0.1, 0.02):
    oh, co = (float(cpfs_loss(e, _f, "ce", temperature=tau)) for e in (_onehot, _collapsed))
    print(f"temperature {tau:4g}: CE / ln N = {oh / math.log(_n):.4f} (one-hot instances), {co / math.log(_n):.4f} (collapsed)")
_g = torch.Generator().manual_seed(3)
_e, _fl = torch.randn(2, 32, 8, generator=_g, dtype=torch.float64), 4 * torch.randn(2, 32, 2, generator=_g, dtype=torch.float64)
_fn = normalize_flow_log(_fl.transpose(-1, -2)[..., None])[..., 0].transpose(-1, -2)
_sf = kernel_log_softmax(rbf_kernel(_fn, 0.1)).exp()
_ref = -(_sf * kernel_log_softmax(cosine_kernel(_e) / 0.05)).sum(-1).mean()      # eq 3.4 with K_phi / 0.05
test_close(cpfs_loss(_e, _fl, "ce", sigma2=0.01, temperature=0.05), _ref, eps=1e-10)
test_close(cpfs_loss(_e, _fl, "ce", sigma2=0.01, temperature=0.05, fused=False), _ref, eps=1e-10)
_e.requires_grad_(True)
assert torch.autograd.gradcheck(lambda e: cpfs_loss(e, _fl, "ce", sigma2=0.01, temperature=0.05), (_e,))
test_eq(float(cpfs_loss(_e, _fl, "ce", sigma2=0.01, temperature=1.0)), float(cpfs_loss(_e, _fl, "ce", sigma2=0.01)))
with warnings.catch_warnings(record=True) as _w:   # until 0.1.0 the bandwidth was given as sigma = σ: still accepted, squared, with a warning
    warnings.simplefilter("always")
    test_eq(float(cpfs_loss(_e, _fl, "ce", sigma=0.1)), float(cpfs_loss(_e, _fl, "ce", sigma2=0.1 ** 2)))
test_eq([w.category for w in _w], [DeprecationWarning])
test_fail(lambda: cpfs_loss(_e, _fl, "kta", temperature=0.5), contains="invariant")


# %% [markdown]
# ## Sparse hypercolumns (section 3.2.3)
#
# The embedding network is a hypercolumn head on a CNN backbone: for a pixel $p$, the activations of
# several layers are interpolated at $p$'s position and concatenated, so the embedding sees both the
# fine detail of early layers and the context of late ones. An MLP with one hidden layer (1024 units,
# ReLU) maps the hypercolumn to $D = 16$ dimensions, L2-normalised. Training uses the *sparsification
# trick*: the loss is computed at only $N$ random pixels per image (512 in the thesis), which saves
# memory and decorrelates the samples. For AlexNet the hypercolumn is conv1, pool1, conv3, pool5 and
# fc7 (section 3.3.1; activations after ReLU, as in the thesis' Caffe model where the ReLUs run in
# place).
#
# **Coordinate convention.** Pixel locations are integer `(x, y)` pixel indices of the input image
# (`xy[..., 0]` = column, `xy[..., 1]` = row). A unit $i$ of a feature map looks at the input around the
# centre of its receptive field, $c + i s$ in pixel indices, with the stride $s$ and the first unit's
# centre $c$ that `motion_nbs.models.receptive_fields` measures (table 5.1). So pixel $x$ is read at
# cell coordinate $(x - c)/s$, by bilinear interpolation (`grid_sample`, border values outside): a
# pixel at a unit's centre gets exactly that unit's value. The centres are not where a naive
# "cell $i$ covers $[is, (i+1)s)$" layout puts them: in the appendix-A AlexNet, padding shifts conv3's
# first centre to pixel 14 and pool5's to 30 instead of 7.5 and 15.5 — 0.4 and 0.45 of a cell.
# Without a measured field, `sample_features` assumes that naive layout ($c = (s - 1)/2$). The flow needs
# no interpolation: it is read at the same integer pixels.

# %%
#| export
def sample_pixels(batch: int, num_pixels: int, height: int, width: int,
                  generator=None,  # a `torch.Generator` (seeded) or None
                  device=None) -> torch.Tensor:
    """`num_pixels` distinct random pixel locations per image, uniformly, as integer (x, y).

    Shape: returns `(batch, num_pixels, 2)` long."""
    if num_pixels > height * width:
        raise ValueError(f"cannot sample {num_pixels} distinct pixels from a {height}x{width} image ({height * width} pixels)")
    if num_pixels < 2: raise ValueError(f"num_pixels must be at least 2 (pairs of pixels), got {num_pixels}")
    # the N largest of H·W uniform keys: a uniform N-subset in random order, drawn where the generator lives
    # (or on `device`), without sorting all H·W keys
    where = generator.device if generator is not None else device
    idx = torch.rand(batch, height * width, generator=generator, device=where).topk(num_pixels, dim=1).indices
    return torch.stack([idx % width, idx // width], dim=-1).to(device)

def gather_pixels(dense: torch.Tensor,  # `(B,C,H,W)` a per-pixel map (flow, masks as float)
                  xy: torch.Tensor  # `(B,N,2)` integer pixel locations (x, y)
                 ) -> torch.Tensor:
    """Values of a dense map at integer pixel locations.

    Shape: `(B,C,H,W)`, `(B,N,2)` → `(B,N,C)`."""
    b, c, h, w = dense.shape
    flat = (xy[..., 1] * w + xy[..., 0]).to(dense.device)
    return dense.flatten(2).gather(2, flat[:, None].expand(b, c, -1)).transpose(1, 2)

def sample_features(features: torch.Tensor,  # `(B,C,h,w)` a feature map covering the image
                    xy: torch.Tensor,  # `(B,N,2)` pixel locations (x, y) in the input image
                    image_size,  # (H, W) of the input image
                    field=None  # ((cy, cx), (sy, sx)): the first unit's field centre and the stride, in input pixels;
                                # None: centre (s - 1)/2 with s = H/h, W/w
                   ) -> torch.Tensor:
    """Bilinear interpolation of a feature map at input-pixel locations: pixel x is read at cell coordinate (x − c)/s.

    Shape: `(B,C,h,w)`, `(B,N,2)` → `(B,N,C)`."""
    (H, W), (h, w) = image_size, features.shape[-2:]
    (cy, cx), (sy, sx) = field if field is not None else (((H / h - 1) / 2, (W / w - 1) / 2), (H / h, W / w))
    u = (xy[..., 0].to(features.dtype) - cx) / sx   # cell coordinates: unit i sits at i
    v = (xy[..., 1].to(features.dtype) - cy) / sy
    g = torch.stack([(2 * u + 1) / w - 1, (2 * v + 1) / h - 1], dim=-1)   # grid_sample's units, align_corners=False
    out = F.grid_sample(features, g[:, :, None].to(features.device), mode="bilinear", padding_mode="border", align_corners=False)
    return out[..., 0].transpose(1, 2)


# %%
_img = torch.arange(2 * 3 * 4 * 5.0).view(2, 3, 4, 5)
_xy = sample_pixels(2, 20, 4, 5, torch.Generator().manual_seed(0))
test_eq(sorted((_xy[0, :, 1] * 5 + _xy[0, :, 0]).tolist()), list(range(20)))      # all 20 distinct pixels
test_eq(gather_pixels(_img, _xy), sample_features(_img, _xy, (4, 5)))             # same grid: exact
# A stride-2 map [[2.5, 4.5], [10.5, 12.5]]: pixel (1, 1) is read at cell coordinate (1.5/2 − 0.5) = 0.25 in
# both axes, i.e. weights 0.75/0.25; pixel (0, 0) falls before the first centre and takes the border value.
_half = F.avg_pool2d(torch.arange(16.0).view(1, 1, 4, 4), 2)
test_close(sample_features(_half, torch.tensor([[[1, 1], [0, 0]]]), (4, 4))[0, :, 0],
           torch.tensor([0.75 * 0.75 * 2.5 + 0.75 * 0.25 * (4.5 + 10.5) + 0.25 * 0.25 * 12.5, 2.5]))
_f = torch.arange(12.0).view(1, 1, 3, 4)                        # a stride-8 map whose first unit is centred on pixel (6, 6)
test_close(sample_features(_f, torch.tensor([[[6, 6], [14, 22], [30, 6]]]), (24, 32), ((6, 6), (8, 8)))[0, :, 0],
           torch.tensor([0.0, 9.0, 3.0]), eps=1e-5)              # at a unit's centre: that unit (rows, columns 0,0; 2,1; 0,3)
test_close(sample_features(_f, torch.tensor([[[10, 6]]]), (24, 32), ((6, 6), (8, 8))), torch.tensor([[[0.5]]]))  # halfway
test_fail(lambda: sample_pixels(1, 21, 4, 5), contains="cannot sample 21 distinct pixels")

# %% [markdown]
# The head itself. It takes any backbone whose layers `motion_nbs.models.layer_outputs` can read, and
# infers the hypercolumn's width from one dry run.

# %%
#| export
ALEXNET_HYPERCOLUMN = ("relu1", "pool1", "relu3", "pool5", "relu7")  # conv1, pool1, conv3, pool5, fc7 after ReLU

class SparseHypercolumn(nn.Module):
    "A backbone with a sparse hypercolumn MLP head: image + pixel locations → per-pixel outputs."
    def __init__(self, backbone: nn.Module,  # the CNN (e.g. `AlexNetCPFS`)
                 layers=ALEXNET_HYPERCOLUMN,  # backbone layers concatenated into the hypercolumn
                 out_dim: int = 16,  # D: embedding size (16 in the thesis)
                 hidden: int = 1024,  # hidden units of the MLP (1024 in the thesis)
                 normalize: bool = True,  # L2-normalise the outputs (embeddings)
                 probe_size: int = 128):  # input size of the dry run that measures the layers' widths
        super().__init__()
        self.backbone, self.layers, self.normalize = backbone, tuple(layers), normalize
        was = backbone.training
        backbone.eval()
        with torch.no_grad():
            p = next(backbone.parameters())
            feats = layer_outputs(backbone, torch.zeros(1, 3, probe_size, probe_size, dtype=p.dtype, device=p.device), self.layers)
        backbone.train(was)
        self.widths = [feats[n].shape[1] for n in self.layers]
        rf = receptive_fields(backbone, probe_size)
        self.fields = {n: (rf[n].center, rf[n].stride) if n in rf else None for n in self.layers}
        self.mlp = nn.Sequential(nn.Linear(sum(self.widths), hidden), nn.ReLU(), nn.Linear(hidden, out_dim))

    def sample(self, feats: dict, xy, image_size):
        "The hypercolumns at `xy` of the layers' feature maps `feats`, each read at its units' field centres."
        return torch.cat([sample_features(feats[n], xy, image_size, self.fields[n]) for n in self.layers], dim=-1)

    def hypercolumns(self, image, xy):
        "Shape: `(B,3,H,W)`, `(B,N,2)` → `(B,N,ΣC)`."
        return self.sample(layer_outputs(self.backbone, image, self.layers), xy, image.shape[-2:])

    def head(self, hyper):
        out = self.mlp(hyper)
        return F.normalize(out, dim=-1) if self.normalize else out

    def forward(self, image, xy):
        "Shape: image `(B,3,H,W)`, xy `(B,N,2)` → `(B,N,out_dim)`."
        check_image("SparseHypercolumn", image, channels=3)
        if xy.shape[0] != image.shape[0]: raise ValueError(f"xy has {xy.shape[0]} images, image has {image.shape[0]}")
        return self.head(self.hypercolumns(image, xy))

    def head_args(self) -> dict:
        "The constructor arguments besides the backbone (stored with the weights, so `load_cpfs` can rebuild the head)."
        return dict(layers=list(self.layers), out_dim=self.mlp[-1].out_features, hidden=self.mlp[0].out_features,
                    normalize=self.normalize)

@torch.no_grad()
def dense_embedding(model: SparseHypercolumn,  # a trained head
                    image: torch.Tensor,  # `(B,3,H,W)` images
                    chunk: int = 8192  # pixels per MLP call (memory)
                   ) -> torch.Tensor:
    """The head's output at every pixel (for figures): backbone once, MLP over all pixels in chunks.

    Shape: `(B,3,H,W)` → `(B,out_dim,H,W)`."""
    b, _, h, w = image.shape
    feats = layer_outputs(model.backbone, image, model.layers)
    ys, xs = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    xy_all = torch.stack([xs.flatten(), ys.flatten()], -1)[None].expand(b, -1, -1).to(image.device)
    outs = []
    for s in range(0, h * w, chunk):
        xy = xy_all[:, s:s + chunk]
        outs.append(model.head(model.sample(feats, xy, (h, w))))
    return torch.cat(outs, 1).transpose(1, 2).reshape(b, -1, h, w)


# %% [markdown]
# On the appendix-A AlexNet (here the quarter-width variant of the CPU presets): the hypercolumn has
# the widths of relu1, pool1, relu3, pool5 and relu7; embeddings are unit vectors; the dense embedding
# agrees with the sparse one at the sampled pixels.

# %%
from motion_nbs.models import alexnet_cpfs_small

# %%
torch.manual_seed(0)
head = SparseHypercolumn(alexnet_cpfs_small(batchnorm=True)).eval()
test_eq(head.widths, [24, 24, 96, 64, 64])
_im = torch.rand(2, 3, 96, 128)
_xy = sample_pixels(2, 16, 96, 128, torch.Generator().manual_seed(0))
_e = head(_im, _xy)
test_eq(_e.shape, (2, 16, 16))
test_close(_e.norm(dim=-1), torch.ones(2, 16), eps=1e-5)
_d = dense_embedding(head, _im)
test_close(gather_pixels(_d, _xy), _e, eps=1e-5)
test_eq(head.fields["pool5"], ((30, 30), (32, 32)))                      # pool5's units: centres 30 + 32i
_feats = layer_outputs(head.backbone, _im, head.layers)
_at = torch.tensor([[[30 + 32 * 2, 30 + 32 * 1]]]).expand(2, 1, 2)      # the centre of pool5's unit (row 1, column 2)
test_close(head.sample(_feats, _at, (96, 128))[:, 0, 24 + 24 + 96:24 + 24 + 96 + 64], _feats["pool5"][:, :, 1, 2], eps=1e-6)

# %% [markdown]
# ## The direct flow-classification baseline (section 3.3.5)
#
# The thesis' hypothesis is that matching flow *similarities* is a better teacher than predicting the
# flow itself. The baseline keeps everything — backbone, hypercolumn, MLP — but predicts, per sampled
# pixel, the class of each flow component among 16 uniform bins of the eq-3.8-normalised flow
# (`flow_to_classes`, chapter 01) with a softmax cross-entropy for $x$ and one for $y$. (Direct $L^2$
# regression did worse in the thesis' preliminary experiments.) The thesis trained it with a larger
# initial learning rate, 0.01.

# %%
#| export
BASELINE_LR = 0.01  # section 3.3.5: "a faster initial learning rate of 0.01"

class FlowClassificationBaseline(SparseHypercolumn):
    "The same backbone and sparse hypercolumn head, predicting 16-way classes of the x and y flow per pixel."
    def __init__(self, backbone: nn.Module, layers=ALEXNET_HYPERCOLUMN, num_bins: int = 16, hidden: int = 1024):
        super().__init__(backbone, layers, out_dim=2 * num_bins, hidden=hidden, normalize=False)
        self.num_bins = num_bins

    def forward(self, image, xy):
        "Shape: `(B,3,H,W)`, `(B,N,2)` → logits `(B,N,2,num_bins)`."
        out = super().forward(image, xy)
        return out.view(*out.shape[:-1], 2, self.num_bins)

    def head_args(self) -> dict:
        return dict(layers=list(self.layers), num_bins=self.num_bins, hidden=self.mlp[0].out_features)

@full_precision
def flow_classification_loss(logits: torch.Tensor,  # `(B,N,2,num_bins)` from `FlowClassificationBaseline`
                             flow: torch.Tensor,  # `(B,N,2)` flow in pixels at the same pixels
                             max_flow: float = 56.0  # M of eq 3.8
                            ) -> torch.Tensor:
    "Mean softmax cross-entropy of the x and y flow classes. Shape: → `()`."
    num_bins = logits.shape[-1]
    if logits.shape[:-1] != flow.shape: raise ValueError(f"logits {tuple(logits.shape)} do not match flow {tuple(flow.shape)}")
    check_values("flow", flow)
    target = flow_to_classes(flow.transpose(-1, -2)[..., None], num_bins, max_flow)[..., 0].transpose(-1, -2)
    return F.cross_entropy(logits.reshape(-1, num_bins), target.reshape(-1))


# %% [markdown]
# ## Judging embeddings without labels in training
#
# The thesis judges CPFS by transfer (chapter 3b). Two quicker views, used by the training notebook:
#
# - **Grouping quality.** Embeddings should be similar for pixels of the same object and dissimilar
#   across objects. On frames with instance masks (the synthetic scenes), `grouping_auc` samples pixels,
#   scores every pair by the cosine similarity of their embeddings, and reports the ROC AUC of that score
#   for separating same-instance pairs (background counts as one instance) from different-instance
#   pairs: 0.5 is chance, 1 a perfect grouping.
# - **Pictures.** `embedding_to_rgb` projects 16-D embeddings to colours with a fixed random
#   $16 \to 3$ projection, as in the thesis' fig 3.4.

# %%
#| export
@torch.no_grad()
def grouping_auc(embed,  # callable (images `(B,3,H,W)`, xy `(B,N,2)`) → embeddings `(B,N,D)`
                 images: torch.Tensor,  # `(B,3,H,W)` held-out frames
                 instances: torch.Tensor,  # `(B,H,W)` long instance ids (0 = background, one group)
                 num_pixels: int = 512,  # pixels sampled per image
                 seed: int = 0) -> float:
    "ROC AUC of embedding cosine similarity for same- vs different-instance pixel pairs (pooled over images)."
    from sklearn.metrics import roc_auc_score
    b, _, h, w = images.shape
    if instances.shape != (b, h, w): raise ValueError(f"instances must have shape {(b, h, w)}, got {tuple(instances.shape)}")
    xy = sample_pixels(b, min(num_pixels, h * w), h, w, torch.Generator().manual_seed(seed), images.device)
    e = F.normalize(embed(images, xy).float(), dim=-1)
    ids = gather_pixels(instances[:, None].float(), xy)[..., 0]
    sim = e @ e.transpose(1, 2)
    same = ids[:, :, None] == ids[:, None, :]
    iu = torch.triu_indices(xy.shape[1], xy.shape[1], offset=1)
    scores, labels = sim[:, iu[0], iu[1]].flatten(), same[:, iu[0], iu[1]].flatten()
    if labels.all() or not labels.any(): raise ValueError("need both same- and different-instance pairs to compute an AUC")
    return float(roc_auc_score(labels.cpu().numpy(), scores.cpu().numpy()))

def embedding_to_rgb(emb: torch.Tensor,  # `(B,D,H,W)` or `(D,H,W)` dense embeddings
                     seed: int = 0  # seeds the random D→3 projection
                    ) -> torch.Tensor:
    """Colour image of embeddings through a fixed random D→3 projection, min–max scaled per image (fig 3.4).

    Shape: `(…,D,H,W)` → `(…,3,H,W)` in [0,1]."""
    d = emb.shape[-3]
    proj = torch.randn(3, d, generator=torch.Generator().manual_seed(seed)).to(emb)
    rgb = torch.einsum("cd,...dhw->...chw", proj, emb)
    lo = rgb.amin(dim=(-3, -2, -1), keepdim=True); hi = rgb.amax(dim=(-3, -2, -1), keepdim=True)
    return (rgb - lo) / (hi - lo).clamp_min(1e-12)


# %%
_inst = torch.zeros(2, 8, 8, dtype=torch.long); _inst[:, :, 4:] = 1
_oracle = lambda im, xy: F.one_hot(gather_pixels(_inst[:, None].float(), xy)[..., 0].long(), 2).float()
test_eq(grouping_auc(_oracle, torch.rand(2, 3, 8, 8), _inst, num_pixels=32), 1.0)      # perfect grouping
_noise = lambda im, xy: torch.randn(xy.shape[0], xy.shape[1], 16, generator=torch.Generator().manual_seed(0))
assert abs(grouping_auc(_noise, torch.rand(2, 3, 8, 8), _inst, num_pixels=64) - 0.5) < 0.1  # chance
test_eq(embedding_to_rgb(torch.randn(2, 16, 5, 6)).shape, (2, 3, 5, 6))


# %% [markdown]
# ## Training
#
# Everything the training notebook `03_cpfs_train.ipynb` and the command line
# (`motion_nbs_train --task motion_nbs.cpfs:train --loss ce ...`) run is here, so that the experiment
# is one call. `CPFSTrainer` bundles the head, the loss (and its learnable σ) and the pixel sampling
# into one module whose forward pass returns the loss — the form the learner (and DDP) expects.
#
# **Objectives.** `CPFS_OBJECTIVES` registers what can be trained: each entry names the head it trains
# and builds the criterion applied to the head's outputs at the sampled pixels. The three CPFS losses
# train a `SparseHypercolumn` with a `CPFSLoss`; the baseline trains a `FlowClassificationBaseline`
# (the same head with 32 outputs) with `flow_classification_loss`. Adding an objective is adding an
# entry; nothing else in the training code names a loss.

# %%
#| export
@dataclass(frozen=True)
class CPFSObjective:
    "A training objective of chapter 3: the head it trains and its criterion."
    head: type  # a `SparseHypercolumn` class, built as head(backbone)
    criterion: Callable  # config → criterion(outputs at the sampled pixels, flow `(B,N,2)`) → loss

def _cpfs_criterion(kind: str):
    def build(cfg):
        learned = cfg.sigma == "learned"
        return CPFSLoss(kind, sigma2=cfg.sigma_init if learned else cfg.sigma, learn_sigma=learned, temperature=cfg.temperature)
    return build

CPFS_OBJECTIVES = {**{k: CPFSObjective(SparseHypercolumn, _cpfs_criterion(k)) for k in CPFS_LOSSES},
                   "flow_cls": CPFSObjective(FlowClassificationBaseline, lambda cfg: flow_classification_loss)}
CPFS_TRAIN_LOSSES = tuple(CPFS_OBJECTIVES)

# %% [markdown]
# **Settings.** A run is one `CPFSConfig`: the learner's settings (chapter 02c: steps, batch, learning
# rate, seed, device, mixed precision, workers, output folder, validation cadence) and chapter 3's own —
# the objective, the pixels per image, σ, the data and the network. `CPFSConfig.from_preset` fills it
# from a preset:
#
# | | `cpu` | `paper` (section 3.3.3) |
# |---|---|---|
# | network | appendix-A AlexNet, ¼ of the channels (`alexnet_cpfs_small`) | appendix-A AlexNet |
# | batch, pixels, crop | 16, 256, 128×128 | 96, 512, 224×224 |
# | steps | 600 | 200k with early stopping (patience 10 validations) |
# | optimiser | Adam 1e-4 (baseline 1e-3) | Adam 1e-4 (baseline 0.01) |
# | validation | 32 held-out pairs, every 100 steps | 5,000 held-out pairs, every 1,000 steps |
#
# Both use parameter-free batch normalisation, folded into the convolutions after training, and the
# thesis' augmentation (scale 1.01–1.5×, crop, flip, colour). Deviations in the `cpu` preset, for a
# run of minutes on two cores: the smaller network, fewer pixels, a pool of 1024 rendered scenes
# reused with augmentation rather than fresh data, and a baseline learning rate of 1e-3 (0.01 diverges
# in so few steps with a quarter-width network). On a GPU (`device=None` picks it) training runs in
# bfloat16 autocast by default (`amp`), with the kernels and losses kept in float32.

# %%
#| export
CPFS_MODELS = ("alexnet_cpfs", "alexnet_cpfs_small")
CPFS_PRESETS = {
    "cpu": dict(model="alexnet_cpfs_small", num_iters=600, batch_size=16, num_pixels=256, image_size=128, render_size=160,
                pool_size=1024, lr={"flow_cls": 1e-3, "*": 1e-4}, valid_every=100, checkpoint_every=100, patience=None,
                num_valid=32, sigma={"kta": THESIS_SIGMA2, "*": "learned"}, sigma_lr=1e-2),
    "paper": dict(model="alexnet_cpfs", num_iters=200_000, batch_size=96, num_pixels=512, image_size=224, render_size=256,
                  pool_size=None, lr={"flow_cls": BASELINE_LR, "*": 1e-4}, valid_every=1000, checkpoint_every=1000,
                  patience=10, num_valid=5000, sigma={"kta": THESIS_SIGMA2, "*": "learned"}, sigma_lr=1e-2),
}

@dataclass
class CPFSConfig(ExperimentConfig):
    "One CPFS training run (chapter 3): the learner's settings, the objective, pixels, σ, data and network."
    loss: str = "ce"  # "kta", "ce", "ce_rev" (eq 3.3–3.7) or "flow_cls" (direct flow classification, section 3.3.5)
    data: str = "synthetic"  # "synthetic" (rendered scenes of `world`), "videos" (the sample videos) or a folder of flow-pair shards
    world: str = "shapes"  # the renderer's preset for data="synthetic" (chapter 02a): "shapes", "objects", ...
    model: str = "alexnet_cpfs_small"  # "alexnet_cpfs" (appendix A) or "alexnet_cpfs_small" (¼ of the channels)
    num_pixels: int = 256  # N: pixels sampled per image for the loss (512 in the thesis)
    sigma: float | str = "learned"  # RBF bandwidth: "learned" (CE, CE-rev) or a fixed σ² (KTA: the thesis' 0.0036)
    sigma_init: float = NEUTRAL_SIGMA2  # where a learned σ² starts
    sigma_lr: float = 1e-2  # Adam's learning rate for log σ (the network's is `lr`)
    temperature: float = 1.0  # CE / CE-rev: softmax over K_φ / temperature; 1 is the thesis (K_φ in [-¼, ¼]), below 1 an extension
    render_size: int = 160  # side of rendered scenes, before the augmentation rescales and crops them
    shuffle_flow: bool = False  # a null control (chapter 6): each training frame gets another frame's flow (`ShuffledFlow`); validation keeps its own
    out_dir: str | None = field(default_factory=lambda: str(runs_dir("cpfs", create=False)))  # checkpoints, metrics, model.pt, results.json (None: no files); default `core.runs_dir("cpfs")`

    PRESETS: ClassVar[dict] = CPFS_PRESETS

    def validate(self):
        super().validate()
        check_choice("loss", self.loss, CPFS_TRAIN_LOSSES); check_choice("model", self.model, CPFS_MODELS)
        check_choice("world", self.world, RENDER_PRESETS)
        if self.data not in ("synthetic", "videos") and not Path(str(self.data)).expanduser().exists():
            raise ValueError(f"data={self.data!r}; valid: 'synthetic', 'videos', or an existing folder of flow-pair shards")
        if self.image_size < 64: raise ValueError(f"image_size={self.image_size}; the network needs crops of at least 64 pixels")
        check_int("render_size", self.render_size, self.image_size)
        if not 2 <= check_int("num_pixels", self.num_pixels, 2) <= self.image_size ** 2:
            raise ValueError(f"num_pixels={self.num_pixels}; expected 2..{self.image_size ** 2} for {self.image_size}px crops")
        if self.sigma != "learned":
            try: self.sigma = float(self.sigma)
            except (TypeError, ValueError): raise ValueError(f"sigma={self.sigma!r}; valid: 'learned' or a positive number (σ²)") from None
            if not self.sigma > 0: raise ValueError(f"sigma={self.sigma!r}; expected σ² > 0")
        elif self.loss == "kta":
            raise ValueError("sigma='learned' with loss='kta': KTA rewards collapsed embeddings as σ grows (chapter 3, "
                             "'A learnable bandwidth'); give a fixed σ², e.g. the thesis' 0.0036")
        check_number("sigma_init", self.sigma_init); check_number("sigma_lr", self.sigma_lr); check_number("temperature", self.temperature)
        if self.temperature != 1 and self.loss not in ("ce", "ce_rev"):
            raise ValueError(f"temperature={self.temperature} with loss={self.loss!r}: a temperature applies to the CE and CE-rev softmaxes only")
        if not isinstance(self.shuffle_flow, bool): raise ValueError(f"shuffle_flow={self.shuffle_flow!r}; valid: True, False")

    def to_dict(self) -> dict:
        "As `ExperimentConfig.to_dict`, without `shuffle_flow` when it is off: runs saved before the option resume and compare equal."
        d = super().to_dict()
        if not self.shuffle_flow: d.pop("shuffle_flow")
        return d

    @classmethod
    def _derived(cls, values: dict, given: dict) -> dict:
        if "image_size" in given and "render_size" not in given:  # rendered scenes must be larger than the crops
            values["render_size"] = max(values["render_size"], round(given["image_size"] * 1.25))
        return values


# %%
test_eq(CPFSConfig.from_preset(loss="kta").batch_size, 16)
test_eq(CPFSConfig.from_preset(loss="flow_cls").lr, 1e-3)
test_eq((CPFSConfig.from_preset("paper", batch_size=32).batch_size, CPFSConfig.from_preset("paper", loss="flow_cls").lr), (32, 0.01))
test_eq(CPFSConfig.from_preset(image_size=256).render_size, 320)
test_eq(CPFSConfig.from_preset(sigma="0.01").sigma, 0.01)          # command-line strings are numbers
test_eq((CPFSConfig.from_preset(loss="kta").sigma, CPFSConfig.from_preset(loss="ce").sigma), (THESIS_SIGMA2, "learned"))
test_fail(lambda: CPFSConfig.from_preset(loss="kta", sigma="learned"), contains="KTA rewards collapsed embeddings")
test_fail(lambda: CPFSConfig.from_preset(loss="l2"), contains="valid: kta, ce, ce_rev, flow_cls")
test_fail(lambda: CPFSConfig.from_preset(data="/no/such/folder"), contains="valid: 'synthetic', 'videos'")
test_fail(lambda: CPFSConfig.from_preset(num_pixels=10**6), contains="num_pixels=1000000")
test_fail(lambda: CPFSConfig.from_preset(sigma="big"), contains="'learned' or a positive number")
test_fail(lambda: CPFSConfig.from_preset(steps=10), contains="unknown setting(s) ['steps'] for CPFSConfig")
assert "shuffle_flow" not in CPFSConfig.from_preset().to_dict()      # off: stored as before the option, so saved runs still match
test_eq(CPFSConfig.from_preset(shuffle_flow=True).to_dict()["shuffle_flow"], True)


# %% [markdown]
# **Data.** Rendered pools are rendered once, up front (in `num_workers` processes), then reused with
# augmentation. Validation pairs are held out from the training data's own kind — rendered scenes of
# another seed (at the crop size), the last pairs of the sample videos and whole shards at the end of
# a shard folder (both centre-cropped; the thesis validated on 5,000 held-out real pairs) — and each
# process reads its share once, up front, and keeps it in memory (at the `paper` preset, 5,000
# float32 pairs of 224² are about 5 GB, divided among the processes).

# %%
#| export
class CPFSTrainer(nn.Module):
    "Head + loss + pixel sampling in one module: forward(image, flow) → the training loss."
    def __init__(self, net: nn.Module,  # a `SparseHypercolumn` (or `FlowClassificationBaseline`)
                 crit,  # a `CPFSLoss` (its σ may be learned) or `flow_classification_loss`
                 num_pixels: int = 512,  # N: pixels sampled per image (512 in the thesis)
                 sigma_lr: float | None = None):  # a learned σ's own learning rate (None: the network's)
        super().__init__()
        self.net, self.crit, self.num_pixels, self.sigma_lr = net, crit, num_pixels, sigma_lr

    def optimizer_groups(self) -> list:
        "Parameter groups for the learner's Adam: the network, and a learned σ with its own learning rate."
        own = [p for p in self.crit.parameters()] if isinstance(self.crit, nn.Module) else []
        groups = [{"params": list(self.net.parameters())}]
        if own: groups.append({"params": own, **({} if self.sigma_lr is None else {"lr": self.sigma_lr})})
        return groups

    def forward(self, image, flow):
        "Shape: image `(B,3,H,W)`, flow `(B,2,H,W)` in pixels → `()`. Pixels drawn on the image's device from its global RNG."
        if image.shape[0] != flow.shape[0] or image.shape[-2:] != flow.shape[-2:]:
            raise ValueError(f"image {tuple(image.shape)} and flow {tuple(flow.shape)} differ in batch or spatial size")
        b, _, h, w = image.shape
        xy = sample_pixels(b, self.num_pixels, h, w, device=image.device)
        return self.crit(self.net(image, xy), gather_pixels(flow, xy))

class ShuffledFlow(torch.utils.data.Dataset):
    """A null control for "learned from motion": item i's frames with the flow of item π(i), π a fixed permutation
    without fixed points (one cycle through all items, drawn from `seed`). The flow keeps its statistics; what it
    says about *this* frame is gone."""
    def __init__(self, base,  # a data set (or list) of dicts with `image` and `flow` of one size
                 seed: int = 0):
        if len(base) < 2: raise ValueError(f"ShuffledFlow needs at least 2 items to give each another's flow, got {len(base)}")
        order = torch.randperm(len(base), generator=torch.Generator().manual_seed(seed))
        self.base, self.partner = base, torch.empty_like(order)
        self.partner[order] = order.roll(-1)   # order[k] takes the flow of order[k + 1]
    def __len__(self): return len(self.base)
    def __getitem__(self, i):
        return {**self.base[i], "flow": self.base[int(self.partner[i])]["flow"]}

def _heldout_pairs(pairs, cfg, progress: bool, crop: bool = True):
    "The validation view of held-out pairs (centre crops), this process's share read once, up front, and cached."
    view = ImageFlowSamples(pairs, (lambda s: paired_centre_crop(s, cfg.image_size)) if crop else None, cache=True)
    return view.fill(cfg.num_workers, progress, "validation pairs", process_share(len(pairs)))

def train_data(cfg: CPFSConfig):
    "(training set, validation set) of a `CPFSConfig`."
    aug, r, show = PairedAugment(crop_size=cfg.image_size, colour=True), cfg.render_size, cfg.progress and is_main_process()
    null = (lambda ds: ShuffledFlow(ds, cfg.seed + 4_000_003)) if cfg.shuffle_flow else (lambda ds: ds)
    if cfg.data == "synthetic":
        if cfg.pool_size is not None: pool = rendered_pool(cfg.world, cfg.pool_size, cfg.seed, (r, r), cfg.num_workers, show)
        else: pool = SceneDataset(cfg.world, length=cfg.num_iters * cfg.batch_size, seed=cfg.seed, size=(r, r))   # fresh scenes
        valid = SceneDataset(cfg.world, length=cfg.num_valid, seed=cfg.seed + 1_000_003, size=(cfg.image_size,) * 2)
        return ImageFlowSamples(null(pool), aug), _heldout_pairs(valid, cfg, show, crop=False)
    if cfg.data == "videos":
        pairs = video_flow_pairs(SAMPLE_VIDEOS, r, cfg.seed)
        if len(pairs) <= cfg.num_valid: raise ValueError(f"num_valid={cfg.num_valid}; the sample videos give only {len(pairs)} pairs")
        return ImageFlowSamples(null(pairs[:-cfg.num_valid]), aug), _heldout_pairs(pairs[-cfg.num_valid:], cfg, show)
    train, valid = split_heldout(FlowPairDataset(cfg.data), cfg.num_valid)
    return ImageFlowSamples(null(train), aug), _heldout_pairs(valid, cfg, show)

def build_cpfs_model(cfg: CPFSConfig) -> CPFSTrainer:
    "The network and loss of a `CPFSConfig` (seeded, so every objective starts from the same weights)."
    seed_everything(cfg.seed)
    objective = CPFS_OBJECTIVES[cfg.loss]
    return CPFSTrainer(objective.head(create_model(cfg.model, batchnorm=True)), objective.criterion(cfg), cfg.num_pixels, cfg.sigma_lr)

def heldout_scenes(cfg: CPFSConfig, num: int = 16) -> dict:
    "Held-out rendered frames of the run's world for evaluation and figures: image, flow, instances, categories (on the CPU)."
    ds = SceneDataset(cfg.world, length=num, seed=cfg.seed + 2_000_003, size=(cfg.image_size,) * 2)
    items = [ds[i] for i in range(num)]
    return {k: torch.stack([it[k] for it in items]) for k in ("image", "flow", "instances", "categories")}

def _embedder(net):
    "Embedding callable for `grouping_auc`: the CPFS head, or the baseline's logits as features."
    return lambda im, xy: net(im, xy).flatten(2)


# %% [markdown]
# `shuffle_flow=True` trains the same network with the same loss and steps on frames whose flow belongs to another
# frame (`ShuffledFlow`): the null control of chapter 6 that separates "learned from motion" from "learned from being
# trained on these images". Each item gets one other item's flow, never its own:

# %%
_items = [dict(image=torch.full((3, 4, 4), float(k)), flow=torch.full((2, 4, 4), float(k))) for k in range(7)]
_sh = ShuffledFlow(_items, seed=3)
_partners = [int(_sh[k]["flow"][0, 0, 0]) for k in range(7)]
test_eq(sorted(_partners), list(range(7)))                             # every flow used once
assert all(p != k for k, p in enumerate(_partners))                    # none kept its own
test_eq([float(_sh[k]["image"][0, 0, 0]) for k in range(7)], [float(k) for k in range(7)])   # the frames stay in place
test_eq(_partners, [int(ShuffledFlow(_items, seed=3)[k]["flow"][0, 0, 0]) for k in range(7)])  # seeded
test_fail(lambda: ShuffledFlow(_items[:1]), contains="at least 2 items")
_tr, _ = train_data(CPFSConfig.from_preset("cpu", world="objects", shuffle_flow=True, pool_size=4, num_valid=2, image_size=64, out_dir=None))
assert isinstance(_tr.base, ShuffledFlow) and len(_tr) == 4


# %% [markdown]
# `train` runs one experiment end to end: data, model, `fit` (checkpoints, resume, early stopping,
# device and precision, DDP under torchrun), folding of the batch normalisation, the grouping AUC of
# the trained network and of the same network at its random initialisation — on the training device —
# and, from the main process only, a `results.json` plus the folded weights `model.pt` in `out_dir`.

# %%
#| exporti
def _trainer_loss(model, batch): return model(batch["image"], batch["flow"])

def _save_run(cfg: CPFSConfig, net: SparseHypercolumn, res: dict):
    out = Path(cfg.out_dir)
    atomic_save({"backbone": {k: v.cpu() for k, v in net.backbone.state_dict().items()},
                 "head": {k: v.cpu() for k, v in net.mlp.state_dict().items()},
                 "meta": {"model": cfg.model, "loss": cfg.loss, "folded": True, "head_args": net.head_args(),
                          "image_size": cfg.image_size}}, out / "model.pt")
    with atomic_write(out / "results.json") as tmp: tmp.write_text(json.dumps(res, indent=1))

def _evaluate(cfg: CPFSConfig, trainer: CPFSTrainer, init_state: dict) -> tuple:
    "The folded trained head, the same head at its initial weights, the held-out frames, and both grouping AUCs."
    net = trainer.eval().net
    net.backbone = fold_batchnorm(net.backbone)
    device = next(net.parameters()).device
    random = build_cpfs_model(cfg); random.load_state_dict(init_state)
    rnet = random.to(device).eval().net
    held = heldout_scenes(cfg)
    im, inst = held["image"].to(device), held["instances"].to(device)
    aucs = {"auc_trained": grouping_auc(_embedder(net), im, inst, seed=cfg.seed),
            "auc_random": grouping_auc(_embedder(rnet), im, inst, seed=cfg.seed)}
    return net, rnet, held, aucs


# %%
#| export
def train(config: CPFSConfig = None,  # the run's settings (default: the `cpu` preset)
          **overrides  # `CPFSConfig` fields to set (None keeps the value), e.g. loss="kta", num_iters=100, device="cuda"
         ) -> dict:
    "Train a CPFS model (or the flow-classification baseline); returns results, the folded model and held-out frames."
    cfg = CPFSConfig.resolve(config, **overrides)
    init_distributed()
    trainer = build_cpfs_model(cfg)
    init_state = copy.deepcopy(trainer.state_dict())
    sigma2_initial = getattr(trainer.crit, "sigma2", None)
    train_ds, valid_ds = train_data(cfg)
    summary = fit(trainer, train_ds, _trainer_loss, valid_ds, cfg)
    net, rnet, held, aucs = _evaluate(cfg, trainer, init_state)
    res = dict(summary, config=cfg.to_dict(), sigma2_initial=sigma2_initial, sigma2_final=getattr(trainer.crit, "sigma2", None),
               **aucs, metrics_path=None if cfg.out_dir is None else str(Path(cfg.out_dir) / "metrics.jsonl"))
    if cfg.out_dir is not None and is_main_process(): _save_run(cfg, net, res)
    return dict(res, model=net, random_model=rnet, heldout=held)


# %% [markdown]
# `load_cpfs` rebuilds a trained network from the `model.pt` that `train` writes (the backbone with its
# batch normalisation folded, so it is the plain architecture with biases), for the transfer and
# visualisation chapters. The file loads with `weights_only=True`.

# %%
#| export
def load_cpfs(path  # a `model.pt` written by `train`, or the run folder holding it
             ):
    "The trained `SparseHypercolumn` (CPFS) or `FlowClassificationBaseline` (flow_cls) of a run, in eval mode."
    ckpt = load_model_file(path, ("backbone", "head", "meta"), "CPFS model", "03_cpfs_train")
    meta = ckpt["meta"]
    backbone = create_model(meta["model"], batchnorm=not meta["folded"])
    backbone.load_state_dict(ckpt["backbone"])
    args = meta.get("head_args") or _old_head_args(meta)
    model = CPFS_OBJECTIVES[meta["loss"]].head(backbone, **args)
    model.mlp.load_state_dict(ckpt["head"])
    model.meta = dict(meta)
    return model.eval()

def _old_head_args(meta: dict) -> dict:
    "Head arguments of a `model.pt` written before they were stored (the baseline's output is 2 × bins)."
    if meta["loss"] == "flow_cls": return dict(layers=meta["layers"], num_bins=meta["out_dim"] // 2, hidden=meta["hidden"])
    return dict(layers=meta["layers"], out_dim=meta["out_dim"], hidden=meta["hidden"], normalize=meta["normalize"])

def finished_run(config: CPFSConfig  # the run wanted; its `out_dir` is where to look
                ) -> bool:
    """Whether `config.out_dir` holds a finished run of exactly this configuration (all `num_iters` steps, every
    setting but the runtime ones equal), so that `load_cpfs(config.out_dir)` can stand in for `train(config)` —
    which would render its data and evaluate again before returning the same network."""
    out = None if config.out_dir is None else Path(config.out_dir)
    if out is None or not (out / "results.json").is_file() or not (out / "model.pt").is_file(): return False
    prev = json.loads((out / "results.json").read_text())
    return prev.get("steps") == config.num_iters and all(prev["config"].get(k) == v for k, v in config.to_dict().items()
                                                         if k not in type(config).RUNTIME)


# %%
with tempfile.TemporaryDirectory() as _d:
    torch.manual_seed(0)
    for _loss, _head in (("ce", SparseHypercolumn), ("flow_cls", FlowClassificationBaseline)):
        _m = _head(alexnet_cpfs_small(batchnorm=True)).eval()
        _m.backbone = fold_batchnorm(_m.backbone)
        atomic_save({"backbone": _m.backbone.state_dict(), "head": _m.mlp.state_dict(),
                     "meta": {"model": "alexnet_cpfs_small", "loss": _loss, "folded": True, "head_args": _m.head_args(),
                              "image_size": 128}}, Path(_d) / "model.pt")
        _l = load_cpfs(_d)
        _im, _xy = torch.rand(2, 3, 64, 64), sample_pixels(2, 10, 64, 64)
        test_eq(type(_l), _head)
        test_close(_l(_im, _xy), _m(_im, _xy), eps=1e-5)
    test_fail(lambda: load_cpfs(Path(_d) / "nope.pt"), contains="no such checkpoint")
    _cfg = CPFSConfig.from_preset("cpu", loss="ce", num_iters=7, out_dir=_d)   # model.pt is there (flow_cls's, written last)
    test_eq(finished_run(_cfg), False)                                          # no results.json yet
    Path(_d, "results.json").write_text(json.dumps({"steps": 7, "config": _cfg.to_dict()}))
    test_eq(finished_run(_cfg), True)
    test_eq(finished_run(CPFSConfig.from_preset("cpu", loss="ce", num_iters=8, out_dir=_d)), False)          # fewer steps than wanted
    test_eq(finished_run(CPFSConfig.from_preset("cpu", loss="ce", num_iters=7, lr=1e-3, out_dir=_d)), False)   # another setting
    test_eq(finished_run(CPFSConfig.from_preset("cpu", loss="ce", num_iters=7, out_dir=_d, device="cpu")), True)  # runtime only
    test_eq(finished_run(CPFSConfig.from_preset("cpu", loss="ce", num_iters=7)), False)                       # no out_dir


# %% [markdown]
# ## Figures

# %%
#| export
def show_embeddings(model: SparseHypercolumn, frames: dict, num_images: int = 4, seed: int = 0):
    "Fig 3.4: frames, embeddings as colours (random 16→3 projection), flow colour, instances. Returns the figure."
    import matplotlib.pyplot as plt
    n = min(num_images, len(frames["image"]))
    emb = embedding_to_rgb(dense_embedding(model.eval(), frames["image"][:n]), seed)
    rows = [("frame", frames["image"][:n]), ("embedding", emb), ("flow", flow_to_rgb(frames["flow"][:n]))]
    fig, axes = plt.subplots(4, n, figsize=(2.4 * n, 9.6), squeeze=False)
    for r, (name, ims) in enumerate(rows):
        for c in range(n): axes[r, c].imshow(ims[c].permute(1, 2, 0).clamp(0, 1).cpu().numpy())
        axes[r, 0].set_ylabel(name)
    for c in range(n): axes[3, c].imshow(frames["instances"][c].cpu().numpy(), cmap="tab10", interpolation="nearest")
    axes[3, 0].set_ylabel("instances")
    for ax in axes.flat: ax.set_xticks([]); ax.set_yticks([])
    fig.tight_layout()
    add_flow_key(fig)
    return fig

def show_kernel_rows(model: SparseHypercolumn, frames: dict, sigma2: float = THESIS_SIGMA2, num_images: int = 2, seed: int = 0):
    "Fig 3.2: for three pixels p, the rows K_f(p,·) and K_φ(p,·) as images, on fixed scales (K_f in [0, 1], K_φ in [−¼, ¼])."
    import matplotlib.pyplot as plt
    n = min(num_images, len(frames["image"]))
    emb = dense_embedding(model.eval(), frames["image"][:n])                    # (n, D, H, W)
    h, w = emb.shape[-2:]
    g = torch.Generator().manual_seed(seed)
    fig, axes = plt.subplots(2 * n, 5, figsize=(10.6, 5 * n), squeeze=False, gridspec_kw=dict(width_ratios=[1, 1, 1, 1, 0.06]))
    for i in range(n):
        fn = normalize_flow_log(frames["flow"][i]).flatten(1).T                  # (HW, 2)
        e = emb[i].flatten(1).T                                                   # (HW, D)
        axes[2 * i, 0].imshow(flow_to_rgb(frames["flow"][i]).permute(1, 2, 0).numpy()); axes[2 * i, 0].set_title("flow")
        axes[2 * i + 1, 0].imshow(embedding_to_rgb(emb[i], seed).permute(1, 2, 0).numpy()); axes[2 * i + 1, 0].set_title("embedding")
        for j, p in enumerate(torch.randint(0, h * w, (3,), generator=g).tolist()):
            kf = rbf_kernel(torch.cat([fn[p:p + 1], fn])[None], math.sqrt(sigma2))[0, 0, 1:].view(h, w)
            kp = cosine_kernel(torch.cat([e[p:p + 1], e])[None])[0, 0, 1:].view(h, w)
            for r, (k, name, lim) in enumerate(((kf, "$K_f$", (0, 1)), (kp, "$K_\\phi$", (-0.25, 0.25)))):
                ax = axes[2 * i + r, j + 1]
                im = ax.imshow(k.numpy(), cmap="viridis", vmin=lim[0], vmax=lim[1]); ax.plot([p % w], [p // w], "r+", ms=12, mew=2)
                ax.set_title(f"{name}(p{j + 1}, ·)")
                if j == 0: fig.colorbar(im, cax=axes[2 * i + r, 4], label=name)
    for ax in axes[:, :4].flat: ax.set_xticks([]); ax.set_yticks([])
    fig.tight_layout()
    add_flow_key(fig)
    return fig


# %% [markdown]
# Fig 3.2 before any training: two rendered `shapes` frames, the flow kernel rows $K_f(p,\cdot)$ of three
# pixels (what the loss asks for: the pixels moving like $p$) and the embedding kernel rows
# $K_\phi(p,\cdot)$ of the quarter-width network at its random initialisation, which follow the image's
# colours and edges rather than the motion. `03_cpfs_train.ipynb` draws the same after training.

# %%
from motion_nbs.data import render_scene

# %%
_frames = [render_scene("shapes", seed=s, size=(128, 128)) for s in (3, 8)]
_frames = {k: torch.stack([f[k] for f in _frames]) for k in ("image", "flow")}
torch.manual_seed(0)
_fig = show_kernel_rows(SparseHypercolumn(alexnet_cpfs_small(batchnorm=True)), _frames)
test_eq(len(_fig.axes), 2 * 2 * 5 + 1)   # 2 images × (flow row, embedding row) × (image, 3 kernel rows, colour bar) + the flow key
_bars = [ax for ax in _fig.axes if ax.get_ylabel() in ("$K_f$", "$K_\\phi$")]   # the colour bars, on the fixed scales
test_eq(sorted({ax.get_ylim() for ax in _bars}), [(-0.25, 0.25), (0.0, 1.0)])

# %%
#| hide
import nbdev; nbdev.nbdev_export()
