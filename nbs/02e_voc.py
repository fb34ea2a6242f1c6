# %%
#| default_exp voc

# %% [markdown]
# # PASCAL VOC
#
# > The PASCAL VOC 2007 / 2012 folders a user provides, read as classification and segmentation data sets, and the average precision of table 3.1.

# %% [markdown]
# *Default run: **7 s** on 2 CPU cores with the default parameters (measured by `make book` on 4 Dec 2026, reusing the training and caches that earlier runs left in the runs folder, `core.runs_dir`; where a first run on a new machine takes longer, the chapter says so).*

# %% [markdown]
# Table 3.1 of the thesis scores transfer on PASCAL VOC: VOC07 multi-label classification (mAP) and VOC12
# semantic segmentation (mIoU). VOC cannot be downloaded here, so this chapter reads a VOC folder the user
# provides, checks its layout first (a missing split file is named), and is tested on a tiny VOC-format
# folder the tests fabricate (`tests/test_transfer.py`). Chapter 03b fine-tunes networks on it.

# %%
#| export
import math
from pathlib import Path

import numpy as np
import torch

# torchvision's VOC readers are imported where they are used: torchvision.datasets is slow to import.

# %%
#| hide
import tempfile

from fastcore.test import test_close, test_eq, test_fail

# %% [markdown]
# ## Folders, labels and the metric
#
# torchvision reads the VOC folders (`VOCdevkit/VOC2007`, `VOCdevkit/VOC2012` under a root the user
# gives); nothing is downloaded. Layout checks come first, so a missing split file is reported by name.
#
# **VOC07 classification** (table 3.1, column 4). Twenty classes, several per image. An image is a
# *positive* for a class when it contains a non-difficult object of it, *ignored* for that class when all
# its objects of the class are marked difficult (the VOC convention), and a negative otherwise; we encode
# these as 1, −1 and 0. The score is the mean over classes of the average precision
#
# $$ \mathrm{AP} = \sum_n (R_n - R_{n-1})\, P_n $$
#
# over the distinct score thresholds, the definition of scikit-learn's `average_precision_score` (the
# tests check the two agree, ties included). The VOC07 devkit used an 11-point interpolation, which
# gives slightly different numbers.

# %%
#| export
VOC_CLASSES = ("aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow", "diningtable",
               "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor")

def average_precision(scores: torch.Tensor,  # `(N,)` confidence of each image for one class
                      labels: torch.Tensor  # `(N,)` 1 positive, 0 negative, −1 ignored
                     ) -> float:
    "Non-interpolated AP over distinct thresholds (= sklearn's `average_precision_score`); NaN without positives."
    if scores.shape != labels.shape or scores.ndim != 1:
        raise ValueError(f"scores and labels must be (N,) of one length, got {tuple(scores.shape)} and {tuple(labels.shape)}")
    keep = labels >= 0
    s, y = scores[keep].double(), (labels[keep] > 0).double()
    if y.sum() == 0: return float("nan")
    order = torch.argsort(s, descending=True, stable=True)
    s, y = s[order], y[order]
    tp, fp = y.cumsum(0), (1 - y).cumsum(0)
    last = torch.cat([s[1:] != s[:-1], torch.tensor([True])])  # the last item of each run of equal scores
    tp, fp = tp[last], fp[last]
    precision, recall = tp / (tp + fp), tp / y.sum()
    return float(((recall - torch.cat([recall.new_zeros(1), recall[:-1]])) * precision).sum())

def mean_average_precision(scores: torch.Tensor,  # `(N,C)` confidences
                           labels: torch.Tensor  # `(N,C)` 1 / 0 / −1 (ignored)
                          ) -> tuple:
    "Per-class AP and their mean over the classes with positives: (mAP, [AP_c])."
    if scores.shape != labels.shape or scores.ndim != 2:
        raise ValueError(f"scores and labels must both be (N,C), got {tuple(scores.shape)} and {tuple(labels.shape)}")
    aps = [average_precision(scores[:, c], labels[:, c]) for c in range(scores.shape[1])]
    return float(torch.tensor(aps, dtype=torch.float64).nanmean()), aps


# %%
test_close(average_precision(torch.tensor([0.9, 0.8, 0.7, 0.6]), torch.tensor([1, 0, 1, 0])), (1 + 2 / 3) / 2)
test_close(average_precision(torch.tensor([0.5, 0.5, 0.1]), torch.tensor([1, 0, 1])), 0.5 * 0.5 + 0.5 * 2 / 3)  # a tie
test_close(average_precision(torch.tensor([0.9, 0.8, 0.1]), torch.tensor([-1, 0, 1])), 0.5)                   # −1 ignored
assert math.isnan(average_precision(torch.rand(3), torch.zeros(3)))


# %%
#| exporti
def _voc_dir(root, year):
    d = Path(root).expanduser() / "VOCdevkit" / f"VOC{year}"
    if not d.is_dir(): raise FileNotFoundError(f"{d}: no VOC{year} folder; expected ROOT/VOCdevkit/VOC{year}/(JPEGImages, Annotations, ImageSets, ...)")
    return d

def _split_file(root, year, kind, image_set):
    f = _voc_dir(root, year) / "ImageSets" / kind / f"{image_set}.txt"
    if not f.is_file(): raise FileNotFoundError(f"{f}: missing VOC split file (the list of image ids of {image_set!r})")
    if not f.read_text().split(): raise ValueError(f"{f}: the split {image_set!r} is empty")
    return f

