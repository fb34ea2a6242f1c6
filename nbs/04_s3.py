# %%
#| default_exp s3

# %% [markdown]
# # Self-supervised segmentation (S3-CNN)
#
# > Chapter 4 of the thesis: segment a single image so that the optical flow inside each segment is coherent — affine, rigid or of low entropy.

# %% [markdown]
# A network $\Phi$ sees one frame $\mathbf{x}$ and predicts $L$ soft segments $\mathbf{m} = \Phi(\mathbf{x})$,
# $\mathbf{m}_l \in [0,1]^{H\times W}$, $\sum_l \mathbf{m}_l = 1$. The optical flow $\mathbf{f}$ is used only by the
# loss: a segmentation is good when a *simple motion model* fits the flow inside every segment
# (section 4.3). The model's parameters are not predicted by the network — they are fitted in closed
# form inside the loss, where the flow is available. Three models give three losses (section 4.3.1):
#
# - **affine** motion (eq 4.4): exact for planar objects under an orthographic camera (the cube faces
#   of the `single_cube` data);
# - **rigid** motion (eq 4.5–4.8): an epipolar constraint, exact for any rigid object under a
#   perspective camera (the `multi_cube` data);
# - **low-entropy** motion (eq 4.9–4.11): a histogram of the flow magnitude per segment, a
#   non-parametric model.
#
# Vocabulary: `masks` `(B,L,H,W)` soft segments, `flow` `(B,2,H,W)` in pixels. Numerical notes:
# `shared/reference/fitting-numerics.md`.

# %%
#| export
import torch
import torch.nn as nn
import torch.nn.functional as F

from motion_nbs.flow import log_flow_magnitude

# %%
#| hide
from fastcore.test import test_close, test_eq, test_fail


# %% [markdown]
# ## From scores to soft masks (section 4.3.2)
#
# The network's scores $s_u$ are first squashed to $[-1, 1]$ by $2\sigma(s) - 1$, then turned into a
# distribution over the $L$ segments by a softmax with a high temperature $\beta$ (30 or 10 in the
# thesis). The thesis found this unusual head necessary for convergence even on toy data: the bounded
# logits cap how peaked the softmax can be.

# %%
#| export
def soft_masks(scores: torch.Tensor,  # `(B,L,H,W)` segmentation scores
               temperature: float = 30.0  # β: 30 or 10 in the thesis
              ) -> torch.Tensor:
    """m = softmax over segments of β·(2σ(s) − 1).

    Shape: `(B,L,H,W)` → `(B,L,H,W)`, summing to 1 over L."""
    return torch.softmax(temperature * (2 * torch.sigmoid(scores) - 1), dim=1)


# %%
m = soft_masks(torch.randn(2, 5, 4, 6))
test_close(m.sum(1), torch.ones(2, 4, 6), eps=1e-6)
assert soft_masks(torch.tensor([[[[50.0]], [[-50.0]]]]), 30)[0, 1, 0, 0] > 1e-27  # bounded: never exactly 0
test_close(soft_masks(torch.tensor([[[[50.0]], [[-50.0]]]]), 30)[0, 1, 0, 0], torch.exp(torch.tensor(-60.0)), eps=1e-30)


# %% [markdown]
# ## Checking inputs, and pixel coordinates
#
# Pixel coordinates enter the motion models. They are expressed in normalised units, $x, y \in [-1, 1]$
# across the image (and the flow with them), which keeps the normal equations well conditioned. For
# the rigid model this is a fixed change of units for the whole image, *not* the per-segment
# data-dependent normalisation of Hartley's 8-point algorithm, which the thesis found to hinder
# convergence and did not use.

# %%
#| exporti
def _check(masks, flow):
    if masks.ndim != 4: raise ValueError(f"masks must have shape (B,L,H,W), got {tuple(masks.shape)}")
    if flow.ndim != 4 or flow.shape[1] != 2: raise ValueError(f"flow must have shape (B,2,H,W), got {tuple(flow.shape)}")
    if masks.shape[0] != flow.shape[0] or masks.shape[-2:] != flow.shape[-2:]:
        raise ValueError(f"masks {tuple(masks.shape)} and flow {tuple(flow.shape)} differ in batch or spatial size")
    if not torch.isfinite(flow).all(): raise ValueError("flow contains NaN or infinite values")

