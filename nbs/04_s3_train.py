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
