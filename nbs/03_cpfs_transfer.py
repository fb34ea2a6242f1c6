# %% [markdown]
# # Transfer of CPFS pre-training (papermill experiment)
#
# > A small, offline analogue of tables 3.1 and 3.2: pre-train one network with one equal budget as random init, CPFS-CE, CPFS-KTA, CPFS-CE-rev and the direct flow-classification baseline, then probe what each learned on held-out synthetic frames.

# %% [markdown]
# The claim under test (section 3.3.6): *the CPFS losses beat direct flow classification, which beats
# random initialisation* — "in all cases our approach outperforms the baseline of predicting optical-flow
# directly". The thesis shows it on ImageNet and PASCAL VOC (tables 3.1, 3.2), which cannot be
# downloaded here. This notebook tests the same ordering at laptop scale:
#
# - **pre-training**: the quarter-width appendix-A AlexNet (`alexnet_cpfs_small`) on `shapes` scenes in
#   motion (chapter 02a), trained by `motion_nbs.cpfs.train` with each loss for the same number of
#   steps, batch, pixels and data, from the same initial weights (same seed). The random arm is that
#   initial network, its batch-norm statistics measured on unlabelled frames (`calibrate_batchnorm`,
#   chapter 03b) and folded like the trained arms'.
# - **evaluation** on held-out frames the networks never saw, with the frozen-backbone probes of chapter
#   03b: (a) linear probes on conv1..conv5 classifying the *dominant object category* of a frame (cube,
#   sphere or cylinder: the class covering most pixels) — the analogue of table 3.2; (b) the per-pixel
#   segmentation probe (background, cube, sphere, cylinder) — the analogue of table 3.1's segmentation
#   column.
# - several pre-training seeds; mean ± standard deviation over seeds.
#
# Run it from the command line:
#
# ```bash
# papermill nbs/03_cpfs_transfer.ipynb _runs/03_cpfs_transfer.ipynb -p preset full   # the real run
# papermill nbs/03_cpfs_transfer.ipynb _runs/tiny.ipynb -p preset tiny                # a smoke run
# ```
#
# The default, `preset="saved"`, shows the saved results of the full run
# (`nbs/03_cpfs_transfer_results.json` and `.png`) without re-running anything, and runs the tiny
# version when they are missing. Pre-training runs are kept in `runs_dir` and reused: a finished run
# with the same settings is loaded, not retrained (as are runs of `03_cpfs_train.ipynb` whose `out_dir`
# is `{runs_dir}/{loss}_seed{seed}`).

# %% tags=["parameters"]
preset = "saved"      # "saved" (show the saved full results; "tiny" when missing), "tiny" (a smoke run, about a minute), "full" (the real run)
arms = ["random", "flow_cls", "ce_rev", "kta", "ce"]  # pre-training arms: "random" and the losses of motion_nbs.cpfs
seeds = None          # pre-training seeds (None: the preset's; full: [0, 1, 2])
num_iters = None      # pre-training steps, the same for every arm (None: the preset's; full: 100)
num_train = None      # labelled held-out frames the probes are fitted on (None: the preset's)
num_test = None       # held-out frames the probes are scored on (None: the preset's)
seg_iters = None      # steps of the segmentation probe (None: the preset's)
train_missing = True  # train arms whose pre-training run is missing from runs_dir (False: skip them, e.g. while they train elsewhere)
num_threads = None    # torch CPU threads (None: torch's default; 1 avoids oversubscribing a busy machine)
device = None         # pre-training and probing device ("cpu", "cuda", ...); None: CUDA if present, else MPS, else the CPU
runs_dir = "_runs/cpfs_transfer"  # pre-training runs go to {runs_dir}/{loss}_seed{seed} (relative to the repository root)
results_path = None   # results JSON (+ .png figure); None: nbs/03_cpfs_transfer_results.json for "full", {runs_dir}/results.json otherwise

