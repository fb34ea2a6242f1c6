# %% [markdown]
# # When does CPFS beat flow classification? A sweep over worlds with motion ambiguity (papermill experiment)
#
# > Chapter 3's claim tested where its premise holds: five labelled worlds whose motion is more or less ambiguous (measured), each pre-training arm tuned on validation frames, five seeds, paired differences with Holm-corrected p-values, and the trend of the difference with the ambiguity.

# %% [markdown]
# **The question.** The thesis argues for CPFS (sections 3.1, 3.3.6) because the flow of a single frame is
# *ambiguous*: objects that can move often don't, the camera moves too, the direction is unknown. Predicting
# the flow itself (direct flow classification) must then guess, while CPFS only asks which pixels move
# *together*. `03_cpfs_transfer` found flow classification ahead of every CPFS loss — in the `objects` world,
# whose one object always moves and whose camera barely does. Does the ordering change when the premise holds?
#
# **The answer** is printed below, with its figure, from the saved results
# (`nbs/03_cpfs_ambiguity_results.json`): per world, the paired difference CPFS − flow classification on
# segmentation mIoU and on the conv3 linear probe, with 95 % CIs and Holm-corrected p-values, and the slope of
# that difference against the worlds' ambiguity. The saved sweep is complete: 202 runs, 36 hours of runs (each
# on one CPU thread, two side by side on two cores); while a sweep is under way the saved results say which runs
# are done, and the figure shows only the worlds whose comparisons are complete.
#
# **In short: the ordering follows the premise.** Where the flow's magnitude no longer tells the object from the
# background — `objects_camera` and `objects_ambiguous`, in which figure/ground explains 1.9 % and 0.7 % of the
# flow-class entropy — both CPFS losses segment better than flow classification after fine-tuning, as the thesis
# claims; where it does (`objects`, `objects_k3`: 7.9 % and 9.8 %) the ordering is undecided or reversed; and
# across the five worlds CE's advantage on segmentation shrinks as the figure/ground share grows (the trend below,
# p < 0.05 for CE, not resolved for KTA). Still objects alone (`objects_static`, 57.5 % of frames with the object
# under 1 px against the background) do not make the difference: the trend against that statistic is not resolved
# (CE on segmentation: p = 0.46). The conv3 probe resolves no difference in any world after Holm's correction.

# %% [markdown]
# *Default run: **15 s** on 2 CPU cores with the default parameters (measured by `make book` on 7 Dec 2026, reusing the training and caches that earlier runs left in the runs folder, `core.runs_dir`; where a first run on a new machine takes longer, the chapter says so).*

# %%
#| code-fold: true
import json
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
from IPython.display import Markdown, display

from motion_nbs import core
from motion_nbs.cpfs import THESIS_SIGMA2
from motion_nbs.transfer import forest_plot

# %%
#| code-fold: true
ROOT = core.repo_root() or Path.cwd()   # the checkout (the saved results live in its nbs/)
SAVED = ROOT / "nbs" / "03_cpfs_ambiguity_results.json"
PRETRAINED = ("flow_cls", "kta", "ce")

def metric_names(settings: dict) -> tuple:
    "The compared metrics: segmentation mIoU and classification top-1 fine-tuned on the most labels, and the conv3 probe."
    n = max(settings["budgets"])
    return (f"seg_{n}", "probe_relu3", f"cls_{n}")
def ambiguity_forest(results: dict, metrics=None):
    "Paired differences CPFS − flow classification per world (mean and 95 % CI), one panel per metric; the least ambiguous world on top."
    metrics = metrics or metric_names(results["settings"])[:2]
    comps = [c for c in results["comparisons"] if c["family"] in ("cpfs_vs_flow_cls", "extension") and c["pair"].endswith("flow_cls")]
    fg = {w["name"]: w["manipulation"]["figure_ground_entropy_share"] for w in results["worlds"]}
    worlds_ = sorted({c["world"] for c in comps}, key=lambda w: -fg[w])
    labels = {"seg": "segmentation mIoU, fine-tuned", "probe": "conv3 linear probe top-1", "cls": "classification top-1, fine-tuned"}
    n = sum(1 for c in comps if c["metric"] == metrics[0])
    fig, axes = plt.subplots(1, len(metrics), figsize=(5.2 * len(metrics), 0.32 * n + 1.6), sharey=True, squeeze=False)
    for ax, m in zip(axes[0], metrics):
        rows = [dict(label=f"{w} (FG {fg[w]:.3f}): {c['pair'].replace(' - ', ' − ')}", mean=c["mean"], ci95=c["ci95"], group=c["pair"])
                for w in worlds_ for c in comps if c["world"] == w and c["metric"] == m]
        forest_plot(rows, ax=ax, xlabel=f"{labels[m.split('_')[0]]}:\nCPFS − flow cls. (points)")   # two lines: side by side, one line each would touch
    for ax in axes[0][1:]: ax.set_ylabel("")   # the rows are the first panel's
    axes[0][0].set_title("paired over seeds, 95 % CIs; right of 0: CPFS better; FG: figure/ground share of the flow-class entropy",
                         fontsize=8, loc="left")
    fig.tight_layout()
    return fig

def trend_figure(results: dict, statistic: str = "figure_ground_entropy_share"):
    "CPFS − flow classification against the worlds' statistic: every seed (dots), each world's mean and 95 % CI, the fitted line over the worlds' means."
    ts = [t for t in results["trend"] if t["statistic"] == statistic and not t["metric"].startswith("cls")]
    stat = {w["name"]: w["manipulation"][statistic] for w in results["worlds"]}
    metrics = list(dict.fromkeys(t["metric"] for t in ts))
    fig, axes = plt.subplots(1, len(metrics), figsize=(5.0 * len(metrics), 3.4), squeeze=False)
    for ax, m in zip(axes[0], metrics):
        for i, t in enumerate(x for x in ts if x["metric"] == m):
            dx = 0.0015 * (i - 0.5)
            for c in results["comparisons"]:
                if c["family"] != "cpfs_vs_flow_cls" or c["pair"] != t["pair"] or c["metric"] != m: continue
                x = stat[c["world"]] + dx
                ax.plot([x] * len(c["differences"]), c["differences"], ".", color=f"C{i}", alpha=0.35)
                ax.errorbar([x], [c["mean"]], yerr=[[c["mean"] - c["ci95"][0]], [c["ci95"][1] - c["mean"]]], fmt="o", color=f"C{i}", capsize=3,
                            label=t["pair"].replace(" - ", " − ") if c["world"] == next(iter(t["points"])) else None)
            xs = np.linspace(0, max(stat.values()) * 1.05, 2)
            intercept = np.mean([v[1] for v in t["points"].values()]) - t["slope"] * np.mean([v[0] for v in t["points"].values()])
            ax.plot(xs, intercept + t["slope"] * xs, "--", color=f"C{i}", lw=1)
        ax.axhline(0, color="k", lw=0.8)
        ax.set_xlabel(f"{statistic.replace('_', ' ')} (more ambiguous: left)", fontsize=8)
        ax.set_ylabel(f"{m}: CPFS − flow cls. (points)", fontsize=8); ax.legend(fontsize=7)
    axes[0][0].set_title("dots: seeds; circles: world means, 95 % CIs; dashed: least squares over the worlds' means", fontsize=8, loc="left")
    fig.tight_layout()
    return fig

