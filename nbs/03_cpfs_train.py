# %% [markdown]
# # Training CPFS (papermill experiment)
#
# > Train the appendix-A AlexNet with a sparse hypercolumn head on (frame, flow) pairs with a CPFS loss or the direct flow-classification baseline, then look at what it learned.

# %% [markdown]
# *Default run: **31 s** on 2 CPU cores with the default parameters (measured by `make book` on 6 Dec 2026, reusing the training and caches that earlier runs left in the runs folder, `core.runs_dir`; where a first run on a new machine takes longer, the chapter says so).*

# %% [markdown]
# **The question** (section 3.2): a network sees one frame and is trained only to make pixels that *move together*
# embed alike — the CPFS losses, or, as the baseline, to classify each pixel's flow. Does it learn which pixels belong
# to the same object, which it was never told?
#
# **The answer** for the run this notebook makes (by default the `cpu` preset with the CE loss on the synthetic
# scenes) is the figure and the line after the training cell: the grouping ROC AUC on held-out frames — how well the
# similarity of two pixels' embeddings says whether they lie on the same object instance (0.5 = chance) — for the
# trained network against the same network at its random initialisation, the floor. Whether that grouping also
# *transfers* to recognition is the question of `03_cpfs_transfer` and `03_cpfs_ambiguity`.

# %% tags=["parameters"]
#| code-fold: true
loss = "ce"            # "ce", "kta", "ce_rev" (CPFS losses) or "flow_cls" (direct flow classification baseline)
data = "synthetic"     # "synthetic" (the `shapes` scenes), "videos" (the sample videos), or a folder of flow-pair shards
preset = "cpu"         # "cpu" (minutes on a laptop) or "paper" (the thesis' settings, for a GPU)
num_iters = None       # training steps (None: the preset's)
batch_size = None      # images per step (None: the preset's)
num_pixels = None      # pixels sampled per image for the loss (None: the preset's)
image_size = None      # side of the square training crops (None: the preset's)
sigma = None           # RBF bandwidth: "learned" (from sigma^2 = 0.04) or a fixed sigma^2; None: the preset's (KTA: 0.0036)
seed = 0               # seeds initialisation, data and pixel sampling
device = None          # "cpu", "cuda", "cuda:1", "mps"; None: CUDA if present, else MPS, else the CPU
amp = "auto"           # mixed precision: "bf16", "fp16" or "off"; "auto": bf16 on CUDA, off on the CPU
num_workers = 0        # data-loading processes (they also render the scene pool)
out_dir = None         # checkpoints, metrics and results; None: _runs/cpfs_{loss} (or cpfs_{data}_{loss}) at the checkout's root (`core.runs_dir`)

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
from motion_nbs.cpfs import CPFSConfig

# %%
#| code-fold: true
tag = loss if data == "synthetic" else f"{Path(str(data)).name}_{loss}"
out_dir = out_dir or str(runs_dir(f"cpfs_{tag}"))   # one folder per data and loss, wherever the notebook was started from
config = CPFSConfig.from_preset(preset, loss=loss, data=data, num_iters=num_iters, batch_size=batch_size, num_pixels=num_pixels,
                                image_size=image_size, sigma=sigma, seed=seed, device=device, amp=amp,
                                num_workers=num_workers, out_dir=out_dir)
config  # a bad parameter raises a ValueError naming it and the valid choices

# %% [markdown]
# ## Train
#
# The learner (chapter 02c) runs the optimisation: Adam with the thesis' settings, validation on
# held-out pairs, early stopping with the best checkpoint kept, checkpoints written atomically (a
# killed run resumes where it stopped when the notebook is run again with the same `out_dir`), on the
# chosen device and precision.

# %%
#| slow
from motion_nbs.cpfs import train

# %%
#| slow
#| code-fold: true
result = train(config)
print({k: v for k, v in result.items() if k not in ("model", "random_model", "heldout", "weights_sha256")})

# %%
#| slow
import matplotlib.pyplot as plt
from IPython.display import Markdown, display

