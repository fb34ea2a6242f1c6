# %% [markdown]
# # S3-CNN over seeds (papermill experiment)
#
# > Chapter 4's targets measured as an experiment should be: several seeds per setting, presets chosen on validation frames, numbers reported on test frames nobody tuned on.

# %% [markdown]
# *Default run: **11 s** on 2 CPU cores with the default parameters (measured by `make book` on 7 Dec 2026, reusing the training and caches that earlier runs left in the runs folder, `core.runs_dir`; where a first run on a new machine takes longer, the chapter says so).*

# %% [markdown]
# **The question**: do chapter 4's targets hold beyond one run — matched mIoU ≥ 0.7 on the cube's faces with
# the affine loss, ≥ 0.5 on the objects with the rigid loss — and does S3-CNN beat the segmentations a
# reviewer would try first? **The answer**, from the saved runs (`nbs/04_s3_train_results.json`): the figure
# shows every run's test mIoU beside the baselines on the same frames, and the lines under it say what came out.

# %%
#| code-fold: true
import json
import time
from pathlib import Path

import matplotlib.pyplot as plt
import torch
from IPython.display import Markdown, display

from motion_nbs import core
from motion_nbs.core import atomic_write

# %%
#| code-fold: true
ROOT = core.repo_root() or Path.cwd()   # the checkout (the saved results live in its nbs/)
TARGETS = {"single_cube+affine": 0.7, "multi_cube+rigid": 0.5}   # matched mIoU on test frames, mean over seeds
INIT_RESULTS = {"zero": ROOT / "nbs" / "04_s3_train_results_zero.json", "normal": ROOT / "nbs" / "04_s3_train_results.json"}   # saved runs per score-layer init

def mean_ci95(values) -> list:
    "The t-interval (95 %) of the mean of `values` (`paired_comparison` against zero; the mean twice for a single value)."
    from motion_nbs.transfer import paired_comparison
    return paired_comparison(values, [0.0] * len(values))["ci95"] if len(values) > 1 else [float(values[0])] * 2

def summarize(records: list) -> dict:
    "Per setting: seeds, mean and standard deviation of the test and validation mIoU (and the test mean's 95 % CI), the grid's, the target and whether it is met."
    out = {}
    for setting in dict.fromkeys(r["setting"] for r in records):
        rs = [r for r in records if r["setting"] == setting]
        stat = lambda k: (float(torch.tensor([r[k] for r in rs]).mean()), float(torch.tensor([r[k] for r in rs]).std()) if len(rs) > 1 else 0.0)
        out[setting] = dict(seeds=[r["seed"] for r in rs], test=stat("test_miou"), test_ci95=mean_ci95([r["test_miou"] for r in rs]),
                            valid=stat("valid_miou"), grid=stat("test_miou_grid"), target=TARGETS.get(setting))
        out[setting]["met"] = None if out[setting]["target"] is None else out[setting]["test"][0] >= out[setting]["target"]
    return out

_s = summarize([dict(setting="a+b", seed=i, test_miou=m, valid_miou=m, test_miou_grid=0.1) for i, m in enumerate((0.5, 0.7, 0.6))])["a+b"]
assert abs(_s["test_ci95"][1] - 0.6 - 4.302652729911275 * 0.1 / 3 ** 0.5) < 1e-9 and _s["met"] is None   # t(0.975, 2) = 4.3027

BASELINE_LABELS = {"colour_kmeans": "colour k-means", "object_oracle": "object oracle", "flow_kmeans": "flow k-means", "grid": "grid"}
BASELINE_STYLE = {"colour_kmeans": ("s", "C1"), "object_oracle": ("^", "C2"), "flow_kmeans": ("v", "C4"), "grid": ("x", "C7")}

def baseline_of(baselines: list, data: str, name: str) -> dict:
    return next(b for b in baselines if b["data"] == data and b["name"] == name)

def summary_table(summary: dict, baselines: list) -> str:
    "Per setting: S3 on test and validation frames, every baseline on the same test frames (mean ± SD over seeds), the target."
    names = [n for n in BASELINE_LABELS if any(b["name"] == n for b in baselines)]
    lines = ["| setting | seeds | test mIoU (mean ± SD) | 95 % CI | validation mIoU | " + " | ".join(f"{BASELINE_LABELS[n]} (test)" for n in names)
             + " | target | met |", "|---|---|---|---|---|" + "---|" * len(names) + "---|---|"]
    f = lambda m: f"{m[0]:.3f} ± {m[1]:.3f}"
    sd = lambda v: float(torch.tensor(v).std()) if len(v) > 1 else 0.0
    for s, v in summary.items():
        target = "—" if v["target"] is None else f"≥ {v['target']}"
        met = "—" if v["met"] is None else ("yes" if v["met"] else "no")
        cells = []
        for n in names:
            b = baseline_of(baselines, s.split("+")[0], n)
            vals = [b["test_miou_seeds"][b["seeds"].index(seed)] for seed in v["seeds"]]
            cells.append(f(((sum(vals) / len(vals)), sd(vals))))
        ci = "—" if "test_ci95" not in v else f"[{v['test_ci95'][0]:.3f}, {v['test_ci95'][1]:.3f}]"
        lines.append(f"| {s} | {len(v['seeds'])} | {f(v['test'])} | {ci} | {f(v['valid'])} | " + " | ".join(cells) + f" | {target} | {met} |")
    return "\n".join(lines)

def runs_table(records: list, baselines: list) -> str:
    "Every run: test and validation mIoU, colour k-means on the same seed's test frames, the final training loss, the steps."
    lines = ["| setting | seed | test mIoU | validation mIoU | colour k-means (test) | final training loss | steps |", "|---|---|---|---|---|---|---|"]
    for r in sorted(records, key=lambda r: (r["setting"], r["seed"])):
        b = baseline_of(baselines, r["data"], "colour_kmeans")
        loss = "—" if r.get("final_loss") is None else f"{r['final_loss']:.4g}"
        lines.append(f"| {r['setting']} | {r['seed']} | {r['test_miou']:.3f} | {r['valid_miou']:.3f} | "
                     f"{b['test_miou_seeds'][b['seeds'].index(r['seed'])]:.3f} | {loss} | {r['steps']} |")
    return "\n".join(lines)