# %%
from motion_nbs.core import reject_unknown_parameters

reject_unknown_parameters()  # a -p name this notebook does not define stops the run here, listing the valid ones

# %%
from motion_nbs.core import resolve_device
from motion_nbs.transfer import TRANSFER_ARMS

PRESETS = {
    "tiny": dict(seeds=[0], num_iters=2, batch_size=4, num_pixels=32, image_size=64, num_train=24, num_test=12, seg_iters=20),
    "full": dict(seeds=[0, 1, 2], num_iters=100, batch_size=None, num_pixels=None, image_size=None, num_train=600, num_test=300,
                 seg_iters=300),
}

def _positive_int(name, v):
    if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v < 1):
        raise ValueError(f"{name}={v!r}; expected a positive int or None (the preset's value)")

if preset not in ("saved", *PRESETS): raise ValueError(f"preset={preset!r}; valid: 'saved', 'tiny', 'full'")
if isinstance(arms, str): arms = [a.strip() for a in arms.split(",")]
bad = [a for a in arms if a not in TRANSFER_ARMS]
if bad or not arms or len(set(arms)) != len(arms):
    raise ValueError(f"arms={arms!r}; expected distinct names from: {', '.join(TRANSFER_ARMS)}")
if seeds is not None and (not isinstance(seeds, (list, tuple)) or not seeds or not all(isinstance(s, int) and s >= 0 for s in seeds)):
    raise ValueError(f"seeds={seeds!r}; expected a non-empty list of non-negative ints or None (the preset's)")
if not isinstance(train_missing, bool): raise ValueError(f"train_missing={train_missing!r}; valid: True, False")
for _name in ("num_iters", "num_train", "num_test", "seg_iters", "num_threads"): _positive_int(_name, globals()[_name])
dev = resolve_device(device)  # a device this machine lacks fails here, naming the ones it has

# %% [markdown]
# ## Settings and data
#
# Paths are resolved from the repository root, so the notebook runs the same from `nbs/` (nbdev,
# JupyterLab) and from the root (papermill).

# %%
import hashlib
import json
import time
from pathlib import Path

import torch
from IPython.display import Image, Markdown, display

from motion_nbs.core import atomic_write

ROOT = Path.cwd().parent if Path.cwd().name == "nbs" else Path.cwd()
SAVED = ROOT / "nbs" / "03_cpfs_transfer_results.json"
run = preset != "saved" or not SAVED.exists()
mode = ("tiny" if preset == "saved" else preset) if run else "saved"
if run:
    cfg = dict(PRESETS[mode])
    cfg.update({k: v for k, v in dict(seeds=seeds, num_iters=num_iters, num_train=num_train, num_test=num_test,
                                      seg_iters=seg_iters).items() if v is not None})
    cfg["arms"] = list(arms)
    runs = Path(runs_dir) if Path(runs_dir).is_absolute() else ROOT / runs_dir
    out_json = Path(results_path) if results_path else (SAVED if mode == "full" else runs / "results.json")
    if num_threads: torch.set_num_threads(num_threads)
    print(mode, cfg, "->", out_json)
else: print(f"showing the saved results of the full run: {SAVED}")


# %% [markdown]
# The probe frames are `shapes` scenes from seeds that no pre-training run uses (those draw from their
# own seed, seed + 1,000,003 and seed + 2,000,003), rendered at the pre-training resolution. The label of
# a frame is its dominant object category; there are 2–4 objects of random categories per frame, and
# cubes, being bulky, dominate more often than spheres and cylinders — the majority-class rate is printed
# with the results. The same frames serve every arm and seed, so that differences between arms are
# paired.

# %%
def dominant_category(categories: torch.Tensor) -> torch.Tensor:
    "(N,H,W) categories (0 = background, 1..3) → (N,) index 0..2 of the object category covering most pixels."
    counts = torch.stack([(categories == c).flatten(1).sum(1) for c in (1, 2, 3)], 1)
    if (counts.sum(1) == 0).any(): raise ValueError("a frame without object pixels has no dominant category")
    return counts.argmax(1)

