# %%
#| default_exp features

# %% [markdown]
# # HOG and dense SIFT as networks
#
# > HOG (UoCTTI), HOGb and dense SIFT rebuilt from convolutions and a few small differentiable functions, equal to VLFeat.

# %% [markdown]
# *Default run: **22 s** on 2 CPU cores with the default parameters (measured by `make book` on 6 Dec 2026, reusing the training and caches that earlier runs left in the runs folder, `core.runs_dir`; where a first run on a new machine takes longer, the chapter says so).*

# %% [markdown]
# Chapter 5 of the thesis inverts, maximises and caricatures *representations* $\Phi(x)$ by gradient
# descent on the image $x$ (section 5.2.3). For CNNs the gradient $\partial\Phi/\partial x$ comes for free;
# for the two classical representations the thesis studies, HOG and dense SIFT (DSIFT), it does not, so
# section 5.3.1 rewrites both as CNNs. This chapter does the same in PyTorch:
#
# - gradients by a fixed **derivative filter bank** (a convolution),
# - **orientation binning** as a non-linear activation (a small differentiable function),
# - **bilinear spatial pooling** into cells or spatial bins (a strided convolution),
# - **block normalisation** and **clamping** (local response normalisation and a ReLU).
#
# The numerical references are VLFeat 0.9.21's `vl_hog` (UoCTTI variant, the DPMv5 HOG) and `vl_dsift`;
# the thesis' networks were "numerically indistinguishable" from them, and so are these: the tests in
# `tests/test_features.py` compare against VLFeat through `cyvlfeat` (max abs difference below $10^{-4}$
# for HOG and HOGb, below $10^{-5}$ for DSIFT). Images are `(B,C,H,W)` floats in $[0,1]$, as everywhere
# in the book; VLFeat gets the same $[0,1]$ values (MATLAB's `im2single` convention).

# %%
#| export
import functools
import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable

from motion_nbs.core import check_choice, check_image
from motion_nbs.features_fast import (_HOGCellsCompiled, _UOCTTICompiled, _cell_taps, _hog_cells_compiled, _select_gradients,
                                      _sift_normalize_compiled, _sift_pool_compiled, _uoctti_compiled, numba)   # numba is None without the `fast` extra

# matplotlib is imported where it is used (the glyph and filter plots): it is slow to import.

# %%
#| hide
from fastcore.test import test_close, test_eq, test_fail

from motion_nbs.core import sample_image


# %% [markdown]
# ## Checking the input
#
# Both modules take a batch of float images. A wrong layout, an integer image (VLFeat and these
# networks expect intensities, not bytes) or an image too small for one block gets a `ValueError` that
# says what was expected and what came (`core.check_image`, shared by every chapter that takes images).

# %% [markdown]
# ## Gradients: a derivative filter bank
#
# Both features start from the image gradient $\mathbf{g} = (g_x, g_y)$ with $y$ pointing down. HOG uses
# the unhalved central difference $G_x = [-1, 0, 1]$, $G_y = G_x^\top$ (thesis, section 5.3.1) at the
# *interior* pixels only: VLFeat's border pixels contribute nothing. The two filters are one fixed
# filter bank (a buffer), applied to every colour channel. The filters are sparse, so `sparse_conv2d`
# evaluates the convolution on their nonzero taps only: the same numbers as `F.conv2d`, several times
# faster on one channel, and bit-exact (each output is one float subtraction, as in VLFeat). For a colour
# image HOG keeps, at each pixel, the gradient of the channel with the largest norm (the first channel
# wins ties).

# %%
#| export
def derivative_filters(dtype=torch.float64) -> torch.Tensor:
    "The central-difference filter bank $[G_x; G_y]$ of thesis section 5.3.1 as a `(2,1,3,3)` conv weight."
    gx = torch.tensor([[0., 0., 0.], [-1., 0., 1.], [0., 0., 0.]], dtype=dtype)
    return torch.stack([gx, gx.T])[:, None]

def sparse_conv2d(x: torch.Tensor,  # (B,C,H,W) input
                  weight: torch.Tensor  # (F,1,kh,kw) filter bank, applied to every channel
                 ) -> torch.Tensor:
    """'Valid' correlation of every channel with a small, sparse filter bank, summing only its nonzero taps.

    Equal to `F.conv2d(x.reshape(B*C,1,H,W), weight)` (and exact for the ±1 taps of $G_x, G_y$: each output
    is one float subtraction, as in VLFeat), but several times faster than a dense convolution on one channel.

    Shape:
        - x: `(B,C,H,W)`, weight: `(F,1,kh,kw)`
        - output: `(B,C,F,H-kh+1,W-kw+1)`
    """
    return torch.stack(_sparse_conv2d(x, weight), 2)

def _sparse_conv2d(x, weight):
    kh, kw = weight.shape[-2:]
    H, W = x.shape[-2:]
    outs = []
    for f in weight[:, 0].tolist():
        acc = None
        taps = sorted(((f[i][j], i, j) for i in range(kh) for j in range(kw) if f[i][j] != 0), key=lambda t: t[0] < 0)
        for v, i, j in taps:  # positive taps first, so that -1 taps are subtractions (no negated copy)
            tap = x[..., i:i + H - kh + 1, j:j + W - kw + 1]
            if acc is None: acc = tap * v if v != 1 else tap
            elif v == 1: acc = acc + tap
            elif v == -1: acc = acc - tap
            else: acc = acc + tap * v
        outs.append(acc if acc is not None else x.new_zeros(*x.shape[:-2], H - kh + 1, W - kw + 1))
    return outs

