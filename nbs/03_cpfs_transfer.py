# %% [markdown]
# # Transfer of CPFS pre-training (papermill experiment)
#
# > Chapter 3's claim tested so that it could come out either way: a labelled world with a supervised ceiling and a random floor, five arms pre-trained with one budget over several seeds, frozen linear probes and fine-tuning on few labels, paired statistics on test frames.

# %% [markdown]
# *Default run: **6 s** on 2 CPU cores with the default parameters (measured by `make book` on 6 Dec 2026, reusing the training and caches that earlier runs left in the runs folder, `core.runs_dir`; where a first run on a new machine takes longer, the chapter says so).*

# %% [markdown]
# **The question** (section 3.3.6, tables 3.1 and 3.2): do the CPFS losses transfer better than direct flow
# classification, which transfers better than random initialisation?
#
# **The answer** in the `objects` world, from the saved full run (`nbs/03_cpfs_transfer_results.json`): the figure
# shows each ordering as the paired difference over the 5 seeds with its 95 % CI (right of 0: the first arm
# transfers better), and the lines under it say, for each CPFS loss at its chosen learning rate against flow
# classification at its own, what came out. How it was measured follows; the numbers in full are under
# "Results" and "What came out".

# %%
#| code-fold: true
import hashlib
import json
import time
from pathlib import Path

import matplotlib.pyplot as plt
import torch
from IPython.display import Markdown, display

from motion_nbs import core
from motion_nbs.core import atomic_write
from motion_nbs.transfer import forest_plot, paired_comparison, thesis_number

# %%
#| code-fold: true
ROOT = core.repo_root() or Path.cwd()   # the checkout (the saved results live in its nbs/)
SAVED = ROOT / "nbs" / "03_cpfs_transfer_results.json"

def split_arm(arm: str):
    "'ce@0.001' -> ('ce', 0.001); 'ce' -> ('ce', None): an arm and the pre-training learning rate it overrides."
    base, at, lr = str(arm).partition("@")
    if not at: return base, None
    try: lr = float(lr)
    except ValueError: lr = -1.0
    return base, lr

def metrics_of(rec: dict) -> dict:
    "One record's metrics, in %: probe_relu1..probe_relu5 (top-1) and the fine-tunings (cls_n top-1, seg_n mIoU)."
    out = {f"probe_{l}": 100 * v["accuracy"] for l, v in rec["probe"].items()}
    out.update({k: 100 * v["test"] for k, v in rec["fine_tune"].items()})
    return out

def summarize(records: list) -> dict:
    "{arm: {metric: (mean, std, n)}}."
    out = {}
    for arm in dict.fromkeys(r["arm"] for r in records):
        ms = [metrics_of(r) for r in records if r["arm"] == arm]
        out[arm] = {k: (float(torch.tensor([m[k] for m in ms]).mean()), float(torch.tensor([m[k] for m in ms]).std()) if len(ms) > 1 else 0.0,
                        len(ms)) for k in ms[0]}
    return out

ORDERINGS = [(a, "flow_cls") for a in ("ce", "kta", "ce_rev")] + [("flow_cls", "random")] + [(a, "random") for a in ("ce", "kta", "ce_rev")]

def lr_orderings(records: list) -> list:
    "For each arm pre-trained at another learning rate ('ce@0.001'): against flow classification and against its loss's default."
    return [o for arm in dict.fromkeys(r["arm"] for r in records) if split_arm(arm)[1] is not None
            for o in ((arm, "flow_cls"), (arm, split_arm(arm)[0]))]

def lr_selection(records: list) -> dict:
    """For each loss pre-trained at several learning rates: the mean validation score of each rate's fine-tunings (over
    seeds and the four fine-tunings, in %) and the rate chosen on it. Test frames play no part in the choice."""
    by_loss = {}
    for arm in dict.fromkeys(r["arm"] for r in records): by_loss.setdefault(split_arm(arm)[0], []).append(arm)
    out = {}
    for loss, arms_ in by_loss.items():
        if len(arms_) < 2: continue
        valid = {a: 100 * float(torch.tensor([v["valid"] for r in records if r["arm"] == a for v in r["fine_tune"].values()]).mean())
                 for a in arms_}
        out[loss] = dict(valid=valid, chosen=max(valid, key=valid.get))
    return out

def chosen_orderings(records: list) -> list:
    "Each CPFS loss against flow classification, each at the pre-training rate chosen on the validation frames (`lr_selection`)."
    sel = lr_selection(records)
    pick = lambda loss: sel[loss]["chosen"] if loss in sel else loss
    return [(pick(a), pick("flow_cls")) for a in ("ce", "kta", "ce_rev")] + [(pick("flow_cls"), "random")]