def probe_frames(num: int, seed: int, size: int, cache_dir: Path) -> dict:
    "Rendered `shapes` frames with dominant-category labels, cached in `cache_dir`."
    from tqdm.auto import tqdm
    from motion_nbs.data import SceneDataset
    path = cache_dir / f"probe_frames_{size}px_{num}_{seed}.pt"
    if path.exists(): return torch.load(path, weights_only=True)
    ds = SceneDataset("shapes", length=num, seed=seed, size=(size, size))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # rendering is many small ops: threads only add overhead
    try: items = [ds[i] for i in tqdm(range(num), desc=f"render {num} frames", leave=False)]
    finally: torch.set_num_threads(threads)
    out = {"image": torch.stack([it["image"] for it in items]), "categories": torch.stack([it["categories"] for it in items])}
    out["label"] = dominant_category(out["categories"])
    cache_dir.mkdir(parents=True, exist_ok=True)
    torch.save(out, path)
    return out


# %%
if run:
    from motion_nbs.cpfs import CPFSConfig
    size = CPFSConfig.from_preset("cpu", image_size=cfg["image_size"]).image_size
    train_frames = probe_frames(cfg["num_train"], 7_000_001, size, runs)
    test_frames = probe_frames(cfg["num_test"], 7_000_002, size, runs)
    for name, fr in (("train", train_frames), ("test", test_frames)):
        print(name, len(fr["label"]), "frames; dominant category counts (cube, sphere, cylinder):", torch.bincount(fr["label"], minlength=3).tolist())


# %% [markdown]
# ## Pre-training and probing
#
# For each seed and arm: the backbone (trained by `motion_nbs.cpfs.train` with the preset's batch, pixels
# and crops and `num_iters` steps — the same for every arm — or reused from `runs_dir`; for `random`, the
# same initial weights with calibrated batch norm), then the five linear probes and the segmentation
# probe. Each evaluated arm is appended to `{runs_dir}/records*.json`, so an interrupted run continues
# where it stopped.

# %%
def pretrained_backbone(arm: str, seed: int):
    "The folded backbone of one arm and seed (trained, or reused from runs_dir) and a short note."
    from motion_nbs.cpfs import CPFSConfig, build_cpfs_model, load_cpfs, train
    from motion_nbs.models import fold_batchnorm
    from motion_nbs.transfer import calibrate_batchnorm
    kw = dict(num_iters=cfg["num_iters"], batch_size=cfg["batch_size"], num_pixels=cfg["num_pixels"],
              image_size=cfg["image_size"], seed=seed, device=device, progress=False)
    if arm == "random":
        net = build_cpfs_model(CPFSConfig.from_preset("cpu", loss="ce", **kw)).net.backbone.to(dev)  # the trained arms' initial weights
        return fold_batchnorm(calibrate_batchnorm(net, train_frames["image"])), "random init, batch norm calibrated"
    out = runs / f"{arm}_seed{seed}"
    done = out / "results.json"
    want = CPFSConfig.from_preset("cpu", loss=arm, out_dir=str(out), **kw)
    if done.exists() and (out / "model.pt").exists():
        prev = json.loads(done.read_text())
        same = all(prev["config"].get(k) == v for k, v in want.to_dict().items() if k not in CPFSConfig.RUNTIME)
        if prev["steps"] == cfg["num_iters"] and same: return load_cpfs(out).backbone.to(dev), f"reused {out.name} (in runs_dir)"
    if not train_missing: return None, f"no finished run {out.name} in runs_dir: skipped"
    t = time.time()
    train(want)
    return load_cpfs(out).backbone.to(dev), f"trained in {time.time() - t:.0f} s"

