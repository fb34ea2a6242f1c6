# %%
#| default_exp dissect

# %% [markdown]
# # Visualising the motion-trained network
#
# > Network dissection of the CPFS network against a random and a supervised network of the same architecture, and the chapter 5 visualisations applied to it.

# %% [markdown]
# *Default run: **1 min 49 s** on 2 CPU cores with the default parameters (measured by `make book` on 6 Dec 2026, reusing the training and caches that earlier runs left in the runs folder, `core.runs_dir`; where a first run on a new machine takes longer, the chapter says so).*

# %% [markdown]
# Chapter 6 of the thesis looks inside the AlexNet trained with CPFS (chapter 3) in two ways. The
# pre-image tools of chapter 5 show what its units respond to (activation maximisation, figs 6.1–6.3)
# and what its layers keep of an image (inversion, fig 6.6; caricatures, fig 6.7), beside a randomly
# initialised and an ImageNet-supervised AlexNet. *Network dissection* (Bau et al., 2017; section 6.3,
# fig 6.8) then counts the units that behave like detectors of a human-labelled concept.
#
# Dissection, as used in the thesis, works per unit $k$ of a layer:
#
# 1. over the whole probe data set, take the threshold $T_k$ with $P(a_k > T_k) = 0.005$ (the top
#    quantile of all the unit's activations at all positions of all images);
# 2. upsample each activation map bilinearly to the image and threshold it: $M_k(x) = [a_k(x) > T_k]$;
# 3. for every concept $c$ with masks $L_c(x)$, the data-set-wide
#    $\mathrm{IoU}_{k,c} = \frac{\sum_x |M_k(x) \cap L_c(x)|}{\sum_x |M_k(x) \cup L_c(x)|}$, summed over
#    the images in which $c$'s kind of concept is annotated;
# 4. the unit is a detector of its best concept when that IoU exceeds 0.04.
#
# The thesis dissects with Broden (objects, parts, materials, colours, textures, scenes). Broden cannot
# be downloaded here, so the book's default concepts come from the renderer of chapter 02a, which knows
# every pixel's object category, surface part, texture and colour; `BrodenConcepts` reads a Broden
# folder when a user has one.

# %%
#| export
import csv
import hashlib
import json
from collections import OrderedDict
from dataclasses import asdict, dataclass, field
from pathlib import Path

from PIL import Image
import numpy as np
from scipy import stats
import torch
import torch.nn as nn
import torch.nn.functional as F

from motion_nbs.core import atomic_save, check_choice, load_image, runs_dir, tqdm
from motion_nbs.cpfs import CPFSConfig, finished_run, load_cpfs, train as train_cpfs
from motion_nbs.data import CATEGORIES, NUM_FACES, OBJECT_WORLDS, SceneDataset, TEXTURES
from motion_nbs.models import alexnet_cpfs_small, fold_batchnorm, layer_outputs, load_pretrained, receptive_fields, vgg16_small
from motion_nbs.transfer import calibrate_batchnorm, fine_tune_classifier, labelled_frames
from motion_nbs.preimage import (IMAGENET_MEAN, IMAGENET_STD, LayerPhi, caricature, invert, maximize, natural_images,
                                 unit_maximum)

# matplotlib and scikit-image are imported where they are used (the figures, the colour names): both are slow to import.

# %%
#| hide
import tempfile

from fastcore.test import test_close, test_eq, test_fail

# %% [markdown]
# ## Parameters
#
# The dissection is the same for every preset. `preset` sets the pre-image figures (figs 6.1–6.3, 6.6,
# 6.7):
#
# - `"cpu"` (default): 64-px pre-images, the thesis' 300 iterations of Algorithm 1 (inversion: 300 + 50 without
#   jitter), 25 units per conv layer and 3 per fc layer, 4 initialisations per inversion. The results
#   are cached under `_runs/06_visualize_motion/` (`core.runs_dir`), keyed by these settings and the networks'
#   weights, so a second run only draws them.
# - `"paper"`: the thesis' settings — 224-px pre-images, 300 iterations (inversion: 300 + 50), the
#   same units and initialisations — recomputed even when a cache file exists (and then cached).
#
# Both use the thesis' per-layer parameters (jitter $T$ a quarter of the layer's stride; inversion
# $C = 300$ up to relu3, 100 at relu4, 20 at relu5, 1 beyond). **Deviation:** caricatures use $C = 20$
# (`car_C`) instead of the thesis' $C = 1$. Chapter 05c found that at $C = 1$ the regularisers win — at
# the probe they are 4.4 (α-norm) and 8.2 (TV) rather than the ≈ 1 the normalisation aims for — and a
# caricature only blurs towards the mean colour (this chapter's earlier $C = 1$ runs did the same);
# $C = 20$ gives the thesis' exaggerated patterns. The networks themselves come from their checkpoints
# (03_cpfs_transfer's `objects_ce_seed0` CPFS run and the supervised network of `objects_classifier`) in both presets.

# %% tags=["parameters"]
preset = "cpu"  # "cpu": 64-px pre-images, 300 iterations, cached; "paper": the thesis' 224 px and 300 iterations, recomputed
results_path = None  # the dissection's saved results; None: 06_dissection_results.json in the working directory (nbs/)

# %%
from motion_nbs.core import reject_unknown_parameters

# %%
reject_unknown_parameters()  # a -p name this notebook does not define stops the run here, listing the valid ones

# %%
#| export
PREIMAGE_PRESETS = {
    "cpu": dict(size=64, units=25, fc_units=3, inits=4, max_iters=300, inv_iters=300, finetune_iters=50, car_iters=300, car_C=20.0,
                use_cache=True),
    "paper": dict(size=224, units=25, fc_units=3, inits=4, max_iters=300, inv_iters=300, finetune_iters=50, car_iters=300,
                  car_C=20.0, use_cache=False),
}

def preimage_settings(preset: str  # a key of `PREIMAGE_PRESETS`
                     ) -> dict:
    "The pre-image settings of a preset (a copy, with `preset` added); an unknown preset raises `ValueError`."
    if preset not in PREIMAGE_PRESETS:
        raise ValueError(f"preset={preset!r} is not a preset of this chapter; valid presets: {', '.join(map(repr, PREIMAGE_PRESETS))}")
    return dict(PREIMAGE_PRESETS[preset], preset=preset)


# %%
settings = preimage_settings(preset)  # raises a ValueError naming the valid presets
test_eq(preimage_settings("paper")["max_iters"], 300)
test_fail(lambda: preimage_settings("gpu"), contains="valid presets: 'cpu', 'paper'")
settings

# %% [markdown]
# ## Concepts
#
# A concept data set is a map-style data set whose items are `{"image": (3,H,W), "masks": {name: (H,W)
# bool}}`. Concept names are `kind:name` (e.g. `category:cube`, `colour:red`). An item lists a mask
# for every concept of each kind it annotates — an empty mask where the concept is absent — and leaves
# out the kinds it does not annotate; only annotated images count towards a concept's IoU.
#
# The synthetic concepts of a `shapes` scene:
#
# - `category`: cube, sphere, cylinder and the background plane;
# - `part`: the side and the caps of a cylinder, and cube faces by their orientation to the camera
#   (the face whose normal points most towards the camera, `cube front`, and the others, `cube side`);
#   from the renderer's part ids;
# - `texture`: each of `TEXTURES` (checker, stripes, noise, brick, ...);
# - `colour`: eleven colour names as in Broden (black, white, grey, red, orange, yellow, green, blue,
#   purple, pink, brown), from each pixel's hue, saturation and value.

# %%
#| export
COLOUR_NAMES = ("black", "white", "grey", "red", "orange", "yellow", "green", "blue", "purple", "pink", "brown")

def colour_names(image: torch.Tensor  # `(3,H,W)` RGB in [0,1]
                ) -> torch.Tensor:
    "Index into `COLOUR_NAMES` of every pixel's colour, from its HSV coordinates. Shape: `(3,H,W)` → `(H,W)` long."
    import skimage.color
    if image.ndim != 3 or image.shape[0] != 3: raise ValueError(f"image must be (3,H,W) RGB, got {tuple(image.shape)}")
    hsv = torch.from_numpy(skimage.color.rgb2hsv(image.clamp(0, 1).permute(1, 2, 0).double().numpy()))
    h, s, v = hsv[..., 0] * 360, hsv[..., 1], hsv[..., 2]
    out = torch.full(h.shape, COLOUR_NAMES.index("red"), dtype=torch.long)
    for name, lo, hi in (("orange", 15, 45), ("yellow", 45, 70), ("green", 70, 170), ("blue", 170, 260),
                         ("purple", 260, 300), ("pink", 300, 345)):
        out[(h >= lo) & (h < hi)] = COLOUR_NAMES.index(name)
    out[(out == COLOUR_NAMES.index("orange")) & (v < 0.6)] = COLOUR_NAMES.index("brown")
    grey = s < 0.15
    out[grey] = COLOUR_NAMES.index("grey")
    out[grey & (v > 0.85)] = COLOUR_NAMES.index("white")
    out[v < 0.15] = COLOUR_NAMES.index("black")
    return out


# %%
_px = torch.tensor([[0, 0, 0], [1, 1, 1], [.5, .5, .5], [1, 0, 0], [1, .5, 0], [1, 1, 0], [0, 1, 0], [0, 0, 1], [.6, 0, 1],
                    [1, .4, .7], [.5, .25, 0]]).T[:, None, :]
test_eq([COLOUR_NAMES[i] for i in colour_names(_px)[0].tolist()], list(COLOUR_NAMES))
test_fail(lambda: colour_names(torch.zeros(4, 2, 2)), contains="(3,H,W) RGB")

# %%
#| export
PART_NAMES = ("cube front", "cube side", "cylinder side", "cylinder cap")

def scene_concepts(scene: dict  # a `render_scene` result
                  ) -> dict:
    "The synthetic concept masks of a rendered scene: `{'kind:name': (H,W) bool}` for every concept."
    cats, parts, inst = scene["categories"], scene["parts"], scene["instances"]
    masks = {f"category:{name}": cats == i for i, name in enumerate(CATEGORIES)}
    masks.update({f"texture:{name}": scene["textures"] == i for i, name in enumerate(TEXTURES)})
    col = colour_names(scene["image"])
    masks.update({f"colour:{name}": col == i for i, name in enumerate(COLOUR_NAMES)})
    # parts: face index within its object = part id - the object's first part id
    face = torch.zeros_like(parts)
    for i in inst.unique().tolist():
        if i == 0: continue
        m = inst == i
        face[m] = parts[m] - parts[m].min()  # the smallest visible id; exact unless the first face is hidden
    part = {n: torch.zeros_like(cats, dtype=torch.bool) for n in PART_NAMES}
    cube = cats == CATEGORIES.index("cube")
    for i in inst[cube].unique().tolist():  # the cube face seen most head-on: the largest visible face
        m = (inst == i)
        ids, counts = parts[m].unique(return_counts=True)
        front = parts == ids[counts.argmax()]
        part["cube front"] |= m & front
        part["cube side"] |= m & ~front
    cyl = cats == CATEGORIES.index("cylinder")
    part["cylinder side"] = cyl & (face == 0)
    part["cylinder cap"] = cyl & (face > 0)
    masks.update({f"part:{n}": m for n, m in part.items()})
    return masks

class SceneConcepts(torch.utils.data.Dataset):
    "Rendered scenes as a concept data set (see `scene_concepts`)."
    def __init__(self, preset: str = "shapes", length: int = 64, seed: int = 0, size=(128, 128)):
        self.scenes = SceneDataset(preset, length=length, seed=seed, size=size)
    def __len__(self): return len(self.scenes)
    def __getitem__(self, i):
        s = self.scenes[i]
        return {"image": s["image"], "masks": scene_concepts(s)}


# %% [markdown]
# The cylinder's side is its first part and the caps follow (chapter 02a). For cubes, the orientation
# of each face is not among the renderer's outputs, so "front" is the largest visible face: the one most
# squarely facing the camera in almost every view. One scene and its concepts:

# %%
_sc = SceneConcepts(length=2, size=(96, 96))[0]
test_eq(_sc["image"].shape, (3, 96, 96))
_m = _sc["masks"]
test_eq(_m["category:background"] | _m["category:cube"] | _m["category:sphere"] | _m["category:cylinder"], torch.ones(96, 96, dtype=torch.bool))
test_eq(sum(_m[f"colour:{c}"].long() for c in COLOUR_NAMES), torch.ones(96, 96, dtype=torch.long))  # one colour per pixel
test_eq(_m["part:cylinder side"] | _m["part:cylinder cap"], _m["category:cylinder"])
test_eq(_m["part:cube front"] | _m["part:cube side"], _m["category:cube"])

# %%
from motion_nbs.core import show_images

# %%
_show = ["category:cube", "category:sphere", "category:cylinder", "part:cube front", "part:cylinder cap", "colour:blue"]
fig = show_images([_sc["image"]] + [_m[k].float()[None].expand(3, -1, -1) for k in _show], ["image"] + _show, ncols=7, size=1.8)

# %% [markdown]
# ### Broden folders
#
# Broden (Bau et al.) stores `index.csv` (one row per image: the image path, its size, the segmentation
# size, then one column per concept kind — `color`, `object`, `part`, `material` list `;`-separated mask
# PNGs in which a pixel's label number is `R + 256·G`; `scene` and `texture` list label numbers that
# hold for the whole image) and `label.csv` (`number,name,...`). `BrodenConcepts` turns that into the
# same items, with masks resized (nearest) to the image.

# %%
#| export
BRODEN_PIXEL_KINDS = ("color", "object", "part", "material")
BRODEN_IMAGE_KINDS = ("scene", "texture")

