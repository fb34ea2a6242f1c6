"""CPFS losses (eq 3.2-3.7): equal to a loop transcription, gradients, permutation invariance, degenerate inputs."""
import math

import pytest
import torch
from hypothesis import given, settings, strategies as st

from motion_nbs.cpfs import CPFS_LOSSES, CPFSLoss, cpfs_loss
from motion_nbs.flow import normalize_flow_log


def loop_reference(emb, flow, kind, sigma):
    "Eq 3.2-3.7 transcribed with explicit loops over images and pixels; flow already normalised."
    out = []
    for e, f in zip(emb.tolist(), flow.tolist()):
        n = len(e)
        nrm = [math.sqrt(sum(v * v for v in x)) for x in e]
        Kp = [[0.25 * sum(a * b for a, b in zip(e[p], e[q])) / (nrm[p] * nrm[q]) for q in range(n)] for p in range(n)]
        Kf = [[math.exp(-((f[p][0] - f[q][0]) ** 2 + (f[p][1] - f[q][1]) ** 2) / (2 * sigma ** 2)) for q in range(n)]
              for p in range(n)]
        if kind == "kta":
            num = sum(Kp[p][q] * Kf[p][q] for p in range(n) for q in range(n))
            den = math.sqrt(sum(v * v for r in Kp for v in r) * sum(v * v for r in Kf for v in r))
            out.append(-num / den)
            continue

        def S(K):  # eq 3.5 / 3.6: the diagonal counts as exp(0) = 1
            rows = []
            for p in range(n):
                z = sum(math.exp(K[p][q]) for q in range(n) if q != p) + 1
                rows.append([(1.0 if q == p else math.exp(K[p][q])) / z for q in range(n)])
            return rows

        Sp, Sf = S(Kp), S(Kf)
        target, pred = (Sf, Sp) if kind == "ce" else (Sp, Sf)
        out.append(-sum(target[p][q] * math.log(pred[p][q]) for p in range(n) for q in range(n)) / n)  # mean over rows
    return sum(out) / len(out)


@pytest.mark.parametrize("kind", CPFS_LOSSES)
@pytest.mark.parametrize("B,N,D,sigma", [(1, 2, 3, 0.06), (2, 7, 16, 0.3), (3, 11, 5, 1.0)])
def test_equals_loop_reference(kind, B, N, D, sigma):
    g = torch.Generator().manual_seed(B * 100 + N)
    emb = torch.randn(B, N, D, generator=g, dtype=torch.float64)
    flow = torch.randn(B, N, 2, generator=g, dtype=torch.float64) * 20
    ours = cpfs_loss(emb, flow, kind, sigma2=sigma ** 2)
    fn = normalize_flow_log(flow.transpose(1, 2)[..., None])[..., 0].transpose(1, 2)
    assert abs(ours.item() - loop_reference(emb, fn, kind, sigma)) < 1e-10


@pytest.mark.parametrize("kind", CPFS_LOSSES)
def test_gradcheck(kind):
    g = torch.Generator().manual_seed(3)
    emb = torch.randn(2, 6, 4, generator=g, dtype=torch.float64, requires_grad=True)
    flow = torch.randn(2, 6, 2, generator=g, dtype=torch.float64) * 0.4
    flow.requires_grad_(True)
    sigma2 = torch.tensor(0.09, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda e, f, s: cpfs_loss(e, f, kind, sigma2=s, normalize=False), (emb, flow, sigma2))


@settings(max_examples=30, deadline=None)
@given(st.sampled_from(CPFS_LOSSES), st.integers(2, 12), st.integers(0, 2**31 - 1))
def test_permuting_pixels_leaves_loss_unchanged(kind, n, seed):
    g = torch.Generator().manual_seed(seed)
    emb, flow = torch.randn(2, n, 5, generator=g, dtype=torch.float64), torch.randn(2, n, 2, generator=g, dtype=torch.float64) * 5
    perm = torch.randperm(n, generator=g)
    a, b = cpfs_loss(emb, flow, kind), cpfs_loss(emb[:, perm], flow[:, perm], kind)
    assert abs(a.item() - b.item()) < 1e-12


def _finite_loss_and_grads(kind, emb, flow, sigma=0.06):
    emb = emb.clone().requires_grad_(True)
    loss = cpfs_loss(emb, flow, kind, sigma2=sigma ** 2)
    loss.backward()
    return torch.isfinite(loss).item() and torch.isfinite(emb.grad).all().item()