def comparison_table(comparisons: list) -> str:
    """S3 − baseline per setting: mean difference, 95% CI, p, Holm-adjusted p, what it was paired over, verdict; and where the
    runs kept per-frame scores, the same over the seeds' means (does the method win whatever the seed?)."""
    lvl = any("seed_level" in c for c in comparisons)
    lines = ["| setting | baseline | S3 − baseline | 95 % CI | p | p (Holm) | paired over | verdict |" + (" over seeds: 95 % CI | p (Holm) | verdict |" if lvl else ""),
             "|---|---|---|---|---|---|---|---|" + ("---|---|---|" if lvl else "")]
    for c in comparisons:
        row = (f"| {c['setting']} | {BASELINE_LABELS[c['baseline']]} | {c['difference']:+.3f} | [{c['ci95'][0]:+.3f}, {c['ci95'][1]:+.3f}] | "
               f"{c['p']:.3g} | {c['p_holm']:.3g} | {c['n']} {c['paired_over']} | {c['verdict']} |")
        if lvl:
            sl = c.get("seed_level")
            row += " — | — | — |" if sl is None else f" [{sl['ci95'][0]:+.3f}, {sl['ci95'][1]:+.3f}] | {sl['p_holm']:.3g} | {sl['verdict']} |"
        lines.append(row)
    return "\n".join(lines)

def plot_seeds(records: list, baselines: list):
    "Test mIoU of every run (dots) and of every baseline on the same seed's test frames (markers), one column per setting."
    settings = list(dict.fromkeys(r["setting"] for r in records))
    names = [n for n in BASELINE_LABELS if any(b["name"] == n for b in baselines)]
    fig, ax = plt.subplots(figsize=(2.5 + 2.2 * len(settings), 3.4))
    for i, s in enumerate(settings):
        rs = [r for r in records if r["setting"] == s]
        ax.plot([i - 0.3] * len(rs), [r["test_miou"] for r in rs], "o", color="C0", label="S3-CNN" if i == 0 else None)
        for j, n in enumerate(names):
            b = baseline_of(baselines, rs[0]["data"], n)
            marker, colour = BASELINE_STYLE[n]
            ax.plot([i - 0.1 + 0.15 * j] * len(rs), [b["test_miou_seeds"][b["seeds"].index(r["seed"])] for r in rs], marker, color=colour,
                    mfc="none", label=BASELINE_LABELS[n] if i == 0 else None)
        if s in TARGETS: ax.hlines(TARGETS[s], i - 0.4, i + 0.4, colors="C3", linestyles="--", label="target" if i == 0 else None)
    ax.set_xticks(range(len(settings)), settings); ax.set_ylabel("matched mIoU (test frames)"); ax.set_ylim(0, 1)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5))
    fig.tight_layout()
    return fig

def answer_lines(results: dict) -> str:
    "Per setting: the test mIoU over seeds against its target, and the comparisons with each baseline (Holm-corrected)."
    out = []
    for s, v in summarize(results["runs"]).items():
        target = "" if v["target"] is None else f"; target ≥ {v['target']}: **{'met' if v['met'] else 'not met'}** on average"
        comps = [c for c in results.get("comparisons", []) if c["setting"] == s]
        vs = "; ".join(f"{BASELINE_LABELS[c['baseline']]} {c['difference']:+.3f} (Holm p = {c['p_holm']:.2g}, {c['verdict']})" for c in comps)
        out.append(f"- **{s}**: test mIoU {v['test'][0]:.3f} ± {v['test'][1]:.3f} (95 % CI {v['test_ci95'][0]:.3f} to {v['test_ci95'][1]:.3f}) "
                   f"over {len(v['seeds'])} seeds{target}"
                   + (f". S3 − baseline: {vs}" if vs else ""))
    return "\n".join(out)


# %%
#| echo: false
_saved_path = INIT_RESULTS["normal"]
saved = json.loads(_saved_path.read_text()) if _saved_path.exists() else None
if saved and "baselines" in saved:
    plot_seeds(saved["runs"], saved["baselines"]); plt.show()
    display(Markdown(answer_lines(saved)))
else: print(f"no saved results with baselines yet ({_saved_path}): run the full preset")

# %% [markdown]
# ## The design
#
# `04_s3_train.ipynb` trains one network and shows it. This notebook asks whether its targets hold
# beyond one run: for each setting — `single_cube` + affine (the cube's faces, target matched mIoU ≥ 0.7),
# `multi_cube` + rigid (the objects, ≥ 0.5) and `multi_cube` + entropy (the objects, no target) — it
# trains the `cpu` preset of `04_s3_train` with ten seeds, its score layers drawn from $\mathcal N(0, 10^{-6})$
# (`score_init="normal"`, below: "Seeds and the saddle"), and scores each network on two sets of held-out frames:
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
# papermill nbs/04_s3_train_seeds.ipynb _runs/04_s3_train_seeds.ipynb -p preset full   # the real run: 10 seeds x 3 settings (about 19 h of one CPU thread)
# papermill nbs/04_s3_train_seeds.ipynb _runs/tiny.ipynb -p preset tiny          # a smoke run
# papermill nbs/04_s3_train_seeds.ipynb _runs/zero.ipynb -p preset full -p score_init zero -p seeds "[0, 1, 2]"   # FCN's zero score layers (the thesis), saved apart
# # two workers sharing the runs (one per core), each with the same parameters:
# papermill nbs/04_s3_train_seeds.ipynb _runs/w1.ipynb -p preset full -p num_threads 1 & papermill nbs/04_s3_train_seeds.ipynb _runs/w2.ipynb -p preset full -p num_threads 1 &
# ```
#
# The default, `preset="saved"`, shows the saved results (`nbs/04_s3_train_results.json`) and runs the tiny
# version when they are missing.

# %% tags=["parameters"]
preset = "saved"      # "saved" (show the saved results; "tiny" when missing), "tiny" (a smoke run), "full" (the real run)
seeds = None          # training seeds (None: the preset's; full: 0-9)
configs = None        # comma-separated "data+loss" settings (None: single_cube+affine, multi_cube+rigid, multi_cube+entropy)
device = None         # "cpu", "cuda", ...; None: CUDA if present, else MPS, else the CPU
num_threads = None    # torch CPU threads (None: torch's default)
score_init = "normal"  # score layers: "normal" (N(0, 1e-3²): breaks the symmetric saddle, `04_s3`) or "zero" (FCN's, the thesis)
runs_dir = None  # one run per setting and seed; None: _runs/s3_seeds (full) or _runs/s3_seeds_tiny (`core.runs_dir`), "_normal" appended for score_init="normal"
results_path = None   # None: nbs/04_s3_train_results.json for "full" (04_s3_train_results_zero.json for score_init="zero"), {runs_dir}/results.json otherwise
twins = False         # train the rounding twins (each seed and init twice, on 1 and on 2 CPU threads) into nbs/04_s3_train_twins.json; False: show the saved ones