class BrodenConcepts(torch.utils.data.Dataset):
    "A Broden-format folder (index.csv, label.csv, images/) as a concept data set."
    def __init__(self, root,  # the folder holding index.csv, label.csv and images/
                 kinds=BRODEN_PIXEL_KINDS + BRODEN_IMAGE_KINDS,  # concept kinds to read
                 split=None,  # keep only rows of this split (e.g. "val"); None: all
                 size=None):  # resize images (and masks) to (H,W); None: keep
        self.root = Path(root)
        for f in ("index.csv", "label.csv"):
            if not (self.root / f).exists(): raise FileNotFoundError(f"{self.root / f} is missing: not a Broden folder (expected index.csv, label.csv and images/)")
        bad = set(kinds) - set(BRODEN_PIXEL_KINDS + BRODEN_IMAGE_KINDS)
        if bad: raise ValueError(f"unknown Broden concept kinds {sorted(bad)}; valid: {', '.join(BRODEN_PIXEL_KINDS + BRODEN_IMAGE_KINDS)}")
        with open(self.root / "label.csv") as f: self.labels = {int(r["number"]): r["name"] for r in csv.DictReader(f)}
        with open(self.root / "index.csv") as f: rows = list(csv.DictReader(f))
        self.rows = [r for r in rows if split is None or r.get("split") == split]
        if not self.rows: raise ValueError(f"{self.root / 'index.csv'}: no images" + (f" in split {split!r}" if split else ""))
        self.kinds, self.size = tuple(kinds), size
        self.concepts = sorted({f"{k}:{self.labels[n]}" for r in self.rows for k in self.kinds for n in self._numbers(r, k)})

    def _numbers(self, row, kind):
        "Label numbers present in a row's entries of `kind` (reads the mask files of pixel kinds)."
        if not row.get(kind): return set()
        if kind in BRODEN_IMAGE_KINDS: return {int(v) for v in row[kind].split(";")}
        return {int(n) for f in row[kind].split(";") for n in np.unique(self._codes(f)) if n > 0}

    def _codes(self, name):
        a = np.asarray(Image.open(self.root / "images" / name).convert("RGB")).astype(np.int64)
        return a[..., 0] + 256 * a[..., 1]

    def __len__(self): return len(self.rows)

    def __getitem__(self, i):
        row = self.rows[i]
        image = load_image(self.root / "images" / row["image"])
        if self.size is not None: image = F.interpolate(image[None], size=tuple(self.size), mode="bilinear", align_corners=False, antialias=True)[0]
        h, w = image.shape[-2:]
        masks = {}
        for kind in self.kinds:
            if not row.get(kind): continue  # kind not annotated in this image
            present = {c for c in self.concepts if c.startswith(kind + ":")}
            layer = {c: torch.zeros(h, w, dtype=torch.bool) for c in present}
            if kind in BRODEN_IMAGE_KINDS:
                for n in row[kind].split(";"): layer[f"{kind}:{self.labels[int(n)]}"][:] = True
            else:
                for f in row[kind].split(";"):
                    codes = torch.from_numpy(self._codes(f))[None, None].float()
                    codes = F.interpolate(codes, size=(h, w), mode="nearest")[0, 0].long()
                    for n in codes.unique().tolist():
                        if n > 0: layer[f"{kind}:{self.labels[n]}"] |= codes == n
            masks.update(layer)
        return {"image": image, "masks": masks}


# %% [markdown]
# ## Dissection
#
# `network_dissection` runs the data set through the network twice: once to find each unit's
# threshold, once to accumulate the intersections and unions. Activations are upsampled to the image
# with `align_corners=False` (pixel centres). Only the per-unit statistics are kept, so memory grows
# with the number of activations of the layer over the data set (pass 1), not with the images.

# %%
#| export
@dataclass
class Dissection:
    "The result of `network_dissection`."
    layer: str
    concepts: list  # concept names, `kind:name`
    iou: torch.Tensor  # (K, C) data-set IoU of every unit with every concept
    thresholds: torch.Tensor  # (K,) activation threshold T_k of each unit
    iou_threshold: float  # a unit is interpretable when its best IoU exceeds this
    ceiling: torch.Tensor | None = None  # (K, C) the largest IoU unit k could reach with concept c: min(|M|, |L|) / max(|M|, |L|)

    @property
    def normalised_iou(self) -> torch.Tensor:
        "(K, C) IoU as a share of its ceiling (0 where the ceiling is 0): a rare concept is not held back by its size."
        if self.ceiling is None: raise ValueError("this Dissection has no ceiling (made by hand without one)")
        return torch.where(self.ceiling > 0, self.iou / self.ceiling.clamp_min(1e-12), torch.zeros_like(self.iou))

    @property
    def best(self) -> torch.Tensor:
        "(K,) index of each unit's best concept."
        return self.iou.argmax(1)

    @property
    def best_iou(self) -> torch.Tensor:
        return self.iou.max(1).values

    @property
    def interpretable(self) -> torch.Tensor:
        "(K,) bool: best IoU above the threshold."
        return self.best_iou > self.iou_threshold

    def units(self) -> list:
        "Per unit: (unit, best concept, IoU, interpretable)."
        return [(k, self.concepts[c], float(v), bool(v > self.iou_threshold)) for k, (c, v) in enumerate(zip(self.best.tolist(), self.best_iou.tolist()))]

    def counts(self) -> dict:
        "Interpretable units per concept kind, and the number of distinct concepts detected."
        out = {}
        for k, c, v, ok in self.units():
            if ok: out[c.split(":")[0]] = out.get(c.split(":")[0], 0) + 1
        detected = {c for _, c, _, ok in self.units() if ok}
        return dict(units=len(self.thresholds), interpretable=int(self.interpretable.sum()), unique_concepts=len(detected), **out)


