# %% [markdown]
# # Pre-image experiments (papermill)
#
# > Table 5.2 and figures 5.2–5.20 of the thesis: inverting HOG, HOGb, DSIFT and CNN layers, activation maximisation, caricatures, and an interactive explorer.

# %% [markdown]
# *Default run: **7 min 28 s** on 2 CPU cores with the default parameters (measured by `make book` on 6 Dec 2026, reusing the training and caches that earlier runs left in the runs folder, `core.runs_dir`; where a first run on a new machine takes longer, the chapter says so).*

# %% [markdown]
# **The question** (section 5.4.1, table 5.2): does the regularised pre-image of chapter 05b recover an image from
# its HOG, HOGb and DSIFT features as well as the thesis reports — HOG hard to invert, the bilinear-orientation HOGb
# and DSIFT far easier?
#
# **The answer**, from the saved run at the thesis' scale (`nbs/05c_preimage_results.json`: 100 grey probes at
# 224 px, 300 iterations, C = 100): the figure shows each representation's reconstruction error (the thesis'
# unsquared $\|\Phi(x) - \Phi_0\|/\|\Phi_0\|$, mean with its 95 % CI over the probes) beside the thesis' value, and the
# lines under it say what came out. How it was measured and the other figures of the chapter follow.

# %%
#| code-fold: true
import json
from pathlib import Path

import matplotlib.pyplot as plt
from IPython.display import Markdown, display

from motion_nbs import core

_saved = json.loads(((core.repo_root() or Path.cwd()) / "nbs" / "05c_preimage_results.json").read_text())
_t, _a = _saved["table52_100_probes_224px"], _saved["table52_author_100_probes_224px"]
_names = list(_t)
_fig, _ax = plt.subplots(figsize=(6, 2.4))
_ax.errorbar([_t[k]["error"] for k in _names], range(len(_names)), xerr=[_t[k]["ci95"] for k in _names], fmt="o",
             capsize=4, label="book, 100 probes (95 % CI)")
_ax.errorbar([_a[k]["error"] for k in _names], [i + 0.2 for i in range(len(_names))], xerr=[_a[k]["ci95"] for k in _names],
             fmt="s", ms=4, capsize=3, label="book, the author's protocol")
_ax.plot([_t[k]["thesis"] for k in _names], [i - 0.2 for i in range(len(_names))], "kx", ms=8, label="thesis, table 5.2")
_ax.set_yticks(range(len(_names)), _names); _ax.set_ylim(-0.6, len(_names) - 0.2); _ax.invert_yaxis()
_ax.set_xlabel("reconstruction error (%)"); _ax.set_ylabel("representation")
_ax.legend(loc="center left", bbox_to_anchor=(1.02, 0.5), fontsize=8); plt.show()
_order = sorted(_names, key=lambda k: -_t[k]["error"])
_conv = {c["figure"].split(": ")[-1]: c for c in _saved["convergence"] if c["figure"].startswith("table 5.2")}
display(Markdown(
    "- " + "; ".join(f"**{k}** {_t[k]['error']:.1f} ± {_t[k]['ci95']:.1f} % (thesis {_t[k]['thesis']})" for k in _names) + ".\n"
    f"- The thesis' ordering {' > '.join(sorted(_names, key=lambda k: -_t[k]['thesis']))} is "
    f"{'reproduced' if _order == sorted(_names, key=lambda k: -_t[k]['thesis']) else 'not reproduced (' + ' > '.join(_order) + ')'}; "
    "the thesis' value lies " + ", ".join(f"{'inside' if abs(_t[k]['error'] - _t[k]['thesis']) <= _t[k]['ci95'] else ('above' if _t[k]['thesis'] > _t[k]['error'] else 'below')} "
                                        f"{k}'s interval" for k in _names) + ".\n"
    "- The author's protocol (0–255 images, no mean, HOG scored as DPM's `features`) moves the errors by at most "
    f"{max(abs(_a[k]['error'] - _t[k]['error']) for k in _names):.2f} points, so it does not explain the gaps.\n"
    "- By chapter 05b's criterion (the last 50 iterations bring at most 1 % of the fall) the fast run's pre-images "
    + ", ".join(f"of {k} {'converged' if c['converged'] else 'did not converge'} ({100 * c['relative_fall_last_50']:.1f} %)" for k, c in _conv.items())
    + " within 300 iterations."))

# %% [markdown]
# Run from the command line with any parameter of the next cell, e.g.
#
# ```bash
# papermill nbs/05c_preimage_experiments.ipynb _runs/05c.ipynb -p experiments table52
# papermill nbs/05c_preimage_experiments.ipynb _runs/05c_paper.ipynb -p preset paper
# papermill nbs/05c_preimage_experiments.ipynb _runs/05c_alexnet.ipynb -p network alexnet -p experiments cnn
# ```
#
# The `fast` preset finishes in minutes on a 2-core CPU (its time is the runtime line above; small images, few probes and initialisations);
# `paper` uses the thesis' scale (100 probe images, 24 initialisations for the spread, 224-pixel images
# for the CNN) and wants a GPU. Probe images are the book's offline natural images (scikit-image photos,
# then frames of the sample videos) instead of the first 100 ILSVRC validation images; `probe_dir` takes the
# probes from a folder instead (its first files in name order: point it at ILSVRC2012_img_val for the
# thesis' probes). The CNN is by default
# the offline ImageNet classifier EfficientNet-lite0, which a Python package ships; `network="alexnet"` or
# `"vgg16"` runs the thesis' networks instead, from torchvision's ImageNet weights file in the torch hub cache
# (or `weights_path`): this machine cannot download it, and without it the run stops saying which file to
# provide. The experiment cells carry nbdev's `slow` flag: `nbdev_test` checks the parameters only.

# %% tags=["parameters"]
preset = "fast"          # "fast" (CPU, minutes) or "paper" (the thesis' scale, for a GPU)
experiments = "all"      # "all" or a comma-separated subset of: table52, fig52, cnn, window, maximize, template, caricature, explorer,
                         # table52_sources (not in "all": table 5.2 per probe source, at full resolution, and the author's networks)
num_images = None        # probe images for table 5.2 (None: preset's; paper: 100)
probe_dir = None         # a folder of probe images, e.g. the ILSVRC 2012 validation set (the thesis' probes): its first files
                         # in name order; None: the book's offline natural images
image_size = None        # side of the HOG/DSIFT probe images (None: preset's)
full_res_frames = 8      # table52_sources: frames of bikes and bigbuckbunny inverted at full resolution (all photographs and carphone frames are)
num_iters = 300          # iterations of Algorithm 1 (thesis: 300, +50 without jitter for inversion with jitter)
cnn_images = None        # probe images for the CNN experiments (None: preset's)
cnn_size = None          # side of the CNN pre-images (None: preset's; paper 224)
cnn_iters = None         # iterations for the CNN inversions of figs 5.5 and 5.12 (None: preset's)
am_iters = None          # iterations for activation maximisation and caricatures (None: preset's; 300, the thesis')
num_inits = None         # random initialisations per image for the spread of the error (paper: 24)
std_images = None        # the spread over initialisations uses the first std_images CNN probes (None: preset's, paper: 24)
template_scenes = None   # synthetic scenes for the HOG template of fig 5.14 (None: preset's)
Cs = "1,20,100,300"      # values of C for the CNN inversion sweep (fig 5.5)
network = "efficientnet_lite0"  # the CNN: "efficientnet_lite0" (offline), "alexnet" or "vgg16" (torchvision weights file)
weights_path = None      # alexnet/vgg16: torchvision's ImageNet weights file (None: its name in the torch hub cache)
cnn_layers = None        # comma-separated layers to study (None: the network's default, see NETWORKS)
seed = 0                 # seeds every initialisation
num_threads = 1          # torch CPU threads (None: torch's default); on a shared, loaded CPU more threads can be ~60x slower
device = None            # "cpu", "cuda", "cuda:1", "mps"; None: CUDA if present, else MPS, else the CPU
out_dir = None           # results.json and figures; None: _runs/preimage at the checkout's root (`core.runs_dir`)

# %%
from pathlib import Path

from motion_nbs.core import check_choice, check_int, reject_unknown_parameters, resolve_device, runs_dir

# %%
reject_unknown_parameters()  # a -p name this notebook does not define stops the run here, listing the valid ones

# %%
PRESETS = {"fast": dict(num_images=8, image_size=128, cnn_images=2, cnn_size=64, cnn_iters=40, num_inits=2, std_images=2,
                        template_scenes=12, am_units=4, max_canvas=400, am_iters=300),
           "paper": dict(num_images=100, image_size=224, cnn_images=100, cnn_size=224, cnn_iters=300, num_inits=24, std_images=24,
                         template_scenes=200, am_units=25, max_canvas=None, am_iters=300)}
