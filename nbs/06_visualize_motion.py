# %%
#| default_exp dissect

# %% [markdown]
# # Visualising the motion-trained network
#
# > Network dissection of the CPFS network against a random and a supervised network of the same architecture, and the chapter 5 visualisations applied to it.

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
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

# %%
#| hide
import tempfile

from fastcore.test import test_close, test_eq, test_fail

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
    from motion_nbs.data import CATEGORIES, NUM_FACES, TEXTURES
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
        from motion_nbs.data import SceneDataset
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
        from PIL import Image
        a = np.asarray(Image.open(self.root / "images" / name).convert("RGB")).astype(np.int64)
        return a[..., 0] + 256 * a[..., 1]

    def __len__(self): return len(self.rows)

    def __getitem__(self, i):
        from motion_nbs.core import load_image
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
    from tqdm.auto import tqdm
    from motion_nbs.models import layer_outputs
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
    return Dissection(layer, names_c, iou.float(), thresholds, iou_threshold)


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
    from PIL import Image
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
# ## Three networks
#
# The thesis compares its CPFS AlexNet with a randomly initialised one and with the ImageNet-supervised
# AlexNet. Here all three are the quarter-width `alexnet_cpfs_small` of the CPU presets:
#
# - **CPFS**: trained by `motion_nbs.cpfs.train` (KTA loss, `cpu` preset: the run of `make demo`,
#   reused when `_runs/cpfs` holds it);
# - **random**: the same architecture at its seeded initialisation;
# - **supervised**: torchvision's ImageNet AlexNet cannot be loaded offline and has another width, so the
#   supervised network is the same small architecture trained with labels — the *majority object
#   category* of each `shapes` frame — with the same number of steps and images per step as the CPFS
#   run. The figure titles say so.
#
# Each network is dissected at relu1..relu5 over 64 held-out `shapes` scenes.

# %%
#| export
def majority_category(scene: dict) -> int:
    "The most frequent object category (1..3) among a scene's object pixels (0 if no object is visible)."
    c = scene["categories"][scene["categories"] > 0]
    return int(c.mode().values) if c.numel() else 0

def train_supervised(num_iters: int = 600, batch_size: int = 16, size: int = 128, seed: int = 0, out_dir="_runs/dissect_supervised",
                     progress: bool = True) -> nn.Module:
    "`alexnet_cpfs_small` (with parameter-free BN, folded after training) trained to classify `majority_category` of `shapes` scenes."
    from motion_nbs.core import seed_everything
    from motion_nbs.data import SceneDataset
    from motion_nbs.learner import fit
    from motion_nbs.models import alexnet_cpfs_small, fold_batchnorm
    seed_everything(seed)
    backbone = alexnet_cpfs_small(batchnorm=True)
    width = backbone.fc7.out_channels
    model = nn.Sequential(backbone, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, 4))
    class _Labelled(torch.utils.data.Dataset):
        def __init__(self, n, s): self.ds, self.cache = SceneDataset("shapes", length=n, seed=s, size=(size, size)), {}
        def __len__(self): return len(self.ds)
        def __getitem__(self, i):
            if i not in self.cache:
                sc = self.ds[i]; self.cache[i] = {"image": sc["image"], "label": majority_category(sc)}
            return self.cache[i]
    fit(model, _Labelled(1024, seed + 5), lambda m, b: F.cross_entropy(m(b["image"]), b["label"]), out_dir=out_dir,
        valid_data=_Labelled(64, seed + 7), max_steps=num_iters, batch_size=batch_size, lr=1e-3, valid_every=100,
        checkpoint_every=100, seed=seed, progress=progress, config=dict(task="majority_category", size=size))
    return fold_batchnorm(model[0]).eval()


# %%
_sc0 = SceneConcepts(length=1, size=(64, 64))[0]
test_eq(majority_category({"categories": torch.tensor([[0, 2, 2], [1, 0, 0]])}), 2)
test_eq(majority_category({"categories": torch.zeros(2, 2, dtype=torch.long)}), 0)

# %%
#| export
DISSECT_LAYERS = ("relu1", "relu2", "relu3", "relu4", "relu5")

def dissect_networks(networks: dict,  # name -> model
                     concepts,  # concept data set
                     layers=DISSECT_LAYERS, progress: bool = True, **kwargs) -> dict:
    "`{network: {layer: Dissection}}` for several networks."
    return {n: {l: network_dissection(m, l, concepts, progress=progress, **kwargs) for l in layers} for n, m in networks.items()}

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
        ax.set_title(net); ax.set_xlabel("layer")
    axes[0, 0].set_ylabel("interpretable units"); axes[0, -1].legend(fontsize=8)
    fig.tight_layout()
    return fig


# %% [markdown]
# Same seed, same dissection: a random network dissected twice gives identical IoUs.