def _grid(h, w, dtype, device):
    "Normalised pixel coordinates (x, y) in [-1, 1] and the scale from pixels to those units."
    ys = torch.linspace(-1, 1, h, dtype=dtype, device=device) if h > 1 else torch.zeros(1, dtype=dtype, device=device)
    xs = torch.linspace(-1, 1, w, dtype=dtype, device=device) if w > 1 else torch.zeros(1, dtype=dtype, device=device)
    y, x = torch.meshgrid(ys, xs, indexing="ij")
    scale = torch.tensor([2.0 / max(w - 1, 1), 2.0 / max(h - 1, 1)], dtype=dtype, device=device)
    return x, y, scale


# %% [markdown]
# ## Affine motion (eq 4.4)
#
# Within segment $l$ the flow is modelled as affine in the pixel position, $\hat f(x, y) = \Theta_l^\top
# (x, y, 1)$ with $\Theta_l \in \mathbb{R}^{3\times 2}$ (six parameters). The mask-weighted least-squares fit
# has the closed form
#
# $$ \theta_l^* = (X^\top M_l X)^{-1} X^\top M_l F ,$$
#
# which separates into one $3\times 3$ system per segment shared by both flow components:
# $G_l = \sum_u m_{lu}\, \varphi_u \varphi_u^\top$, $b_l = \sum_u m_{lu}\, \varphi_u f_u^\top$ with
# $\varphi_u = (x_u, y_u, 1)$. The reconstruction blends the segments' fits with the masks and the loss
# is the smooth-$L_1$ of the residual:
#
# $$ \hat{\mathbf f}(u) = \sum_l m_{lu}\, \hat f(u; \theta_l^*), \qquad \mathcal L = R(\hat{\mathbf f} - \mathbf f) \qquad (4.4)$$
#
# A segment with (almost) no mass makes $G_l$ singular; a ridge $\lambda = 10^{-6}\cdot HW$ (relative
# to the image's mass, so it does not depend on the resolution) keeps the solve well posed; with it an
# empty segment fits $\Theta_l = 0$, which costs nothing since its mask is 0. $R$ is smooth-$L_1$ with
# threshold 1 pixel, averaged over pixels, flow components and images. Flow stays in pixels in the
# residual (only the regressors are normalised).

# %%
#| export
def affine_fit(masks: torch.Tensor,  # `(B,L,H,W)` soft segments
               flow: torch.Tensor,  # `(B,2,H,W)` flow in pixels
               ridge: float = 1e-6  # λ / (H·W): Tikhonov term for empty segments
              ) -> torch.Tensor:
    """Per-segment weighted least-squares affine flow model θ* = (XᵀMX + λI)⁻¹XᵀMF (coordinates in [-1, 1]).

    Shape: `(B,L,H,W)`, `(B,2,H,W)` → `(B,L,3,2)`."""
    _check(masks, flow)
    b, L, h, w = masks.shape
    dt = torch.promote_types(masks.dtype, flow.dtype)
    x, y, _ = _grid(h, w, dt, masks.device)
    phi = torch.stack([x, y, torch.ones_like(x)]).flatten(1)                      # (3, HW)
    m = masks.to(dt).flatten(2)                                                   # (B, L, HW)
    G = torch.einsum("blu,iu,ju->blij", m, phi, phi)
    rhs = torch.einsum("blu,iu,bcu->blic", m, phi, flow.to(dt).flatten(2))
    eye = torch.eye(3, dtype=dt, device=masks.device)
    return torch.linalg.solve(G + ridge * h * w * eye, rhs)

def affine_loss(masks: torch.Tensor,  # `(B,L,H,W)` soft segments
                flow: torch.Tensor,  # `(B,2,H,W)` flow in pixels
                ridge: float = 1e-6  # see `affine_fit`
               ) -> torch.Tensor:
    "Eq 4.4: smooth-L1 of the flow minus its mask-blended per-segment affine reconstruction. Shape: → `()`."
    theta = affine_fit(masks, flow, ridge)
    b, L, h, w = masks.shape
    x, y, _ = _grid(h, w, theta.dtype, masks.device)
    phi = torch.stack([x, y, torch.ones_like(x)]).flatten(1)
    recon = torch.einsum("blu,blic,iu->bcu", masks.to(theta.dtype).flatten(2), theta, phi).view(b, 2, h, w)
    return F.smooth_l1_loss(recon, flow.to(theta.dtype), beta=1.0)


