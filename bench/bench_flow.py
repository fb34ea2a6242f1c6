"""Flow storage and estimation speed.

KITTI 16-bit PNG (the thesis' storage format) vs raw float32 `.flo` files, both written and read
through the file system in the same run: throughput and size. OpenCV DIS flow on `bikes.mp4` frame
pairs at each preset, with Farneback as the baseline. The last line printed is one JSON object.
"""
import json
import tempfile
import time
from pathlib import Path

import torch

from motion_nbs.core import read_video_frames, sample_video
from motion_nbs.flow import estimate_flow, read_flo, read_kitti_flow, write_flo, write_kitti_flow


def per_second(fn, n):
    fn()  # warm-up
    t = time.perf_counter()
    for _ in range(n): fn()
    return n / (time.perf_counter() - t)


def main():
    torch.set_num_threads(2)
    frames = read_video_frames(sample_video("bikes"), [40, 45, 100, 105, 150, 155])
    pairs = [(frames[i], frames[i + 1]) for i in (0, 2, 4)]
    flows = [estimate_flow(a, b) for a, b in pairs]
    res = {"bench": "flow", "frame_size": list(frames.shape[-2:])}

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        def kitti():
            for i, f in enumerate(flows): read_kitti_flow(write_kitti_flow(tmp / f"{i}.png", f))
        def flo():
            for i, f in enumerate(flows): read_flo(write_flo(tmp / f"{i}.flo", f))
        res["kitti_png_fields_per_s"] = per_second(kitti, 5) * len(flows)
        res["flo_fields_per_s"] = per_second(flo, 5) * len(flows)
        png = sum((tmp / f"{i}.png").stat().st_size for i in range(len(flows)))
        raw = sum((tmp / f"{i}.flo").stat().st_size for i in range(len(flows)))
        res["kitti_png_bytes_per_field"] = png / len(flows)
        res["float32_bytes_per_field"] = raw / len(flows)
    res["kitti_size_ratio_vs_float32"] = res["kitti_png_bytes_per_field"] / res["float32_bytes_per_field"]
    res["kitti_time_ratio_vs_flo"] = res["flo_fields_per_s"] / res["kitti_png_fields_per_s"]
    print(f"KITTI PNG: {res['kitti_png_fields_per_s']:.1f} fields/s (write+read), "
          f"{res['kitti_size_ratio_vs_float32']:.3f} of float32 size")

    for method, preset in (("farneback", "medium"), ("dis", "ultrafast"), ("dis", "fast"), ("dis", "medium")):
        key = "farneback" if method == "farneback" else f"dis_{preset}"
        res[f"{key}_pairs_per_s"] = per_second(lambda: [estimate_flow(a, b, method, preset) for a, b in pairs], 3) * len(pairs)
        print(f"{key}: {res[f'{key}_pairs_per_s']:.1f} pairs/s")
    res["dis_medium_speedup_vs_farneback"] = res["dis_medium_pairs_per_s"] / res["farneback_pairs_per_s"]
    print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in res.items()}))


if __name__ == "__main__":
    main()