def evaluate(backbone, seed: int) -> dict:
    "Both probes of chapter 03b on the held-out frames (segmentation: a 128-unit MLP, scored on every 4th pixel)."
    from motion_nbs.transfer import PROBE_LAYERS, linear_probes, segmentation_probe
    probe = linear_probes(backbone, PROBE_LAYERS, (train_frames["image"], train_frames["label"]),
                          (test_frames["image"], test_frames["label"]), num_classes=3)
    seg = segmentation_probe(backbone, (train_frames["image"], train_frames["categories"]),
                             (test_frames["image"], test_frames["categories"]), num_classes=4, num_iters=cfg["seg_iters"],
                             hidden=128, num_pixels=128, eval_stride=4, seed=seed)
    return dict(probe=probe, segmentation=seg)


# %%
if run:
    key = {"probe_version": 2, **{k: cfg[k] for k in ("num_iters", "batch_size", "num_pixels", "image_size", "num_train", "num_test", "seg_iters")}}
    rec_path = runs / f"records_{hashlib.md5(json.dumps(key, sort_keys=True).encode()).hexdigest()[:8]}.json"
    records = json.loads(rec_path.read_text()) if rec_path.exists() else []
    t_start = time.time()
    for seed in cfg["seeds"]:
        for arm in cfg["arms"]:
            if any(r["arm"] == arm and r["seed"] == seed for r in records): continue
            t = time.time()
            backbone, note = pretrained_backbone(arm, seed)
            if backbone is None: print(f"seed {seed} {arm}: {note}"); continue
            rec = dict(arm=arm, seed=seed, note=note, **evaluate(backbone, seed), seconds=round(time.time() - t, 1))
            records.append(rec)
            rec_path.parent.mkdir(parents=True, exist_ok=True)
            with atomic_write(rec_path) as tmp: tmp.write_text(json.dumps(records, indent=1))   # complete or the previous file
            print(f"seed {seed} {arm:8s} ({note}): probe conv1..5 "
                  + " ".join(f"{100 * rec['probe'][l]['accuracy']:.1f}" for l in rec["probe"])
                  + f" | seg mIoU {100 * rec['segmentation']['miou']:.1f} | {rec['seconds']} s", flush=True)
    print(f"evaluation loop: {time.time() - t_start:.0f} s")

# %% [markdown]
# ## Results
#
# Mean ± standard deviation over seeds of the top-1 accuracy (%) of the linear probes and of the
# segmentation mIoU (%), with the thesis' ILSVRC-12 linear probes (table 3.2) and VOC12 segmentation
# (table 3.1) beside. The numbers are not comparable in value — 3 classes of synthetic shapes against
# 1000 ImageNet classes — only in ordering.

# %%
from motion_nbs.transfer import plot_transfer, summarize_transfer, transfer_table

if run:
    records = [r for r in records if r["arm"] in cfg["arms"] and r["seed"] in cfg["seeds"]]
    results = dict(preset=mode, settings=cfg, records=records, summary=summarize_transfer(records),
                   majority_class=float(torch.bincount(test_frames["label"], minlength=3).max() / len(test_frames["label"])),
                   test_counts=torch.bincount(test_frames["label"], minlength=3).tolist(),
                   pretrain_settings={k: v for k, v in CPFSConfig.from_preset("cpu", **{k: cfg[k] for k in ("num_iters", "batch_size",
                                      "num_pixels", "image_size")}).to_dict().items() if k not in ("loss", "seed", *CPFSConfig.RUNTIME)})
    out_json.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(out_json) as tmp: tmp.write_text(json.dumps(results, indent=1))
    fig = plot_transfer(results["summary"], chance=100 * results["majority_class"])
    fig.savefig(out_json.with_suffix(".png"), dpi=80, bbox_inches="tight")
else:
    results = json.loads(SAVED.read_text())
    display(Image(str(SAVED.with_suffix(".png"))))
