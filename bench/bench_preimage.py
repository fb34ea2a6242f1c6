"""Pre-image solver speed: inverting HOG of one 224x224 natural image (350 iterations, Algorithm 1), the time
per iteration against one forward+backward pass of HOG measured in the same run, and a batch of 8 images.

Goals (issue 9): 350 iterations <= 3 s on 2 cores; time per iteration <= 1.15x one forward+backward of Phi.
Times are the best of repeats on 2 threads (the development machines are shared). Last line: one JSON object.
"""
import json
import os
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch

from motion_nbs.features import HOG
from motion_nbs.preimage import invert, natural_images, normalized_error


def best(fn, repeats=3):
    ts = []
    for _ in range(repeats):
        t = time.perf_counter(); fn(); ts.append(time.perf_counter() - t)
    return min(ts)


def main():
    torch.set_num_threads(2)
    hog = HOG(8)
    x8 = natural_images(8, 224)
    x1 = x8[:1]
    target = hog(x1).detach()

    def fwd_bwd(x):
        x = x.clone().requires_grad_(True)
        normalized_error(hog(x), target).sum().backward()

    fwd_bwd(x1)
    fb = best(lambda: [fwd_bwd(x1) for _ in range(20)]) / 20
    iters = 350
    invert(hog, x1, C=100, num_iters=5)  # warm-up
    one = best(lambda: invert(hog, x1, C=100, num_iters=iters), repeats=2)
    t8 = best(lambda: invert(hog, x8, C=100, num_iters=50), repeats=1) / 50 * iters
    res = dict(hog_invert_224_350it_s=round(one, 3), per_iter_ms=round(1000 * one / iters, 2),
               hog_fwd_bwd_ms=round(1000 * fb, 2), ratio_iter_vs_fwd_bwd=round(one / iters / fb, 3),
               batch8_350it_s=round(t8, 2), batch8_per_image_s=round(t8 / 8, 3),
               goal_time_s=3.0, goal_ratio=1.15, threads=torch.get_num_threads())
    print(f"HOG fwd+bwd {res['hog_fwd_bwd_ms']} ms; iteration {res['per_iter_ms']} ms (x{res['ratio_iter_vs_fwd_bwd']}); "
          f"350 iterations {res['hog_invert_224_350it_s']} s; batch of 8: {res['batch8_per_image_s']} s per image")
    print(json.dumps(res))


if __name__ == "__main__":
    main()
