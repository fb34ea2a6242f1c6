"""S3-CNN losses (eq 4.4-4.11): exact fits, hand computations, gradients, degenerate inputs, matched mIoU."""
import itertools
import math

import numpy as np
import pytest
import scipy.stats
import torch
from hypothesis import given, settings, strategies as st

from motion_nbs.flow import log_flow_magnitude
from motion_nbs.s3 import (affine_loss, entropy_loss, matched_iou, matched_miou, rigid_fit, rigid_loss,
                           smallest_eigenvector, soft_masks)

LOSSES = {"affine": affine_loss, "rigid": rigid_loss, "entropy": entropy_loss}


def voronoi_masks(L, h, w, seed):
    "Hard masks of a random partition of the image into L cells. Shape: (1,L,h,w) float64."
    g = torch.Generator().manual_seed(seed)
    centres = torch.rand(L, 2, generator=g, dtype=torch.float64) * torch.tensor([w, h], dtype=torch.float64)
    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float64), torch.arange(w, dtype=torch.float64), indexing="ij")
    d = (xs[None] - centres[:, 0, None, None]) ** 2 + (ys[None] - centres[:, 1, None, None]) ** 2
    return torch.nn.functional.one_hot(d.argmin(0), L).permute(2, 0, 1)[None].double()


def norm_grid(h, w):
    ys, xs = torch.meshgrid(torch.linspace(-1, 1, h, dtype=torch.float64), torch.linspace(-1, 1, w, dtype=torch.float64), indexing="ij")
    return xs, ys