@settings(max_examples=40, deadline=None)
@given(st.sampled_from(CPFS_LOSSES), st.integers(1, 9), st.integers(0, 2**31 - 1),
       st.sampled_from(["zero_emb", "some_zero_emb", "identical_flow", "huge_flow", "tiny_sigma"]))
def test_degenerate_inputs_stay_finite(kind, n, seed, case):
    g = torch.Generator().manual_seed(seed)
    emb, flow, sigma = torch.randn(2, n, 16, generator=g), torch.randn(2, n, 2, generator=g) * 3, 0.06
    if case == "zero_emb": emb = torch.zeros_like(emb)
    if case == "some_zero_emb": emb[:, : n // 2 + 1] = 0
    if case == "identical_flow": flow = torch.ones_like(flow) * 4
    if case == "huge_flow": flow = flow * 1e30
    if case == "tiny_sigma": sigma = 1e-6
    assert _finite_loss_and_grads(kind, emb, flow, sigma)


def test_learned_sigma_moves_and_is_positive():
    crit = CPFSLoss("ce", sigma2=0.01, learn_sigma=True)
    g = torch.Generator().manual_seed(0)
    emb, flow = torch.randn(4, 32, 16, generator=g), torch.randn(4, 32, 2, generator=g) * 5
    opt = torch.optim.Adam(crit.parameters(), lr=0.1)
    before = crit.sigma2
    for _ in range(5):
        opt.zero_grad(); crit(emb, flow).backward(); opt.step()
    assert crit.sigma2 != before and crit.sigma2 > 0


@pytest.mark.parametrize("emb_shape,flow_shape,msg", [
    ((2, 8, 16), (3, 8, 2), "differ in batch size"),
    ((2, 8, 16), (2, 7, 2), "differ in batch size or number of pixels"),
    ((8, 16), (8, 2), r"emb must have shape \(B,N,D\)"),
    ((2, 8, 16), (2, 8, 3), r"flow must have shape \(B,N,2\)"),
])
def test_shape_errors(emb_shape, flow_shape, msg):
    with pytest.raises(ValueError, match=msg): cpfs_loss(torch.randn(emb_shape), torch.randn(flow_shape))


def test_nan_flow_and_unknown_loss():
    flow = torch.zeros(1, 4, 2); flow[0, 2, 1] = float("nan")
    with pytest.raises(ValueError, match="NaN"): cpfs_loss(torch.randn(1, 4, 16), flow)
    with pytest.raises(ValueError, match="kind='l2'; valid: kta, ce, ce_rev"): cpfs_loss(torch.randn(1, 4, 16), torch.zeros(1, 4, 2), "l2")
    with pytest.raises(ValueError, match="valid: kta, ce, ce_rev"): CPFSLoss("l2")


def test_learned_sigma_has_its_own_learning_rate():
    "In training, log σ starts at the neutral σ² = 0.04 and Adam's first step moves it by sigma_lr (1e-2), not by the network's 1e-4."
    from motion_nbs.cpfs import NEUTRAL_SIGMA2, CPFSConfig, build_cpfs_model
    from motion_nbs.learner import fit
    cfg = CPFSConfig.from_preset(loss="ce", num_pixels=16, image_size=64, batch_size=2, num_iters=1, out_dir=None, progress=False, device="cpu")
    assert cfg.out_dir is None and CPFSConfig.from_preset().out_dir.endswith("cpfs")   # out_dir=None: no files; omitted: the runs folder
    trainer = build_cpfs_model(cfg)
    assert abs(trainer.crit.sigma2 - NEUTRAL_SIGMA2) < 1e-9
    groups = trainer.optimizer_groups()
    assert len(groups) == 2 and groups[1]["lr"] == 1e-2 and groups[1]["params"] == [trainer.crit.log_sigma]
    before = float(trainer.crit.log_sigma.detach())
    g = torch.Generator().manual_seed(0)
    data = [{"image": torch.rand(3, 64, 64, generator=g), "flow": torch.randn(2, 64, 64, generator=g) * 5} for _ in range(2)]
    fit(trainer, data, lambda m, b: m(b["image"], b["flow"]), None, cfg)
    assert abs(abs(float(trainer.crit.log_sigma.detach()) - before) - 1e-2) < 1e-4   # Adam's first step: lr · g / |g|