def image_gradients(image: torch.Tensor,  # (B,C,H,W) float image
                    filters: torch.Tensor | None = None  # `derivative_filters()`, cast to the image's dtype
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """Unhalved central differences at the interior pixels, channel with the largest gradient norm.

    Shape:
        - image: `(B,C,H,W)`
        - output: two tensors `(B,H-2,W-2)`, $g_x$ and $g_y$ at pixels `1..H-2, 1..W-2`
    """
    w = derivative_filters() if filters is None else filters
    g = _sparse_conv2d(image, w)                      # [g_x, g_y], each (B,C,H-2,W-2)
    gx, gy, best = g[0][:, 0], g[1][:, 0], None
    for c in range(1, image.shape[1]):  # a running strict '>' keeps the first channel on ties, as VLFeat
        if best is None: best = gx * gx + gy * gy
        cx, cy = g[0][:, c], g[1][:, c]
        n2 = cx * cx + cy * cy
        take = n2 > best
        gx, gy, best = torch.where(take, cx, gx), torch.where(take, cy, gy), torch.where(take, n2, best)
    return gx, gy


# %%
x = torch.zeros(1, 2, 5, 6, dtype=torch.float64)
x[0, 0, :, 4:] = 1.0                       # a vertical edge in channel 0
x[0, 1, 3:, :] = 2.0                       # a stronger horizontal edge in channel 1
gx, gy = image_gradients(x)
test_eq(gx.shape, (1, 3, 4))
test_eq(gx[0, 0].tolist(), [0, 0, 1, 1])  # channel 0 wins where channel 1 is flat
test_eq(gy[0, 1].tolist(), [2, 2, 2, 2])  # channel 1 wins on its edge (norm 2 > 1)
test_eq(gx[0, 1].tolist(), [0, 0, 0, 0])
# the filter bank evaluation equals a dense convolution, and is exact: plain differences of neighbours
im = torch.rand(2, 3, 9, 11)
w = torch.randn(3, 1, 3, 3) * (torch.rand(3, 1, 3, 3) > 0.5)
test_close(sparse_conv2d(im, w), F.conv2d(im.reshape(6, 1, 9, 11), w).reshape(2, 3, 3, 7, 9), eps=1e-5)
gx, gy = image_gradients(im[:, :1])
test_eq(gx, im[:, 0, 1:-1, 2:] - im[:, 0, 1:-1, :-2])
test_eq(gy, im[:, 0, 2:, 1:-1] - im[:, 0, :-2, 1:-1])


# %% [markdown]
# ## Orientation binning as an activation
#
# Binning a gradient into one of $K$ directed orientations $\mathbf{u}_k = (\cos\frac{2\pi k}{K}, \sin\frac{2\pi k}{K})$
# takes two steps (section 5.3.1): a *directional filter* $G_k = u_{1k}G_x + u_{2k}G_y$, whose output is the
# projection $\langle \mathbf{g}, \mathbf{u}_k\rangle$, and a non-linear activation. HOG ($K = 18$ for 9
# undirected orientations) assigns the whole gradient to the closest orientation,
#
# $$h_k = \|\mathbf{g}\|\, \mathbf{1}\left[\langle \mathbf{g}, \mathbf{u}_k \rangle > \|\mathbf{g}\|\cos\tfrac{\pi}{K}\right],$$
#
# while SIFT ($K = 8$) and the thesis' HOGb split it between the two closest orientations,
#
# $$h_k = \|\mathbf{g}\| \max\left\{0,\ 1 - \frac{K}{2\pi}\cos^{-1}\frac{\langle \mathbf{g}, \mathbf{u}_k\rangle}{\|\mathbf{g}\|}\right\}.$$
#
# Neither activation is a standard CNN layer. The thesis' observation is that bilinear binning is close to
# a ReLU with a **norm-dependent offset**,
#
# $$h_k \approx \frac{1}{1-a}\max\left\{0,\ \langle \mathbf{g}, \mathbf{u}_k\rangle - a\|\mathbf{g}\|\right\}, \qquad a = \cos\frac{2\pi}{K},$$
#
# so binning is "almost" filtering plus ReLU. `orientation_activation` computes the three curves; the
# figure below compares them for SIFT's $K = 8$ as the gradient turns through one bin's range.
#
# VLFeat's HOG finds the closest bin among the $K/2$ undirected orientations $k\pi/(K/2)$ by the largest
# $|\langle \mathbf{g}, \mathbf{u}_k\rangle|$ (the sign picks the direction), and for HOGb gives the
# second-closest bin the weight $\cos^{-1}(|s|/\|\mathbf{g}\|)/(\pi/(K/2))$ with $s$ the best score. We
# compute these scores with the same float operations in the same order as VLFeat 0.9.21's compiled
# `libvl` (which, unlike the current source on GitHub, scores the unnormalised gradient), so ties and
# near-ties fall into the same bin, and $\cos^{-1}$, ill-conditioned near a bin centre, sees the same
# argument: the ratio $|s|/\|\mathbf{g}\|$ is formed in double precision as VLFeat does, and the norm is
# a correctly rounded square root (torch's float32 `sqrt` can be one ulp off, which $\cos^{-1}$ near 1
# turns into a $10^{-3}$ change of a bin weight).
#
# Scoring all $K/2$ orientations at every pixel is what VLFeat does; the network scores only the
# orientation nearest to the gradient's angle and its two neighbours, which contain the winner and the
# runner-up, and falls back to VLFeat's full scan at the few pixels whose angle is within $10^{-3}$ of a
# bin boundary (where rounding decides). The runner-up is the neighbour with the larger score; when the
# two tie — a gradient exactly on a bin centre, which 8-bit images produce at 45° whenever
# $|g_x| = |g_y|$ and the number of orientations is a multiple of 4 — VLFeat's scan keeps the lower
# index, and so do we (the tie matters: $|s|/\|\mathbf{g}\|$ rounds just below 1 there, and the
# runner-up gets a weight of a few $10^{-4}$).

# %%
#| export
def orientation_activation(g: torch.Tensor,  # (...,2) gradients (g_x, g_y)
                           num_bins: int,  # K, the number of directed orientations
                           kind: str = "bilinear"  # "hard", "bilinear" or "relu" (the thesis' approximation)
                          ) -> torch.Tensor:
    """The three binning activations of thesis section 5.3.1 (reference formulas, for plots and tests).

    Shape:
        - g: `(..., 2)`
        - output: `(..., K)`
    """
    check_choice("kind", kind, ("hard", "bilinear", "relu"))
    k = torch.arange(num_bins, dtype=g.dtype, device=g.device)
    u = torch.stack([torch.cos(2 * math.pi * k / num_bins), torch.sin(2 * math.pi * k / num_bins)], -1)
    proj = g @ u.T                          # the directional filter bank <g, u_k>
    norm = g.norm(dim=-1, keepdim=True)
    if kind == "hard": return norm * (proj > norm * math.cos(math.pi / num_bins)).to(g.dtype)
    if kind == "relu":
        a = math.cos(2 * math.pi / num_bins)
        return F.relu(proj - a * norm) / (1 - a)
    cos = (proj / norm.clamp_min(1e-12)).clamp(-1, 1)
    return norm * F.relu(1 - num_bins / (2 * math.pi) * torch.acos(cos))


# %%
th = (torch.arange(720, dtype=torch.float64) + 0.25) * (2 * math.pi / 720) - math.pi  # no sample on a bin edge
g = torch.stack([th.cos(), th.sin()], -1) * 2.0
for kind in ("hard", "bilinear"):
    h = orientation_activation(g, 8, kind)
    test_close(h.sum(-1), torch.full_like(th, 2.0), eps=1e-9)  # each assigns the whole norm
r = orientation_activation(g, 8, "relu")
c = orientation_activation(torch.tensor([[2.0, 0.0]], dtype=torch.float64), 8, "relu")
test_close(c, orientation_activation(torch.tensor([[2.0, 0.0]], dtype=torch.float64), 8, "bilinear"), eps=1e-12)  # equal at a bin centre
assert (r - orientation_activation(g, 8, "bilinear")).abs().max() < 0.25 * 2.0  # within a quarter of |g| elsewhere
test_fail(lambda: orientation_activation(g, 8, "soft"), contains="kind='soft'; valid: hard, bilinear, relu")


# %%
#| export
def plot_orientation_activations(num_bins: int = 8):
    "Bin 0's response to a unit gradient turning through $[-\\pi, \\pi]$: hard, bilinear and the ReLU approximation."
    import matplotlib.pyplot as plt
    th = torch.linspace(-math.pi, math.pi, 1441, dtype=torch.float64)
    g = torch.stack([th.cos(), th.sin()], -1)
    fig, ax = plt.subplots(figsize=(6, 2.8))
    for kind, style in (("hard", "k:"), ("bilinear", "C0-"), ("relu", "C1--")):
        ax.plot(th.numpy(), orientation_activation(g, num_bins, kind)[:, 0].numpy(), style, label=kind)
    ax.set_xlabel("gradient angle (rad)"); ax.set_ylabel("$h_0$")
    ax.set_title(f"binning as an activation, K = {num_bins}"); ax.legend()
    fig.tight_layout()
    return fig


# %%
fig = plot_orientation_activations(8)


# %% [markdown]
# The hard and bilinear assignments used by the networks below take the directional filter outputs
# $s_k = \langle \mathbf{g}, \mathbf{u}_k\rangle$ and the norm $\|\mathbf{g}\|$. Gradients flow through
# $\|\mathbf{g}\|$ and, for the bilinear weights, through the angle; at a zero gradient (flat image) every
# division and angle is replaced by a harmless constant, so nothing is NaN (the histogram weight there is
# zero anyway). VLFeat computes the angle as $\cos^{-1}(|s|/\|\mathbf{g}\|)$, whose derivative is infinite
# when a gradient lies exactly on a bin direction; we take the value from $\cos^{-1}$ and the derivative
# from the equivalent $\operatorname{atan2}(|\mathbf{g} \times \mathbf{u}|, |s|)$, finite everywhere.

# %%
#| exporti
def _sqrt(x):
    "Correctly rounded square root: torch's float32 `sqrt` can be 1 ulp off, which `acos` near 1 magnifies."
    return torch.sqrt(x.double()).to(x.dtype) if x.dtype in (torch.float32, torch.float16, torch.bfloat16) else torch.sqrt(x)

def _magnitude(gx, gy):
    "Gradient norm with a zero (not NaN) derivative at zero gradient."
    g2 = gx * gx + gy * gy
    nz = g2 > 0
    return torch.where(nz, _sqrt(torch.where(nz, g2, torch.ones_like(g2))), torch.zeros_like(g2))

def _vlfeat_orientation_scan(gx, gy, dx, dy):
    "VLFeat's scan over orientations: the best and second-best undirected orientation by |<g, u_k>|, first wins ties."
    w0, w1 = torch.zeros_like(gx), torch.zeros_like(gx)
    k0, k1 = torch.zeros_like(gx, dtype=torch.long), torch.zeros_like(gx, dtype=torch.long)
    for k in range(len(dx)):
        ak = (gx * dx[k] + gy * dy[k]).abs()
        first, second = ak > w0, (ak <= w0) & (ak > w1)
        k1 = torch.where(first, k0, torch.where(second, k, k1))
        w1 = torch.where(first, w0, torch.where(second, ak, w1))
        k0, w0 = torch.where(first, k, k0), torch.where(first, ak, w0)
    return k0, k1

def _nearest_orientations(gx, gy, directions):
    "The undirected orientation VLFeat picks for each gradient and the runner-up on the angle's side, `(k1, k2)`."
    no = directions.shape[1]
    dx, dy = directions[0], directions[1]
    # VLFeat scores each undirected orientation k by |<g, u_k>| (the directional filter bank) and keeps the
    # first maximum; the sign of <g, u_k> picks the directed bin k or k+K'. The winner is the orientation
    # nearest to the gradient's angle; only where the angle is (nearly) half way between two orientations
    # can float rounding make VLFeat's choice differ, and there we run VLFeat's own scan. The runner-up
    # (HOGb) is one of the winner's two neighbours: the one whose score is larger, and on a tie — a
    # gradient on a bin centre, e.g. at 45 degrees (|g_x| = |g_y|) with 4 or 8 orientations — the one
    # VLFeat's scan meets first, the lower index. The scores are VLFeat's float operations.
    with torch.no_grad():
        t = torch.atan2(gy, gx) * (no / math.pi)
        k = torch.round(t)
        frac = t - k
        k1 = torch.remainder(k, no).long()
        prev, nxt = torch.remainder(k1 - 1, no), torch.remainder(k1 + 1, no)
        score = lambda j: (gx * dx.take(j) + gy * dy.take(j)).abs()
        a_prev, a_next = score(prev), score(nxt)
        k2 = torch.where((a_next > a_prev) | ((a_next == a_prev) & (nxt < prev)), nxt, prev)
        tie = (frac.abs() > 0.5 - 1e-3).flatten().nonzero().flatten()
        if len(tie):
            kt1, kt2 = _vlfeat_orientation_scan_all(gx.flatten()[tie], gy.flatten()[tie], dx, dy)
            k1.view(-1)[tie], k2.view(-1)[tie] = kt1, kt2
    return k1, k2

def _vlfeat_orientation_scan_all(gx, gy, dx, dy):
    "`_vlfeat_orientation_scan` for a flat batch, without the loop: first maximum, then the first maximum of the rest."
    a = (gx[:, None] * dx + gy[:, None] * dy).abs()         # (n,K)
    w0, k0 = a.max(1)                                       # torch's max returns the first index of the maximum
    w1, k1 = a.scatter(1, k0[:, None], -1.0).max(1)
    # VLFeat's scan starts from (score 0, orientation 0) and only takes strictly larger scores
    return torch.where(w0 > 0, k0, 0), torch.where(w1 > 0, k1, 0)

def _hog_orientation_bins(gx, gy, mag, directions, bilinear: bool):
    "Directed HOG bins and weights from the gradient field, VLFeat 0.9.21's rules: [(bin, weight)], each `(B,H,W)`."
    no = directions.shape[1]
    dx, dy = directions[0], directions[1]
    k1, k2 = _nearest_orientations(gx, gy, directions)
    s1 = gx * dx.take(k1) + gy * dy.take(k1)           # the winning directional filter's output
    found = s1 != 0                                    # VLFeat adds nothing for a zero gradient
    zero = torch.zeros_like(mag)
    m = torch.where(found, mag, zero)
    bin1 = k1 + no * (s1 < 0).long()
    if not bilinear: return [(bin1, m)]
    s2 = gx * dx.take(k2) + gy * dy.take(k2)
    bin2 = k2 + no * (s2 < 0).long()
    a1 = torch.where(found, s1.abs(), torch.ones_like(s1))
    cross = torch.where(found, (gx * dy.take(k1) - gy * dx.take(k1)).abs(), zero)
    smooth = torch.atan2(cross, a1)                    # = acos(|s|/|g|), with a finite derivative everywhere
    cos = (a1.double() / torch.where(found, mag, torch.ones_like(mag)).double()).to(a1.dtype).detach().clamp(max=1)
    angle = smooth + (torch.acos(cos) - smooth.detach())   # VLFeat's value, atan2's derivative
    w2 = angle * (no / math.pi)
    return [(bin1, (1 - w2) * m), (bin2, w2 * m)]

def _densify(sparse, num_bins: int):
    "The `(B,num_bins,H,W)` maps of a list of (bin index, value) pairs (what a dense network would hold)."
    b, v = sparse[0]
    out = torch.zeros(v.shape[0], num_bins, *v.shape[1:], dtype=v.dtype, device=v.device)
    for b, v in sparse: out = out.scatter_add(1, b[:, None], v[:, None])
    return out


# %%
d = torch.tensor(np.stack([np.cos(np.arange(9) * np.pi / 9), np.sin(np.arange(9) * np.pi / 9)]))
gx, gy = torch.tensor([[[3.0, 0.0, -1.0]]], dtype=torch.float64), torch.zeros(1, 1, 3, dtype=torch.float64)
mag = _magnitude(gx, gy)
test_eq(mag[0, 0].tolist(), [3.0, 0.0, 1.0])
h = _densify(_hog_orientation_bins(gx, gy, mag, d, bilinear=False), 18)
test_eq(h[0, :, 0, 0].nonzero().flatten().tolist(), [0])   # pointing right: bin 0
test_eq(h[0, :, 0, 2].nonzero().flatten().tolist(), [9])   # pointing left: bin 0 + 9
test_eq(h[0, :, 0, 1].abs().sum().item(), 0.0)              # zero gradient: nothing
# HOGb: a gradient at 10 degrees sits half way between bins 0 (0 deg) and 1 (20 deg)
t = torch.tensor(math.radians(10.0), dtype=torch.float64)
gx, gy = 2 * t.cos().view(1, 1, 1), 2 * t.sin().view(1, 1, 1)
hb = _densify(_hog_orientation_bins(gx, gy, _magnitude(gx, gy), d, bilinear=True), 18)[0, :, 0, 0]
test_close(hb[:2], torch.tensor([1.0, 1.0], dtype=torch.float64), eps=1e-6)
test_eq(hb[2:].abs().sum().item(), 0.0)
# the loop-free scan agrees with VLFeat's loop, ties included (exact bin directions, half-way angles, zeros)
ang = torch.cat([torch.arange(36) * (math.pi / 18), torch.rand(500, generator=torch.Generator().manual_seed(0)) * 2 * math.pi])
gxs = torch.cat([torch.cos(ang), torch.zeros(2), torch.tensor([1.0, -1.0])]).double()
gys = torch.cat([torch.sin(ang), torch.zeros(2), torch.tensor([0.0, 0.0])]).double()
for got, want in zip(_vlfeat_orientation_scan_all(gxs, gys, d[0], d[1]), _vlfeat_orientation_scan(gxs, gys, d[0], d[1])):
    test_eq(got, want)
# on a bin centre the two neighbours tie: 45 degrees with 4 orientations (bins at 0, 45, 90, 135 degrees)
d4 = torch.tensor(np.stack([np.cos(np.arange(4) * np.pi / 4), np.sin(np.arange(4) * np.pi / 4)]), dtype=torch.float32)
g45 = torch.tensor([[[3.0, -5.0]]]), torch.tensor([[[3.0, 5.0]]])          # 45 and 135 degrees, |g_x| = |g_y|
test_eq([t.flatten().tolist() for t in _nearest_orientations(*g45, d4)], [[1, 3], [0, 0]])
test_eq([t.flatten().tolist() for t in _vlfeat_orientation_scan(*g45, d4[0], d4[1])], [[1, 3], [0, 0]])


# %% [markdown]
# ## Bilinear spatial pooling: a strided convolution
#
# Each gradient is shared among the four closest cells with bilinear weights. VLFeat places the centre of
# cell $i$ at pixel $(i + \frac12)c - \frac12$ for cell size $c$ and keeps $\lfloor (W + c/2)/c \rfloor$ cells
# per row (the last one at least half inside the image); contributions to cells outside that grid are
# dropped. The weight of a pixel for a cell is a tent $\max\{0, 1 - |x - x_i|/c\}$ in each direction, so
# pooling is a convolution with the outer product of two tents and stride $c$ — the same kernel for all
# orientation channels (`_pool_cells`).
#
# The orientation maps are one-hot (two-hot for HOGb) across the 18 channels, so materialising them and
# convolving wastes 17/18 of the work. `_pool_cells_sparse` computes the same convolution from the
# (bin, weight) pairs: along $x$ each pixel is scattered into its two cells with the tent's weights (read
# from the same buffer), then a strided convolution pools along $y$. The test below checks that both
# give the same cells.

# %%
#| export
def hog_cell_counts(height: int, width: int, cell_size: int) -> tuple[int, int]:
    "Number of HOG cells `(h, w)` VLFeat keeps for an image: `(H + c//2) // c` per side."
    return (height + cell_size // 2) // cell_size, (width + cell_size // 2) // cell_size

def bilinear_pooling_kernel(cell_size: int, dtype=torch.float64) -> tuple[torch.Tensor, int]:
    "1-D tent of HOG's bilinear pooling and the offset of its first tap from the cell's first pixel."
    r = np.arange(-cell_size, 2 * cell_size)
    w = np.maximum(0.0, 1.0 - np.abs(r + 0.5 - 0.5 * cell_size) / cell_size)
    nz = np.flatnonzero(w)
    return torch.tensor(w[nz[0]:nz[-1] + 1], dtype=dtype), int(-r[nz[0]])


# %%
test_eq(hog_cell_counts(20, 19, 8), (3, 2))
k8, off8 = bilinear_pooling_kernel(8)
test_eq((len(k8), off8), (16, 4))
test_close(k8, torch.tensor([1, 3, 5, 7, 9, 11, 13, 15, 15, 13, 11, 9, 7, 5, 3, 1], dtype=torch.float64) / 16)
k5, off5 = bilinear_pooling_kernel(5)
test_eq((len(k5), off5), (9, 2))
test_close(k5[4], 1.0)  # odd cells have a centre pixel
test_close(k8.sum(), 8.0); test_close(k5.sum(), 5.0)  # a pixel gives its whole weight to the cells around it


# %%
#| exporti
def _pool_cells(hist, kernel, offset: int, cell_size: int, cells: tuple[int, int]):
    "Pool interior-pixel maps `(B,K,H-2,W-2)` into cells `(B,K,h,w)` with a strided tent convolution."
    B, K, h2, w2 = hist.shape
    n = len(kernel)
    def pads(size, ncells):  # the interior starts at image pixel 1; the grid needs (ncells-1)*c + n samples
        before = offset + 1
        after = (ncells - 1) * cell_size + n - (before + size)
        return before, after
    top, bottom = pads(h2, cells[0])
    left, right = pads(w2, cells[1])
    x = hist.reshape(B * K, 1, h2, w2)
    x = x[..., :h2 + min(bottom, 0), :w2 + min(right, 0)]  # pixels beyond the last cell's reach are dropped
    x = F.pad(x, (left, max(right, 0), top, max(bottom, 0)))
    k = kernel.to(hist)
    out = F.conv2d(x, (k[:, None] * k[None, :])[None, None], stride=cell_size)
    return out.reshape(B, K, *out.shape[-2:])[..., :cells[0], :cells[1]]


def _pool_cells_sparse(sparse, num_bins: int, kernel, offset: int, cell_size: int, cells: tuple[int, int]):
    "`_pool_cells` of `_densify(sparse)`, without the dense maps: a scatter along x, a strided convolution along y."
    bins, vals = sparse[0]
    B, h2, w2 = vals.shape
    h, w = cells
    k = kernel.to(vals)
    n = len(k)
    # along x, image column x = j + 1 lies in the support of cells hi = (x + offset) // c and hi - 1
    x = torch.arange(w2, device=vals.device) + 1 + offset
    hi = torch.div(x, cell_size, rounding_mode="floor")
    r = x - hi * cell_size
    lo_r = r + cell_size
    taps = [(hi, k[r]), (hi - 1, torch.where(lo_r < n, k[lo_r.clamp(max=n - 1)], k.new_zeros(())))]
    width = w + 2                                       # cells -1 .. w; the outer two are dropped
    rows = (torch.arange(B, device=vals.device)[:, None, None] * num_bins * h2
            + torch.arange(h2, device=vals.device)[None, :, None]) * width
    out = vals.new_zeros(B * num_bins * h2 * width)
    for b, v in sparse:
        base = rows + b * (h2 * width)
        for cell, weight in taps:
            idx = base + (cell.clamp(-1, w) + 1)        # cells beyond the grid land in the dropped slots
            out = out.scatter_add(0, idx.flatten(), (v * weight).flatten())
    out = out.view(B * num_bins, 1, h2, width)[..., 1:w + 1]
    top = offset + 1
    bottom = (h - 1) * cell_size + n - (top + h2)
    out = F.pad(out[..., :h2 + min(bottom, 0), :], (0, 0, top, max(bottom, 0)))
    out = F.conv2d(out, k.view(1, 1, n, 1), stride=(cell_size, 1))
    return out.reshape(B, num_bins, -1, w)[:, :, :h]


# %%
# the sparse evaluation equals the dense strided convolution
for cs, size in ((8, (30, 45)), (5, (23, 31)), (6, (40, 38))):
    H, W = size
    sp = [(torch.randint(0, 18, (2, H - 2, W - 2)), torch.rand(2, H - 2, W - 2, dtype=torch.float64)) for _ in range(2)]
    kern, off = bilinear_pooling_kernel(cs)
    test_close(_pool_cells_sparse(sp, 18, kern, off, cs, hog_cell_counts(H, W, cs)),
               _pool_cells(_densify(sp, 18), kern, off, cs, hog_cell_counts(H, W, cs)), eps=1e-10)

# %%
# one unit gradient at pixel (y, x) = (4, 5) of a 16 x 16 image, cell size 8: cell centres at 3.5 and 11.5
hist = torch.zeros(1, 1, 14, 14, dtype=torch.float64); hist[0, 0, 3, 4] = 1.0
cells = _pool_cells(hist, *bilinear_pooling_kernel(8), 8, (2, 2))
test_close(cells[0, 0], torch.tensor([[7.5 * 6.5, 7.5 * 1.5], [0.5 * 6.5, 0.5 * 1.5]], dtype=torch.float64) / 64)


# %% [markdown]
# ## Block normalisation and clamping: UoCTTI HOG
#
# Let $h \in \mathbb{R}^{2K'}$ be a cell's directed histogram ($K' = 9$ undirected orientations, $2K' = 18$
# directed) and $\bar h_k = h_k + h_{k+K'}$ its undirected fold. Each cell lies in four $2\times2$ blocks;
# block $i$ has the normalising factor $f_i = (\sum_{\text{4 cells}} \|\bar h\|^2 + 10^{-4})^{-1/2}$ (cells
# beyond the border are replaced by the nearest one). The UoCTTI descriptor of a cell has
# $3K' + 4 = 31$ components (Felzenszwalb et al.'s DPMv5 HOG):
#
# $$\tfrac12\sum_{i=1}^4 \min\{f_i h, 0.2\},\qquad \tfrac12\sum_{i=1}^4 \min\{f_i \bar h, 0.2\},\qquad \frac{1}{\sqrt{18}}\sum_{k}\min\{f_i \bar h_k, 0.2\}\ (i = 1..4).$$
#
# The squared norms are a $1\times1$ "convolution" of the squared histogram, the block sums a $2\times2$
# box filter (local response normalisation), the clamp $\min\{x, 0.2\} = x - \mathrm{ReLU}(x - 0.2)$ a
# linear layer plus a ReLU, as the thesis notes. The constant $1/\sqrt{18}$ is VLFeat's for any $K'$.

# %%
#| exporti
def _clamp02(x):
    "min(x, 0.2) written as the thesis' linear + ReLU layers."
    return x - F.relu(x - 0.2)

def _uoctti_normalize(hist, num_orientations: int):
    "UoCTTI block normalisation of directed cell histograms `(B,2K',h,w)` -> `(B,3K'+4,h,w)`."
    no = num_orientations
    und = hist[:, :no] + hist[:, no:]
    norms = (und * und).sum(1, keepdim=True)                                  # (B,1,h,w)
    padded = F.pad(norms, (1, 1, 1, 1), mode="replicate")                    # clamped neighbour indices
    blocks = F.avg_pool2d(padded, 2, stride=1, divisor_override=1)           # (B,1,h+1,w+1): 2x2 sums
    h, w = hist.shape[-2:]
    f = torch.rsqrt(blocks + 1e-4)
    # the blocks above-left, above-right, below-left and below-right of each cell
    f4 = torch.stack([f[:, 0, :h, :w], f[:, 0, :h, 1:], f[:, 0, 1:, :w], f[:, 0, 1:, 1:]], 1)  # (B,4,h,w)
    directed = _clamp02(f4[:, :, None] * hist[:, None])                       # (B,4,2K',h,w)
    undirected = _clamp02(f4[:, :, None] * und[:, None])                      # (B,4,K',h,w)
    texture = undirected.sum(2) * (1 / math.sqrt(18.0))
    return torch.cat([0.5 * directed.sum(1), 0.5 * undirected.sum(1), texture], 1)


# %% [markdown]
# ## The HOG network
#
# `HOG` chains the pieces: derivative filter bank, channel selection, orientation activation, tent
# pooling, block normalisation. With `bilinear_orientations=True` it is the thesis' **HOGb** (VLFeat's
# `BilinearOrientations` option), which the thesis found much easier to invert (table 5.2: 11.5% vs 36.6%
# error). The fixed filters are buffers, so `.to(device)` moves them, and the computation follows the
# input's dtype and device. A large batch is processed in chunks of about half a megapixel, which keeps
# the per-pixel maps in cache (on a 2-core CPU this halves the time per image of a batch of 16). When a gradient
# is needed, `HOG` switches to one fused layer that computes the same histograms with a hand-written backward
# pass ("Making it fast", at the end of the chapter).

# %%
#| export
_FUSED_HOG = None   # the fused cell layer of "Making it fast" (end of the chapter) once it is defined
_FUSED_UOCTTI = _uoctti_normalize   # the normalisation in the gradient path: "Making it fast" compiles it with its gradient
_COMPILED_HOG_CELLS = _COMPILED_UOCTTI = None   # the compiled histograms and normalisation for features alone, also there
_COMPILED_SIFT_NORMALIZE = _COMPILED_SIFT_POOL = None   # and DenseSIFT's spatial pooling and normalisation

class HOG(nn.Module):
    """UoCTTI HOG (VLFeat 0.9.21 `vl_hog`) as a differentiable network; HOGb with `bilinear_orientations`.

    Shape:
        - input: `(B,C,H,W)` float image in [0,1], any number of channels
        - output: `(B,3K+4,h,w)` with `h = (H + c//2) // c`, `w = (W + c//2) // c`, `K = num_orientations`
    """
    def __init__(self, cell_size: int = 8,  # side of a square cell in pixels
                 num_orientations: int = 9,  # undirected orientations K in [0, pi)
                 bilinear_orientations: bool = False  # split each gradient between the two closest bins (HOGb)
                ):
        super().__init__()
        if not (isinstance(cell_size, int) and cell_size >= 1): raise ValueError(f"cell_size must be an int >= 1, got {cell_size!r}")
        if not (isinstance(num_orientations, int) and num_orientations >= 2):
            raise ValueError(f"num_orientations must be an int >= 2, got {num_orientations!r}")
        self.cell_size, self.num_orientations, self.bilinear_orientations = cell_size, num_orientations, bool(bilinear_orientations)
        angles = np.arange(num_orientations) * np.pi / num_orientations
        self.register_buffer("derivatives", derivative_filters(), persistent=False)
        self.register_buffer("directions", torch.tensor(np.stack([np.cos(angles), np.sin(angles)])), persistent=False)
        kernel, self.pool_offset = bilinear_pooling_kernel(cell_size)
        self.register_buffer("pooling", kernel, persistent=False)

    @property
    def dimension(self) -> int: return 3 * self.num_orientations + 4

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        check_image("HOG", image, values=True)
        H, W = image.shape[-2:]
        cells = hog_cell_counts(H, W, self.cell_size)
        if min(cells) < 2:
            raise ValueError(f"HOG needs an image of at least 2x2 cells (one block, 4 cells) of {self.cell_size} pixels, "
                             f"i.e. H, W >= {2 * self.cell_size - self.cell_size // 2}; got {H}x{W}, which gives {cells[0]}x{cells[1]} cells")
        # a large batch goes through in chunks of about half a megapixel: the per-pixel maps stay in cache
        chunk = max(1, (1 << 19) // (H * W))
        return torch.cat([self._forward(image[i:i + chunk], cells) for i in range(0, image.shape[0], chunk)])

    def _forward(self, image, cells):
        directions = self.directions.to(image.dtype)
        if _FUSED_HOG is not None and torch.is_grad_enabled() and image.requires_grad:   # a much cheaper backward pass
            hist = _FUSED_HOG(image, directions, self.cell_size, cells, self.bilinear_orientations)
            return _FUSED_UOCTTI(hist, self.num_orientations)
        elif _COMPILED_HOG_CELLS is not None and image.device.type == "cpu" and image.dtype in (torch.float32, torch.float64):
            hist = _COMPILED_HOG_CELLS(image.detach(), directions, self.cell_size, cells, self.bilinear_orientations)
            return _COMPILED_UOCTTI(hist, self.num_orientations)
        else:   # forward only: the reference pipeline is the faster one (no index of 4 cells per pixel to build)
            gx, gy = image_gradients(image, self.derivatives)
            bins = _hog_orientation_bins(gx, gy, _magnitude(gx, gy), directions, self.bilinear_orientations)
            hist = _pool_cells_sparse(bins, 2 * self.num_orientations, self.pooling, self.pool_offset, self.cell_size, cells)
        return _uoctti_normalize(hist, self.num_orientations)

    def extra_repr(self) -> str:
        return f"cell_size={self.cell_size}, num_orientations={self.num_orientations}, bilinear_orientations={self.bilinear_orientations}"


# %%
hog = HOG()
im = sample_image("astronaut")[None, :, 100:164, 180:260]
f = hog(im)
test_eq(f.shape, (1, 31, 8, 10))
test_eq(HOG()(torch.rand(2, 1, 29, 37)).shape, (2, 31, 4, 5))  # (29+4)//8, (37+4)//8
assert 0 <= f.min() and f.max() <= 0.5 and f.mean() > 0.02
test_eq(HOG()(torch.zeros(1, 3, 24, 24)).abs().max().item(), 0.0)  # a flat image has no gradients
fb = HOG(bilinear_orientations=True)(im)
assert (fb - f).abs().max() > 0.01           # HOGb is a different feature ...
test_close(fb[:, 18:27].sum(1), f[:, 18:27].sum(1), eps=0.3)  # ... with similar undirected mass
print(hog)


# %% [markdown]
# **Flipping.** Mirroring the image left-right mirrors the cell grid and maps orientation $k$ to $K - k$;
# `hog_flip_permutation` is VLFeat's `vl_hog_get_permutation`: `HOG(flip(x)) == flip(HOG(x))[:, perm]`
# exactly when the width is a multiple of the cell size (otherwise the grid itself is not symmetric) and no
# gradient lies exactly half way between two orientations: 8-bit images have many with $g_x = 0$, half way
# between 80 and 100 degrees, which VLFeat's (and our) hard assignment gives to the first, and a flip does
# not preserve that choice. HOGb is continuous there, so it stays equivariant.

# %%
#| export
def hog_flip_permutation(num_orientations: int = 9  # undirected orientations K
                        ) -> torch.Tensor:
    "Channel permutation of UoCTTI HOG for a left-right flip: `hog(flip(x)) = flip(hog(x))[:, perm]`."
    no = num_orientations
    perm = [(no - o) % (2 * no) for o in range(2 * no)]          # directed: angle o*pi/K -> pi - o*pi/K
    perm += [(no - o) % no + 2 * no for o in range(no)]           # undirected
    perm += [3 * no + q for q in (1, 0, 3, 2)]                    # texture: left and right blocks swap
    return torch.tensor(perm)


# %%
p = hog_flip_permutation(9)
test_eq(sorted(p.tolist()), list(range(31)))  # a permutation
test_eq(p[:3].tolist(), [9, 8, 7]); test_eq(p[9:12].tolist(), [0, 17, 16]); test_eq(p[18:20].tolist(), [18, 26])
x = torch.rand(1, 3, 21, 32, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
test_close(HOG()(x.flip(-1)), HOG()(x).flip(-1)[:, p], eps=1e-9)


# %% [markdown]
# ## Seeing HOG: glyphs
#
# `hog_glyphs` renders a HOG array like `vl_hog('render', ...)`: each cell becomes a $21\times21$ patch
# holding, for every undirected orientation $k$, a bar perpendicular to the gradient direction (that is,
# along the edge) with intensity $d_k + d_{k+K} + d_{k+2K}$, the sum of the two directed and the
# undirected components; overlapping bars add up, then each patch is clipped to the range of its weights.

# %%
#| export
def hog_glyph_bank(num_orientations: int = 9,  # undirected orientations K
                   size: int = 21  # glyph side in pixels (VLFeat: 21)
                  ) -> torch.Tensor:
    "One bar per orientation, drawn along the edge (perpendicular to the gradient), as `(K,size,size)` 0/1 images."
    bank = torch.zeros(num_orientations, size, size)
    c = (size - 1) / 2
    for k in range(num_orientations):
        theta = math.fmod(k * math.pi / num_orientations + math.pi / 2, math.pi)  # the edge direction
        along_x = theta <= math.pi / 4 or theta >= 3 * math.pi / 4
        slope = math.tan(theta) if along_x else 1 / math.tan(theta)
        # the bar spans the glyph's width times |cos| (or |sin|) of its direction, centred on the glyph
        margin = int((1 - abs(math.cos(theta) if along_x else math.sin(theta))) / 2 * size)
        for i in range(margin, size - margin):
            v = slope * (i - c) + c
            j = int(math.copysign(math.floor(abs(v) + 0.5), v))  # round half away from zero
            if along_x: bank[k, j, i] = 1
            else: bank[k, i, j] = 1
    return bank

def hog_glyphs(features: torch.Tensor,  # (B,3K+4,h,w) or (3K+4,h,w) UoCTTI HOG
               size: int = 21  # glyph side in pixels
              ) -> torch.Tensor:
    """Render UoCTTI HOG as glyph images, like `vl_hog('render')`.

    Shape:
        - features: `(B,3K+4,h,w)` or `(3K+4,h,w)`
        - output: `(B,h*size,w*size)` or `(h*size,w*size)`
    """
    single = features.ndim == 3
    f = features[None] if single else features
    if f.ndim != 4 or (f.shape[1] - 4) % 3 or f.shape[1] < 10:
        raise ValueError(f"expected UoCTTI HOG features (B,3K+4,h,w), got shape {tuple(features.shape)}")
    no = (f.shape[1] - 4) // 3
    weights = f[:, :no] + f[:, no:2 * no] + f[:, 2 * no:3 * no]                  # (B,K,h,w)
    bank = hog_glyph_bank(no, size).to(f)
    img = torch.einsum("bkyx,kij->byxij", weights, bank)                         # (B,h,w,size,size)
    lo = weights.amin(1).clamp(max=0)[..., None, None]
    hi = weights.amax(1).clamp(min=0)[..., None, None]
    img = torch.minimum(torch.maximum(img, lo), hi)
    B, h, w = img.shape[:3]
    img = img.permute(0, 1, 3, 2, 4).reshape(B, h * size, w * size)
    return img[0] if single else img


# %%
bank = hog_glyph_bank(9)
test_eq(bank.shape, (9, 21, 21))
test_eq(bank[0][:, 10].sum().item(), 21.0)       # orientation 0 (gradient to the right): a vertical bar
test_eq(bank[0].sum().item(), 21.0)
rows, cols = bank[4].nonzero().T                 # orientation 80 deg: a nearly horizontal bar
assert cols.max() - cols.min() >= 18 and rows.max() - rows.min() <= 4
one = torch.zeros(31, 1, 2); one[0, 0, 0] = 0.3; one[18, 0, 0] = 0.1
gl = hog_glyphs(one)
test_eq(gl.shape, (21, 42))
test_close(gl[:, 10], torch.full((21,), 0.4))    # the bar weight sums directed and undirected parts
test_eq(gl[:, 21:].abs().sum().item(), 0.0)
test_fail(lambda: hog_glyphs(torch.zeros(1, 30, 2, 2)), contains="expected UoCTTI HOG")


# %%
#| export
def plot_hog(image: torch.Tensor,  # (3,H,W) or (1,H,W) image in [0,1]
             cell_size: int = 8  # HOG cell size
            ):
    "The image and the glyphs of its HOG and HOGb (as in thesis fig 5.4 b)."
    import matplotlib.pyplot as plt
    x = image[None].float()
    glyphs = [hog_glyphs(HOG(cell_size, bilinear_orientations=b)(x))[0] for b in (False, True)]
    fig, axes = plt.subplots(1, 3, figsize=(12, 4))
    axes[0].imshow(image.permute(1, 2, 0).squeeze(-1).clamp(0, 1).numpy(), cmap="gray")
    for ax, g, t in zip(axes[1:], glyphs, ("HOG", "HOGb")):
        ax.imshow(g.numpy(), cmap="gray"); ax.set_title(f"{t} glyphs, cell {cell_size}")
    axes[0].set_title("image")
    for ax in axes: ax.axis("off")
    fig.tight_layout()
    return fig


# %%
fig = plot_hog(sample_image("chelsea")[:, 20:276, 60:316])

# %% [markdown]
# ## Dense SIFT
#
# DSIFT (VLFeat's `vl_dsift`) computes a SIFT descriptor at every point of a regular grid: $N_x\times N_y = 4\times4$
# spatial bins of $b\times b$ pixels, $T = 8$ orientations, $4\cdot4\cdot8 = 128$ components. Its gradient
# is the *halved* central difference, one-sided at the image border. Each gradient is split linearly
# between the two closest of the 8 directed orientations (the bilinear activation above, $K = 8$).
#
# VLFeat does not compute the angle with `atan2` but with a fast rational approximation,
#
# $$\theta \approx \tfrac{\pi}{4} + (0.1821\,r^2 - 0.9675)\,r,\qquad r = \frac{|g_x| - |g_y|}{|g_x| + |g_y|}\quad(g_x \ge 0),$$
#
# (mirrored for $g_x < 0$ and $g_y < 0$), off by up to 0.0061 rad. On natural images an exact angle moves
# components of the unit-norm descriptor by up to about $10^{-2}$ (the tests measure it); to be *numerically
# indistinguishable* we reproduce the approximation, which stays within $10^{-5}$ of VLFeat (it is smooth
# away from the axes, so the network stays differentiable). `fast_atan2=False` uses the exact angle.

# %%
#| exporti
_FLT_EPSILON = 1.1920928955078125e-07

def _vl_fast_atan2(y, x):
    "VLFeat's `vl_fast_atan2_f`, written with denominators that never vanish (no NaN gradients)."
    ay = y.abs() + _FLT_EPSILON
    ax = x.abs()
    r = (ax - ay) / (ax + ay)
    p = (0.1821 * r * r - 0.9675) * r
    angle = torch.where(x >= 0, math.pi / 4 + p, 3 * math.pi / 4 - p)
    return torch.where(y < 0, -angle, angle)

def _dsift_gradients(image):
    "Halved central differences, one-sided at the border (VLFeat's DSIFT, and `torch.gradient`)."
    gy, gx = torch.gradient(image, dim=(-2, -1))
    return gx, gy

def _dsift_orientation_bins(gx, gy, num_orientations: int, fast_atan2: bool):
    "Bilinear assignment of each gradient to 8 directed orientations: `(B,T,H,W)`."
    g2 = gx * gx + gy * gy
    big = g2 >= 1e-8                                   # VLFeat's fast sqrt returns 0 below 1e-8
    mod = torch.where(big, torch.sqrt(g2.clamp_min(1e-8)), torch.zeros_like(g2))
    if fast_atan2: angle = _vl_fast_atan2(gy, gx)
    else: angle = torch.atan2(gy, torch.where(g2 > 0, gx, torch.ones_like(gx)))
    angle = torch.where(angle < 0, angle + 2 * math.pi, angle)
    nt = angle * (num_orientations / (2 * math.pi))    # in [0, T]
    t = torch.arange(num_orientations, dtype=gx.dtype, device=gx.device).view(1, -1, 1, 1)
    d = (nt[:, None] - t).abs()
    d = torch.minimum(d, num_orientations - d)         # circular distance to each bin centre
    return mod[:, None] * F.relu(1 - d)                # the thesis' bilinear activation


# %%
z = torch.arange(-24, 25, dtype=torch.float64) / 8
yy, xx = torch.meshgrid(z, z, indexing="ij")
err = (_vl_fast_atan2(yy, xx) - torch.atan2(yy, xx) + math.pi) % (2 * math.pi) - math.pi
assert err[(xx != 0) | (yy != 0)].abs().max() < 0.0062  # VLFeat's stated accuracy (away from the origin)
gx, gy = _dsift_gradients(torch.tensor([[0.0, 1.0, 4.0, 9.0]] * 2)[None])
test_eq(gx[0, 0].tolist(), [1.0, 2.0, 4.0, 5.0])
test_eq(gy.abs().sum().item(), 0.0)
b = _dsift_orientation_bins(torch.tensor([[[1.0]]]), torch.tensor([[[1.0]]]), 8, fast_atan2=False)[0, :, 0, 0]
test_close(b[1], math.sqrt(2), eps=1e-6)                # 45 degrees is bin 1's centre
test_close(b.sum(), math.sqrt(2), eps=1e-6)


# %% [markdown]
# **Spatial bins as one strided, separable convolution.** Spatial bin $(i, j)$ of a descriptor whose first
# bin centre is at pixel $(x_0, y_0)$ is centred at $(x_0 + ib, y_0 + jb)$ (integer pixels) and weighs pixel
# $x_0 + ib + d$ by the tent $1 - |d|/b$ times a Gaussian window centred on the descriptor,
# $\exp(-\frac12 ((d + \delta_i)/\sigma)^2)$, $\delta_i = b(i - \frac{N-1}{2})$, $\sigma = b\cdot$`window_size`
# (VLFeat's default window size is 2). Along $x$, the $N$ bins' kernels laid side by side form $N$
# filters of length $b(N+1) - 1$; convolving the orientation maps with them at stride `step`, first along
# $y$ then along $x$, evaluates all 128 components of every descriptor at once. The orientation maps are
# padded by replicating their border, as VLFeat does.

# %%
#| export
def dsift_bin_kernels(bin_size: int,  # b, pixels per spatial bin
                      num_bins: int = 4,  # N, spatial bins per side
                      window_size: float = 2.0,  # Gaussian window sigma in units of bins (VLFeat's default 2)
                      dtype=torch.float64) -> torch.Tensor:
    "The N 1-D spatial-bin filters of DSIFT side by side, `(N, b(N+1)-1)`: tent times Gaussian window."
    b, n = bin_size, num_bins
    d = np.arange(-(b - 1), b)
    sigma = b * window_size
    out = np.zeros((n, b * (n + 1) - 1))
    for i in range(n):
        delta = b * (i - 0.5 * (n - 1))
        out[i, i * b:i * b + 2 * b - 1] = (1 - np.abs(d) / b) * np.exp(-0.5 * ((d + delta) / sigma) ** 2)
    return torch.tensor(out, dtype=dtype)

def dsift_frame_counts(height: int, width: int, bin_size: int, step: int, num_bins: int = 4) -> tuple[int, int]:
    "Number of DSIFT descriptors `(ny, nx)` on an image (VLFeat's default bounds: the whole image)."
    span = bin_size * (num_bins - 1)
    return ((height - 1 - span) // step + 1 if height - 1 >= span else 0,
            (width - 1 - span) // step + 1 if width - 1 >= span else 0)


# %%
k = dsift_bin_kernels(4)
test_eq(k.shape, (4, 19))
test_eq((k > 0).sum(1).tolist(), [7, 7, 7, 7])
test_eq(k[1].argmax().item(), 4 + 3)             # bin 1 peaks at its centre ...
assert k[1][8] > k[1][6] and k[2][10] > k[2][12]  # ... and leans towards the descriptor centre
test_eq(dsift_frame_counts(40, 50, 4, 3), (10, 13))
test_eq(dsift_frame_counts(12, 50, 4, 3), (0, 13))


# %% [markdown]
# **Normalisation.** Each descriptor is divided by its $\ell^2$ norm (plus `FLT_EPSILON`), clamped at 0.2
# (linear + ReLU again) and normalised once more. The output is VLFeat's float descriptor, of unit norm;
# `cyvlfeat.sift.dsift(..., float_descriptors=True)` returns `min(512 d, 255)` instead.

# %%
#| exporti
def _l2_normalize(d, dim: int = 1):
    ss = (d * d).sum(dim, keepdim=True)
    big = ss >= 1e-8                                   # VLFeat's fast sqrt returns 0 below 1e-8
    norm = torch.where(big, torch.sqrt(ss.clamp_min(1e-8)), torch.zeros_like(ss))
    return d / (norm + _FLT_EPSILON)

def _sift_normalize(d):
    return _l2_normalize(_clamp02(_l2_normalize(d)))


# %%
v = torch.tensor([[3.0, 4.0, 0.0]]).view(1, 3, 1, 1)
test_close(_l2_normalize(v).flatten(), torch.tensor([0.6, 0.8, 0.0]), eps=1e-6)
test_close(_sift_normalize(v).flatten(), torch.tensor([0.7071, 0.7071, 0.0]), eps=1e-4)
test_eq(_sift_normalize(torch.zeros(1, 3, 1, 1)).abs().sum().item(), 0.0)


# %%
#| export
class DenseSIFT(nn.Module):
    """Dense SIFT (VLFeat 0.9.21 `vl_dsift`, Gaussian window) as a differentiable network.

    Shape:
        - input: `(B,1,H,W)` float grey image in [0,1]
        - output: `(B,N*N*T,ny,nx)` unit-norm descriptors; component `t + T*(i + N*j)` for spatial bin
          `(i, j)` (x, y) and orientation `t`, as VLFeat; `frames(H, W)` gives their centres
    """
    def __init__(self, bin_size: int = 8,  # b, pixels per spatial bin (cyvlfeat's `size`)
                 step: int = 8,  # sampling step between descriptors, in pixels
                 num_bins: int = 4,  # N, spatial bins per side
                 num_orientations: int = 8,  # T, orientation bins
                 window_size: float = 2.0,  # Gaussian window sigma in bins (VLFeat's default)
                 fast_atan2: bool = True  # use VLFeat's atan2 approximation (exact match) or the exact angle
                ):
        super().__init__()
        for name, v in (("bin_size", bin_size), ("step", step), ("num_bins", num_bins), ("num_orientations", num_orientations)):
            if not (isinstance(v, int) and v >= 1): raise ValueError(f"{name} must be an int >= 1, got {v!r}")
        if not window_size > 0: raise ValueError(f"window_size must be > 0, got {window_size!r}")
        self.bin_size, self.step, self.num_bins, self.num_orientations = bin_size, step, num_bins, num_orientations
        self.window_size, self.fast_atan2 = float(window_size), bool(fast_atan2)
        self.register_buffer("bin_kernels", dsift_bin_kernels(bin_size, num_bins, window_size), persistent=False)

    @property
    def dimension(self) -> int: return self.num_bins * self.num_bins * self.num_orientations

    def frames(self, height: int, width: int) -> torch.Tensor:
        "Descriptor centres `(ny*nx, 2)` as `(y, x)` 0-based pixels, x fastest (cyvlfeat's frames)."
        ny, nx = dsift_frame_counts(height, width, self.bin_size, self.step, self.num_bins)
        c = 0.5 * self.bin_size * (self.num_bins - 1)
        ys = torch.arange(ny, dtype=torch.float64) * self.step + c
        xs = torch.arange(nx, dtype=torch.float64) * self.step + c
        return torch.stack(torch.meshgrid(ys, xs, indexing="ij"), -1).reshape(-1, 2)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        check_image("DenseSIFT", image, channels=1, values=True)
        B, _, H, W = image.shape
        ny, nx = dsift_frame_counts(H, W, self.bin_size, self.step, self.num_bins)
        if ny < 1 or nx < 1 or min(H, W) < 2:
            side = self.bin_size * (self.num_bins - 1) + 1
            raise ValueError(f"DenseSIFT needs an image of at least {side}x{side} pixels for one descriptor "
                             f"(bin_size={self.bin_size}, num_bins={self.num_bins}); got {H}x{W}")
        gx, gy = _dsift_gradients(image[:, 0])
        bins = _dsift_orientation_bins(gx, gy, self.num_orientations, self.fast_atan2)  # (B,T,H,W)
        T, N, p = self.num_orientations, self.num_bins, self.bin_size - 1
        if _COMPILED_SIFT_POOL is not None and not (torch.is_grad_enabled() and bins.requires_grad) and bins.device.type == "cpu" \
                and bins.dtype in (torch.float32, torch.float64):
            return _COMPILED_SIFT_NORMALIZE(_COMPILED_SIFT_POOL(bins, self.bin_kernels.to(bins), p, self.step, ny, nx))
        x = F.pad(bins.reshape(B * T, 1, H, W), (p, p, p, p), mode="replicate")
        k = self.bin_kernels.to(image)
        x = F.conv2d(x, k[:, None, :, None], stride=(self.step, 1))                 # (B*T, N_y, ny, W+2p)
        x = F.conv2d(x.reshape(B * T * N, 1, ny, W + 2 * p), k[:, None, None, :], stride=(1, self.step))
        d = x.reshape(B, T, N, N, ny, nx).permute(0, 2, 3, 1, 4, 5).reshape(B, N * N * T, ny, nx)
        if _COMPILED_SIFT_NORMALIZE is not None and not (torch.is_grad_enabled() and d.requires_grad) and d.device.type == "cpu" \
                and d.dtype in (torch.float32, torch.float64):
            return _COMPILED_SIFT_NORMALIZE(d)
        return _sift_normalize(d)

    def extra_repr(self) -> str:
        return (f"bin_size={self.bin_size}, step={self.step}, num_bins={self.num_bins}, "
                f"num_orientations={self.num_orientations}, window_size={self.window_size}, fast_atan2={self.fast_atan2}")


# %%
sift = DenseSIFT(bin_size=4, step=3)
grey = sample_image("camera")[None, :1, 200:240, 100:150]
d = sift(grey)
test_eq(d.shape, (1, 128, 10, 13))
test_close(d.norm(dim=1), torch.ones(1, 10, 13), eps=1e-4)
assert d.min() >= 0 and d.max() < 0.5  # clamped at 0.2, then renormalised
test_eq(sift.frames(40, 50)[:2].tolist(), [[6.0, 6.0], [6.0, 9.0]])
test_eq(sift.frames(40, 50).shape, (130, 2))
# a vertical step edge (dark left, bright right): all gradients point right, orientation 0
edge = torch.zeros(1, 1, 20, 20); edge[..., 10:] = 1.0
de = DenseSIFT(bin_size=4, step=20)(edge).reshape(16, 8)
test_eq(de.sum(0).argmax().item(), 0)
assert de[:, 1:].abs().max() < 1e-5  # (not 0: the fast atan2 of (0, 1) is 1.6e-6, not 0)
test_fail(lambda: sift(torch.rand(1, 3, 40, 50)), contains="DenseSIFT expects images of shape (B,1,H,W), got (1, 3, 40, 50)")
test_fail(lambda: HOG(8)(torch.zeros(3, 8, 8)), contains="HOG expects images of shape (B,C,H,W), got (3, 8, 8)")
test_fail(lambda: HOG(8)(torch.zeros(1, 1, 8, 8, dtype=torch.uint8)), contains="got dtype torch.uint8")
test_fail(lambda: HOG(8)(torch.full((1, 1, 8, 8), float("nan"))), contains="the image given to HOG contains 64 NaN")
print(sift)


# %% [markdown]
# ## The filter banks
#
# Every linear stage above is a small, fixed, sparse filter bank — unlike a learned CNN's dense 3-D filters,
# as the thesis remarks. From left to right: the derivative filters $G_x, G_y$; the 9 undirected
# directional filters $G_k = \cos\frac{k\pi}{9}G_x + \sin\frac{k\pi}{9}G_y$ whose outputs HOG compares;
# HOG's bilinear pooling kernel for $c = 8$; the 16 spatial-bin filters of DSIFT for $b = 8$, each drawn
# over the whole descriptor footprint (the Gaussian window makes the outer bins weaker).

# %%
#| export
def plot_filter_banks(cell_size: int = 8, bin_size: int = 8, num_orientations: int = 9):
    "Figure of the fixed filter banks of HOG and DSIFT."
    import matplotlib.pyplot as plt
    g = derivative_filters()[:, 0]
    ang = torch.arange(num_orientations, dtype=torch.float64) * math.pi / num_orientations
    gk = ang.cos()[:, None, None] * g[0] + ang.sin()[:, None, None] * g[1]
    tent, _ = bilinear_pooling_kernel(cell_size)
    kb = dsift_bin_kernels(bin_size)
    L = kb.shape[1]
    sift2d = torch.full((4 * (L + 2), 4 * (L + 2)), float("nan"), dtype=torch.float64)  # a 4x4 montage, one per bin
    for j in range(4):
        for i in range(4):
            sift2d[j * (L + 2):j * (L + 2) + L, i * (L + 2):i * (L + 2) + L] = kb[j][:, None] * kb[i][None, :]
    half = (num_orientations + 1) // 2
    fig = plt.figure(figsize=(13, 3.4))
    gs = fig.add_gridspec(2, 1 + half + 6)
    for i, (f, t) in enumerate(zip(g, ("$G_x$", "$G_y$"))):
        ax = fig.add_subplot(gs[i, 0]); ax.imshow(f, cmap="RdBu_r", vmin=-1, vmax=1); ax.set_title(t); ax.axis("off")
    for k in range(num_orientations):
        ax = fig.add_subplot(gs[k // half, 1 + k % half])
        ax.imshow(gk[k], cmap="RdBu_r", vmin=-1, vmax=1); ax.set_title(f"$G_{{{k}}}$", fontsize=8); ax.axis("off")
    ax = fig.add_subplot(gs[:, 1 + half:4 + half])
    ax.imshow(tent[:, None] * tent[None, :], cmap="viridis"); ax.set_title(f"HOG pooling, c={cell_size}"); ax.axis("off")
    ax = fig.add_subplot(gs[:, 4 + half:])
    ax.imshow(sift2d, cmap="viridis"); ax.set_title(f"DSIFT's 16 bin filters, b={bin_size}"); ax.axis("off")
    fig.tight_layout()
    return fig


# %%
fig = plot_filter_banks()

# %% [markdown]
# ## Differentiable everywhere
#
# The pre-image solver of chapter 5b backpropagates through these networks, from flat initialisations too.
# Gradients exist at zero image gradient (no `sqrt` or `atan2` of zero is differentiated), and agree with
# finite differences on generic inputs (the float64 `gradcheck` lives in `tests/test_features.py`).

# %%
for net in (HOG(), HOG(bilinear_orientations=True), DenseSIFT(bin_size=4, step=4)):
    flat = torch.full((1, 1, 24, 24), 0.5, requires_grad=True)
    net(flat).sum().backward()
    assert torch.isfinite(flat.grad).all()
    x = torch.rand(2, 1, 24, 24, requires_grad=True)
    net(x).square().sum().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


# %% [markdown]
# ## Making it fast: one fused HOG layer
#
# The pieces above are the definition; each is a handful of small tensor operations, and autograd adds
# as many again for the backward pass (plus `where`s, slice gradients and zero fills). In the pre-image
# solver HOG is evaluated hundreds of times on one image, and that bookkeeping — not arithmetic — is most
# of the cost. `_HOGCells` computes the same cell histograms in one `autograd.Function` whose backward
# pass is written out by hand:
#
# - forward: central differences of all channels at once, the channel of largest norm by `argmax`
#   (first maximum on ties, as VLFeat), the orientation choice of `_nearest_orientations`, and the
#   pooling as a single scatter: a pixel's weight goes to its $2\times2$ cells with the product of the two
#   tents (the same cells and weights as `_pool_cells_sparse`);
# - backward: gather the cell gradients back to the pixels, through the weights $m = \|\mathbf g\|$
#   ($\partial m/\partial\mathbf g = \mathbf g/\|\mathbf g\|$) and, for HOGb, the angle
#   $a = \operatorname{atan2}(|\mathbf g\times\mathbf u_{k_1}|, |\langle\mathbf g, \mathbf u_{k_1}\rangle|)$ of
#   the bilinear split, and the derivative filters' transposes back to the selected channel.
#
# The values are those of the reference pipeline up to the order of float additions; the gradients are
# those autograd computes through it (checked below and by `gradcheck` in the tests). `HOG` uses the fused
# layer when a gradient is needed; for features alone the reference pipeline is the faster one (building
# the index of four cells per pixel costs more than it saves without a backward pass). On a $224\times224$
# colour image one forward+backward pass takes about 5 ms instead of 10–12 ms (2 threads;
# `bench/bench_preimage.py`). `HOG` above calls it through `_FUSED_HOG`, which this section sets: a reader of the
# chapter (and every test above) sees the plain pipeline, the package uses the fused one.

# %%
#| exporti
@functools.lru_cache(maxsize=16)
def _pooling_taps(size: tuple, cells: tuple, cell_size: int, dtype, device):
    "For the interior pixels of an image of `size`: the 4 (2 rows x 2 columns) cell slots `(1,4,H-2,W-2)` in a `(h+2)x(w+2)` plane and tent weights."
    kernel, offset = bilinear_pooling_kernel(cell_size, dtype)
    kernel = kernel.to(device)
    (H, W), (h, w) = size, cells
    ty, wy = _cell_taps(H - 2, h, kernel, offset, cell_size)
    tx, wx = _cell_taps(W - 2, w, kernel, offset, cell_size)
    slots = (ty[:, None, :, None] * (w + 2) + tx[None, :, None, :]).reshape(1, 4, H - 2, W - 2)
    return slots, (wy[:, None, :, None] * wx[None, :, None, :]).reshape(1, 4, H - 2, W - 2)

class _HOGCells(torch.autograd.Function):
    "Image `(B,C,H,W)` -> directed cell histograms `(B,2K',h,w)`: `_pool_cells_sparse` of `_hog_orientation_bins`, fused."
    @staticmethod
    def forward(ctx, image, directions, cell_size: int, cells, bilinear: bool):
        B, C, H, W = image.shape
        h, w = cells
        no = directions.shape[1]
        dx, dy = directions[0], directions[1]
        gx, gy, sel = _select_gradients(image)
        mag = _sqrt(gx * gx + gy * gy)
        # VLFeat adds nothing where <g, u_k1> = 0, i.e. (for these orientations) where g = 0: then mag = 0 too
        k1, k2 = _nearest_orientations(gx, gy, directions)
        dx1, dy1 = dx.take(k1), dy.take(k1)
        s1 = gx * dx1 + gy * dy1
        bins = (k1 + no * (s1 < 0).long())[:, None]
        ctx.bilinear, ctx.no, ctx.shape = bilinear, no, image.shape
        if bilinear:
            bins = torch.stack([bins[:, 0], k2 + no * ((gx * dx.take(k2) + gy * dy.take(k2)) < 0).long()], 1)
            found = mag > 0
            a1 = torch.where(found, s1.abs(), 1.0)
            cr = gx * dy1 - gy * dx1
            cross = cr.abs()
            smooth = torch.atan2(cross, a1)
            cos = (a1.double() / torch.where(found, mag, 1.0).double()).to(a1.dtype).clamp_(max=1)
            frac = (smooth + (torch.acos(cos) - smooth)) * (no / math.pi)   # the reference's value, bit for bit
            weights = torch.stack([(1 - frac) * mag, frac * mag], 1)
            extra = (frac, a1, cross, cr.sign_(), s1.sign(), dx1, dy1)
        else: weights, extra = mag[:, None], ()
        slots, taps = _pooling_taps((H, W), (h, w), cell_size, image.dtype, image.device)
        plane = (h + 2) * (w + 2)
        first = torch.arange(B, device=image.device).view(B, 1, 1, 1) * (2 * no)
        idx = ((bins + first) * plane)[:, :, None] + slots[:, None]              # (B,A,4,H-2,W-2)
        vals = weights[:, :, None] * taps[:, None]
        out = image.new_zeros(B * 2 * no * plane).scatter_add_(0, idx.view(-1), vals.view(-1))
        ctx.save_for_backward(gx, gy, mag, idx, taps, *extra, *([] if sel is None else [sel]))
        return out.view(B, 2 * no, h + 2, w + 2)[..., 1:-1, 1:-1]

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        gx, gy, mag, idx, taps, *rest = ctx.saved_tensors
        B, C, H, W = ctx.shape
        g = F.pad(grad, (1, 1, 1, 1)).reshape(-1).index_select(0, idx.view(-1)).view(idx.shape)
        gw = (g * taps[:, None]).sum(2)                     # d/d(pixel weights), (B,A,H-2,W-2)
        inv = gw[:, 0] / torch.where(mag > 0, mag, math.inf)     # through mag = |g|: g/|g|; 0 where g = 0
        if ctx.bilinear:
            frac, a1, cross, sc, ss, dx1, dy1 = rest[:7]
            rest = rest[7:]
            g1, g2 = gw[:, 0], gw[:, 1]
            inv = (g1 + (g2 - g1) * frac) / torch.where(mag > 0, mag, math.inf)
            # through the angle a = atan2(cross, a1) of the split: da = (a1 dcross - cross da1) / (a1^2 + cross^2)
            ga = (g2 - g1) * mag * (ctx.no / math.pi) / (a1 * a1 + cross * cross)
            dc, ds = ga * a1 * sc, -ga * cross * ss
            ggx, ggy = inv * gx + dc * dy1 + ds * dx1, inv * gy + ds * dy1 - dc * dx1
        else: ggx, ggy = inv * gx, inv * gy
        if rest:  # back to the selected channel
            gxs = ggx.new_zeros(B, C, H - 2, W - 2).scatter_(1, rest[0], ggx[:, None])
            gys = ggy.new_zeros(B, C, H - 2, W - 2).scatter_(1, rest[0], ggy[:, None])
        else: gxs, gys = ggx[:, None], ggy[:, None]
        gi = gxs.new_zeros(B, C, H, W)
        gi[..., 1:-1, 2:] += gxs; gi[..., 1:-1, :-2] -= gxs   # transposed central differences
        gi[..., 2:, 1:-1] += gys; gi[..., :-2, 1:-1] -= gys
        return gi, None, None, None, None

_FUSED_HOG = _HOGCells.apply   # from here on `HOG` takes the fused layer when a gradient is needed

# %%
# the fused layer equals the reference pipeline, in value and in gradient, for HOG and HOGb, 1 and 3 channels
dirs9 = torch.tensor(np.stack([np.cos(np.arange(9) * np.pi / 9), np.sin(np.arange(9) * np.pi / 9)]))
for bil in (False, True):
    for C, cs, (H, W) in ((3, 8, (37, 45)), (1, 5, (29, 31)), (2, 6, (40, 38))):
        im = torch.rand(2, C, H, W, dtype=torch.float64, generator=torch.Generator().manual_seed(C))
        im[:, :, :6, :6] = 0.5                                 # a flat corner: zero gradients
        kern, off = bilinear_pooling_kernel(cs)
        cells = hog_cell_counts(H, W, cs)
        probe = torch.randn(2, 18, *cells, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
        a, b = im.clone().requires_grad_(), im.clone().requires_grad_()
        gx, gy = image_gradients(a, derivative_filters())
        ref = _pool_cells_sparse(_hog_orientation_bins(gx, gy, _magnitude(gx, gy), dirs9, bil), 18, kern, off, cs, cells)
        fused = _HOGCells.apply(b, dirs9, cs, cells, bil)
        test_close(fused, ref, eps=1e-12)
        (ref * probe).sum().backward(); (fused * probe).sum().backward()
        test_close(b.grad, a.grad, eps=1e-10)
_xh = torch.rand(1, 3, 40, 48, dtype=torch.float64, generator=torch.Generator().manual_seed(3), requires_grad=True)
(HOG(bilinear_orientations=True)(_xh) ** 2).sum().backward()   # the network through the fused layer
_xr = _xh.detach().clone().requires_grad_()
_h = HOG(bilinear_orientations=True)
_ref = _uoctti_normalize(_pool_cells_sparse(_hog_orientation_bins(*image_gradients(_xr, _h.derivatives), _magnitude(*image_gradients(_xr, _h.derivatives)), _h.directions.double(), True), 18, _h.pooling.double(), _h.pool_offset, 8, hog_cell_counts(40, 48, 8)), 9)
(_ref ** 2).sum().backward()
test_close(_xh.grad, _xr.grad, eps=1e-10)


# %% [markdown]
# ## Making it fast: compiled cell histograms for features alone
#
# Without a backward pass, HOG is one pass over the pixels: pick the channel, the orientation(s) and the
# weight of each pixel, add it to its $2\times2$ cells; then one pass over the cells normalises them
# (`_uoctti_compiled`, the same arithmetic as `_uoctti_normalize`). DenseSIFT's descriptors are normalised
# the same way, in one compiled pass per step (`_sift_normalize_compiled`). `_hog_cells_compiled` does exactly that in one
# compiled loop (numba) per image and band of rows, in the image's precision, with VLFeat's own scan over
# the orientations (the first maximum of $|\langle\mathbf g, \mathbf u_k\rangle|$, which `_nearest_orientations`
# reproduces) and the tents of `_cell_taps`, which `_numpy_taps` hands it. The compiled loops live in their own
# module, `motion_nbs.features_fast` (notebook `05_features_fast`, with their own tests), so that this chapter
# keeps the method; `HOG` uses them for features alone on the CPU when numba is installed (`_COMPILED_HOG_CELLS`),
# and the tests below compare them with the reference pipeline.
#
# The orientation scan is most of the work: per pixel, nine products and comparisons that each depend on
# the previous one. Written per pixel, the loop took 12 ms for a 480×640 image on one thread (as long as
# VLFeat's whole HOG); with the loop over a row's pixels inside the loop over orientations, the compiler
# runs eight pixels at once and the same scan takes a tenth of that. **Measured** (`bench/bench_features.py`,
# 2 threads, 480×640 RGB): HOG 2.0 ms against VLFeat's 11.1 ms (0.18×), 2.1 ms per image in a batch of 16
# (0.19×), HOGb 3.6 ms against 14.5 ms; the tensor pipeline took 22 ms (1.5×). DenseSIFT at its densest
# (bins of 4 pixels, step 1: 128 numbers for each of 300k descriptors) spent its time in two strided
# convolutions, a reordering and a normalisation of several passes over 150 MB each: 0.75–1.05 s against
# VLFeat's 0.64–0.69 s. One compiled pass for the pooling (`_sift_pool_compiled`: along y into one padded
# row, then along x straight into each descriptor component) and one for the normalisation bring it to
# 0.23 s (0.36×); the thesis' geometry (bins of 8, step 8) takes 20 ms against 423 ms (0.05×).

# %%
#| export
@functools.lru_cache(maxsize=32)
def _numpy_taps(H: int, W: int, h: int, w: int, cell_size: int, dtype):
    "`_cell_taps` of the rows and of the columns as numpy arrays (ty, wy, tx, wx), cached: the solver asks every iteration."
    kernel, offset = bilinear_pooling_kernel(cell_size, dtype)
    ty, wy = _cell_taps(H - 2, h, kernel, offset, cell_size)
    tx, wx = _cell_taps(W - 2, w, kernel, offset, cell_size)
    return ty.numpy(), wy.numpy(), tx.numpy(), wx.numpy()

def _hog_cells_fast(image, directions, cell_size: int, cells, bilinear: bool):
    "`_pool_cells_sparse(_hog_orientation_bins(...))` from one compiled pass: `(B,C,H,W)` -> `(B,2K,h,w)` (CPU, float32/64)."
    H, W = image.shape[-2:]
    return _hog_cells_compiled(image, directions, _numpy_taps(H, W, *cells, cell_size, image.dtype), cells, bilinear)

if numba is not None:  # from here on `HOG` features alone take the compiled passes
    _COMPILED_HOG_CELLS, _COMPILED_UOCTTI = _hog_cells_fast, _uoctti_compiled
    _COMPILED_SIFT_POOL, _COMPILED_SIFT_NORMALIZE = _sift_pool_compiled, _sift_normalize_compiled


# %% [markdown]
# The same passes serve the pre-image solver, which needs HOG's gradient hundreds of times: the forward pass
# also keeps each pixel's selected gradient, orientations and channel, and a compiled backward pass reads the
# cell gradients at each pixel's four cells, applies the chain rule of `_HOGCells.backward` (through
# $m = \|\mathbf g\|$ and, for HOGb, the split angle) and gathers the result back to the image through the
# derivative filters (one task per image, so no two tasks write to the same pixel). `_HOGCellsCompiled`
# (`features_fast`) is that pair; `HOG` takes it through `_fused_hog` for CPU float images when numba is installed.

# %%
#| export
def _fused_hog(image, directions, cell_size: int, cells, bilinear: bool):
    "The fused HOG cell layer: compiled on CPU float images when numba is installed, `_HOGCells` otherwise."
    if numba is not None and image.device.type == "cpu" and image.dtype in (torch.float32, torch.float64):
        taps = _numpy_taps(*image.shape[-2:], *cells, cell_size, image.dtype)
        return _HOGCellsCompiled.apply(image, directions, taps, cells, bilinear)
    return _HOGCells.apply(image, directions, cell_size, cells, bilinear)

_FUSED_HOG = _fused_hog   # from here on `HOG` takes the compiled layer (or `_HOGCells`) when a gradient is needed


# %% [markdown]
# With the cells compiled, the block normalisation's gradient was left to autograd: some forty small tensor
# operations on `(B,4,2K,h,w)` maps, about a third of a HOG forward+backward at 224² and the larger part of the
# time a batch of images spends per image (profiled in `bench/bench_preimage.py`). Its gradient is short to
# write out. With $u_k = h_k + h_{k+K}$, $n = \sum_k u_k^2$ per cell, the four block factors
# $f_i = (\beta_i + 10^{-4})^{-1/2}$ of the $2\times2$ block sums $\beta_i$ of $n$ (borders replicated) and
# $\min(v, 0.2)$ passing the gradient where $v \le 0.2$ (the linear + ReLU layers, `_clamp02`), an output
# gradient $G$ gives, per cell,
# $\partial/\partial h_d = \tfrac12 G_d \sum_i f_i [f_i h_d \le 0.2]$ and
# $\partial/\partial u_k = \sum_i (\tfrac12 G_{2K+k} + G_{3K+i}/\sqrt{18}) f_i [f_i u_k \le 0.2]$ directly,
# $\partial/\partial f_i$ the same sums with $h_d$ and $u_k$ in place of $f_i$, then
# $\partial f_i / \partial \beta_i = -\tfrac12 f_i^3$, each block's gradient spread back to the (replicated) cells
# it sums, and $\partial n / \partial u_k = 2u_k$. `_uoctti_backward_loop` does the per-cell part one row of
# cells per task and the blocks one image per task; `_UOCTTICompiled` pairs it with `_uoctti_compiled` (all three in
# `features_fast`), and `_fused_uoctti` takes it for CPU float histograms.
#
# Measured (2 threads, a 224² RGB image): HOG's forward+backward went from 1.5 ms to 1.0–1.1 ms, and the thesis'
# 350-iteration inversion from 0.8 s to 0.4–0.5 s. What is left is the cell passes themselves (about 0.35 ms
# forward and 0.45 ms backward per image); the normalisation's two passes take about 0.2 ms.

# %%
#| export
def _fused_uoctti(hist, num_orientations: int):
    "The normalisation in the gradient path: `_UOCTTICompiled` on CPU float histograms, `_uoctti_normalize` otherwise."
    if hist.device.type == "cpu" and hist.dtype in (torch.float32, torch.float64):
        return _UOCTTICompiled.apply(hist, num_orientations)
    return _uoctti_normalize(hist, num_orientations)

if numba is not None: _FUSED_UOCTTI = _fused_uoctti   # from here on `HOG`'s gradient path normalises through it
if numba is not None: _FUSED_UOCTTI = _fused_uoctti   # from here on `HOG`'s gradient path normalises through it

# %%
# the compiled normalisation equals autograd through `_uoctti_normalize` in value and gradient: 9 and 4
# orientations, cells whose values reach the 0.2 clamp, an empty (all-zero) corner, float64 and float32
for K, (h, w), dt in ((9, (5, 7), torch.float64), (4, (3, 2), torch.float64), (9, (6, 4), torch.float32)):
    _hist = torch.rand(2, 2 * K, h, w, dtype=dt, generator=torch.Generator().manual_seed(K)) ** 3
    _hist[0, :, 0, 0] = 0; _hist[1, 0, 1, 1] = 5.0                     # nothing in one cell; one bin clamped at 0.2
    _probe = torch.randn(2, 3 * K + 4, h, w, dtype=dt, generator=torch.Generator().manual_seed(1))
    a, b = _hist.clone().requires_grad_(), _hist.clone().requires_grad_()
    ref, comp = _uoctti_normalize(a, K), _UOCTTICompiled.apply(b, K)
    tol = 1e-12 if dt == torch.float64 else 1e-5
    test_close(comp, ref, eps=tol)
    (ref * _probe).sum().backward(); (comp * _probe).sum().backward()
    test_close(ref[1, 0, 1, 1], 0.4)                                 # the large bin is clamped in all four blocks
    test_close(b.grad, a.grad, eps=tol * float(a.grad.abs().max()))
_hx = (torch.rand(1, 8, 4, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(3)) * 0.3).requires_grad_()
assert torch.autograd.gradcheck(lambda z: _UOCTTICompiled.apply(z, 4), (_hx,))

# %%
# the compiled layer equals `_HOGCells` in value and gradient: HOG and HOGb, 1 to 3 channels, float64 and float32
for bil in (False, True):
    for C, cs, (H, W), dt in ((3, 8, (37, 45), torch.float64), (1, 5, (29, 31), torch.float64), (2, 6, (40, 38), torch.float32)):
        im = torch.rand(2, C, H, W, dtype=dt, generator=torch.Generator().manual_seed(C))
        im[:, :, :6, :6] = 0.5                                 # a flat corner: zero gradients
        cells = hog_cell_counts(H, W, cs)
        probe = torch.randn(2, 18, *cells, dtype=dt, generator=torch.Generator().manual_seed(1))
        a, b = im.clone().requires_grad_(), im.clone().requires_grad_()
        ref, comp = _HOGCells.apply(a, dirs9.to(dt), cs, cells, bil), _fused_hog(b, dirs9.to(dt), cs, cells, bil)
        tol = 1e-10 if dt == torch.float64 else 2e-5
        test_close(comp, ref, eps=tol * float(ref.abs().max()))
        (ref * probe).sum().backward(); (comp * probe).sum().backward()
        test_close(b.grad, a.grad, eps=tol * float(a.grad.abs().max()))
_x = torch.rand(1, 2, 20, 24, dtype=torch.float64, generator=torch.Generator().manual_seed(5), requires_grad=True)
assert torch.autograd.gradcheck(lambda z: _fused_hog(z, dirs9, 4, hog_cell_counts(20, 24, 4), True), (_x,))

# %% [markdown]
# The compiled histograms equal the reference pipeline's for HOG and HOGb, every orientation count VLFeat's
# tests cover (3 to 9), cell sizes 4, 8 and 16, one to three channels, float32 and float64, a flat corner
# (zero gradients), and 45° gradients (`|g_x| = |g_y|`, where the orientation choice is a tie), up to the
# rounding of float additions done in another order (relative 2e-6 in float32):

# %%
for K in range(3, 10):
    dirs = torch.tensor(np.stack([np.cos(np.arange(K) * np.pi / K), np.sin(np.arange(K) * np.pi / K)]))
    for bil, cs, C, dt in ((False, 8, 3, torch.float32), (True, 4, 1, torch.float64), (True, 16, 2, torch.float32)):
        g = torch.Generator().manual_seed(K)
        im = (torch.randint(0, 256, (2, C, 53, 61), generator=g).to(dt) / 255)   # 8-bit values: many exact ties
        im[:, :, :8, :8] = 0.5
        im[0, :, 20:30, 20:30] = (torch.arange(10)[:, None] + torch.arange(10)[None]).to(dt) / 20   # 45-degree ramps
        cells = hog_cell_counts(53, 61, cs)
        kern, off = bilinear_pooling_kernel(cs, dt)
        gx, gy = image_gradients(im, derivative_filters(dt))
        ref = _pool_cells_sparse(_hog_orientation_bins(gx, gy, _magnitude(gx, gy), dirs.to(dt), bil), 2 * K, kern, off, cs, cells)
        rel = 2e-6 if dt == torch.float32 else 1e-12                # float additions in another order
        test_close(_hog_cells_fast(im, dirs, cs, cells, bil), ref, eps=rel * float(ref.abs().max()))
        test_close(_uoctti_compiled(ref, K), _uoctti_normalize(ref, K), eps=1e-6 if dt == torch.float32 else 1e-12)

# DenseSIFT's normalisation: the same descriptors as `_sift_normalize`, with near-zero and clamped ones
for dt in (torch.float32, torch.float64):
    _d = torch.rand(2, 128, 5, 7, dtype=dt, generator=torch.Generator().manual_seed(0)) ** 4
    _d[0, :, 0, 0] = 0; _d[1, :, 1, 1] = 1e-6; _d[1, 0, 2, 2] = 50
    test_close(_sift_normalize_compiled(_d), _sift_normalize(_d), eps=1e-6 if dt == torch.float32 else 1e-12)
# and the whole DenseSIFT through the compiled passes equals the tensor path, for several geometries
_hooks = (_COMPILED_SIFT_POOL, _COMPILED_SIFT_NORMALIZE)
for b, st, (H, W) in ((4, 1, (23, 29)), (8, 8, (61, 50)), (3, 2, (20, 17)), (5, 3, (40, 40))):
    _im = torch.rand(2, 1, H, W, generator=torch.Generator().manual_seed(b))
    with torch.no_grad():
        _fast = DenseSIFT(b, st)(_im)
        _COMPILED_SIFT_POOL = _COMPILED_SIFT_NORMALIZE = None
        _plain = DenseSIFT(b, st)(_im)
        _COMPILED_SIFT_POOL, _COMPILED_SIFT_NORMALIZE = _hooks
    test_eq(_fast.shape, _plain.shape); test_close(_fast, _plain, eps=1e-5)

# %% [markdown]
# ## Summary
#
# - `HOG(cell_size, num_orientations, bilinear_orientations)` is VLFeat's UoCTTI HOG (31 dimensions for 9
#   orientations) and, with `bilinear_orientations=True`, the thesis' HOGb; `hog_glyphs` renders it,
#   `hog_flip_permutation` mirrors it.
# - `DenseSIFT(bin_size, step, ...)` is VLFeat's dense SIFT with the Gaussian window, reproducing its fast
#   `atan2`; `frames(H, W)` gives the descriptor centres.
# - Both are derivative filter banks, an orientation activation (the thesis' "ReLU with a norm-dependent
#   offset", made exact), strided tent convolutions, normalisation and a clamp: differentiable, batched,
#   on any device, with the fixed filters as buffers.
# - Against VLFeat 0.9.21 (`tests/test_features.py`): HOG and HOGb agree to about $2\cdot10^{-6}$, DSIFT to
#   about $3\cdot10^{-6}$ (unit-norm descriptors); on two CPU threads HOG runs at about VLFeat's speed
#   and DSIFT at the thesis' geometry much faster (`bench/bench_features.py`).

# %%
#| hide
import nbdev; nbdev.nbdev_export()