# %% [markdown]
# An exactly affine flow inside each of two hard segments is reconstructed exactly; a single segment
# cannot fit two different affine motions:

# %%
h, w = 12, 16
xx, yy, _ = _grid(h, w, torch.float64, "cpu")
hard = torch.zeros(1, 2, h, w, dtype=torch.float64); hard[0, 0, :, :7] = 1; hard[0, 1, :, 7:] = 1
fa = torch.stack([3 + 2 * xx - yy, -1 + 0.5 * yy]); fb = torch.stack([-4 + xx, 2 + 3 * xx + yy])
flow2 = torch.where(hard[0, :1].bool(), fa, fb)[None]
assert affine_loss(hard, flow2) < 1e-9
assert affine_loss(hard.sum(1, keepdim=True), flow2) > 0.1


# %% [markdown]
# ## Rigid motion (eq 4.5–4.8)
#
# For a rigid object under a perspective camera every correspondence $q \to q' = q + f(q)$ satisfies the
# epipolar constraint $[q'^\top 1]\,\mathcal F\,[q^\top 1]^\top = 0$ (eq 4.5). Writing $\beta \in \mathbb{R}^9$ for the
# entries of the fundamental matrix $\mathcal F$, the constraints of all pixels stack into $A\beta = 0$ with one
# row $a_u = (x'x, x'y, x', y'x, y'y, y', x, y, 1)$ per pixel. The mask-weighted 8-point estimate
# minimises $\beta^\top A^\top M_l A \beta$ subject to $\|\beta\| = 1$ (eq 4.7): $\beta_l^*$ is the eigenvector of the smallest
# eigenvalue of $Q_l = A^\top M_l A$. The loss is the smooth-$L_1$ of the algebraic residuals $a_u^\top \beta_l^*$,
# weighted by the masks (eq 4.8). As in the thesis: no rank-2 constraint on $\mathcal F$, no per-segment
# normalisation of the correspondences, $Q$ in float64 and symmetrised, $(Q + Q^\top)/2$.
#
# **Differentiating the eigenvector.** The gradient of an eigenvector has terms $1/(\lambda_0 - \lambda_j)$,
# infinite when eigenvalues coincide — and they do: a static segment ($q' = q$) is fitted by every
# skew-symmetric $\mathcal F$ (three zero eigenvalues), so are planar scenes and segments with fewer than 8
# effective points, and an empty segment has $Q = 0$. `smallest_eigenvector` therefore has its own
# backward in which each gap term is damped, $1/\Delta \to \Delta/(\Delta^2 + \varepsilon^2)$ with $\varepsilon$
# relative to the scale of $Q$ ($10^{-6}\,\mathrm{tr}\,Q$). For well-separated eigenvalues this is the exact
# gradient; for degenerate ones it is finite and leaves out the direction the problem cannot decide.
# The loss is invariant to the eigenvector's sign (the residual enters through $R$, which is even).

# %%
#| export
class _SmallestEigenvector(torch.autograd.Function):
    @staticmethod
    def forward(ctx, Q, rel_eps):
        lam, V = torch.linalg.eigh(Q)
        ctx.save_for_backward(lam, V)
        ctx.rel_eps = rel_eps
        return V[..., :, 0]

    @staticmethod
    def backward(ctx, g):
        lam, V = ctx.saved_tensors
        gap = lam[..., :1] - lam                                         # λ0 − λj, (…, n)
        eps = ctx.rel_eps * lam.abs().sum(-1, keepdim=True) + 1e-30    # floor: Q = 0 for an empty segment
        inv = gap / (gap * gap + eps * eps)                              # damped 1/(λ0 − λj); 0 for j = 0
        c = (V.transpose(-1, -2) @ g[..., None])[..., 0] * inv           # (…, n)
        G = (V @ c[..., None]) * V[..., None, :, 0]                     # (Σ_j c_j v_j) v0ᵀ
        return 0.5 * (G + G.transpose(-1, -2)), None

