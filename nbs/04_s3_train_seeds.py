# %% [markdown]
# # S3-CNN over seeds (papermill experiment)
#
# > Chapter 4's targets measured as an experiment should be: several seeds per setting, presets chosen on validation frames, numbers reported on test frames nobody tuned on.

# %% [markdown]
# *Default run: **5 s** on 2 CPU cores with the default parameters (measured by `make book` on 4 Dec 2026, reusing the training and caches that earlier runs left in the runs folder, `core.runs_dir`; where a first run on a new machine takes longer, the chapter says so).*

# %% [markdown]
# `04_s3_train.ipynb` trains one network and shows it. This notebook asks whether its targets hold
# beyond one run: for each setting — `single_cube` + affine (the cube's faces, target matched mIoU ≥ 0.7),
# `multi_cube` + rigid (the objects, ≥ 0.5) and `multi_cube` + entropy (the objects, no target) — it
# trains the `cpu` preset of `04_s3_train` with several seeds and scores each network on two sets of
# held-out frames:
#
# - **validation frames** (seed + 2,000,003): the frames on which the `cpu` preset was chosen
#   (`04_s3_train`'s "How the preset was found") and which its figures show;
# - **test frames** (seed + 3,000,003): rendered for this evaluation, never looked at while tuning.
#
# The targets are judged on the test frames, averaged over the seeds. Each run goes to
# `{runs_dir}/{data}_{loss}_seed{seed}` (checkpoints, so a killed run resumes) and its record is appended
# to the results file as soon as it finishes.
#
# ```bash
# papermill nbs/04_s3_train_seeds.ipynb _runs/04_s3_train_seeds.ipynb -p preset full   # the real run (hours on 2 cores)
# papermill nbs/04_s3_train_seeds.ipynb _runs/tiny.ipynb -p preset tiny          # a smoke run
# ```
#
# The default, `preset="saved"`, shows the saved results (`nbs/04_s3_train_results.json`) and runs the tiny
# version when they are missing.

# %% tags=["parameters"]
preset = "saved"      # "saved" (show the saved results; "tiny" when missing), "tiny" (a smoke run), "full" (the real run)
seeds = None          # training seeds (None: the preset's; full: [0, 1, 2])
configs = None        # comma-separated "data+loss" settings (None: single_cube+affine, multi_cube+rigid, multi_cube+entropy)
device = None         # "cpu", "cuda", ...; None: CUDA if present, else MPS, else the CPU
num_threads = None    # torch CPU threads (None: torch's default)
runs_dir = None  # one run per setting and seed; None: _runs/s3_seeds (full) or _runs/s3_seeds_tiny (`core.runs_dir`)
results_path = None   # None: nbs/04_s3_train_results.json for "full", {runs_dir}/results.json otherwise

# %%
from motion_nbs.core import reject_unknown_parameters

# %%
reject_unknown_parameters()  # a -p name this notebook does not define stops the run here, listing the valid ones

# %%
from motion_nbs.core import check_choice, check_int, resolve_device
from motion_nbs.s3 import S3_DATA, S3_LOSSES

# %%
PRESETS = {"tiny": dict(seeds=[0], overrides=dict(num_iters=2, batch_size=2, image_size=32, pool_size=4, num_valid=2)),
           "full": dict(seeds=[0, 1, 2], overrides={})}
CONFIGS = ("single_cube+affine", "multi_cube+rigid", "multi_cube+entropy")
TARGETS = {"single_cube+affine": 0.7, "multi_cube+rigid": 0.5}   # matched mIoU on test frames, mean over seeds

check_choice("preset", preset, ("saved", *PRESETS))
chosen = list(CONFIGS) if configs is None else [c.strip() for c in str(configs).split(",") if c.strip()]
bad = [c for c in chosen if c.count("+") != 1 or c.split("+")[0] not in S3_DATA or c.split("+")[1] not in S3_LOSSES]
if bad or not chosen:
    raise ValueError(f"configs={configs!r}: bad {bad}; expected 'data+loss' with data in {', '.join(S3_DATA)} and loss in {', '.join(S3_LOSSES)}")
