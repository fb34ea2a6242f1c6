"""Guided Backprop and Network Saliency speed against Captum 0.9, measured in the same run.

torchvision's AlexNet, ResNet-50 and DenseNet-121 (random weights, in-place ReLUs as torchvision builds
them: `reverse` takes the models as they are), one 224x224 image (scikit-image's chelsea, resized and
ImageNet-normalised), the top class as the selector. For AlexNet and ResNet-50, whose ReLUs are all
modules, ours and Captum's outputs are first checked to be equal; DenseNet-121 calls ReLU functionally,
which Captum does not see, so there only the time is compared (the two answers differ:
`tests/test_reversed_torchvision.py`). Both are timed interleaved (best of repeated runs on 2 threads;
the development machines are shared: the best time of each and the median of the paired ratios are
reported). Goal: ratio ours/Captum <= 1.0 for each model. Saliency is the same autograd pass in both, so a null
control times Captum's saliency against itself: its distance from 1 is the spread of identical runs
(`goals_met_within_null_spread`). The last line printed is one JSON object.
"""
import json
import statistics
import time
import warnings

import torch
import torch.nn.functional as F

from motion_nbs.core import sample_image
from motion_nbs.reversed import guided_backprop, saliency

MODELS = {"alexnet": True, "resnet50": True, "densenet121": False}   # name: compare outputs with Captum's


def timed(fn):
    t = time.perf_counter(); fn(); return 1000 * (time.perf_counter() - t)


def best_pair_ms(ours, ref, repeats=16, warmup=2):
    """Interleaved runs of each, so that both see the same machine load: the best time of each, and the median of
    the per-pair ratios (single timings drift by several per cent on a shared machine; the median pair is steadier).
    The order within a pair alternates (ours first, then Captum first): whichever runs first after the other pays for
    the allocator and caches the other left behind, which biased the ratio by a few per cent when ours always ran first."""
    for _ in range(warmup): ours(); ref()
    a, b = [], []
    for r in range(repeats):
        if r % 2 == 0: a.append(timed(ours)); b.append(timed(ref))
        else: b.append(timed(ref)); a.append(timed(ours))
    return min(a), min(b), statistics.median(x / y for x, y in zip(a, b))


def main():
    torch.set_num_threads(2)
    warnings.filterwarnings("ignore", module="captum")  # "required_grads has been set automatically", hook notices
    import torchvision
    from captum.attr import GuidedBackprop, Saliency
    image = F.interpolate(sample_image("chelsea")[None], size=(224, 224), mode="bilinear", align_corners=False)
    mean, std = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1), torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    x = (image - mean) / std
    result = {"input": "1x3x224x224", "threads": 2, "goal_ratio": 1.0}
    for name, compare in MODELS.items():
        torch.manual_seed(0)
        model = torchvision.models.get_model(name, weights=None).eval().requires_grad_(False)
        with torch.no_grad(): target = int(model(x).argmax())
        gb, sal = GuidedBackprop(model), Saliency(model)
        cases = {"guided_backprop": (lambda: guided_backprop(model, x, target), lambda: gb.attribute(x, target=target)),
                 "saliency": (lambda: saliency(model, x, target), lambda: sal.attribute(x, target=target, abs=False))}
        for method, (ours, ref) in cases.items():
            a, b = ours(), ref()
            err = ((a - b).abs().max() / b.abs().max()).item()
            if (compare or method == "saliency") and not err <= 1e-5:
                raise SystemExit(f"{name} {method}: outputs differ from Captum (relative {err:.3g})")
            t_ours, t_ref, ratio = best_pair_ms(ours, ref)
            print(f"{name:12s} {method:16s} ours {t_ours:8.1f} ms   captum {t_ref:8.1f} ms   median ratio {ratio:.3f}   "
                  f"max rel diff {err:.1e}", flush=True)
            result[f"{name}_{method}_ratio"] = round(ratio, 3)
            result[f"{name}_{method}_ms"] = round(t_ours, 1)
        # null control: Captum's saliency against itself (a second instance), timed the same way. Ours and Captum's
        # saliency are the same autograd pass, so their ratio can only be as close to 1 as this one is
        sal2 = Saliency(model)
        _, _, null = best_pair_ms(lambda: sal.attribute(x, target=target, abs=False), lambda: sal2.attribute(x, target=target, abs=False))
        print(f"{name:12s} null control: captum saliency against itself, median ratio {null:.3f}", flush=True)
        result[f"{name}_captum_vs_captum_saliency"] = round(null, 3)
    result["goals_met"] = all(v <= 1.0 for k, v in result.items() if k.endswith("_ratio") and k != "goal_ratio")
    # within the spread of identical runs: each ratio at most 1 + |null control - 1| of its model
    result["goals_met_within_null_spread"] = all(
        v <= 1.0 + abs(result[f"{k.split('_')[0]}_captum_vs_captum_saliency"] - 1.0)
        for k, v in result.items() if k.endswith("_ratio") and k != "goal_ratio")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
