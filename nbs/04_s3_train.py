# %% [markdown]
# # Training S3-CNN (papermill experiment)
#
# > Train an FCN-8s to segment single frames so that the optical flow inside each segment is coherent (affine, rigid or low-entropy), then compare its segments with the ground truth and with a fixed grid.

# %% [markdown]
# *Default run: **22 s** on 2 CPU cores with the default parameters (measured by `make book` on 6 Dec 2026, reusing the training and caches that earlier runs left in the runs folder, `core.runs_dir`; where a first run on a new machine takes longer, the chapter says so).*

# %% [markdown]
# **The question** (chapter 4): a network sees one frame and is trained only to cut it into segments inside which
# the optical flow is simple — affine (eq 4.4), rigid (eqs 4.5–4.8) or low-entropy (eqs 4.9–4.11). Does it learn
# to segment the scene's parts and objects, which it was never shown?
#
# **The answer** for the run this notebook makes (by default `single_cube` with the affine loss at the `cpu`
# preset: the regions are the cube's faces and the background) is the figure and the lines after the training
# cell: the matched mIoU of its segments against the ground truth on test frames, between a floor (a fixed grid of
# as many cells, which ignores the image) and two references (the object oracle, which knows only what is
# object and what is background, and the resolution ceiling of the network's output stride). Over seeds, with
# appearance baselines and paired statistics, the question is answered in `04_s3_train_seeds`.

# %% tags=["parameters"]
#| code-fold: true
loss = "affine"         # "affine" (eq 4.4), "rigid" (eq 4.5-4.8) or "entropy" (eq 4.9-4.11)
data = "single_cube"    # "single_cube", "multi_cube", "shapes" (rendered, exact flow) or "videos" (sample clips, DIS flow)
num_segments = 5        # L: segments the network predicts
temperature = 30.0      # beta of the soft-mask head (30 or 10 in the thesis)
preset = "cpu"          # "cpu" (minutes on a laptop) or "paper" (the thesis' network and optimiser, for a GPU)
num_iters = None        # training steps (None: the preset's)
batch_size = None       # images per step (None: the preset's)
image_size = None       # side of the square training crops (None: the preset's)
seed = 0                # seeds initialisation, data and augmentation
device = None           # "cpu", "cuda", "cuda:1", "mps"; None: CUDA if present, else MPS, else the CPU
amp = "auto"            # mixed precision: "bf16", "fp16" or "off"; "auto": bf16 on CUDA, off on the CPU
num_workers = 0         # data-loading processes (they also render the scene pool)
out_dir = None          # checkpoints, metrics and results; None: _runs/s3_{data}_{loss} at the checkout's root (`core.runs_dir`)

# %%
#| code-fold: true
from motion_nbs.core import reject_unknown_parameters

# %%
#| code-fold: true
reject_unknown_parameters()  # a -p name this notebook does not define stops the run here, listing the valid ones

# %%
#| code-fold: true
from pathlib import Path
from motion_nbs.core import runs_dir
from motion_nbs.s3 import S3Config

# %%
#| code-fold: true
out_dir = out_dir or str(runs_dir(f"s3_{Path(str(data)).name}_{loss}"))   # one folder per data and loss, wherever the notebook was started from
config = S3Config.from_preset(preset, loss=loss, data=data, num_segments=num_segments, temperature=temperature,
                              num_iters=num_iters, batch_size=batch_size, image_size=image_size, seed=seed, device=device,
                              amp=amp, num_workers=num_workers, out_dir=out_dir)
config  # a bad parameter raises a ValueError naming it and the valid choices

# %% [markdown]
# ## Train
#
# The learner (chapter 02c) runs the optimisation: Adam, validation on held-out frames, the best
# checkpoint kept, checkpoints written atomically (a killed run resumes where it stopped when the
# notebook is run again with the same `out_dir`).

# %%
#| slow
from motion_nbs.s3 import train

# %%
#| slow
#| code-fold: true
result = train(config)
print({k: v for k, v in result.items() if k not in ("model", "heldout", "weights_sha256")})

# %%
#| slow
import matplotlib.pyplot as plt
import torch.nn.functional as F
from IPython.display import Markdown, display
from motion_nbs.s3 import matched_miou


