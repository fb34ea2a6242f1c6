"""Pre-image solver speed: inverting HOG of one 224x224 natural image (350 iterations, Algorithm 1), the time
per iteration against one forward+backward pass of HOG measured in the same run, and a batch of 8 images.

Goals (#25): 350 iterations <= 1.2 s on 2 cores; per image in a batch of 8 <= 0.5x the single-image time;
time per iteration <= 1.10x one forward+backward of Phi; the batch of 8 with one other busy process on the
same cores (`_busy.busy_process`) <= 2x its idle time.
Besides Phi, an iteration does the regularisers, their gradients and Algorithm 1's update (one compiled pass,
`regularize_and_step`), so the ratio depends on how cheap Phi is; for context the same ratio is also measured
for a CNN layer (EfficientNet-Lite0 blocks.4, the book's offline ImageNet network), where the data term
dominates. The ratio is taken per round from a forward+backward and an iteration timed back to back, and the
median over rounds is reported with the smallest and largest (the development machines are shared: single
timings drift by +-20 %). 2 threads, OpenMP's default wait policy. Last line: one JSON object.
"""
import json
import os
import statistics
import time

# OpenMP threads spin-wait after each parallel region (libgomp: GOMP_SPINCOUNT 300,000 rounds by default). With many
# short regions per iteration and another process on one of the two cores, the spinners take the core the other
# thread needs, and a batch of 8 ran 3.6x slower (two threads each spinning for the other). A short spin keeps the
# idle speed and removes most of that: what `make` sets for every command, set here before torch starts its pool.
os.environ.setdefault("GOMP_SPINCOUNT", "1000")

import torch

from motion_nbs.features import HOG
from motion_nbs.preimage import LayerPhi, invert, natural_images, normalized_error

from _busy import busy_process


def best(fn, repeats=3):
    ts = []
    for _ in range(repeats):
        t = time.perf_counter(); fn(); ts.append(time.perf_counter() - t)
    return min(ts)


def profile_per_image(hog, images, iteration_ms, iters=30):
    """Where an iteration's time goes, per image, for a batch of `len(images)`: HOG's cell passes, its block
    normalisation (forward and backward, from torch's profiler), Algorithm 1's update (timed alone on the same canvas)
    and the rest of `iteration_ms` (the unprofiled time of an iteration per image: the profiler slows small
    operations down; the parts and the iteration come from different runs, so the rest can be a little negative). Shows what bounds the batch's gain: with one image, HOG's compiled passes already
    split the rows between both threads, so a batch can only save the per-call costs, not the per-pixel work."""
    from torch.profiler import profile
    from motion_nbs.preimage import prepare_update, preimage_params, image_mean
    B = images.shape[0]
    invert(hog, images, C=100, num_iters=3)
    with profile() as prof:
        invert(hog, images, C=100, num_iters=iters, finetune_iters=0)
    ops = {e.key: e.self_cpu_time_total / 1000 for e in prof.key_averages()}
    out = {name: ops.get(key, 0.0) / iters / B for name, key in (
        ("hog_cells_fwd_ms", "_HOGCellsCompiled"), ("hog_cells_bwd_ms", "_HOGCellsCompiledBackward"),
        ("hog_blocks_fwd_ms", "_UOCTTICompiled"), ("hog_blocks_bwd_ms", "_UOCTTICompiledBackward"))}
    p = preimage_params()
    canvas = images.new_empty(B, 3, 224 + p.jitter - 1, 224 + p.jitter - 1).uniform_(0.3, 0.7)
    step = prepare_update(canvas, image_mean(3), p, canvas.shape[-1] * canvas.shape[-2])
    g, G, mu = torch.randn_like(canvas) * 1e-3, torch.zeros_like(canvas), torch.zeros_like(canvas)
    step(canvas, g, G, mu, 1e-3)
    out["update_ms"] = best(lambda: [step(canvas, g, G, mu, 1e-3) for _ in range(20)]) / 20 / B * 1000
    out["iteration_ms"] = iteration_ms
    out["rest_ms"] = out["iteration_ms"] - sum(v for k, v in out.items() if k != "iteration_ms")
    return {k: round(v, 3) for k, v in out.items()}