# %%
#| slow
#| code-fold: true
fig, ax = plt.subplots(figsize=(5, 1.8))
ax.barh([1, 0], [result["auc_trained"], result["auc_random"]], color=["tab:blue", "tab:grey"])
ax.axvline(0.5, color="k", ls="--", lw=1, label="chance")
ax.set_yticks([1, 0], [f"trained ({loss})", "random init"]); ax.set_xlim(0.4, 1.0)
ax.set_xlabel("grouping ROC AUC (same instance vs not)"); ax.set_ylabel("network")
ax.legend(loc="lower right", fontsize=8); plt.show()
gain = result["auc_trained"] - result["auc_random"]
display(Markdown(f"**Answer for this run** ({config.num_iters} steps, {data} data): grouping AUC {result['auc_trained']:.3f} "
                 f"trained against {result['auc_random']:.3f} at random initialisation — "
                 + ("the embedding groups pixels by object better than the untrained network" if gain > 0.02 else
                    "no clear gain over the untrained network" if gain > -0.02 else "worse than the untrained network")
                 + f" ({gain:+.3f}; one seed: see `03_cpfs_transfer` for seeds and paired statistics)."))

# %% [markdown]
# ## Running it
#
# Run it from the command line with any parameter of the parameters cell at the top, e.g.
#
# ```bash
# papermill nbs/03_cpfs_train.ipynb _runs/03_cpfs_train.ipynb -p loss kta
# papermill nbs/03_cpfs_train.ipynb _runs/cpfs_paper.ipynb -p preset paper -p data /data/flow_shards
# ```
#
# or, for several GPUs, `torchrun --nproc_per_node=8 $(which motion_nbs_train) --task motion_nbs.cpfs:train --loss ce ...`
# with the same parameters. The `cpu` preset finishes in minutes on a 2-core laptop on the built-in
# synthetic scenes; `paper` uses the thesis' hyper-parameters (section 3.3.3): batch 96, 512 pixels per
# image, 224×224 crops, Adam at $10^{-4}$ (0.01 for the baseline), early stopping on a validation loss,
# parameter-free batch normalisation folded into the convolutions after training.
#
# The training and figure cells carry nbdev's `slow` flag: the book's quick test (`nbdev_test`) checks
# only the parameter validation here, while papermill, JupyterLab and the smoke test in
# `tests/test_notebooks.py` run everything.

# %% [markdown]
# Training speed on this machine, from the metrics file (and, on a GPU, the memory peak). On two CPU
# cores the `cpu` preset trains at about 150 images/s. The `paper` preset has not yet been run on a GPU
# by the book's developers (none was available); the line below reports it where it runs.

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

# %% [markdown]
# ## Loss curves and σ

# %%
#| slow
from motion_nbs.learner import plot_metrics

# %%
#| slow
fig = plot_metrics(result["metrics_path"])

# %%
#| slow
if loss == "flow_cls": print("the flow-classification baseline has no sigma")
elif result["config"]["sigma"] == "learned":
    print(f"learned sigma^2: initial {result['sigma2_initial']:.4g}, final {result['sigma2_final']:.4g} (the thesis learned 0.0036)")
else: print(f"fixed sigma^2 = {result['sigma2_final']:.4g}")

# %% [markdown]
# ## What the embedding groups
#
# Held-out synthetic frames: for three pixels, the row $K_f(p, \cdot)$ of the flow kernel and the row
# $K_\phi(p, \cdot)$ of the embedding kernel (fig 3.2); the embeddings projected to colours by a random
# $16 \to 3$ projection beside the flow and the instance masks (fig 3.4).

# %%
#| slow
from motion_nbs.cpfs import show_kernel_rows, show_embeddings

# %%
#| slow
if loss != "flow_cls":
    fig = show_kernel_rows(result["model"], result["heldout"], sigma2=result["sigma2_final"], num_images=2)
    fig = show_embeddings(result["model"], result["heldout"], num_images=4)

# %% [markdown]
# ## Grouping quality
#
# The measure of the answer under the training cell: ROC AUC of embedding similarity for same-instance vs
# different-instance pixel pairs on held-out frames (0.5 = chance), for the trained network and for the same
# network at its random initialisation (`cpfs.grouping_auc`). For `flow_cls` the score uses the predicted class
# probabilities as features.
