"""Training speed of the CPU presets through the learner, against a bare loop in the same run.

For CPFS (KTA, `cpu` preset: quarter-width AlexNet, batch 16, 256 pixels, 128 px crops) and S3 (affine,
`cpu` preset: fcn8s_small, batch 8, 96 px crops): images per second of `fit` (the book's loop: config,
autocast context, loss kept on the device, checks and a metrics line every 10 steps, a checkpoint at
the end) and of a bare loop over the same model, data and Adam (read a batch, forward, zero_grad,
backward, step, nothing else). The two alternate round by round so that a change in machine load hits both alike;
each figure is the median over rounds. The goal is fit / bare >= 0.9 (the loop costs < 10 %). The
last line printed is one JSON object.
"""
import json
import tempfile
import time

import torch
from torch.utils.data import DataLoader

from motion_nbs.cpfs import CPFSConfig, _trainer_loss, build_cpfs_model
from motion_nbs.cpfs import train_data as cpfs_data
from motion_nbs.data import ImageFlowSamples, PairedAugment, SceneDataset
from motion_nbs.learner import configure, fit
from motion_nbs.s3 import S3Config, s3_loss, s3_model

STEPS, ROUNDS, POOL = 30, 3, 64


def cpfs_setup():
    cfg = CPFSConfig.from_preset("cpu", loss="kta", pool_size=POOL, num_valid=4, progress=False, device="cpu")
    return cfg, (lambda: build_cpfs_model(cfg)), cpfs_data(cfg)[0], _trainer_loss


def s3_setup():
    cfg = S3Config.from_preset("cpu", loss="affine", pool_size=POOL, num_valid=4, progress=False, device="cpu")
    pool = ImageFlowSamples(SceneDataset(cfg.data, POOL, seed=0, size=(cfg.image_size,) * 2),
                            PairedAugment(cfg.image_size, colour=False), cache=True).fill()
    crit = s3_loss("affine")
    make = lambda: s3_model(cfg.model, cfg.num_segments, cfg.temperature, dropout=cfg.dropout, output_stride=cfg.output_stride)
    return cfg, make, pool, lambda m, b: crit(m(b["image"]), b["flow"])


def bare_images_per_s(cfg, make, data, loss_fn):
    torch.manual_seed(0)
    model = make().train()
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    loader = DataLoader(data, batch_size=cfg.batch_size, shuffle=True, drop_last=True)
    times, it = [], iter(loader)
    for _ in range(STEPS):  # each step timed whole, reading (augmenting) its batch included, as fit's clock does
        t = time.perf_counter()
        try: batch = next(it)
        except StopIteration: it = iter(loader); batch = next(it)
        loss = loss_fn(model, batch)
        opt.zero_grad(); loss.backward(); opt.step()
        times.append(time.perf_counter() - t)
    return cfg.batch_size * (STEPS - 10) / sum(times[10:])


def fit_images_per_s(cfg, make, data, loss_fn):
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as d:
        fit(make(), data, loss_fn, None, configure(cfg, num_iters=STEPS, log_every=10, checkpoint_every=STEPS, out_dir=d))
        recs = [json.loads(l) for l in open(f"{d}/metrics.jsonl")]
    t = {r["step"]: r["seconds"] for r in recs if "seconds" in r}
    return cfg.batch_size * (STEPS - 10) / (t[STEPS] - t[10])


def main():
    torch.set_num_threads(2)
    res = {"bench": "train", "threads": torch.get_num_threads(), "steps": STEPS, "rounds": ROUNDS}
    for name, setup in (("cpfs_kta_cpu", cpfs_setup), ("s3_affine_cpu", s3_setup)):
        args = setup()
        bare, looped = [], []
        for _ in range(ROUNDS):
            bare.append(bare_images_per_s(*args)); looped.append(fit_images_per_s(*args))
        res[f"{name}_fit_images_per_s"] = sorted(looped)[ROUNDS // 2]
        res[f"{name}_bare_images_per_s"] = sorted(bare)[ROUNDS // 2]
        res[f"{name}_ratio_fit_vs_bare"] = res[f"{name}_fit_images_per_s"] / res[f"{name}_bare_images_per_s"]
        print(f"{name}: fit {res[f'{name}_fit_images_per_s']:.1f} images/s, bare loop {res[f'{name}_bare_images_per_s']:.1f} "
              f"(ratio {res[f'{name}_ratio_fit_vs_bare']:.3f})", flush=True)
    res["goal_ratio"] = 0.9
    res["goals_met"] = all(res[f"{n}_ratio_fit_vs_bare"] >= 0.9 for n in ("cpfs_kta_cpu", "s3_affine_cpu"))
    print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in res.items()}))


if __name__ == "__main__":
    main()