# %%
from motion_nbs.core import reject_unknown_parameters

# %%
reject_unknown_parameters()  # a -p name this notebook does not define stops the run here, listing the valid ones

# %%
#| code-fold: true
from motion_nbs.core import check_choice, check_int, resolve_device
from motion_nbs.s3 import S3_DATA, S3_LOSSES

# %%
#| code-fold: true
PRESETS = {"tiny": dict(seeds=[0], overrides=dict(num_iters=2, batch_size=2, image_size=32, pool_size=4, num_valid=2)),
           "full": dict(seeds=list(range(10)), overrides={})}
CONFIGS = ("single_cube+affine", "multi_cube+rigid", "multi_cube+entropy")

check_choice("preset", preset, ("saved", *PRESETS)); check_choice("score_init", score_init, ("zero", "normal"))
chosen = list(CONFIGS) if configs is None else [c.strip() for c in str(configs).split(",") if c.strip()]
bad = [c for c in chosen if c.count("+") != 1 or c.split("+")[0] not in S3_DATA or c.split("+")[1] not in S3_LOSSES]
if bad or not chosen:
    raise ValueError(f"configs={configs!r}: bad {bad}; expected 'data+loss' with data in {', '.join(S3_DATA)} and loss in {', '.join(S3_LOSSES)}")
if isinstance(seeds, str):   # `-p seeds "[0, 1, 2]"` reaches the notebook as text
    try: seeds = json.loads(seeds)
    except json.JSONDecodeError: raise ValueError(f"seeds={seeds!r}; expected a JSON list of seeds such as \"[0, 1, 2]\"") from None
if seeds is not None and (not isinstance(seeds, (list, tuple)) or not seeds or not all(isinstance(s, int) and s >= 0 for s in seeds)):
    raise ValueError(f"seeds={seeds!r}; expected a non-empty list of non-negative ints or None (the preset's)")
if num_threads is not None: check_int("num_threads", num_threads, 1)
dev = resolve_device(device)

# %%
SAVED = INIT_RESULTS[score_init]
run = preset != "saved" or not SAVED.exists()
mode = ("tiny" if preset == "saved" else preset) if run else "saved"
if run:
    use_seeds = list(seeds or PRESETS[mode]["seeds"])
    init_tag = "" if score_init == "zero" else f"_{score_init}"
    runs = Path(runs_dir) if runs_dir else core.runs_dir(("s3_seeds" if mode == "full" else f"s3_seeds_{mode}") + init_tag)   # presets and inits never share runs
    out_json = Path(results_path) if results_path else (SAVED if mode == "full" else runs / "results.json")
    if num_threads: torch.set_num_threads(num_threads)
    print(mode, chosen, use_seeds, "->", out_json)
else: print(f"showing the saved results: {SAVED}")

# %% [markdown]
# ## Runs
#
# One `S3Config` per setting and seed (the `cpu` preset, as `04_s3_train` runs it), trained by
# `motion_nbs.s3.train`. A record holds the setting, the seed, the matched mIoU on the validation and the
# test frames with the grid baseline on each, the test mIoU of every frame (`test_miou_frames`), the final
# training loss (`final_loss`: the mean of its last 10 logged values), the steps, the training time and the
# settings that matter (the config without its runtime fields). The saved zero-init runs
# (`04_s3_train_results_zero.json`) predate the last two fields; their records lack them. A finished record is
# kept; a run whose record is missing is trained, or resumed from its checkpoints.
#
# Several workers on one machine can share the runs (`core.RunClaims`; give them the same `seeds`): each takes the
# next (seed, setting) that is neither recorded nor claimed by another live worker, and merges its record into the
# results file under a lock. A worker with nothing left to start waits for the others' runs, so that every worker's
# results below are computed on all the runs.

# %%
from motion_nbs.s3 import S3Config, train


# %%
def s3_record(setting: str, seed: int, overrides: dict) -> dict:
    "Train (or resume) one setting and seed and return its record."
    data, loss = setting.split("+")
    config = S3Config.from_preset("cpu", data=data, loss=loss, seed=seed, out_dir=str(runs / f"{data}_{loss}_seed{seed}"),
                                  progress=False, device=str(dev), score_init=score_init, **overrides)
    t = time.time()
    res = train(config)
    keep = ("valid_miou", "valid_miou_grid", "test_miou", "test_miou_grid", "test_num_frames", "steps")
    return dict(setting=setting, data=data, loss=loss, seed=seed, **{k: res[k] for k in keep}, seconds=round(time.time() - t, 1),
                test_miou_frames=res["test_miou_frames"], final_loss=res["final_loss"],   # per-frame scores: comparisons pair over frames
                settings={k: v for k, v in config.to_dict().items() if k not in S3Config.RUNTIME})

from motion_nbs.core import RunClaims

def saved_runs() -> list: return json.loads(out_json.read_text())["runs"] if out_json.exists() else []

if run:
    out_json.parent.mkdir(parents=True, exist_ok=True)
    claims, todo = RunClaims(runs / "claims"), [(seed, setting) for seed in use_seeds for setting in chosen]
    def pick(busy):
        done = {(r["seed"], r["setting"]) for r in saved_runs()}
        return next((k for k in todo if k not in done and k not in busy), None)
    for seed, setting in claims.take(pick, poll=10):
        rec = s3_record(setting, seed, PRESETS[mode]["overrides"])
        with claims.lock():   # merge: other workers' records are kept
            records = sorted([r for r in saved_runs() if (r["seed"], r["setting"]) != (seed, setting)] + [rec],   # seed-major, as one worker writes them
                             key=lambda r: (r["seed"], chosen.index(r["setting"]) if r["setting"] in chosen else len(chosen)))
            with atomic_write(out_json) as tmp: tmp.write_text(json.dumps({"preset": mode, "runs": records}, indent=1))
        print(f"{setting} seed {seed}: test mIoU {rec['test_miou']:.3f} (grid {rec['test_miou_grid']:.3f}), "
              f"validation {rec['valid_miou']:.3f}; {rec['steps']} steps, {rec['seconds'] / 60:.1f} min", flush=True)
    records = saved_runs()   # every worker's

# %% [markdown]
# ## Results
#
# Matched mIoU (mean ± standard deviation over seeds) on the test and the validation frames, the fixed-grid
# baseline on the test frames, and whether the mean on the test frames meets chapter 4's target.