EXPERIMENTS = ("table52", "fig52", "cnn", "window", "maximize", "template", "caricature", "explorer", "table52_sources")
ALL = EXPERIMENTS[:-1]   # table52_sources runs only when named: hours on 2 cores
check_choice("preset", preset, PRESETS)
cfg = dict(PRESETS[preset])
for k, v in dict(num_images=num_images, image_size=image_size, cnn_images=cnn_images, cnn_size=cnn_size,
                 cnn_iters=cnn_iters, am_iters=am_iters, num_inits=num_inits, std_images=std_images, template_scenes=template_scenes).items():
    if v is not None: cfg[k] = v
if std_images is None: cfg["std_images"] = min(cfg["std_images"], cfg["cnn_images"])
for k, v in dict(num_iters=num_iters, full_res_frames=full_res_frames, **cfg).items():
    if k != "max_canvas" or v is not None: check_int(k, v, 1)   # max_canvas None: no limit (the author's mosaics)
if cfg["image_size"] < 32 or cfg["cnn_size"] < 32: raise ValueError(f"image sizes must be >= 32 (HOG/DSIFT blocks, CNN), got {cfg}")
if cfg["std_images"] > cfg["cnn_images"]:
    raise ValueError(f"std_images={cfg['std_images']} must be <= cnn_images={cfg['cnn_images']} (the spread uses the first CNN probes)")
chosen = list(ALL) if experiments == "all" else [e.strip() for e in str(experiments).split(",") if e.strip()]
bad = [e for e in chosen if e not in EXPERIMENTS]
if bad or not chosen: raise ValueError(f"experiments={experiments!r}: unknown {bad}; valid: 'all' or a subset of {', '.join(EXPERIMENTS)}")
try: C_values = [float(c) for c in str(Cs).split(",")]
except ValueError: raise ValueError(f"Cs={Cs!r} must be comma-separated numbers, e.g. '1,20,100,300'") from None
if not C_values or any(c < 0 for c in C_values): raise ValueError(f"Cs={Cs!r} must be non-negative numbers")
# per network: default layers (one per block, table 5.1's names for AlexNet/VGG-16), the class-score layer,
# and the input normalisation
NETWORKS = {"efficientnet_lite0": dict(layers="blocks.0,blocks.2,blocks.4,conv_head,classifier", scores="classifier",
                                       mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5)),   # tf_efficientnet_lite0's normalisation
            "alexnet": dict(layers="relu1,relu2,relu3,relu4,relu5,relu6,relu7,fc8", scores="fc8",
                            mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225)),
            "vgg16": dict(layers="relu1_2,relu2_2,relu3_3,relu4_3,relu5_3,relu6,relu7,fc8", scores="fc8",
                          mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))}
check_choice("network", network, NETWORKS)
if weights_path is not None and network == "efficientnet_lite0":
    raise ValueError("weights_path is for network='alexnet' or 'vgg16' (efficientnet_lite0's weights come with its package)")
if probe_dir is not None and "table52_sources" in chosen:
    raise ValueError("table52_sources splits the book's own probes by source (photographs, bikes, bigbuckbunny, carphone); run it with probe_dir=None")
if probe_dir is not None and not Path(probe_dir).is_dir():
    raise FileNotFoundError(f"probe_dir={probe_dir!r} is not a folder: give a folder of images (e.g. ILSVRC2012_img_val) or None")
net_cfg = NETWORKS[network]
layers = [l.strip() for l in str(cnn_layers or net_cfg["layers"]).split(",") if l.strip()]
if not isinstance(seed, int): raise ValueError(f"seed must be an int, got {seed!r}")
if num_threads is not None: check_int("num_threads", num_threads, 1)
device = resolve_device(device)  # a device this machine does not have fails here, naming those it has
print(preset, cfg, chosen, device)

# %%
import json
import math
from pathlib import Path
import matplotlib.pyplot as plt
import torch
from motion_nbs.core import show_images
from motion_nbs.features import HOG, DenseSIFT, hog_glyphs
from motion_nbs.preimage import (LayerPhi, caricature, classification_consistency, convergence, gradient_histogram_intersection,
                                 invert, maximize, natural_images, normalized_error, unit_maximum)

# %%
if num_threads: torch.set_num_threads(num_threads)
out = Path(out_dir) if out_dir else runs_dir("preimage"); out.mkdir(parents=True, exist_ok=True)
results = {"preset": preset, "config": cfg, "num_iters": num_iters, "network": network}
def save(): (out / "results.json").write_text(json.dumps(results, indent=1))

def error_stats(e2: torch.Tensor) -> dict:
    """Per-probe squared normalised errors (eq 5.2, `Preimage.error`) → the thesis' headline, the unsquared
    ‖Φ(x) − Φ0‖/‖Φ0‖ (`error`, %, mean ± 95% CI over the probes), and the squared one beside it."""
    e2 = e2.detach().cpu().double().clamp_min(0)
    ci = lambda v: 100 * 1.96 * v.std().item() / math.sqrt(len(v)) if len(v) > 1 else float("nan")
    return dict(error=100 * e2.sqrt().mean().item(), ci95=ci(e2.sqrt()), error_squared=100 * e2.mean().item(), ci95_squared=ci(e2))

results["convergence"] = []
def note_convergence(figure: str, r) -> None:
    """Record whether a figure's pre-images converged by chapter 05b's criterion (`convergence`: the last 50 iterations
    bring at most 1 % of the objective's fall), for the worst of its images; 50 iterations or fewer count as all of the
    fall coming in the last 50 (share 1, not converged)."""
    e = r.history["energy"]
    share = convergence(e)[0].max().item() if e.shape[0] > 50 else 1.0
    row = dict(figure=figure, relative_fall_last_50=round(share, 4) if math.isfinite(share) else None,
               converged=bool(share <= 0.01), iterations=int(e.shape[0]))
    results["convergence"] = [c for c in results["convergence"] if c["figure"] != figure] + [row]
    return row

def mark(title: str, row: dict) -> str:
    "A figure title, with '(not converged)' under it when `note_convergence`'s row says so."
    return title if row["converged"] else f"{title}\n(not converged)"


# %%
from motion_nbs.author_nets import author_am_setup, author_maximize
from motion_nbs.models import layer_names, load_pretrained

# %%
cnn_needed = any(e in chosen for e in ("cnn", "window", "maximize", "caricature", "explorer"))
if cnn_needed:
    cnn = load_pretrained(network, weights_path).to(device)   # FileNotFoundError names the weights file to provide
    unknown = [l for l in layers if l not in layer_names(cnn) and l not in dict(cnn.named_modules())]
    if unknown: raise ValueError(f"cnn_layers: unknown layer(s) {unknown} of {network}; names of its modules, e.g. {net_cfg['layers']}")
    def cnn_phi(layer): return LayerPhi(cnn, layer, mean=net_cfg["mean"], std=net_cfg["std"]).to(device)
    classifier = cnn_phi(net_cfg["scores"])

# %% [markdown]
# ## Table 5.2: inverting HOG, HOGb and DSIFT
#
# Normalised error of the pre-image of each probe, $C = 100$, no jitter, cells/bins of 8 pixels, 300
# iterations (section 5.4.1), grey probes; mean ± 95% confidence interval of the mean over the probes. Like
# the thesis' table — the author's `table2.m` takes the square root of eq 5.2's loss before averaging —
# the headline `error` is the **unsquared** $\|\Phi(x) - \Phi_0\|/\|\Phi_0\|$; eq 5.2's squared ratio is kept
# beside it (`error_squared`). The thesis' numbers are for the first 100 ILSVRC validation images.
#
# **The author's protocol** is run as a variant (`table52_author`): the author optimised HOG, HOGb and
# DSIFT on grey images in 0–255 *without* mean subtraction (`exp_inversion_hog.m`: `normalize = @(im) im`,
# so the α-norm pulls the image towards black, and the bound $B_+ = 160$ caps it), and scored HOG with
# the DPM `features` function — the UoCTTI HOG that VLFeat reproduces, with the border cells trimmed —
# on the 0–255 reconstruction, HOGb and DSIFT with their own loss. Our variant does the same with our
# VLFeat-equal HOG: $\Phi(\text{image}) = \mathrm{HOG}(255\cdot\text{image})$, mean 0, HOG scored on the inner
# cells. The scale matters for HOG: its block normalisation adds $\epsilon = 10^{-4}$ to the squared
# norms, which is nothing at 0–255 and large at 0–1.

# %%
#| slow
THESIS = {"HOGgle": 60.1, "HOG": 36.6, "HOGb": 11.6, "DSIFT": 9.4}
if "table52" in chosen or "fig52" in chosen:
    probes = natural_images(cfg["num_images"], cfg["image_size"], channels=1, folder=probe_dir).to(device)