@torch.no_grad()
def network_dissection(model: nn.Module,  # the network; `layer` is one of its `named_modules()`
                       layer: str,  # the layer to dissect, e.g. "relu5"
                       concepts,  # a concept data set (see `SceneConcepts`, `BrodenConcepts`)
                       quantile: float = 0.005,  # top fraction of activations that counts as "on"
                       iou_threshold: float = 0.04,  # a unit detects its best concept above this IoU
                       batch_size: int = 16,  # images per forward pass
                       preprocess=None,  # callable applied to image batches before the model (e.g. normalisation)
                       progress: bool = False  # tqdm bars
                      ) -> Dissection:
    "Network dissection (Bau et al. 2017, thesis section 6.3) of one layer over a concept data set."
    names = dict(model.named_modules())
    if layer not in names:
        raise ValueError(f"layer {layer!r} is not in the model; valid: {', '.join(n for n in names if n)}")
    if len(concepts) == 0: raise ValueError("the concept data set is empty")
    if not 0 < quantile < 1: raise ValueError(f"quantile={quantile}; expected a fraction in (0, 1)")
    model = model.eval()
    def batches(desc):
        for s in tqdm(range(0, len(concepts), batch_size), desc=desc, disable=not progress):
            items = [concepts[i] for i in range(s, min(s + batch_size, len(concepts)))]
            x = torch.stack([it["image"] for it in items])
            a = layer_outputs(model, preprocess(x) if preprocess else x, layer)[layer]
            if a.ndim != 4: raise ValueError(f"layer {layer!r} gives shape {tuple(a.shape)}; dissection needs (B,K,h,w) maps")
            yield items, a.float()
    acts = torch.cat([a.transpose(0, 1).flatten(1) for _, a in batches("dissection: thresholds")], 1)  # (K, N·h·w)
    step = max(1, 2 ** 24 // acts.shape[1])  # torch.quantile takes at most 2^24 elements per call
    thresholds = torch.cat([torch.quantile(acts[i:i + step], 1 - quantile, dim=1) for i in range(0, len(acts), step)])
    del acts
    names_c = sorted({c for i in range(len(concepts)) for c in concepts[i]["masks"]})
    if not names_c: raise ValueError("the concept data set has no concept masks")
    index = {c: j for j, c in enumerate(names_c)}
    K = len(thresholds)
    inter = torch.zeros(K, len(names_c), dtype=torch.float64)
    act_sum = torch.zeros(K, len(names_c), dtype=torch.float64)  # |M_k| over the images annotating c
    lab_sum = torch.zeros(len(names_c), dtype=torch.float64)
    for items, a in batches("dissection: IoU"):
        up = F.interpolate(a, size=items[0]["image"].shape[-2:], mode="bilinear", align_corners=False)
        on = (up > thresholds[None, :, None, None]).flatten(2).double()  # (B, K, HW)
        for b, it in enumerate(items):
            cols = [index[c] for c in it["masks"]]
            if not cols: continue
            lab = torch.stack([it["masks"][c].flatten() for c in it["masks"]]).double()  # (C_i, HW)
            inter[:, cols] += on[b] @ lab.T
            act_sum[:, cols] += on[b].sum(1, keepdim=True)
            lab_sum[cols] += lab.sum(1)
    union = act_sum + lab_sum[None] - inter
    iou = torch.where(union > 0, inter / union.clamp_min(1), torch.zeros_like(union))
    lab = lab_sum[None].expand_as(act_sum)
    ceiling = torch.where(union > 0, torch.minimum(act_sum, lab) / torch.maximum(act_sum, lab).clamp_min(1), torch.zeros_like(union))
    return Dissection(layer, names_c, iou.float(), thresholds, iou_threshold, ceiling.float())


# %% [markdown]
# A toy check: a "network" whose unit 0 is the cube mask (1 inside, 0 outside), unit 1 the sphere
# mask and unit 2 noise. With a quantile larger than the cube's share of the pixels, unit 0's
# threshold is 0, so "on" (`a > T`) is exactly the cube: IoU 1 with `category:cube`.

# %%
class _MaskNet(nn.Module):
    "Units = concept masks of the scenes (looked up from the image), plus one noise unit."
    def __init__(self, ds): super().__init__(); self.ds = ds; self.id = nn.Identity()
    def forward(self, x):
        out = []
        for im in x:
            i = next(j for j in range(len(self.ds)) if torch.equal(self.ds[j]["image"], im))
            m = self.ds[i]["masks"]
            g = torch.Generator().manual_seed(i)
            out.append(torch.stack([m["category:cube"].float(), m["category:sphere"].float(), torch.rand(im.shape[-2:], generator=g)]))
        return self.id(torch.stack(out))

class _Cached(torch.utils.data.Dataset):
    def __init__(self, ds): self.items = [ds[i] for i in range(len(ds))]
    def __len__(self): return len(self.items)
    def __getitem__(self, i): return self.items[i]

_ds = _Cached(SceneConcepts(length=6, size=(64, 64), seed=3))
_cube_frac = float(torch.stack([it["masks"]["category:cube"] for it in _ds.items]).float().mean())
_d = network_dissection(_MaskNet(_ds), "id", _ds, quantile=min(2 * _cube_frac, 0.5), batch_size=4)
test_eq(_d.concepts[_d.best[0]], "category:cube"); test_close(_d.best_iou[0], 1.0, eps=1e-6)
assert _d.best_iou[2] < 0.2  # noise detects nothing well
test_eq(_d.iou.shape, (3, len(_d.concepts)))
# the ceiling: the cube unit is on on exactly the cube's pixels, so with the sphere it can reach |sphere| / |cube| at most
_px = {c: float(torch.stack([it["masks"][c] for it in _ds.items]).sum()) for c in ("category:cube", "category:sphere")}
test_close(_d.ceiling[0, _d.concepts.index("category:sphere")], min(_px.values()) / max(_px.values()), eps=1e-6)
assert (_d.iou <= _d.ceiling + 1e-6).all() and (_d.normalised_iou <= 1 + 1e-5).all()
test_close(_d.normalised_iou[0, _d.best[0]], 1.0, eps=1e-6)
test_fail(lambda: network_dissection(_MaskNet(_ds), "conv9", _ds), contains="layer 'conv9' is not in the model")
test_fail(lambda: network_dissection(_MaskNet(_ds), "id", []), contains="empty")


# %% [markdown]
# Counts on a hand-made example: two 2×2 images, one unit, concepts `a` (annotated in both images) and
# `b` (annotated only in the second). The unit is on (after thresholding at the top 25 % of its 8
# values, interpolated linearly between the sorted values as `torch.quantile` does: T = 3.5, so the
# two largest) at pixel (0,0) of both images.

# %%
class _Tiny(torch.utils.data.Dataset):
    def __init__(self):
        t = torch.tensor
        self.items = [dict(image=t([[[9., 1], [1, 1]]]).expand(3, 2, 2), masks={"k:a": t([[1, 1], [0, 0]]).bool()}),
                      dict(image=t([[[8., 2], [1, 1]]]).expand(3, 2, 2), masks={"k:a": t([[0, 0], [0, 0]]).bool(), "k:b": t([[1, 0], [0, 0]]).bool()})]
    def __len__(self): return 2
    def __getitem__(self, i): return self.items[i]

_net = nn.Sequential(); _net.add_module("first", nn.Conv2d(3, 1, 1, bias=False))
with torch.no_grad(): _net.first.weight[:] = torch.tensor([1., 0, 0]).view(1, 3, 1, 1)
_d = network_dissection(_net, "first", _Tiny(), quantile=0.25, iou_threshold=0.4)
# a: intersection 1 (image 1), |M| = 2, |L| = 2 → IoU 1/3;  b: only image 2: intersection 1, |M| = 1, |L| = 1 → 1
test_close(_d.iou[0], torch.tensor([1 / 3, 1.0]), eps=1e-6)
test_close(_d.ceiling[0], torch.tensor([1.0, 1.0]), eps=1e-6)   # |M| = |L| for both: a and b could each reach IoU 1
test_eq(_d.counts(), dict(units=1, interpretable=1, unique_concepts=1, k=1))


# %% [markdown]
# ## A Broden folder, fabricated
#
# The reader is checked on a two-image folder written here in Broden's format.

# %%
#| export
def write_tiny_broden(root  # folder to create
                     ) -> Path:
    "A two-image Broden-format folder (index.csv, label.csv, images/) for tests and examples."
    root = Path(root); (root / "images").mkdir(parents=True, exist_ok=True)
    labels = [(1, "red-c", "color"), (2, "car", "object"), (300, "wheel", "part"), (4, "street", "scene")]
    with open(root / "label.csv", "w", newline="") as f:
        w = csv.writer(f); w.writerow(["number", "name", "category", "frequency", "coverage", "syns"])
        for n, name, cat in labels: w.writerow([n, name, cat, 1, 1, ""])
    def code_png(codes, name):
        a = np.zeros((*codes.shape, 3), np.uint8); a[..., 0] = codes % 256; a[..., 1] = codes // 256
        Image.fromarray(a).save(root / "images" / name)
    rows = []
    for i in range(2):
        img = np.zeros((8, 8, 3), np.uint8); img[:4] = (255, 0, 0)
        Image.fromarray(img).save(root / "images" / f"im{i}.jpg", quality=95)
        col = np.zeros((4, 4), np.int64); col[:2] = 1; code_png(col, f"im{i}_color.png")
        obj = np.zeros((4, 4), np.int64); obj[:, :2] = 2; code_png(obj, f"im{i}_object.png")
        part = np.zeros((4, 4), np.int64); part[3, 0] = 300; code_png(part, f"im{i}_part.png")
        rows.append(dict(image=f"im{i}.jpg", split="val", ih=8, iw=8, sh=4, sw=4, color=f"im{i}_color.png",
                         object=f"im{i}_object.png", part=f"im{i}_part.png" if i else "", material="", scene="4", texture=""))
    with open(root / "index.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0])); w.writeheader(); w.writerows(rows)
    return root


# %%
with tempfile.TemporaryDirectory() as _root:
    _b = BrodenConcepts(write_tiny_broden(_root))
    test_eq(_b.concepts, ["color:red-c", "object:car", "part:wheel", "scene:street"])
    _it0, _it1 = _b[0], _b[1]
    test_eq(_it0["image"].shape, (3, 8, 8))
    test_eq(sorted(_it0["masks"]), ["color:red-c", "object:car", "scene:street"])  # part not annotated in image 0
    test_eq(_it0["masks"]["color:red-c"][:4].all() & ~_it0["masks"]["color:red-c"][4:].any(), True)
    test_eq(int(_it1["masks"]["part:wheel"].sum()), 4)  # one 4x4 label pixel → 2x2 image pixels
    test_eq(bool(_it0["masks"]["scene:street"].all()), True)
    _rd = network_dissection(nn.Sequential(nn.Identity()), "0", _b, quantile=0.5)  # the red channel is the red unit
    test_eq(_rd.concepts[_rd.best[0]], "color:red-c")
    test_fail(lambda: BrodenConcepts(Path(_root) / "nope"), contains="index.csv is missing")
    test_fail(lambda: BrodenConcepts(_root, kinds=("shape",)), contains="unknown Broden concept kinds")


# %% [markdown]
# ## The networks
#
# The thesis compares its CPFS AlexNet with a randomly initialised one and with the ImageNet-supervised
# AlexNet. A comparison of counts means something only if the supervised network learned its task and if we
# know how many "detectors" a network with no training at all shows. Here, on the `objects` world of
# chapter 3 (one textured cube, sphere or cylinder per frame, every category moving alike):
#
# - **CPFS**: the quarter-width `alexnet_cpfs_small` (units per layer: conv1 24, conv2 64, conv3 96,
#   conv4 96, conv5 64, fc6 64, fc7 64) trained by `motion_nbs.cpfs.train` with the CE loss (eq 3.4) —
#   the thesis' chapter-6 model is CPFS-CE (section 6.1) — at chapter 03's `cpu` preset on `objects` frame pairs
#   for 3,000 steps, as many as the supervised network's (`objects_cpfs("ce", num_iters=3000)`, in
#   `objects_ce_seed{s}_3000it` beside 03_cpfs_transfer's 1,000-step runs), seeds 0, 1 and 2;
# - **shuffled-flow CPFS (null)**: the same network, loss, steps and seeds, with each frame paired with another
#   frame's flow (`objects_cpfs(..., shuffle_flow=True)`): the images and the training are the same, only the
#   relation between an image and its motion is broken;
# - **supervised**: the same architecture trained end to end on the labels of 6,000 `objects` frames
#   (which object the frame shows) with 03_cpfs_transfer's ceiling recipe (`objects_classifier`: 3,000
#   AdamW steps, one-cycle, flips and shifts), seeds 10000, 10001 and 10002; its accuracy on the 500 test frames is
#   printed and saved;
# - **random (null)**: the same architecture at its initialisation for seeds 0..19, batch norm calibrated on
#   the training frames and folded (`random_backbones`) — twenty draws of what an untrained network scores — and
#   ten more (seeds 100..109) that only set the calibrated thresholds;
# - **ImageNet reference**: the EfficientNet-Lite0 with ImageNet weights that ships in an installed
#   package (chapter 02b), at blocks.1, blocks.2, blocks.4, blocks.6 and its last feature map (`bn2`), with
#   ImageNet normalisation; and torchvision's ImageNet AlexNet beside it when its weights are in the local
#   torch hub cache (this machine never downloads).

# %%
#| export
def majority_category(scene: dict) -> int:
    "The most frequent object category (1..3) among a scene's object pixels (0 if no object is visible)."
    c = scene["categories"][scene["categories"] > 0]
    return int(c.mode().values) if c.numel() else 0

OBJECTS_SPLITS = {"train": (6000, 7_000_001), "valid": (300, 7_000_003), "test": (500, 7_000_002)}  # 03_cpfs_transfer's (num, seed)

def objects_frames(split: str,  # "train", "valid" or "test" (`OBJECTS_SPLITS`)
                   cache_dir=None,  # None: `core.runs_dir("cpfs_transfer")`, shared with 03_cpfs_transfer
                   world: str = "objects"  # a labelled world of `data.OBJECT_WORLDS` (`objects_anywhere`: chapter 7's table 7.1)
                  ) -> dict:
    "The labelled 128-px frames of one split of `world` (`transfer.labelled_frames`), rendered once and cached."
    check_choice("split", split, tuple(OBJECTS_SPLITS))
    check_choice("world", world, tuple(OBJECT_WORLDS))
    num, seed = OBJECTS_SPLITS[split]
    return labelled_frames(world, num, seed, 128, cache_dir=cache_dir or runs_dir("cpfs_transfer"))

def vgg16_trunk() -> nn.Sequential:
    "`vgg16_small` (an eighth of the channels, batch norm) up to pool5, with its layer names."
    m = vgg16_small(3, batchnorm=True, dropout=0.0)
    names = list(m._modules)
    return nn.Sequential(OrderedDict((n, m._modules[n]) for n in names[:names.index("pool5") + 1]))

OBJECTS_BACKBONES = {"alexnet": lambda: alexnet_cpfs_small(batchnorm=True),   # appendix A, a quarter of the channels, LRN
                     "vgg16": vgg16_trunk}

def objects_network(arch: str = "alexnet") -> nn.Module:
    "`Sequential(backbone, global average pool, flatten, Linear(·, 3))` of `OBJECTS_BACKBONES[arch]`, batch norm not folded."
    check_choice("arch", arch, tuple(OBJECTS_BACKBONES))
    backbone = OBJECTS_BACKBONES[arch]()
    with torch.no_grad(): width = backbone.eval()(torch.zeros(1, 3, 128, 128)).shape[1]
    return nn.Sequential(backbone, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, 3))

def objects_classifier(seed: int = 10_000,  # 03_cpfs_transfer's ceiling seed for its first pre-training seed
                       num_iters: int = 3000, lr: float = 2e-3,  # 03_cpfs_transfer's `ceiling_iters`, `ceiling_lr`
                       arch: str = "alexnet",  # a key of `OBJECTS_BACKBONES`
                       cache_dir=None,  # None: `core.runs_dir("dissect_supervised")`; False: no file
                       progress: bool = True,
                       world: str = "objects"  # the labelled world trained on (`objects_frames`)
                      ) -> tuple:
    """`(classifier, scores)`: `objects_network(arch)` trained end to end on the frame labels of `world`'s training
    frames (`transfer.fine_tune_classifier`, batch norm from batch statistics, then folded; `classifier[0]` is the
    backbone), with its top-1 accuracy on the validation and test frames and the test frames' majority-class rate; cached."""
    check_choice("world", world, tuple(OBJECT_WORLDS))
    path = None if cache_dir is False else Path(cache_dir or runs_dir("dissect_supervised")) / f"{world}_{arch}_seed{seed}_{num_iters}it_lr{lr:g}.pt"
    net = fold_batchnorm(objects_network(arch))
    if path is not None and path.exists():
        saved = torch.load(path, weights_only=True)
        net.load_state_dict(saved["state_dict"])
        return net.eval(), saved["scores"]
    fr = {s: objects_frames(s, world=world) for s in OBJECTS_SPLITS}
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        r = fine_tune_classifier(objects_network(arch)[0], (fr["train"]["image"], fr["train"]["label"]),
                                 {s: (fr[s]["image"], fr[s]["label"]) for s in ("valid", "test")}, num_classes=3,
                                 num_iters=num_iters, lr=lr, train_batchnorm=True, seed=seed, return_model=True, progress=progress)
    net = fold_batchnorm(r["model"]).cpu().eval()
    test_labels = fr["test"]["label"]
    scores = dict(valid_accuracy=r["valid"]["accuracy"], test_accuracy=r["test"]["accuracy"], arch=arch, world=world,
                  prior=float(torch.bincount(test_labels, minlength=3).max() / len(test_labels)), seed=seed, num_iters=num_iters, lr=lr)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_save({"state_dict": net.state_dict(), "scores": scores}, path)
    return net, scores

def objects_cpfs_dir(loss: str, seed: int, num_iters: int, shuffle_flow: bool = False, runs=None) -> Path:
    "Where `objects_cpfs` keeps a run (03_cpfs_transfer's folder names for its 1,000-step runs)."
    name = f"objects_{loss}{'_shuffled' if shuffle_flow else ''}_seed{seed}" + (f"_{num_iters}it" if num_iters != 1000 else "")
    return Path(runs or runs_dir("cpfs_transfer")) / name

def objects_cpfs(loss: str = "ce",  # a CPFS loss (`cpfs.CPFS_TRAIN_LOSSES`)
                 seed: int = 0, num_iters: int = 1000,
                 runs=None,  # None: `core.runs_dir("cpfs_transfer")`, where 03_cpfs_transfer keeps its pre-trainings
                 progress: bool = True,
                 shuffle_flow: bool = False  # the null control: each frame trained on another frame's flow (`cpfs.ShuffledFlow`)
                ) -> nn.Module:
    """The backbone of the `cpu`-preset CPFS run on `objects` motion, trained (or resumed) unless finished: in
    `{runs}/objects_{loss}_seed{seed}` (03_cpfs_transfer's), with `_shuffled` after the loss for the null control and
    `_{num_iters}it` at the end for another number of steps."""
    out = objects_cpfs_dir(loss, seed, num_iters, shuffle_flow, runs)
    config = CPFSConfig.from_preset("cpu", loss=loss, world="objects", seed=seed, num_iters=num_iters, out_dir=str(out), progress=progress,
                                    shuffle_flow=shuffle_flow)
    if not finished_run(config): train_cpfs(config)
    return load_cpfs(out).backbone.cpu().eval()

def random_backbones(seeds,  # initialisation seeds
                     images: torch.Tensor  # `(N,3,H,W)` frames on which batch norm is calibrated
                    ) -> dict:
    "`{seed: alexnet_cpfs_small}` at their initialisation, batch norm calibrated on `images` and folded: the null networks."
    out = {}
    for seed in seeds:
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            net = alexnet_cpfs_small(batchnorm=True)
        out[seed] = fold_batchnorm(calibrate_batchnorm(net, images)).eval()
    return out

NO_NORMALISATION = ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0))  # the book's networks see images in [0,1] as they are
DISSECT_LAYERS = ("relu1", "relu2", "relu3", "relu4", "relu5")
EFFICIENTNET_LAYERS = ("blocks.1", "blocks.2", "blocks.4", "blocks.6", "bn2")  # strides 4, 8, 16, 32, 32

def imagenet_networks(alexnet_weights=None  # torchvision AlexNet weights file; None: torchvision's name in the torch hub cache
                     ) -> dict:
    "`{name: (model, layers, (mean, std))}`: EfficientNet-Lite0 (ships offline), and torchvision's AlexNet when its weights are here."
    out = {"EfficientNet-Lite0 (ImageNet)": (load_pretrained("efficientnet_lite0"), EFFICIENTNET_LAYERS, (IMAGENET_MEAN, IMAGENET_STD))}
    try: out["AlexNet (ImageNet, torchvision)"] = (load_pretrained("alexnet", alexnet_weights), DISSECT_LAYERS, (IMAGENET_MEAN, IMAGENET_STD))
    except FileNotFoundError: pass
    return out


# %%
test_eq(majority_category({"categories": torch.tensor([[0, 2, 2], [1, 0, 0]])}), 2)
test_eq(majority_category({"categories": torch.zeros(2, 2, dtype=torch.long)}), 0)
test_fail(lambda: objects_frames("tests"), contains="split='tests'; valid: train, valid, test")
test_fail(lambda: objects_frames("test", world="shapes"), contains="world='shapes'")   # no frame label in `shapes`
test_eq(objects_cpfs_dir("ce", 0, 1000, runs="r"), Path("r/objects_ce_seed0"))   # 03_cpfs_transfer's run, shared
test_eq(objects_cpfs_dir("ce", 2, 3000, shuffle_flow=True, runs="r"), Path("r/objects_ce_shuffled_seed2_3000it"))
_imgs = torch.rand(6, 3, 64, 64)
_nulls = random_backbones([0, 1], _imgs)
test_eq(set(_nulls), {0, 1})
test_eq(any(isinstance(m, nn.BatchNorm2d) for m in _nulls[0].modules()), False)   # folded
test_eq(torch.equal(_nulls[0].conv1.weight, random_backbones([0], _imgs)[0].conv1.weight), True)   # a seed is one network
test_eq(torch.equal(_nulls[0].conv1.weight, _nulls[1].conv1.weight), False)
with torch.no_grad(): _a1 = layer_outputs(_nulls[0], _imgs, "conv1")["conv1"]   # calibrated: conv1's outputs are standardised over the frames
test_close(_a1.mean((0, 2, 3)), torch.zeros(24), eps=1e-4); test_close(_a1.var((0, 2, 3), unbiased=False), torch.ones(24), eps=1e-2)
test_eq(list(imagenet_networks())[0], "EfficientNet-Lite0 (ImageNet)")
for _arch in OBJECTS_BACKBONES:
    with torch.no_grad(): test_eq(objects_network(_arch).eval()(_imgs).shape, (6, 3))