def comparisons(records: list) -> list:
    """Each ordering and metric (the fixed ones, those of arms at other learning rates, then the arms at their chosen
    rates): the paired comparison over the seeds both arms share."""
    out = []
    for a, b in dict.fromkeys(ORDERINGS + lr_orderings(records) + chosen_orderings(records)):
        ra = {r["seed"]: metrics_of(r) for r in records if r["arm"] == a}
        rb = {r["seed"]: metrics_of(r) for r in records if r["arm"] == b}
        common = sorted(set(ra) & set(rb))
        if len(common) < 2: continue
        for m in ra[common[0]]:
            out.append(dict(better=a, worse=b, metric=m, seeds=common,
                            **paired_comparison([ra[s][m] for s in common], [rb[s][m] for s in common])))
    return out

def results_table(summary: dict, ceiling: dict) -> str:
    "Per arm, mean ± std over seeds of every metric, and the thesis' number beside it (tables 3.1, 3.2; VOC and ILSVRC, not this world)."
    metrics = list(next(iter(summary.values())))
    th = lambda arm, m: "" if thesis_number(arm, m) is None else f" [{thesis_number(arm, m):.1f}]"
    lines = ["| arm | seeds | " + " | ".join(m.replace("probe_relu", "probe conv") for m in metrics) + " |", "|---|---|" + "---|" * len(metrics)]
    for arm, s in summary.items():
        lines.append(f"| {arm} | {s[metrics[0]][2]} | " + " | ".join(f"{s[m][0]:.1f} ± {s[m][1]:.1f}{th(arm, m)}" for m in metrics) + " |")
    lines.append(f"\nIn brackets: the thesis' number for the same arm and protocol — ILSVRC-12 linear probes (table 3.2), VOC07 "
                 f"classification mAP and VOC12 segmentation mIoU after fine-tuning (table 3.1) — on real data, so only the orderings "
                 f"compare. Ceiling (end to end on the labels): accuracy {100 * ceiling['accuracy']:.1f}%, mIoU {100 * ceiling['miou']:.1f}%; "
                 f"majority class {100 * ceiling['prior']:.1f}%.")
    return "\n".join(lines)

def comparisons_table(comps: list) -> str:
    lines = ["| ordering | metric | mean difference (95% CI) | p | verdict |", "|---|---|---|---|---|"]
    for c in comps:
        lines.append(f"| {c['better']} > {c['worse']} | {c['metric']} | {c['mean_difference']:+.2f} ({c['ci95'][0]:+.2f}, {c['ci95'][1]:+.2f}) | "
                     f"{c['p']:.3f} | {c['verdict']} |")
    return "\n".join(lines)

def plot_results(comps: list, records: list, metrics=("seg_1000", "probe_relu3", "cls_1000")):
    "The paired differences over seeds with 95 % CIs (a forest plot), one panel per metric: the orderings the thesis states."
    pairs = list(dict.fromkeys(ORDERINGS + chosen_orderings(records)))
    labels = {"seg_1000": "segmentation mIoU, fine-tuned on 1,000", "probe_relu3": "conv3 linear probe top-1", "cls_1000": "top-1, fine-tuned on 1,000"}
    fig, axes = plt.subplots(1, len(metrics), figsize=(4.6 * len(metrics), 0.32 * len(pairs) + 1.6), sharey=True)
    for ax, m in zip(axes, metrics):
        rows = [dict(label=f"{a} − {b}", mean=c["mean_difference"], ci95=c["ci95"], group="vs random" if b == "random" else "vs flow_cls")
                for a, b in pairs for c in comps if c["better"] == a and c["worse"] == b and c["metric"] == m]
        forest_plot(rows, ax=ax, xlabel=f"{labels[m]} (points)")
    axes[0].set_title("right of 0: the first arm transfers better; 95 % CIs over 5 seeds", fontsize=9, loc="left")
    fig.tight_layout()
    return fig