# %%
#| slow
#| code-fold: true
def references(heldout: dict, stride: int) -> dict:
    """The object oracle (background against every object, from the ground truth) and the stride's resolution ceiling
    (the one-hot ground truth average-pooled by the output stride, upsampled bilinearly, argmax), on `heldout`'s frames."""
    gt = heldout["target"]
    onehot = F.one_hot(gt, int(gt.max()) + 1).permute(0, 3, 1, 2).float()
    coarse = F.interpolate(F.avg_pool2d(onehot, stride), size=gt.shape[-2:], mode="bilinear", align_corners=False)
    return {"object oracle": matched_miou((gt > 0).long(), gt), f"stride-{stride} ceiling": matched_miou(coarse.argmax(1), gt)}

if "test_miou" in result and "target" in result["heldout"]:
    refs = references(result["heldout"], result["config"]["output_stride"])
    rows = {f"grid of {num_segments} (test)": result["test_miou_grid"], f"S3-CNN, {loss} (test)": result["test_miou"],
            f"S3-CNN, {loss} (validation)": result["valid_miou"], **{f"{k} (validation)": v for k, v in refs.items()}}
    fig, ax = plt.subplots(figsize=(6, 2.2))
    ax.plot(list(rows.values()), range(len(rows)), "o")
    ax.set_yticks(range(len(rows)), list(rows)); ax.invert_yaxis(); ax.set_xlim(0, 1)
    ax.set_xlabel("matched mIoU"); ax.set_ylabel("segmentation"); plt.show()
    target = "faces" if data == "single_cube" else "objects"
    display(Markdown(f"**Answer for this run** ({result['steps']} steps, one seed): matched mIoU against the {target} "
                     f"{result['test_miou']:.3f} on {result['test_num_frames']} test frames, against {result['test_miou_grid']:.3f} "
                     f"for the grid and {refs['object oracle']:.3f} for the object oracle — the network "
                     + ("separates more than what moves" if result["valid_miou"] > refs["object oracle"] else
                        "does not get past the object oracle") + "."))
else:
    print("no ground truth for real videos: the segments are shown below")

# %% [markdown]
# ## Running it
#
# Run it from the command line with any parameter of the parameters cell at the top, e.g.
#
# ```bash
# papermill nbs/04_s3_train.ipynb _runs/04_s3_train.ipynb                              # single_cube, affine
# papermill nbs/04_s3_train.ipynb _runs/s3_multi.ipynb -p data multi_cube -p loss rigid
# papermill nbs/04_s3_train.ipynb _runs/s3_paper.ipynb -p preset paper -p data videos -p loss entropy -p num_segments 10
# ```
#
# or, for several GPUs, `torchrun --nproc_per_node=8 $(which motion_nbs_train) --task motion_nbs.s3:train --loss affine ...`
# with the same parameters. The `cpu` preset takes about a quarter of an hour on a 2-core laptop (the rigid loss
# twice that); `paper` uses the
# thesis' network and optimiser (FCN-8s on VGG-16, 224×224 crops, Adam at $10^{-4}$, section 4.4).
#
# The training and figure cells carry nbdev's `slow` flag: the book's quick test (`nbdev_test`) checks
# only the parameter validation here, while papermill, JupyterLab and the smoke test in
# `tests/test_s3_train.py` run everything.

# %% [markdown]
# Training speed on this machine, from the metrics file (and, on a GPU, the memory peak). On one shared CPU
# thread the `cpu` preset trained at 70–73 images/s with the affine loss (the seeds experiment's three runs:
# 12,000 steps of 8 images in 22–23 min each). The `paper` preset has not
# yet been run on a GPU by the book's developers (none was available); the line below reports it where
# it runs.

# %%
#| slow
import torch
from motion_nbs.learner import images_per_second

# %%
#| slow
precision = "float32" if result["amp"] == "off" else f"{result['amp']} autocast"
if result["steps"] >= 2 * config.log_every:   # two timed log lines at least
    print(f"{result['device']}, {precision}, {result['world_size']} process(es): "
          f"{images_per_second(result['metrics_path'], config.batch_size):.1f} training images/s")