test_fail(lambda: objects_network("resnet"), contains="arch='resnet'")

# %% [markdown]
# With a weights file, `imagenet_networks` adds torchvision's AlexNet (checked here with a randomly
# initialised one written where the file would be):

# %%
from motion_nbs.models import AlexNet

# %%
with tempfile.TemporaryDirectory() as _root:
    torch.save(AlexNet().state_dict(), Path(_root) / "alexnet.pth")
    _ref = imagenet_networks(alexnet_weights=Path(_root) / "alexnet.pth")
test_eq(list(_ref), ["EfficientNet-Lite0 (ImageNet)", "AlexNet (ImageNet, torchvision)"])
test_eq(type(_ref["AlexNet (ImageNet, torchvision)"][0]).__name__, "AlexNet"); test_eq(_ref["AlexNet (ImageNet, torchvision)"][2][1], (0.229, 0.224, 0.225))


# %%
#| export
def network_fingerprint(model: nn.Module) -> str:
    "A short hash of a model's state dict (names and values): changes whenever the weights do."
    h = hashlib.sha1()
    for k, v in model.state_dict().items():
        h.update(k.encode()); h.update(v.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]

def concepts_fingerprint(concepts) -> str:
    "A short hash of a concept data set's images and masks: the cache key of the probe in `dissect_networks`."
    h = hashlib.sha1()
    for i in range(len(concepts)):
        it = concepts[i]
        h.update(it["image"].detach().float().contiguous().numpy().tobytes())
        for c in sorted(it["masks"]): h.update(c.encode()); h.update(it["masks"][c].detach().to(torch.uint8).contiguous().numpy().tobytes())
    return h.hexdigest()[:16]

def dissect_networks(networks: dict,  # name -> model
                     concepts,  # concept data set
                     layers=DISSECT_LAYERS, progress: bool = True,
                     normalisation: dict | None = None,  # name -> (mean, std) of that network's input; default: none
                     cache_dir=None,  # a folder: each network's dissection is read from / written to a file keyed by its weights, the probe and the settings
                     **kwargs) -> dict:
    "`{network: {layer: Dissection}}` for several networks."
    def prep(name):
        if not normalisation or name not in normalisation: return kwargs.get("preprocess")
        m, s = (torch.as_tensor(v, dtype=torch.float32).view(1, -1, 1, 1) for v in normalisation[name])
        return lambda x: (x - m) / s
    kw = {k: v for k, v in kwargs.items() if k != "preprocess"}
    if cache_dir is not None and "preprocess" in kwargs: raise ValueError("dissect_networks caches by `normalisation`, not by a `preprocess` callable: pass one or the other")
    probe = concepts_fingerprint(concepts) if cache_dir is not None else None
    def one(n, m):
        run = lambda: {l: network_dissection(m, l, concepts, progress=progress, preprocess=prep(n), **kw) for l in layers}
        if cache_dir is None: return run()
        key = json.dumps(dict(net=network_fingerprint(m), probe=probe, layers=list(layers), kwargs=kw,
                              normalisation=[list(map(float, v)) for v in normalisation[n]] if normalisation and n in normalisation else None), sort_keys=True)
        path = Path(cache_dir) / f"dissection-{hashlib.sha1(key.encode()).hexdigest()[:16]}.pt"
        if path.exists(): return {l: Dissection(**v) for l, v in torch.load(path, weights_only=True).items()}
        out = run()
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_save({l: asdict(d) for l, d in out.items()}, path)
        return out
    return {n: one(n, m) for n, m in networks.items()}

def plot_dissection(results: dict,  # output of `dissect_networks`
                    kinds=("category", "part", "texture", "colour")):
    "Fig 6.8: interpretable units per layer and concept kind, one panel per network. Returns the figure."
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, len(results), figsize=(4.2 * len(results), 3.4), sharey=True, squeeze=False)
    for ax, (net, per_layer) in zip(axes[0], results.items()):
        layers = list(per_layer)
        bottom = np.zeros(len(layers))
        for kind in kinds:
            v = np.array([per_layer[l].counts().get(kind, 0) for l in layers], float)
            ax.bar(layers, v, bottom=bottom, label=kind); bottom += v
        ax.set_title(net, fontsize=9); ax.set_xlabel("layer")
    axes[0, 0].set_ylabel("interpretable units"); axes[0, -1].legend(fontsize=8)
    fig.tight_layout()
    return fig


# %% [markdown]
# Same seed, same dissection: a random network dissected twice gives identical IoUs.

# %%
from motion_nbs.models import alexnet_cpfs_small


# %%
def _random_net(seed):
    torch.manual_seed(seed); return alexnet_cpfs_small().eval()

_cds = _Cached(SceneConcepts(length=4, size=(64, 64), seed=11))
_a = network_dissection(_random_net(0), "relu3", _cds)
_b = network_dissection(_random_net(0), "relu3", _cds)
test_eq(_a.iou, _b.iou); test_eq(_a.thresholds, _b.thresholds)
_n = dissect_networks({"r": _random_net(0)}, _cds, layers=["relu3"], progress=False, normalisation={"r": ((0.5,) * 3, (2.0,) * 3)})
test_eq(_n["r"]["relu3"].iou, network_dissection(_random_net(0), "relu3", _cds, preprocess=lambda x: (x - 0.5) / 2).iou)
with tempfile.TemporaryDirectory() as _dir:   # the cache: a second call reads the file; other weights or another probe make another file
    _c1 = dissect_networks({"r": _random_net(0)}, _cds, layers=["relu3"], progress=False, cache_dir=_dir)["r"]["relu3"]
    test_eq(_c1.iou, _a.iou); test_eq(_c1.ceiling, _a.ceiling); test_eq(len(list(Path(_dir).iterdir())), 1)
    _c2 = dissect_networks({"again": _random_net(0)}, _cds, layers=["relu3"], progress=False, cache_dir=_dir)["again"]["relu3"]
    test_eq(_c2.iou, _a.iou); test_eq(_c2.concepts, _a.concepts); test_eq(len(list(Path(_dir).iterdir())), 1)
    dissect_networks({"r1": _random_net(1)}, _cds, layers=["relu3"], progress=False, cache_dir=_dir)
    dissect_networks({"r": _random_net(0)}, _Cached(SceneConcepts(length=3, size=(64, 64), seed=11)), layers=["relu3"], progress=False, cache_dir=_dir)
    test_eq(len(list(Path(_dir).iterdir())), 3)
    test_fail(lambda: dissect_networks({"r": _random_net(0)}, _cds, cache_dir=_dir, preprocess=lambda x: x), contains="caches by `normalisation`")


# %% [markdown]
# ## A null distribution for the counts
#
# How many "detectors" does a network show that learned nothing? Dissecting many randomly initialised networks
# answers it: their counts per layer are a null distribution, and a trained network's count is tested against it
# with an empirical p-value, $(1 + \#\{\text{null} \ge c\})/(1 + n)$ (`empirical_p`), or, for the three seeds of one
# training recipe together, with the exact permutation test of their mean against the null networks' (`group_p`: every
# choice of three among the pooled 23 networks equally likely under the null, so p ≥ 1/1771).
#
# Three things decide whether such a test can fail:
#
# - **The threshold.** The IoU > 0.04 criterion was calibrated by Bau et al. on Broden; on other concepts it may sit
#   anywhere in the null's range. `calibrated_thresholds` sets one threshold per layer at the 99th percentile of the
#   best-concept IoU over all the units of a set of random networks, so that about 1 % of a random network's units
#   pass it. Those calibration networks must not be the null networks the counts are tested against (otherwise the
#   null's own counts are fixed at about 1 % by construction): the chapter calibrates on 10 random networks (seeds
#   100..109) and tests against 20 others (seeds 0..19).
# - **The concept's size.** With the top 0.5 % of activations "on", a concept covering a share $p$ of the pixels can
#   reach an IoU of at most about $0.005/p$ (exactly $\min(|M|,|L|)/\max(|M|,|L|)$, `Dissection.ceiling`): the
#   background cannot pass 0.04, a cube side easily can. Dividing by the ceiling (`Dissection.normalised_iou`) does not
#   fix this: a unit whose few active pixels all fall on the background reaches its ceiling by chance (the run below
#   measures how often). What a random unit reaches *with a given concept* does: `concept_scales` takes, per concept, the
#   99th percentile of its IoU over the calibration networks' units; a unit's **per-concept score** is its largest IoU as
#   a multiple of its concept's scale (`per_concept_score`), and its threshold is calibrated like the IoU's. These
#   per-concept counts stand beside the raw ones.
# - **What the null rules out.** Random weights rule out "any network shows this"; they do not rule out "any
#   *trained* network shows this". The shuffled-flow CPFS network (same architecture, loss, steps; each frame paired
#   with another frame's flow, `cpfs.ShuffledFlow`) separates learning *from motion* from learning from being trained.
#
# `null_interval` (a t prediction interval for one more null network) is kept for the small nulls of earlier runs.

# %%
#| export
def count_detectors(d: Dissection, threshold: float) -> int:
    "The number of units whose best concept's IoU exceeds `threshold`."
    return int((d.best_iou > threshold).sum())

SCALE_FLOOR = 1e-3  # a concept scale below this counts as this (a concept no random unit touches)

def concept_scales(calibration: dict,  # `{seed: {layer: Dissection}}` of random networks, dissected on one probe
                   percentile: float = 99.0) -> dict:
    """`{layer: (C,) tensor}`: per concept, the `percentile` of its IoU over every unit of the calibration networks —
    what a random unit reaches with that concept: large for big concepts (the background), small for rare ones."""
    if not calibration: raise ValueError("concept_scales needs at least one calibration network")
    first = next(iter(calibration.values()))
    out = {}
    for l, d0 in first.items():
        if any(per[l].concepts != d0.concepts for per in calibration.values()):
            raise ValueError(f"the calibration networks were dissected on different concepts at {l}")
        out[l] = torch.from_numpy(np.percentile(torch.cat([per[l].iou for per in calibration.values()]).numpy(), percentile, axis=0)).float()
    return out

def per_concept_ratio(d: Dissection,
                      scale: torch.Tensor  # `(C,)` this layer's `concept_scales`, on the same concepts
                     ) -> torch.Tensor:
    "(K, C) each IoU as a multiple of its concept's scale (scales below `SCALE_FLOOR` count as `SCALE_FLOOR`)."
    if len(scale) != len(d.concepts): raise ValueError(f"{len(scale)} concept scales for {len(d.concepts)} concepts: dissect on the calibration's probe")
    return d.iou / scale.clamp_min(SCALE_FLOOR)

def per_concept_score(d: Dissection, scale: torch.Tensor) -> torch.Tensor:
    "(K,) each unit's largest `per_concept_ratio`."
    return per_concept_ratio(d, scale).max(1).values

def _best(d: Dissection, scale=None) -> torch.Tensor:
    "(K,) each unit's best IoU, or (with a scale) its per-concept score."
    return d.best_iou if scale is None else per_concept_score(d, scale)

def calibrated_thresholds(null: dict,  # `{seed: {layer: Dissection}}` of random networks (`dissect_networks`)
                          percentile: float = 99.0,
                          scales: dict | None = None  # `concept_scales`: calibrate the per-concept score instead of the IoU
                         ) -> dict:
    "`{layer: threshold}`: the `percentile` of the best-concept IoU (or per-concept score) over every unit of every given network at that layer."
    if not null: raise ValueError("calibrated_thresholds needs at least one null network")
    layers = next(iter(null.values())).keys()
    return {l: float(np.percentile(torch.cat([_best(per[l], None if scales is None else scales[l]) for per in null.values()]).numpy(), percentile))
            for l in layers}

def empirical_p(count: int,  # a trained network's detector count
                null_counts  # the counts of the null networks
               ) -> float:
    "One-sided empirical p-value of `count` against the null: (1 + #{null ≥ count}) / (1 + n), never 0."
    c = np.asarray(null_counts)
    if c.ndim != 1 or len(c) < 1: raise ValueError(f"empirical_p needs a list of null counts, got shape {c.shape}")
    return float((1 + (c >= count).sum()) / (1 + len(c)))

def group_p(trained,  # one count per trained network (its seeds)
            others,  # one count per network of the comparison group (the null, or another training)
            alternative: str = "greater"  # "greater": trained above; "two-sided"
           ) -> float:
    """Exact permutation p-value of mean(trained) - mean(others): under the null every choice of `len(trained)` of the
    pooled networks as "trained" is equally likely (`scipy.stats.permutation_test` over all relabellings); the smallest
    possible value is 1 / C(n, k) (3 seeds among 23 networks: 1/1771; 3 against 3: 1/20)."""
    a, b = np.asarray(trained, float), np.asarray(others, float)
    if a.ndim != 1 or b.ndim != 1 or len(a) < 1 or len(b) < 1: raise ValueError(f"group_p needs two lists of counts, got shapes {a.shape} and {b.shape}")
    check_choice("alternative", alternative, ("greater", "two-sided"))
    r = stats.permutation_test((a, b), lambda x, y, axis: x.mean(axis) - y.mean(axis), permutation_type="independent",
                               alternative=alternative, n_resamples=np.inf, vectorized=True)
    return float(r.pvalue)

def null_interval(counts,  # one count per null network
                  level: float = 0.95) -> tuple:
    "`(low, high)`: prediction interval for one more null network's count, mean ± t·s·√(1 + 1/n), clipped at 0."
    c = np.asarray(counts, dtype=float)
    if c.ndim != 1 or len(c) < 2: raise ValueError(f"null_interval needs at least 2 counts, got {len(c.reshape(-1))}")
    half = stats.t.ppf(0.5 + level / 2, len(c) - 1) * c.std(ddof=1) * np.sqrt(1 + 1 / len(c))
    return max(0.0, float(c.mean() - half)), float(c.mean() + half)