if seeds is not None and (not isinstance(seeds, (list, tuple)) or not seeds or not all(isinstance(s, int) and s >= 0 for s in seeds)):
    raise ValueError(f"seeds={seeds!r}; expected a non-empty list of non-negative ints or None (the preset's)")
if num_threads is not None: check_int("num_threads", num_threads, 1)
dev = resolve_device(device)

# %%
import json
import time
from pathlib import Path
import torch
from IPython.display import Image, Markdown, display
from motion_nbs import core
from motion_nbs.core import atomic_write

# %%
ROOT = core.repo_root() or Path.cwd()   # the checkout (the saved results live in its nbs/)
SAVED = ROOT / "nbs" / "04_s3_train_results.json"
run = preset != "saved" or not SAVED.exists()
mode = ("tiny" if preset == "saved" else preset) if run else "saved"
if run:
    use_seeds = list(seeds or PRESETS[mode]["seeds"])
    runs = Path(runs_dir) if runs_dir else core.runs_dir("s3_seeds" if mode == "full" else f"s3_seeds_{mode}")   # presets never share runs
    out_json = Path(results_path) if results_path else (SAVED if mode == "full" else runs / "results.json")
    if num_threads: torch.set_num_threads(num_threads)
    print(mode, chosen, use_seeds, "->", out_json)
else: print(f"showing the saved results: {SAVED}")

# %% [markdown]
# ## Runs
#
# One `S3Config` per setting and seed (the `cpu` preset, as `04_s3_train` runs it), trained by
# `motion_nbs.s3.train`. A record holds the setting, the seed, the matched mIoU on the validation and the
# test frames with the grid baseline on each, the steps, the training time and the settings that matter
# (the config without its runtime fields). A finished record is kept; a run whose record is missing is
# trained, or resumed from its checkpoints.

# %%
from motion_nbs.s3 import S3Config, train


# %%
def s3_record(setting: str, seed: int, overrides: dict) -> dict:
    "Train (or resume) one setting and seed and return its record."
    data, loss = setting.split("+")
    config = S3Config.from_preset("cpu", data=data, loss=loss, seed=seed, out_dir=str(runs / f"{data}_{loss}_seed{seed}"),
                                  progress=False, device=str(dev), **overrides)
    t = time.time()
    res = train(config)
    keep = ("valid_miou", "valid_miou_grid", "test_miou", "test_miou_grid", "test_num_frames", "steps")
    return dict(setting=setting, data=data, loss=loss, seed=seed, **{k: res[k] for k in keep}, seconds=round(time.time() - t, 1),
                settings={k: v for k, v in config.to_dict().items() if k not in S3Config.RUNTIME})

if run:
    records = json.loads(out_json.read_text())["runs"] if out_json.exists() else []
    for seed in use_seeds:
        for setting in chosen:
            if any(r["setting"] == setting and r["seed"] == seed for r in records): continue
            rec = s3_record(setting, seed, PRESETS[mode]["overrides"])
            records.append(rec)
            out_json.parent.mkdir(parents=True, exist_ok=True)
            with atomic_write(out_json) as tmp: tmp.write_text(json.dumps({"preset": mode, "runs": records}, indent=1))
            print(f"{setting} seed {seed}: test mIoU {rec['test_miou']:.3f} (grid {rec['test_miou_grid']:.3f}), "
                  f"validation {rec['valid_miou']:.3f}; {rec['steps']} steps, {rec['seconds'] / 60:.1f} min", flush=True)

# %% [markdown]
# ## Results
#
# Matched mIoU (mean ± standard deviation over seeds) on the test and the validation frames, the fixed-grid
# baseline on the test frames, and whether the mean on the test frames meets chapter 4's target.

# %%
import matplotlib.pyplot as plt


# %%
def summarize(records: list) -> dict:
    "Per setting: seeds, mean and standard deviation of the test and validation mIoU, the grid's, the target and whether it is met."
    out = {}
    for setting in dict.fromkeys(r["setting"] for r in records):
        rs = [r for r in records if r["setting"] == setting]
        stat = lambda k: (float(torch.tensor([r[k] for r in rs]).mean()), float(torch.tensor([r[k] for r in rs]).std()) if len(rs) > 1 else 0.0)
        out[setting] = dict(seeds=[r["seed"] for r in rs], test=stat("test_miou"), valid=stat("valid_miou"), grid=stat("test_miou_grid"),
                            target=TARGETS.get(setting))
        out[setting]["met"] = None if out[setting]["target"] is None else out[setting]["test"][0] >= out[setting]["target"]
    return out

