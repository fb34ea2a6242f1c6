"""Synthetic data speed.

Rendered frame pairs per second (both frames, exact flow, labels, visibility) at 128x128 for each
preset of `motion_nbs.data.render_scene`, on 2 threads. Baseline measured in the same run: estimating
the flow of the same pairs with OpenCV DIS (medium), i.e. what producing flow would cost if it were
not rendered. And the dataset builder's pairs/s on the `bikes` sample clip (one process run,
start-up included). Each measurement is a function adding keys to one result dict; append new ones to
`MEASUREMENTS`. The last line printed is one JSON object.
"""
import json
import time

import torch

from motion_nbs.data import PRESETS, render_scene
from motion_nbs.flow import estimate_flow

SIZE = (128, 128)
NUM_PAIRS = 40


def per_second(fn, n):
    fn(0)  # warm-up (texture cache, allocator)
    t = time.perf_counter()
    for i in range(n): fn(i + 1)
    return n / (time.perf_counter() - t)


def measure_render(res):
    for preset in PRESETS:
        res[f"render_{preset}_pairs_per_s"] = per_second(lambda i: render_scene(preset, i, SIZE), NUM_PAIRS)
        print(f"render {preset}: {res[f'render_{preset}_pairs_per_s']:.1f} pairs/s at {SIZE[0]}x{SIZE[1]}")


def measure_dis_baseline(res):
    pairs = [render_scene("multi_cube", i, SIZE) for i in range(NUM_PAIRS + 1)]
    res["dis_medium_pairs_per_s"] = per_second(
        lambda i: estimate_flow(pairs[i]["image"], pairs[i]["next_image"], method="dis", preset="medium"), NUM_PAIRS)
    res["render_multi_cube_vs_dis_medium"] = res["render_multi_cube_pairs_per_s"] / res["dis_medium_pairs_per_s"]
    print(f"DIS medium flow on the same pairs: {res['dis_medium_pairs_per_s']:.1f} pairs/s")


def measure_pool(res):
    "`rendered_pool('multi_cube', 200)` at 128x128 with 2 workers, no disk cache: pairs/s including the workers' start."
    from motion_nbs.data import rendered_pool
    n = 200
    t = time.perf_counter()
    rendered_pool("multi_cube", n, seed=12345, size=SIZE, num_workers=2, cache_dir=False)
    res["pool_multi_cube_2_workers_pairs_per_s"] = n / (time.perf_counter() - t)
    res["pool_vs_render_multi_cube"] = res["pool_multi_cube_2_workers_pairs_per_s"] / res["render_multi_cube_pairs_per_s"]
    print(f"pool of {n} multi_cube pairs, 2 workers: {res['pool_multi_cube_2_workers_pairs_per_s']:.1f} pairs/s")


def measure_builder(res):
    "data_scripts/build_flow_dataset.py on the bikes clip (8 pairs, scene cuts, DIS medium, JPEG + KITTI PNG into a shard)."
    import subprocess, sys, tempfile
    from pathlib import Path
    from motion_nbs.core import sample_video
    script = Path(__file__).resolve().parents[1] / "data_scripts" / "build_flow_dataset.py"
    with tempfile.TemporaryDirectory() as out:
        t = time.perf_counter()
        subprocess.run([sys.executable, str(script), str(sample_video("bikes")), "--out", out, "--workers", "2"],
                       check=True, capture_output=True)
        res["builder_bikes_s"] = time.perf_counter() - t
        res["builder_bikes_pairs_per_s"] = 8 / res["builder_bikes_s"]
    print(f"dataset builder on bikes.mp4: {res['builder_bikes_pairs_per_s']:.2f} pairs/s ({res['builder_bikes_s']:.1f} s for 8 pairs, including start-up)")


MEASUREMENTS = [measure_render, measure_pool, measure_dis_baseline, measure_builder]


def main():
    torch.set_num_threads(2)
    res = {"bench": "data", "size": list(SIZE), "threads": torch.get_num_threads()}
    for measure in MEASUREMENTS: measure(res)
    print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in res.items()}))


if __name__ == "__main__":
    main()