# %%
if run:
    results = dict(preset=mode, settings=dict(seeds=use_seeds, configs=chosen, preset_of_each_run="cpu", score_init=score_init,
                                              **PRESETS[mode]["overrides"]),
                   runs=records, summary=summarize(records))
    with atomic_write(out_json) as tmp: tmp.write_text(json.dumps(results, indent=1))
else:
    out_json, results = SAVED, json.loads(SAVED.read_text())

# %% [markdown]
# ## Baselines on the same test frames
#
# The grid ignores the image; `04_s3`'s baselines are the ones a segmentation reviewer would try first:
# colour k-means (CIE Lab, $L = 5$, seeded by the run's seed), k-means on the true flow (what grouping the
# flow itself gives — a reference from above, since the network never sees flow), the object/background
# oracle (two segments from the ground truth) and the grid. Each is scored on exactly the frames a run was
# scored on (`baseline_scores`: `heldout_frames` of the run's data, seed, size and $L$; the grid's mean
# reproduces every record's `test_miou_grid`, checked below). `baseline_comparisons` sets each run beside
# each baseline of its data: paired over test frames when the runs kept per-frame scores, otherwise over
# seeds (the saved zero-init runs: 3 seeds, so a t-test with 2 degrees of freedom), Holm-corrected over the
# family. A run computes them after training; showing the saved results computes them once when the saved
# file lacks them (about a minute on a shared core) and saves them into it. Below the figure: the summary
# per setting, the comparisons, and every run with its final training loss (the mean of its last 10 logged
# values; "—" for the zero-init runs, which predate it), so that a low mIoU can be told apart as an optimisation
# failure (a high final loss) or an objective that does not match the task (a low one).

# %%
from motion_nbs.s3 import S3_BASELINES, baseline_comparisons, baseline_scores


# %%
def compute_baselines(records: list) -> list:
    "Per data of the runs, every baseline's test mIoU on each run seed's test frames: per frame, per seed and the mean."
    out = []
    for data in dict.fromkeys(r["data"] for r in records):
        rs = [r for r in records if r["data"] == data]
        if len({(r["settings"]["image_size"], r["settings"]["num_segments"], r["test_num_frames"]) for r in rs}) != 1:
            raise ValueError(f"the {data} runs differ in image size, segments or test frames; baselines need one set of frames per seed")
        size, L, n = rs[0]["settings"]["image_size"], rs[0]["settings"]["num_segments"], rs[0]["test_num_frames"]
        seeds = sorted({r["seed"] for r in rs})
        per_seed = {s: baseline_scores(data, s, "test", n, size, L) for s in seeds}
        for name in S3_BASELINES:
            frames = [[round(v, 6) for v in per_seed[s][name]] for s in seeds]
            means = [sum(f) / len(f) for f in frames]
            out.append(dict(name=name, data=data, test_miou=sum(means) / len(means), seeds=seeds, test_miou_seeds=means,
                            test_miou_frames=frames, num_segments=L, image_size=size, num_frames=n))
        grid = baseline_of(out, data, "grid")
        for r in rs:   # the same frames as the runs: the grid scores exactly what `train` recorded
            assert abs(grid["test_miou_seeds"][seeds.index(r["seed"])] - r["test_miou_grid"]) < 1e-5, (r["setting"], r["seed"])
    return out

new_baselines = run or "baselines" not in results or not (
    {(r["data"], r["seed"]) for r in results["runs"]} <= {(b["data"], s) for b in results["baselines"] for s in b["seeds"]})
if new_baselines:
    t = time.time()
    results["baselines"] = compute_baselines(results["runs"])
    results["comparisons"] = baseline_comparisons(results["runs"], results["baselines"])
    with atomic_write(out_json) as tmp: tmp.write_text(json.dumps(results, indent=1))
    print(f"baselines computed in {time.time() - t:.0f} s and saved into {out_json.name}")

# %%
if run or new_baselines or score_init != "normal":   # the saved normal-init runs' figure opens the page
    fig = plot_seeds(results["runs"], results["baselines"])
    if new_baselines: fig.savefig(out_json.with_suffix(".png"), dpi=80, bbox_inches="tight")
    plt.show()
display(Markdown(summary_table(summarize(results["runs"]), results["baselines"])))   # from the runs: files saved before `test_ci95` get it too
display(Markdown(comparison_table(results["comparisons"])))
display(Markdown(runs_table(results["runs"], results["baselines"])))


# %% [markdown]
# ## Seeds and the saddle
#
# Why do seeds of one setting end so far apart? `04_s3` shows that FCN's zero-initialised score layers make a
# symmetric saddle which only rounding breaks, so which segment wins where is decided by noise. If that is
# the cause, drawing the score layers from $\mathcal N(0, 10^{-6})$ (`score_init="normal"`, seeded) should
# narrow the spread; if the spread remains, the networks settle in different optima for another reason, and
# each run's **final training loss** says which kind: a low mIoU with a high final loss is an optimisation
# failure (the run did not find what the objective rewards), a low mIoU with a loss as low as the good runs'
# is an objective that does not match the task. Below: per setting and initialisation the seeds' mean,
# spread and range, the Brown–Forsythe test of equal spread (Levene's test about the medians) where both
# initialisations have three seeds or more, and, for runs that recorded it, the final loss against the test
# mIoU with its rank correlation.

# %%
def spread_rows(by_init: dict) -> list:
    "Per setting and initialisation: seeds, mean, SD, 95 % CI and range of the test mIoU; Brown–Forsythe p of equal spread across the inits."
    from scipy import stats
    rows = []
    for setting in dict.fromkeys(r["setting"] for res in by_init.values() for r in res["runs"]):
        vals = {i: [r["test_miou"] for r in res["runs"] if r["setting"] == setting] for i, res in by_init.items()}
        vals = {i: v for i, v in vals.items() if v}
        bf = (float(stats.levene(*vals.values(), center="median").pvalue)
              if len(vals) > 1 and all(len(v) >= 3 for v in vals.values()) else None)
        for i, v in vals.items():
            s = summarize([r for r in by_init[i]["runs"] if r["setting"] == setting])[setting]   # the same mean, SD and CI as the tables
            rows.append(dict(setting=setting, init=i, n=len(v), mean=s["test"][0], sd=s["test"][1], ci95=s["test_ci95"], min=min(v), max=max(v),
                             brown_forsythe_p=bf))
    return rows