def sweep_figure(results: dict):
    "The worlds' ambiguity (two manipulation statistics) and the validation scores of the pre-training rates tried so far."
    ws = results["worlds"]
    fig, axes = plt.subplots(1, 3, figsize=(15, 3.6))
    names = [w["name"] for w in ws]
    for ax, stat, label in ((axes[0], "relative_motion_under_1px", "frames whose dominant object moves < 1 px (share)"),
                            (axes[1], "figure_ground_entropy_share", "share of flow-class entropy explained by figure/ground")):
        ax.barh(range(len(ws)), [w["manipulation"][stat] for w in ws], color="C0")
        ax.set_yticks(range(len(ws)), names, fontsize=8); ax.set_xlabel(label, fontsize=8); ax.invert_yaxis()
    axes[0].set_title("(a) still objects", fontsize=9); axes[1].set_title("(b) does the flow class say 'object'?", fontsize=9)
    ax, sel_seeds = axes[2], results["settings"]["selection_seeds"]
    chosen = {(c["world"], c["arm"]): c["chosen"] for c in results["lr_selection"]}
    tried = {}   # (world, arm) -> {lr: [validation scores of the selection seeds]}, the thesis' sigma^2 (CPFS) as in the grid
    for r in results["runs"]:
        if r["phase"] == "main" and r["arm"] in PRETRAINED and r["seed"] in sel_seeds and r["sigma2"] in (None, THESIS_SIGMA2):
            tried.setdefault((r["world"], r["arm"]), {}).setdefault(r["lr"], []).append(100 * float(np.mean(list(r["valid"].values()))))
    style = {"flow_cls": "s--", "kta": "^-", "ce": "o-"}   # colour: the world; marker and line: the arm
    for (w, arm), pts in sorted(tried.items()):
        lrs, colour = sorted(pts), f"C{names.index(w) % 10 if w in names else 9}"
        ax.plot(lrs, [np.mean(pts[lr]) for lr in lrs], style.get(arm, "o-"), color=colour, label=f"{w} {arm}")
        if (w, arm) in chosen: ax.plot([chosen[(w, arm)]], [np.mean(pts[chosen[(w, arm)]])], "*", ms=12, color=colour)
    for r in results["runs"]:
        if r["arm"] == "random" and r["seed"] in sel_seeds:
            ax.axhline(100 * float(np.mean(list(r["valid"].values()))), color="k", ls=":", lw=0.8)
    ax.set_xscale("log"); ax.set_xlabel("pre-training learning rate"); ax.set_ylabel("validation score (%)")
    ax.set_title("(c) validation score per rate (star: chosen; dotted: random init)", fontsize=9)
    if tried: ax.legend(fontsize=6, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    return fig

def worlds_table(results) -> str:
    lines = ["| world | frames with dominant object < 1 px | FG share of flow-class entropy | ceiling top-1 | ceiling mIoU | majority class |",
             "|---|---|---|---|---|---|"]
    pct = lambda v: "—" if v is None else f"{100 * v:.1f} %"
    for w in results["worlds"]:
        m = w["manipulation"]
        lines.append(f"| {w['name']} | {100 * m['relative_motion_under_1px']:.1f} % | {m['figure_ground_entropy_share']:.3f} | "
                     f"{pct(w['ceiling_accuracy'])} | {pct(w['ceiling_miou'])} | {pct(w['prior'])} |")
    return "\n".join(lines)

def comparisons_table(results, families=("cpfs_vs_flow_cls", "extension", "floor", "s3")) -> str:
    fmt = lambda v: "" if v is None else f"{v:.3g}"
    lines = ["| world | pair | metric | n | mean (95 % CI) | detectable (80 %) | p | p (Holm) | verdict |", "|---|---|---|---|---|---|---|---|---|"]
    for c in results["comparisons"]:
        if c["family"] not in families: continue
        ci = f"({c['ci95'][0]:+.1f}, {c['ci95'][1]:+.1f})" if c["ci95"] else ""
        det = "" if c.get("detectable_80") is None else f"{c['detectable_80']:.1f}"
        lines.append(f"| {c['world']} | {c['pair']} | {c['metric']} | {c['n']} | {c['mean']:+.1f} {ci} | {det} | {fmt(c['p'])} | "
                     f"{fmt(c.get('p_holm'))} | {c['verdict']} |")
    return "\n".join(lines)

def majority_collapse(results, tol: float = 1.0) -> list:
    """Per world: how many of its runs (every arm but the ceiling) score the majority-class share, within `tol` points,
    after fine-tuning for classification — where most do, classification cannot rank the arms."""
    cls = metric_names(results["settings"])[2]
    out = []
    for w in results["worlds"]:
        runs = [r for r in results["runs"] if r["world"] == w["name"] and r["arm"] != "supervised" and cls in r["test"]]
        if not runs or w.get("prior") is None: continue
        k = sum(abs(r["test"][cls] - 100 * w["prior"]) <= tol for r in runs)
        out.append(dict(world=w["name"], majority=k, runs=len(runs), prior=100 * w["prior"],
                        ceiling=None if w.get("ceiling_accuracy") is None else 100 * w["ceiling_accuracy"]))
    return out

def collapse_lines(results) -> list:
    "A sentence for each world where most runs' classification fine-tuning scores the majority class."
    return [f"- **{c['world']}**: classification after fine-tuning scores the majority class ({c['prior']:.1f} %) in {c['majority']} "
            f"of {c['runs']} runs" + ("" if c["ceiling"] is None else f", and the supervised ceiling reaches {c['ceiling']:.1f} %")
            + ": with 1,000 labels this world's frame label is barely learnable, so segmentation and the probes carry its comparison."
            for c in majority_collapse(results) if c["majority"] >= 0.5 * c["runs"]]

def answer(results) -> str:
    "The answer (so far, while a sweep is under way), in sentences generated from the results: per world the CPFS − flow classification verdicts, then the trend."
    fam = [c for c in results["comparisons"] if c["family"] == "cpfs_vs_flow_cls"]
    done = sorted({c["world"] for c in fam})
    if not done:
        return "\n".join(["**No world has finished its comparisons yet**: the sweep is under way (its progress is listed below); "
                          "the table of worlds and the validation scores of the rates tried so far are shown, nothing is concluded.", "",
                          *collapse_lines(results)])
    fg = {w["name"]: w["manipulation"]["figure_ground_entropy_share"] for w in results["worlds"]}
    out = []
    for w in sorted(done, key=lambda w: -fg[w]):
        parts = [f"{c['pair'].replace(' - ', ' − ')} on {c['metric']} {c['mean']:+.1f} (CI {c['ci95'][0]:+.1f} to {c['ci95'][1]:+.1f}, "
                 f"Holm p = {c['p_holm']:.2g}: {c['verdict']})" for c in fam if c["world"] == w and not c["metric"].startswith("cls")]
        out.append(f"- **{w}** (figure/ground explains {100 * fg[w]:.1f} % of the flow-class entropy): " + "; ".join(parts) + ".")
    for t in results["trend"]:   # slopes per 0.01 of the figure/ground share: the worlds span 0.007 to 0.098
        if t["statistic"] == "figure_ground_entropy_share" and not t["metric"].startswith("cls"):
            ci = ("no CI with fewer than 3 worlds" if t["ci95"] is None else
                  f"CI {t['ci95'][0] / 100:+.2f} to {t['ci95'][1] / 100:+.2f}, p = {t['p']:.2g}")
            out.append(f"- Trend of {t['pair'].replace(' - ', ' − ')} on {t['metric']} against the figure/ground share, over the "
                       f"{t['worlds']} worlds' mean differences: {t['slope'] / 100:+.2f} points per 0.01 of the share ({ci}); "
                       "a negative slope means CPFS gains on flow classification as the motion gets more ambiguous.")
    ext = [c for c in results["comparisons"] if c["family"] == "extension" and c["metric"] == "seg_1000"]
    for w in sorted({c["world"] for c in ext}):
        out.append(f"- **Extension in {w}** (CE with a temperature τ = {results['settings']['temperature']:g} on $K_\\phi$; Holm over its own "
                   "family): " + "; ".join(f"{c['pair'].replace(' - ', ' − ')} on {c['metric']} {c['mean']:+.1f} (CI {c['ci95'][0]:+.1f} to "
                                           f"{c['ci95'][1]:+.1f}, {c['verdict']})" for c in ext if c["world"] == w) + ".")
    budget = [c for c in results["comparisons"] if c["family"].startswith("budget_") and c["metric"] in ("seg_1000", "probe_relu3")]
    for w in sorted({c["world"] for c in budget}):
        at1k = {c["metric"]: c["mean"] for c in fam if c["world"] == w and c["pair"] == "ce - flow_cls"}
        out.append(f"- **Budget check in {w}** ({int(budget[0]['family'][7:]):,} pre-training steps, {budget[0]['n']} seeds, descriptive): CE − flow cls. "
                   + "; ".join(f"on {c['metric']} " + ", ".join(f"{d:+.1f}" for d in c["differences"])
                               + (f" (at 1,000 steps the 5-seed mean is {at1k[c['metric']]:+.1f})" if c["metric"] in at1k else "")
                               for c in budget if c["world"] == w) + ".")
    s3 = [c for c in results["comparisons"] if c["family"] == "s3" and not c["metric"].startswith("cls")]
    for w in sorted({c["world"] for c in s3}):
        out.append(f"- **S3-CNN as pre-training in {w}** (chapter 4's entropy loss on an AlexNet FCN-32s, table 4.1's counterpart; Holm "
                   "over its own family): " + "; ".join(f"{c['pair'].replace(' - ', ' − ')} on {c['metric']} {c['mean']:+.1f} "
                                                        f"(CI {c['ci95'][0]:+.1f} to {c['ci95'][1]:+.1f}, {c['verdict']})" for c in s3 if c["world"] == w) + ".")
    out += collapse_lines(results)
    missing = [p["world"] for p in results["progress"] if p["world"] not in done]
    if missing: out.append(f"- Not yet compared (sweep under way): {', '.join(missing)}.")
    return "\n".join(out)


# %%
#| echo: false
saved = json.loads(SAVED.read_text()) if SAVED.exists() else None
if saved:
    display(Markdown(answer(saved)))
    if any(c["family"] == "cpfs_vs_flow_cls" for c in saved["comparisons"]): ambiguity_forest(saved); plt.show()
    else: sweep_figure(saved); plt.show()
else: print(f"no saved results yet ({SAVED}): run the sweep with -p preset full")

# %% tags=["parameters"]
preset = "saved"        # "saved" (show the saved results), "tiny" (a smoke run of the whole sweep), "full" (the sweep; resumes)
worlds = None           # renderer worlds to run (None: the preset's); the full sweep's order puts the most ambiguous first
phases = None           # "main", "extension", "budget", "s3" (None: all four, in that order)
num_threads = None      # torch CPU threads (None: torch's default)
device = None           # "cpu", "cuda", ...; None: CUDA if present, else MPS, else the CPU
max_hours = None        # stop starting new runs after this many hours (the records keep every finished run); 0: only analyse the records
runs_dir = None         # pre-training runs and frames; None: _runs/cpfs_ambiguity (full) or _runs/cpfs_ambiguity_tiny
records_dir = None      # one JSON file of finished runs per world; None: nbs/03_cpfs_ambiguity_records (full), {runs_dir}/records (tiny)
results_path = None     # results JSON (+ .png); None: nbs/03_cpfs_ambiguity_results.json (full), {runs_dir}/results.json (tiny)

# %%
from motion_nbs.core import reject_unknown_parameters

# %%
reject_unknown_parameters()  # a -p name this notebook does not define stops the run here, listing the valid ones

# %% [markdown]
# ## The design
#
# **Worlds** (chapter 02a, `OBJECT_WORLDS`): `objects` (the transfer experiment's world), `objects_static`
# (each object still with probability 0.5 while the camera moves), `objects_camera` (the camera pans as fast
# as the objects move), `objects_k3` (three independently moving objects; a frame's label is its dominant
# object's category) and `objects_ambiguous` (all of these at once). Each world's **manipulation statistics**
# (`data.manipulation_statistics` on 200 frames) say how ambiguous its motion is: the share of frames whose
# dominant object moves by under 1 px against the background, and the share of the flow-class entropy that
# figure/ground explains.
#
# **Arms** per world: `random` (the pre-trained arms' initial weights, batch norm calibrated), `flow_cls`
# (direct flow classification), `kta`, `ce` (the CPFS losses) and `supervised` (the quarter-width AlexNet
# trained end to end on the labels: the ceiling; one seed — it bounds the task, it is not ranked).
#
# **Chosen on validation frames, per world** (`main` phase):
#
# 1. the pre-training learning rate of each loss on a bracketed grid — $3\cdot10^{-4}, 10^{-3}, 3\cdot10^{-3}$,
#    and $10^{-2}$ (the thesis' rate) for flow classification — at the thesis' $\sigma^2 = 0.0036$; a choice at
#    an edge of the grid extends the grid by a factor of 3 (until the choice is inside it, at most four times);
# 2. then $\sigma^2$ of each CPFS loss on $\{0.0036, 0.01, 0.04\}$ at its chosen rate (extended by a factor of 4
#    at an edge, likewise). CE uses a fixed $\sigma^2$ here (the `cpu` preset learns it).
#
# A choice still at an edge after four extensions is marked `at_edge` in the saved selections (and printed
# below): its optimum may lie further out, and the comparison uses the best value tried. (The sweep began with
# at most two extensions; `objects_camera`'s KTA chose $\sigma^2 = 0.000225$, the far end of a grid extended twice,
# so the limit was raised to four, as a bracketed search requires, and the runs the new limit asks for were added
# to the records.)
#
# The score of a setting is the mean validation score of its two fine-tunings (classification top-1 and
# segmentation mIoU, 1,000 labelled frames), over the selection seeds (`selection_seeds`: seed 0 in the full
# sweep, a compromise with its cost, stated). Then every arm runs with the remaining seeds at its chosen
# setting: **5 seeds per (world, arm)**, 1,000 pre-training steps of the `cpu` preset (batch 16, 256 pixels,
# 128-px crops). Test frames play no part in any choice.
#
# **Evaluation** of every run: linear probes on conv1..conv5 (top-1 on the frame's category, their L2 penalty
# chosen on a held-out fifth of the probe's training frames), and fine-tuning of the whole network on 1,000
# labelled frames for classification and for segmentation (the fine-tuning rate chosen on validation frames
# from $10^{-3}$ and $3\cdot10^{-4}$); test numbers on 500 test frames.
#
# **Extension** (`extension` phase, labelled as such): CE with a temperature $\tau = 0.05$ on $K_\phi$
# (chapter 03: the printed kernels make both softmaxes nearly uniform) in `objects_ambiguous`, 5 seeds at CE's
# chosen setting. **Budget check** (`budget` phase): CE and flow classification at 5,000 steps in `objects`
# and `objects_ambiguous`, 2 seeds — does the ordering depend on the budget?
#
# **S3-CNN as a pre-training** (`s3` phase; chapter 4's table 4.1 in this harness, for issue [3/6]): in `objects`, the
# thesis' AlexNet FCN-32s S3-CNN (section 4.4.3; `s3.AlexNetFCN32`: the same quarter-width AlexNet trunk as every arm
# here, a 1×1 score layer on fc7, bilinear upsampling, $L = 5$, $\beta = 30$) trained with the entropy loss — the
# loss of the thesis' transfer model — on the world's exact flow, with the CPFS arms' batch, crop size, scene pool and
# 1,000 steps; its score layer drawn from $N(0, 10^{-6})$ rather than zero, which leaves the $L$ segments a symmetric
# saddle (chapter 04_s3). Its learning rate is chosen on validation frames from the bracketed grid, then 5 seeds;
# the trunk is evaluated exactly as the other arms, and compared with flow classification, CE, KTA and random
# (Holm within that family).
#
# ```bash
# papermill nbs/03_cpfs_ambiguity.ipynb _runs/03_cpfs_ambiguity.ipynb -p preset full     # the sweep (resumes from its records)
# papermill nbs/03_cpfs_ambiguity.ipynb _runs/w2.ipynb -p preset full -p num_threads 1 &  # a second worker beside a first (shares its worlds)
# papermill nbs/03_cpfs_ambiguity.ipynb _runs/tiny.ipynb -p preset tiny                  # a smoke run of every phase
# ```
#
# Every finished run's record is written at once to its world's file in `records_dir` (atomically: a killed
# sweep loses at most the run in progress); a restarted sweep skips what is recorded and resumes a killed
# pre-training from its checkpoint in `runs_dir`.

# %%
#| code-fold: true
from motion_nbs.core import check_choice, check_int, check_number, resolve_device
from motion_nbs.data import OBJECT_WORLDS

# %%
#| code-fold: true
SWEEP_WORLDS = ("objects_ambiguous", "objects", "objects_static", "objects_camera", "objects_k3")
PHASES = ("main", "extension", "budget", "s3")
PRESETS = {
    "tiny": dict(worlds=["objects_ambiguous", "objects"], seeds=[0, 1], selection_seeds=[0], num_iters=2, budget_iters=4,
                 lr_grid={"flow_cls": [1e-2], "*": [1e-3]}, sigma_grid=[0.0036, 0.04], max_extensions=0,
                 batch_size=4, num_pixels=32, image_size=64, pool_size=8, num_train=24, num_probe=24, num_valid=12, num_test=12,
                 budgets=[24], ft_iters=3, ft_lrs=[1e-3], probe_layers=["relu3"], ceiling_iters=6, ceiling_lr=2e-3, temperature=0.05,
                 extension_worlds=["objects_ambiguous"], budget_worlds=["objects_ambiguous"], budget_seeds=[0, 1], stats_frames=8,
                 min_trend_worlds=2, s3_worlds=["objects"], s3_loss="entropy", s3_lr_grid=[1e-3]),
    "full": dict(worlds=list(SWEEP_WORLDS), seeds=[0, 1, 2, 3, 4], selection_seeds=[0], num_iters=1000, budget_iters=5000,
                 lr_grid={"flow_cls": [3e-4, 1e-3, 3e-3, 1e-2], "*": [3e-4, 1e-3, 3e-3]}, sigma_grid=[0.0036, 0.01, 0.04],
                 max_extensions=4, batch_size=None, num_pixels=None, image_size=None, pool_size=None, num_train=6000,
                 num_probe=1000, num_valid=300, num_test=500, budgets=[1000], ft_iters=300, ft_lrs=[1e-3, 3e-4],
                 probe_layers=["relu1", "relu2", "relu3", "relu4", "relu5"],
                 ceiling_iters=3000, ceiling_lr=2e-3, temperature=0.05, extension_worlds=["objects_ambiguous"],
                 budget_worlds=["objects", "objects_ambiguous"], budget_seeds=[0, 1], stats_frames=200, min_trend_worlds=3,
                 s3_worlds=["objects"], s3_loss="entropy", s3_lr_grid=[3e-4, 1e-3, 3e-3]),
}
check_choice("preset", preset, ("saved", *PRESETS))
if isinstance(worlds, str): worlds = [w.strip() for w in worlds.split(",")]
if worlds is not None:
    bad = [w for w in worlds if w not in OBJECT_WORLDS]
    if bad or not worlds: raise ValueError(f"worlds={worlds!r}; expected names from: {', '.join(OBJECT_WORLDS)}")
if isinstance(phases, str): phases = [p.strip() for p in phases.split(",")]
if phases is not None and (not phases or any(p not in PHASES for p in phases)):
    raise ValueError(f"phases={phases!r}; expected names from: {', '.join(PHASES)}")
if num_threads is not None: check_int("num_threads", num_threads, 1)
if max_hours is not None: check_number("max_hours", max_hours, 0.0, inclusive=True)
dev = resolve_device(device)  # a device this machine lacks fails here, naming the ones it has

# %%
import time
import torch
from motion_nbs.core import atomic_write

# %%
run = preset != "saved"
if run:
    cfg = dict(PRESETS[preset])
    if worlds is not None: cfg["worlds"] = list(worlds)
    cfg["phases"] = list(phases or PHASES)
    runs = Path(runs_dir) if runs_dir else core.runs_dir("cpfs_ambiguity" if preset == "full" else f"cpfs_ambiguity_{preset}")
    recs_dir = Path(records_dir) if records_dir else (ROOT / "nbs" / "03_cpfs_ambiguity_records" if preset == "full" else runs / "records")
    out_json = Path(results_path) if results_path else (SAVED if preset == "full" else runs / "results.json")
    if num_threads: torch.set_num_threads(num_threads)
    print(preset, {k: cfg[k] for k in ("worlds", "phases", "seeds", "num_iters")}, "->", out_json)
else: print(f"showing the saved results: {SAVED}")

# %% [markdown]
# ## The runs
#
# A run is a `spec`: world, arm, seed, pre-training rate, $\sigma^2$, temperature and steps. `plan(world)`
# lists the specs of a world in order, choosing the rate and $\sigma^2$ from the records of the selection runs
# as soon as they exist; `next_spec` gives the first one not yet recorded.

# %%
from motion_nbs.cpfs import CPFSConfig, build_cpfs_model, finished_run, load_cpfs, train
from motion_nbs.models import fold_batchnorm
from motion_nbs.s3 import S3Config, load_s3, train as s3_train
from motion_nbs.transfer import calibrate_batchnorm, evaluate_transfer, supervised_ceiling, world_frames


# %%
def spec(world, arm, seed, lr=None, sigma2=None, temperature=1.0, steps=None, phase="main") -> dict:
    return dict(world=world, arm=arm, seed=seed, lr=lr, sigma2=sigma2, temperature=temperature, steps=steps, phase=phase)

def key(s: dict) -> tuple:
    "What makes two runs the same run (the phase that asked for it does not)."
    return (s["world"], s["arm"], s["seed"], s["lr"], s["sigma2"], s["temperature"], s["steps"])

def valid_score(rec: dict) -> float:
    "A run's validation score: the mean of its fine-tunings' validation scores (classification top-1, segmentation mIoU), in %."
    return 100 * float(np.mean([v["valid"] for v in rec["fine_tune"].values()]))

def choose(world, records, arm, grid, make, ext_factor, max_ext, sel_seeds):
    """Yield the selection specs of `grid` (extended at an edge), then return (chosen value, {value: validation score})."""
    grid, extensions = sorted(grid), 0
    while True:
        for v in grid:
            for s in sel_seeds: yield make(v, s)
        scores = {v: float(np.mean([valid_score(records[key(make(v, s))]) for s in sel_seeds])) for v in grid}
        best = max(scores, key=scores.get)
        if extensions == max_ext or best not in (grid[0], grid[-1]): return best, scores
        grid = [grid[0] / ext_factor] + grid if best == grid[0] else grid + [grid[-1] * ext_factor]
        extensions += 1

def choices(world: str, records: dict, selections: dict, c: dict, arms=PRETRAINED):
    "The selection specs of `main` in order (each arm's rate, then its sigma^2); fills `selections[(world, arm)]` as each choice is made."
    for arm in arms:
        sig0 = None if arm == "flow_cls" else THESIS_SIGMA2
        grid = c["lr_grid"].get(arm, c["lr_grid"]["*"])
        lr, lr_scores = yield from choose(world, records, arm, grid, lambda v, s: spec(world, arm, s, v, sig0, steps=c["num_iters"]),
                                          3.0, c["max_extensions"], c["selection_seeds"])
        sel = dict(lr=lr, lr_scores=lr_scores, sigma2=sig0)
        if arm != "flow_cls":
            sig, sig_scores = yield from choose(world, records, arm, c["sigma_grid"], lambda v, s: spec(world, arm, s, lr, v, steps=c["num_iters"]),
                                                4.0, c["max_extensions"], c["selection_seeds"])
            sel.update(sigma2=sig, sigma_scores=sig_scores)
        selections[(world, arm)] = sel

def recorded_choices(world: str, records: dict, selections: dict, c: dict):
    "Fill `selections` with the choices of `main` that the records make, each arm on its own (one arm's missing run does not hide another's choice)."
    for arm in PRETRAINED:
        for s in choices(world, records, selections, c, [arm]):
            if key(s) not in records: break

def plan(world: str, records: dict, selections: dict, phases=None, arms=PRETRAINED):
    """The specs of one world in order (of `phases`; None: the run's; `main` for `arms` only); fills `selections[(world, arm)]` with each choice as it is made.
    The extension and the budget check run at `main`'s choices: without `main` in `phases` they are read from the records,
    and they wait (yield nothing) while a selection run they need is missing."""
    c = dict(cfg, phases=phases or cfg["phases"])
    if "main" in c["phases"]:
        yield spec(world, "supervised", c["seeds"][0])
        for s in c["seeds"]: yield spec(world, "random", s)
        yield from choices(world, records, selections, c, arms)
        for arm in arms:
            sel = selections[(world, arm)]
            for s in c["seeds"]: yield spec(world, arm, s, sel["lr"], sel["sigma2"], steps=c["num_iters"])
    elif {"extension", "budget"} & set(c["phases"]): recorded_choices(world, records, selections, c)
    if "extension" in c["phases"] and world in c["extension_worlds"] and (world, "ce") in selections:
        sel = selections[(world, "ce")]
        for s in c["seeds"]: yield spec(world, "ce", s, sel["lr"], sel["sigma2"], c["temperature"], c["num_iters"], "extension")
    if "budget" in c["phases"] and world in c["budget_worlds"] and all((world, a) in selections for a in ("ce", "flow_cls")):
        for arm in ("flow_cls", "ce"):
            sel = selections[(world, arm)]
            for s in c["budget_seeds"]: yield spec(world, arm, s, sel["lr"], sel["sigma2"], steps=c["budget_iters"], phase="budget")
    if "s3" in c["phases"] and world in c["s3_worlds"]:   # chapter 4's S3-CNN as a pre-training arm (table 4.1's counterpart)
        make = lambda v, s: spec(world, "s3", s, v, None, steps=c["num_iters"], phase="s3")
        lr, lr_scores = yield from choose(world, records, "s3", c["s3_lr_grid"], make, 3.0, c["max_extensions"], c["selection_seeds"])
        selections[(world, "s3")] = dict(lr=lr, lr_scores=lr_scores, sigma2=None)
        for s in c["seeds"]: yield make(lr, s)

def next_spec(world: str, records: dict, phases=None, claimed=frozenset()):
    """The first spec of the world's plan (of `phases`) that has no record and is not in `claimed` (another worker's run in
    progress), and the choices made so far. None: the world is done, or what is left waits for a claimed run (a choice
    that needs its score)."""
    selections = {}
    try:
        for s in plan(world, records, selections, phases):
            if key(s) not in records and key(s) not in claimed: return s, selections
        return None, selections
    except KeyError:   # a choice needs the score of a claimed run
        if not claimed: raise
    for arm in PRETRAINED if "main" in (phases or cfg["phases"]) else ():   # then each arm's main phase alone: one arm's pending choice does not hold up another's runs
        try:
            for s in plan(world, records, {}, ["main"], [arm]):
                if key(s) not in records and key(s) not in claimed: return s, selections
        except KeyError: pass
    return None, selections

def all_selections(world: str, records: dict) -> dict:
    """The choices the records make in every phase (`PHASES`, whichever phases this run was asked for: a worker's analysis
    reports every choice): `main`'s arm by arm, so that a selection run still missing for one arm (or a phase waiting
    for runs) hides no other choice."""
    out = {}
    recorded_choices(world, records, out, cfg)
    for ph in PHASES[1:]: out.update(next_spec(world, records, [ph])[1])
    return out


# %% [markdown]
# Running a spec: the backbone — trained by `motion_nbs.cpfs.train` (or reused from `runs_dir`), the random
# initial weights with calibrated batch norm, or the ceiling network — then `transfer.evaluate_transfer`.

# %%
def backbone_of(s: dict, frames: dict):
    "The folded backbone of a spec, a note, and (for `supervised`) the ceiling's own scores."
    kw = dict(batch_size=cfg["batch_size"], num_pixels=cfg["num_pixels"], image_size=cfg["image_size"], pool_size=cfg["pool_size"],
              world=s["world"], seed=s["seed"], device=str(dev), progress=False)
    if s["arm"] == "supervised":
        t = time.time()
        c = supervised_ceiling(frames, 10_000 + s["seed"], cfg["ceiling_iters"], cfg["ceiling_lr"], dev)
        return c.pop("backbone"), f"trained end to end on the labels in {time.time() - t:.0f} s", c
    if s["arm"] == "random":
        net = build_cpfs_model(CPFSConfig.from_preset("cpu", loss="ce", **kw)).net.backbone.to(dev)
        return fold_batchnorm(calibrate_batchnorm(net, frames["train"]["image"])), "random init, batch norm calibrated", None
    if s["arm"] == "s3":   # the AlexNet FCN-32s S3-CNN: the same trunk, batch, crops, scene pool and steps as the CPFS arms
        ref = CPFSConfig.from_preset("cpu", loss="ce", **kw)
        name = f"{s['world']}_s3_{cfg['s3_loss']}_lr{s['lr']:g}_{s['steps']}_seed{s['seed']}"
        if (runs / name / "model.pt").exists(): note = f"reused {name}"
        else:
            t = time.time()
            s3_train(S3Config.from_preset("cpu", model="alexnet_fcn32", data=s["world"], loss=cfg["s3_loss"], score_init="normal", lr=s["lr"],
                                          num_iters=s["steps"], batch_size=ref.batch_size, image_size=ref.image_size, pool_size=ref.pool_size,
                                          seed=s["seed"], out_dir=str(runs / name), device=str(dev), progress=False))
            note = f"trained in {time.time() - t:.0f} s"
        return fold_batchnorm(load_s3(runs / name).backbone.trunk).to(dev), note, None
    name = f"{s['world']}_{s['arm']}_lr{s['lr']:g}" + (f"_s{s['sigma2']:g}" if s["sigma2"] else "") \
        + (f"_t{s['temperature']:g}" if s["temperature"] != 1 else "") + f"_{s['steps']}_seed{s['seed']}"
    want = CPFSConfig.from_preset("cpu", loss=s["arm"], lr=s["lr"], num_iters=s["steps"], out_dir=str(runs / name), temperature=s["temperature"],
                                  **({"sigma": s["sigma2"]} if s["sigma2"] else {}), **kw)
    if finished_run(want): return load_cpfs(runs / name).backbone.to(dev), f"reused {name}", None
    t = time.time()
    train(want)
    return load_cpfs(runs / name).backbone.to(dev), f"trained in {time.time() - t:.0f} s", None

def run_spec(s: dict, frames: dict) -> dict:
    t = time.time()
    backbone, note, ceiling = backbone_of(s, frames)
    ev = evaluate_transfer(backbone, frames, 10_000 + s["seed"], cfg["num_probe"], cfg["budgets"], ("cls", "seg"), cfg["ft_lrs"], cfg["ft_iters"],
                           cfg["probe_layers"])
    rec = dict(s, **ev, note=note, seconds=round(time.time() - t, 1))
    if ceiling: rec["ceiling"] = ceiling
    return rec

def load_records(world: str) -> dict:
    path = recs_dir / f"{world}.json"
    return {key(r): r for r in json.loads(path.read_text())} if path.exists() else {}

def save_records(world: str, records: dict):
    recs_dir.mkdir(parents=True, exist_ok=True)
    with atomic_write(recs_dir / f"{world}.json") as tmp: tmp.write_text(json.dumps(list(records.values()), indent=1))


# %% [markdown]
# **Several workers, one world.** Workers on one machine may share a world (`core.RunClaims`): each takes the next
# spec under the world's lock, reading the records as they are then and skipping the specs that other live workers
# have claimed (a killed worker's claims are ignored), and merges a finished run into the records file under the same
# lock, so no worker overwrites another's runs. A worker whose next spec waits for a claimed run (a choice needs its
# score) polls until that run is recorded or its worker has gone.

# %%
from motion_nbs.core import RunClaims

def record_run(claims: RunClaims, s: dict, rec: dict):
    "Merge a finished run into its world's records file, under the lock: other workers' runs are kept."
    with claims.lock():
        records = load_records(s["world"])
        records[key(s)] = rec
        save_records(s["world"], records)   # complete, or the previous file


# %%
if run:
    size = CPFSConfig.from_preset("cpu", image_size=cfg["image_size"]).image_size
    t_start, stopped = time.time(), False
    for world in cfg["worlds"]:
        frames, claims = None, RunClaims(runs / "claims" / world)
        for s in claims.take(lambda busy: next_spec(world, load_records(world), claimed=busy)[0], key, message=f"{world}: waiting for other workers' runs"):
            if max_hours is not None and time.time() - t_start >= 3600 * max_hours: stopped = True; break   # `break` releases the claim
            if frames is None: frames = world_frames(world, size, cfg["num_train"], cfg["num_valid"], cfg["num_test"], cache_dir=runs)
            rec = run_spec(s, frames)
            record_run(claims, s, rec)
            ft = " ".join(f"{k} {100 * v['test']:.1f} (valid {100 * v['valid']:.1f})" for k, v in rec["fine_tune"].items())
            print(f"{world} {s['phase']} {s['arm']} seed {s['seed']} lr {s['lr']} s2 {s['sigma2']} t {s['temperature']} steps {s['steps']}: "
                  f"conv3 probe {100 * rec['probe']['relu3']['accuracy']:.1f} | {ft} | {rec['note']}, {rec['seconds']} s", flush=True)
        if stopped: print(f"max_hours={max_hours} reached: stopped; run again to resume"); break
    print(f"sweep loop: {time.time() - t_start:.0f} s")

# %% [markdown]
# ## Analysis
#
# For each world: the choices (`lr_selection`, `sigma_selection`), then the runs at the chosen settings, and
# for each pair — CE − flow classification, KTA − flow classification (and, as floors, each against random) —
# and metric — segmentation mIoU after fine-tuning (`seg_1000`), the conv3 probe (`probe_relu3`),
# classification top-1 after fine-tuning (`cls_1000`) — the per-seed paired difference: mean, 95 % CI, paired
# $t$-test, and the p-value Holm-corrected over the family of all CPFS-vs-flow-classification comparisons
# (the floors, the extension and the S3 arm are each corrected within their own family; the two-seed budget
# check is descriptive). The verdict uses the corrected p-value. Beside each comparison, the smallest true difference that a paired
# $t$-test with its $n$ and spread would detect 80 % of the time: where it is larger than the differences that
# matter (a few points), a "not resolved" says the comparison is underpowered, not that the arms are equal —
# classification after fine-tuning had a paired SD of 10.5 points in `03_cpfs_transfer`. The **trend**: each world's
# mean difference regressed on the world's manipulation statistic (least squares; slope, its 95 % CI and p-value on
# $n_\text{worlds} - 2$ degrees of freedom): does CPFS gain on flow classification as the motion gets more ambiguous?
# The world is what was manipulated, so the worlds are the sample; pooling every seed's difference into one fit
# (`seed_level`, printed beside it) would count five seeds of one world as five independent views of the line and
# overstate its precision whenever the worlds stray from a straight line.

# %%
from scipy import stats
from motion_nbs.data import manipulation_statistics
from motion_nbs.transfer import SPLIT_SEEDS, holm, labelled_frames, paired_comparison

# %%
PAIRS = (("ce", "flow_cls"), ("kta", "flow_cls"))
FLOORS = (("flow_cls", "random"), ("ce", "random"), ("kta", "random"))
THESIS = "thesis (tables 3.1, 3.2): CE − flow cls. +2.6 VOC12 seg mIoU, +1.0 VOC07 cls mAP, +3.1 conv3 ImageNet probe"

def test_metrics(rec: dict) -> dict:
    "A record's test metrics in %: probe_relu1..5 (top-1) and the fine-tunings (cls top-1, seg mIoU)."
    return {**{f"probe_{l}": 100 * v["accuracy"] for l, v in rec["probe"].items()}, **{k: 100 * v["test"] for k, v in rec["fine_tune"].items()}}

def chosen_runs(world: str, records: dict, arm: str, selections: dict, steps: int, temperature=1.0) -> dict:
    "{seed: record} of an arm at its chosen setting with `steps` pre-training steps (random, supervised: every seed)."
    out = {}
    for r in records.values():
        if r["world"] != world or r["arm"] != arm or r["temperature"] != temperature: continue
        if arm in (*PRETRAINED, "s3"):
            sel = selections.get((world, arm))
            if sel is None or r["lr"] != sel["lr"] or r["sigma2"] != sel["sigma2"] or r["steps"] != steps: continue
        out[r["seed"]] = r
    return out

def compare(a: dict, b: dict, metric: str) -> dict | None:
    "The paired comparison of two arms' {seed: record} over their common seeds (None below two)."
    common = sorted(set(a) & set(b))
    if len(common) < 2: return None
    xa, xb = [test_metrics(a[s])[metric] for s in common], [test_metrics(b[s])[metric] for s in common]
    return dict(seeds=common, differences=[u - v for u, v in zip(xa, xb)], **paired_comparison(xa, xb))

def _shown(v: float | None) -> float | None:
    "A rate as the results show it: 1e-4, not the grid's 9.999999999999999e-05 (the records keep the exact value they were run with)."
    return None if v is None else float(f"{v:.10g}")

def analyse(all_records: dict, settings: dict) -> dict:
    metrics = metric_names(settings)
    worlds_out, runs_out, lr_sel, sig_sel, comps, progress = [], [], [], [], [], []
    for world, records in all_records.items():
        nxt, selections = next_spec(world, records)[0], all_selections(world, records)
        progress.append(dict(world=world, finished_runs=len(records), next=nxt))
        man = manipulation_statistics(world, settings["stats_frames"], seed=0, size=(128, 128))
        sup = [r for r in records.values() if r["arm"] == "supervised"]
        worlds_out.append(dict(name=world, settings=OBJECT_WORLDS[world], manipulation=man,
                               ceiling_accuracy=sup[0]["ceiling"]["accuracy"] if sup else None,
                               ceiling_miou=sup[0]["ceiling"]["miou"] if sup else None, prior=settings["priors"][world]))
        for r in records.values():
            runs_out.append(dict(world=world, arm=r["arm"], phase=r["phase"], seed=r["seed"], lr=_shown(r["lr"]), sigma2=r["sigma2"],
                                 temperature=r["temperature"], steps=r["steps"], valid={k: v["valid"] for k, v in r["fine_tune"].items()},
                                 test=test_metrics(r), seconds=r["seconds"]))
        for (w, arm), sel in selections.items():
            edge = lambda grid, v: len(grid) > 1 and v in (min(grid), max(grid))   # at an edge once the extensions are spent: the optimum may lie beyond
            lr_sel.append(dict(world=w, arm=arm, grid=[_shown(v) for v in sel["lr_scores"]], valid=list(sel["lr_scores"].values()), chosen=_shown(sel["lr"]),
                               at_edge=edge(sel["lr_scores"], sel["lr"])))
            if "sigma_scores" in sel:
                sig_sel.append(dict(world=w, arm=arm, lr=_shown(sel["lr"]), grid=list(sel["sigma_scores"]), valid=list(sel["sigma_scores"].values()),
                                    chosen=sel["sigma2"], at_edge=edge(sel["sigma_scores"], sel["sigma2"])))
        arms = {a: chosen_runs(world, records, a, selections, settings["num_iters"]) for a in ("random", *PRETRAINED)}
        for family, pairs in (("cpfs_vs_flow_cls", PAIRS), ("floor", FLOORS)):
            for a, b in pairs:
                for m in metrics:
                    c = compare(arms[a], arms[b], m)
                    if c: comps.append(dict(world=world, pair=f"{a} - {b}", metric=m, family=family, n=c["n"], seeds=c["seeds"],
                                            mean=c["mean_difference"], ci95=c["ci95"], p=c["p"], differences=c["differences"]))
        if (world, "ce") in selections:   # the extension: CE with a temperature against CE and against flow classification
            ext = chosen_runs(world, records, "ce", selections, settings["num_iters"], temperature=settings["temperature"])
            for other, name in ((arms["ce"], "ce"), (arms["flow_cls"], "flow_cls")):
                for m in metrics:
                    c = compare(ext, other, m)
                    if c: comps.append(dict(world=world, pair=f"ce_t{settings['temperature']:g} - {name}", metric=m, family="extension",
                                            n=c["n"], seeds=c["seeds"], mean=c["mean_difference"], ci95=c["ci95"], p=c["p"], differences=c["differences"]))
        if (world, "s3") in selections:   # chapter 4's S3-CNN against the other pre-trainings and the floor
            s3 = chosen_runs(world, records, "s3", selections, settings["num_iters"])
            for other in ("flow_cls", "ce", "kta", "random"):
                for m in metrics:
                    c = compare(s3, arms[other], m)
                    if c: comps.append(dict(world=world, pair=f"s3 - {other}", metric=m, family="s3", n=c["n"], seeds=c["seeds"],
                                            mean=c["mean_difference"], ci95=c["ci95"], p=c["p"], differences=c["differences"]))
        if all((world, a) in selections for a in ("ce", "flow_cls")):   # the budget check: too few seeds for a test; descriptive
            ce5 = chosen_runs(world, records, "ce", selections, settings["budget_iters"])
            fc5 = chosen_runs(world, records, "flow_cls", selections, settings["budget_iters"])
            for m in metrics:
                common = sorted(set(ce5) & set(fc5))
                if common:
                    d = [test_metrics(ce5[s])[m] - test_metrics(fc5[s])[m] for s in common]
                    comps.append(dict(world=world, pair="ce - flow_cls", metric=m, family=f"budget_{settings['budget_iters']}", n=len(d),
                                      seeds=common, mean=float(np.mean(d)), ci95=None, p=None, differences=d))
    for c in comps:   # the smallest true difference a paired t-test of this n and spread detects 80 % of the time (5 % level)
        d = c["differences"]
        c["detectable_80"] = (float((stats.t.ppf(0.975, len(d) - 1) + stats.t.ppf(0.8, len(d) - 1)) * np.std(d, ddof=1) / np.sqrt(len(d)))
                              if len(d) > 1 else None)
    for family in ("cpfs_vs_flow_cls", "floor", "extension", "s3"):   # Holm within each family of tests (the budget check has none)
        fam = [c for c in comps if c["family"] == family]
        for c, ph in zip(fam, holm([c["p"] for c in fam])): c["p_holm"] = ph
    for c in comps:
        p = c.get("p_holm", c["p"])
        c["verdict"] = None if p is None else "not resolved" if not p < 0.05 else "holds" if c["mean"] > 0 else "reversed"
    return dict(worlds=worlds_out, runs=runs_out, lr_selection=lr_sel, sigma_selection=sig_sel, comparisons=comps,
                trend=trends(comps, worlds_out, settings["min_trend_worlds"], metrics), progress=progress, thesis=THESIS)

def line_fit(xs, ys) -> dict:
    "Least-squares slope of ys on xs with its 95 % CI and p-value (None below three points: no residual degrees of freedom)."
    fit = stats.linregress(xs, ys)
    if len(xs) < 3: return dict(slope=float(fit.slope), ci95=None, p=None, n=len(xs))
    half = float(stats.t.ppf(0.975, len(xs) - 2) * fit.stderr)
    return dict(slope=float(fit.slope), ci95=[float(fit.slope - half), float(fit.slope + half)], p=float(fit.pvalue), n=len(xs))

def trends(comps, worlds_out, min_worlds: int, metrics) -> list:
    """Per pair, metric and manipulation statistic: the slope of the CPFS − flow classification difference against the
    world's statistic. The world is the unit that was manipulated, so the slope, its CI and p come from the worlds' mean
    differences (n worlds, n − 2 degrees of freedom); `seed_level` fits every seed's difference instead, which treats
    the seeds of one world as independent evidence about the line and overstates its precision when worlds stray from it."""
    out = []
    stat = {w["name"]: w["manipulation"] for w in worlds_out}
    for pair in (f"{a} - {b}" for a, b in PAIRS):
        for m in metrics:
            rows = [c for c in comps if c["family"] == "cpfs_vs_flow_cls" and c["pair"] == pair and c["metric"] == m]
            if len(rows) < min_worlds: continue   # a slope over fewer worlds says little
            for x_name in ("figure_ground_entropy_share", "relative_motion_under_1px"):
                fit = line_fit([stat[c["world"]][x_name] for c in rows], [c["mean"] for c in rows])
                seed_level = line_fit([stat[c["world"]][x_name] for c in rows for _ in c["differences"]], [d for c in rows for d in c["differences"]])
                out.append(dict(pair=pair, metric=m, statistic=x_name, slope=fit["slope"], ci95=fit["ci95"], p=fit["p"], worlds=len(rows),
                                points={c["world"]: [stat[c["world"]][x_name], c["mean"]] for c in rows}, seed_level=seed_level))
    return out


# %%
# line_fit on a hand case (slope 1.5, intercept -1/6; residuals 1/6, -1/3, 1/6: stderr sqrt(1/6)/sqrt(2)), and trends
# fitting the worlds' means: three worlds whose seeds scatter around means on a line of slope -100 give exactly -100
_f = line_fit([0, 1, 2], [0, 1, 3])
assert abs(_f["slope"] - 1.5) < 1e-12 and abs(_f["ci95"][1] - 1.5 - stats.t.ppf(0.975, 1) * (1 / 6) ** 0.5 / 2 ** 0.5) < 1e-9
assert line_fit([0, 1], [0, 1])["ci95"] is None
_w = [dict(name=n, manipulation=dict(figure_ground_entropy_share=x, relative_motion_under_1px=0.1 * i)) for i, (n, x) in enumerate(zip("abc", (0.0, 0.05, 0.1)))]
_c = [dict(family="cpfs_vs_flow_cls", pair="ce - flow_cls", metric="seg_1000", world=w["name"], mean=-100 * x, differences=[-100 * x - 3, -100 * x + 3, -100 * x])
      for w, x in zip(_w, (0.0, 0.05, 0.1))]
_t = trends(_c, _w, 3, ["seg_1000"])[0]
assert abs(_t["slope"] + 100) < 1e-9 and _t["worlds"] == 3 and _t["seed_level"]["n"] == 9 and abs(_t["seed_level"]["slope"] + 100) < 1e-9

# %%
if run:
    # every world with records (several sweeps may run side by side, each on its own worlds), in the sweep's order
    all_records = {w: load_records(w) for w in OBJECT_WORLDS if w in cfg["worlds"] or (recs_dir / f"{w}.json").exists()}
    priors = {w: float(torch.bincount(labelled_frames(w, cfg["num_test"], SPLIT_SEEDS["test"], size, cache_dir=runs, progress=False)["label"],
                                      minlength=3).max()) / cfg["num_test"] for w in all_records}
    results = dict(preset=preset, settings=dict(cfg, priors=priors, eval_seed_offset=10_000), **analyse(all_records, dict(cfg, priors=priors)))
    out_json.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(out_json) as tmp: tmp.write_text(json.dumps(results, indent=1))
elif SAVED.exists(): results = json.loads(SAVED.read_text())
else: results = None; print("no saved results yet: run the sweep with -p preset full")
if run and any(c["family"] == "cpfs_vs_flow_cls" for c in results["comparisons"]):   # this run's answer (the saved one opens the page)
    fig = ambiguity_forest(results)
    fig.savefig(out_json.with_suffix(".png"), dpi=80, bbox_inches="tight")
    plt.show()
if results: fig = sweep_figure(results)

# %% [markdown]
# ## What came out
#
# Rendered from the results file: the worlds and their manipulation statistics, the ceilings, the choices
# made on validation frames, the comparisons and the trend, and how far the sweep has got.

# %%
if results:
    if run: display(Markdown(answer(results)))
    display(Markdown(worlds_table(results)))
    for p in results["progress"]:
        nxt = p["next"]
        print(f"{p['world']}: {p['finished_runs']} runs recorded; "
              + ("complete" if nxt is None else f"next: {nxt['phase']} {nxt['arm']} seed {nxt['seed']} lr {nxt['lr']} sigma2 {nxt['sigma2']}"))
    edge_note = lambda s: " (at the edge of the extended grid)" if s.get("at_edge") else ""
    for s in results["lr_selection"]:
        print(f"{s['world']} {s['arm']}: learning rate " + ", ".join(f"{g:g}: {v:.1f}" for g, v in zip(s["grid"], s["valid"])) + f" -> {s['chosen']:g}{edge_note(s)}")
    for s in results["sigma_selection"]:
        print(f"{s['world']} {s['arm']}: sigma^2 " + ", ".join(f"{g:g}: {v:.1f}" for g, v in zip(s["grid"], s["valid"])) + f" -> {s['chosen']:g}{edge_note(s)}")
    display(Markdown(comparisons_table(results)))
    if results["trend"]: trend_figure(results); plt.show()
    for t in results["trend"]:
        ci = "no CI below 3 worlds" if t["ci95"] is None else f"95% CI {t['ci95'][0]:+.1f} to {t['ci95'][1]:+.1f}, p = {t['p']:.3g}"
        sl = t["seed_level"]
        print(f"trend {t['pair']} {t['metric']} vs {t['statistic']}: slope {t['slope']:+.1f} ({ci}), {t['worlds']} worlds' means; "
              f"pooling the {sl['n']} seed differences: {sl['slope']:+.1f}" + ("" if sl["ci95"] is None else f" (CI {sl['ci95'][0]:+.1f} to {sl['ci95'][1]:+.1f})"))
    print(results["thesis"])
