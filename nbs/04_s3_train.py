# %% [markdown]
# # Training S3-CNN (papermill experiment)
#
# > Train an FCN-8s to segment single frames so that the optical flow inside each segment is coherent (affine, rigid or low-entropy), then compare its segments with the ground truth and with a fixed grid.

# %% [markdown]
# Run it from the command line with any parameter of the next cell, e.g.
#
# ```bash
# papermill nbs/04_s3_train.ipynb _runs/04_s3_train.ipynb                              # single_cube, affine
# papermill nbs/04_s3_train.ipynb _runs/s3_multi.ipynb -p data multi_cube -p loss rigid
# papermill nbs/04_s3_train.ipynb _runs/s3_paper.ipynb -p preset paper -p data videos -p loss entropy -p num_segments 10
# ```
#
# or, for several GPUs, `torchrun --nproc_per_node=8 $(which motion_nbs_train) --task motion_nbs.s3:train --loss affine ...`
# with the same parameters. The `cpu` preset finishes in minutes on a 2-core laptop; `paper` uses the
# thesis' network and optimiser (FCN-8s on VGG-16, 224×224 crops, Adam at $10^{-4}$, section 4.4).
#
# The training and figure cells carry nbdev's `slow` flag: the book's quick test (`nbdev_test`) checks
# only the parameter validation here, while papermill, JupyterLab and the smoke test in
# `tests/test_s3_train.py` run everything.

# %% tags=["parameters"]
loss = "affine"         # "affine" (eq 4.4), "rigid" (eq 4.5-4.8) or "entropy" (eq 4.9-4.11)
data = "single_cube"    # "single_cube", "multi_cube", "shapes" (rendered, exact flow) or "videos" (sample clips, DIS flow)
num_segments = 5        # L: segments the network predicts
temperature = 30.0      # beta of the soft-mask head (30 or 10 in the thesis)
preset = "cpu"          # "cpu" (minutes on a laptop) or "paper" (the thesis' network and optimiser, for a GPU)
num_iters = None        # training steps (None: the preset's)
batch_size = None       # images per step (None: the preset's)
image_size = None       # side of the square training crops (None: the preset's)
seed = 0                # seeds initialisation, data and augmentation
out_dir = "_runs/s3"    # checkpoints, metrics and results go here

# %%
from motion_nbs.s3 import train_config

params = dict(loss=loss, data=data, num_segments=num_segments, temperature=temperature, preset=preset,
              num_iters=num_iters, batch_size=batch_size, image_size=image_size, seed=seed, out_dir=out_dir)
train_config(**params)  # raises a ValueError naming the bad parameter and the valid choices

# %% [markdown]
# ## Train
#
# The learner (chapter 02c) runs the optimisation: Adam, validation on held-out frames, the best
# checkpoint kept, checkpoints written atomically (a killed run resumes where it stopped when the
# notebook is run again with the same `out_dir`).

# %%
#| slow
from motion_nbs.s3 import train

result = train(**params)
print({k: v for k, v in result.items() if k not in ("model", "heldout")})

# %%
#| slow
from motion_nbs.learner import plot_metrics

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
if "miou" in result:
    target = "faces" if data == "single_cube" else "objects"
    print(f"matched mIoU vs {target} on {result['num_frames']} held-out frames: S3-CNN {result['miou']:.3f}, "
          f"grid of {num_segments} {result['miou_grid']:.3f}  ({result['steps']} steps, {result['seconds'] / 60:.1f} min)")
else:
    print("no ground truth for real videos")

# %% [markdown]
# Two reference points put the number in context. The *object oracle* segments each frame into
# background and object pixels from the ground truth: a network that has learned only what moves
# scores this. The *resolution ceiling* is the ground truth itself passed through what FCN-8s can
# express: its scores live on the stride-8 grid and are upsampled bilinearly, so we average-pool the
# one-hot ground truth by 8, upsample it bilinearly and take the argmax. No FCN-8s of this crop size
# can beat that ceiling by much.

# %%
#| slow
import torch.nn.functional as F
from motion_nbs.s3 import matched_miou

