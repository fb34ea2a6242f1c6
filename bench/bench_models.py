"""AlexNetCPFS speed on the CPU.

Training steps (forward, backward, Adam) of the appendix-A network with parameter-free batch
normalisation, as trained in section 3.3.3, at 128×128 and 224×224 crops: images per second. Then
inference with the batch-normalised network against the same network after `fold_batchnorm`, both
measured in this run: the ratio is the speed-up folding gives. The last line printed is one JSON object.
"""
import json
import time

import torch

from motion_nbs.models import AlexNetCPFS, fold_batchnorm


def seconds_per_call(fn, n, warmup=2):
    for _ in range(warmup): fn()
    t = time.perf_counter()
    for _ in range(n): fn()
    return (time.perf_counter() - t) / n


def main(batch=8):
    torch.set_num_threads(2)
    torch.manual_seed(0)
    res = {"bench": "models", "device": "cpu", "threads": torch.get_num_threads(), "batch": batch}
    model = AlexNetCPFS(batchnorm=True)
    opt = torch.optim.Adam(model.parameters(), lr=1e-4, betas=(0.9, 0.999), eps=1e-8)
    for size, n in ((128, 6), (224, 4)):
        x = torch.rand(batch, 3, size, size)
        def step():
            opt.zero_grad(set_to_none=True)
            model(x).square().mean().backward()
            opt.step()
        model.train()
        res[f"train_images_per_s_{size}"] = batch / seconds_per_call(step, n)
        print(f"training step at {size}x{size}: {res[f'train_images_per_s_{size}']:.1f} images/s", flush=True)

    model.eval()
    folded = fold_batchnorm(model)
    x = torch.rand(batch, 3, 224, 224)
    with torch.no_grad():
        torch.testing.assert_close(folded(x), model(x), rtol=1e-4, atol=1e-4)
        # interleaved rounds so that a change in machine load hits both models alike
        t_bn = t_folded = 0.0
        for _ in range(3):
            t_bn += seconds_per_call(lambda: model(x), 3, warmup=1)
            t_folded += seconds_per_call(lambda: folded(x), 3, warmup=1)
    res["infer_images_per_s_224_bn"] = 3 * batch / t_bn
    res["infer_images_per_s_224_folded"] = 3 * batch / t_folded
    res["folded_speedup_vs_bn"] = t_bn / t_folded
    print(f"inference at 224: {res['infer_images_per_s_224_bn']:.1f} images/s with BN, "
          f"{res['infer_images_per_s_224_folded']:.1f} folded (x{res['folded_speedup_vs_bn']:.3f})", flush=True)
    print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in res.items()}))


if __name__ == "__main__":
    main()