if result["device"].startswith("cuda"): print(f"GPU memory peak: {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB")

# %%
#| slow
from motion_nbs.learner import plot_metrics

# %%
#| slow
ax = plot_metrics(result["metrics_path"], logy=True)

# %% [markdown]
# ## Segments on held-out frames
#
# As in figs 4.3/4.4: each frame, its soft segments as a colour map over it (one colour per segment,
# uncertain pixels blended), the flow the loss saw (the network did not), and the ground-truth regions
# (cube faces for `single_cube`, objects otherwise).

# %%
#| slow
from motion_nbs.s3 import show_segments

# %%
#| slow
fig = show_segments(result["model"], result["heldout"], num_images=6)

# %% [markdown]
# ## Matched mIoU
#
# Segment ids are arbitrary, so each image's segments are matched one-to-one to its ground-truth
# regions by the Hungarian algorithm before the IoU is taken (`matched_miou`); the background is one
# of the regions. The baseline is a fixed grid of `num_segments` cells that ignores the image.
# Targets at the `cpu` preset: `single_cube` + affine ≥ 0.7 (faces), `multi_cube` + rigid ≥ 0.5
# (objects). Real videos have no ground truth: only the figure above.

# %%
#| slow
if "test_miou" in result:
    target = "faces" if data == "single_cube" else "objects"
    for split in ("valid", "test"):
        print(f"matched mIoU vs {target} on {result[split + '_num_frames']} {split} frames: S3-CNN {result[split + '_miou']:.3f}, "
              f"grid of {num_segments} {result[split + '_miou_grid']:.3f}")
    print(f"({result['steps']} steps, {result['seconds'] / 60:.1f} min)")
else:
    print("no ground truth for real videos")

# %% [markdown]
# Two reference points put the number in context. The *object oracle* segments each frame into
# background and object pixels from the ground truth: a network that has learned only what moves
# scores this. The *resolution ceiling* is the ground truth itself passed through what the network can
# express: its scores live on a grid of the output stride (8 for FCN-8s, 2 for the `cpu` preset's
# finer head) and are upsampled bilinearly, so we average-pool the one-hot ground truth by the stride,
# upsample it bilinearly and take the argmax. No network of that stride and crop size can beat its
# ceiling by much.

# %%
#| slow
if "target" in result["heldout"]:
    print("; ".join(f"{k} {v:.3f}" for k, v in references(result["heldout"], result["config"]["output_stride"]).items())
          + f"; S3-CNN {result['valid_miou']:.3f} (validation frames)")

