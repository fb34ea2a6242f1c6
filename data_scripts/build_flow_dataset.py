#!/usr/bin/env python
"""Build a (frame, optical flow) training set from videos, as WebDataset tar shards.

The thesis' recipe (section 3.3.2): from each video draw 8 random frames t (never across a scene cut)
and compute the optical flow from frame t to frame t+5. Each pair is stored under one key as
`key.jpg` (frame t), `key.flow.png` (flow as a KITTI 16-bit PNG) and `key.json` (source, t, gap,
flow method). Videos are assigned to shards in sorted order, `--videos-per-shard` at a time, so the
content of every shard is fixed by the arguments alone:

- parallel: videos are processed by `--workers` processes;
- resumable: a shard is written to a temporary name and renamed only when complete; complete shards
  are skipped when the command is run again, so a killed build resumes where it stopped and ends
  with the same bytes as an uninterrupted one;
- honest about failures: a shard holding a video that could not be read is not written, the run
  names the video and exits with status 1, and the next run retries it (fix or remove the video);
- splittable: `--shard-index i --num-shards n` builds only shards s with s % n == i, so a cluster job
  array of n tasks builds the data set together.

Example: python data_scripts/build_flow_dataset.py ~/videos --out ~/data/flow_pairs --workers 8
"""
import argparse
import importlib
import io
import json
import multiprocessing as mp
import os
import sys
import threading
import time
from pathlib import Path

VIDEO_SUFFIXES = {".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg"}


def find_videos(inputs) -> list:
    "Video files named in `inputs` (files, or folders searched recursively), sorted and deduplicated."
    out = set()
    for item in inputs:
        p = Path(item).expanduser()
        if p.is_dir(): out.update(f for f in p.rglob("*") if f.suffix.lower() in VIDEO_SUFFIXES and f.is_file())
        elif p.is_file(): out.add(p)
        else: raise FileNotFoundError(f"input {p} is neither a video file nor a folder")
    return sorted(out)


def shard_name(index: int) -> str:
    return f"pairs-{index:06d}.tar"


def process_video(job):
    "All pairs of one video as lists of (key, members); errors are returned, not raised."
    vid_index, path, a = job
    from motion_nbs.data import encode_flow_pair, video_frame_pairs
    from motion_nbs.flow import estimate_flow
    import torch
    import cv2
    torch.set_num_threads(1); cv2.setNumThreads(1)   # one thread per worker: the workers are the parallelism
    try:
        pairs = video_frame_pairs(path, gap=a["gap"], num_pairs=a["pairs_per_video"], seed=a["seed"] + vid_index)
        out = []
        for p in pairs:
            flow = estimate_flow(p["image"], p["next_image"], method=a["method"], preset=a["preset"])
            meta = dict(source=Path(path).name, t=p["t"], gap=p["gap"], method=a["method"], preset=a["preset"],
                        size=list(p["image"].shape[-2:]))
            key = f"v{vid_index:06d}_t{p['t']:06d}"
            out.append((key, encode_flow_pair(p["image"], flow, meta)))
        return path, out, None
    except (ValueError, FileNotFoundError) as e:
        return path, [], str(e)


def write_shard(path: Path, samples) -> int:
    "Write samples to a tar shard atomically (temporary name, fsync, rename); returns its size."
    import webdataset as wds
    from motion_nbs.core import atomic_write
    with atomic_write(path) as tmp:
        with open(tmp, "wb") as f:
            # fixed mtime/owner: the same samples always give the same bytes
            with wds.TarWriter(f, user="motion_nbs", group="motion_nbs", mtime=0, encoder=False) as tw:
                for key, members in samples: tw.write({"__key__": key, **members})
    return path.stat().st_size


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 1)[1])
    ap.add_argument("inputs", nargs="+", help="video files or folders of videos")
    ap.add_argument("--out", required=True, help="output folder for the shards")
    ap.add_argument("--gap", type=int, default=5, help="the pair is (t, t+gap) [5, as in the thesis]")
    ap.add_argument("--pairs-per-video", type=int, default=8, help="pairs drawn per video [8, as in the thesis]")
    ap.add_argument("--videos-per-shard", type=int, default=16, help="videos per shard [16]")
    ap.add_argument("--method", default="dis", choices=["dis", "farneback"], help="flow estimator [dis]")
    ap.add_argument("--preset", default="medium", choices=["ultrafast", "fast", "medium"], help="DIS preset [medium]")
    ap.add_argument("--seed", type=int, default=0, help="seeds the choice of frames [0]")
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="worker processes [all cores]")
    ap.add_argument("--shard-index", type=int, default=0, help="this task's index in a job array [0]")
    ap.add_argument("--num-shards", type=int, default=1, help="tasks in the job array [1]")
    a = ap.parse_args(argv)
    if not 0 <= a.shard_index < a.num_shards:
        ap.error(f"--shard-index must lie in [0, --num-shards={a.num_shards}), got {a.shard_index}")
    for name in ("gap", "pairs_per_video", "videos_per_shard", "workers"):
        if getattr(a, name) < 1: ap.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(a, name)}")
    return a