def spread_table(rows: list) -> str:
    lines = ["| setting | score layers | seeds | test mIoU mean ± SD | 95 % CI | range | equal spread (Brown–Forsythe p) |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        bf = "—" if r["brown_forsythe_p"] is None else f"{r['brown_forsythe_p']:.2g}"
        lines.append(f"| {r['setting']} | {r['init']} | {r['n']} | {r['mean']:.3f} ± {r['sd']:.3f} | [{r['ci95'][0]:.3f}, {r['ci95'][1]:.3f}] | "
                     f"{r['min']:.3f}–{r['max']:.3f} | {bf} |")
    return "\n".join(lines)

def loss_vs_miou(records: list) -> list:
    "Per setting, over the runs with a final training loss: Spearman's rank correlation of the final loss with the test mIoU."
    from scipy import stats
    out = []
    for setting in dict.fromkeys(r["setting"] for r in records):
        rs = [r for r in records if r["setting"] == setting and r.get("final_loss") is not None]
        if len(rs) < 3: continue
        rho = stats.spearmanr([r["final_loss"] for r in rs], [r["test_miou"] for r in rs])
        out.append(dict(setting=setting, n=len(rs), spearman=float(rho.statistic), p=float(rho.pvalue)))
    return out

def plot_loss_vs_miou(records: list):
    "Final training loss against test mIoU, one panel per setting (runs that recorded their final loss)."
    settings = [s for s in dict.fromkeys(r["setting"] for r in records) if sum(r.get("final_loss") is not None for r in records if r["setting"] == s)]
    fig, axes = plt.subplots(1, len(settings), figsize=(3.6 * len(settings), 3.0), squeeze=False)
    for ax, s in zip(axes[0], settings):
        rs = [r for r in records if r["setting"] == s and r.get("final_loss") is not None]
        ax.plot([r["final_loss"] for r in rs], [r["test_miou"] for r in rs], "o", color="C0")
        for r in rs: ax.annotate(str(r["seed"]), (r["final_loss"], r["test_miou"]), fontsize=6, xytext=(2, 2), textcoords="offset points")
        ax.set_title(s, fontsize=9); ax.set_xlabel("final training loss", fontsize=8); ax.set_ylabel("test mIoU", fontsize=8)
    fig.tight_layout()
    return fig

_run = lambda m: dict(setting="a+b", seed=0, test_miou=m, valid_miou=m, test_miou_grid=0.1)
_r = spread_rows({"zero": dict(runs=[_run(m) for m in (0.2, 0.5, 0.8)]), "normal": dict(runs=[_run(m) for m in (0.49, 0.5, 0.51)])})
assert [(r["init"], r["n"]) for r in _r] == [("zero", 3), ("normal", 3)] and abs(_r[0]["sd"] - 0.3) < 1e-6   # summarize works in float32
assert abs(_r[0]["brown_forsythe_p"] - __import__("scipy").stats.levene([0.2, 0.5, 0.8], [0.49, 0.5, 0.51], center="median").pvalue) < 1e-12
_l = loss_vs_miou([dict(setting="a+b", seed=i, final_loss=l, test_miou=m) for i, (l, m) in enumerate(((1.0, 0.2), (0.5, 0.6), (0.2, 0.9)))])
assert _l[0]["n"] == 3 and abs(_l[0]["spearman"] + 1) < 1e-12          # lower loss, higher mIoU: rank correlation -1

# %%
by_init = {} if mode == "tiny" else {i: json.loads(path.read_text()) for i, path in INIT_RESULTS.items() if path.exists()}
if run: by_init[score_init] = results   # this run's records (a tiny run is shown alone)
display(Markdown(spread_table(spread_rows(by_init))))
for i, res in by_init.items():
    for c in loss_vs_miou(res["runs"]):
        print(f"{i} init, {c['setting']}: final loss vs test mIoU, Spearman {c['spearman']:+.2f} (p = {c['p']:.2g}, {c['n']} runs)")
    if any(r.get("final_loss") is not None for r in res["runs"]): plot_loss_vs_miou(res["runs"]); plt.show()
if "normal" not in by_init: print("no normal-init runs saved yet (the first command above): only the zero-init spread is shown")

# %% [markdown]
# **Does the objective reward the truth?** A run's final loss can only be set against other runs'. The decisive
# comparison is with the segmentation the task wants: each run's own training loss, evaluated on each of its test
# frames for three segmentations — the trained network's soft segments, the **truth** (one hard segment per cube
# face, or per object and the background) and uniform masks (where training starts). If the truth scores below the
# network on (nearly) every frame, the objective rewards the truth and whatever the network misses is an
# optimisation failure; if the network's segments score as low as the truth's while matching it poorly, the
# objective does not single the truth out, and no optimiser would mend that. The scores need the trained networks
# (`model.pt` in each run's folder, `core.runs_dir`; about a second a run): they are computed once and saved in the
# results (`objective`, per run and test frame); without the runs folder the saved ones are shown.

# %%
import torch.nn.functional as F
from motion_nbs.s3 import heldout_frames, load_s3, s3_loss

OBJECTIVE_SEGMENTS = ("network", "truth", "uniform")

def objective_scores(record: dict, run_dir: Path) -> dict:
    "One run's training loss on each of its test frames for the network's segments, the true segments and uniform masks."
    cfg = S3Config.from_preset("cpu", **{k: record["settings"][k] for k in ("data", "loss", "seed", "image_size")}, out_dir=None, device="cpu")
    frames, model, crit = heldout_frames(cfg, num=record["test_num_frames"], split="test"), load_s3(run_dir), s3_loss(record["loss"])
    if model.meta["num_segments"] != record["settings"]["num_segments"]:
        raise ValueError(f"{run_dir}: the network has {model.meta['num_segments']} segments, its record {record['settings']['num_segments']}")
    with torch.no_grad():
        masks = model(frames["image"])
        truth = F.one_hot(frames["target"].long(), int(frames["target"].max()) + 1).permute(0, 3, 1, 2).to(masks.dtype)
        segs = dict(network=masks, truth=truth, uniform=torch.full_like(masks, 1 / masks.shape[1]))
        per = {k: [round(float(crit(m[i:i + 1], frames["flow"][i:i + 1])), 6) for i in range(len(m))] for k, m in segs.items()}
    return dict(setting=record["setting"], seed=record["seed"], **per)

def objective_rows(objective: list, records: list) -> list:
    """Per setting: the mean loss on the test frames of each segmentation, the share of frames where the network scores
    below the truth, and the runs where it does so on most frames (their test mIoU beside)."""
    miou = {(r["setting"], r["seed"]): r["test_miou"] for r in records}
    rows = []
    for setting in dict.fromkeys(o["setting"] for o in objective):
        os_ = [o for o in objective if o["setting"] == setting]
        frames = [(n, t) for o in os_ for n, t in zip(o["network"], o["truth"])]
        mean = {k: sum(sum(o[k]) for o in os_) / sum(len(o[k]) for o in os_) for k in OBJECTIVE_SEGMENTS}
        below = [o["seed"] for o in os_ if 2 * sum(n < t for n, t in zip(o["network"], o["truth"])) > len(o["network"])]
        rows.append(dict(setting=setting, runs=len(os_), **mean, frames_below=sum(n < t for n, t in frames) / len(frames),
                         runs_below=below, runs_below_miou=[miou[(setting, s)] for s in below]))
    return rows

def objective_table(rows: list) -> str:
    lines = ["| setting | runs | loss: network | loss: truth | loss: uniform | frames where network < truth | runs mostly below the truth (test mIoU) |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        below = ", ".join(f"{s} ({m:.3f})" for s, m in zip(r["runs_below"], r["runs_below_miou"])) or "none"
        lines.append(f"| {r['setting']} | {r['runs']} | {r['network']:.3f} | {r['truth']:.3f} | {r['uniform']:.3f} | {100 * r['frames_below']:.0f} % | {below} |")
    return "\n".join(lines)

def plot_objective(objective: list):
    "Per setting, every test frame of every run: the truth's loss against the network's (below the diagonal: the network scores lower)."
    settings = list(dict.fromkeys(o["setting"] for o in objective))
    fig, axes = plt.subplots(1, len(settings), figsize=(3.4 * len(settings), 3.2), squeeze=False)
    for ax, s in zip(axes[0], settings):
        for k, o in enumerate(x for x in objective if x["setting"] == s):
            ax.plot(o["truth"], o["network"], ".", ms=3, color=f"C{k % 10}", alpha=0.6)
        top = max(max(o["truth"] + o["network"]) for o in objective if o["setting"] == s)
        ax.plot([0, top], [0, top], "k--", lw=0.8)
        ax.set_title(s, fontsize=9); ax.set_xlabel("loss of the true segments", fontsize=8); ax.set_ylabel("loss of the network's segments", fontsize=8)
    fig.tight_layout()
    return fig

_o = [dict(setting="a+b", seed=0, network=[0.2, 0.3, 0.1], truth=[0.1, 0.4, 0.2], uniform=[1.0] * 3),
      dict(setting="a+b", seed=1, network=[0.5, 0.5, 0.5], truth=[0.1, 0.1, 0.1], uniform=[1.0] * 3)]
_or = objective_rows(_o, [dict(setting="a+b", seed=0, test_miou=0.3), dict(setting="a+b", seed=1, test_miou=0.6)])[0]
assert abs(_or["frames_below"] - 2 / 6) < 1e-12 and _or["runs_below"] == [0] and _or["runs_below_miou"] == [0.3] and abs(_or["network"] - 2.1 / 6) < 1e-12

# %%
obj_runs = runs if run else core.runs_dir("s3_seeds" + ("" if score_init == "zero" else f"_{score_init}"), create=False)
obj_dirs = {(r["setting"], r["seed"]): obj_runs / f"{r['data']}_{r['loss']}_seed{r['seed']}" for r in results["runs"]}
if run or "objective" not in results:
    missing = [str(d) for d in obj_dirs.values() if not (d / "model.pt").is_file()]
    if missing: print(f"no objective scores: {len(missing)} trained networks are missing, e.g. {missing[0]} (train them with the full preset)")
    else:
        t = time.time()
        results["objective"] = [objective_scores(r, obj_dirs[(r["setting"], r["seed"])]) for r in results["runs"]]
        with atomic_write(out_json) as tmp: tmp.write_text(json.dumps(results, indent=1))
        print(f"objective scores of {len(results['objective'])} runs computed in {time.time() - t:.0f} s and saved into {out_json.name}")
if "objective" in results:
    plot_objective(results["objective"]); plt.show()
    display(Markdown(objective_table(objective_rows(results["objective"], results["runs"]))))

# %% [markdown]
# **Rounding twins.** Whether a run's outcome is fixed by its seed or by rounding can be asked directly: train
# the same setting, seed and initialisation twice, identical but for the number of CPU threads (so the weights,
# the data and every random draw are the same, and only the order of floating-point sums differs), and
# compare the two networks' segmentations of the test frames (matched mIoU of one twin's segments against the
# other's: 1 means the same partition). If rounding only decides the zero-initialised saddle, the twins of
# `score_init="normal"` should agree and those of `"zero"` should not; if both pairs drift apart, training
# itself amplifies rounding, and the spread between seeds is the spread of that chaotic process whatever the
# initialisation. `single_cube` + affine, 1,000 steps of the `cpu` preset (its cosine schedule compressed to
# them), seeds 0–2 (`papermill ... -p twins True`, about 40 minutes on two cores).

# %%
from motion_nbs.s3 import heldout_frames, matched_miou
TWINS_SAVED, TWIN_SETTING, TWIN_STEPS, TWIN_SEEDS = ROOT / "nbs" / "04_s3_train_twins.json", "single_cube+affine", 1000, (0, 1, 2)

def rounding_twins(setting: str, seed: int, init: str, steps: int, threads=(1, 2), **overrides) -> dict:
    "One setting, seed and score-layer init trained once per thread count; each twin's test mIoU and how far their segmentations agree."
    data, loss = setting.split("+")
    cfg = S3Config.from_preset("cpu", data=data, loss=loss, seed=seed, num_iters=steps, out_dir=None, progress=False, device="cpu",
                               score_init=init, **overrides)
    images = heldout_frames(cfg, split="test")["image"]   # the frames `train` scores on; rendered once for both twins
    before, preds, scores = torch.get_num_threads(), [], []
    try:
        for t in threads:
            torch.set_num_threads(t)
            res = train(cfg)
            with torch.no_grad(): preds.append(res["model"].segment(images))
            scores.append(dict(threads=t, test_miou=res["test_miou"]))
    finally: torch.set_num_threads(before)
    return dict(setting=setting, seed=seed, init=init, steps=steps, twins=scores, agreement=matched_miou(preds[1], preds[0]),
                identical=bool(torch.equal(preds[0], preds[1])))

def twins_lines(saved: dict) -> list:
    "Per init: the twins' agreement per seed and its mean; and the paired difference normal − zero over seeds."
    from motion_nbs.transfer import paired_comparison
    by = {i: {r["seed"]: r for r in saved["runs"] if r["init"] == i} for i in ("zero", "normal")}
    out = [f"- {i} init: twins agree {sum(r['agreement'] for r in rs.values()) / len(rs):.3f} on average (seeds "
           + ", ".join(f"{s}: {r['agreement']:.3f}, test mIoU {r['twins'][0]['test_miou']:.3f} / {r['twins'][1]['test_miou']:.3f}" for s, r in sorted(rs.items()))
           + ")" for i, rs in by.items() if rs]
    common = sorted(set(by["zero"]) & set(by["normal"]))
    if len(common) > 1:
        c = paired_comparison([by["normal"][s]["agreement"] for s in common], [by["zero"][s]["agreement"] for s in common])
        out.append(f"- normal − zero agreement: {c['mean_difference']:+.3f} (95 % CI {c['ci95'][0]:+.3f} to {c['ci95'][1]:+.3f}, p = {c['p']:.2g}, {c['n']} seeds)")
    return out

_nt = torch.get_num_threads()
_tiny = rounding_twins("single_cube+affine", 0, "zero", 2, batch_size=2, image_size=32, pool_size=4, num_valid=2)
assert [t["threads"] for t in _tiny["twins"]] == [1, 2] and 0 <= _tiny["agreement"] <= 1 and torch.get_num_threads() == _nt   # threads restored
_fake = {"runs": [dict(init=i, seed=s, agreement=a, twins=[dict(test_miou=0.5), dict(test_miou=0.5)]) for i, s, a in
                  (("zero", 0, 0.4), ("zero", 1, 0.6), ("normal", 0, 0.9), ("normal", 1, 1.0))]}
assert twins_lines(_fake)[0].startswith("- zero init: twins agree 0.500") and "+0.450" in twins_lines(_fake)[2]

# %%
if twins:
    twin_runs = json.loads(TWINS_SAVED.read_text())["runs"] if TWINS_SAVED.exists() else []
    for seed in TWIN_SEEDS:
        for init in ("zero", "normal"):
            if any(r["seed"] == seed and r["init"] == init for r in twin_runs): continue
            twin_runs.append(rounding_twins(TWIN_SETTING, seed, init, TWIN_STEPS))
            with atomic_write(TWINS_SAVED) as tmp: tmp.write_text(json.dumps({"setting": TWIN_SETTING, "steps": TWIN_STEPS, "runs": twin_runs}, indent=1))
            print(f"seed {seed} {init}: agreement {twin_runs[-1]['agreement']:.3f}", flush=True)
if TWINS_SAVED.exists(): display(Markdown("\n".join(twins_lines(json.loads(TWINS_SAVED.read_text())))))
else: print(f"no rounding twins saved yet ({TWINS_SAVED}): run with -p twins True")


# %% [markdown]
# **What the twins show** (`nbs/04_s3_train_twins.json`: seeds 0–2, 1,000 steps, 6 Dec 2026): the twins of *both*
# initialisations end in different partitions of the test frames. They agree 0.474 (zero) and 0.522 (normal) on
# average, no run reproduced its twin, and the difference normal − zero (+0.048, p = 0.8) is not resolved. So breaking
# the saddle does not make a run's outcome a function of its seed: training amplifies rounding whatever the score
# layers start from, and a seed is a draw from that process, not a setting — which is why the targets are judged
# on the mean of ten seeds with its confidence interval, not on one run. How *good* a segmentation comes out is far
# more stable than *which* one: in 5 of the 6 pairs the twins' test mIoU differ by at most 0.022; in the sixth (zero
# init, seed 1) by 0.144, as far apart as two seeds. The normal initialisation is kept for the seeds run: it removes
# the one mechanism (the exact symmetry at step 0) by which rounding alone decides the start of training.
#
#

# %% [markdown]
# ## S3-CNN as a pre-training (table 4.1's counterpart)
#
# The thesis fine-tunes its S3-CNN on VOC (table 4.1) and, with an AlexNet FCN-32s, compares it with CPFS (section
# 4.4.3). The book's counterpart runs in chapter 3's transfer harness (`03_cpfs_ambiguity`, its `s3` phase), so that
# S3 is one more arm beside random, flow classification and the CPFS losses: the AlexNet FCN-32s S3-CNN
# (`s3.AlexNetFCN32`, the same quarter-width AlexNet trunk as every arm there) is trained with the entropy loss on
# the `objects` world's flow for the CPFS arms' 1,000 steps, its learning rate chosen on validation frames, 5 seeds;
# its trunk gets the same linear probes and fine-tunings on the `objects` labels, and the per-seed paired differences
# are Holm-corrected within their family. FCN-8s on VGG-16 (the S3 network above) would have compared a different
# architecture with the AlexNet arms; the thesis' own AlexNet variant keeps the comparison fair. The results are read
# from `nbs/03_cpfs_ambiguity_results.json` and kept in this notebook's results as `transfer`. The thesis' numbers, for
# scale (VOC07 classification mAP, AlexNet): S3-CNN 57.4 against CPFS-KTA 65.3 (section 4.4.3) — S3 behind CPFS there.

# %%
def s3_transfer(ambiguity: dict | None) -> dict:
    "The S3 arm of 03_cpfs_ambiguity's results: its comparisons and its chosen learning rate, or the reason it is absent."
    comps = [c for c in (ambiguity or {}).get("comparisons", []) if c["family"] == "s3"]
    if not comps: return dict(absent="03_cpfs_ambiguity's s3 phase has not run yet (papermill nbs/03_cpfs_ambiguity.ipynb ... -p phases s3)")
    keep = ("world", "pair", "metric", "n", "seeds", "mean", "ci95", "p", "p_holm", "verdict")
    st = ambiguity["settings"]
    return dict(source="nbs/03_cpfs_ambiguity_results.json", arm=f"AlexNet FCN-32s S3-CNN, {st['s3_loss']} loss, {st['num_iters']:,} steps",
                lr_selection=[x for x in ambiguity.get("lr_selection", []) if x["arm"] == "s3"],
                comparisons=[{k: c[k] for k in keep} for c in comps])

def transfer_table(t: dict) -> str:
    if "absent" in t: return f"*No transfer results: {t['absent']}.*"
    lines = ["| world | pair | metric | seeds | mean (95 % CI) | p (Holm) | verdict |", "|---|---|---|---|---|---|---|"]
    for c in t["comparisons"]:
        lines.append(f"| {c['world']} | {c['pair'].replace(' - ', ' − ')} | {c['metric']} | {c['n']} | {c['mean']:+.1f} "
                     f"({c['ci95'][0]:+.1f}, {c['ci95'][1]:+.1f}) | {c['p_holm']:.2g} | {c['verdict']} |")
    return "\n".join(lines)

_amb = ROOT / "nbs" / "03_cpfs_ambiguity_results.json"
transfer = s3_transfer(json.loads(_amb.read_text()) if _amb.exists() else None)
if run:
    results["transfer"] = transfer
    with atomic_write(out_json) as tmp: tmp.write_text(json.dumps(results, indent=1))
display(Markdown(transfer_table(transfer)))

# %%
_hand = {"comparisons": [dict(world="objects", pair="s3 - flow_cls", metric="seg_1000", family="s3", n=5, seeds=[0, 1, 2, 3, 4], mean=-2.0,
                              ci95=[-3.0, -1.0], p=0.01, p_holm=0.04, verdict="reversed", differences=[]),
                         dict(world="objects", pair="ce - flow_cls", metric="seg_1000", family="cpfs_vs_flow_cls", n=5, mean=1.0)],
         "lr_selection": [dict(world="objects", arm="s3", chosen=1e-3), dict(world="objects", arm="ce", chosen=1e-4)],
         "settings": dict(s3_loss="entropy", num_iters=20)}
_t = s3_transfer(_hand)
assert _t["arm"] == "AlexNet FCN-32s S3-CNN, entropy loss, 20 steps" and [c["pair"] for c in _t["comparisons"]] == ["s3 - flow_cls"] and _t["lr_selection"] == [dict(world="objects", arm="s3", chosen=1e-3)]
assert "| objects | s3 − flow_cls | seg_1000 | 5 | -2.0 (-3.0, -1.0) | 0.04 | reversed |" in transfer_table(_t)
assert "absent" in s3_transfer(None) and "has not run yet" in transfer_table(s3_transfer({"comparisons": []}))

# %% [markdown]
# ## What came out
#
# The `full` run (10 seeds × 3 settings of the `cpu` preset, score layers drawn at random, `score_init="normal"`;
# two workers on one CPU thread each, 19–83 min a run, 18 h 37 min of recorded training in all, where a run resumed
# after its session ended records only its resumed part), matched mIoU on 32 test frames per seed:
#
# - **single_cube + affine: 0.727 ± 0.020** (95 % CI 0.713 to 0.742; seeds 0.693–0.762; validation 0.740 ± 0.035)
#   against a grid's 0.180. The target (≥ 0.7) is met on average and by 9 of the 10 seeds.
# - **multi_cube + rigid: 0.639 ± 0.121** (95 % CI 0.552 to 0.726; seeds 0.334–0.751; validation 0.621) against
#   0.240. The target (≥ 0.5) is met on average and by 9 of the 10 seeds.
# - **multi_cube + entropy: 0.329 ± 0.132** (95 % CI 0.235 to 0.423; seeds 0.197–0.528) against 0.240; 5 of the 10
#   seeds are below the grid.
#
# Validation and test agree to within 0.02 on every setting, so the preset was not fitted to its validation frames.
#
# **Against the baselines** (the same test frames; means over the seeds' frames):
#
# | baseline | single_cube faces | multi_cube objects |
# |---|---|---|
# | colour k-means (Lab, $L = 5$) | 0.445 | 0.362 |
# | object/background oracle | 0.393 | 0.402 |
# | k-means on the true flow | 0.494 | 0.835 |
# | grid | 0.180 | 0.240 |
#
# - **The cube's faces: target met.** S3 − colour k-means +0.282 (95 % CI +0.257 to +0.307) paired over 320 test
#   frames, and +0.282 (95 % CI +0.249 to +0.315) over the seeds' means, both at Holm p < 0.001. The frames of one
#   seed share a network, so the seeds are the independent units and the second test is the one to lean on. Every
#   seed is above colour k-means, the oracle and k-means on the true flow on its own frames: the affine model
#   separates faces whose flows differ by an affine map, which clustering the flow vectors cannot.
# - **The objects, rigid: target met.** Above colour k-means and the object/background oracle (+0.277 and +0.237;
#   over the seeds' means Holm p = 0.00036 and 0.00096). Below k-means on the true flow (−0.196): the
#   flow holds the objects, and from one frame the network recovers 77 % of what grouping the true flow gives.
# - **The objects, entropy:** below colour k-means (−0.033) and the oracle (−0.073) over frames; over the seeds'
#   means neither is resolved (Holm p = 0.41 and 0.22), nor is the margin over the grid (Holm p = 0.18).
#
# **Seeds and the saddle.** Random score layers raised the means: the cube's seeds average 0.727 (zero init: 0.655),
# rigid's 0.639 (0.511). On the cube they also narrowed the spread, 0.020 against 0.128, and the lowest zero-init
# seed (0.510) is below every normal-init one; with three zero-init seeds the Brown–Forsythe test just misses
# resolving the narrowing (p = 0.052). Rigid's spread is barely narrower, 0.121 against 0.150 (p = 0.82), because
# of one run: the other 9 seeds end between 0.575 and 0.751, seed 9 at 0.334, below the lowest zero-init seed
# (0.341). Its final loss, 0.378, is the highest of the rigid runs (the others 0.144–0.220), and the rigid loss
# scores the truth near zero (below): that run's optimisation stalled with no saddle to blame. The entropy loss'
# spread is unchanged (0.132 against 0.131): its failures are not the saddle's.
#
# **Optimisation or objective?** For the affine and rigid losses the truth scores 0.001 and 0.000 on the test frames
# and the network's segments score higher on every frame: the objectives reward the true segments, and what the
# networks miss of them is optimisation (or capacity) left undone. For the entropy loss the true objects score
# 0.586 and the networks' segments 0.576, lower than the truth's on 54 % of the test frames; 6 of the 10 networks,
# the best (0.528) among them, score below the truth on most of their frames. Among the runs, lower final losses
# go with higher mIoU (Spearman −0.64, p = 0.048), but the loss does not single the objects out: on these worlds
# the entropy loss' low mIoU is an objective that does not match the task, not an optimiser that fell short (what
# it prefers instead is not established here).
#
# **As a pre-training** (table 4.1's counterpart, above: the AlexNet FCN-32s S3-CNN in chapter 3's transfer
# harness, 5 seeds): S3 beats a random network at segmentation after fine-tuning (+11.8 mIoU, Holm p = 0.0017);
# against flow classification and the CPFS losses no difference is resolved after Holm's correction.