def smallest_eigenvector(Q: torch.Tensor,  # `(…,n,n)` symmetric matrices
                         rel_eps: float = 1e-6  # damping of eigenvalue gaps, relative to Σ|λ|
                        ) -> torch.Tensor:
    """Unit eigenvector of the smallest eigenvalue of symmetric `Q`, with a backward that stays finite
    for repeated eigenvalues. Shape: `(…,n,n)` → `(…,n)`."""
    return _SmallestEigenvector.apply(Q, rel_eps)

def _epipolar_rows(flow):
    "Rows a_u = (x'x, x'y, x', y'x, y'y, y', x, y, 1) in normalised units. Shape: `(B,2,H,W)` → `(B,HW,9)`."
    b, _, h, w = flow.shape
    x, y, scale = _grid(h, w, flow.dtype, flow.device)
    fx, fy = flow[:, 0] * scale[0], flow[:, 1] * scale[1]
    xp, yp = x + fx, y + fy
    x, y = x.expand_as(xp), y.expand_as(yp)
    one = torch.ones_like(xp)
    return torch.stack([xp * x, xp * y, xp, yp * x, yp * y, yp, x, y, one], dim=-1).flatten(1, 2)

def rigid_fit(masks: torch.Tensor,  # `(B,L,H,W)` soft segments
              flow: torch.Tensor  # `(B,2,H,W)` flow in pixels
             ) -> torch.Tensor:
    """Per-segment weighted 8-point fundamental matrix (eq 4.7) in normalised coordinates, float64.

    Shape: `(B,L,H,W)`, `(B,2,H,W)` → `(B,L,3,3)`."""
    _check(masks, flow)
    A = _epipolar_rows(flow.double())                                            # (B, HW, 9)
    Q = torch.einsum("blu,bui,buj->blij", masks.double().flatten(2), A, A)
    beta = smallest_eigenvector(0.5 * (Q + Q.transpose(-1, -2)))
    return beta.view(*beta.shape[:-1], 3, 3)

def rigid_loss(masks: torch.Tensor,  # `(B,L,H,W)` soft segments
               flow: torch.Tensor,  # `(B,2,H,W)` flow in pixels
               residual_scale: float = 1.0  # residuals are divided by this before smooth-L1
              ) -> torch.Tensor:
    "Eq 4.8: mask-weighted smooth-L1 of the epipolar residuals of each segment's 8-point fit. Shape: → `()`."
    Fm = rigid_fit(masks, flow)
    A = _epipolar_rows(flow.double())
    r = torch.einsum("bui,bli->blu", A, Fm.flatten(-2)) / residual_scale        # (B, L, HW)
    rl = F.smooth_l1_loss(r, torch.zeros_like(r), reduction="none", beta=1.0)
    return (masks.double().flatten(2) * rl).sum(1).mean().to(masks.dtype)


# %% [markdown]
# Two rigid objects under perspective: points of a box moved by a 3D rotation and translation,
# projected by a pinhole camera. With one segment per object the loss vanishes; with the objects
# merged into one segment it does not.

# %%
def _rigid_flow(h, w, R, t, depth=4.0, f=1.5):
    "Flow of a fronto-parallel bumpy surface at `depth` moved by (R, t), pinhole focal `f` in [-1,1] units."
    x, y, scale = _grid(h, w, torch.float64, "cpu")
    Z = depth + 0.3 * torch.sin(3 * x) * torch.cos(2 * y)                     # non-planar, so F is unique
    P = torch.stack([x * Z / f, y * Z / f, Z])
    P2 = torch.einsum("ij,jhw->ihw", R, P) + t.view(3, 1, 1)
    x2, y2 = f * P2[0] / P2[2], f * P2[1] / P2[2]
    return torch.stack([(x2 - x) / scale[0], (y2 - y) / scale[1]])

def _rot(ax, ay, az):
    c, s = torch.cos, torch.sin
    Rx = torch.tensor([[1, 0, 0], [0, c(ax), -s(ax)], [0, s(ax), c(ax)]])
    Ry = torch.tensor([[c(ay), 0, s(ay)], [0, 1, 0], [-s(ay), 0, c(ay)]])
    Rz = torch.tensor([[c(az), -s(az), 0], [s(az), c(az), 0], [0, 0, 1]])
    return (Rz @ Ry @ Rx).double()

