"""S3-CNN loss cost.

Time of each S3 loss (forward + backward w.r.t. the masks) for B = 8, L = 5 segments, 128×128, against
the forward + backward of the segmentation network that produces the masks (the thesis' FCN-8s on
VGG-16, and `fcn8s_small` at output stride 8 and at the CPU preset's stride 2), measured in the same
run on 2 threads. The losses should be a small fraction of a training step. The last line printed is
one JSON object.
"""
import json
import time

import torch

B, L, SIZE = 8, 5, 128


def median_time(fn, reps=5):
    fn()  # warm-up
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return sorted(times)[len(times) // 2]


def main():
    from motion_nbs.s3 import S3_LOSSES, s3_loss, s3_model, soft_masks
    torch.set_num_threads(2)
    g = torch.Generator().manual_seed(0)
    scores = torch.randn(B, L, SIZE, SIZE, generator=g)
    flow = torch.randn(B, 2, SIZE, SIZE, generator=g) * 5
    image = torch.rand(B, 3, SIZE, SIZE, generator=g)

    def loss_step(name):
        crit = s3_loss(name)
        def run():
            s = scores.clone().requires_grad_(True)
            crit(soft_masks(s), flow).backward()
        return run

    def net_step(name, stride=8):
        torch.manual_seed(0)
        model = s3_model(name, L, output_stride=stride)
        def run():
            model.zero_grad(set_to_none=True)
            model(image).sum().backward()
        return run

    res = {"batch": B, "segments": L, "size": SIZE, "threads": torch.get_num_threads()}
    for name in S3_LOSSES: res[f"{name}_loss_s"] = round(median_time(loss_step(name)), 5)
    nets = {"fcn8s_small": ("fcn8s_small", 8), "fcn8s_small_stride2": ("fcn8s_small", 2), "fcn8s": ("fcn8s", 8)}
    for key, (name, stride) in nets.items(): res[f"{key}_fwd_bwd_s"] = round(median_time(net_step(name, stride), reps=3), 4)
    for name in S3_LOSSES:
        for net in nets:
            res[f"{name}_vs_{net}"] = round(res[f"{name}_loss_s"] / res[f"{net}_fwd_bwd_s"], 4)
    for k, v in res.items(): print(f"{k}: {v}")
    print(json.dumps(res))


if __name__ == "__main__":
    main()