def answer_lines(results: dict, metrics=("seg_1000", "probe_relu3", "cls_1000")) -> str:
    "One line per CPFS loss (at its chosen learning rate) against flow classification (at its own): each metric's paired difference."
    names = {"seg_1000": "segmentation mIoU", "probe_relu3": "conv3 probe", "cls_1000": "top-1 after fine-tuning"}
    comps = {(c["better"], c["worse"], c["metric"]): c for c in results["comparisons"]}
    lines = []
    for a, b in chosen_orderings(results["records"]):
        parts = [f"{names[m]} {c['mean_difference']:+.1f} (95 % CI {c['ci95'][0]:+.1f} to {c['ci95'][1]:+.1f}, p = {c['p']:.2g}): "
                 f"**{c['verdict']}**" for m in metrics for c in [comps.get((a, b, m))] if c]
        if parts: lines.append(f"- **{a} − {b}**: " + "; ".join(parts))
    return "\n".join(lines)


# %%
#| echo: false
saved = json.loads(SAVED.read_text()) if SAVED.exists() else None
if saved:
    plot_results(saved["comparisons"], saved["records"]); plt.show()
    display(Markdown(answer_lines(saved)))
else: print(f"no saved results yet ({SAVED}): run the full preset")

# %% [markdown]
# ## The design
#
# The claim under test (section 3.3.6, tables 3.1 and 3.2): *the CPFS losses (CE, KTA, CE-rev) transfer
# better than direct flow classification, which transfers better than random initialisation*. The thesis
# shows it on ImageNet and PASCAL VOC, which cannot be downloaded here. This notebook tests the same
# orderings offline, and is built so that the answer could go either way:
#
# - **A world where labels can be learned.** The `objects` scenes of chapter 02a: one cube, sphere or
#   cylinder per frame (the three equally likely), moving like every object of the renderer — the motion
#   says nothing about the category. A frame's label is its object's category; a pixel's label is
#   background or that category. The **ceiling** — the same quarter-width AlexNet trained end to end on the
#   labelled training frames — and the **floor** — the majority class, and the random-init network — are
#   measured on the test frames before anything is ranked.
# - **Arms.** `random` (the pre-trained arms' initial weights, batch norm calibrated on unlabelled frames),
#   `flow_cls` (direct flow classification), `kta`, `ce`, `ce_rev` (the CPFS losses), each pre-trained on
#   unlabelled `objects` frame pairs by `motion_nbs.cpfs.train` with the same budget (`num_iters` steps of
#   the `cpu` preset) from the same initial weights; and `supervised`, the ceiling network.
# - **Two protocols.** (a) Table 3.2's: frozen network, a linear probe per layer (conv1..conv5) classifying
#   the frame's category. (b) Table 3.1's: the whole network fine-tuned on few labels — `budgets` labelled
#   frames — for classification (top-1) and for segmentation (mIoU over background and the three
#   categories, a sparse hypercolumn head).
# - **Validation and test.** Probes choose their L2 penalty on a held-out fifth of their training frames;
#   fine-tuning chooses its learning rate among `lrs` on the validation frames; every reported number is on
#   test frames that nothing was chosen on.
# - **Seeds and statistics.** Every arm is pre-trained with each seed in `seeds`; the probes and
#   fine-tuning of seed $s$ use seed $10{,}000 + s$ (independent of pre-training). For each ordering —
#   each CPFS loss against `flow_cls`, `flow_cls` against `random`, each CPFS loss against `random` — and each
#   metric, `motion_nbs.transfer.paired_comparison` gives the mean of the per-seed differences, its 95%
#   CI, a paired $t$-test and a verdict: *holds*, *not resolved* or *reversed*.
#
# ```bash
# papermill nbs/03_cpfs_transfer.ipynb _runs/03_cpfs_transfer.ipynb -p preset full   # the real run (hours on 2 cores)
# papermill nbs/03_cpfs_transfer.ipynb _runs/tiny.ipynb -p preset tiny                # a smoke run
# ```
#
# The default, `preset="saved"`, shows the saved results of the full run (`nbs/03_cpfs_transfer_results.json`
# and `.png`) and runs the tiny version when they are missing. Pre-training runs are kept in `runs_dir`; a
# finished run with the same settings is reused, a killed one resumes, and each arm × seed's record is
# appended to the results as soon as it is complete.