# %% [markdown]
# ## What the `cpu` preset reaches
#
# Measured on 32 held-out frames with the `cpu` preset: `fcn8s_small` with output stride 2, 96×96
# crops, batch 8, a pool of 192 rendered scenes, Adam at $10^{-3}$ with a cosine decay to 0 (12,000
# steps; 24,000 for the rigid loss), $L = 5$, $\beta = 30$, the last step's weights. Beside it the
# reference points of the previous cell:
#
# | run | matched mIoU | grid of 5 | object oracle | stride-2 ceiling | target | wall time |
# |---|---|---|---|---|---|---|
# | `single_cube` + affine (this notebook's default) | **0.728** (a second run, on one thread: 0.761) | 0.165 | 0.389 | 0.976 | ≥ 0.7 | 17 min on two cores (the whole notebook) |
# | `multi_cube` + rigid (`-p data multi_cube -p loss rigid`) | **0.643** | 0.252 | 0.378 | 0.982 | ≥ 0.5 | 62 min on one thread (the other core busy for its first 25 min) |
#
# **These are single illustrative runs, not the chapter's result.** Each is one training run with seed 0
# (this notebook's default), scored on the validation frames (seed + 2,000,003): `single_cube` + affine
# 0.728 with torch's default of two CPU threads and 0.761 with the same seed on one thread; `multi_cube` +
# rigid 0.643 on one thread. The numbers to quote are `04_s3_train_seeds`' (saved in
# `nbs/04_s3_train_results.json`): 10 seeds per setting with random score layers (`score_init="normal"`), on one
# thread, scored on test frames nobody tuned on, beside colour k-means, k-means on the true flow and the
# object/background oracle on the same frames. There the same seed 0 gives 0.744 (affine) and 0.670 (rigid;
# validation 0.661, against 0.643 here), and the means over seeds are 0.727 ± 0.020 and 0.639 ± 0.121: both
# targets are met on average. With the thesis' zero-initialised score layers (this notebook's default; 3 seeds, saved
# apart) the means were 0.655 ± 0.128 and 0.511 ± 0.150, and rigid gave 0.341 with seed 0: the affine target was not
# met on average. One run of this notebook can land on either side of a target;
# `04_s3` ("The zero initialisation is a saddle") gives the reason why the same seed can end differently.
#
# In these two runs both targets are met. The `single_cube` segments are the cube's faces, with a thin rim segment along
# the silhouette; the `multi_cube` segments are the background and the cubes, one segment each, with
# cubes assigned to segments by where they are in the image (saved figures at the end). Getting there
# took a finer head, faster-rotating cubes and, for the rigid loss, twice the steps; the next two
# sections say why.
#
# ## How the preset was found
#
# The first `cpu` preset trained the thesis' FCN-8s (output stride 8) on 64×64 crops for 1,200
# steps, on `single_cube` data whose cube rotated 2–5° per frame; it reached 0.417 on `single_cube`
# (4,000 steps: 0.44; 128×128 and 6,000 steps: 0.457) and 0.254 on `multi_cube` (grid 0.253). Three
# things held `single_cube` back, each measured:
#
# - **Resolution.** A cube covers about 25 pixels of a 64-pixel crop and a side face often only 3–6;
#   the stride-8 ceiling is 0.698 at 64 pixels — *below* the target — and 0.816 at 96.
# - **Faces whose motions hardly differ.** Under 2–5° per frame the affine motions of adjacent faces
#   differ by a fraction of a pixel: with hard masks the ground-truth faces scored $6.8\times10^{-5}$, the
#   object oracle 0.0136 and one segment 0.353, while soft, misplaced object boundaries cost the trained
#   network 0.05–0.07, so splitting faces was worth almost nothing to the loss. The thesis does not
#   give its cube's speeds; `single_cube` now rotates 6–15° per frame (chapter 02a).
# - **A coarse head.** Continuing FCN-8s' skips to `pool2` and `pool1` (output stride 2) at 64 pixels
#   lowered the loss (0.037 against 0.051) but, with the slow rotation, not the mIoU (0.452 against
#   0.457): its segments were background, a rim along the silhouette and the interior — a cheaper way
#   down the affine loss than separating faces whose motions barely differ. With the faster rotation
#   the stride-2 network splits cubes by motion (0.514 after 3,000 steps; $\beta = 10$: 0.504; $L = 4$,
#   the number of ground-truth regions: 0.494).
#
# Together — 96-pixel crops, output stride 2, 6–15° per frame — the matched mIoU climbs steadily with
# training: in a plain Adam loop 0.425 (1,000 steps), 0.558 (3,000), 0.624 (5,000), 0.707 (7,000) and
# 0.715 (9,000 of a 9,000-step cosine schedule). Through `train` (same recipe, its own data order) 9,000
# steps gave 0.676 and 12,000 give 0.728 and 0.761 (two runs whose floating-point sums differ: two threads and one), hence the preset. Random instead of zero-initialised score
# layers (FCN's zero initialisation leaves the $L$ segments exactly symmetric, a saddle point that only
# rounding breaks) made no difference at 3,000 steps (0.523 against 0.532), so the thesis' FCN
# initialisation stays the default. That was one run each, at one point of training, and says nothing about
# the spread over seeds; `S3Config(score_init="normal")` (chapter `04_s3`) keeps the random initialisation
# available for the seeds experiment to measure it.
#
# ## `multi_cube` + rigid: positions first, objects late
#
# The rigid loss does point to the objects: on 16 frames at 96 pixels with hard masks the ground-truth
# instances score $5\times10^{-10}$, the object oracle (background against all cubes) 0.367, the grid 0.567
# and one segment 2.35; merging one cube into the background costs 0.089 (median over 71 pairs),
# merging two cubes 0.048 (78 pairs). The network nevertheless learns in two stages. First it learns
# *positions*: the segments become a fixed partition of the image into quadrants, and the mIoU stays
# at the grid's level for thousands of steps. The background is a plane, and for a plane the 8-point
# fit is degenerate — a three-dimensional family of fundamental matrices fits it exactly — so every
# quadrant segment fits its share of the background *and* spends its remaining freedom on part of the
# cube in its quadrant; background pixels are equally well fitted by every segment and feel no pull
# to gather into one. Then, one at a time, segments give up the background and take whole cubes,
# wherever they are: after 9,000 steps one segment is "a cube" and the other four are still quadrants
# (second figure below, 0.332), and the mIoU jumps once most of them have turned. (The thesis makes the
# same observation on real videos, section 4.4.2: segments are tied to image positions, because the
# loss is invariant to which segment takes which object.)
#
# The second stage needs steps at a high learning rate. Runs with the preset's recipe (mIoU against
# the grid's 0.252):
#
# | run | mIoU |
# |---|---|
# | 3,000 steps, cosine | 0.287 |
# | 9,000 steps, cosine | 0.332 |
# | 12,000 steps, cosine (`train`) | 0.317 |
# | 27,000 steps, cosine (plain loop): at 9,000 / 12,000 / 18,000 / 21,000 / 27,000 steps | 0.338 / 0.527 / 0.595 / 0.595 / 0.602 |
# | 24,000 steps, cosine (`train`, the preset) | **0.643** |
#
# and variants of it at 3,000 steps, none of which shortens the first stage: $\beta = 10$ 0.279; the
# residual scale $10^{-2}$ instead of $10^{-3}$ (more of smooth-$L_1$'s quadratic zone) 0.269; a static
# camera (background flow 0) 0.271; raw pixel coordinates instead of $[-1, 1]$ (no normalisation at
# all, as the thesis has it) 0.197 — with a training loss of 0.020, far *below* the object oracle's,
# so the unnormalised fit rewards other partitions than objects.

