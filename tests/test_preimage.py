"""motion_nbs.preimage: regularisers and Algorithm 1 against hand computations, convergence, determinism,
batch independence, clear errors, and a papermill smoke run of the experiments notebook."""
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import ROOT
from motion_nbs.features import HOG
from motion_nbs.preimage import (TextureRegularizer, algorithm1_step, alpha_norm, caricature, fused_available, gram_matrix,
                                 initial_noise, image_mean, inner_product_loss, invert, maximize, normalized_error,
                                 preimage_params, regularize_and_step, solve_preimage, tv_beta)


def _rand(*shape, seed=0, dtype=torch.float64):
    return torch.rand(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def test_alpha_norm_matches_a_loop():
    x = (_rand(2, 3, 5, 4) - 0.5) * 200
    for alpha, B in ((6.0, 80.0), (2.0, 10.0), (1.5, 50.0)):
        ref = torch.zeros(2, dtype=torch.float64)
        for b in range(2):
            for v in range(5):
                for u in range(4):
                    ref[b] += math.sqrt(sum(x[b, k, v, u].item() ** 2 for k in range(3))) ** alpha
        torch.testing.assert_close(alpha_norm(x, alpha, B), ref / (20 * B ** alpha))


def test_tv_beta_matches_a_loop():
    x = _rand(1, 2, 4, 5) * 50
    for beta, V in ((2.0, 12.3), (1.0, 1.0), (1.5, 3.0)):
        ref = 0.0
        for k in range(2):
            for v in range(4):
                for u in range(5):
                    dx = x[0, k, v, u + 1].item() - x[0, k, v, u].item() if u < 4 else 0.0
                    dy = x[0, k, v + 1, u].item() - x[0, k, v, u].item() if v < 3 else 0.0
                    ref += (dx * dx + dy * dy) ** (beta / 2)
        torch.testing.assert_close(tv_beta(x, beta, V), torch.tensor([ref / (20 * V ** beta)], dtype=torch.float64))


def test_regulariser_gradients():
    "Analytic gradient of N_alpha, and float64 gradcheck of both terms (away from zero differences)."
    x = ((_rand(1, 3, 4, 4) - 0.5) * 100).requires_grad_(True)
    alpha_norm(x, 6.0, 80.0).sum().backward()
    n = x.detach().square().sum(1, keepdim=True).sqrt()
    torch.testing.assert_close(x.grad, 6 * n ** 4 * x.detach() / (16 * 80.0 ** 6))
    y = (_rand(1, 2, 4, 4, seed=1) * 10).requires_grad_(True)
    for beta in (1.0, 1.5, 2.0):
        assert torch.autograd.gradcheck(lambda z: tv_beta(z, beta, 3.0), (y,))
    assert torch.autograd.gradcheck(lambda z: alpha_norm(z, 6.0, 5.0), (y,))
    # quadratic TV: the gradient is the (negated, doubled) discrete Laplacian with the zero-flux border
    z = _rand(1, 1, 3, 3, seed=2).requires_grad_(True)
    tv_beta(z, 2.0, 1.0).sum().backward()
    a = z.detach()[0, 0]
    g00 = 2 * ((a[0, 0] - a[0, 1]) + (a[0, 0] - a[1, 0])) / 9
    torch.testing.assert_close(z.grad[0, 0, 0, 0], g00)


def test_algorithm1_two_steps_by_hand():
    x = torch.tensor([[[[1.0]], [[2.0]]]], dtype=torch.float64)
    G, mu = torch.zeros_like(x), torch.zeros_like(x)
    g1 = torch.tensor([[[[0.5]], [[-3.0]]]], dtype=torch.float64)
    eta0, rho = 2.0, 0.9
    algorithm1_step(x, g1, G, mu, eta0, rho, bound=1e9)
    G_ref = g1 ** 2
    mu_ref = -g1 / (1 / eta0 + G_ref.sqrt())
    torch.testing.assert_close(G, G_ref); torch.testing.assert_close(mu, mu_ref)
    torch.testing.assert_close(x, torch.tensor([[[[1.0]], [[2.0]]]], dtype=torch.float64) + mu_ref)
    x_ref = x.clone()
    g2 = torch.tensor([[[[1.0]], [[1.0]]]], dtype=torch.float64)
    algorithm1_step(x, g2, G, mu, eta0, rho, bound=1e9)
    G_ref = rho * G_ref + g2 ** 2
    mu_ref = rho * mu_ref - g2 / (1 / eta0 + G_ref.sqrt())
    torch.testing.assert_close(x, x_ref + mu_ref)
    # the projection keeps each pixel's colour direction and clips its norm to B+
    x = torch.tensor([[[[30.0, 1.0]], [[40.0, 1.0]]]])
    algorithm1_step(x, torch.zeros_like(x), torch.zeros_like(x), torch.zeros_like(x), 1.0, 0.9, bound=10.0)
    torch.testing.assert_close(x, torch.tensor([[[[6.0, 1.0]], [[8.0, 1.0]]]]))


def _one_step(x, grad, pr, fused, lr=2.0, grad_scale=7.0, seed=0, threads=None):
    "One step from x_t = x (thesis units); returns the two regularisers at x_t, G, mu and the new image."
    G, mu = _rand(*x.shape, seed=seed + 1) * 9, _rand(*x.shape, seed=seed + 2) - 0.5
    mean = image_mean(x.shape[1]).double()
    image = mean + x / 255
    before = torch.get_num_threads()
    torch.set_num_threads(threads or before)             # the kernel splits the rows into one chunk per thread
    try:
        ra, tv = regularize_and_step(image, grad.clone(), G, mu, mean, pr, lr, grad_scale, fused=fused)
    finally:
        torch.set_num_threads(before)
    return ra, tv, G, mu, image


@settings(max_examples=40, deadline=None)
@given(shape=st.tuples(st.integers(1, 2), st.sampled_from([1, 3]), st.integers(1, 6), st.integers(1, 7)),
       alpha=st.sampled_from([6.0, 2.0, 3.0, 1.0]), beta=st.sampled_from([2.0, 1.5, 1.0]),
       bound=st.sampled_from([40.0, 1e6]), seed=st.integers(0, 10 ** 6), threads=st.integers(1, 4))
def test_fused_update_matches_the_tensor_path(shape, alpha, beta, bound, seed, threads):
    "The one-pass kernel and regularizer_terms + algorithm1_step agree to float64 round-off (borders, 1-pixel images,"
    " grey images, zero pixels, projection, 1-4 chunks of rows, more chunks than rows)."
    x = (_rand(*shape, seed=seed) - 0.5) * 120
    x[..., : shape[2] // 2, : shape[3] // 2] = 0.0           # zero pixels and flat regions
    grad = (_rand(*shape, seed=seed + 3) - 0.5) * 50
    pr = preimage_params(alpha=alpha, beta=beta, B_plus=bound)
    for a, b in zip(_one_step(x, grad, pr, False, seed=seed), _one_step(x, grad, pr, True, seed=seed, threads=threads)):
        torch.testing.assert_close(b, a, rtol=1e-10, atol=1e-10)


def test_fused_gradient_is_the_autograd_gradient_of_the_regularisers():
    "From G = mu = 0 the step is mu = -g/(1/lr + |g|), so the kernel's total gradient can be read back from mu and"
    " compared with autograd through alpha_norm and tv_beta (the definitions, not regularizer_terms)."
    x = (_rand(2, 3, 5, 6, seed=11) - 0.5) * 150
    data = (_rand(2, 3, 5, 6, seed=12) - 0.5) * 1e-3
    pr, lr, area = preimage_params(B_plus=1e9), 0.01, 30.0
    G, mu, mean = torch.zeros_like(x), torch.zeros_like(x), image_mean(3).double()
    image = mean + x / 255
    regularize_and_step(image, data.clone(), G, mu, mean, pr, lr, area, fused=True)
    g = -mu / (lr * (1 - mu.abs()))                          # solves mu = -g / (1/lr + |g|)
    xa = x.clone().requires_grad_(True)
    (alpha_norm(xa, pr.alpha, pr.B) + tv_beta(xa, pr.beta, pr.tv_scale)).sum().backward()
    torch.testing.assert_close(g, data + area * xa.grad, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(G, g * g)
    torch.testing.assert_close(image, mean + (x + mu) / 255)


def test_fused_and_tensor_solvers_agree():
    "Whole runs (batch of 2, jitter, fine-tuning, beta = 1.5 through the tensor TV) agree in float64."
    w = _rand(4, 3, 3, 3, seed=13) - 0.5
    x0 = _rand(2, 3, 12, 12, seed=14)
    target = torch.nn.functional.conv2d(x0, w)
    init = initial_noise((2, 3, 14, 14), generator=torch.Generator().manual_seed(0)).double()
    for beta in (2.0, 1.5):
        p = preimage_params(C=100, beta=beta, num_iters=15, finetune_iters=5, jitter=3)
        runs = [solve_preimage(lambda im: normalized_error(torch.nn.functional.conv2d(im, w), target), init, p,
                               image_mean(3).double(), finetune=True, generator=torch.Generator().manual_seed(1), fused=f)
                for f in (False, True)]
        torch.testing.assert_close(runs[1][0], runs[0][0], rtol=1e-8, atol=1e-8)
        for k in ("energy", "alpha", "tv"): torch.testing.assert_close(runs[1][1][k], runs[0][1][k])


def test_fused_update_refuses_what_it_cannot_run():
    x = torch.zeros(1, 3, 4, 4, dtype=torch.float16)
    assert fused_available(torch.zeros(1, 3, 4, 4)) and not fused_available(x)
    with pytest.raises(ValueError, match="float32/float64 CPU tensor; got torch.float16"):
        regularize_and_step(x.clone(), x, x, x, image_mean(3).half(), preimage_params(), 1.0, fused=True)


def test_fused_update_leaves_torch_threads_alone():
    "numba's thread setting (its OpenMP layer, beside torch's own libgomp) must not leak into torch's."
    import numba
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(numba.config.NUMBA_NUM_THREADS + 1)
        x = (_rand(1, 3, 8, 8, seed=16, dtype=torch.float32) - 0.5) * 100
        solve_preimage(lambda im: im.square().flatten(1).sum(1), x, preimage_params(num_iters=2), fused=True)
        assert torch.get_num_threads() == numba.config.NUMBA_NUM_THREADS + 1
    finally:
        torch.set_num_threads(before)


def test_without_numba_the_tensor_path_runs(monkeypatch):
    import motion_nbs.preimage as P
    x = (_rand(1, 3, 6, 6, seed=15, dtype=torch.float32) - 0.5) * 100
    ref = _one_step(x.double(), x.double(), preimage_params(), True)
    monkeypatch.setattr(P, "numba", None)
    assert not fused_available(x)
    for a, b in zip(ref, _one_step(x.double(), x.double(), preimage_params(), None)):
        torch.testing.assert_close(b, a, rtol=1e-10, atol=1e-10)
    with pytest.raises(ValueError, match="numba is not installed"):
        _one_step(x.double(), x.double(), preimage_params(), True)


def test_identity_inversion_converges_and_energy_decreases():
    x0 = _rand(1, 3, 24, 24, seed=3, dtype=torch.float32) * 0.6 + 0.2
    x0 = torch.nn.functional.avg_pool2d(x0, 3, 1, 1)   # a smooth probe: the TV prior does not fight it
    r = invert(lambda im: im, x0, C=1e4, num_iters=150)
    assert (r.images - x0).abs().mean() < 0.02
    assert r.error.item() < 5e-3
    e = r.history["energy"][:, 0]
    assert e[-1] < 0.02 * e[0] and e[50:].mean() < e[:50].mean()


def test_hog_inversion_decreases_error_and_is_seeded():
    x0 = _rand(2, 1, 40, 40, seed=4, dtype=torch.float32)
    x0 = torch.nn.functional.avg_pool2d(x0, 5, 1, 2)
    a = invert(HOG(8), x0, C=100, num_iters=40, mean=0.5, seed=7)
    b = invert(HOG(8), x0, C=100, num_iters=40, mean=0.5, seed=7)
    c = invert(HOG(8), x0, C=100, num_iters=40, mean=0.5, seed=8)
    assert torch.equal(a.images, b.images) and torch.equal(a.history["energy"], b.history["energy"])
    assert not torch.equal(a.images, c.images)
    loss = a.history["loss"]
    assert (loss[-5:].mean(0) < 0.5 * loss[0]).all()
    assert a.history["energy"].shape == (40, 2)


def test_batch_solves_independent_problems():
    "A batch of probes gives (numerically) the images of solving each probe alone with the same initial noise."
    x0 = _rand(2, 3, 16, 16, seed=5, dtype=torch.float32)
    phi = lambda im: torch.nn.functional.avg_pool2d(im, 4)
    p = preimage_params(C=100, num_iters=30)
    init = initial_noise((2, 3, 16, 16), generator=torch.Generator().manual_seed(0))
    target = phi(x0)
    xb, _ = solve_preimage(lambda im: normalized_error(phi(im), target), init, p, image_mean(3))
    for i in range(2):
        xi, _ = solve_preimage(lambda im: normalized_error(phi(im), target[i:i + 1]), init[i:i + 1], p, image_mean(3))
        torch.testing.assert_close(xb[i:i + 1], xi, atol=1e-3, rtol=1e-4)


def test_jitter_and_finetune_schedule():
    x0 = _rand(1, 3, 20, 20, seed=6, dtype=torch.float32)
    r = invert(lambda im: im.mean((2, 3)), x0, jitter=4, num_iters=7, finetune_iters=3)
    assert r.images.shape == x0.shape and r.history["energy"].shape == (10, 1)
    r = maximize(lambda im: im.mean((2, 3)), [0, 2], (3, 20, 20), M=1.0, scaling="unit", jitter=4, num_iters=5)
    assert r.images.shape == (2, 3, 20, 20) and r.history["energy"].shape == (5, 2)   # no fine-tuning stage


def test_finetuning_restarts_algorithm1(monkeypatch):
    "The fine-tuning stage restarts Algorithm 1: G = 0 and mu = 0 (a second nnpreimage.m call in the author's exp_inversion.m)."
    import motion_nbs.preimage as P
    seen, real = [], P.prepare_update
    def recording(*args, **kwargs):
        step = real(*args, **kwargs)
        def wrapped(image, grad, G, mu, lr):
            seen.append((float(mu.abs().max()), float(G.abs().max()), lr))
            return step(image, grad, G, mu, lr)
        return wrapped
    monkeypatch.setattr(P, "prepare_update", recording)
    invert(lambda im: im.mean((2, 3)), _rand(1, 3, 20, 20, seed=6, dtype=torch.float32), jitter=4, num_iters=7, finetune_iters=3, C=100)
    assert len(seen) == 10 and seen[7][2] == seen[6][2] / 10                      # the fine-tuning stage, at lr/10
    assert seen[6][0] > 0 and seen[7][0] == 0 and seen[8][0] > 0                 # momentum: carried, reset, rebuilt
    assert seen[6][1] > 0 and seen[7][1] == 0 and seen[8][1] > 0                 # the accumulated G likewise


def test_eta0_scale_is_the_author_option():
    "eta_0 = eta0_scale B^2/alpha: 0.01 (the thesis) by default, AUTHOR_ETA0_SCALE = 0.05 (get_defaults.m); lr= overrides both."
    from motion_nbs.preimage import AUTHOR_ETA0_SCALE, PreimageParams
    assert PreimageParams().lr0 == pytest.approx(0.01 * 80 ** 2 / 6)
    assert preimage_params(eta0_scale=AUTHOR_ETA0_SCALE).lr0 == pytest.approx(0.05 * 80 ** 2 / 6)
    assert preimage_params(eta0_scale=AUTHOR_ETA0_SCALE, B=40).lr0 == pytest.approx(0.05 * 40 ** 2 / 6)
    with pytest.raises(ValueError, match="> 0"): preimage_params(eta0_scale=0.0)
    x0 = _rand(1, 3, 16, 16, seed=3, dtype=torch.float32)
    a = invert(lambda im: im.mean((2, 3)), x0, num_iters=3, eta0_scale=AUTHOR_ETA0_SCALE)
    b = invert(lambda im: im.mean((2, 3)), x0, num_iters=3, lr=0.05 * 80 ** 2 / 6)
    c = invert(lambda im: im.mean((2, 3)), x0, num_iters=3)
    torch.testing.assert_close(a.images, b.images)
    assert (a.images - c.images).abs().max() > 1e-4


def test_convergence_share_of_the_fall():
    from motion_nbs.preimage import convergence
    e = torch.cat([torch.linspace(10, 1, 251), torch.full((50,), 1.0)])[:, None]   # falls for 250 iterations, then flat
    share, ok = convergence(e)
    assert share.item() == 0 and ok.item()
    share, ok = convergence(torch.linspace(10, 1, 301)[:, None])                      # a straight line: 50/300 of its fall
    assert share.item() == pytest.approx(50 / 300, rel=1e-5) and not ok.item()
    share, ok = convergence(torch.cat([torch.linspace(10, 1, 251), torch.linspace(1, 2, 50)])[:, None])   # climbs back
    assert share.item() == pytest.approx(1 / 8, rel=1e-5) and not ok.item()
    share, ok = convergence(torch.tensor([1.0] * 260 + [2.0] * 41)[:, None])          # never fell, moved in the window
    assert share.item() == math.inf and not ok.item()


def test_non_differentiable_phi_and_bad_images_are_refused():
    x0 = _rand(1, 3, 32, 32, seed=2, dtype=torch.float32)
    with pytest.raises(ValueError, match="phi's output does not depend differentiably on the image"):
        invert(lambda im: im.detach().mean((2, 3)), x0, num_iters=2)
    with pytest.raises(ValueError, match="phi's output does not depend differentiably"):
        maximize(lambda im: torch.from_numpy(im.detach().numpy()).mean((2, 3)), 0, (3, 32, 32), M=1.0, scaling="unit", num_iters=2)
    with pytest.raises(ValueError, match="the image given to HOG contains"):
        invert(HOG(8), x0.mean(1, keepdim=True) * float("nan"), num_iters=2)


def test_clear_errors():
    x0 = _rand(1, 1, 32, 32, seed=7, dtype=torch.float32)
    with pytest.raises(ValueError, match="NaN"):
        invert(lambda im: im * float("nan"), x0, num_iters=2)
    calls = []
    def breaks_later(im):   # fine for the target and the shape probe, NaN from the third call (iteration 1) on
        calls.append(1)
        return im * float("nan") if len(calls) > 3 else im
    with pytest.raises(ValueError, match="not finite at iteration 1"):
        invert(breaks_later, x0, num_iters=5)
    with pytest.raises(ValueError, match=r"target has shape \(1, 31, 3, 3\), but the model gives codes of shape \(1, 31, 4, 4\)"):
        invert(HOG(8), target=torch.rand(1, 31, 3, 3), shape=(1, 32, 32), num_iters=1)
    with pytest.raises(ValueError, match="give shape"):
        invert(HOG(8), target=torch.rand(1, 31, 4, 4), num_iters=1)
    with pytest.raises(ValueError, match=r"out of range for codes of shape \(31, 4, 4\)"):
        maximize(HOG(8), 31, (1, 32, 32), M=1.0, rho=16, num_iters=1)
    with pytest.raises(ValueError, match="out of range"):
        maximize(HOG(8), (0, 4, 0), (1, 32, 32), M=1.0, rho=16, num_iters=1)
    with pytest.raises(ValueError, match="all zeros"):
        invert(HOG(8), torch.zeros(1, 1, 32, 32), num_iters=1)
    with pytest.raises(ValueError, match="no positive component"):
        caricature(lambda im: -im.abs() - 1, x0, num_iters=1)
    with pytest.raises(ValueError, match="unknown pre-image parameter"):
        invert(HOG(8), x0, lr0=3)
    with pytest.raises(ValueError, match="mask of shape"):
        invert(HOG(8), x0, mask=torch.ones(2, 3), num_iters=1)


def test_caricature_and_inner_product():
    x0 = _rand(1, 3, 16, 16, seed=8, dtype=torch.float32)
    phi = lambda im: (im - 0.4).flatten(1)
    r = caricature(phi, x0, C=1e4, num_iters=20)   # a noise probe: TV fights it hard at small C
    torch.testing.assert_close(r.history["loss"][0], torch.tensor([-1.0]), atol=1e-5, rtol=0)
    assert r.history["loss"][-1, 0] < -1.0
    torch.testing.assert_close(inner_product_loss(torch.tensor([[1.0, 2.0]]), torch.tensor([[0.0, 1.0]]), 4.0), torch.tensor([-0.5]))


def test_texture_regulariser_synthesises_statistics():
    tex = _rand(1, 3, 16, 16, seed=9, dtype=torch.float32)
    layer = lambda im: torch.nn.functional.avg_pool2d(im, 2)
    R = TextureRegularizer([layer], tex, [1e-2])
    start = initial_noise((1, 3, 16, 16), generator=torch.Generator().manual_seed(1))
    assert R(start / 255 + image_mean(3)).item() > 0
    x, hist = solve_preimage(lambda im: torch.zeros(im.shape[0]), start, preimage_params(C=0, num_iters=60), image_mean(3), [R])
    assert hist["extra"][-1, 0] < 0.2 * hist["extra"][0, 0]
    assert gram_matrix(torch.ones(1, 2, 3, 3)).shape == (1, 2, 2)


# ---- the experiments notebook -------------------------------------------------------------------------
NB = ROOT / "nbs" / "05c_preimage_experiments.ipynb"
SMOKE = dict(num_images=2, image_size=40, num_iters=4, cnn_images=1, cnn_size=48, cnn_iters=2, am_iters=2, num_inits=2,
             Cs="100", cnn_layers="blocks.1,classifier", template_scenes=1)


def test_experiments_notebook_smoke(tmp_path):
    import json

    import papermill as pm
    pm.execute_notebook(NB, tmp_path / "out.ipynb", parameters=dict(SMOKE, out_dir=str(tmp_path / "run")),
                        cwd=NB.parent, kernel_name="python3", progress_bar=False)
    res = json.loads((tmp_path / "run" / "results.json").read_text())
    assert set(res["table52"]) == {"HOG", "HOGb", "DSIFT"}
    assert all(v["error"] > 0 for v in res["table52"].values())
    assert "blocks.1|C=100" in res["cnn"] and 0 <= res["cnn"]["classifier|C=100"]["consistency"] <= 1
    assert (tmp_path / "run" / "fig5_4.png").exists()
    assert set(res["fig53"]) == {"jitter", "no jitter"} and (tmp_path / "run" / "fig5_3.png").exists()
    # the author's protocol: blocks.1 (field 19, stride 4) as one 4-unit mosaic, cells of 5 locations, 2 x 2; classes jittered by 32/4
    assert list(res["maximize_canvas"]) == ["blocks.1|0,1,2,3"] and res["maximize_jitter_classes"] == 8
    assert all(0 < v["mean_frequency"] <= 0.71 and 0 <= v["p_tree_frog"] <= 1 for v in res["fig53"].values())


def test_experiments_notebook_takes_probes_from_a_folder(tmp_path):
    "probe_dir: table 5.2's probes are the folder's first images (random images the test writes); too few images stop the run."
    import json

    import cv2
    import papermill as pm
    from motion_nbs.core import image_to_array
    probes = tmp_path / "probes"; probes.mkdir()
    g = torch.Generator().manual_seed(0)
    for name in ("2.png", "1.png", "3.png"):
        cv2.imwrite(str(probes / name), image_to_array(torch.rand(3, 50, 60, generator=g)))
    pm.execute_notebook(NB, tmp_path / "out.ipynb", cwd=NB.parent, kernel_name="python3", progress_bar=False,
                        parameters=dict(SMOKE, experiments="table52", probe_dir=str(probes), out_dir=str(tmp_path / "run")))
    res = json.loads((tmp_path / "run" / "results.json").read_text())
    assert set(res["table52"]) == {"HOG", "HOGb", "DSIFT"} and all(v["error"] > 0 for v in res["table52"].values())
    (probes / "1.png").unlink(); (probes / "3.png").unlink()
    with pytest.raises(pm.PapermillExecutionError, match="has 1 image files"):
        pm.execute_notebook(NB, tmp_path / "out2.ipynb", cwd=NB.parent, kernel_name="python3", progress_bar=False,
                            parameters=dict(SMOKE, experiments="table52", probe_dir=str(probes), out_dir=str(tmp_path / "run")))


def test_experiments_notebook_runs_torchvisions_alexnet_from_a_weights_file(tmp_path):
    "network='alexnet' reads torchvision's weights file (here random weights the test saves) and studies table 5.1's layers."
    import json

    import papermill as pm
    import torchvision
    torch.manual_seed(0)
    weights = tmp_path / "alexnet-owt-7be5be79.pth"
    torch.save(torchvision.models.alexnet().state_dict(), weights)
    pm.execute_notebook(NB, tmp_path / "out.ipynb", cwd=NB.parent, kernel_name="python3", progress_bar=False,
                        parameters=dict(SMOKE, experiments="cnn", network="alexnet", weights_path=str(weights), cnn_size=64,
                                        cnn_layers="relu1,fc8", cnn_images=2, std_images=1, out_dir=str(tmp_path / "run")))
    res = json.loads((tmp_path / "run" / "results.json").read_text())
    assert res["network"] == "alexnet" and set(res["cnn"]) == {"relu1|C=100", "fc8|C=100"}
    # two probes: error ± CI (finite) and consistency over both; the spread from two initialisations of the first
    assert all(v["error"] > 0 and v["ci95"] >= 0 and v["std_over_inits"] > 0 and v["consistency"] in (0, 0.5, 1)
               for v in res["cnn"].values())
    assert res["config"]["std_images"] == 1
    assert res["cnn"]["relu1|C=100"]["jitter"] == 1 and res["cnn"]["fc8|C=100"]["jitter"] == 8   # strides 4 and 32 (pool5's)


@pytest.mark.parametrize("params, message", [(dict(preset="gpu"), "valid: fast, paper"),
                                             (dict(experiments="table52,fig99"), "unknown \\['fig99'\\]"),
                                             (dict(num_iters=0), "num_iters=0; expected an int >= 1"),
                                             (dict(Cs="1,a"), "comma-separated numbers"),
                                             (dict(network="resnet18"), "valid: efficientnet_lite0, alexnet, vgg16"),
                                             (dict(weights_path="w.pth"), "weights_path is for network='alexnet' or 'vgg16'"),
                                             (dict(network="vgg16", weights_path="/nonexistent/vgg.pth", experiments="cnn"),
                                              "/nonexistent/vgg.pth"),
                                             (dict(cnn_images=2, std_images=3), "std_images=3 must be <= cnn_images=2"),
                                             (dict(probe_dir="/nonexistent/probes"), "probe_dir='/nonexistent/probes' is not a folder")])
def test_experiments_notebook_rejects_bad_parameters(tmp_path, params, message):
    import papermill as pm
    with pytest.raises(pm.PapermillExecutionError, match=message):
        pm.execute_notebook(NB, tmp_path / "bad.ipynb", parameters=dict(params, out_dir=str(tmp_path / "run")),
                            cwd=NB.parent, kernel_name="python3", progress_bar=False)