# %% tags=["parameters"]
preset = "saved"      # "saved" (show the saved full results; "tiny" when missing), "tiny" (a smoke run), "full" (the real run)
arms = ["random", "flow_cls", "kta", "ce", "ce_rev", "supervised", "ce@0.001", "kta@0.001", "flow_cls@0.0001"]  # "random", "supervised", the losses of motion_nbs.cpfs; "loss@lr": pre-trained at that learning rate
seeds = None          # pre-training seeds (None: the preset's; full: [0, 1, 2, 3, 4])
num_iters = None      # pre-training steps, the same for every arm (None: the preset's; full: 1000)
world = "objects"     # the rendered preset the frames come from (chapter 02a)
train_missing = True  # train arms whose pre-training run is missing from runs_dir (False: skip them)
num_threads = None    # torch CPU threads (None: torch's default)
device = None         # "cpu", "cuda", ...; None: CUDA if present, else MPS, else the CPU
runs_dir = None  # pre-training runs {runs_dir}/{world}_{arm}_seed{seed}; None: _runs/cpfs_transfer (full) or _runs/cpfs_transfer_tiny (`core.runs_dir`)
results_path = None   # results JSON (+ .png); None: nbs/03_cpfs_transfer_results.json for "full", {runs_dir}/results.json otherwise

# %%
from motion_nbs.core import reject_unknown_parameters

# %%
reject_unknown_parameters()  # a -p name this notebook does not define stops the run here, listing the valid ones

# %%
#| code-fold: true
from motion_nbs.core import check_choice, check_int, resolve_device
from motion_nbs.cpfs import CPFS_TRAIN_LOSSES
from motion_nbs.data import PRESETS as WORLDS

# %%
#| code-fold: true
ALL_ARMS = ("random", *CPFS_TRAIN_LOSSES, "supervised")
PRESETS = {
    "tiny": dict(seeds=[0, 1], num_iters=2, batch_size=4, num_pixels=32, image_size=64, pool_size=8, num_train=24, num_probe=24,
                 num_valid=12, num_test=12, budgets=[8, 24], ft_iters=4, ceiling_iters=8, ceiling_lr=2e-3, lrs=[1e-3]),
    "full": dict(seeds=[0, 1, 2, 3, 4], num_iters=1000, batch_size=None, num_pixels=None, image_size=None, pool_size=None,
                 num_train=6000, num_probe=1000, num_valid=300, num_test=500, budgets=[100, 1000], ft_iters=300,
                 ceiling_iters=3000, ceiling_lr=2e-3, lrs=[1e-3, 3e-4]),
}
check_choice("preset", preset, ("saved", *PRESETS))
if isinstance(arms, str): arms = [a.strip() for a in arms.split(",")]

def _valid_arm(arm) -> bool:
    base, lr = split_arm(arm)
    return base in ALL_ARMS and (lr is None or (base in CPFS_TRAIN_LOSSES and lr > 0))

bad = [a for a in arms if not _valid_arm(a)]
if bad or not arms or len(set(arms)) != len(arms):
    raise ValueError(f"arms={arms!r}; expected distinct names from: {', '.join(ALL_ARMS)} (a loss may carry its pre-training "
                     f"learning rate, e.g. 'ce@0.001')")
if seeds is not None and (not isinstance(seeds, (list, tuple)) or len(seeds) < 2 or not all(isinstance(s, int) and s >= 0 for s in seeds)):
    raise ValueError(f"seeds={seeds!r}; expected a list of at least 2 non-negative ints (paired statistics) or None (the preset's)")
if num_iters is not None: check_int("num_iters", num_iters, 1)   # None: the preset's
check_choice("world", world, WORLDS)
if not isinstance(train_missing, bool): raise ValueError(f"train_missing={train_missing!r}; valid: True, False")
if num_threads is not None: check_int("num_threads", num_threads, 1)
dev = resolve_device(device)  # a device this machine lacks fails here, naming the ones it has

# %% [markdown]
# ## Settings and frames
#
# Paths are resolved from the repository root, so the notebook runs the same from `nbs/` (nbdev,
# JupyterLab) and from the root (papermill). The labelled frames are `world` scenes from seeds that no
# pre-training run uses (those draw from their own seed, seed + 1,000,003 and seed + 2,000,003): training
# frames for probes and fine-tuning, validation frames for choosing a learning rate, test frames for the
# numbers. They are rendered once and kept in `runs_dir`.

# %%
run = preset != "saved" or not SAVED.exists()
mode = ("tiny" if preset == "saved" else preset) if run else "saved"
if run:
    cfg = dict(PRESETS[mode], arms=list(arms), world=world)
    if seeds is not None: cfg["seeds"] = list(seeds)
    if num_iters is not None: cfg["num_iters"] = num_iters
    runs = Path(runs_dir) if runs_dir else core.runs_dir("cpfs_transfer" if mode == "full" else f"cpfs_transfer_{mode}")   # presets never share runs
    out_json = Path(results_path) if results_path else (SAVED if mode == "full" else runs / "results.json")
    if num_threads: torch.set_num_threads(num_threads)
    print(mode, cfg, "->", out_json)