display(Markdown(transfer_table(results["summary"])))
print(f"majority class of the test frames: {100 * results['majority_class']:.1f}% (counts cube/sphere/cylinder {results['test_counts']})")

# %% [markdown]
# The balanced accuracy (mean recall of the three classes) is less flattered by the majority class:

# %%
display(Markdown(transfer_table(results["summary"], metric="balanced_accuracy")))


# %% [markdown]
# The segmentation probe per class (IoU %, mean ± std over seeds): how much of the mIoU is telling
# objects from the background, and how much is naming their category.

# %%
def per_class_iou(results: dict) -> str:
    "Markdown table of the segmentation probe's IoU per class, mean ± std over seeds, per arm."
    names = ("background", "cube", "sphere", "cylinder")
    lines = ["| arm | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for arm in results["summary"]:
        ious = torch.tensor([[100 * (v if v is not None else float("nan")) for v in r["segmentation"]["iou"]]
                             for r in results["records"] if r["arm"] == arm])
        std = ious.std(0) if len(ious) > 1 else torch.zeros(len(names))
        lines.append(f"| {arm} | " + " | ".join(f"{m:.1f} ± {d:.1f}" for m, d in zip(ious.mean(0).tolist(), std.tolist())) + " |")
    return "\n".join(lines)

display(Markdown(per_class_iou(results)))


# %% [markdown]
# ## Does the ordering hold?
#
# The thesis' ordering, checked on the means and seed by seed (same seed = same initial weights and the
# same frames, so per-seed differences are paired): every CPFS loss above the direct flow-classification
# baseline, and the baseline above random init.

# %%
def ordering_report(results: dict) -> str:
    "For each probe: which of the thesis' pairwise claims hold on the means, and in how many seeds."
    s, recs = results["summary"], results["records"]
    metrics = [(f"conv{i + 1}", f"relu{i + 1}_accuracy") for i in range(5)] + [("seg. mIoU", "seg_miou")]
    def value(r, m): return 100 * r["segmentation"]["miou"] if m == "seg_miou" else 100 * r["probe"][m[:5]]["accuracy"]
    pairs = [(a, "flow_cls") for a in ("ce", "kta", "ce_rev")] + [("flow_cls", "random")]
    pairs = [(a, b) for a, b in pairs if a in s and b in s]
    lines = ["| probe | " + " | ".join(f"{a} > {b}" for a, b in pairs) + " |", "|---|" + "---|" * len(pairs)]
    for name, m in metrics:
        cells = []
        for a, b in pairs:
            by_seed = {r["seed"]: value(r, m) for r in recs if r["arm"] == b}
            wins = [value(r, m) > by_seed[r["seed"]] for r in recs if r["arm"] == a and r["seed"] in by_seed]
            diff = s[a][m][0] - s[b][m][0]
            cells.append(f"{'yes' if diff > 0 else '**no**'} ({diff:+.1f}; {sum(wins)}/{len(wins)} seeds)")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)

display(Markdown(ordering_report(results)))