if "table52" in chosen:
    reps = {"HOG": HOG(8), "HOGb": HOG(8, bilinear_orientations=True), "DSIFT": DenseSIFT(8, 8)}
    table, author, pre = {}, {}, {}
    for name, phi in reps.items():
        phi = phi.to(device)
        r = invert(phi, probes, C=100, mean=0.5, num_iters=num_iters, seed=seed, progress=True)
        table[name] = dict(**error_stats(r.error), thesis=THESIS[name]); note_convergence(f"table 5.2 / fig 5.4: {name}", r)
        pre[name] = r.images.cpu()
        phi255 = lambda im, phi=phi: phi(255 * im)   # the author's 0-255 images, no mean subtraction
        ra = invert(phi255, probes, C=100, mean=0.0, num_iters=num_iters, seed=seed, progress=True)
        if name == "HOG":   # scored as DPM's `features`: the border cells trimmed
            with torch.no_grad(): f, f0 = phi255(ra.images)[..., 1:-1, 1:-1], phi255(probes)[..., 1:-1, 1:-1]
            e2 = (f - f0).flatten(1).square().sum(1) / f0.flatten(1).square().sum(1)
        else: e2 = ra.error
        author[name] = dict(**error_stats(e2), thesis=THESIS[name])
    results["table52"], results["table52_author"] = table, author; save()
    print(f"{'':8}{'error (%)':>16}{'squared (%)':>16}{'author protocol (%)':>22}{'thesis (%)':>12}")
    for k, v in table.items():
        a = author[k]
        print(f"{k:8}{v['error']:10.1f} ± {v['ci95']:4.1f}{v['error_squared']:10.1f} ± {v['ci95_squared']:4.1f}"
              f"{a['error']:14.1f} ± {a['ci95']:4.1f}{v['thesis']:12.1f}")

# %% [markdown]
# **Fig 5.4**: probe, HOG glyphs, and the HOG, HOGb and DSIFT pre-images.

# %%
#| slow
if "table52" in chosen:
    k = min(3, len(probes))
    ims = []
    for i in range(k):
        ims += [probes[i].cpu(), hog_glyphs(HOG(8)(probes[i:i + 1].cpu()))[0][None]] + [pre[n][i].clamp(0, 1) for n in reps]
    fig = show_images(ims, titles=["probe", "HOG glyphs", "HOG", "HOGb", "DSIFT"] * k, ncols=5, size=2.2)
    fig.savefig(out / "fig5_4.png")

# %% [markdown]
# ## Table 5.2 per probe source, at full resolution, and through the author's networks
#
# Where does the gap between our table 5.2 and the thesis' come from? Three things differ from the author's run,
# and this experiment (`-p experiments table52_sources`, not part of `all`: hours on two cores) varies each:
#
# - **The probes.** The thesis inverts the first 100 ILSVRC validation images; the book's offline probes are 8
#   photographs and frames of three clips (bikes, bigbuckbunny, and carphone, a 176×144 video upsampled). The
#   table is reported **per source**.
# - **Their size.** The author's `exp_inversion_hog.m` reads each image and converts it to grey *without resizing*
#   (ILSVRC's validation images are about 500×375); `natural_images` centre-crops and resizes to `image_size`. Each
#   source is also inverted at **full resolution** (all photographs and carphone frames; the first `full_res_frames`
#   probes of bikes (640×272) and bigbuckbunny (1280×720)). (The "160" in the author's result folders,
#   `inversion160`, `inversion-val160`, is most likely $B_+$ = `x0_max` = 160 of `get_defaults.m`, not an image size.)
# - **The networks.** The author inverted `hog_net.m` and `dsift_net.m`, not VLFeat (chapter 05d): the same probes
#   go through `AuthorHOG`, `AuthorHOG(bilinear_orientations=True)` and `AuthorDenseSIFT` under the author's protocol
#   — 0–255 grey images without mean subtraction, $\eta_0 = 0.05B^2/\alpha$ (`get_defaults.m`), one stage of 300
#   iterations, $C = 100$ — and are scored as the author scored them: HOG with DPM's `features` (here VLFeat's HOG of
#   the 0–255 reconstruction, inner cells), HOGb and DSIFT in their own network's space (`exp_inversion_hog.m`).
#
# The book's modules are run under the book's protocol of table 5.2 above (mean 0.5, $\eta_0 = 0.01B^2/\alpha$).
# Each probe's record is appended to `table52_records.jsonl` in the output folder as soon as it is computed, so
# an interrupted run resumes where it stopped, and several runs can share the work.

# %%
#| slow
import functools, os, time
from motion_nbs.author_nets import AuthorDenseSIFT, AuthorHOG
from motion_nbs.core import read_video_frames, sample_image, sample_video

SOURCES = ("photographs", "bikes", "bigbuckbunny", "carphone")
PHOTOS = ["astronaut", "chelsea", "coffee", "rocket", "camera", "clock", "coins", "moon"]
VIDEOS = {"bikes": 250, "bigbuckbunny": 132, "carphone": 120}   # as `natural_images` spreads its frames