else: print(f"showing the saved results of the full run: {SAVED}")

# %%
from motion_nbs.cpfs import CPFSConfig
from motion_nbs.transfer import world_frames

# %%
if run:
    size = CPFSConfig.from_preset("cpu", image_size=cfg["image_size"]).image_size
    frames = world_frames(world, size, cfg["num_train"], cfg["num_valid"], cfg["num_test"], cache_dir=runs)
    for name, fr in frames.items():
        print(name, len(fr["label"]), "frames; category counts (cube, sphere, cylinder):", torch.bincount(fr["label"], minlength=3).tolist())
    prior = float(torch.bincount(frames["test"]["label"], minlength=3).max() / len(frames["test"]["label"]))
    print(f"majority-class rate of the test frames: {100 * prior:.1f}%")

# %% [markdown]
# ## The ceiling
#
# The quarter-width appendix-A AlexNet (`alexnet_cpfs_small`, batch norm from batch statistics, as in
# pre-training), trained end to end from random weights on all the labelled training frames: for the
# frame's category (`fine_tune_classifier`: `ceiling_iters` AdamW steps of 32 frames, one-cycle schedule
# peaking at `ceiling_lr`, flips and shifts), then for every pixel's category (`fine_tune_segmenter`, starting
# from that classifier: `ceiling_iters`/2 steps of 8 frames, peak $10^{-3}$). Both learn from labels only.
# Their test accuracy and mIoU are what labels alone reach in this world; the classification backbone,
# folded, is the `supervised` arm below. The probes use the first `num_probe` training frames, the
# fine-tunings the first 100 or 1,000.
#
# How this world was made learnable: with the objects at depth 5–7 (a fifth of the view across), a
# constant learning rate and 1,000 training frames, the same network reached 55% (3,000 steps); nearer
# objects (depth 3.2–4.5) and 3,000 frames gave 75%, while its training accuracy was no higher — it was
# not fitting, not over-fitting. The one-cycle schedule, random shifts and 6,000 frames gave 92% on 500
# test frames (one seed, 3,000 steps). Segmentation trained from random weights stayed at 38% mIoU (the
# background and a little of the cubes: a pixel's category needs the whole object, which a per-pixel
# loss on 8 frames a step teaches slowly); started from the classifier it reached 83% in 1,500 steps.
# The run below measures both again.

# %%
from motion_nbs.transfer import supervised_ceiling

# %%
CEILING_KEYS = ("world", "num_train", "num_test", "image_size", "ceiling_iters", "ceiling_lr")

def ceiling_numbers() -> dict:
    """The first seed's ceiling on the test frames, computed once per settings and kept in runs_dir (a run that adds
    arms does not train it again); a full run adopts the saved results' ceiling when their settings are the same."""
    key = {k: cfg[k] for k in CEILING_KEYS} | {"seed": cfg["seeds"][0]}
    path = runs / f"ceiling_{hashlib.md5(json.dumps(key, sort_keys=True).encode()).hexdigest()[:8]}.json"
    if path.exists(): return json.loads(path.read_text())
    saved = json.loads(SAVED.read_text()) if mode == "full" and SAVED.exists() else None
    if saved and all(saved["settings"].get(k) == v for k, v in key.items() if k != "seed") and saved["settings"]["seeds"][0] == key["seed"]:
        out = saved["ceiling"]
    else:
        t, s = time.time(), cfg["seeds"][0]
        ceilings[s] = supervised_ceiling(frames, 10_000 + s, cfg["ceiling_iters"], cfg["ceiling_lr"], dev)
        out = dict(accuracy=ceilings[s]["accuracy"], miou=ceilings[s]["miou"], prior=prior, seconds=round(time.time() - t, 1))
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path) as tmp: tmp.write_text(json.dumps(out))
    return out

if run:
    ceilings = {}   # seed -> the trained ceiling network (the `supervised` arm trains the ones it needs)
    ceiling = ceiling_numbers()
    print(f"supervised ceiling on the test frames: accuracy {100 * ceiling['accuracy']:.1f}% (majority class {100 * prior:.1f}%), "
          f"segmentation mIoU {100 * ceiling['miou']:.1f}%; {ceiling['seconds']:.0f} s")