# %% [markdown]
# ## What came out
#
# Written from the saved full run (`nbs/03_cpfs_transfer_results.json`): 3 seeds × 5 arms; each trained
# arm had **100 Adam steps of 16 frames** (128-pixel crops of a pool of 1,024 rendered scenes, 256 pixels
# per frame, σ learned from $\sigma^2 = 0.0036$) on the quarter-width AlexNet; probes fitted on 600 and
# scored on 300 held-out frames. That is about $10^{-5}$ of the thesis' pre-training (≈200k steps of 96
# real frames at 224 px). The budget is a sixth of the `cpu` preset of `03_cpfs_train` because the 12
# runs had to fit into an hour on two cores shared with other jobs: each 100-step run took about 10
# minutes of wall time, most of it rendering its scene pool.
#
# **Linear probes (table 3.2 analogue): no signal, so no ordering.** Every arm, random included, scores
# *below* the majority-class rate (38–46% against 52.7%) and at chance in balanced accuracy (31–38%
# against 33.3%); the probe's L2 selection mostly picks the strongest penalty, i.e. a classifier close to
# the class prior. The differences between arms (±5 points, standard deviations of 1–5) are noise: the
# "ordering" table above flips from layer to layer. At this scale the dominant category of a frame is not
# linearly readable from any of these networks, so this half of the claim is **untested, not refuted**.
#
# **Segmentation probe (table 3.1 analogue): the thesis' ordering, with small effects.** mIoU: CPFS-CE
# 35.5 ± 0.4, CPFS-KTA 35.3 ± 0.5, CPFS-CE-rev 34.3 ± 0.1, direct flow classification 34.2 ± 0.6, random
# 33.8 ± 0.7 — the same order as the thesis' VOC12 column (41.4, 41.5, 39.5, 38.8, 19.8). CE and KTA beat
# the baseline in 3 of 3 seeds (+1.2 and +1.0 points), CE-rev only ties it (1 of 3), and the baseline beats
# random in 2 of 3 seeds (+0.5). The per-class IoUs say where the gain is: background (92.4 against 91.4
# for random) and the cube class; spheres and cylinders stay below 11% IoU for every arm. What the CPFS
# networks transfer is *which pixels belong to an object*, not *what* the object is.
#
# **Why, as far as we can tell.**
#
# - *The pre-training learned its own task.* On held-out scenes the grouping AUC of the embeddings
#   (`results.json` of each run) rose from 0.59–0.66 at initialisation to 0.80–0.84 for KTA, 0.71–0.75
#   for CE and 0.68–0.78 for the baseline; CE-rev fell *below* its initialisation (0.54–0.56) — matching
#   its weak segmentation transfer. So the budget was enough to learn grouping, and the segmentation probe
#   sees it.
# - *The data: category is a pure shape cue here.* In `shapes` the textures and tints are drawn
#   independently of the category, there are 2–4 objects per frame, and motion (what CPFS learns from) is
#   category-agnostic: cubes, spheres and cylinders move alike. Grouping by common fate does not require
#   telling a sphere from a cylinder, and 100 steps of it do not produce features that do. Even the
#   random network's features, which linear probes usually read something from, give nothing with 600
#   labelled frames: the probe task itself is hard at this data scale. Direct supervision confirms it:
#   chapter 07 trains the same quarter-width AlexNet (with batch norm) *end to end* on the majority
#   category of 1,700 `shapes` scenes for 1,200 steps, and it still scores 48.7% on 300 held-out scenes
#   against a 48.3% prior (its training loss fell: it memorises). A probe on frozen features, after 100
#   steps of a label-free proxy task, cannot be expected to do better than that supervised ceiling.
# - *σ.* The learned bandwidth hardly moved in 100 steps ($\sigma^2$ 0.0035–0.0037), so the runs are
#   effectively at the thesis' value; we did not vary it.
# - *The budget*: with more steps (the `cpu` preset's 600, or a GPU run with `preset="paper"` in
#   `03_cpfs_train`), more labelled frames (`num_train`), or single-object frames, the linear probes might
#   separate the arms; we did not tune any of these toward the expected answer, and report the run as it
#   came out.
#
# ## Summary
#
# - One equal, tiny budget, 3 seeds: CPFS-CE ≈ CPFS-KTA > CPFS-CE-rev ≈ direct flow classification >
#   random on the per-pixel segmentation probe (effects of about one mIoU point, consistent over seeds for
#   CE and KTA), the thesis' ordering; mostly better object/background separation.
# - The per-layer linear probes for the dominant category are at chance for every arm, so the table-3.2
#   half of the claim is not tested by this run.
# - `preset="full"` reproduces it (about an hour on two cores, most of it pre-training); the runs and the
#   per-arm records are reused when present.