def probe_sources(n: int) -> list:
    "The source of each of `natural_images(n)`'s probes: the photographs first, then the three clips' frames."
    k, rest = min(n, 8), max(0, n - 8)
    per = [rest // 3 + (i < rest % 3) for i in range(3)]
    return ["photographs"] * k + [v for v, m in zip(VIDEOS, per) for _ in range(m)]

@functools.lru_cache(maxsize=None)
def resized_probes(n: int, size: int) -> torch.Tensor: return natural_images(n, size, channels=1)

@functools.lru_cache(maxsize=None)
def full_resolution_probes(source: str, n: int) -> list:
    "The same probes as `natural_images(n)` draws from `source`, grey, at full resolution (no crop, no resize): a list of (1,1,H,W)."
    m = probe_sources(n).count(source)
    if source == "photographs": ims = [sample_image(p) for p in PHOTOS[:m]]
    else:
        length = VIDEOS[source]
        ims = list(read_video_frames(sample_video(source), [int((i + 0.5) * length / m) for i in range(m)]))
    return [(im * torch.tensor([0.299, 0.587, 0.114]).view(3, 1, 1)).sum(0)[None, None].clamp(0, 1) for im in ims]

# representations: the book's VLFeat-equal modules under its protocol (mean 0.5, eta0 = 0.01 B^2/alpha), and the author's
# networks under the author's (0-255 without mean subtraction, eta0 = 0.05 B^2/alpha as in get_defaults.m); C = 100, no jitter
AUTHOR_LR = 0.05 * 80.0 ** 2 / 6.0
REPS = {("book", "HOG"): lambda: HOG(8), ("book", "HOGb"): lambda: HOG(8, bilinear_orientations=True),
        ("book", "DSIFT"): lambda: DenseSIFT(8, 8),
        ("author", "HOG"): lambda: AuthorHOG(8), ("author", "HOGb"): lambda: AuthorHOG(8, bilinear_orientations=True),
        ("author", "DSIFT"): lambda: AuthorDenseSIFT(8)}

def table52_jobs(n: int, size: int, full_frames: int) -> list:
    "Jobs (protocol, representation, source, size, probe indices within the source), cheapest and most telling first."
    src = probe_sources(n)
    count = {s: src.count(s) for s in SOURCES}
    def batches(s, sz, k=8):
        m = count[s] if (sz != "full" or s == "photographs" or s == "carphone") else min(count[s], full_frames)
        k = 1 if (sz == "full" and s == "photographs") else (2 if sz == "full" and s == "bigbuckbunny" else k)
        return [list(range(i, min(m, i + k))) for i in range(0, m, k)]
    B, A = ("book", "HOG"), ("author", "HOG")
    Bb, Ab, Bd, Ad = ("book", "HOGb"), ("author", "HOGb"), ("book", "DSIFT"), ("author", "DSIFT")
    plan = [((B, Bb), SOURCES, size), ((A, Ab, Ad, B, Bb), ("photographs",), "full"), ((A, Ab, Ad), ("photographs",), size),
            ((B, Bb, A, Ab, Ad), ("carphone",), "full"), ((A, Ab, Ad), SOURCES[1:], size), ((B, Bb), ("bikes", "bigbuckbunny"), "full"),
            ((Bd,), SOURCES, size), ((Bd,), ("photographs", "carphone"), "full"), ((A, Ab, Ad), ("bikes", "bigbuckbunny"), "full"),
            ((Bd,), ("bikes", "bigbuckbunny"), "full")]
    jobs = []
    for reps, sources, sz in plan:
        for s in sources:
            for (proto, rep) in reps: jobs += [(proto, rep, s, sz, idx) for idx in batches(s, sz)]
    return jobs

def _job_key(job): proto, rep, s, sz, idx = job; return f"{proto}|{rep}|{s}|{sz}|{idx[0]}-{idx[-1]}"

def run_table52_job(job, n: int, size: int) -> list:
    "Invert one job's probes (C = 100, 300 iterations, no jitter): one record per probe."
    proto, rep, s, sz, idx = job
    if sz == "full": ims = [full_resolution_probes(s, n)[i] for i in idx]
    else:
        keep = [i for i, t in enumerate(probe_sources(n)) if t == s]
        ims = [resized_probes(n, size)[keep[i]][None] for i in idx]
    groups = {}   # probes of one size are inverted together
    for i, im in zip(idx, ims): groups.setdefault(tuple(im.shape), []).append((i, im))
    recs = []
    for group in groups.values():
        x0 = torch.cat([im for _, im in group]).to(device)
        phi = REPS[(proto, rep)]().to(device)
        t0 = time.time()
        if proto == "book": r = invert(phi, x0, C=100, mean=0.5, num_iters=num_iters, seed=seed)
        else: r = invert(phi, x0, C=100, mean=0.0, lr=AUTHOR_LR, num_iters=num_iters, seed=seed)
        sec = (time.time() - t0) / len(group)
        dpm = [None] * len(group)
        if rep == "HOG":   # scored as DPM's `features` (the author's table 5.2 HOG column): VLFeat HOG at 0-255, inner cells
            hog255 = lambda im: HOG(8).to(device)(255 * im)[..., 1:-1, 1:-1]
            with torch.no_grad(): f, f0 = hog255(r.images), hog255(x0)
            dpm = ((f - f0).flatten(1).square().sum(1) / f0.flatten(1).square().sum(1)).tolist()
        for (i, im), e2, d2 in zip(group, r.error.tolist(), dpm):
            recs.append(dict(key=_job_key(job), protocol=proto, representation=rep, source=s, size=sz, index=i,
                             height=im.shape[-2], width=im.shape[-1], error_squared=e2, dpm_error_squared=d2, seconds=round(sec, 2)))
    return recs

def run_table52_records(path, jobs, n, size):
    "Run the jobs not yet in `path` (JSON lines, appended one record per probe as it finishes: resumable; several workers may share it)."
    path = Path(path); claims = path.parent / (path.stem + "_claims"); claims.mkdir(exist_ok=True)
    def done(): return {json.loads(l)["key"] for l in path.read_text().splitlines() if l.strip()} if path.exists() else set()
    for job in jobs:
        key = _job_key(job)
        if key in done(): continue
        claim = claims / key.replace("|", "_")
        try: fd = os.open(claim, os.O_CREAT | os.O_EXCL | os.O_WRONLY); os.write(fd, str(os.getpid()).encode()); os.close(fd)
        except FileExistsError:
            try: os.kill(int(claim.read_text() or 0), 0); continue   # another live worker has it
            except (ProcessLookupError, ValueError): claim.write_text(str(os.getpid()))
        recs = run_table52_job(job, n, size)
        with open(path, "a") as f: f.write("".join(json.dumps(r) + "\n" for r in recs))
        print(key, [round(100 * math.sqrt(r["error_squared"]), 1) for r in recs], f"{recs[0]['seconds']} s/probe", flush=True)

def summarize_table52_records(path) -> tuple[list, list]:
    "`table52_by_source` (the book's modules) and `author_networks` rows from the records: unsquared error %, 95% CI, n."
    recs = [json.loads(l) for l in Path(path).read_text().splitlines() if l.strip()]
    def stats(rs, key="error_squared"):
        e = torch.tensor([r[key] for r in rs], dtype=torch.float64).clamp_min(0).sqrt()
        ci = 100 * 1.96 * e.std().item() / math.sqrt(len(e)) if len(e) > 1 else None
        return dict(error=round(100 * e.mean().item(), 2), ci95=None if ci is None else round(ci, 2), n=len(e))
    by, author = [], []
    for proto, out in (("book", by), ("author", author)):
        for rep in ("HOG", "HOGb", "DSIFT"):
            for sz in list(dict.fromkeys(r["size"] for r in recs)):
                rs = [r for r in recs if r["protocol"] == proto and r["representation"] == rep and r["size"] == sz]
                for s in (*SOURCES, "all"):
                    sel = [r for r in rs if s == "all" or r["source"] == s]
                    if not sel or (s == "all" and len({r["source"] for r in sel}) < 2): continue
                    row = dict(representation=rep, source=s, size=sz, **stats(sel))
                    if proto == "author":
                        row["scored_by"] = "own network"
                        if rep == "HOG":   # the author's HOG column: scored with DPM's features
                            row = dict(representation=rep, source=s, size=sz, **stats(sel, "dpm_error_squared"), scored_by="DPM features (VLFeat HOG, inner cells)",
                                       error_own_network=row["error"], ci95_own_network=row["ci95"])
                    out.append(row)
    return by, author

if "table52_sources" in chosen:
    records = out / "table52_records.jsonl"
    run_table52_records(records, table52_jobs(cfg["num_images"], cfg["image_size"], full_res_frames), cfg["num_images"], cfg["image_size"])
    results["table52_by_source"], results["author_networks"] = summarize_table52_records(records); save()

# %% [markdown]
# ## Fig 5.2: the effect of $C$ and of $\beta$
#
# HOG inversion of one probe for $C \in \{1, 100, 1000\}$ ($\beta = 2$) and for $\beta \in \{1, 1.5, 2\}$
# ($C = 100$): small $C$ gives smooth, prior-dominated images; $\beta = 1$ leaves spikes.

# %%
#| slow
if "fig52" in chosen:
    x0 = probes[:1]
    settings = [(1, 2.0), (100, 2.0), (1000, 2.0), (100, 1.0), (100, 1.5)]
    rs = [invert(HOG(8).to(device), x0, C=C, beta=b, mean=0.5, num_iters=num_iters, seed=seed) for C, b in settings]
    results["fig52"] = {f"C={C},beta={b}": 100 * r.error.sqrt().item() for (C, b), r in zip(settings, rs)}   # unsquared
    for (C, b), r in zip(settings, rs): note_convergence(f"fig 5.2: C={C}, beta={b}", r)
    save()
    fig = show_images([x0[0].cpu()] + [r.images[0].cpu().clamp(0, 1) for r in rs],
                      titles=["probe"] + [f"C={C}, β={b}: {100 * r.error.sqrt().item():.0f}%" for (C, b), r in zip(settings, rs)], ncols=6, size=2.2)
    fig.savefig(out / "fig5_2.png")

# %% [markdown]
# ## Fig 5.5 and 5.6: inverting CNN layers
#
# For each layer and $C$, as in the thesis' fig 5.5: the mean normalised error over the probes — unsquared,
# $\|\Phi(x) - \Phi_0\|/\|\Phi_0\|$, as the author's `figure_quantresults_cnn.m` plots it (the squared one is
# kept as `error_squared`) — with its 95% confidence interval, and the classification consistency with
# the classifier itself, from one pre-image per probe; the standard deviation of the (squared, as in the
# thesis) error over `num_inits` initialisations, averaged over the first `std_images` probes (the thesis:
# 100 probes, 24 initialisations of the first 24); and the
# gradient-histogram intersection with the probe (naturalness, fig 5.6). Jitter $T$ = a quarter of the
# layer's stride (section 5.4.2.1).

# %%
#| slow
from motion_nbs.models import receptive_fields

# %%
#| slow
if "cnn" in chosen:
    rf = receptive_fields(cnn, cfg["cnn_size"])
    cprobes = natural_images(cfg["cnn_images"], cfg["cnn_size"], folder=probe_dir).to(device)
    # a layer after global pooling keeps the last map's stride (table 5.1: fc6–fc8 keep pool5's 32); a layer
    # receptive_fields has no record for (AlexNet's fc6–fc8 below 224 px, behind a pool that upsamples) takes the deepest one
    deepest = max(v.stride[0] for v in rf.values())
    sweep = {}
    for layer in layers:
        stride = rf[layer].stride[0] if layer in rf else deepest
        T = max(1, round(stride / 4))
        for C in C_values:
            def run(probes, init):
                return invert(cnn_phi(layer), probes, C=C, jitter=T, num_iters=cfg["cnn_iters"],
                              finetune_iters=max(1, cfg["cnn_iters"] // 6), seed=seed + init, mean=0.5)
            r = run(cprobes, 0)                                  # one pre-image per probe
            note_convergence(f"fig 5.5: {layer}, C={C:g}", r)
            e0, k = r.error.cpu(), cfg["std_images"]
            e = torch.stack([e0[:k]] + [run(cprobes[:k], i).error.cpu() for i in range(1, cfg["num_inits"])])   # (inits, k)
            sweep[f"{layer}|C={C:g}"] = dict(**error_stats(e0),   # the spread over inits is of the squared error, as in the thesis
                                             std_over_inits=e.std(0).mean().item() if len(e) > 1 else 0.0,
                                             consistency=classification_consistency(classifier, r.images, cprobes),
                                             hist_intersection=gradient_histogram_intersection(r.images, cprobes).mean().item(), jitter=T)
            print(layer, C, sweep[f"{layer}|C={C:g}"], flush=True)
    results["cnn"] = sweep; save()
    fig, axes = plt.subplots(1, 4, figsize=(16, 3.2))
    for ax, key, title in zip(axes, ("error", "std_over_inits", "consistency", "hist_intersection"),
                              ("normalised error ‖Φ(x)−Φ0‖/‖Φ0‖ (%)", "std of the squared error over inits", "classification consistency",
                               "gradient-histogram intersection")):
        for C in C_values:
            ys = [sweep[f"{l}|C={C:g}"][key] for l in layers]
            err = [sweep[f"{l}|C={C:g}"]["ci95"] for l in layers] if key == "error" else None
            ax.errorbar(layers, ys, yerr=err, fmt="o-", capsize=3, label=f"C={C:g}")
        ax.set_title(title); ax.tick_params(axis="x", rotation=45)
    axes[0].legend(); fig.tight_layout(); fig.savefig(out / "fig5_5.png")

# %% [markdown]
# ## Fig 5.12: inversion from a central 5×5 window of features
#
# The mask of eq 5.3 keeps only a central $5\times5$ window of each convolutional layer's code; the
# regulariser switches off the image where no feature in the window looks.

# %%
#| slow
if "window" in chosen:
    x0 = natural_images(1, cfg["cnn_size"], folder=probe_dir).to(device)
    conv_layers = [l for l in layers if cnn_phi(l)(x0).ndim == 4 and min(cnn_phi(l)(x0).shape[-2:]) >= 1]
    ims, titles = [x0[0].cpu()], ["probe"]
    for layer in conv_layers:
        with torch.no_grad(): f = cnn_phi(layer)(x0)
        h, w = f.shape[-2:]
        mask = torch.zeros(1, 1, h, w, device=device)
        mask[..., max(0, h // 2 - 2):h // 2 + 3, max(0, w // 2 - 2):w // 2 + 3] = 1
        r = invert(cnn_phi(layer), x0, mask=mask, C=100, num_iters=cfg["cnn_iters"], seed=seed, mean=0.5)
        note_convergence(f"fig 5.12: {layer}", r)
        ims.append(r.images[0].cpu().clamp(0, 1)); titles.append(f"{layer}: {100 * r.error.sqrt().item():.0f}%")
    fig = show_images(ims, titles=titles, ncols=len(ims), size=2.2); fig.savefig(out / "fig5_12.png"); save()

# %% [markdown]
# ## Figs 5.15–5.18: activation maximisation
#
# As the author ran it (`exp_maximization.m`, chapter 05d's `author_maximize`): the first channels of each convolutional
# layer as one **mosaic** (the preset's `am_units`: 4 in `fast`, the author's 25 in `paper`), each unit at the centre
# of its cell of about **1.1 receptive fields**, its weight divided by the number of units, with **jitter a quarter of
# the layer's stride** (section 5.4.2) and $C = 1$; $Z = M\rho^2/10^4$, the author's scaling of eq 5.9 (chapter 5b),
# with $M$ each unit's maximum over the natural images and $\rho$ its receptive-field size. Where the mosaic's canvas
# would exceed the preset's `max_canvas` (400 px in `fast`; the author's rule for layers of more than 512 filters
# is the same fallback) the first two units are drawn on canvases of their own. Then four classes of the
# classifier — "tree frog" (31), "goose" (99), "black swan" (100), "cheeseburger" (933) — on the preset's image size
# (the author used the network's input size), jitter a quarter of the classifier's stride.
# Fig 5.17: the same unit from different initialisations.

# %%
#| slow
if "maximize" in chosen:
    shape = (3, cfg["cnn_size"], cfg["cnn_size"])
    probes_m = natural_images(8, cfg["cnn_size"], folder=probe_dir).to(device)   # M of eq 5.9: the thesis takes ILSVRC's
    ims, titles, results["maximize_canvas"] = [], [], {}
    for layer in [l for l in layers if l != net_cfg["scores"]][:3]:
        phi = cnn_phi(layer)
        with torch.no_grad(): channels = phi(probes_m[:1]).shape[1]
        units = list(range(min(cfg["am_units"], channels)))
        setup = author_am_setup(phi, len(units))
        if cfg["max_canvas"] and setup["side"] > cfg["max_canvas"]:   # too big a mosaic: two units on canvases of their own
            one = author_am_setup(phi, 1); groups = [([u], one) for u in units[:2]]
        else: groups = [(units, setup)]
        for g, sg in groups:
            r = author_maximize(phi, g, M=unit_maximum(phi, g, probes_m), num_iters=cfg["am_iters"], seed=seed, mean=0.5, setup=sg)
            side = r.images.shape[-1]
            ims.append(r.images[0].cpu().clamp(0, 1))
            row = note_convergence(f"figs 5.15-5.16: {layer} units {g}", r)
            titles.append(mark(f"{layer} #{','.join(map(str, g))}\n{side} px, T={sg['jitter']}", row))
            results["maximize_canvas"][f"{layer}|{','.join(map(str, g))}"] = side
    T_cls = author_am_setup(classifier)["jitter"]
    classes = {31: "tree frog", 99: "goose", 100: "black swan", 933: "cheeseburger"}
    r = maximize(classifier, list(classes), shape, M=unit_maximum(classifier, list(classes), probes_m), jitter=T_cls,
                 num_iters=cfg["am_iters"], seed=seed, mean=0.5)
    with torch.no_grad(): top = classifier(r.images).argmax(1).tolist()
    results["maximize_top1"] = dict(zip(classes.values(), top)); results["maximize_jitter_classes"] = T_cls
    row = note_convergence("fig 5.18: classes", r); save()
    ims += list(r.images.cpu().clamp(0, 1)); titles += [mark(f"{n} (top-1 {t})", row) for n, t in zip(classes.values(), top)]
    r4 = maximize(classifier, [31] * 4, shape, M=unit_maximum(classifier, 31, probes_m), jitter=T_cls, num_iters=cfg["am_iters"],
                  seed=seed + 1, mean=0.5)
    row = note_convergence("fig 5.17 / fig 5.3: tree frog, jitter", r4); save()
    ims += list(r4.images.cpu().clamp(0, 1)); titles += [mark(f"tree frog, init {i}", row) for i in range(4)]
    fig = show_images(ims, titles=titles, ncols=4, size=2.4); fig.savefig(out / "fig5_15_18.png")


# %% [markdown]
# ## Fig 5.3: the effect of jitter
#
# The thesis maximises AlexNet's "tree frog" unit with and without jitter and finds that "jitter helps
# recover larger and crisper image structures". Here: the same four initialisations as above (tree frog,
# $C = 1$), with the author's jitter (a quarter of the classifier's stride: $T = 8$ for EfficientNet's 32) and without
# ($T = 1$). The size of the structures is measured by the
# energy-weighted mean spatial frequency of each pre-image's (grey, mean-removed) Fourier spectrum, in
# cycles per pixel — lower means larger structures —, crispness by the RMS contrast of the grey image, and
# the classifier's probability of the class tells whether the structures still serve the unit.

# %%
#| slow
def mean_frequency(images):
    "Energy-weighted mean radial spatial frequency (cycles/pixel) of each image's grey, mean-removed spectrum."
    g = images.mean(1)
    g = g - g.mean((-2, -1), keepdim=True)
    power = torch.fft.rfft2(g).abs().square()
    fy = torch.fft.fftfreq(g.shape[-2], device=g.device)[:, None]
    fx = torch.fft.rfftfreq(g.shape[-1], device=g.device)[None, :]
    radius = (fy.square() + fx.square()).sqrt()
    return (power * radius).sum((-2, -1)) / power.sum((-2, -1))

if "maximize" in chosen:
    r4_plain = maximize(classifier, [31] * 4, shape, M=unit_maximum(classifier, 31, probes_m), jitter=1,
                        num_iters=cfg["am_iters"], seed=seed + 1, mean=0.5)
    fig53 = {}
    for name, rr in (("jitter", r4), ("no jitter", r4_plain)):
        with torch.no_grad(): prob = classifier(rr.images).softmax(1)[:, 31]
        freq = mean_frequency(rr.images.clamp(0, 1))
        contrast = rr.images.clamp(0, 1).mean(1).std((-2, -1))
        fig53[name] = dict(mean_frequency=freq.mean().item(), mean_frequency_std=freq.std().item(),
                           rms_contrast=contrast.mean().item(), p_tree_frog=prob.mean().item())
        print(f"{name}: mean spatial frequency {freq.mean():.3f} ± {freq.std():.3f} cycles/px, "
              f"RMS contrast {contrast.mean():.3f}, p(tree frog) {prob.mean():.2f}")
    results["fig53"] = fig53; row_plain = note_convergence("fig 5.3: tree frog, no jitter", r4_plain); save()
    row_jit = next(c for c in results["convergence"] if c["figure"] == "fig 5.17 / fig 5.3: tree frog, jitter")
    fig = show_images(list(r4.images.cpu().clamp(0, 1)) + list(r4_plain.images.cpu().clamp(0, 1)),
                      titles=[mark(f"T={T_cls}, init {i}", row_jit) for i in range(4)]
                      + [mark(f"no jitter, init {i}", row_plain) for i in range(4)], ncols=4, size=2.2)
    fig.savefig(out / "fig5_3.png")

# %% [markdown]
# ## Fig 5.14: activation maximisation of a linear HOG template
#
# A linear classifier on HOG (a "template" $\mathbf{w}$) of synthetic objects — crops centred on spheres
# against crops of other objects and background, from the book's renderer — is the representation
# $\Phi(\mathbf{x}) = \langle \mathbf{w}, \Phi_{HOG}(\mathbf{x})\rangle$; $M = \langle|\mathbf{w}|, \Phi_{HOG}(\text{noise})\rangle$ (eq 5.9).

# %%
#| slow
import torch.nn.functional as F
from motion_nbs.data import render_scene

# %%
#| slow
if "template" in chosen:
    hog8, side = HOG(8), 48
    crops, labels = [], []
    for s in range(cfg["template_scenes"]):
        sc = render_scene("shapes", s, size=(96, 96))
        grey = sc["image"].mean(0, keepdim=True)
        for inst in sc["instances"].unique().tolist():
            ys, xs = (sc["instances"] == inst).nonzero(as_tuple=True)
            cy, cx = int(ys.float().mean()), int(xs.float().mean())
            y0, x0_ = min(max(cy - side // 2, 0), 96 - side), min(max(cx - side // 2, 0), 96 - side)
            crops.append(grey[:, y0:y0 + side, x0_:x0_ + side])
            labels.append(float(inst != 0 and sc["categories"][cy, cx].item() == 2))   # 2 = sphere
    X, y = torch.stack(crops), torch.tensor(labels)
    feats = hog8(X).flatten(1)
    w = torch.zeros(feats.shape[1], requires_grad=True); b = torch.zeros(1, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], max_iter=200)
    def closure():
        opt.zero_grad(); l = F.binary_cross_entropy_with_logits(feats @ w + b, y) + 1e-3 * w.square().sum(); l.backward(); return l
    opt.step(closure)
    w = w.detach()
    acc = ((feats @ w + b.detach() > 0).float() == y).float().mean().item()
    template = lambda im: (hog8(im).flatten(1) @ w)[:, None]
    M = (hog8(torch.rand(1, 1, side, side)).flatten(1) @ w.abs()).item()
    r = maximize(template, 0, (1, side, side), M=M, rho=side, num_iters=num_iters, seed=seed, mean=0.5)   # the template spans the crop
    results["template"] = dict(train_accuracy=acc, positives=int(y.sum()), crops=len(y)); note_convergence("fig 5.14: HOG template", r); save()
    wpos = w.clamp(min=0).view(1, 31, side // 8, side // 8)
    fig = show_images([hog_glyphs(wpos)[0][None], r.images[0].clamp(0, 1)], titles=[f"template w+ (acc {acc:.2f})", "activation maximisation"], size=3)
    fig.savefig(out / "fig5_14.png")

# %% [markdown]
# ## Figs 5.19–5.20: caricatures
#
# Started from the probe, $\Phi_0 = \max\{0, \Phi(\mathbf{x}_0)\}$, jitter a quarter of each layer's stride (the author's
# `get_preimage_opts.m`, 'enhance'); each layer exaggerates what it
# responds to. Row 1 uses the thesis' $C = 1$, row 2 $C = 20$: at the probe the regularisers are far
# from the "around unity" their normalisation aims at (for the cat at 64 px $\mathcal R_\alpha = 4.4$,
# $\mathcal R_{TV} = 8.2$; at 224 px 6.3 and 3.4), so with $C = 1$ the solver spends itself on smoothing.

# %%
#| slow
if "caricature" in chosen:
    x0 = natural_images(2, cfg["cnn_size"], folder=probe_dir)[1:].to(device)   # chelsea, the cat (or the folder's second)
    ims, titles, results["caricature_loss"] = [], [], {}
    T_layer = {layer: author_am_setup(cnn_phi(layer))["jitter"] for layer in layers}   # the author's jitter, once per layer
    for C in (1.0, 20.0):
        ims.append(x0[0].cpu()); titles.append("probe")
        for layer in layers:
            r = caricature(cnn_phi(layer), x0, jitter=T_layer[layer], num_iters=cfg["am_iters"],
                           seed=seed, mean=0.5, C=C)
            row = note_convergence(f"fig 5.19: {layer}, C={C:g}", r)
            ims.append(r.images[0].cpu().clamp(0, 1)); titles.append(mark(f"{layer}, C={C:g}", row))
            results["caricature_loss"][f"{layer}|{C:g}"] = round(float(r.history["loss"][-1, 0]), 3)   # -<Φ(x), Φ0>/|Φ0|², -1 at x0
    fig = show_images(ims, titles=titles, ncols=len(layers) + 1, size=2.2); fig.savefig(out / "fig5_19.png")
    save()

# %% [markdown]
# ## Explorer
#
# Pick an image, a representation (HOG, HOGb, DSIFT or a layer of the CNN), $C$ and $\beta$, and press
# *Run Interact* to compute its pre-image.

# %%
import ipywidgets as widgets

# %%
if "explorer" in chosen:
    names = ["astronaut", "chelsea", "coffee", "rocket"]
    def explore(image="chelsea", representation="HOG", layer=layers[0], C=100.0, beta=2.0, iters=100):
        x0 = natural_images(names.index(image) + 1, 96)[-1:]
        if representation == "CNN layer": phi, x0 = cnn_phi(layer), x0.to(device)
        else:
            phi = {"HOG": HOG(8), "HOGb": HOG(8, bilinear_orientations=True), "DSIFT": DenseSIFT(8, 8)}[representation]
            x0 = x0.mean(1, keepdim=True) if representation == "DSIFT" else x0
        r = invert(phi, x0, C=C, beta=beta, num_iters=iters, mean=0.5, progress=True)
        show_images([x0[0].cpu(), r.images[0].cpu().clamp(0, 1)], titles=["probe", f"pre-image: {100 * r.error.sqrt().item():.1f}%"], size=3)
        plt.show()
    explorer = widgets.interactive(explore, {"manual": True}, image=names, representation=["HOG", "HOGb", "DSIFT", "CNN layer"],
                                   layer=layers, C=widgets.FloatLogSlider(100, min=0, max=4), beta=(1.0, 3.0, 0.5), iters=(10, 400, 10))
    display(explorer)

# %% [markdown]
# ## What came out
#
# Measured with the defaults (`preset="fast"`, one torch thread) on 2 CPU cores, in the time the runtime line under the
# title states (`make book` re-runs it with the saved experiments). (With torch's default 2 threads on a loaded machine a second thread made one small
# inversion 60–100× slower, so `num_threads = 1` is the default.) Saved in `nbs/05c_preimage_results.json` and
# shown below. The scale is tiny: table 5.2 uses **8 grey probes at 128 px** (the eight scikit-image photos,
# not the first 100 ILSVRC validation images); the CNN sweep uses **2 probes (astronaut, chelsea) at 64 px,
# 40 + 6 iterations, 2 initialisations** on EfficientNet-lite0 (not AlexNet), so each consistency value is
# over 2 pre-images (steps of 0.5), the CIs of fig 5.5 are from n = 2 and those of table 5.2 from n = 8.
# Every error below is the thesis' unsquared $\|\Phi(x) - \Phi_0\|/\|\Phi_0\|$ (eq 5.2's squared ratio is in
# the saved file as `error_squared`).
#
# **Table 5.2** (C = 100, 300 iterations, no jitter; mean ± 95% CI over the probes):
#
# | | HOGgle | HOG | HOGb | DSIFT |
# |---|---|---|---|---|
# | thesis (%) | 60.1 ± 2.3 | 36.6 ± 3.4 | 11.6 ± 0.9 | 9.4 ± 1.7 |
# | ours (%) | — | 39.5 ± 6.4 | 13.3 ± 4.5 | 7.7 ± 2.8 |
# | ours, the author's protocol (%) | — | 39.1 ± 6.7 | 13.4 ± 4.4 | 7.6 ± 2.6 |
# | ours, eq 5.2 squared (%) | — | 16.3 ± 5.2 | 2.1 ± 1.5 | 0.7 ± 0.5 |
#
# The ordering HOG > HOGb > DSIFT of the thesis is reproduced. Compared like with like, HOG (39.5 %) and HOGb
# (13.3 %) are above the thesis' means and DSIFT (7.7 %) below; with n = 8 all three intervals overlap the
# thesis'. (The squared ratios are far lower, which is why an earlier version of this chapter, comparing
# them with the thesis, found every target met.) **The author's protocol does not explain the HOG gap**:
# optimising on 0–255 images without mean subtraction and scoring HOG on the inner cells as DPM's
# `features` does moves HOG by 0.4 points, HOGb by 0.1 and DSIFT by 0.04. Other differences remain: our probes are
# 8 photographs at 128 px, the author's 100 ILSVRC validation images at full resolution (not resized; about 500×375); HOGgle was not run.
#
# **Table 5.2 at the thesis' scale** (100 probes at 224 px: the 8 photos and 92 frames of the three sample
# videos, `-p experiments table52 -p num_images 100 -p image_size 224 -p num_threads 2`, 42 min on 2 cores
# shared with other jobs): HOG 41.8 ± 1.6 %, HOGb 14.0 ± 0.9 %, DSIFT 8.1 ± 0.7 % (squared: 18.1 / 2.2 / 0.8 %);
# under the author's protocol 42.2 ± 1.6, 14.0 ± 0.9 and 8.1 ± 0.7 %. With tighter intervals the picture is
# the fast preset's: DSIFT lies within the thesis' interval, while **HOG (41.8 against 36.6 ± 3.4) and HOGb
# (14.0 against 11.6 ± 0.9) are above it, and the author's protocol does not close the gap** (HOG +0.35
# points). What remains different: our probes (92 of them frames of three clips, far from independent, so
# the intervals understate the uncertainty) against the first 100 ILSVRC validation images; their size
# (224 px crops against the author's full-resolution images: `exp_inversion_hog.m` reads each probe and converts it
# to grey without resizing); and the author's networks, `hog_net.m` and `dsift_net.m`, which are not VLFeat
# (chapter 05d). Three candidates measured on the 8 photos (`table52_hog_diagnostics`): 160 instead of 128 px lowers
# HOG's error by 0.5 points (39.0 %), the author's learning rate ($0.05B^2/\alpha$, five times ours) changes it by
# less than 1 point, and 1,000 instead of 300 iterations lowers it by 1.5 points (37.4 % at 160 px) — none is the
# 5-point gap. (An earlier version of this page took the author's images to be 160 px from the folder names
# `inversion160` / `inversion-val160`; the script does not resize, and 160 there is most likely $B_+$ = `x0_max` =
# 160 of `get_defaults.m`. The 160-px run is kept as a measurement of size, not as the author's protocol.) Per
# source, at full resolution and through the author's networks: "Where the gap comes from" below. Fig 5.4 at this scale
# (`05c_preimage_fig5_4_100_probes_224px.jpg`) looks like the thesis': HOG pre-images show the edges with
# grid-aligned streaks and lose the shading, HOGb is smoother and closer, DSIFT is the most detailed.
#
# **Where the gap comes from** (`table52_by_source`, `author_networks`, `author_networks_paired`; settings in
# `table52_settings`). Per probe source, at 224 px, with the book's modules (mean ± 95 % CI over the probes):
#
# | | photographs (n = 8) | bikes (31) | bigbuckbunny (31) | carphone (30) | all (100) | thesis |
# |---|---|---|---|---|---|---|
# | HOG (%) | 38.4 ± 5.0 | 47.2 ± 2.2 | 32.4 ± 0.7 | 47.1 ± 0.3 | 41.9 ± 1.6 | 36.6 ± 3.4 |
# | HOGb (%) | 14.4 ± 3.8 | 15.4 ± 2.2 | 10.3 ± 0.6 | 16.4 ± 0.2 | 14.0 ± 0.9 | 11.6 ± 0.9 |
#
# The 100-probe mean is a mixture: the photographs sit near the thesis, bigbuckbunny's clean animated frames below it,
# and the bikes frames and carphone's (a 176×144 clip upsampled to 224, whose blur HOG's normalisation cannot
# recover) ten points above. **At full resolution — the thesis' protocol, since the author's `exp_inversion_hog.m` reads
# each probe without resizing — the photographs give HOG 38.0 ± 3.9 % and HOGb 13.1 ± 2.6 %, inside the thesis'
# intervals** (36.6 ± 3.4 and 11.6 ± 0.9); carphone at its native 144×176 gives HOG 43.8 ± 0.2 %. So most of the
# gap is the probe set: natural photographs at their own size reproduce table 5.2, the video frames do not. With
# n = 8 photographs the agreement is loose (the intervals are ±4 and ±3 points); ILSVRC's validation images
# (`probe_dir`) would settle it.
#
# **The author's networks do not explain the gap either** (chapter 05d; the author's protocol: 0–255, no mean,
# $\eta_0 = 0.05B^2/\alpha$, HOG scored as DPM's `features`). On the same full-resolution photographs they give HOG
# 38.9 ± 3.8 % (41.1 % in its own 27-component space), HOGb 13.5 ± 2.5 %, DSIFT 9.8 ± 2.8 % (thesis 9.4 ± 1.7); paired
# with our modules on the same probes HOG and HOGb are slightly *worse*: HOG +1.0 ± 0.4 points, HOGb +0.4 ± 0.4 (at
# 224 px +2.0 ± 1.3 and +1.4 ± 0.7; on the carphone frames at full resolution +0.1 ± 0.3 and +0.1 ± 0.2); the zero
# padding's edge around every image, which the author's HOG must reproduce, is the likeliest cost. DSIFT, whose
# author's network differs most from VLFeat's (descriptors every 24 px, normalised once), goes the other way but within
# noise: ours 10.8 ± 3.5 %, the author's 9.8 ± 2.8 % on the full-resolution photographs, paired −1.1 ± 1.2 points (on
# carphone's frames the author's gives 6.7 ± 0.2 %). Not run (`table52_settings`): the author's networks on the video
# frames at 224 px, bikes and bigbuckbunny at full resolution, and our DSIFT per source at 224 px.
#
# **Convergence** (`convergence`, this page's default run of 6 Dec 2026, 05b's criterion: the last 50 iterations bring at
# most 1 % of the objective's fall). Converged: table 5.2's HOGb and DSIFT (0.2 %), fig 5.2 except $C = 1000$ (1.7 %),
# fig 5.14's template (0.1 %); table 5.2's HOG at 300 iterations is just short (1.5 %). The inversions of figs 5.5 and
# 5.12 in the `fast` preset run 40 (+6) iterations and so are unconverged by definition; they show the method's shape,
# not its result (the 300-iteration runs below are the ones to compare with the thesis). Activation maximisation and
# caricatures (figs 5.3, 5.15–5.19) run 300 iterations in every preset: their convergence is below, under "Activation
# maximisation and caricatures", and a figure's title says "not converged" where one of its images is not. The CNN numbers
# quoted below were measured before the fine-tuning stage restarted Algorithm 1 (05b, 6 Dec 2026); the tables this page
# prints from this run's `results.json` are after it.
#
# **Fig 5.2** (HOG, astronaut): error 48.2 % at C = 1, 38.2 % at C = 100, 36.7 % at C = 1000 (β = 2); 39.6 %
# at β = 1 and 37.5 % at β = 1.5 (C = 100). C = 1 is smooth and washed out; C = 1000 and β = 1 add
# high-frequency texture/speckle, as in the thesis.
#
# **Fig 5.5/5.6, fast preset (40 + 6 iterations)** — error (%) for C = 1 / 20 / 100 / 300: blocks.0 87.0 / 49.6 /
# 37.1 / 35.5; blocks.2 70.6 / 53.2 / 53.0 / 54.3; blocks.4 54.1 / 42.3 / 44.3 / 46.3; conv_head 54.1 / 53.1 /
# 55.5 / 78.6; classifier 97.7 / 88.8 / 94.6 / 95.9. These inversions are **not converged** (the classifier is
# still above 88 % at iteration 40, and the error *rises* with C at conv_head), and at 40 iterations they move
# between runs that differ only in floating-point rounding. The standard deviation of the squared error over
# the initialisations is ≤ 0.016 up to blocks.4 (thesis: about 0.02 or less), 0.04–0.17 at conv_head. Classification
# consistency is 0–0.5 (over 2 pre-images) except blocks.4 at C = 20 (1.0); gradient-histogram intersection
# with the probe is 0.24–0.65, lowest at C = 1.
#
# **Other figures** (fast preset): fig 5.12 (errors in the titles) and fig 5.14 (the HOG template fits its 47
# crops — 9 spheres — perfectly, i.e. overfits; its maximisation shows no clear sphere).
#
# **CNNs at the thesis' scale** (saved as `cnn_224px`: 4 probes at 224 px, 300 + 50 iterations, 2 initialisations of each;
# fig `05c_preimage_fig5_5_224px.jpg`). Error (%) for C = 1 / 20 / 100 / 300: blocks.0 63.6 / 36.9 / 22.8 / 14.8;
# blocks.2 43.5 / 29.2 / 25.3 / 24.1; blocks.4 29.0 / 21.5 / 19.8 / 19.5; conv_head 30.5 / 22.3 / 20.1 / 19.2;
# classifier 26.5 / 19.2 / 16.7 / 14.9 (95 % intervals ±3 to ±11 points with 4 probes). The thesis' three findings
# hold qualitatively: **with C = 300 the error is 15–20 % at every layer except blocks.2 (24 %)**, the thesis'
# "10–20 %, including the deepest layers"; strong regularisation (C = 1) costs most at the first layers
# (+49 points at blocks.0, +12 at the classifier); and the standard deviation of the squared error over
# initialisations is ≤ 0.018 everywhere (thesis: about 0.02 or less). Classification consistency is lower than the
# thesis' "above 0.8 in most cases" at blocks.0 (0.25–0.75) and 0.5–1.0 at the other layers (0.75 or more in 14 of
# their 16 values) — with 4 probes each value moves in steps of 0.25. Converged inversions matter: at 64 px with 300 instead of 40 iterations
# (`cnn_300_iters`) the C = 300 errors fall to 15–20 % too, and the error decreases with C up to C = 100 at every
# layer (from 100 to 300 it changes by less than 1 point at the three deepest), where at 40 iterations it rose.
#
# Left to do: the 224-px sweep with more probes and initialisations, figs 5.12 and 5.15–5.19 at 224 px, the
# `paper` preset (100 probes, 24 initialisations of the first 24, 224 px, 300 + 50 iterations: 13,040 inversions
# for the 5 × 4 sweep, about 40 hours on these 2 cores) on a GPU, ILSVRC's validation images as probes
# (`probe_dir`), AlexNet/VGG-16 (`network`, weights not on this machine), and a user study for naturalness.

# %%
from IPython.display import Image, Markdown, display

# %%
SAVED = (Path.cwd().parent if Path.cwd().name == "nbs" else Path.cwd()) / "nbs" / "05c_preimage_results.json"
def _pm(v, key):
    ci = v.get(key.replace("error", "ci95"), math.nan)
    return f"{v[key]:.1f}" + (f" ± {ci:.1f}" if ci is not None and math.isfinite(ci) else "")

def sweep_table(sweep: dict) -> str:
    "Markdown table of a fig 5.5/5.6 sweep: error % ± 95% CI (unsquared; squared after it), std of the squared error over inits, consistency, histogram intersection."
    lays = list(dict.fromkeys(k.split("|")[0] for k in sweep)); cs = list(dict.fromkeys(k.split("|")[1] for k in sweep))
    lines = ["| layer (jitter T) | " + " | ".join(cs) + " |", "|---|" + "---|" * len(cs)]
    def cell(v):
        return (f"{_pm(v, 'error')}% (sq. {v['error_squared']:.1f}%), std {v['std_over_inits']:.3f}, cons {v['consistency']:.2f}, "
                f"hist {v['hist_intersection']:.2f}")
    for l in lays:
        cells = [sweep[f"{l}|{c}"] for c in cs]
        lines.append(f"| {l} ({cells[0]['jitter']}) | " + " | ".join(cell(v) for v in cells) + " |")
    return "\n".join(lines)

def source_table(rows: list, label: str) -> str:
    "Markdown table of `table52_by_source` / `author_networks` rows: error % ± 95% CI (n) per representation and size, by source."
    cols = [c for c in ("photographs", "bikes", "bigbuckbunny", "carphone", "all") if any(r["source"] == c for r in rows)]
    lines = [f"| {label} | size | " + " | ".join(cols) + " |", "|---|---|" + "---|" * len(cols)]
    for rep in dict.fromkeys(r["representation"] for r in rows):
        for size in dict.fromkeys(r["size"] for r in rows if r["representation"] == rep):
            cell = {r["source"]: r for r in rows if r["representation"] == rep and r["size"] == size}
            fmt = lambda r: f"{r['error']:.1f}" + (f" ± {r['ci95']:.1f}" if r.get("ci95") is not None else "") + f" (n={r['n']})"
            lines.append(f"| {rep} | {size} | " + " | ".join(fmt(cell[c]) if c in cell else "" for c in cols) + " |")
    return "\n".join(lines)

if SAVED.exists():
    saved = json.loads(SAVED.read_text())
    print(saved["note"])
    for key in ("table52", "table52_100_probes_224px"):
        if key not in saved: continue
        author = saved.get(key.replace("table52", "table52_author"), {})
        lines = [f"**{key}** ({saved['table52_settings'][key]})", "",
                 "| | error ‖Φ(x)−Φ0‖/‖Φ0‖ (%) | squared, eq 5.2 (%) | author's protocol (%) | thesis (%) |", "|---|---|---|---|---|",
                 "| HOGgle | | | | 60.1 ± 2.3 |"]
        rows = [f"| {k} | {_pm(v, 'error')} | {_pm(v, 'error_squared')} | {_pm(author[k], 'error') if k in author else ''} | "
                f"{v['thesis']:.1f} |" for k, v in saved[key].items()]
        display(Markdown("\n".join(lines + rows)))
    if "table52_by_source" in saved:
        display(Markdown(f"**table52_by_source** ({saved['table52_settings']['table52_by_source']})\n\n"
                         + source_table(saved["table52_by_source"], "book's module") + "\n\n**author_networks**\n\n"
                         + source_table(saved.get("author_networks", []), "author's network")))
    for key in ("cnn", "cnn_300_iters", "cnn_224px", "cnn_224px_8_probes", "cnn_224px_8_inits"):
        if key in saved: display(Markdown(f"**{key}** ({saved['sweep_settings'][key]})\n\n" + sweep_table(saved[key])))
    for key in ("maximize_top1_224px", "fig53_224px", "caricature_224px"):
        if key in saved: print(f"{key} ({saved['sweep_settings'][key]}):\n  {saved[key]}")
    for fig in sorted([*SAVED.parent.glob("05c_preimage_fig*.png"), *SAVED.parent.glob("05c_preimage_fig*.jpg")]):
        display(Image(str(fig)))
else: print(f"no saved results at {SAVED}")


# %% [markdown]
# **Activation maximisation and caricatures, as the author ran them** (figs 5.15–5.19 and 5.3, the default preset:
# 300 iterations, mosaics of `am_units` units on canvases of about 1.1 receptive fields, jitter a quarter of the stride; saved
# figures `05c_preimage_fig5_15_18.jpg`, `05c_preimage_fig5_3.jpg`, `05c_preimage_fig5_19.jpg`). blocks.0's units are
# colour blobs the size of their small fields; blocks.2's four units sit at the centres of their cells as oriented
# stripes and radial textures filling their fields; blocks.4's are larger curved parts, each on a canvas of its own
# (its mosaic would exceed the preset's limit). The class images are low-contrast textures spread over the frame with
# parts of their classes (the black swan's red bill and neck, the goose's neck): at the `fast` preset's image size the
# classifier's field is far larger than the image, so no object layout emerges. The numbers, from the saved results:

# %%
#| echo: false
def am_prose(saved: dict) -> str:
    "What the saved maximisations and caricatures measured, in sentences (from `nbs/05c_preimage_results.json`)."
    top, f53, car = saved["maximize_top1"], saved["fig53"], saved["caricature_loss"]
    want = {"tree frog": 31, "goose": 99, "black swan": 100, "cheeseburger": 933}
    hits = [k for k, c in want.items() if top[k] == c]
    am = [c for c in saved["convergence"] if c["figure"].startswith(("figs 5.15", "fig 5.17", "fig 5.18", "fig 5.3", "fig 5.19"))]
    slow = [c["figure"] for c in am if not c["converged"]]
    j, n = f53["jitter"], f53["no jitter"]
    ranges = {C: [v for k, v in car.items() if k.endswith(f"|{C}")] for C in (1, 20)}
    return "\n".join([
        "- Canvases: " + "; ".join(f"{k.split('|')[0]} units {k.split('|')[1]}: {v} px" for k, v in saved["maximize_canvas"].items())
        + f"; the classes at 64 px with jitter T = {saved['maximize_jitter_classes']}.",
        f"- **{len(hits)} of the 4 class visualisations are their class's top-1** ("
        + ", ".join(f"{k} {top[k]}" for k in want) + ").",
        f"- Fig 5.3, the tree frog from four initialisations: with jitter probability {j['p_tree_frog']:.2f}, RMS contrast "
        f"{j['rms_contrast']:.3f}, mean spatial frequency {j['mean_frequency']:.3f} ± {j['mean_frequency_std']:.3f} cycles/px; "
        f"without {n['p_tree_frog']:.2f}, {n['rms_contrast']:.3f}, {n['mean_frequency']:.3f} ± {n['mean_frequency_std']:.3f}. "
        + ("Jitter gives larger structures (a lower mean frequency), as the thesis found."
           if j["mean_frequency"] + j["mean_frequency_std"] < n["mean_frequency"] - n["mean_frequency_std"] else
           "Jitter does not give larger structures here (its mean frequency is not lower): the thesis' fig 5.3 is not reproduced "
           "at 64 px on EfficientNet-lite0" + (", though it gives more contrast." if j["rms_contrast"] > n["rms_contrast"] else ".")),
        "- Caricatures (fig 5.19, from the cat): final loss " + "; ".join(
            f"{max(v):.2f} to {min(v):.2f} at C = {C}".replace("-", "−") for C, v in ranges.items()) + " (−1 at the probe).",
        f"- Convergence (chapter 05b's criterion): {len(am) - len(slow)} of these {len(am)} pre-images converged"
        + (f"; not: {', '.join(slow)}." if slow else ".")])

if SAVED.exists(): display(Markdown(am_prose(json.loads(SAVED.read_text()))))

# %% [markdown]
# **Did this run's pre-images converge?** Every figure drawn above, by chapter 05b's criterion (`convergence`: the
# last 50 iterations bring at most 1 % of the objective's fall), for the worst image of the figure; a figure made with
# 50 iterations or fewer counts as not converged. Saved as `convergence` in the results.

# %%
conv = results.get("convergence") or (json.loads(SAVED.read_text()).get("convergence", []) if SAVED.exists() else [])
display(Markdown("| figure | iterations | share of the fall in the last 50 | converged |\n|---|---|---|---|\n"
                 + "\n".join(f"| {c['figure']} | {c['iterations']} | {c['relative_fall_last_50']} | {'yes' if c['converged'] else 'no'} |"
                              for c in conv)))

# %% [markdown]
# ## Results

# %%
save()
print(json.dumps({k: v for k, v in results.items() if k != "config"}, indent=1))