# %% [markdown]
# ## Pre-training and evaluation
#
# For each seed and arm: the backbone — trained by `motion_nbs.cpfs.train` on unlabelled `world` frame pairs
# with the `cpu` preset's batch, pixels and crops and `num_iters` steps, or reused from `runs_dir`; for
# `random`, the same initial weights with calibrated batch norm; for `supervised`, the ceiling network of
# that seed — then the linear probes and the four fine-tunings (classification and segmentation, each
# with `budgets` labelled frames, the learning rate chosen on the validation frames).

# %%
from motion_nbs.cpfs import build_cpfs_model, finished_run, load_cpfs, train
from motion_nbs.models import fold_batchnorm
from motion_nbs.transfer import calibrate_batchnorm, evaluate_transfer


# %%
def pretrained_backbone(arm: str, seed: int):
    "The folded backbone of one arm and seed (trained, reused from runs_dir, or the ceiling's) and a short note."
    kw = dict(num_iters=cfg["num_iters"], batch_size=cfg["batch_size"], num_pixels=cfg["num_pixels"], image_size=cfg["image_size"],
              pool_size=cfg["pool_size"], world=world, seed=seed, device=str(dev), progress=False)
    if arm == "supervised":
        if seed not in ceilings: ceilings[seed] = supervised_ceiling(frames, 10_000 + seed, cfg["ceiling_iters"], cfg["ceiling_lr"], dev)
        return ceilings[seed]["backbone"], "trained end to end on the labelled training frames"
    arm, lr = split_arm(arm)
    if lr is not None: kw["lr"] = lr
    if arm == "random":
        net = build_cpfs_model(CPFSConfig.from_preset("cpu", loss="ce", **kw)).net.backbone.to(dev)  # the trained arms' initial weights
        return fold_batchnorm(calibrate_batchnorm(net, frames["train"]["image"])), "random init, batch norm calibrated"
    out = runs / (f"{world}_{arm}_seed{seed}" if lr is None else f"{world}_{arm}_lr{lr:g}_seed{seed}")
    want = CPFSConfig.from_preset("cpu", loss=arm, out_dir=str(out), **kw)
    if finished_run(want): return load_cpfs(out).backbone.to(dev), f"reused {out.name} (in runs_dir)"
    if not train_missing: return None, f"no finished run {out.name} in runs_dir: skipped"
    t = time.time()
    train(want)
    return load_cpfs(out).backbone.to(dev), f"trained in {time.time() - t:.0f} s"


# %%
if run:
    key = {"version": 5, **{k: cfg[k] for k in ("world", "num_iters", "batch_size", "num_pixels", "image_size", "pool_size", "num_train",
                                                 "num_probe", "num_valid", "num_test", "budgets", "ft_iters", "ceiling_iters",
                                                 "ceiling_lr", "lrs")}}
    rec_path = runs / f"records_{hashlib.md5(json.dumps(key, sort_keys=True).encode()).hexdigest()[:8]}.json"
    records = json.loads(rec_path.read_text()) if rec_path.exists() else []
    t_start = time.time()
    for seed in cfg["seeds"]:
        for arm in cfg["arms"]:
            if any(r["arm"] == arm and r["seed"] == seed for r in records): continue
            t = time.time()
            backbone, note = pretrained_backbone(arm, seed)
            if backbone is None: print(f"seed {seed} {arm}: {note}"); continue
            ev = evaluate_transfer(backbone, frames, 10_000 + seed, cfg["num_probe"], cfg["budgets"], ("cls", "seg"), cfg["lrs"], cfg["ft_iters"])
            rec = dict(arm=arm, seed=seed, eval_seed=10_000 + seed, note=note, **ev,
                       seconds=round(time.time() - t, 1))
            records.append(rec)
            rec_path.parent.mkdir(parents=True, exist_ok=True)
            with atomic_write(rec_path) as tmp: tmp.write_text(json.dumps(records, indent=1))   # complete or the previous file
            print(f"seed {seed} {arm:10s} ({note}): probe conv1..5 "
                  + " ".join(f"{100 * rec['probe'][l]['accuracy']:.1f}" for l in rec["probe"])
                  + " | fine-tune " + " ".join(f"{k} {100 * v['test']:.1f}" for k, v in rec["fine_tune"].items())
                  + f" | {rec['seconds']} s", flush=True)
    print(f"evaluation loop: {time.time() - t_start:.0f} s")