# %%
from pathlib import Path
from IPython.display import Image, display

# %%
NBS = Path.cwd() if Path.cwd().name == "nbs" else Path.cwd() / "nbs"   # run from nbs/ (Jupyter) or the repository root (papermill)
for name in ("04_s3_train_single_cube_affine.jpg", "04_s3_train_multi_cube_rigid_9k.jpg", "04_s3_train_multi_cube_rigid.jpg",
             "04_s3_train_videos_entropy.jpg"):
    display(Image(filename=str(NBS / name)))

# %% [markdown]
# Saved held-out frames of the runs above (rows: frame, segments over it, flow, ground truth):
# `single_cube` + affine with the preset (the 0.761 run) (faces, and a thin rim segment along the silhouette where the
# soft masks mix the cube's motion with the background's); `multi_cube` + rigid after 9,000 steps
# (quadrants and one cube segment); and with the preset's 24,000 steps.
#
# The last figure is the thesis' own setting for the entropy loss (sections 4.1 and 4.4.2): **real video with computed
# flow**, on flow magnitudes. `-p data videos -p loss entropy` (the `cpu` preset, 12,000 steps, seed 0, zero-initialised
# score layers; 47 min on one thread beside two other jobs, 6 Dec 2026) trains on the sample clips `bikes` and
# `bigbuckbunny` with DIS flow (chapter 01) and shows held-out frames of another clip, `carphone` (rows: frame, segments,
# flow; no ground truth). One illustrative run, qualitative: the segments are mostly a partition of the image by
# position — a segment for the upper left, one for the upper right, one for the lower left — whose boundaries bend to
# follow some content (the man's jacket and bow tie take one segment, the striped seat another, patches of the window
# a fifth). That is what the thesis reports for its YFCC100m model (section 4.4.2): segments tied to image positions,
# because the loss does not care which segment takes which region.
#
# The thesis trained FCN-8s on VGG-16 for days on a GPU and shows `single_cube` results on its
# training frames (fig 4.3a) and `multi_cube` results on validation frames (fig 4.3b);
# `preset="paper"` with `image_size` 224 is that configuration.