@pytest.mark.parametrize("seed", range(4))
def test_affine_loss_vanishes_for_piecewise_affine_flow(seed):
    L, h, w = 4, 20, 28
    masks = voronoi_masks(L, h, w, seed)
    xs, ys = norm_grid(h, w)
    theta = torch.randn(L, 3, 2, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * 5
    per = torch.einsum("lic,ihw->lchw", theta, torch.stack([xs, ys, torch.ones_like(xs)]))
    flow = (masks[0, :, None] * per).sum(0)[None]
    assert affine_loss(masks, flow) <= 1e-6


def _pinhole_rigid_flow(h, w, R, t, Z):
    "Exact flow of 3D points with depth Z (pinhole, focal 1.2 in [-1,1] units) under x -> R x + t, in pixels."
    xs, ys = norm_grid(h, w)
    f = 1.2
    P = torch.stack([xs * Z / f, ys * Z / f, Z])
    P2 = torch.einsum("ij,jhw->ihw", R, P) + t.view(3, 1, 1)
    x2, y2 = f * P2[0] / P2[2], f * P2[1] / P2[2]
    return torch.stack([(x2 - xs) * (w - 1) / 2, (y2 - ys) * (h - 1) / 2])[None]


@pytest.mark.parametrize("seed", range(4))
def test_rigid_loss_vanishes_for_rigid_motion_in_one_segment(seed):
    g = torch.Generator().manual_seed(seed)
    h, w = 18, 24
    A = torch.randn(3, 3, generator=g, dtype=torch.float64) * 0.1
    R = torch.linalg.matrix_exp(A - A.T)  # a random small rotation
    t = torch.randn(3, generator=g, dtype=torch.float64) * 0.3
    Z = 3 + torch.rand(h, w, generator=g, dtype=torch.float64)  # a random (non-planar) depth map
    flow = _pinhole_rigid_flow(h, w, R, t, Z)
    one = torch.ones(1, 1, h, w, dtype=torch.float64)
    assert rigid_loss(one, flow) < 1e-10
    # and the fitted F is the true one (up to scale and sign): [t]_x R in normalised coordinates
    tx = torch.tensor([[0, -t[2], t[1]], [t[2], 0, -t[0]], [-t[1], t[0], 0]], dtype=torch.float64)
    K = torch.diag(torch.tensor([1.2, 1.2, 1.0], dtype=torch.float64))
    Ftrue = torch.linalg.inv(K).T @ tx @ R @ torch.linalg.inv(K)
    Ftrue = Ftrue / Ftrue.norm()
    Fhat = rigid_fit(one, flow)[0, 0]
    assert min((Fhat - Ftrue).norm(), (Fhat + Ftrue).norm()) < 1e-6


@pytest.mark.parametrize("num_bins", [4, 16])
def test_entropy_loss_equals_scipy_for_hard_masks(num_bins):
    h, w, L = 10, 12, 3
    masks = voronoi_masks(L, h, w, 5)
    flow = torch.randn(1, 2, h, w, generator=torch.Generator().manual_seed(1), dtype=torch.float64) * 10
    bins = np.minimum(np.floor(log_flow_magnitude(flow)[0].numpy() * num_bins), num_bins - 1).astype(int)
    expected = 0.0
    for l in range(L):
        sel = masks[0, l].bool().numpy()
        counts = np.bincount(bins[sel], minlength=num_bins)
        expected += sel.sum() * scipy.stats.entropy(counts)  # scipy normalises the counts
    assert abs(entropy_loss(masks, flow, num_bins).item() - expected / (h * w)) < 1e-9


@pytest.mark.parametrize("name", list(LOSSES))
def test_gradcheck_wrt_masks(name):
    g = torch.Generator().manual_seed(0)
    h, w = 6, 7
    masks = soft_masks(torch.randn(1, 3, h, w, generator=g, dtype=torch.float64), temperature=2.0).requires_grad_(True)
    xs, ys = norm_grid(h, w)
    flow = torch.stack([3 * xs + ys, 2 - ys])[None] + 0.3 * torch.randn(1, 2, h, w, generator=g, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda m: LOSSES[name](m, flow), (masks,))


def test_smallest_eigenvector_gradient_is_exact_when_gaps_are_large():
    g = torch.Generator().manual_seed(2)
    B = torch.randn(5, 5, generator=g, dtype=torch.float64)
    Q = (B @ B.T).requires_grad_(True)
    w = torch.randn(5, generator=g, dtype=torch.float64)
    # sign-invariant function of the eigenvector
    assert torch.autograd.gradcheck(lambda q: (smallest_eigenvector(0.5 * (q + q.T)) @ w) ** 2, (Q,))


@settings(max_examples=40, deadline=None)
@given(st.sampled_from(list(LOSSES)), st.integers(1, 5), st.integers(0, 10_000),
       st.sampled_from(["random", "zero_flow", "constant_flow", "empty_segment", "hard"]))
def test_degenerate_inputs_give_finite_losses_and_gradients(name, L, seed, case):
    g = torch.Generator().manual_seed(seed)
    h, w = 8, 9
    scores = torch.randn(1, L, h, w, generator=g) * 3
    flow = torch.randn(1, 2, h, w, generator=g) * 4
    if case == "zero_flow": flow = torch.zeros_like(flow)
    if case == "constant_flow": flow = torch.ones_like(flow) * torch.tensor([3.0, -1.0]).view(1, 2, 1, 1)
    masks = soft_masks(scores)
    if case == "empty_segment": masks = torch.cat([masks, torch.zeros_like(masks[:, :1])], 1)
    if case == "hard": masks = torch.nn.functional.one_hot(scores.argmax(1), L).permute(0, 3, 1, 2).float()
    masks = masks.detach().requires_grad_(True)
    loss = LOSSES[name](masks, flow)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(masks.grad).all()


def brute_force_miou(pred, gt):
    "Best one-to-one matching by trying every assignment (small cases only)."
    p_ids, g_ids = pred.unique().tolist(), gt.unique().tolist()
    iou = {(a, b): ((gt == a) & (pred == b)).sum().item() / ((gt == a) | (pred == b)).sum().item() for a in g_ids for b in p_ids}
    best = 0.0
    k = min(len(g_ids), len(p_ids))
    for gs in itertools.permutations(g_ids, k):
        for ps in itertools.permutations(p_ids, k):
            best = max(best, sum(iou[a, b] for a, b in zip(gs, ps)))
    return best / len(g_ids)


@settings(max_examples=30, deadline=None)
@given(st.integers(1, 4), st.integers(1, 4), st.integers(0, 10_000))
def test_matched_miou_equals_brute_force(n_pred, n_gt, seed):
    g = torch.Generator().manual_seed(seed)
    pred, gt = torch.randint(0, n_pred, (6, 7), generator=g), torch.randint(0, n_gt, (6, 7), generator=g)
    assert math.isclose(matched_miou(pred, gt), brute_force_miou(pred, gt), abs_tol=1e-12)


def test_bad_input():
    with pytest.raises(ValueError, match=r"masks \(1, 2, 4, 4\) and flow \(1, 2, 4, 5\) differ"):
        affine_loss(torch.rand(1, 2, 4, 4), torch.rand(1, 2, 4, 5))
    with pytest.raises(ValueError, match=r"flow must have shape \(B,2,H,W\)"): rigid_loss(torch.rand(1, 2, 4, 4), torch.rand(1, 3, 4, 4))
    with pytest.raises(ValueError, match="NaN"): entropy_loss(torch.rand(1, 2, 4, 4), torch.full((1, 2, 4, 4), float("nan")))
    with pytest.raises(ValueError, match="differ in shape"): matched_miou(torch.zeros(3, 3, dtype=torch.long), torch.zeros(3, 4, dtype=torch.long))
    for loss in LOSSES.values():   # no segments at all would score a "perfect" 0; negative masks a negative or NaN loss
        with pytest.raises(ValueError, match=r"masks is all zeros for item\(s\) \[1\]"):
            loss(torch.cat([torch.ones(1, 2, 4, 4) / 2, torch.zeros(1, 2, 4, 4)]), torch.rand(2, 2, 4, 4))
        with pytest.raises(ValueError, match="masks has negative values"): loss(torch.rand(1, 2, 4, 4) - 0.5, torch.rand(1, 2, 4, 4))


@settings(max_examples=30, deadline=None)
@given(st.integers(16, 80), st.integers(16, 80), st.integers(1, 12))
def test_grid_baseline_has_num_segments_near_equal_cells(h, w, L):
    from motion_nbs.s3 import grid_segments
    g = grid_segments(h, w, L)
    assert g.shape == (h, w) and g.unique().tolist() == list(range(L))
    sizes = torch.bincount(g.flatten(), minlength=L).double()
    assert sizes.max() <= 2.5 * sizes.min()  # cells differ by at most a row/column split


def test_affine_loss_threshold_scales_with_the_flow():
    "smooth-L1 is homogeneous: scaling the flow and the threshold by k scales the loss by k."
    masks = soft_masks(torch.randn(2, 3, 10, 12, generator=torch.Generator().manual_seed(3), dtype=torch.float64))
    flow = torch.randn(2, 2, 10, 12, generator=torch.Generator().manual_seed(4), dtype=torch.float64) * 3
    assert torch.allclose(affine_loss(masks, 10 * flow, beta=1.0), 10 * affine_loss(masks, flow, beta=0.1), rtol=1e-9)


@pytest.mark.parametrize("name", list(LOSSES))
def test_training_step_reaches_the_backbone(name):
    "One Adam step through S3Model with each training criterion: finite loss, gradients in the trunk, weights change."
    from motion_nbs.s3 import s3_loss, s3_model
    torch.manual_seed(0)
    model = s3_model("fcn8s_small", num_segments=3)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    image, flow = torch.rand(2, 3, 32, 32), torch.randn(2, 2, 32, 32) * 2
    for _ in range(2):  # the score layers start at zero: the trunk gets gradient from the second step
        loss = s3_loss(name)(model(image), flow)
        opt.zero_grad(); loss.backward(); opt.step()
    assert torch.isfinite(loss)
    g = model.backbone.conv1_1.weight.grad
    assert g is not None and torch.isfinite(g).all() and g.abs().sum() > 0


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_kmeans_baselines_recover_two_regions(seed):
    "Colour k-means on a two-colour image and flow k-means on a two-motion flow find the regions exactly (mIoU 1)."
    from motion_nbs.s3 import colour_kmeans_segments, flow_kmeans_segments, object_oracle_segments
    g = torch.Generator().manual_seed(seed)
    h, w = 16, 20
    gt = torch.zeros(2, h, w, dtype=torch.long)
    for b in range(2):
        t, l = torch.randint(0, h - 4, (1,), generator=g).item(), torch.randint(0, w - 4, (1,), generator=g).item()
        gt[b, t:t + 4, l:l + 5] = 1
    colours = torch.rand(2, 3, generator=g)
    image = colours[gt].permute(0, 3, 1, 2)
    assert matched_miou(colour_kmeans_segments(image, 2, seed), gt) == 1.0
    flow = (torch.randn(2, 2, generator=g) * 3)[gt].permute(0, 3, 1, 2)
    assert matched_miou(flow_kmeans_segments(flow, 2, seed), gt) == 1.0
    assert torch.equal(object_oracle_segments(gt * 3), gt)


def test_oracle_on_parts_is_the_silhouette():
    "The object/background oracle scored against parts: background IoU 1, the silhouette matched to one part."
    from motion_nbs.s3 import object_oracle_segments
    parts = torch.zeros(1, 4, 4, dtype=torch.long); parts[0, :2, 2:] = 1; parts[0, 2:, 2:] = 2   # two faces of 4 px each
    inst = (parts > 0).long()
    assert matched_miou(object_oracle_segments(inst), parts) == pytest.approx((1 + 0.5 + 0) / 3)


def test_score_init_breaks_the_symmetry():
    "Zero score layers: identical scores for every segment; normal init: seeds give different, non-symmetric scores."
    from motion_nbs.s3 import S3Config, s3_model
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    torch.manual_seed(0)
    z = s3_model(num_segments=4, output_stride=2, score_init="zero").backbone(x)
    assert (z == z[:, :1]).all()
    nets = []
    for seed in (0, 1, 0):
        torch.manual_seed(seed)
        nets.append(s3_model(num_segments=4, output_stride=2, score_init="normal", score_std=1e-3).backbone(x))
    assert not torch.equal(nets[0], nets[1]) and torch.equal(nets[0], nets[2])
    assert not (nets[0] == nets[0][:, :1]).all()
    assert "score_init" not in S3Config.from_preset().to_dict()
    assert S3Config.from_preset(score_init="normal", score_std=0.01).to_dict()["score_std"] == 0.01