# %%
from motion_nbs.models import alexnet_cpfs_small

def _random_net(seed):
    torch.manual_seed(seed); return alexnet_cpfs_small().eval()

_cds = _Cached(SceneConcepts(length=4, size=(64, 64), seed=11))
_a = network_dissection(_random_net(0), "relu3", _cds)
_b = network_dissection(_random_net(0), "relu3", _cds)
test_eq(_a.iou, _b.iou); test_eq(_a.thresholds, _b.thresholds)

# %% [markdown]
# ## Dissecting CPFS, random and supervised networks
#
# With 64 scenes of 128 px this takes about a minute per network on two cores; training the
# supervised network (600 steps) and, when `make demo` has not run, the CPFS network (600 steps) take
# about five minutes each.

# %%
#| slow
from motion_nbs.cpfs import train as train_cpfs

cpfs = train_cpfs(loss="kta", out_dir="../_runs/cpfs", progress=False)["model"].backbone.eval()
torch.manual_seed(0)
random_net = alexnet_cpfs_small().eval()
supervised = train_supervised(out_dir="../_runs/dissect_supervised", progress=False)
nets = {"CPFS (KTA, shapes motion)": cpfs, "random init": random_net, "supervised (shapes categories)": supervised}

# %%
#| slow
probe = _Cached(SceneConcepts(length=64, seed=123_457, size=(128, 128)))
results = dissect_networks(nets, probe, progress=False)
for n, per in results.items():
    print(n, {l: d.counts()["interpretable"] for l, d in per.items()})
fig = plot_dissection(results)

# %% [markdown]
# Which concepts the interpretable units of relu5 detect:

# %%
#| slow
for n, per in results.items():
    top = sorted((u for u in per["relu5"].units() if u[3]), key=lambda u: -u[2])[:8]
    print(f"{n}: " + ", ".join(f"unit {k} {c} ({v:.2f})" for k, c, v, _ in top))

# %% [markdown]
# ## Activation maximisation and inversion (figs 6.1–6.3, 6.6, 6.7)
#
# The pre-image solver of chapter 05b, with the thesis' parameters, applied to the three networks:
# the first units of conv1..conv5 maximised (the thesis shows 25 per layer and 300 iterations; here 9
# units and 100 iterations at 96 px on the CPU), the first 3 units of fc6/fc7, and inversions of conv
# layers of a frame. The networks see images in [0,1] without normalisation (chapter 03).

# %%
#| slow
from motion_nbs.preimage import LayerPhi, caricature, invert, maximize

def _phi(net, layer): return LayerPhi(net, layer, mean=(0., 0., 0.), std=(1., 1., 1.))

def show_maxima(layer, units=range(9), size=96, iters=100):
    ims, titles = [], []
    for n, net in nets.items():
        r = maximize(_phi(net, layer), list(units), shape=(3, size, size), num_iters=iters, jitter=4, seed=0)
        ims += list(r.images.clamp(0, 1)); titles += [f"{n.split(' ')[0]} {layer} #{u}" for u in units]
    return show_images(ims, titles, ncols=len(list(units)), size=1.3)

for layer in ("relu1", "relu3", "relu5", "relu7"): fig = show_maxima(layer, units=range(3) if layer == "relu7" else range(9))

# %%
#| slow
frame = probe[0]["image"][None]
ims, titles = [frame[0]], ["frame"]
for n, net in nets.items():
    for layer in ("relu3", "relu5"):
        r = invert(_phi(net, layer), x0=frame, num_iters=100, seed=0)
        ims.append(r.images[0].clamp(0, 1)); titles.append(f"{n.split(' ')[0]} {layer}: err {float(r.error[0]):.2f}")
    c = caricature(_phi(net, "relu5"), frame, num_iters=100, seed=0)
    ims.append(c.images[0].clamp(0, 1)); titles.append(f"{n.split(' ')[0]} relu5 caricature")
fig = show_images(ims, titles, ncols=4, size=2.2)

# %% [markdown]
# ## Summary
#
# - `network_dissection(model, layer, concepts)` implements Bau et al.'s unit-by-unit procedure
#   (top-0.5 % threshold, bilinear upsampling, data-set IoU, 0.04 criterion) and returns a `Dissection`
#   with the IoU table, each unit's best concept and the counts per concept kind; `plot_dissection`
#   draws fig 6.8.
# - Concepts come from the renderer (`SceneConcepts`: categories, parts, textures, colours) or from a
#   Broden folder (`BrodenConcepts`).
# - The slow cells dissect the CPFS network beside a random and a label-supervised one of the same
#   architecture, and show activation maxima, inversions and caricatures with chapter 05b's solver.

# %%
#| hide
import nbdev; nbdev.nbdev_export()