def dissection_counts(results: dict,  # `{network: {layer: Dissection}}`
                      thresholds: dict,  # `{layer: IoU}` from `calibrated_thresholds` (layers missing: not counted)
                      fixed: float = 0.04,
                      per_concept: tuple | None = None  # `(scales, thresholds)`: `concept_scales` and `calibrated_thresholds(..., scales=scales)`
                     ) -> dict:
    "`{network: {layer: {units, at_0.04, calibrated[, per_concept]}}}`: detector counts at the fixed and the calibrated thresholds."
    return {n: {l: {"units": len(d.thresholds), f"at_{fixed:g}": count_detectors(d, fixed),
                    **({"calibrated": count_detectors(d, thresholds[l])} if l in thresholds else {}),
                    **({"per_concept": int((per_concept_score(d, per_concept[0][l]) > per_concept[1][l]).sum())}
                       if per_concept and l in per_concept[1] else {})}
                for l, d in per.items()}
            for n, per in results.items()}


# %%
def _dis(best):   # a Dissection whose units have these best IoUs (one concept)
    return Dissection("relu1", ["colour:red"], torch.tensor(best, dtype=torch.float32)[:, None], torch.zeros(len(best)), 0.04)
_null = {0: {"relu1": _dis([0.01, 0.02, 0.05])}, 1: {"relu1": _dis([0.03, 0.00, 0.10])}}
test_close(calibrated_thresholds(_null, 50)["relu1"], 0.025, eps=1e-6)        # median of 0, .01, .02, .03, .05, .10
test_close(calibrated_thresholds(_null, 100)["relu1"], 0.10, eps=1e-6)
test_eq(count_detectors(_dis([0.01, 0.05, 0.2]), 0.04), 2)
test_close(null_interval([1, 2, 3]), (0.0, 2 + 4.302652729911275 * 1.0 * (4 / 3) ** 0.5), eps=1e-9)   # t(0.975, 2) = 4.3027
test_close(null_interval([4, 4, 4, 4]), (4.0, 4.0), eps=1e-12)
test_fail(lambda: null_interval([3]), contains="at least 2 counts")
test_fail(lambda: calibrated_thresholds({}), contains="at least one null network")
test_eq(dissection_counts({"n": _null[0]}, {"relu1": 0.03}), {"n": {"relu1": {"units": 3, "at_0.04": 1, "calibrated": 1}}})
test_eq(empirical_p(5, [1, 2, 5, 7]), 3 / 5); test_eq(empirical_p(9, [1, 2, 5, 7]), 1 / 5); test_eq(empirical_p(0, [0, 0]), 1.0)
test_fail(lambda: empirical_p(1, []), contains="list of null counts")
test_close(group_p([3, 4, 5], [0, 1, 2]), 1 / 20, eps=1e-12)                 # the one relabelling of 20 at least as extreme
test_close(group_p([30, 30, 30], list(range(20))), 1 / 1771, eps=1e-12)       # C(23, 3) relabellings, one as extreme
test_close(group_p([2, 2], [2, 2, 2]), 1.0, eps=1e-12)                          # all tied: no evidence
test_close(group_p([0, 1, 2], [3, 4, 5], "two-sided"), 2 / 20, eps=1e-12)      # as extreme either way: 2 of 20
test_fail(lambda: group_p([], [1]), contains="two lists of counts"); test_fail(lambda: group_p([1], [1], "less"), contains="alternative='less'")
_nd = Dissection("relu1", ["a", "b"], torch.tensor([[0.02, 0.10], [0.05, 0.01]]), torch.zeros(2), 0.04, torch.tensor([[0.04, 0.5], [1.0, 0.02]]))
test_close(_nd.normalised_iou, torch.tensor([[0.5, 0.2], [0.05, 0.5]]), eps=1e-6)   # unit 0's rare concept a: 0.02 of a 0.04 ceiling
test_fail(lambda: _dis([0.1]).normalised_iou, contains="no ceiling")
# per-concept scales: a rare concept a (random units reach 0.02) and a big one b (0.20); unit 1's 0.05 with a is 2.5 scales
_cal = {0: {"relu1": Dissection("relu1", ["a", "b"], torch.tensor([[0.01, 0.20], [0.02, 0.10]]), torch.zeros(2), 0.04)}}
_sc = concept_scales(_cal, 100)
test_close(_sc["relu1"], torch.tensor([0.02, 0.20]), eps=1e-6)
test_close(per_concept_score(_nd, _sc["relu1"]), torch.tensor([1.0, 2.5]), eps=1e-5)           # max(0.02/0.02, 0.10/0.20), max(0.05/0.02, 0.01/0.20)
test_close(calibrated_thresholds(_cal, 100, scales=_sc)["relu1"], 1.0, eps=1e-6)                 # the calibration's own best scores: 1 and 1
test_eq(dissection_counts({"n": {"relu1": _nd}}, {"relu1": 0.03}, per_concept=(_sc, {"relu1": 1.5})),
        {"n": {"relu1": {"units": 2, "at_0.04": 2, "calibrated": 2, "per_concept": 1}}})
test_close(per_concept_score(_nd, torch.tensor([0.0, 0.2])), torch.tensor([20.0, 50.0]), eps=1e-4)   # a scale of 0 counts as 1e-3
test_fail(lambda: per_concept_score(_nd, torch.ones(3)), contains="3 concept scales for 2 concepts")
test_fail(lambda: concept_scales({0: {"relu1": _nd}, 1: {"relu1": _dis([0.1])}}), contains="different concepts at relu1")

# %% [markdown]
# ## Dissecting CPFS, supervised, random and ImageNet networks
#
# The probe: 128 held-out `objects` scenes at 128 px (`SceneConcepts("objects")`: the object's category, its
# parts, the textures and colour names of every pixel). Forty networks are dissected: the nine trained ones (three
# kinds × three seeds), 20 null and 10 calibration networks, and the ImageNet reference. Each network's dissection is
# cached in `_runs/06_dissection/` under a hash of its weights, the probe and the settings
# (`dissect_networks(cache_dir=...)`), about 15 s per network cold; the nine trained networks take about 2.5
# CPU-hours to train the first time (each is resumable and shared with `objects_cpfs`/`objects_classifier` callers).
# The chapter's ten-minute budget assumes both caches; the times are printed below.

# %%
#| slow
import time

from IPython.display import Markdown, display
from motion_nbs.compare import holm
from motion_nbs.core import atomic_write

# %%
#| slow
C, SH, S = "CPFS-CE (objects motion)", "CPFS-CE, shuffled flow (null)", "supervised (objects labels)"
KINDS = (C, SH, S)
TRAINED_SEEDS, DISSECT_ITERS = (0, 1, 2), 3000   # the supervised recipe's 3,000 steps for every trained network
NULL_SEEDS, CALIBRATION_SEEDS = tuple(range(20)), tuple(range(100, 110))   # disjoint: the threshold is not set by the null it is tested on
t0 = time.time()
trained = {C: {s: objects_cpfs("ce", seed=s, num_iters=DISSECT_ITERS) for s in TRAINED_SEEDS},
           SH: {s: objects_cpfs("ce", seed=s, num_iters=DISSECT_ITERS, shuffle_flow=True) for s in TRAINED_SEEDS}}
sup_runs = {s: objects_classifier(seed=10_000 + s, num_iters=DISSECT_ITERS) for s in TRAINED_SEEDS}
trained[S] = {s: net[0] for s, (net, _) in sup_runs.items()}   # the backbones: conv1..fc7 as in the CPFS network
sup_scores = {s: sc for s, (_, sc) in sup_runs.items()}
print(f"trained networks: {time.time() - t0:.0f} s; supervised test accuracy "
      + ", ".join(f"seed {sc['seed']} {100 * sc['test_accuracy']:.1f}%" for sc in sup_scores.values())
      + f" (majority class {100 * sup_scores[0]['prior']:.1f}%)")
calibration_frames = objects_frames("train")["image"][:1000]   # batch norm of every random network is calibrated on these
nulls = random_backbones(NULL_SEEDS, calibration_frames)
calibration_nets = random_backbones(CALIBRATION_SEEDS, calibration_frames)
cpfs, supervised = trained[C][0], trained[S][0]   # seed 0 of each: the networks of the pre-image figures below
nets = {"CPFS (CE, objects motion)": cpfs, "random init": nulls[0], "supervised (objects labels)": supervised}
norms = {n: NO_NORMALISATION for n in nets}

# %%
#| slow
t0 = time.time()
probe = _Cached(SceneConcepts("objects", length=128, seed=123_457, size=(128, 128)))
dissect = lambda networks, **kw: dissect_networks(networks, probe, progress=False, cache_dir=runs_dir("06_dissection"), **kw)
null, calibration = dissect(nulls), dissect(calibration_nets)
results = {k: dissect(per) for k, per in tqdm(trained.items(), desc="dissect trained networks")}   # {kind: {seed: {layer: Dissection}}}
reference = {n: dissect({n: m}, layers=layers, normalisation={n: norm})[n] for n, (m, layers, norm) in imagenet_networks().items()}
print(f"dissection of {len(null) + len(calibration) + sum(map(len, results.values())) + len(reference)} networks: {time.time() - t0:.0f} s")
thresholds, scales = calibrated_thresholds(calibration), concept_scales(calibration)
pc_thresholds = calibrated_thresholds(calibration, scales=scales)
KEYS = ("at_0.04", "calibrated", "per_concept")
tally = lambda per: dissection_counts(per, thresholds, per_concept=(scales, pc_thresholds))
counts = {k: tally(per) for k, per in results.items()}   # {kind: {seed: {layer: {units, at_0.04, calibrated, per_concept}}}}
_norm = {l: torch.cat([per[l].normalised_iou.max(1).values for per in calibration.values()]) for l in DISSECT_LAYERS}
ceiling_check = {l: dict(share_at_ceiling=float((v >= 0.999).float().mean()), p99=float(np.percentile(v.numpy(), 99))) for l, v in _norm.items()}
_nc = tally(null)
null_counts = {key: {l: [_nc[s][l][key] for s in NULL_SEEDS] for l in DISSECT_LAYERS} for key in KEYS}
seed_counts = lambda kind, key, l: [counts[kind][s][l][key] for s in TRAINED_SEEDS]
p_values = {}
for kind in KINDS:
    group = {key: {l: group_p(seed_counts(kind, key, l), null_counts[key][l]) for l in DISSECT_LAYERS} for key in KEYS}
    p_values[kind] = dict(per_seed={str(s): {key: {l: empirical_p(counts[kind][s][l][key], null_counts[key][l]) for l in DISSECT_LAYERS}
                                               for key in KEYS} for s in TRAINED_SEEDS},
                          group=group, group_holm={key: dict(zip(DISSECT_LAYERS, holm(list(group[key].values())))) for key in KEYS})
between = lambda a, b, alternative: {key: {l: dict(difference=float(np.mean(seed_counts(a, key, l)) - np.mean(seed_counts(b, key, l))),
                                                    p=group_p(seed_counts(a, key, l), seed_counts(b, key, l), alternative))
                                           for l in DISSECT_LAYERS} for key in KEYS}
cpfs_vs_shuffled, cpfs_vs_supervised = between(C, SH, "greater"), between(C, S, "two-sided")
print("calibrated thresholds (99th percentile of the calibration networks' best unit IoU):", {l: round(v, 4) for l, v in thresholds.items()})
print("per-concept score thresholds:", {l: round(v, 2) for l, v in pc_thresholds.items()})
print("IoU / ceiling of the calibration units: share at the ceiling and 99th percentile:", {l: (round(v["share_at_ceiling"], 3), round(v["p99"], 3)) for l, v in ceiling_check.items()})

# %%
#| slow
ref_counts = dissection_counts(reference, {})
for n, per in reference.items():
    print(f"{n}:", ", ".join(f"{l} {ref_counts[n][l]['at_0.04']}/{ref_counts[n][l]['units']} at 0.04" for l in per))

# %% [markdown]
# Fig 6.8 for seed 0 of each trained network and one null network: interpretable units (IoU > 0.04) per concept kind.

# %%
#| slow
fig = plot_dissection({"CPFS (CE, objects motion)": results[C][0], "shuffled flow": results[SH][0], "random init": null[NULL_SEEDS[0]],
                       "supervised (objects labels)": results[S][0]})

# %%
#| slow
import matplotlib.pyplot as plt


# %%
#| slow
def plot_null(key: str, ax):
    "Fraction of units that are detectors per layer: every null network (grey dots) against each trained network's three seeds."
    x = np.arange(len(DISSECT_LAYERS)); units = np.array([counts[C][0][l]["units"] for l in DISSECT_LAYERS], float)
    rng = np.random.default_rng(0)
    for i, l in enumerate(DISSECT_LAYERS):
        ax.plot(i - 0.3 + 0.12 * rng.random(len(NULL_SEEDS)), np.array(null_counts[key][l]) / units[i], ".", color="0.6", ms=4,
                label=f"{len(NULL_SEEDS)} random networks (null)" if i == 0 else None)
    for j, (k, style) in enumerate(((C, "o"), (SH, "^"), (S, "s"))):
        for i, l in enumerate(DISSECT_LAYERS):
            v = np.array(seed_counts(k, key, l)) / units[i]
            ax.plot(np.full(len(v), i - 0.05 + 0.15 * j), v, style, color=f"C{j}", ms=4, label=k if i == 0 else None)
            ax.plot([i - 0.1 + 0.15 * j, i + 0.15 * j], [v.mean()] * 2, "-", color=f"C{j}")
    ax.set_xticks(x, DISSECT_LAYERS); ax.set_title(f"threshold: {key}", fontsize=9)

fig, axes = plt.subplots(1, 3, figsize=(13, 3.6), sharey=True)
for key, ax in zip(KEYS, axes): plot_null(key, ax)
axes[0].set_ylabel("fraction of units that are detectors"); axes[-1].legend(fontsize=7); fig.tight_layout()


# %% [markdown]
# What the detectors detect: the concept kinds of the units above the per-concept threshold at relu4 and relu5 (each
# unit's concept: the one with its largest per-concept score), summed over the three seeds, and the strongest relu5
# detectors of seed 0:

# %%
#| slow
def per_concept_detectors(d: Dissection) -> list:
    "`(unit, concept, per-concept score, IoU)` of the units above the per-concept threshold at `d.layer`, strongest first."
    best, c = per_concept_ratio(d, scales[d.layer]).max(1)
    return sorted(((k, d.concepts[int(c[k])], float(best[k]), float(d.iou[k, c[k]])) for k in range(len(best)) if best[k] > pc_thresholds[d.layer]),
                  key=lambda u: -u[2])

def concept_kinds(per_seed: dict, layer: str) -> dict:
    "Units above the per-concept threshold at `layer`, summed over seeds, by the kind of their concept."
    out = {}
    for d in per_seed.values():
        for _, c, _, _ in per_concept_detectors(d[layer]): out[c.split(":")[0]] = out.get(c.split(":")[0], 0) + 1
    return dict(sorted(out.items()))

kinds_of = {k: {l: concept_kinds(results[k], l) for l in ("relu4", "relu5")} for k in KINDS}
for k in KINDS:
    print(f"{k}: " + "; ".join(f"{l} {v}" for l, v in kinds_of[k].items()))
    print("   seed 0, relu5: " + (", ".join(f"unit {u} {c} ({r:.1f} scales, IoU {v:.3f})" for u, c, r, v in per_concept_detectors(results[k][0]["relu5"])[:6]) or "none"))

# %% [markdown]
# The results are saved to `results_path` (by default `nbs/06_dissection_results.json`, with the figure beside it
# as a PNG), which the prose below is written from.

# %%
#| slow
saved = dict(world="objects", probe_scenes=len(probe), iou_threshold=0.04, quantile=0.005, num_iters=DISSECT_ITERS,
             seeds={C: list(TRAINED_SEEDS), SH: list(TRAINED_SEEDS), S: [10_000 + s for s in TRAINED_SEEDS]},
             trained={C: "objects_cpfs('ce', num_iters=3000): the cpu preset of chapter 03 on objects frame pairs",
                      SH: "the same run with each frame trained on another frame's flow (cpfs.ShuffledFlow)",
                      S: "objects_classifier(num_iters=3000): trained end to end on the frame labels"},
             supervised=dict(seeds=[sup_scores[s] for s in TRAINED_SEEDS], num_iters=DISSECT_ITERS, prior=sup_scores[0]["prior"],
                             test_accuracy=float(np.mean([sc["test_accuracy"] for sc in sup_scores.values()]))),
             null=dict(networks=len(NULL_SEEDS), seeds=list(NULL_SEEDS), counts=null_counts),
             calibration=dict(networks=len(CALIBRATION_SEEDS), seeds=list(CALIBRATION_SEEDS), thresholds=thresholds,
                              per_concept_thresholds=pc_thresholds,
                              concept_scales={l: dict(zip(calibration[CALIBRATION_SEEDS[0]][l].concepts, v.tolist())) for l, v in scales.items()},
                              ceiling_normalisation=ceiling_check,
                              how=f"99th percentile of the best-concept IoU (and of the per-concept score) over every unit of {len(CALIBRATION_SEEDS)} "
                                  f"random networks (seeds {CALIBRATION_SEEDS[0]}..{CALIBRATION_SEEDS[-1]}), none of them among the null's"),
             counts={k: {str(s): v for s, v in counts[k].items()} for k in KINDS},
             normalised_counts={k: {str(s): {l: counts[k][s][l]["per_concept"] for l in DISSECT_LAYERS} for s in TRAINED_SEEDS} for k in KINDS},
             normalised_counts_are="per-concept counts: units whose largest IoU, as a multiple of its concept's scale (concept_scales), passes the calibrated per-concept threshold",
             p_values=p_values,
             shuffled_flow=dict(seeds=list(TRAINED_SEEDS), cpfs_minus_shuffled=cpfs_vs_shuffled, p_floor=1 / 20,
                                test="exact one-sided permutation test, three seeds against three"),
             versus_supervised=dict(cpfs_minus_supervised=cpfs_vs_supervised, test="exact two-sided permutation test, three seeds against three"),
             concept_kinds=kinds_of, reference={n: {l: ref_counts[n][l] for l in per} for n, per in reference.items()})
out_json = Path(results_path) if results_path else Path.cwd() / "06_dissection_results.json"
with atomic_write(out_json) as tmp: tmp.write_text(json.dumps(saved, indent=1))
fig.savefig(out_json.with_suffix(".png"), dpi=100)
print("saved", out_json)

# %%
from IPython.display import Markdown, display

# %%
SAVED_DISSECTION = Path.cwd() / "06_dissection_results.json"   # nbs/, where the notebook runs; shown whether or not the cells above ran


# %% [markdown]
# **Measured**, written from the saved run (`nbs/06_dissection_results.json`) so that the table and the sentences cannot
# disagree with it. Each cell: the three seeds' detector counts (of the layer's units); bold where the three seeds are above
# the null (exact permutation test against the 20 null networks, Holm over the layers, p < 0.05):

# %%
#| echo: false
def dissection_prose(s: dict) -> str:
    "The saved dissection as a table and sentences: the trained networks against the null, CPFS against its shuffled-flow null and the supervised network."
    L, (C, SH, S) = DISSECT_LAYERS, list(s["counts"])
    keys = {"at_0.04": "IoU > 0.04", "calibrated": "calibrated IoU", "per_concept": "per-concept threshold"}
    seeds = lambda k, key, l: [per[l][key] for per in s["counts"][k].values()]
    above = lambda k, key, l: s["p_values"][k]["group_holm"][key][l] < 0.05
    units = lambda l: next(iter(s["counts"][C].values()))[l]["units"]
    cell = lambda k, key, l: (lambda t: f"**{t}**" if above(k, key, l) else t)("/".join(map(str, seeds(k, key, l))) + f" of {units(l)}")
    nc = s["null"]["counts"]
    lines = ["| network | threshold | " + " | ".join(L) + " |", "|---|---|" + "---|" * len(L)]
    for key, label in keys.items():
        lines += [f"| {k} | {label} | " + " | ".join(cell(k, key, l) for l in L) + " |" for k in (C, SH, S)]
        lines.append(f"| {s['null']['networks']} random networks: median [min, max] | {label} | "
                     + " | ".join(f"{np.median(nc[key][l]):g} [{min(nc[key][l])}, {max(nc[key][l])}]" for l in L) + " |")
    where = lambda k, key: ", ".join(l for l in L if above(k, key, l)) or "no layer"
    sup, cal = s["supervised"], s["calibration"]
    sh = s["shuffled_flow"]["cpfs_minus_shuffled"]
    motion = {key: [l for l in L if sh[key][l]["p"] <= 0.05] for key in keys}
    vs = s["versus_supervised"]["cpfs_minus_supervised"]
    ck = lambda k, l: ", ".join(f"{n} {c}" for n, c in s["concept_kinds"][k][l].items()) or "none"
    mix = lambda k: (lambda d: f"{100 * d.get('texture', 0) / max(1, sum(d.values())):.0f} % textures, with {d.get('part', 0)} part and "
                               f"{d.get('category', 0)} category units")(s["concept_kinds"][k]["relu5"])
    out = ["\n".join(lines), "",
           f"The supervised networks reach " + ", ".join(f"{100 * x['test_accuracy']:.1f}" for x in sup["seeds"])
           + f" % on the test frames (majority class {100 * sup['prior']:.1f} %): networks that learned their task. "
           f"{s['probe_scenes']} probe scenes; every trained network {s['num_iters']:,} steps. What this shows:", "",
           f"- **The thresholds.** Calibrated on {cal['networks']} random networks kept apart from the null: a best-concept IoU of "
           + ", ".join(f"{v:.3f}" for v in cal["thresholds"].values()) + f" at {L[0]}..{L[-1]} (the fixed 0.04 " + ("lies below all of them" if all(v > 0.04 for v in cal["thresholds"].values()) else "is not below all of them")
           + f"; at 0.04 the null networks show {min(nc['at_0.04'][L[-1]])}–{max(nc['at_0.04'][L[-1]])} \"detectors\" at {L[-1]}), and "
           + ", ".join(f"{v:.2f}" for v in cal["per_concept_thresholds"].values()) + " times the concept's scale for the per-concept score "
           f"(at {L[-1]} the scales run from {min(cal['concept_scales'][L[-1]].values()):.4f} to {max(cal['concept_scales'][L[-1]].values()):.4f}). "
           "Dividing by the IoU ceiling instead fails: " + ", ".join(f"{100 * v['share_at_ceiling']:.1f} %" for v in cal["ceiling_normalisation"].values())
           + f" of the calibration units at {L[0]}..{L[-1]} sit at their ceiling with some concept, so its 99th percentile is "
           + ", ".join(f"{v['p99']:.2f}" for v in cal["ceiling_normalisation"].values()) + ".",
           *[f"- **Above the null ({label})**: CPFS at {where(C, key)}; shuffled-flow CPFS at {where(SH, key)}; supervised at {where(S, key)}."
             for key, label in keys.items()],
           "- **Learned from motion, or from being trained?** CPFS minus its shuffled-flow null, mean of three seeds: "
           + "; ".join(f"{label} " + ", ".join(f"{l} {sh[key][l]['difference']:+.1f} (p {sh[key][l]['p']:.2f})" for l in L) for key, label in keys.items())
           + ". Three seeds against three cannot give p below 0.05 (every CPFS seed above every shuffled one); "
           + ("at that floor: " + "; ".join(f"{label} at {', '.join(motion[key])}" for key, label in keys.items() if motion[key])
              if any(motion.values()) else "no layer reaches it at any threshold") + ".",
           "- **CPFS against the supervised network** (two-sided, same floor): "
           + "; ".join(f"{label} " + ", ".join(f"{l} {vs[key][l]['difference']:+.1f} (p {vs[key][l]['p']:.2f})" for l in L) for key, label in keys.items()) + ".",
           f"- **What they detect** (units above the per-concept threshold, three seeds, by the kind of their concept): CPFS at relu4 {ck(C, 'relu4')}, relu5 {ck(C, 'relu5')}; "
           f"shuffled flow relu4 {ck(SH, 'relu4')}, relu5 {ck(SH, 'relu5')}; supervised relu4 {ck(S, 'relu4')}, relu5 {ck(S, 'relu5')}. "
           f"At relu5 CPFS's detectors are {mix(C)}; the supervised network's {mix(S)}.",
           *[f"- **{n}**, dissected on the same scenes at 0.04: " + ", ".join(f"{l} {c['at_0.04']}/{c['units']}" for l, c in per.items())
             + " — no null for its architecture here, so these counts are a reference, not a test." for n, per in s["reference"].items()]]
    return "\n".join(out)

if SAVED_DISSECTION.exists(): display(Markdown(dissection_prose(json.loads(SAVED_DISSECTION.read_text()))))