def main(argv=None) -> dict:
    a = parse_args(argv)
    from tqdm.auto import tqdm
    out = Path(a.out).expanduser()
    try: out.mkdir(parents=True, exist_ok=True)
    except OSError as e: raise SystemExit(f"error: cannot create the output folder {out}: {e.strerror}") from None
    if not os.access(out, os.W_OK): raise SystemExit(f"error: output folder {out} is not writable")
    videos = find_videos(a.inputs)
    if not videos: raise SystemExit(f"error: no videos ({', '.join(sorted(VIDEO_SUFFIXES))}) in {a.inputs}")
    num_total = -(-len(videos) // a.videos_per_shard)
    mine = [s for s in range(num_total) if s % a.num_shards == a.shard_index]
    todo = [s for s in mine if not (out / shard_name(s)).exists()]
    settings = dict(gap=a.gap, pairs_per_video=a.pairs_per_video, method=a.method, preset=a.preset, seed=a.seed)
    jobs = [(v, str(videos[v]), settings) for s in todo
            for v in range(s * a.videos_per_shard, min((s + 1) * a.videos_per_shard, len(videos)))]
    t0, pairs, nbytes, failed, per_video, held_back = time.perf_counter(), 0, 0, [], {}, []
    pool, wds_import = None, threading.Thread()
    if a.workers > 1 and len(jobs) > 1:
        # with workers, this process only writes the shards: webdataset (it imports torch, about a second) is imported
        # on a thread while the workers start, instead of later, while they run. (Not without workers: two threads
        # importing torch at once break its import.)
        wds_import = threading.Thread(target=importlib.import_module, args=("webdataset",), daemon=True)
        wds_import.start()
        # workers are forked from a server process that has imported torch, OpenCV and the flow code once: no worker
        # imports them again, and nothing is forked from a process with threads running (spawn where there is no
        # forkserver, on Windows: each worker then imports them itself)
        if "forkserver" in mp.get_all_start_methods():
            ctx = mp.get_context("forkserver")
            ctx.set_forkserver_preload(["motion_nbs.flowdata", "cv2"])
        else: ctx = mp.get_context("spawn")
        pool = ctx.Pool(a.workers)
    try:
        results = pool.imap(process_video, jobs) if pool else map(process_video, jobs)
        # the workers run; this thread imports nothing until webdataset's import is done (an exception coming back
        # from a worker may import its module: two imports of torch at once break it)
        if wds_import.is_alive(): wds_import.join()
        bar = tqdm(total=len(jobs), unit="video", desc="videos")
        for s in todo:
            samples, shard_failed = [], False
            for _ in range(min((s + 1) * a.videos_per_shard, len(videos)) - s * a.videos_per_shard):
                path, items, err = next(results)
                bar.update(1)
                if err: failed.append((path, err)); shard_failed = True; bar.write(f"failed {path}: {err}")
                per_video[Path(path).name] = len(items)
                samples += items
            if shard_failed:   # complete shards only: the next run retries this one
                held_back.append(shard_name(s)); continue
            nbytes += write_shard(out / shard_name(s), samples)
            pairs += len(samples)
        bar.close()
    finally:
        if pool: pool.terminate()
    dt = time.perf_counter() - t0
    written = len(todo) - len(held_back)
    summary = dict(pairs=pairs, shards_written=written, shards_skipped=len(mine) - len(todo), shards_failed=held_back,
                   shards_total=num_total, videos=len(jobs), videos_failed=[str(p) for p, _ in failed], pairs_per_video=per_video,
                   seconds=round(dt, 3), pairs_per_s=round(pairs / dt, 3) if dt > 0 else None, bytes=nbytes, out=str(out))
    print(f"{pairs} pairs in {written} new shards ({len(mine) - len(todo)} already complete), "
          f"{summary['pairs_per_s']} pairs/s, {nbytes / 1e6:.1f} MB -> {out}")
    for path, err in failed: print(f"failed: {path}: {err}", file=sys.stderr)
    if held_back:
        print(f"not written, because a video in them failed: {', '.join(held_back)}; fix or remove those videos and run again "
              "(complete shards are kept)", file=sys.stderr)
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    sys.exit(1 if main()["shards_failed"] else 0)