h, w = 24, 32
fr1 = _rigid_flow(h, w, _rot(*torch.tensor([0.05, -0.08, 0.03], dtype=torch.float64)), torch.tensor([0.2, -0.1, 0.3], dtype=torch.float64))
fr2 = _rigid_flow(h, w, _rot(*torch.tensor([-0.1, 0.02, -0.06], dtype=torch.float64)), torch.tensor([-0.3, 0.2, -0.2], dtype=torch.float64))
hard = torch.zeros(1, 2, h, w, dtype=torch.float64); hard[0, 0, :, :15] = 1; hard[0, 1, :, 15:] = 1
flowr = torch.where(hard[0, :1].bool(), fr1, fr2)[None]
assert rigid_loss(hard, flowr) < 1e-8
assert rigid_loss(hard.sum(1, keepdim=True), flowr) > 100 * rigid_loss(hard, flowr) + 1e-6

# %% [markdown]
# Degenerate segments keep finite gradients: a static one (zero flow), an empty one, planar motion.

# %%
for case in ("static", "empty", "planar"):
    fl = flowr.clone()
    if case == "static": fl[:, :, :, :15] = 0
    if case == "planar": fl = torch.ones_like(fl) * torch.tensor([2.0, -1.0], dtype=torch.float64).view(1, 2, 1, 1)
    mk = torch.cat([hard, torch.zeros_like(hard[:, :1])], 1) if case == "empty" else hard
    mk = mk.clone().requires_grad_(True)
    rigid_loss(mk, fl).backward()
    assert torch.isfinite(mk.grad).all(), case


# %% [markdown]
# ## Low-entropy motion (eq 4.9–4.11)
#
# A non-parametric alternative: within a good segment the flow takes few distinct values, so its
# histogram has low entropy. The flow *magnitude* is normalised logarithmically by eq 4.10 ($M = 50$) so
# that both subtle and large motions are resolved, and binned into $B$ uniform bins of $[0, 1]$. With
# soft masks, each segment's histogram counts pixels with weight $m_{lu}$:
#
# $$ \mathcal L = \sum_l w_l\, H(\hat p_l), \quad w_l = \sum_u m_{lu}, \quad \hat p_l(b) \propto \sum_u m_{lu}\,\delta(\tilde f_u = b) \qquad (4.11)$$
#
# We divide by the number of pixels (the loss is then the pixel-averaged entropy, independent of the
# resolution) and average over images. Since $\hat p_l = c_l / w_l$ for the soft counts $c_l$, the weighted
# entropy is $w_l \log w_l - \sum_b c_{lb} \log c_{lb}$, computed with $\epsilon = 10^{-12}$ inside the logs so that
# empty bins and empty segments have finite gradients. Gradients flow to the masks only: the flow is
# the target.

# %%
#| export
def entropy_loss(masks: torch.Tensor,  # `(B,L,H,W)` soft segments
                 flow: torch.Tensor,  # `(B,2,H,W)` flow in pixels
                 num_bins: int = 16,  # B: bins of the normalised flow magnitude
                 max_flow: float = 50.0,  # M of eq 4.10
                 eps: float = 1e-12) -> torch.Tensor:
    "Eq 4.11: Σ_l w_l·H(p̂_l) of soft-mask-weighted histograms of log flow magnitude, per pixel. Shape: → `()`."
    _check(masks, flow)
    if num_bins < 1: raise ValueError(f"num_bins must be >= 1, got {num_bins}")
    b, L, h, w = masks.shape
    bins = (log_flow_magnitude(flow, max_flow) * num_bins).floor().long().clamp_(0, num_bins - 1)
    onehot = F.one_hot(bins.flatten(1), num_bins).to(masks.dtype)                  # (B, HW, nb)
    counts = torch.einsum("blu,bun->bln", masks.flatten(2), onehot)                 # (B, L, nb)
    mass = counts.sum(-1)                                                          # w_l
    # w·H(p̂) with p̂ = c/w equals w·log w − Σ_b c_b·log c_b; the ε inside the logs keeps the gradient
    # finite for empty bins and empty segments (d(c log c)/dc = log c + 1 is −∞ at c = 0).
    weighted = mass * torch.log(mass + eps) - (counts * torch.log(counts + eps)).sum(-1)
    return weighted.sum(1).mean() / (h * w)


