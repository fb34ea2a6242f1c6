"""Guided Backprop and Network Saliency speed against Captum 0.9, measured in the same run.

torchvision's AlexNet (random weights; in-place ReLUs for Captum, `without_inplace` for ours), one 224x224
image (scikit-image's chelsea, resized and ImageNet-normalised), the top class as the selector. For each
method the outputs of ours and Captum are first checked to be equal, then both are timed interleaved
(best of repeated runs on 2 threads; the development machines are shared, so the minimum is the least
disturbed). Goal: ratio ours/Captum <= 1.0. The last line printed is one JSON object.
"""
import json
import time
import warnings

import torch
import torch.nn.functional as F

from motion_nbs.core import sample_image
from motion_nbs.reversed import guided_backprop, saliency, without_inplace


def timed(fn):
    t = time.perf_counter(); fn(); return 1000 * (time.perf_counter() - t)


def best_pair_ms(ours, ref, repeats=15, warmup=2):
    "Best of `repeats` interleaved runs of each, so that both see the same machine load."
    for _ in range(warmup): ours(); ref()
    a, b = [], []
    for _ in range(repeats):
        a.append(timed(ours)); b.append(timed(ref))
    return min(a), min(b)


def main():
    torch.set_num_threads(2)
    warnings.filterwarnings("ignore", module="captum")  # "required_grads has been set automatically", hook notices
    import torchvision
    from captum.attr import GuidedBackprop, Saliency
    torch.manual_seed(0)
    model = torchvision.models.alexnet(weights=None).eval()
    ours_model = without_inplace(model)
    image = F.interpolate(sample_image("chelsea")[None], size=(224, 224), mode="bilinear", align_corners=False)
    mean, std = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1), torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    x = (image - mean) / std
    target = int(model(x).argmax())
    gb, sal = GuidedBackprop(model), Saliency(model)
    cases = {
        "guided_backprop": (lambda: guided_backprop(ours_model, x, target), lambda: gb.attribute(x, target=target)),
        "saliency": (lambda: saliency(ours_model, x, target), lambda: sal.attribute(x, target=target, abs=False)),
    }
    result = {"model": "torchvision alexnet (random weights)", "input": "1x3x224x224", "threads": 2}
    for name, (ours, ref) in cases.items():
        a, b = ours(), ref()
        err = ((a - b).abs().max() / b.abs().max()).item()
        if not err <= 1e-5: raise SystemExit(f"{name}: outputs differ from Captum (relative {err:.3g})")
        t_ours, t_ref = best_pair_ms(ours, ref)
        print(f"{name:16s} ours {t_ours:7.2f} ms   captum {t_ref:7.2f} ms   ratio {t_ours / t_ref:.3f}   max rel diff {err:.1e}")
        result[f"{name}_ms"] = round(t_ours, 2)
        result[f"{name}_captum_ms"] = round(t_ref, 2)
        result[f"{name}_ratio"] = round(t_ours / t_ref, 3)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