# %% [markdown]
# ## Results
#
# The figure (the saved run's opens the page; a new run draws its own here) shows the orderings the thesis states as paired differences over the seeds with their 95 % CIs (a
# forest plot: right of 0, the first arm transfers better): each CPFS loss against flow classification, each
# pre-training against random initialisation, and the arms at the learning rates chosen on validation frames.
# The table gives every arm's mean ± standard deviation over seeds, in % on the test frames — the linear
# probes' top-1 per layer, the fine-tuned networks' top-1 (cls) and mIoU (seg) with 100 and 1,000 labelled
# frames — with the thesis' number in brackets; the ceiling and the majority class below it.

# %%
if run:
    records = [r for r in records if r["arm"] in cfg["arms"] and r["seed"] in cfg["seeds"]]
    summary = summarize(records)
    results = dict(preset=mode, settings=dict(cfg, eval_seed_offset=10_000), ceiling=ceiling, records=records, summary=summary,
                   fine_tune={arm: {k: v for k, v in s.items() if not k.startswith("probe_")} for arm, s in summary.items()},
                   comparisons=comparisons(records), lr_selection=lr_selection(records),
                   test_counts=torch.bincount(frames["test"]["label"], minlength=3).tolist())
    out_json.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(out_json) as tmp: tmp.write_text(json.dumps(results, indent=1))
    fig = plot_results(results["comparisons"], results["records"])   # this run's figure (the saved run's opens the page)
    fig.savefig(out_json.with_suffix(".png"), dpi=80, bbox_inches="tight")
    plt.show()
else:
    results = saved
display(Markdown(results_table(results["summary"], results["ceiling"])))

# %% [markdown]
# ## Does the ordering hold?
#
# The paired comparisons, one row per ordering and metric (positive differences favour the first arm):

# %%
display(Markdown(comparisons_table(results["comparisons"])))

# %% [markdown]
# ## The pre-training learning rate
#
# The `cpu` preset pre-trains each CPFS loss at Adam's $10^{-4}$ (the thesis' rate, section 3.3.3) and flow
# classification at $10^{-3}$. To see whether the ordering above comes from that choice, the full run also
# pre-trains CPFS-CE and CPFS-KTA at $10^{-3}$ and flow classification at $10^{-4}$ (arms `ce@0.001`,
# `kta@0.001`, `flow_cls@0.0001`: the same 5 seeds and 1,000 steps). Which rate each loss gets is decided on
# the validation frames only: the mean validation score of its four fine-tunings (classification and
# segmentation, 100 and 1,000 labels) over the seeds. The table above compares each such arm with flow
# classification and with its loss's default rate, and then each loss at its chosen rate with flow
# classification at its chosen rate. The choice:

# %%
for loss, sel in results.get("lr_selection", {}).items():
    print(f"{loss}: mean validation score of the fine-tunings " + ", ".join(f"{a} {v:.1f}%" for a, v in sel["valid"].items())
          + f" -> chosen: {sel['chosen']}")