def summary_table(summary: dict) -> str:
    lines = ["| setting | seeds | test mIoU | validation mIoU | grid (test) | target | met |", "|---|---|---|---|---|---|---|"]
    f = lambda m: f"{m[0]:.3f} ± {m[1]:.3f}"
    for s, v in summary.items():
        target = "—" if v["target"] is None else f"≥ {v['target']}"
        met = "—" if v["met"] is None else ("yes" if v["met"] else "no")
        lines.append(f"| {s} | {len(v['seeds'])} | {f(v['test'])} | {f(v['valid'])} | {f(v['grid'])} | {target} | {met} |")
    return "\n".join(lines)

def plot_seeds(records: list):
    "Test mIoU of every run (dots) and its grid baseline (crosses), one column per setting."
    settings = list(dict.fromkeys(r["setting"] for r in records))
    fig, ax = plt.subplots(figsize=(1.8 + 1.6 * len(settings), 3))
    for i, s in enumerate(settings):
        rs = [r for r in records if r["setting"] == s]
        ax.plot([i] * len(rs), [r["test_miou"] for r in rs], "o", color="C0", label="S3-CNN (test)" if i == 0 else None)
        ax.plot([i + 0.15] * len(rs), [r["test_miou_grid"] for r in rs], "x", color="C7", label="grid (test)" if i == 0 else None)
        if s in TARGETS: ax.hlines(TARGETS[s], i - 0.3, i + 0.3, colors="C3", linestyles="--", label="target" if i == 0 else None)
    ax.set_xticks(range(len(settings)), settings); ax.set_ylabel("matched mIoU"); ax.set_ylim(0, 1); ax.legend(fontsize=8)
    fig.tight_layout()
    return fig

if run:
    results = dict(preset=mode, settings=dict(seeds=use_seeds, configs=chosen, preset_of_each_run="cpu", **PRESETS[mode]["overrides"]),
                   runs=records, summary=summarize(records))
    with atomic_write(out_json) as tmp: tmp.write_text(json.dumps(results, indent=1))
    fig = plot_seeds(records)
    fig.savefig(out_json.with_suffix(".png"), dpi=80, bbox_inches="tight")
else:
    results = json.loads(SAVED.read_text())
    display(Image(str(SAVED.with_suffix(".png"))))
display(Markdown(summary_table(results["summary"])))

# %% [markdown]
# ## What came out
#
# The `full` run (3 seeds × 3 settings of the `cpu` preset; 4 h 21 min of training in all on one shared CPU
# thread, 14–68 min a run), matched mIoU on 32 test frames per seed:
#
# - **single_cube + affine: 0.655 ± 0.128** (seeds 0.705, 0.510, 0.749; validation 0.672 ± 0.115) against a
#   grid's 0.179. The target (≥ 0.7) is met by two seeds of three, not on average: seed 1 settles on a worse
#   segmentation (validation 0.539 as well, so nothing here was chosen on the test frames).
# - **multi_cube + rigid: 0.511 ± 0.150** (0.341, 0.620, 0.574; validation 0.505) against 0.232: the target
#   (≥ 0.5) is met on average, narrowly and with one seed far below it.
# - **multi_cube + entropy: 0.354 ± 0.131** (0.359, 0.220, 0.481) against 0.232 — one seed below the grid.
#
# The spread over seeds (0.13–0.15) is as large as the margins to the targets: a single run of
# `04_s3_train` can land on either side of them, and the book's earlier one-seed numbers (0.705 for the cube,
# 0.341 for rigid) were one draw each. Validation and test agree to within 0.02 on every setting, so the
# preset was not fitted to its validation frames. On the objects, the rigid 8-point loss does better than
# the entropy loss, but with three seeds the difference (0.16) is about one standard deviation.