def main():
    torch.set_num_threads(2)
    hog = HOG(8)
    x8 = natural_images(8, 224)
    x1 = x8[:1]
    target = hog(x1).detach()

    def fwd_bwd(x):
        x = x.clone().requires_grad_(True)
        normalized_error(hog(x), target).sum().backward()

    def paired(step, phi, n_fb, n_iter, rounds):
        """Forward+backward and solver iteration measured back to back in each round (the machine's speed drifts
        by +-20 % over seconds), the ratio taken per round and its median reported with the median times.
        The iteration time is the difference of two run lengths, so invert's set-up (probe codes, final error) is out."""
        step(); invert(phi, x1, C=100, num_iters=2)
        fbs, its = [], []
        for _ in range(rounds):
            fbs.append(best(lambda: [step() for _ in range(n_fb)], repeats=1) / n_fb)
            its.append((best(lambda: invert(phi, x1, C=100, num_iters=n_iter + 2), repeats=1)
                        - best(lambda: invert(phi, x1, C=100, num_iters=2), repeats=1)) / n_iter)
        ratios = sorted(i / f for i, f in zip(its, fbs))
        return statistics.median(fbs), statistics.median(its), statistics.median(ratios), (ratios[0], ratios[-1])

    fb, it, ratio, spread = paired(lambda: fwd_bwd(x1), hog, 20, 60, 9)
    cnn_fb = cnn_iter = None
    try:
        from motion_nbs.models import efficientnet_lite0
        phi = LayerPhi(efficientnet_lite0(), "blocks.4", mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
        ctarget = phi(x1).detach()
        def cnn_step():
            x = x1.clone().requires_grad_(True)
            normalized_error(phi(x), ctarget).sum().backward()
        cnn_fb, cnn_iter, cnn_ratio, _ = paired(cnn_step, phi, 4, 8, 3)
    except FileNotFoundError as e:  # the offline network's package is missing: report HOG only
        print(f"(no CNN ratio: {e})")
    # the thesis' 350 iterations: 300 with jitter and 50 of fine-tuning without (invert adds the 50). Until Dec 2026
    # the batch was timed as 50+50 iterations scaled by 7 (= 700) against 350+50 for one image, which made the batch
    # look 1.75x slower per image than it was
    iters, tune = 300, 50
    invert(hog, x1, C=100, num_iters=5)  # warm-up
    one = best(lambda: invert(hog, x1, C=100, num_iters=iters, finetune_iters=tune), repeats=3)
    t8 = best(lambda: invert(hog, x8, C=100, num_iters=iters, finetune_iters=tune), repeats=1)
    with busy_process():
        t8_busy = best(lambda: invert(hog, x8, C=100, num_iters=iters, finetune_iters=tune), repeats=1)
        one_busy = best(lambda: invert(hog, x1, C=100, num_iters=iters, finetune_iters=tune), repeats=1)
    res = dict(hog_invert_224_350it_s=round(one, 3), per_iter_ms=round(1000 * it, 2),
               hog_fwd_bwd_ms=round(1000 * fb, 2), ratio_iter_vs_fwd_bwd=round(ratio, 3),
               ratio_min_max=[round(r, 3) for r in spread],
               batch8_350it_s=round(t8, 2), batch8_per_image_s=round(t8 / 8, 3),
               batch8_busy_per_image_s=round(t8_busy / 8, 3), batch8_busy_slowdown=round(t8_busy / t8, 3),
               hog_invert_busy_s=round(one_busy, 3), invert_busy_slowdown=round(one_busy / one, 3),
               gomp_spincount=os.environ.get("GOMP_SPINCOUNT"), threads=torch.get_num_threads())
    res["profile_per_image_ms"] = {"batch1": profile_per_image(hog, x1, 1000 * one / (iters + tune)),
                                   "batch8": profile_per_image(hog, x8, 1000 * t8 / 8 / (iters + tune))}
    res["bounds"] = ("batch of 8 vs one image: both threads already share one image's rows in HOG's passes, so a batch saves "
                     "only per-call costs (profile_per_image_ms: the cell passes are most of both); iteration vs forward+backward: "
                     "Algorithm 1's update streams the canvas, its gradient and two state arrays (update_ms), a fixed cost that "
                     "is a larger share of HOG's forward+backward the faster that gets")
    res["goals_met"] = {"invert_le_1.2_s": one <= 1.2, "batch8_per_image_le_half_single": t8 / 8 <= 0.5 * one,
                        "iter_le_1.10x_fwd_bwd": ratio <= 1.10, "busy_le_2x_idle": max(t8_busy / t8, one_busy / one) <= 2}
    if cnn_fb is not None:
        res.update(cnn_fwd_bwd_ms=round(1000 * cnn_fb, 2), cnn_per_iter_ms=round(1000 * cnn_iter, 2),
                   cnn_ratio_iter_vs_fwd_bwd=round(cnn_ratio, 3))
    print(f"HOG fwd+bwd {res['hog_fwd_bwd_ms']} ms; iteration {res['per_iter_ms']} ms (x{res['ratio_iter_vs_fwd_bwd']}); "
          f"350 iterations {res['hog_invert_224_350it_s']} s; batch of 8: {res['batch8_per_image_s']} s per image, "
          f"{res['batch8_busy_per_image_s']} s with a busy process beside it")
    print(json.dumps(res))


if __name__ == "__main__":
    main()