if "target" in result["heldout"]:
    gt = result["heldout"]["target"]
    onehot = F.one_hot(gt, int(gt.max()) + 1).permute(0, 3, 1, 2).float()
    coarse = F.interpolate(F.avg_pool2d(onehot, 8), size=gt.shape[-2:], mode="bilinear", align_corners=False)
    print(f"object oracle {matched_miou((gt > 0).long(), gt):.3f}; stride-8 resolution ceiling "
          f"{matched_miou(coarse.argmax(1), gt):.3f}; S3-CNN {result['miou']:.3f}")

# %% [markdown]
# ## What the `cpu` preset reaches, and why the targets are not met
#
# Measured on 32 held-out frames (all runs: `fcn8s_small`, Adam at $10^{-3}$, batch 8, a pool of 192
# rendered scenes, $L = 5$, $\beta = 30$):
#
# | run | steps | crop | matched mIoU | grid of 5 | object oracle | stride-8 ceiling | target |
# |---|---|---|---|---|---|---|---|
# | `single_cube` + affine (this notebook's default) | 1,200 | 64 | 0.417 | 0.165 | 0.389 | 0.698 | ≥ 0.7 |
# | `single_cube` + affine, longer | 4,000 | 64 | 0.44 (0.40–0.45 from step 1,250 on) | 0.165 | 0.389 | 0.698 | |
# | `single_cube` + affine, cosine decay | 2,500 | 128 | 0.424 | 0.165 | — | 0.858 | |
# | `single_cube` + affine, cosine decay | 6,000 | 128 | 0.457 | 0.165 | — | 0.858 | |
# | `multi_cube` + rigid (`-p data multi_cube -p loss rigid`) | 1,200 | 64 | 0.254 | 0.253 | 0.378 | 0.765 | ≥ 0.5 |
#
# The 1,200-step runs took 21 CPU-minutes each (52 minutes of wall time on two cores shared with
# other jobs; an estimated 5 minutes alone, from 0.2 s per step on one thread). The longer runs used a
# plain Adam loop with the same model, data and evaluation instead of `train`. Neither target is reached. What we found out:
#
# - **Resolution caps `single_cube` at 64 pixels.** A cube covers about 25 pixels of the crop and a
#   side face often only 3–6; the stride-8 ceiling is 0.698, *below* the 0.7 target, so at the preset's
#   crop size no FCN-8s can meet it. At 128 pixels the ceiling is 0.858 (96 pixels: 0.816).
# - **The affine network learns what moves, then splits faces slowly.** It beats the object oracle
#   (0.44 against 0.389), i.e. it separates some faces, but longer training (4,000 steps) or larger
#   crops (128 pixels, 2,500 steps) stay at 0.42–0.45. The loss says why: with hard masks the ground-truth
#   faces score $6.8\times10^{-5}$, the object oracle 0.0136 and one segment 0.353, while the trained
#   network's soft masks score 0.05–0.07. Nearly all of the remaining loss is soft, misplaced object
#   boundaries, where the residual is the full flow (pixels); splitting faces is worth at most 0.0136,
#   because under the 2–5° per frame rotations of `single_cube` the affine motions of adjacent faces
#   differ by a fraction of a pixel. (A 10× smaller smooth-$L_1$ threshold changes the gt/oracle
#   ratio only from 200 to 120.) Making the faces' motions more different does not help at this
#   budget either: at 96 pixels, 2,000 steps reach 0.424 with the preset's 2–5° rotation per frame and
#   0.431 with three times that (6–15°, a changed data set, evaluated on its own held-out frames). The
#   network's scores are not saturated (1 % of $\sigma'(s)$ below 0.01), so the head of section 4.3.2 is
#   not what stalls it.
# - **At 64 pixels the loss hardly prefers the right answer.** Feed the ground truth through what the
#   network can express — one-hot regions average-pooled to the stride-8 grid, upsampled bilinearly,
#   scaled to scores and passed through the head of section 4.3.2 (`soft_masks`, $\beta = 30$) — and it
#   scores 0.052 on `single_cube` (mIoU 0.698), about what the trained network's masks score (0.05–0.07,
#   mIoU 0.42). The soft boundaries an FCN-8s must draw cost as much as the wrong partition saves. At a
#   stride of 4 the same ground truth scores 0.016 (mIoU 0.858), and at 128 pixels the stride-8 ground
#   truth scores 0.037 (mIoU 0.858) while our 2,500-step network was still at 0.066: there the loss does
#   favour the faces, but the network approaches it slowly — 6,000 steps (21 minutes on one shared core)
#   reach a training loss of 0.050 and mIoU 0.457.
# - **The rigid loss does not leave the grid level at this budget.** With hard masks the ground-truth
#   objects score $5\times10^{-10}$, the object oracle 0.50 and one segment 3.27; training reaches
#   0.75–0.80 in 1,500 steps with segments no better than the grid (0.25–0.26); the stride-8 ground
#   truth through the head scores 0.646 (stride 4: 0.20), so here the loss does point to the objects. The 8-point fit of a soft,
#   near-uniform segment over small motions is poorly conditioned, so the gradient says little about
#   *where* a segment should move.
# - **A finer head lowers the loss but does not find the faces.** To take resolution out of the question
#   we extended `fcn8s_small`'s skip architecture two more steps (score layers on `pool2` and `pool1`,
#   fixed bilinear ×2 upsampling at the end: `s3_model(..., output_stride=2)`, otherwise the same network
#   and the same plain Adam loop). At 64 pixels and 6,000 steps with cosine decay it reaches a
#   training loss of 0.037 against FCN-8s' 0.051 in the same run, but the same mIoU (0.452 against
#   0.457; 8 minutes each on one idle core, 0.08 s per step). Its segments are not faces but *rings*:
#   background, a rim along the cube's silhouette and the cube's interior (matched IoU of the background
#   0.92, of the faces 0.27; adjusted Rand index of the segments on the cube's pixels 0.10). The rim
#   segment absorbs the boundary pixels whose soft masks mix the cube's motion with the background's —
#   a cheaper way down the affine loss than separating faces whose affine motions differ by a fraction
#   of a pixel. With three times the rotation per frame (a changed data set, its own held-out frames)
#   the stride-2 network does split cubes by motion — mIoU 0.514 after 3,000 steps (face IoU 0.38,
#   adjusted Rand 0.28) — and neither $\beta = 10$ (0.504 at 3,000 steps) nor $L = 4$, the number of
#   ground-truth regions (0.494), changes that much.
# - **Where the target is reached: 96 pixels, stride 2, faster rotation, 9,000 steps.** Combining the
#   three — 96-pixel crops, `output_stride=2`, the rotation drawn from 6–15° per frame instead of 2–5° —
#   with 9,000 Adam steps at $10^{-3}$ and cosine decay (batch 8, pool 192, $L = 5$, $\beta = 30$; 17
#   minutes on one idle core, 0.115 s per step) the matched mIoU climbs steadily: 0.425 (1,000 steps),
#   0.558 (3,000), 0.624 (5,000), **0.707 (7,000), 0.713 (8,000), 0.715 (9,000)** against the grid's
#   0.165, with training loss 0.044. The segments are now faces (figure below, held-out frames: image,
#   segments, ground truth): background IoU 0.96, face IoU 0.63, adjusted Rand index of the segments on
#   the cube's pixels 0.61 (0.10 for the 64-pixel stride-2 run above). At 96 pixels and 3,000 steps the
#   same recipe gives 0.543. This is a plain Adam loop over `s3_model(..., output_stride=2)` and
#   `S3Model`'s loss with the data set's rotation range changed, not yet this notebook's `cpu` preset:
#   the preset still trains the thesis' FCN-8s on 64-pixel crops of the 2–5° data for 1,200 steps, and
#   moving it over (a rotation range for `single_cube`, a cosine schedule in the learner, the output
#   stride in the checkpoint) is the next step.

# %%
from pathlib import Path

from IPython.display import Image

NBS = Path.cwd() if Path.cwd().name == "nbs" else Path.cwd() / "nbs"   # run from nbs/ (Jupyter) or the repository root (papermill)
Image(filename=str(NBS / "04_s3_train_faces_stride2_96px.png"))

# %% [markdown]
# The thesis trained FCN-8s on VGG-16 for days on a GPU and shows `single_cube` results on its
# training frames (fig 4.3a); `preset="paper"` with `image_size` 224 is that configuration. On a CPU
# we report the shortfall rather than tune the evaluation.