# %% [markdown]
# ## What came out
#
# The full run (`preset="full"`: 5 seeds, 1,000 pre-training steps per arm, 1,000 labelled training frames,
# 300 validation and 500 test frames; about an hour per seed on one shared CPU thread for the six main arms,
# 45 min on two cores for the three arms at other learning rates) is what this notebook shows by default. On the test frames (mean over the 5 seeds, %; cls/seg: fine-tuned on 1,000 labelled
# frames):
#
# | arm | probe conv3 | probe conv5 | cls 1000 | seg mIoU 1000 |
# |---|---|---|---|---|
# | random | 48.2 | 46.8 | 42.4 | 40.3 |
# | flow classification | 56.4 | 51.6 | 60.8 | 53.6 |
# | CPFS-KTA | 49.8 | 49.0 | 49.7 | 44.2 |
# | CPFS-CE | 51.4 | 50.2 | 50.7 | 45.6 |
# | CPFS-CE-rev | 51.1 | 49.1 | 50.0 | 45.5 |
# | supervised (ceiling) | 82.3 | 90.2 | 90.6 | 74.4 |
#
# The ceiling is real (90.6 % against a 33.8 % majority class; 83 % mIoU for the classifier's own
# segmentation), so the benchmark can rank pre-trainings. **Every pre-training beats random initialisation**:
# paired over the 5 seeds, flow classification by +18.4 points of accuracy (95 % CI 5.5 to 31.3) and +13.3 of
# mIoU, CPFS-CE by +8.3 and +5.3, KTA by +7.4 and +3.9, CE-rev by +7.7 and +5.2 (all p < 0.05). But **direct
# flow classification transfers better than every CPFS loss**, the reverse of the thesis' tables 3.1 and
# 3.2: CE − flow classification is −8.0 mIoU (CI −9.6 to −6.3, p = 0.0002) and −5.0 points on the conv3
# probe (p = 0.005); on accuracy after fine-tuning the difference (−10.1) is not decided (CI −23.2 to +2.9).
# Among the CPFS losses CE is ahead of KTA by about one point, as in the thesis, but the differences are small.
#
# **The pre-training learning rate does not explain it.** The `cpu` preset trains CPFS at $10^{-4}$ and flow
# classification at $10^{-3}$, so the run was extended (4 Dec 2026, 45 min on two cores) with CE and KTA at
# $10^{-3}$ and flow classification at $10^{-4}$, 5 seeds each, and each loss's rate chosen on the validation
# frames (section above): $10^{-3}$ for all three (mean validation score of the fine-tunings: CE 47.2 vs 44.8,
# KTA 49.3 vs 43.6, flow classification 52.7 vs 45.7). At the faster rate the CPFS losses transfer better
# (CE: +2.3 mIoU, CI 1.8 to 2.8; KTA: +6.0, CI 4.2 to 7.8; segmentation mIoU 47.9 and 50.2), but flow
# classification at its own chosen rate stays ahead: CE − flow classification −5.6 mIoU (CI −6.9 to −4.3,
# p = 0.0003) and −2.9 on the conv3 probe (p = 0.014); KTA − flow classification −3.3 mIoU (CI −5.1 to −1.6,
# p = 0.006); accuracy after fine-tuning on 1,000 frames is again undecided (−9.5 and −8.8, CIs spanning 0).
# Only when both train at the slow $10^{-4}$ does the gap close (CE − flow classification at $10^{-4}$: −0.7 mIoU,
# CI −2.3 to +1.0, not resolved) — a rate that validation rejects for both. So in this world, at this budget
# (1,000 steps of a quarter-width AlexNet), the thesis' ordering *CPFS > flow classification* is reversed
# whichever of the two rates each method gets; what remains untested here is the thesis' scale (1.6M video
# frames, the full-width network), which needs a GPU.
#
# **Does this world carry the premise of the claim?** Hardly. The thesis argues for CPFS because the flow of a
# single frame is ambiguous — objects that can move often don't, the camera moves too. In `objects` the one
# object always moves and the camera barely does: chapter 02a's manipulation statistics (its table is computed
# by the renderer's own cell) find no frame whose object moves by under 1 px against the background, and the
# flow's magnitude alone tells the object from the background, so direct flow classification is handed a
# clean figure/ground target. The verdict above therefore describes a world without motion ambiguity, at this
# budget. Chapter `03_cpfs_ambiguity` tests the claim where its premise holds: five worlds — still objects, a
# camera panning as fast as the objects move, three objects, and all of these at once, beside `objects` — their
# ambiguity measured, each method's learning rate and σ² chosen on validation frames, 5 seeds per arm (202 runs).
# Its answer, with the numbers, opens that chapter (generated from `nbs/03_cpfs_ambiguity_results.json`). The
# ordering follows the premise. Where the flow's magnitude no longer tells the object from the background —
# `objects_camera` and `objects_ambiguous`, in which figure/ground explains 1.9 % and 0.7 % of the flow-class
# entropy — both CPFS losses segment better than flow classification after fine-tuning, as the thesis claims
# (CE − flow classification +7.7 and +4.7 mIoU, KTA − flow classification +10.3 and +5.0, each Holm p < 0.05),
# and there flow classification itself transfers no better than random initialisation (flow classification −
# random −0.6 and −0.1 mIoU, not resolved);
# with still objects and a moving camera (`objects_static`) CE is ahead by +5.2, not resolved after Holm's
# correction; where figure/ground explains most (`objects`, `objects_k3`: 7.9 % and 9.8 %) the ordering is undecided
# or reversed (KTA −5.9 in `objects`). Across the five worlds, CE − flow classification on segmentation falls by
# 0.91 points per 0.01 of the figure/ground share (CI −1.80 to −0.03, p = 0.046; KTA −1.32, p = 0.085). The conv3
# probe resolves no difference in any world, and in a 5,000-step check (2 seeds, in `objects` and
# `objects_ambiguous`) both worlds keep the sign of their segmentation difference. What remains untested is the
# thesis' scale (1.6M video frames, the full-width network), which needs a GPU.
#
# The earlier version of this experiment (on the
# `shapes` scenes, 100 steps per arm, 3 seeds) could not decide the claim: its labelled task was not
# learnable (a supervised network scored 48.7% against a 48.3% prior), which is why the world, the budget
# and the statistics changed.