# %% [markdown]
# By hand: one hard segment over 4 pixels whose flow magnitudes fall in two bins, two pixels each,
# has entropy $\log 2$ and weight 4, over 4 pixels: $\log 2$. Split into two pure segments: 0.

# %%
f4 = torch.tensor([0.0, 0.0, 30.0, 30.0]).view(1, 1, 1, 4).expand(1, 2, 1, 4) / 2**0.5
one = torch.ones(1, 1, 1, 4)
test_close(entropy_loss(one, f4), torch.log(torch.tensor(2.0)), eps=1e-6)
two = torch.tensor([[1.0, 1, 0, 0], [0, 0, 1, 1]]).view(1, 2, 1, 4)
test_close(entropy_loss(two, f4), 0.0, eps=1e-6)


# %% [markdown]
# ## Matched mIoU
#
# A self-supervised segmenter's segment ids are arbitrary: segment 3 may be the top face of the cube
# in every image, or the background. Before computing the intersection-over-union with ground-truth
# regions, predicted segments are matched one-to-one to ground-truth regions by the Hungarian
# algorithm (scipy's `linear_sum_assignment`), maximising the total IoU. The score is the mean IoU over
# ground-truth regions present in the image (background included); a region left unmatched (more
# regions than segments) scores 0. Images are matched independently and the mean over images is
# reported.

# %%
#| export
def matched_iou(pred: torch.Tensor,  # `(H,W)` long predicted segment ids
                gt: torch.Tensor  # `(H,W)` long ground-truth region ids
               ) -> dict:
    "Hungarian-matched IoU of one image: {gt id: IoU} for every ground-truth region present."
    from scipy.optimize import linear_sum_assignment
    if pred.shape != gt.shape: raise ValueError(f"pred {tuple(pred.shape)} and gt {tuple(gt.shape)} differ in shape")
    p_ids, p = torch.unique(pred, return_inverse=True)
    g_ids, g = torch.unique(gt, return_inverse=True)
    inter = torch.zeros(len(g_ids), len(p_ids), dtype=torch.float64)
    inter.index_put_((g.flatten(), p.flatten()), torch.ones(g.numel(), dtype=torch.float64), accumulate=True)
    union = inter.sum(1, keepdim=True) + inter.sum(0, keepdim=True) - inter
    iou = (inter / union).numpy()
    rows, cols = linear_sum_assignment(-iou)
    out = {int(i): 0.0 for i in g_ids}
    for r, c in zip(rows, cols): out[int(g_ids[r])] = float(iou[r, c])
    return out

def matched_miou(pred: torch.Tensor,  # `(H,W)` or `(B,H,W)` predicted segment ids
                 gt: torch.Tensor  # same shape: ground-truth region ids
                ) -> float:
    "Mean over images of the mean Hungarian-matched IoU over ground-truth regions."
    if pred.shape != gt.shape: raise ValueError(f"pred {tuple(pred.shape)} and gt {tuple(gt.shape)} differ in shape")
    if pred.ndim == 2: pred, gt = pred[None], gt[None]
    scores = [sum(d.values()) / len(d) for d in (matched_iou(p, g) for p, g in zip(pred, gt))]
    return float(sum(scores) / len(scores))


# %%
g = torch.tensor([[0, 0, 1, 1], [0, 0, 1, 1], [2, 2, 2, 2]])
test_eq(matched_miou((g + 1) % 3 * 7, g), 1.0)                   # a relabelling is a perfect segmentation
test_close(matched_miou(torch.zeros_like(g), g), (4 / 12) / 3)      # one segment: matched to the largest region
test_eq(matched_iou(torch.tensor([[5, 5], [5, 9]]), torch.tensor([[0, 0], [1, 1]])), {0: 2 / 3, 1: 0.5})

# %%
#| hide
import nbdev; nbdev.nbdev_export()