# %%
#| hide
# `dissection_prose` on a hand-made run whose verdicts are known: bold only where the Holm-adjusted group p is under 0.05
_L = DISSECT_LAYERS
_K = ("at_0.04", "calibrated", "per_concept")
_seed = lambda a: {l: {"units": 10, "at_0.04": a[i], "calibrated": a[i] // 2, "per_concept": a[i] // 3} for i, l in enumerate(_L)}
_hp = lambda small: {"group_holm": {k: {l: (0.01 if l in small else 0.5) for l in _L} for k in _K}}
_cmp = lambda d, p: {k: {l: {"difference": d, "p": p if l == "relu5" else 0.4} for l in _L} for k in _K}
_hand = {"counts": {"CPFS": {"0": _seed([1, 2, 3, 6, 9]), "1": _seed([1, 2, 3, 7, 8])}, "SH": {"0": _seed([1] * 5), "1": _seed([0] * 5)},
                    "SUP": {"0": _seed([0, 1, 2, 3, 4]), "1": _seed([0, 1, 2, 3, 5])}},
         "p_values": {"CPFS": _hp(("relu4", "relu5")), "SH": _hp(()), "SUP": _hp(("relu5",))},
         "null": {"networks": 4, "counts": {k: {l: [0, 1, 1, 3] for l in _L} for k in _K}},
         "calibration": {"networks": 2, "thresholds": {l: 0.05 for l in _L}, "per_concept_thresholds": {l: 2.5 for l in _L},
                         "concept_scales": {l: {"a": 0.002, "b": 0.3} for l in _L},
                         "ceiling_normalisation": {l: {"share_at_ceiling": 0.125, "p99": 1.0} for l in _L}},
         "supervised": {"seeds": [{"test_accuracy": 0.9}, {"test_accuracy": 0.8}], "prior": 0.25}, "probe_scenes": 7, "num_iters": 3000,
         "shuffled_flow": {"cpfs_minus_shuffled": _cmp(5.5, 0.05)}, "versus_supervised": {"cpfs_minus_supervised": _cmp(-1.0, 0.3)},
         "concept_kinds": {k: {"relu4": {"texture": 2}, "relu5": {}} for k in ("CPFS", "SH", "SUP")}, "reference": {"Ref": {"b1": {"at_0.04": 3, "units": 8}}}}
_t = dissection_prose(_hand)
assert "| CPFS | IoU > 0.04 | 1/1 of 10 | 2/2 of 10 | 3/3 of 10 | **6/7 of 10** | **9/8 of 10** |" in _t, _t
assert "| SUP | calibrated IoU | 0/0 of 10 | 0/0 of 10 | 1/1 of 10 | 1/1 of 10 | **2/2 of 10** |" in _t
assert "| 4 random networks: median [min, max] | per-concept threshold | 1 [0, 3] |" in _t
assert "2.50, 2.50" in _t and "(at relu5 the scales run from 0.0020 to 0.3000)" in _t and "12.5 %, 12.5 %" in _t and "99th percentile is 1.00, 1.00" in _t
assert "- **Above the null (IoU > 0.04)**: CPFS at relu4, relu5; shuffled-flow CPFS at no layer; supervised at relu5." in _t
assert "reach 90.0, 80.0 % on the test frames (majority class 25.0 %)" in _t and "7 probe scenes; every trained network 3,000 steps" in _t
assert "IoU > 0.04 relu1 +5.5 (p 0.40)" in _t and "at that floor: IoU > 0.04 at relu5; calibrated IoU at relu5; per-concept threshold at relu5." in _t
assert "0.050, 0.050" in _t and "(the fixed 0.04 lies below all of them; at 0.04 the null networks show 0–3 \"detectors\" at relu5)" in _t
assert "At relu5 CPFS's detectors are 0 % textures, with 0 part and 0 category units" in _t
assert "CPFS at relu4 texture 2, relu5 none" in _t and "IoU > 0.04 relu1 -1.0 (p 0.40)" in _t and "- **Ref**, dissected on the same scenes at 0.04: b1 3/8" in _t
_hand["shuffled_flow"] = {"cpfs_minus_shuffled": _cmp(0.0, 0.5)}
assert "no layer reaches it at any threshold." in dissection_prose(_hand)

# %% [markdown]
# The concepts are those the renderer knows (categories, parts, textures, colours): the thesis' qualitative finding
# (section 6.4) — that the motion-trained conv5 is dominated by textures while a label-trained one also has units
# for object parts — is checked in the "What they detect" line above, on three seeds of each network.
#
# Limits: three seeds per trained network (the CPFS-against-shuffled test cannot go below p = 0.05 with three against
# three), 20 null networks (an empirical p-value for one network cannot go below 1/21), the 128 probe scenes above,
# and the renderer's concepts rather than Broden's; the times of the training and the dissection are printed by the
# cells above.

# %% [markdown]
# ## Activation maximisation, inversion and caricatures (figs 6.1–6.3, 6.6, 6.7)
#
# Chapter 05b's pre-image solver, with the thesis' parameters, applied to the three networks:
#
# - **activation maximisation** (figs 6.1, 6.2): the first 25 units of conv1..conv5 (conv1 of the small
#   networks has only 24), each at the centre of its feature map, in 5×5 grids; and the first 3 units
#   of fc6 and fc7 (fig 6.3). The conv layers are maximised before their ReLU, where the gradient
#   never vanishes; $Z = M\rho^2/10^4$ (the author's scaling of eq 5.9, chapter 05b) with $M$ each unit's
#   largest response on the book's 8 natural images and $\rho$ its receptive-field size. All the units of a
#   layer are solved as one batch;
# - **inversion** (fig 6.6) of relu1..relu5 for one held-out `objects` frame from 4 random
#   initialisations, each layer's 4 pre-images shown as a 2×2 grid;
# - **caricatures** (fig 6.7) of two frames at relu3, relu5 and relu7.
#
# The thesis inverts and caricatures photographs ("Monkey", "Flamingo", "Red-fox"); the networks here
# were trained on `objects`, so the frames come from it. The small networks see images in [0,1] without
# normalisation (chapter 03); torchvision's AlexNet, when used, sees ImageNet-normalised images.
#
# **Deviation (`cpu` preset).** The thesis optimises 224-px images for 300 iterations (inversion: 300 +
# 50). Here the default keeps the iterations but uses 64-px images: about 400 maximisations and 60 inversions
# from scratch fit in the chapter's ten-minute CPU budget this way (a cold run of the pre-images takes a few
# minutes). At 64 px a conv5 unit's 163-px receptive field is larger than the image; the patterns are therefore
# smaller than the thesis'. Which pre-images converged is measured below ("Convergence"), and a panel whose
# optimisation had not converged says so in its title. `preset = "paper"` restores the thesis' image size.
# Figs 6.1–6.2 show one image per neuron, as here, with the jitter of chapter 05c ($T$ = a quarter of the layer's
# stride, `thesis_jitter`), but not on the author's canvas of about 1.1 times the unit's receptive field
# (`author_nets.author_am_setup`, which chapter 05c's figures use): for this network that canvas is 31, 63, 127, 159
# and 191 px at conv1..conv5, so the deep layers would cost up to nine times the 64-px canvas. Every unit of a layer
# shares one canvas here so that a layer's 25 units are solved as one batch.
#
# Measured: the last full run (4 Dec 2026, one torch thread on two cores shared with two other jobs, neither
# network present) took 20 min 28 s in all: training CPFS-CE 391 s and the supervised network 489 s (both
# cached afterwards), the dissection of eight networks 233 s, the pre-images 57 s (then 80 iterations). With both networks cached
# the default run is the dissection and the pre-images: the time under the title, which `make book` measures.
#
# `network_preimages` computes all of a network's pre-images; `cached_preimages` stores them under
# `_runs/06_visualize_motion/` at the checkout's root (`core.runs_dir`) with `atomic_save`, in a file named after a hash of the settings and
# of the network's weights (`network_fingerprint`), and reads them back with
# `torch.load(weights_only=True)`.

# %%
#| export
MAXIMIZE_LAYERS = ("conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7")
INVERT_LAYERS = ("relu1", "relu2", "relu3", "relu4", "relu5")
CARICATURE_LAYERS = ("relu3", "relu5", "relu7")
INVERSION_C = {"relu1": 300.0, "relu2": 300.0, "relu3": 300.0, "relu4": 100.0, "relu5": 20.0}  # section 5.4.2; 1 beyond

def thesis_jitter(model: nn.Module, layer: str, size: int,
                  rf: dict | None = None  # `receptive_fields(model, size)`, if already computed
                 ) -> int:
    "The thesis' jitter T for a layer: the integer closest to a quarter of its stride (at least 1)."
    rf = receptive_fields(model, size) if rf is None else rf
    if layer not in rf: raise ValueError(f"no receptive field for layer {layer!r} of {type(model).__name__}")
    return max(1, round(max(rf[layer].stride) / 4))

def network_preimages(model: nn.Module,  # the network (layers named conv1..conv5, fc6, fc7, relu1..relu7)
                      frames: torch.Tensor,  # (N,3,S,S) images in [0,1] at the settings' size; frames[0] is inverted
                      settings: dict,  # `preimage_settings(preset)`
                      normalisation=NO_NORMALISATION,  # (mean, std) of the network's input
                      natural: torch.Tensor | None = None,  # (8,3,S,S) images for the units' typical maxima M
                      progress: bool = False) -> dict:
    """All the chapter's pre-images of one network: `{"maxima": {layer: (U,3,S,S)}, "inversions": {layer: (inits,3,S,S)},
    "inversion_error": {layer: (inits,)}, "caricatures": {layer: (N,3,S,S)}, "curves": {"maxima" | "inversion": {layer: (T,)}}}`,
    images clipped to [0,1]; the curves are the data term per iteration, averaged over units or initialisations (for
    inversion its square root: the unsquared normalised error)."""
    S = settings["size"]
    if frames.ndim != 4 or tuple(frames.shape[1:]) != (3, S, S):
        raise ValueError(f"frames must be (N,3,{S},{S}) for size={S}, got {tuple(frames.shape)}")
    natural = natural_images(8, S) if natural is None else natural
    mean, std = normalisation
    phi = lambda layer: LayerPhi(model, layer, mean=mean, std=std)
    rf = receptive_fields(model, S)
    T = {l: thesis_jitter(model, l, S, rf) for l in MAXIMIZE_LAYERS + INVERT_LAYERS + CARICATURE_LAYERS}
    out = {"maxima": {}, "inversions": {}, "inversion_error": {}, "caricatures": {}, "curves": {"maxima": {}, "inversion": {}, "caricature": {}}}
    for layer in MAXIMIZE_LAYERS:
        p = phi(layer)
        with torch.no_grad(): width = p(natural[:1]).shape[1]
        units = list(range(min(settings["fc_units" if layer.startswith("fc") else "units"], width)))
        r = maximize(p, units, shape=(3, S, S), M=unit_maximum(p, units, natural), jitter=T[layer],
                     num_iters=settings["max_iters"], seed=0, progress=progress)
        out["maxima"][layer] = r.images.detach().clamp(0, 1)
        out["curves"]["maxima"][layer] = r.history["loss"].detach().mean(1)
    x0 = frames[:1].expand(settings["inits"], -1, -1, -1).contiguous()  # one frame, `inits` noise initialisations
    for layer in INVERT_LAYERS:
        r = invert(phi(layer), x0=x0, C=INVERSION_C.get(layer, 1.0), jitter=T[layer], num_iters=settings["inv_iters"],
                   finetune_iters=settings["finetune_iters"], seed=0, progress=progress)
        out["inversions"][layer], out["inversion_error"][layer] = r.images.detach().clamp(0, 1), r.error.detach()
        out["curves"]["inversion"][layer] = r.history["loss"].detach().clamp_min(0).sqrt().mean(1)
    for layer in CARICATURE_LAYERS:
        r = caricature(phi(layer), frames, C=settings["car_C"], jitter=T[layer], num_iters=settings["car_iters"], seed=0,
                       progress=progress)
        out["caricatures"][layer] = r.images.detach().clamp(0, 1)
        out["curves"]["caricature"][layer] = r.history["loss"].detach().mean(1)
    return out

PREIMAGE_SOLVER_VERSION = 4  # part of the cache key: 2 = the author's Z = Mρ²/1e4 and the momentum reset; 3 = with curves; 4 = caricature curves

def relative_fall(curve: torch.Tensor,  # `(T,)` a loss per iteration
                  window: int = 50,  # iterations looked back
                  smooth: int = 1,  # average this many iterations at each end (jitter makes single values noisy)
                  relative_to: str = "value"  # "value": to the loss `window` iterations ago; "total": to the whole fall
                 ) -> float:
    """How much a loss fell over its last `window` iterations: `(a - b) / |a|` ("value") or `(a - b) / (c[0] - b)` ("total"),
    with `b` the mean of the last `smooth` values and `a` the mean of the `smooth` values `window` iterations earlier."""
    check_choice("relative_to", relative_to, ("value", "total"))
    c = torch.as_tensor(curve, dtype=torch.float64).flatten()
    if len(c) < window + smooth: raise ValueError(f"relative_fall needs at least window + smooth = {window + smooth} iterations, got {len(c)}")
    b = c[-smooth:].mean()
    a = c[len(c) - window - smooth:len(c) - window].mean()
    return float((a - b) / ((a.abs() if relative_to == "value" else (c[0] - b).abs()).clamp_min(1e-12)))

def cached_preimages(model: nn.Module, frames: torch.Tensor, settings: dict,
                     cache_dir=None,  # where the cache files go (None: `core.runs_dir("06_visualize_motion")`)
                     normalisation=NO_NORMALISATION, use_cache: bool | None = None,  # None: the settings' `use_cache`
                     **kwargs) -> dict:
    "`network_preimages`, read from `cache_dir` when an entry with the same settings, frames and weights exists; otherwise computed and saved."
    key = json.dumps(dict(settings={k: v for k, v in settings.items() if k not in ("use_cache", "preset")}, net=network_fingerprint(model),
                          solver=PREIMAGE_SOLVER_VERSION,
                          frames=hashlib.sha1(frames.detach().cpu().float().contiguous().numpy().tobytes()).hexdigest(),
                          normalisation=[list(map(float, v)) for v in normalisation]), sort_keys=True)
    path = Path(cache_dir or runs_dir("06_visualize_motion", create=False)) / f"preimages-{settings.get('preset', 'custom')}-{hashlib.sha1(key.encode()).hexdigest()[:16]}.pt"
    if (settings.get("use_cache", True) if use_cache is None else use_cache) and path.exists():
        return torch.load(path, weights_only=True)
    out = network_preimages(model, frames, settings, normalisation=normalisation, **kwargs)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_save(out, path)
    return out


# %% [markdown]
# A check on a tiny problem: two units per layer, two iterations, 64-px images of a random network —
# the shapes, the [0,1] range, and the cache (a second call reads the file; other weights make another
# file).

# %%
from motion_nbs.data import SceneDataset

# %%
_tiny = dict(preimage_settings("cpu"), units=2, fc_units=1, inits=2, max_iters=2, inv_iters=2, finetune_iters=1, car_iters=2)
_frames = torch.stack([SceneDataset("shapes", length=2, seed=5, size=(64, 64))[i]["image"] for i in range(2)])
test_eq([thesis_jitter(_random_net(0), l, 64) for l in ("conv1", "conv2", "conv5", "fc6")], [1, 2, 4, 8])
test_close(relative_fall(torch.tensor([4.0, 2.0, 1.0]), window=1), 0.5)
test_close(relative_fall(torch.tensor([-1.0, -1.5, -2.0]), window=2), 1.0)   # a maximisation's negative loss
test_close(relative_fall(torch.tensor([9.0, 5.0, 3.0, 2.0, 1.0]), window=2, smooth=2), (4.0 - 1.5) / 4.0)   # means of 2 at each end
test_close(relative_fall(torch.tensor([0.0, -8.0, -9.0, -10.0]), window=2, relative_to="total"), 0.2)       # (-8 + 10) / (0 + 10)
test_fail(lambda: relative_fall(torch.ones(50)), contains="at least window + smooth = 51")
with tempfile.TemporaryDirectory() as _dir:
    _p = cached_preimages(_random_net(0), _frames, _tiny, cache_dir=_dir)
    test_eq(_p["maxima"]["conv3"].shape, (2, 3, 64, 64)); test_eq(_p["maxima"]["fc7"].shape, (1, 3, 64, 64))
    test_eq(_p["inversions"]["relu5"].shape, (2, 3, 64, 64)); test_eq(_p["inversion_error"]["relu1"].shape, (2,))
    test_eq(_p["curves"]["inversion"]["relu1"].shape, (2,)); test_eq(_p["curves"]["inversion"]["relu5"].shape, (3,))   # relu5: jitter, so 2 + 1 fine-tuning
    test_eq(_p["curves"]["maxima"]["conv1"].shape, (2,))
    _net = _random_net(0)   # the same inversion by hand: the curve is the mean over inits of sqrt(loss) per iteration
    _r = invert(LayerPhi(_net, "relu1", mean=NO_NORMALISATION[0], std=NO_NORMALISATION[1]), x0=_frames[:1].expand(2, -1, -1, -1).contiguous(),
                C=INVERSION_C["relu1"], jitter=thesis_jitter(_net, "relu1", 64), num_iters=2, finetune_iters=1, seed=0)
    test_close(_p["curves"]["inversion"]["relu1"], _r.history["loss"].sqrt().mean(1), eps=1e-6)
    test_eq(_p["caricatures"]["relu7"].shape, (2, 3, 64, 64))
    assert all(float(v.min()) >= 0 and float(v.max()) <= 1 for d in ("maxima", "inversions", "caricatures") for v in _p[d].values())
    test_eq(len(list(Path(_dir).glob("*.pt"))), 1)
    test_eq(cached_preimages(_random_net(0), _frames, _tiny, cache_dir=_dir)["maxima"]["conv1"], _p["maxima"]["conv1"])
    cached_preimages(_random_net(1), _frames, dict(_tiny, max_iters=1), cache_dir=_dir)
    test_eq(len(list(Path(_dir).glob("*.pt"))), 2)
test_fail(lambda: network_preimages(_random_net(0), _frames[:, :, :32], _tiny), contains="frames must be (N,3,64,64)")

# %%
from torchvision.utils import make_grid


# %%
def tile(images, nrow):
    "A grid image of `images` (B,3,h,w), `nrow` per row, separated by white lines."
    return make_grid(images, nrow=nrow, padding=max(1, images.shape[-1] // 32), pad_value=1.0)

def short(name): return name.split(" (")[0] + (" (ImageNet)" if "ImageNet" in name else "")


# %% [markdown]
# The pre-images of the three networks (computed, or read from the cache for the `cpu` preset):

# %%
#| slow
import time

# %%
#| slow
S = settings["size"]
frames = torch.stack([SceneDataset("objects", length=2, seed=123_457, size=(S, S))[i]["image"] for i in range(2)])
_t = time.time()
pre = {n: cached_preimages(net, frames, settings, normalisation=norms[n]) for n, net in nets.items()}
print(f"pre-images ({settings['preset']} preset, {S} px): {time.time() - _t:.0f} s")


# %% [markdown]
# ### Activation maximisation (figs 6.1, 6.2)
#
# One 5×5 grid per network and layer; the grid reads left to right, top to bottom, from unit 0.

# %%
#| slow
def jittered_stage(curve):
    """An inversion's curve without its fine-tuning stage (the last `finetune_iters`, without jitter at a tenth of the rate,
    which layers with jitter get): that stage changes the objective, so convergence is judged on the stage before it."""
    return curve[:settings["inv_iters"]]

def marked(title: str, curve, relative_to: str) -> str:
    "A panel title with '(not converged)' under it when its loss still changed by more than 1 %, either way, over the last 50 iterations."
    return title if abs(relative_fall(curve, smooth=10, relative_to=relative_to)) <= 0.01 else f"{title}\n(not converged)"

def show_maxima(layers):
    ims, titles = [], []
    for layer in layers:
        for n in nets:
            ims.append(tile(pre[n]["maxima"][layer], 5))
            titles.append(marked(f"{short(n)}: {layer}, units 0–{len(pre[n]['maxima'][layer]) - 1}", pre[n]["curves"]["maxima"][layer], "total"))
    return show_images(ims, titles, ncols=len(nets), size=3.2)

fig = show_maxima(("conv1", "conv2", "conv3"))  # fig 6.2

# %%
#| slow
fig = show_maxima(("conv4", "conv5"))  # fig 6.1

# %% [markdown]
# In the measured `cpu` run (the figures above, re-read on 6 Dec 2026, seed 0 of the 3,000-step networks): conv1's maxima
# are small centred colour blobs in all three networks (its 11-px receptive field); CPFS's still look like the random
# network's, which is its initialisation (same seed) — 3,000 steps at the CPFS learning rate moved conv1 little. The
# supervised network's conv1 units are distinct colour-opponent blobs and edges. From conv2 on the supervised units show
# oriented colour edges, stripes, and rings and arcs the size of the objects' outlines (spheres and cylinders); CPFS's
# conv2 units, like the random network's, respond to high-frequency colour noise, its conv3 units to colour blotches
# smoother than the random network's, and its conv4–conv5 units to faint textures, with a few high-contrast noise-like
# units. The thesis sees abstract but structured patterns in the motion-trained network; here only the supervised
# network's maxima have clear structure at 64 px.

# %% [markdown]
# ### Fully connected layers (fig 6.3)
#
# The first three units of fc6 and fc7 (of the small networks' convolutional fc6/fc7, the unit at the
# centre of the map), one row per network.

# %%
#| slow
ims, titles = [], []
for n in nets:
    for layer in ("fc6", "fc7"):
        ims += list(pre[n]["maxima"][layer])
        titles += [marked(f"{layer} #{u}", pre[n]["curves"]["maxima"][layer], "total") for u in range(len(pre[n]["maxima"][layer]))]
    titles[-6] = f"{short(n)}\n{titles[-6]}"
fig = show_images(ims, titles, ncols=len(ims) // len(nets), size=1.6)

# %% [markdown]
# Almost all fc6/fc7 maxima are nearly uniform grey in the three networks (a faint colour blob in CPFS's fc7 #1, colour
# noise in the random network's fc7, and one of the supervised network's fc6 units a ring of colour — the outline of a
# sphere).
# None shows the people-like collections that the thesis finds in its YFCC-trained fc layers — the
# `objects` frames have no people, and at 64 px the fc units' fields are far larger than the image.

# %% [markdown]
# ### Inversion from four initialisations (fig 6.6)
#
# Each panel holds the 4 pre-images of one layer (2×2), from 4 noise initialisations; the title gives
# their mean normalised error $\|\Phi(x) - \Phi_0\|/\|\Phi_0\|$ in % (unsquared, the thesis' table 5.2 metric; eq 5.2 is its square).

# %%
#| slow
ims, titles = [], []
for n in nets:
    ims.append(frames[0]); titles.append(f"{short(n)}: frame")
    for layer in INVERT_LAYERS:
        ims.append(tile(pre[n]["inversions"][layer], 2))
        titles.append(marked(f"{layer}: err {100 * float(pre[n]['inversion_error'][layer].clamp_min(0).sqrt().mean()):.0f}%",
                             jittered_stage(pre[n]["curves"]["inversion"][layer]), "value"))
fig = show_images(ims, titles, ncols=1 + len(INVERT_LAYERS), size=2.0)
display(Markdown("Measured mean errors (unsquared, %), " + " → ".join(INVERT_LAYERS) + ": " + "; ".join(
    f"{short(n)} " + ", ".join(f"{100 * float(pre[n]['inversion_error'][l].clamp_min(0).sqrt().mean()):.0f}" for l in INVERT_LAYERS)
    for n in nets) + "."))

# %% [markdown]
# The four initialisations give nearly the same pre-image. At relu1 all three networks reconstruct the frame
# (the cat-textured plane and the object). From relu2 on the supervised network's pre-images are blurred blobs with
# the plane's eyes and the object as dark patches; the CPFS and random pre-images are high-frequency colour noise
# with the object faintly visible in the first layers, CPFS's smoother at relu4–relu5. The random
# network (its batch norm calibrated on frames, so that its codes depend on the image) has the largest
# errors at every layer but relu1 (the errors are in the panels' titles); how the errors fell with the iterations, and
# which inversions converged, is measured under "Convergence" below.

# %% [markdown]
# ### Convergence
#
# Are 300 iterations enough? The solver records its data term at every iteration: for inversion the
# normalised error (unsquared, averaged over the four initialisations; for the layers with jitter the last 50
# iterations are the fine-tuning stage without jitter at a tenth of the rate — a different objective, where the
# error drops sharply once the shifts stop — so their convergence is judged on the 300 iterations before it), for
# activation maximisation $-\langle\Phi(x), e\rangle/Z$ and for caricatures $-\langle\Phi(x), \Phi_0\rangle/Z$,
# averaged over the units or frames. The thesis runs until the error stops falling; the criterion here is a change of less than
# 1 %, either way, over the last 50 iterations (`relative_fall`, averaging 10 iterations at each end because the jitter makes
# single values noisy): of the error itself for inversion, and of the whole fall since the start for
# maximisation and caricatures (their loss changes sign, so a fall relative to its value means nothing); an error that rises under
# jitter has not settled either. The run
# stops at the thesis' 300 iterations whatever the curves say, so this cell reports which curves were still moving.

# %%
#| slow
fig, axes = plt.subplots(2, len(nets), figsize=(4.2 * len(nets), 6), squeeze=False)
for j, n in enumerate(nets):
    for layer, c in pre[n]["curves"]["inversion"].items(): axes[0, j].plot(c.numpy(), label=layer)
    for layer, c in pre[n]["curves"]["maxima"].items(): axes[1, j].plot(c.numpy(), label=layer)
    axes[0, j].set_title(f"{short(n)}: inversion error", fontsize=9); axes[1, j].set_title(f"{short(n)}: maximisation loss", fontsize=9)
    axes[1, j].set_xlabel("iteration")
axes[0, -1].legend(fontsize=7); axes[1, -1].legend(fontsize=7, ncol=2); fig.tight_layout()
all_falls = {}
for n in nets:
    falls = {f"inv {l}": relative_fall(jittered_stage(c), smooth=10) for l, c in pre[n]["curves"]["inversion"].items()}
    falls.update({f"max {l}": relative_fall(c, smooth=10, relative_to="total") for l, c in pre[n]["curves"]["maxima"].items()})
    falls.update({f"car {l}": relative_fall(c, smooth=10, relative_to="total") for l, c in pre[n]["curves"]["caricature"].items()})
    all_falls[n] = falls
    still = [k for k, v in falls.items() if abs(v) > 0.01]
    print(f"{short(n)}: fall over the last 50 iterations " + ", ".join(f"{k} {100 * v:.1f}%" for k, v in falls.items()))
    print(f"   still changing by more than 1 % (falling, or rising if negative): {', '.join(still) or 'none'}")
_pc = lambda v: f"{100 * v:.0f}".replace("-0", "0") if abs(100 * v) < 0.5 else f"{100 * v:.0f}".replace("-", "−")
_span = lambda vs: f"{_pc(min(vs))} to {_pc(max(vs))} %"
_conv = sum(abs(v) <= 0.01 for f in all_falls.values() for v in f.values())
display(Markdown(
    f"Measured (`{settings['preset']}` preset, {settings['inv_iters']} + {settings['finetune_iters']} iterations of inversion, "
    f"{settings['max_iters']} of maximisation): **{_conv} of the {sum(len(f) for f in all_falls.values())} curves converged.** Over the "
    "last 50 iterations (a negative share: the loss rose) the inversion errors fell by " + ", ".join(
        f"{_span([v for k, v in f.items() if k.startswith('inv')])} ({short(n)})" for n, f in all_falls.items())
    + " of their value, and the maximisations made " + ", ".join(
        f"{_span([v for k, v in f.items() if k.startswith('max')])} ({short(n)})" for n, f in all_falls.items())
    + " of their whole progress (a share above 100 % is a loss that rose again before falling), the caricatures " + ", ".join(
        f"{_span([v for k, v in f.items() if k.startswith('car')])} ({short(n)})" for n, f in all_falls.items()) + "."))

# %% [markdown]
# Where a curve has not met the 1 % criterion, its pre-images are snapshots of an unfinished optimisation — the
# comparisons between networks hold for equal budgets, not for converged solutions — and their panels say so.
# (Before 6 Dec 2026 this preset ran 80 iterations, and none of its 36 curves converged.)

# %% [markdown]
# ### Caricatures (fig 6.7)

# %%
#| slow
ims, titles = [], []
for i in range(len(frames)):
    for n in nets:
        ims.append(frames[i]); titles.append(f"{short(n)}: frame {i}")
        for layer in CARICATURE_LAYERS:
            ims.append(pre[n]["caricatures"][layer][i]); titles.append(marked(f"{layer}", pre[n]["curves"]["caricature"][layer], "total"))
fig = show_images(ims, titles, ncols=1 + len(CARICATURE_LAYERS), size=1.8)

# %% [markdown]
# With $C = 20$ (300 iterations; the deviation is explained above) the three networks caricature the
# frames differently. The supervised network paints rainbow-coloured oriented stripes, arcs and rings over the
# object at relu3, relu5 and relu7 — its edge and outline units, the clearest exaggeration of what a network
# detects. CPFS's relu3 and relu5 caricatures exaggerate colour contrast in checker-like blotches gathered on the object
# (frame 0's cube, frame 1's sphere); its relu7 is a faint blob where the object is. The random network's are noisy
# colour blotches over the whole frame (the sphere faintly visible at relu5). None of the networks repeats object
# parts as the thesis' fig 6.7 does. At the thesis' $C = 1$ (an earlier run) all the caricatures drifted to the mean
# colour, as chapter 05c explains.

# %% [markdown]
# ## Summary
#
# - `network_dissection(model, layer, concepts)` implements Bau et al.'s unit-by-unit procedure
#   (top-0.5 % threshold, bilinear upsampling, data-set IoU, 0.04 criterion) and returns a `Dissection`
#   with the IoU table, each unit's best concept and the counts per concept kind; `plot_dissection`
#   draws fig 6.8.
# - Concepts come from the renderer (`SceneConcepts`: categories, parts, textures, colours) or from a
#   Broden folder (`BrodenConcepts`).
# - The slow cells dissect, on the `objects` world, three seeds each of CPFS-CE, its shuffled-flow null and a
#   label-supervised network of the same architecture (3,000 steps each), against 20 random networks as a null
#   with thresholds calibrated on 10 others (`random_backbones`, `calibrated_thresholds`, `empirical_p`, `group_p`),
#   at IoU 0.04, at the calibrated IoU and at a per-concept threshold (`concept_scales`, `per_concept_score`), and the
#   ImageNet EfficientNet-Lite0 as a reference; save `nbs/06_dissection_results.json`; and show activation maxima of the
#   first 25 units of conv1..conv5 and 3 of fc6/fc7, inversions from 4 initialisations and caricatures with chapter
#   05b's solver (`network_preimages`, cached by `cached_preimages`) for seed 0 of CPFS and of the supervised network.
# - Measured: the generated table and sentences above.
# - Deviations: Broden is replaced by rendered concepts; quarter-width networks trained for minutes;
#   the `cpu` preset's pre-images are 64 px instead of 224 px (300 iterations, as the thesis').

# %%
#| hide
import nbdev; nbdev.nbdev_export()