def _to_tensor(pil):
    return torch.from_numpy(np.asarray(pil.convert("RGB"), dtype=np.float32) / 255).permute(2, 0, 1).contiguous()

def _voc_targets(annotation):
    t = torch.zeros(len(VOC_CLASSES))
    for obj in annotation["annotation"].get("object", []):
        c = VOC_CLASSES.index(obj["name"].strip())
        if str(obj.get("difficult", "0")).strip() == "1":
            if t[c] == 0: t[c] = -1
        else: t[c] = 1
    return t


# %%
#| export
class VOCClassification(torch.utils.data.Dataset):
    "VOC multi-label classification: item = (image `(3,H,W)` in [0,1], target `(20,)` with 1 / 0 / −1 = positive / negative / difficult)."
    def __init__(self, root,  # the folder holding `VOCdevkit`
                 year: str = "2007", image_set: str = "trainval",  # "train", "val", "trainval" (or "test" for 2007)
                 transform=None):  # applied to the image tensor
        from torchvision.datasets import VOCDetection
        _split_file(root, year, "Main", image_set)
        self.voc, self.transform = VOCDetection(str(Path(root).expanduser()), year=year, image_set=image_set), transform
    def __len__(self): return len(self.voc)
    def __getitem__(self, i):
        image, ann = self.voc[i]
        image = _to_tensor(image)
        return (self.transform(image) if self.transform else image), _voc_targets(ann)

class VOCSegmentationData(torch.utils.data.Dataset):
    "VOC semantic segmentation: item = (image `(3,H,W)` in [0,1], labels `(H,W)` long, 0 = background, 1..20 classes, 255 = ignore)."
    def __init__(self, root, year: str = "2012", image_set: str = "train"):
        from torchvision.datasets import VOCSegmentation
        _split_file(root, year, "Segmentation", image_set)
        self.voc = VOCSegmentation(str(Path(root).expanduser()), year=year, image_set=image_set)
    def __len__(self): return len(self.voc)
    def __getitem__(self, i):
        image, mask = self.voc[i]
        return _to_tensor(image), torch.from_numpy(np.array(mask, dtype=np.int64))


# %% [markdown]
# ### A folder in VOC's layout, read back
#
# Without VOC here, the cell below writes three of the book's synthetic `shapes` frames in VOC2012's
# segmentation layout (`JPEGImages/*.jpg`, `SegmentationClass/*.png` as palette images with VOC's colour map,
# `ImageSets/Segmentation/train.txt`) and reads them back with `VOCSegmentationData`: the label maps
# come back exactly, with the palette VOC uses to draw them.

# %%
import matplotlib.pyplot as plt
from PIL import Image

from motion_nbs.core import show_images
from motion_nbs.data import render_scene


# %%
def _voc_palette():   # VOC's colour map: the bits of the class index spread over R, G and B
    pal = np.zeros((256, 3), np.uint8)
    for c in range(256):
        k = c
        for j in range(8):
            pal[c] |= np.array([(k >> 0) & 1, (k >> 1) & 1, (k >> 2) & 1], np.uint8) << (7 - j)
            k >>= 3
    return pal

with tempfile.TemporaryDirectory() as _d:
    _v = Path(_d) / "VOCdevkit" / "VOC2012"
    for sub in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"): (_v / sub).mkdir(parents=True)
    _labels = []
    for i in range(3):
        _s = render_scene("shapes", seed=i, size=(96, 128))
        Image.fromarray((_s["image"].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)).save(_v / "JPEGImages" / f"{i:06d}.jpg")
        _m = Image.fromarray(_s["categories"].numpy().astype(np.uint8), mode="P"); _m.putpalette(_voc_palette().ravel().tolist())
        _m.save(_v / "SegmentationClass" / f"{i:06d}.png"); _labels.append(_s["categories"])
    (_v / "ImageSets/Segmentation/train.txt").write_text("".join(f"{i:06d}\n" for i in range(3)))
    _ds = VOCSegmentationData(_d, "2012", "train")
    _items = [_ds[i] for i in range(len(_ds))]
test_eq(_voc_palette()[[1, 2, 15]].tolist(), [[128, 0, 0], [0, 128, 0], [192, 128, 128]])   # aeroplane, bicycle, person
test_eq(len(_items), 3)
for (_img, _lab), _want in zip(_items, _labels): test_eq(_lab, _want)   # the palette PNG keeps the class indices exactly
_pal = torch.from_numpy(_voc_palette()).float() / 255
show_images([x for img, lab in _items for x in (img, _pal[lab].permute(2, 0, 1))],
            titles=[t for i in range(3) for t in (f"{i:06d}.jpg", f"{i:06d}.png (classes)")], ncols=6, size=2.2);

# %% [markdown]
# Missing folders and split files are named:

# %%
with tempfile.TemporaryDirectory() as _d:
    test_fail(lambda: VOCClassification(_d), contains="no VOC2007 folder")
    (Path(_d) / "VOCdevkit" / "VOC2012" / "ImageSets" / "Segmentation").mkdir(parents=True)
    test_fail(lambda: VOCSegmentationData(_d), contains="missing VOC split file")
test_eq(len(VOC_CLASSES), 20)

# %%
#| hide
import nbdev; nbdev.nbdev_export()
