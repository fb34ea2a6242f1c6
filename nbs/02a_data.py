# %%
#| default_exp data

# %% [markdown]
# # Data
#
# > Synthetic moving scenes with exact optical flow, instance, part, category and texture masks.

# %% [markdown]
# *Default run: **40 s** on 2 CPU cores with the default parameters (measured by `make book` on 6 Dec 2026, reusing the training and caches that earlier runs left in the runs folder, `core.runs_dir`; where a first run on a new machine takes longer, the chapter says so).*

# %% [markdown]
# The thesis learns from motion in two kinds of data. Chapter 3 trains on 1.6M frame/flow pairs cut from
# YFCC100m videos (section 3.3.2, fig 3.3), with flow from a hand-crafted estimator. Chapter 4 starts
# with two toy sets rendered with Panda3D (section 4.4.1, fig 4.3): *single-cube*, "a single
# translating and rotating 3D textured cube ... imaged under an orthographic camera", and *multi-cube*,
# "multiple cubes under perspective projection", both "paired with the corresponding optical-flow
# field".
#
# This chapter rebuilds the toy sets without an external renderer: a few rigid primitives (boxes,
# spheres, cylinders) in front of a textured background plane are ray-cast in torch, one batched tensor
# operation per primitive kind, for both frames. Because we know every surface point's 3D motion, the
# flow is exact, not estimated, and the renderer also returns what later chapters evaluate against:
# instance, part (object face), category and texture labels and depth.

# %%
#| export
import functools
import math
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

try:
    import numba
except ImportError:  # the tensor code path does the same work without it (see "Making it fast")
    numba = None

from motion_nbs.core import atomic_save, check_int, data_dir, sample_image, tqdm
from motion_nbs.flow import flow_to_classes, warp
# real videos, flow-pair shards and paired augmentation (chapter 02d), importable from here as before
from motion_nbs.flowdata import (FlowPairDataset, PairedAugment, colour_jitter, decode_flow_pair, encode_flow_pair, flow_pair_stream,
                                 paired_centre_crop, paired_crop, paired_hflip, paired_resize, scene_cuts, split_heldout,
                                 video_flow_pairs, video_frame_pairs)

# %%
#| hide
import tempfile

from fastcore.test import test_close, test_eq, test_fail

from motion_nbs.core import sample_video, show_images
from motion_nbs.flow import add_flow_key, flow_to_rgb

# %% [markdown]
# ## Labels and textures
#
# Every pixel gets four integer labels; 0 always means the background plane.
#
# - `instances`: 1..K, the objects in the order the scene sampled them;
# - `categories`: 1 = cube, 2 = sphere, 3 = cylinder (`CATEGORIES[i]` names category `i`);
# - `parts`: one id per (instance, face), numbered consecutively over the instances: a cube has 6
#   faces, a sphere 1, a cylinder 3 (side, top, bottom), so in `single_cube` the parts are the cube's
#   faces 1..6 — the segments chapter 4 learns from the affine motion model;
# - `textures`: the index into `TEXTURES` of the texture painted at the pixel (background included).
#
# Textures are square $64\times64$ images: three procedural patterns made once with a fixed seed, and
# images that scikit-image ships (every texture is multiplied by a random colour tint per face, so
# grey ones become coloured). Objects draw from `OBJECT_TEXTURES` (checker, stripes, noise, brick,
# grass, gravel), the background plane from `BACKGROUND_TEXTURES` (brick ... rocket), never one that an
# object in the same scene uses.

# %%
#| export
OBJECT_WORLDS = {  # chapter 3's labelled worlds: objects near the camera, and the motion ambiguity each adds (see "presets")
    "objects": dict(num_objects=1, p_static=0.0, camera="small", shift=1.0, spread=0.3, depth=(3.2, 4.5)),
    "objects_static": dict(num_objects=1, p_static=0.5, camera="small", shift=0.1, spread=0.3, depth=(3.2, 4.5)),
    "objects_camera": dict(num_objects=1, p_static=0.0, camera="pan", shift=0.1, spread=0.3, depth=(3.2, 4.5)),
    "objects_k3": dict(num_objects=3, p_static=0.0, camera="small", shift=1.0, spread=0.7, depth=(4.5, 6.5)),
    "objects_ambiguous": dict(num_objects=3, p_static=0.5, camera="pan", shift=0.1, spread=0.7, depth=(4.5, 6.5)),
    "objects_anywhere": dict(num_objects=1, p_static=0.0, camera="small", shift=1.0, spread=0.7, depth=(3.2, 4.5))}
PRESETS = ("single_cube", "multi_cube", "shapes", *OBJECT_WORLDS)  # appended in this order: a preset's scenes never change
CATEGORIES = ("background", "cube", "sphere", "cylinder")
NUM_FACES = {1: 6, 2: 1, 3: 3}  # faces (parts) per category
TEXTURES = ("checker", "stripes", "noise", "brick", "grass", "gravel", "coffee", "astronaut", "chelsea", "rocket")
OBJECT_TEXTURES = (0, 1, 2, 3, 4, 5)    # indices into TEXTURES that objects use
BACKGROUND_TEXTURES = (3, 4, 5, 6, 7, 8, 9)  # and the background plane
TEXTURE_SIZE = 64


# %%
#| exporti
def _procedural_texture(name: str, size: int) -> torch.Tensor:
    "A grey `(3,size,size)` pattern; the noise is made with a fixed seed so the table never changes."
    r = (torch.arange(size, dtype=torch.float32) + 0.5) / size
    ys, xs = torch.meshgrid(r, r, indexing="ij")
    if name == "checker":
        t = ((xs * 8).floor() + (ys * 8).floor()) % 2 * 0.7 + 0.15
    elif name == "stripes":
        t = 0.5 + 0.35 * torch.sin(2 * math.pi * 5 * (xs + 0.5 * ys))
    else:  # smooth value noise at two scales
        g = torch.Generator().manual_seed(0)
        t = sum(F.interpolate(torch.rand(1, 1, n, n, generator=g), size=(size, size), mode="bicubic",
                              align_corners=False)[0, 0] * w for n, w in ((6, 0.6), (16, 0.4)))
        t = (t - t.min()) / (t.max() - t.min()) * 0.8 + 0.1
    return t.expand(3, -1, -1).contiguous()

@functools.lru_cache(maxsize=None)
def _texture_atlas(size: int = TEXTURE_SIZE) -> torch.Tensor:
    "All `TEXTURES` side by side, `(3, size, size * len(TEXTURES))`; cached, never modified."
    tiles = []
    for name in TEXTURES:
        if name in ("checker", "stripes", "noise"): tiles.append(_procedural_texture(name, size)); continue
        im = sample_image(name)
        s = min(im.shape[1:])  # central square crop, then an antialiased resize (no aliasing in the tile)
        top, left = (im.shape[1] - s) // 2, (im.shape[2] - s) // 2
        im = im[:, top:top + s, left:left + s]
        tiles.append(F.interpolate(im[None], size=(size, size), mode="bilinear", antialias=True,
                                   align_corners=False)[0].clamp(0, 1))
    return torch.cat(tiles, dim=2).contiguous()


# %%
atlas = _texture_atlas()
test_eq(atlas.shape, (3, TEXTURE_SIZE, TEXTURE_SIZE * len(TEXTURES)))
assert atlas.min() >= 0 and atlas.max() <= 1 and atlas is _texture_atlas()
assert all(atlas[:, :, i * 64:(i + 1) * 64].std() > 0.05 for i in range(len(TEXTURES)))  # all textured


# %% [markdown]
# ## A scene: cameras, poses and motions
#
# A `Scene` holds everything the renderer needs for both frames. Object 0 is the background plane; objects
# 1..K are the primitives. Each has a pose $(R_t, T_t)$ at $t \in \{0, 1\}$ mapping its local coordinates
# into the *camera's* coordinates at that time, $X = R_t p + T_t$ (camera at the origin, looking down
# $+z$, $x$ right, $y$ down). Camera motion is folded into the poses at $t=1$: if the camera moves so that
# $X' = R_c X + t_c$, every pose becomes $(R_c R_1, R_c T_1 + t_c)$.
#
# Projection of a camera point $X = (x, y, z)$ to pixel coordinates (pixel centres at integers, the same
# convention as `motion_nbs.flow.warp`):
#
# $$ \pi_\text{persp}(X) = \left(f \tfrac{x}{z} + c_x,\ f \tfrac{y}{z} + c_y\right), \qquad
#    \pi_\text{ortho}(X) = (f x + c_x,\ f y + c_y), \qquad c = \left(\tfrac{W-1}{2}, \tfrac{H-1}{2}\right).$$
#
# The exact forward flow of the surface point $p$ seen at a pixel is then
# $\pi(R_1 p + T_1) - \pi(R_0 p + T_0)$, defined at every pixel, including points occluded at $t+1$.

# %%
#| export
@dataclass
class Scene:
    "A rigid scene at two times. Index 0 of the per-object tensors is the background plane."
    size: tuple               # (H, W) in pixels
    ortho: bool               # orthographic (True) or perspective camera
    focal: float              # pixels per unit at depth 1 (perspective) or pixels per unit (orthographic)
    kinds: torch.Tensor       # (K+1,) long: 0 plane, then CATEGORIES ids
    dims: torch.Tensor        # (K+1,3): box half extents; sphere (r, r, r); cylinder (r, r, half height); plane (tile, tile, 0)
    rotations: torch.Tensor   # (2,K+1,3,3) local → camera rotation at t and t+1
    translations: torch.Tensor  # (2,K+1,3) local origin in camera coordinates at t and t+1
    textures: torch.Tensor    # (K+1,) long indices into TEXTURES
    tints: torch.Tensor       # (K+1,6,3) colour multiplier per face
    light: torch.Tensor       # (2,3) unit direction towards the light, in camera coordinates at t and t+1


# %% [markdown]
# ## Ray casting
#
# Every pixel's ray $o + s\,d$ (perspective: $o = 0$, $d = ((x-c_x)/f, (y-c_y)/f, 1)$; orthographic:
# $o = ((x-c_x)/f, (y-c_y)/f, 0)$, $d = (0,0,1)$) is moved into each object's local frame,
# $o_\ell = R^\top(o - T)$, $d_\ell = R^\top d$, where the primitives are simple: an axis-aligned box
# $|p_i| \le h_i$ (slab test), a sphere $|p| = r$, a cylinder $p_x^2 + p_y^2 = r^2, |p_z| \le h$ with
# two caps, and the plane $p_z = 0$. Since $d_z = 1$, the ray parameter $s$ of the nearest hit is the
# depth. All objects of one kind are intersected in one batched operation over `(objects, pixels)`.

# %%
#| exporti
_INF = float("inf")

def _dot(a, b):
    "Dot product over the last axis (of size 3); explicit, as small reductions are slow in torch."
    return a[..., 0] * b[..., 0] + a[..., 1] * b[..., 1] + a[..., 2] * b[..., 2]

@functools.lru_cache(maxsize=16)
def _pixel_rays(h: int, w: int, ortho: bool, focal: float):
    "Pixel coordinates `(N,2)`, ray origins `(N,3)` or `(1,3)` and directions `(N,3)`, row-major; cached, never modified."
    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32), indexing="ij")
    pix = torch.stack([xs.flatten(), ys.flatten()], -1)
    px = (pix - pix.new_tensor([(w - 1) / 2, (h - 1) / 2])) / focal
    ones, zeros = torch.ones(h * w, 1), torch.zeros(h * w, 1)
    if ortho: return pix, torch.cat([px, zeros], -1), torch.cat([zeros, zeros, ones], -1)
    return pix, torch.zeros(1, 3), torch.cat([px, ones], -1)  # one origin, broadcast over the pixels

def _rays(scene: Scene):
    return _pixel_rays(*scene.size, scene.ortho, scene.focal)

def _hit_box(o, d, h):
    "Slab test. o, d `(M,N,3)`, h `(M,3)` → depth `(M,N)` (inf = miss) and face `(M,N)` = 2·axis + (enters at +h)."
    inv = 1.0 / torch.where(d.abs() < 1e-12, torch.full_like(d, 1e-12), d)
    t1, t2 = (-h[:, None] - o) * inv, (h[:, None] - o) * inv
    near, axis = torch.minimum(t1, t2).max(-1)
    far = torch.maximum(t1, t2).min(-1).values
    face = 2 * axis + (d.gather(-1, axis[..., None])[..., 0] < 0).long()
    return torch.where((near <= far) & (near > 0), near, _INF), face

def _hit_sphere(o, d, r):
    "o, d `(M,N,3)`, r `(M,)` → depth `(M,N)` (inf = miss), face 0."
    a, b, c = _dot(d, d), _dot(o, d), _dot(o, o) - r[:, None] ** 2
    disc = b * b - a * c
    t = (-b - disc.clamp(min=0).sqrt()) / a
    return torch.where((disc >= 0) & (t > 0), t, _INF), torch.zeros_like(t, dtype=torch.long)

def _hit_cylinder(o, d, r, h):
    "Cylinder along local z. → depth `(M,N)` and face: 0 side, 1 cap at +h, 2 cap at −h."
    r, h = r[:, None], h[:, None]
    a = d[..., 0] ** 2 + d[..., 1] ** 2
    b = o[..., 0] * d[..., 0] + o[..., 1] * d[..., 1]
    c = o[..., 0] ** 2 + o[..., 1] ** 2 - r ** 2
    disc = b * b - a * c
    ts = (-b - disc.clamp(min=0).sqrt()) / a.clamp(min=1e-12)
    side = (disc >= 0) & (ts > 0) & ((o[..., 2] + ts * d[..., 2]).abs() <= h)
    dz = torch.where(d[..., 2].abs() < 1e-12, torch.full_like(a, 1e-12), d[..., 2])
    enter_top = dz < 0  # moving towards −z, the ray meets the +h cap first
    tc = (torch.where(enter_top, h, -h) - o[..., 2]) / dz
    pc = o + tc[..., None] * d
    cap = (tc > 0) & (pc[..., 0] ** 2 + pc[..., 1] ** 2 <= r ** 2)
    ts, tc = torch.where(side, ts, _INF), torch.where(cap, tc, _INF)
    face = torch.where(ts <= tc, 0, torch.where(enter_top, 1, 2))
    return torch.minimum(ts, tc), face

def _hit_plane(o, d):
    "The plane p_z = 0. → depth `(M,N)`, face 0."
    dz = torch.where(d[..., 2].abs() < 1e-12, torch.full_like(d[..., 2], 1e-12), d[..., 2])
    t = -o[..., 2] / dz
    return torch.where(t > 0, t, _INF), torch.zeros_like(t, dtype=torch.long)


# %% [markdown]
# Exact values on hand-made rays: a unit box hit head-on at depth 4 through its $-z$ face (face 4), a
# sphere of radius 1 at depth 4, a cylinder seen from the side (face 0) and from above (its $+z$ cap,
# reached by a ray travelling towards $-z$), and misses.

# %%
o = torch.tensor([[[0., 0, -5], [3, 0, -5]]])
d = torch.tensor([[[0., 0, 1], [0, 0, 1]]])
t, f = _hit_box(o, d, torch.tensor([[1., 1, 1]]))
test_eq(t, torch.tensor([[4., _INF]])); test_eq(f[0, 0], 4)
t, f = _hit_box(-o, -d, torch.tensor([[1., 1, 1]]))
test_eq(t[0, 0], 4.); test_eq(f[0, 0], 5)                      # from +z: the +z face
test_eq(_hit_sphere(o, d, torch.tensor([1.]))[0], torch.tensor([[4., _INF]]))
t, f = _hit_cylinder(o, d, torch.tensor([1.]), torch.tensor([2.]))
test_eq(t, torch.tensor([[3., _INF]])); test_eq(f[0, 0], 2)     # along +z: the −h cap
t, f = _hit_cylinder(torch.tensor([[[-5., 0, 0]]]), torch.tensor([[[1., 0, 0]]]), torch.tensor([1.]), torch.tensor([2.]))
test_eq(t, torch.tensor([[4.]])); test_eq(f, torch.tensor([[0]]))
test_eq(_hit_plane(o, d)[0], torch.tensor([[5., 5.]]))
test_eq(_hit_plane(o, -d)[0], torch.tensor([[_INF, _INF]]))


# %% [markdown]
# ## Surfaces: texture coordinates, normals, shading
#
# At the hit point $p$ (local coordinates) each kind defines texture coordinates $(u, v)$ and a local
# normal: the face's two in-plane coordinates on a box, longitude/latitude on a sphere, angle/height
# on a cylinder's side and $(x, y)$ on its caps and on the plane. Textures repeat mirrored (a triangle
# wave of period 2), so there are no seams, and are looked up bilinearly in the cached atlas with
# `grid_sample`. Colours are Lambertian: albedo $\times$ (0.5 + 0.5 max(0, n·l)) for a directional light
# fixed in the world — so a rotating object's shading changes slowly, as in real video.

# %%
#| exporti
def _surface(kind: int, face, p, dims):
    "Texture coordinates `(N,2)` and local unit normals `(N,3)` at local hit points p `(N,3)` of one kind."
    x, y, z = p.unbind(-1)
    if kind == 0:  # the plane faces −z, towards the camera
        return torch.stack([x, y], -1) / dims[:, :1], p.new_tensor([0.0, 0.0, -1.0]).expand(len(p), 3)
    if kind == 1:  # box: the face's axis gives the normal, the two other coordinates the texture
        axis = face // 2
        n = F.one_hot(axis, 3).to(p.dtype) * torch.where(face % 2 == 1, 1.0, -1.0)[:, None]
        q = p / (2 * dims) + 0.5
        return torch.stack([q.gather(1, ((axis + 1) % 3)[:, None])[:, 0], q.gather(1, ((axis + 2) % 3)[:, None])[:, 0]], -1), n
    r = dims[:, 0]
    ang = torch.atan2(y, x) / math.pi + 1.0  # angle around z, ×2 so the mirrored repeat closes the seam
    if kind == 2: return torch.stack([ang, torch.acos((z / r).clamp(-1, 1)) / math.pi], -1), p / r[:, None]
    side = (face == 0)[:, None]
    zero, one = torch.zeros_like(x), torch.ones_like(x)
    n = torch.where(side, torch.stack([x / r, y / r, zero], -1), torch.stack([zero, zero, torch.where(face == 1, one, -one)], -1))
    uv = torch.where(side, torch.stack([ang, z / (2 * dims[:, 2]) + 0.5], -1), torch.stack([x / (2 * r), y / (2 * r)], -1) + 0.5)
    return uv, n

def _sample_textures(tex, uv):
    "Bilinear look-up of texture `tex` `(N,)` at coordinates uv `(N,2)` (mirrored repeat) → `(N,3)`."
    atlas = _texture_atlas()
    s, nt = atlas.shape[1], len(TEXTURES)
    m = 1 - ((uv % 2) - 1).abs()  # triangle wave: mirrored repeat, continuous everywhere
    px = tex.float() * s + 0.5 + m[:, 0] * (s - 1)
    py = 0.5 + m[:, 1] * (s - 1)
    grid = torch.stack([px * (2 / (s * nt)) - 1, py * (2 / s) - 1], -1)
    return F.grid_sample(atlas[None], grid[None, None], mode="bilinear", align_corners=False)[0, :, 0].T


# %%
p = torch.tensor([[0., 0, -1], [1, 0, 0], [0.5, 0, 0.25]])
dims = torch.tensor([[1., 1, 1], [1, 1, 1], [0.5, 0.5, 0.5]])
uv, n = zip(*[_surface(k, torch.tensor([f]), p[i:i + 1], dims[i:i + 1]) for i, (k, f) in enumerate([(1, 4), (2, 0), (3, 0)])])
test_close(torch.cat(n), torch.tensor([[0., 0, -1], [1, 0, 0], [1, 0, 0]]))
test_close(torch.cat(uv), torch.tensor([[0.5, 0.5], [1.0, 0.5], [1.0, 0.75]]))
test_close(_sample_textures(torch.tensor([0]), torch.tensor([[0.01, 0.01]])), _texture_atlas()[:, 0, 0][None], eps=0.05)
test_close(_sample_textures(torch.tensor([3, 3]), torch.tensor([[0.3, 0.7], [1.7, -0.7]]))[0],
           _sample_textures(torch.tensor([3]), torch.tensor([[0.3, 0.7]]))[0])  # mirrored repeat


# %% [markdown]
# ## Rendering one frame, and the exact flow
#
# `render_frame` casts all rays against all objects, keeps the nearest hit per pixel and shades it. With
# `flow=True` it also maps the seen local point $p$ through the other time's pose and projects it.

# %%
#| exporti
def _project(scene: Scene, X):
    "Camera points `(N,3)` → pixel coordinates `(N,2)`."
    h, w = scene.size
    c = X.new_tensor([(w - 1) / 2, (h - 1) / 2])
    if scene.ortho: return X[:, :2] * scene.focal + c
    return X[:, :2] / X[:, 2:].clamp(min=1e-6) * scene.focal + c

def _bounding_radius(kinds, dims):
    "Radius `(K,)` of a sphere around each object (local origin at its centre)."
    return torch.where(kinds == 1, dims.norm(dim=-1), torch.where(kinds == 2, dims[:, 0], dims[:, [0, 2]].norm(dim=-1)))

def _candidates(scene: Scene, time: int, pix):
    "Indices of the pixels whose ray may hit an object: inside some object's projected bounding circle."
    T, rb = scene.translations[time, 1:], _bounding_radius(scene.kinds[1:], scene.dims[1:])
    c = _project(scene, T)
    if scene.ortho: rad = scene.focal * rb + 1
    else:  # |π(T + rb·u) − π(T)| ≤ f·rb·|T| / (T_z (T_z − rb)) for unit u (Cauchy–Schwarz), if T_z > rb
        if (T[:, 2] <= rb).any(): return torch.arange(len(pix))
        rad = scene.focal * rb * T.norm(dim=-1) / (T[:, 2] * (T[:, 2] - rb)) + 1
    dx, dy = pix[:, 0] - c[:, :1], pix[:, 1] - c[:, 1:]  # (K,N) each
    inside = dx * dx + dy * dy <= rad[:, None] ** 2
    return inside.any(0).nonzero()[:, 0]

def _cast(scene: Scene, time: int, cull: bool = True):
    "Nearest hit per pixel at `time`: object index, face, depth `(N,)` and local point `(N,3)`."
    R, T = scene.rotations[time], scene.translations[time]
    pix, o, d = _rays(scene)
    ol, dl = (o - T[0]) @ R[0], d @ R[0]  # the plane, object 0, for every pixel
    depth, _ = _hit_plane(ol[None], dl[None])
    depth = depth[0]
    if not torch.isfinite(depth).all(): raise ValueError("some rays miss the background plane; it must fill the view")
    p = ol + depth[:, None] * dl
    idx = torch.zeros(len(pix), dtype=torch.long)
    face = torch.zeros(len(pix), dtype=torch.long)
    if len(scene.kinds) == 1: return idx, face, depth, p
    cand = _candidates(scene, time, pix) if cull else torch.arange(len(pix))
    kinds, dims = scene.kinds[1:], scene.dims[1:]
    oc = o if len(o) == 1 else o.index_select(0, cand)
    ol = (oc[None] - T[1:, None]) @ R[1:]  # Rᵀ(o − T) for each object, (K,N',3) or (K,1,3) for one origin
    dl = (d.index_select(0, cand) @ R[1:].transpose(0, 1).flatten(1)).view(len(cand), -1, 3).transpose(0, 1)
    ol = ol.expand_as(dl)
    t, f = torch.full(ol.shape[:2], _INF), torch.zeros(ol.shape[:2], dtype=torch.long)
    for kind in kinds.unique().tolist():  # one batched call per kind
        m = (kinds == kind).nonzero()[:, 0]
        hit = {1: lambda o, d: _hit_box(o, d, dims[m]), 2: lambda o, d: _hit_sphere(o, d, dims[m, 0]),
               3: lambda o, d: _hit_cylinder(o, d, dims[m, 0], dims[m, 2])}[kind]
        if len(m) == len(kinds): t, f = hit(ol, dl)
        else: t[m], f[m] = hit(ol[m], dl[m])
    t, k = t.min(0)
    hit = t < depth.index_select(0, cand)
    k3 = k[None, :, None].expand(1, -1, 3)
    depth[cand] = torch.where(hit, t, depth.index_select(0, cand))
    idx[cand] = torch.where(hit, k + 1, 0)
    face[cand] = torch.where(hit, f.gather(0, k[None])[0], 0)
    p[cand] = torch.where(hit[:, None], ol.gather(0, k3)[0] + t[:, None] * dl.gather(0, k3)[0], p.index_select(0, cand))
    return idx, face, depth, p

def _transform(scene: Scene, time: int, idx, p):
    "Local points p `(N,3)` of objects idx `(N,)` in camera coordinates at `time`: R p + T."
    R, T = scene.rotations[time], scene.translations[time]
    X = (p @ R.transpose(1, 2).transpose(0, 1).flatten(1)).view(len(p), -1, 3) + T  # every object's pose, (N,M,3)
    return X.gather(1, idx[:, None, None].expand(-1, 1, 3))[:, 0]

def _face_offsets(kinds):
    "Global part id of face 0 of each object: consecutive over instances, background 0."
    nf = torch.tensor([0] + [NUM_FACES[int(k)] for k in kinds[1:]])
    return torch.cumsum(nf, 0) - nf + 1

def _geometry(scene: Scene, time: int, flow: bool = False):
    """What a frame's pixels see: object index and face `(N,)` long, depth `(N,)`, texture coordinates `(N,2)`,
    local normals `(N,3)` and, with `flow=True`, the seen points in camera coordinates at t and t+1 (else None)."""
    idx, face, depth, p = _cast(scene, time)
    kind, dims = scene.kinds.index_select(0, idx), scene.dims.index_select(0, idx)
    uv = n_local = None
    for k in scene.kinds.unique().tolist():  # each kind's formulas on every pixel, kept where that kind was hit
        uv_k, n_k = _surface(k, face, p, dims)
        if uv is None: uv, n_local = uv_k, n_k
        else: uv, n_local = torch.where((kind == k)[:, None], uv_k, uv), torch.where((kind == k)[:, None], n_k, n_local)
    return idx, face, depth, uv, n_local, (tuple(_transform(scene, t, idx, p) for t in (0, 1)) if flow else None)

_FAST_GEOMETRY = None  # a compiled `_geometry` with the same results, set in "Making it fast" below when numba is present


# %%
#| export
def render_frame(scene: Scene,  # the scene
                 time: int = 0,  # 0 renders the first frame, 1 the second
                 flow: bool = False  # also return the exact flow to the other frame (time 0 only)
                ) -> dict:
    """Ray-cast one frame of `scene`: image, labels, depth (and with `flow=True` the forward flow).

    Shape: image `(3,H,W)`; flow `(2,H,W)`; instances, parts, categories, textures `(H,W)` long; depth `(H,W)`."""
    if time not in (0, 1): raise ValueError(f"time must be 0 or 1, got {time!r}")
    if flow and time != 0: raise ValueError("the flow is forward, from time 0 to time 1: use time=0")
    h, w = scene.size
    idx, face, depth, uv, n_local, X = (_FAST_GEOMETRY or _geometry)(scene, time, flow)
    # one look-up of the per-object table: kind, texture, first part id, light direction in local coordinates
    light_local = (scene.light[time][None, None] @ scene.rotations[time])[:, 0]  # Rᵀl per object
    table = torch.cat([scene.kinds[:, None].float(), scene.textures[:, None].float(),
                       _face_offsets(scene.kinds)[:, None].float(), light_local], 1).index_select(0, idx)
    kind, tex, first_part = table[:, :3].long().unbind(1)
    lambert = _dot(n_local, table[:, 3:6]).clamp(min=0)
    albedo = _sample_textures(tex, uv) * scene.tints.flatten(0, 1).index_select(0, idx * 6 + face)
    image = (albedo * (0.5 + 0.5 * lambert)[:, None]).clamp(0, 1)
    out = dict(image=image.T.reshape(3, h, w), instances=idx.reshape(h, w),
               parts=torch.where(idx > 0, first_part + face, 0).reshape(h, w),
               categories=kind.reshape(h, w), textures=tex.reshape(h, w), depth=depth.reshape(h, w))
    if flow:
        X0, X1 = X
        out["flow"] = (_project(scene, X1) - _project(scene, X0)).T.reshape(2, h, w)
        out["_next_points"] = X1
    return out


# %% [markdown]
# A hand-built scene checks the projection and the flow exactly: a cube of half-size 1 at depth 5 in front
# of a plane at depth 10, perspective with $f = 16$ on a $32\times32$ image. The cube's front face
# ($-z$, face 4) spans $f \cdot 1/4 = 4$ px either side of the centre; moving the cube by $0.25$ along
# $x$ moves that face by $f \cdot 0.25 / 4 = 1$ px, while the static plane's flow is exactly zero.

# %%
def _toy_scene(ortho=False, shift=(0.25, 0.0, 0.0)):
    eye = torch.eye(3).expand(2, 2, 3, 3).clone()
    T = torch.tensor([[[0., 0, 10], [0, 0, 5]]]).repeat(2, 1, 1)
    T[1, 1] += torch.tensor(shift)
    return Scene(size=(32, 32), ortho=ortho, focal=16.0 if not ortho else 4.0, kinds=torch.tensor([0, 1]),
                 dims=torch.tensor([[4., 4, 0], [1, 1, 1]]), rotations=eye, translations=T,
                 textures=torch.tensor([4, 0]), tints=torch.ones(2, 6, 3), light=torch.tensor([[0., 0, -1]] * 2))

r = render_frame(_toy_scene(), flow=True)
test_eq(r["instances"][16, 16], 1); test_eq(r["parts"][16, 16], 5); test_eq(r["categories"][16, 16], 1)
test_eq(r["instances"][0, 0], 0); test_eq(r["parts"][0, 0], 0)
test_close(r["depth"][16, 16], 4.0); test_close(r["depth"][0, 0], 10.0)
test_eq(r["instances"][16].nonzero()[:, 0].tolist(), list(range(12, 20)))  # x in [15.5 − 4, 15.5 + 4]
test_close(r["flow"][:, r["instances"] == 1], torch.tensor([[1.0], [0.0]]).expand(2, 64), eps=1e-5)
test_eq(r["flow"][:, r["instances"] == 0], torch.zeros(2, 32 * 32 - 64))     # exactly zero
r = render_frame(_toy_scene(ortho=True), flow=True)                             # orthographic: 4 px per unit
test_eq(int((r["instances"] == 1).sum()), 64)
test_close(r["flow"][:, r["instances"] == 1], torch.tensor([[1.0], [0.0]]).expand(2, 64), eps=1e-5)
test_fail(lambda: render_frame(_toy_scene(), time=1, flow=True), contains="use time=0")


# %% [markdown]
# ## Visibility at $t+1$
#
# A surface point seen at $t$ is *visible* at $t+1$ if it projects inside the image and is the nearest
# surface there: its depth at $t+1$ agrees with the $t+1$ depth buffer at the (nearest) pixel it lands
# on. Only at these pixels does the second frame say anything about the first — the photometric check
# below and the occlusion-aware losses of later chapters use this mask.

# %%
#| exporti
def _visible_next(scene: Scene, X1, depth1, rel_tol: float = 0.01):
    "Bool `(N,)`: the point X1 `(N,3)` (camera coordinates at t+1) is in the image and unoccluded at t+1."
    h, w = scene.size
    xy = _project(scene, X1).round().long()
    inside = (xy[:, 0] >= 0) & (xy[:, 0] < w) & (xy[:, 1] >= 0) & (xy[:, 1] < h)
    j = xy[:, 1].clamp(0, h - 1) * w + xy[:, 0].clamp(0, w - 1)
    z = X1[:, 2]
    return inside & ((depth1.flatten()[j] - z).abs() <= rel_tol * z)


# %% [markdown]
# ## Random scenes: the presets
#
# `sample_scene` draws a scene from a preset with NumPy's `default_rng(seed)` (never global state), so a
# seed gives the same scene on every machine:
#
# - `"single_cube"`: one textured cube (half-size 0.55–0.8) under an orthographic camera (4 units
#   across the image) in front of a static textured plane; it translates 1–8 px and rotates 6–15° per
#   frame about a random axis (at 128 px). Every face gets its own tint, as the faces are what chapter 4
#   segments. The thesis does not give its cube's speeds; the rotation is fast enough that the affine
#   motions of adjacent faces differ by more than a pixel at the chapter's crop sizes (with 2–5° they
#   differ by a fraction of a pixel, and the affine S3 loss gains almost nothing by splitting faces:
#   see `04_s3_train`).
# - `"multi_cube"`: 2–4 cubes at depths 5–8.5 under a perspective camera (50° horizontal field of view),
#   each moving independently (1–10 px, 1–4°, a little in depth), with a small camera motion (≤ 0.15 units,
#   ≤ 0.8°) over a fronto-parallel textured plane at depth 12; cubes occlude each other.
# - `"shapes"`: as `multi_cube`, with each object a cube, sphere or cylinder (equally likely).
# - `"objects"`: one object per scene, a cube, sphere or cylinder (equally likely), at depth 3.2–4.5 (a
#   third to a half of the view across) and near the centre of the view, moving exactly like the objects of `shapes` (the motion does not depend
#   on the category). It is the labelled world of chapter 3's transfer experiment: a frame's category is
#   the category of its one object, and every pixel's category is known.
#
# The `objects` world has almost none of the ambiguity that the thesis' argument for CPFS rests on
# (sections 3.1, 3.3.6): its object always moves, and the camera barely does, so the flow's magnitude alone
# says what is object and what is background. Its variants (`OBJECT_WORLDS`) add that ambiguity one
# ingredient at a time, and chapter `03_cpfs_ambiguity` measures how much each adds
# (`manipulation_statistics`, below):
#
# - `"objects_static"`: with probability `p_static` = 0.5 an object's own motion is zero (no translation, no
#   rotation) while the camera still moves: objects that *can* move often don't. The camera's translation is
#   a tenth of `objects`' (≤ 0.015 units; its rotation is unchanged): a camera translating 0.15 units moves an
#   object at depth 3.5 about 4 px more than the plane at depth 12, and that parallax alone would tell the
#   object from the background (measured: with the full translation only 4 % of frames had a still object).
# - `"objects_camera"`: the camera pans as fast as the objects move: a rotation about a random axis in the
#   image plane whose image speed is drawn from the objects' range (1–10 px per frame at 128 px), on top of
#   a tenth of `objects`' translation. The flow's magnitude no longer says what is an object.
# - `"objects_k3"`: three independently moving objects (each a cube, sphere or cylinder) at depth 4.5–6.5,
#   placed over most of the view; every pixel's category is known, and a frame's label is its dominant
#   (largest) object's category.
# - `"objects_ambiguous"`: all three at once (three objects, each static with probability 0.5, the panning
#   camera).
# - `"objects_anywhere"`: `objects` with the object placed as widely as in `shapes` (centres over most of
#   the frame, partly cut by the border), for the saliency experiments of chapters 6 and 7, where a centred
#   object makes a centre prior unbeatable.
#
# Objects are placed so their bounding spheres do not overlap (rejection sampling with a bounded number
# of tries). Initial orientations are uniform on SO(3).

# %%
#| exporti
_FOV = math.radians(50)
_TAN = math.tan(_FOV / 2)

def _rotation(axis_angle) -> np.ndarray:
    "Rodrigues' formula, float64 `(3,3)`."
    v = np.asarray(axis_angle, np.float64)
    a = np.linalg.norm(v)
    if a == 0: return np.eye(3)
    k = v / a
    K = np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
    return np.eye(3) + math.sin(a) * K + (1 - math.cos(a)) * K @ K

def _random_rotation(rng) -> np.ndarray:
    "Uniform on SO(3): a normalised Gaussian quaternion."
    w, x, y, z = (q := rng.normal(size=4)) / np.linalg.norm(q)
    return np.array([[1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
                     [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
                     [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)]])

def _unit(rng) -> np.ndarray:
    v = rng.normal(size=3)
    return v / np.linalg.norm(v)

def _check_size(size):
    ok = (isinstance(size, (tuple, list)) and len(size) == 2
          and all(isinstance(s, (int, np.integer)) and not isinstance(s, bool) for s in size))
    if not ok or not all(16 <= s <= 4096 for s in size):
        raise ValueError(f"size must be (H, W), two ints in [16, 4096], got {size!r}")
    return (int(size[0]), int(size[1]))

def _check_seed(seed):
    if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    return int(seed)

def _check_preset(preset):
    if preset not in PRESETS: raise ValueError(f"unknown preset {preset!r}; valid presets: {', '.join(PRESETS)}")


# %%
#| export
def sample_scene(preset: str,  # one of `PRESETS`
                 seed: int = 0,  # the scene is a function of (preset, seed, size)
                 size=(128, 128),  # (H, W) of the rendered frames
                 camera_motion=None  # None: the preset's default (off for single_cube); False: static camera
                ) -> Scene:
    "Draw a random `Scene` from a preset (see the list above)."
    _check_preset(preset)
    seed, (h, w) = _check_seed(seed), _check_size(size)
    rng = np.random.default_rng([seed, PRESETS.index(preset)])
    ortho = preset == "single_cube"
    if camera_motion is not None and not isinstance(camera_motion, bool):
        raise ValueError(f"camera_motion must be None (the preset's default), True or False, got {camera_motion!r}")
    if camera_motion is None: camera_motion = not ortho
    focal = w / 4.0 if ortho else (w / 2) / _TAN
    px = 4.0 / 128 if ortho else _TAN / 64  # world units per pixel of motion (at depth 1 if perspective) at 128 px width
    half_w, half_h = (2.0, 2.0 * h / w) if ortho else (_TAN, _TAN * h / w)  # view half extent (per unit depth)
    world = OBJECT_WORLDS.get(preset)
    k = 1 if ortho else world["num_objects"] if world else int(rng.integers(2, 5))
    kinds, dims, R0, T0, R1, T1 = [0], [], [], [], [], []
    bg_depth = 10.0 if ortho else 12.0
    for i in range(k):
        kind = int(rng.integers(1, 4)) if preset == "shapes" or world else 1
        if kind == 1: dim = np.full(3, rng.uniform(0.55, 0.8) if ortho else rng.uniform(0.45, 0.8))
        elif kind == 2: dim = np.full(3, rng.uniform(0.5, 0.85))
        else: dim = np.array([*[rng.uniform(0.35, 0.6)] * 2, rng.uniform(0.5, 0.9)])
        radius = float(np.linalg.norm(dim))
        for _ in range(20):  # place without overlapping the objects so far (bounded tries: deterministic)
            z = 5.0 if ortho else rng.uniform(*world["depth"]) if world else rng.uniform(5.0, 8.5)
            scale = 0.35 if ortho else (world["spread"] if world else 0.7) * z
            T = np.array([rng.uniform(-1, 1) * half_w * scale, rng.uniform(-1, 1) * half_h * scale, z])
            if all(np.linalg.norm(T - t) > radius + r for t, r in T0): break
        R = _random_rotation(rng)
        speed = rng.uniform(1, 8 if ortho else 10) * px * (1 if ortho else z)
        direction = rng.uniform(0, 2 * math.pi)
        dT = np.array([math.cos(direction) * speed, math.sin(direction) * speed, 0 if ortho else rng.uniform(-0.15, 0.15)])
        dR = _rotation(_unit(rng) * math.radians(rng.uniform(6, 15) if ortho else rng.uniform(1, 4)))
        if world and world["p_static"] > 0 and rng.random() < world["p_static"]: dT, dR = np.zeros(3), np.eye(3)  # it keeps still
        kinds.append(kind); dims.append(dim); R0.append(R); T0.append((T, radius)); R1.append(dR @ R); T1.append(T + dT)
    plane_R, plane_T = np.eye(3), np.array([0.0, 0.0, bg_depth])
    tile = 64 * px * (1 if ortho else bg_depth) * rng.uniform(1.0, 1.5)  # one texture tile ≈ 64–96 px
    rot0 = np.stack([plane_R, *R0]); tr0 = np.stack([plane_T, *[t for t, _ in T0]])
    rot1 = np.stack([plane_R, *R1]); tr1 = np.stack([plane_T, *T1])
    light0 = np.array([-0.4, -0.6, -1.0]) / np.linalg.norm([-0.4, -0.6, -1.0])
    light1 = light0
    if camera_motion:
        Rc = _rotation(_unit(rng) * math.radians(rng.uniform(0, 0.8)))
        tc = np.array([rng.uniform(-0.15, 0.15), rng.uniform(-0.1, 0.1), rng.uniform(-0.1, 0.1)])
        if world: tc = tc * world["shift"]  # camera translation makes parallax: a still object still moves against the plane
        if world and world["camera"] == "pan":  # a pan as fast as the objects: 1-10 px of image motion at 128 px
            a = rng.uniform(0, 2 * math.pi)
            Rc = _rotation(np.array([math.cos(a), math.sin(a), 0.0]) * rng.uniform(1, 10) * px) @ Rc
        rot1, tr1, light1 = Rc @ rot1, tr1 @ Rc.T + tc, Rc @ light0
    obj_tex = rng.choice(OBJECT_TEXTURES, size=k)
    bg_tex = rng.choice([t for t in BACKGROUND_TEXTURES if t not in obj_tex])
    tints = rng.uniform(0.35, 1.0, size=(k + 1, 6, 3))
    tints[0] = rng.uniform(0.6, 1.0, size=3)  # the plane: one tint
    f32 = lambda a: torch.from_numpy(np.asarray(a, np.float64)).float()
    return Scene(size=(h, w), ortho=ortho, focal=float(focal), kinds=torch.tensor(kinds),
                 dims=f32(np.stack([[tile, tile, 0.0], *dims])),
                 rotations=f32(np.stack([rot0, rot1])), translations=f32(np.stack([tr0, tr1])),
                 textures=torch.tensor([int(bg_tex), *obj_tex.tolist()]), tints=f32(tints), light=f32(np.stack([light0, light1])))


# %%
s = sample_scene("multi_cube", seed=3)
assert 3 <= len(s.kinds) <= 5 and s.kinds[0] == 0 and (s.kinds[1:] == 1).all()
test_eq(sample_scene("single_cube", 5).translations, sample_scene("single_cube", 5).translations)
test_eq(len(sample_scene("single_cube", 5).kinds), 2)
assert not torch.equal(sample_scene("shapes", 1).translations, sample_scene("shapes", 2).translations)
R = sample_scene("shapes", 7).rotations
test_close(R @ R.transpose(-1, -2), torch.eye(3).expand_as(R), eps=1e-5)   # rotations are orthonormal
test_fail(lambda: sample_scene("cubes"), contains="valid presets: single_cube, multi_cube, shapes, objects")
_objs = [sample_scene("objects", i) for i in range(300)]
assert all(len(o.kinds) == 2 for o in _objs)                                   # one object per scene
test_eq(sorted(set(int(o.kinds[1]) for o in _objs)), [1, 2, 3])
assert max(torch.bincount(torch.tensor([int(o.kinds[1]) for o in _objs]))) / 300 < 0.4   # balanced categories
test_fail(lambda: sample_scene("shapes", size=(8, 128)), contains="size must be (H, W)")
test_fail(lambda: sample_scene("shapes", size=128), contains="size must be (H, W)")
test_fail(lambda: sample_scene("shapes", seed=-1), contains="non-negative int")
test_fail(lambda: sample_scene("shapes", camera_motion="yes"), contains="camera_motion must be")

# %% [markdown]
# Rays are only tested against objects inside their projected bounding circles; that culling changes
# nothing:

# %%
for preset, seed in [("single_cube", 0), ("multi_cube", 1), ("shapes", 2), ("shapes", 3)]:
    sc = sample_scene(preset, seed, size=(40, 56))
    for when in (0, 1):
        for a, b in zip(_cast(sc, when), _cast(sc, when, cull=False)): test_eq(a, b)


# %% [markdown]
# ## `render_scene`: a frame pair with exact flow and labels

# %%
#| export
def render_scene(preset: str,  # one of `PRESETS`: "single_cube", "multi_cube", "shapes"
                 seed: int = 0,  # same (preset, seed, size) → identical tensors
                 size=(128, 128),  # (H, W)
                 camera_motion=None  # None: preset default; False: static camera (background flow exactly 0)
                ) -> dict:
    """Render a random scene of `preset` at t and t+1 with its exact forward flow and labels of frame t.

    Shape: image, next_image `(3,H,W)` float32 in [0,1]; flow `(2,H,W)` float32 px (x, y);
    instances, parts, categories, textures `(H,W)` int64 (0 = background); depth `(H,W)` float32;
    visible `(H,W)` bool (the point seen at t is in the image and unoccluded at t+1)."""
    return render_pair(sample_scene(preset, seed, size, camera_motion))

def render_pair(scene: Scene  # e.g. from `sample_scene`
               ) -> dict:
    "Render both frames of `scene`; the keys of `render_scene`."
    out = render_frame(scene, 0, flow=True)
    nxt = render_frame(scene, 1)
    out["visible"] = _visible_next(scene, out.pop("_next_points"), nxt["depth"]).reshape(scene.size)
    out["next_image"] = nxt["image"]
    return out


# %%
r = render_scene("multi_cube", seed=0, size=(48, 64))
test_eq(sorted(r), ["categories", "depth", "flow", "image", "instances", "next_image", "parts", "textures", "visible"])
test_eq(r["image"].shape, (3, 48, 64)); test_eq(r["flow"].shape, (2, 48, 64)); test_eq(r["parts"].dtype, torch.int64)
for k, v in render_scene("multi_cube", seed=0, size=(48, 64)).items(): test_eq(v, r[k])   # deterministic
assert not torch.equal(render_scene("multi_cube", seed=1, size=(48, 64))["image"], r["image"])
fl = render_scene("multi_cube", seed=2, camera_motion=False, size=(48, 64))
test_eq(fl["flow"][:, fl["instances"] == 0].abs().max(), 0.0)                  # static background: exactly 0

# %% [markdown]
# Labels are consistent across the maps: categories and part ranges follow from the instances.

# %%
r = render_scene("shapes", seed=4)
s = sample_scene("shapes", seed=4)
test_eq(r["categories"], s.kinds[r["instances"]])
test_eq(r["textures"], s.textures[r["instances"]])
offs = _face_offsets(s.kinds)
for i in range(1, len(s.kinds)):
    p = r["parts"][r["instances"] == i]
    assert ((p >= offs[i]) & (p < offs[i] + NUM_FACES[int(s.kinds[i])])).all()
test_eq((r["parts"] == 0), (r["instances"] == 0))


# %% [markdown]
# ## The flow explains the second frame
#
# Warping `next_image` back with the flow must reproduce `image` wherever the point is visible in both
# frames; we leave out two pixels around every label boundary, where pixel-centre sampling without
# anti-aliasing mixes surfaces. The remaining error comes from bilinear resampling and from shading
# that changes as objects rotate relative to the light: about 0.002–0.011 at 128×128. Textures are
# $64\times64$ tiles sized for 128-pixel frames; much smaller frames minify them, and the error from
# resampling aliased texture grows (to about 0.02 at 64×80).

# %%
#| export
def warp_error(pair: dict,  # the output of `render_scene`
               margin: int = 2  # pixels removed around part boundaries and invisible points
              ) -> tuple:
    """Mean |image − warp(next_image, flow)| over pixels visible at t+1 away from boundaries, and that mask.

    Shape: returns a float and a `(H,W)` bool mask."""
    parts = pair["parts"].float()[None, None]
    k = 2 * margin + 1
    same = (F.max_pool2d(parts, k, 1, margin) == -F.max_pool2d(-parts, k, 1, margin))[0, 0]  # no boundary nearby
    ok = -F.max_pool2d(-pair["visible"].float()[None, None], k, 1, margin)[0, 0] > 0
    mask = same & ok
    err = (warp(pair["next_image"], pair["flow"]) - pair["image"]).abs().mean(0)
    return float(err[mask].mean()), mask


# %%
for preset in PRESETS:
    e, m = warp_error(render_scene(preset, seed=1))
    assert e < 0.02 and m.float().mean() > 0.5, (preset, e)


# %% [markdown]
# ## A dataset of scenes
#
# `SceneDataset` is a map-style torch `Dataset` of rendered pairs: item `i` is
# `render_scene(preset, scene_seed(seed, i), size)`, where `scene_seed` mixes the two with NumPy's
# `SeedSequence`, so different `(seed, i)` give unrelated scenes and any item can be rendered on its own
# (in any `DataLoader` worker, in any order).

# %%
#| export
def scene_seed(seed: int,  # the data set's seed
               index: int  # the item
              ) -> int:
    "The `render_scene` seed of item `index` of a data set with seed `seed` (a 63-bit hash of both)."
    state = np.random.SeedSequence([_check_seed(seed), _check_seed(index)]).generate_state(2, np.uint32)
    return int(state[0]) << 31 | int(state[1]) >> 1

class SceneDataset(torch.utils.data.Dataset):
    "Item i = `render_scene(preset, scene_seed(seed, i), size)`: a dict of tensors (see `render_scene`)."
    def __init__(self, preset: str,  # one of `PRESETS`
                 length: int,  # number of items
                 seed: int = 0,  # data set seed
                 size=(128, 128),  # (H, W)
                 camera_motion=None  # passed to `render_scene`
                ):
        _check_preset(preset)
        self.preset, self.length, self.seed = preset, check_int("length", length, 1), _check_seed(seed)
        self.size, self.camera_motion = _check_size(size), camera_motion
    def __len__(self): return self.length
    def __getitem__(self, i):
        if not isinstance(i, (int, np.integer)): raise TypeError(f"index must be an int, got {type(i).__name__}")
        if i < 0: i += self.length
        if not 0 <= i < self.length: raise IndexError(f"index {i} out of range for a SceneDataset of length {self.length}")
        return render_scene(self.preset, scene_seed(self.seed, int(i)), self.size, self.camera_motion)


# %%
ds = SceneDataset("shapes", 5, seed=1, size=(32, 32))
test_eq(len(ds), 5)
test_eq(ds[2]["image"], render_scene("shapes", scene_seed(1, 2), (32, 32))["image"])
test_eq(ds[-1]["flow"], ds[4]["flow"])
assert scene_seed(0, 1) != scene_seed(1, 0) and 0 <= scene_seed(3, 4) < 2**63
test_fail(lambda: ds[5], contains="out of range")
test_fail(lambda: SceneDataset("shapes", 0), contains="length=0; expected an int >= 1")
test_fail(lambda: SceneDataset("cube", 3), contains="valid presets")
batch = torch.utils.data.default_collate([ds[0], ds[1]])
test_eq(batch["flow"].shape, (2, 2, 32, 32))


# %% [markdown]
# ## Figures
#
# Like thesis figs 3.3 and 4.3: for each preset, the frame at $t$, the frame at $t+1$, the exact flow
# (colour wheel of chapter 1), the instances and the parts.

# %%
#| export
def label_to_rgb(labels,  # `(H,W)` long; 0 is drawn black
                 seed: int = 0  # colour palette seed
                ) -> torch.Tensor:
    "A label map as a `(3,H,W)` image with a fixed random colour per label and black background."
    labels = torch.as_tensor(labels).long()
    g = torch.Generator().manual_seed(seed)
    palette = torch.rand(int(labels.max()) + 1, 3, generator=g) * 0.8 + 0.2
    palette[0] = 0
    return palette[labels].permute(2, 0, 1)


# %%
test_eq(label_to_rgb(torch.tensor([[0, 1], [2, 1]]))[:, 0, 0], torch.zeros(3))
test_eq(label_to_rgb(torch.tensor([[0, 1], [2, 1]]))[:, 0, 1], label_to_rgb(torch.tensor([[0, 1], [2, 1]]))[:, 1, 1])


# %%
#| slow
def show_scenes(preset, seeds, size=(128, 128)):
    ims, titles = [], []
    for s in seeds:
        r = render_scene(preset, s, size)
        ims += [r["image"], r["next_image"], flow_to_rgb(r["flow"]), label_to_rgb(r["instances"]), label_to_rgb(r["parts"])]
        titles += [f"{preset} {s}: t", "t+1", f"flow (max {r['flow'].norm(dim=0).max():.1f} px)", "instances", "parts"]
    fig = show_images(ims, titles, ncols=5, size=2.4)
    add_flow_key(fig)
    return fig

for preset in PRESETS: fig = show_scenes(preset, [0, 1])

# %% [markdown]
# Flow magnitudes over many scenes: a few pixels up to about 10–15 px at 128 px, as intended.

# %%
#| slow
mags = {p: torch.cat([render_scene(p, s)["flow"].norm(dim=0).flatten() for s in range(20)]) for p in PRESETS}
for p, m in mags.items():
    print(f"{p:12s} flow magnitude px: median {m.median():.2f}, 95% {m.quantile(0.95):.2f}, max {m.max():.2f}")


# %% [markdown]
# ## How ambiguous is a world's motion? Manipulation statistics
#
# Chapter 3's claim — CPFS transfers better than predicting the flow itself — rests on flow being
# ambiguous from one frame: objects that can move often don't, the camera moves too. A world tests the
# claim only if it carries that premise, so `manipulation_statistics` measures it on rendered frames:
#
# - `relative_motion_under_1px`: the share of frames whose dominant (largest) object moves by less than
#   1 px relative to the background — the difference of the mean flow over its pixels and over the
#   background's. Then the flow says nothing about where the object is.
# - `figure_ground_entropy_share`: how much of the direct flow-classification target (the joint
#   16 × 16 class of the eq-3.8-normalised x and y flow, `flow.flow_to_classes`) figure/ground explains:
#   the mutual information $I(C; G)$ of a pixel's flow class $C$ and whether it is on an object $G$,
#   over the entropy $H(C)$, pooled over pixels and frames. Near 0 the flow class barely tells an
#   object; the larger, the more flow classification is figure/ground segmentation in disguise.
# - `all_objects_under_1px`: the same share over every object of every frame; `centre_coverage`: the share
#   of frames whose centre pixel is on an object (what a centre prior exploits, chapter 7);
#   `flow_magnitude_object` / `flow_magnitude_background`: median flow magnitude, px.

# %%
#| export
def manipulation_statistics(preset: str,  # one of `PRESETS`
                            num: int = 200,  # frames
                            seed: int = 0,  # the `SceneDataset` seed
                            size=(128, 128),  # (H, W)
                            num_bins: int = 16,  # flow classes per component (`flow_to_classes`)
                            min_pixels: int = 20  # an object smaller than this in a frame is not counted
                           ) -> dict:
    "How ambiguous the motion of a world is, measured on `num` rendered frames (see above)."
    from scipy.stats import entropy
    ds = SceneDataset(preset, check_int("num", num, 1), seed, size)
    dominant, every, centre, mag_obj, mag_bg, joint = [], [], [], [], [], torch.zeros(2, num_bins ** 2, dtype=torch.long)
    for i in range(num):
        r = ds[i]
        flow, inst = r["flow"], r["instances"]
        bg = flow[:, inst == 0].mean(1) if (inst == 0).any() else torch.zeros(2)
        ids, counts = inst[inst > 0].unique(return_counts=True)
        rel = {int(j): float((flow[:, inst == j].mean(1) - bg).norm()) for j, c in zip(ids, counts) if c >= min_pixels}
        if rel: every += list(rel.values()); dominant.append(rel[max(rel, key=lambda j: int(counts[ids == j]))])
        centre.append(bool(inst[size[0] // 2, size[1] // 2] > 0))
        cls, fg = flow_to_classes(flow, num_bins), (inst > 0).flatten()
        c = (cls[0] * num_bins + cls[1]).flatten()
        joint += torch.stack([torch.bincount(c[fg == g], minlength=num_bins ** 2) for g in (False, True)])
        mag_obj.append(flow.norm(dim=0)[inst > 0]); mag_bg.append(flow.norm(dim=0)[inst == 0])
    h_c = entropy(joint.sum(0).numpy())   # H(C) and H(C | G) in nats, from the flow-class x figure/ground counts
    h_c_given_g = sum(float(joint[g].sum() / joint.sum()) * entropy(joint[g].numpy()) for g in (0, 1) if joint[g].sum() > 0)
    share = lambda xs: float(np.mean(np.asarray(xs) < 1.0)) if xs else float("nan")
    return dict(relative_motion_under_1px=share(dominant), all_objects_under_1px=share(every),
                figure_ground_entropy_share=float((h_c - h_c_given_g) / h_c) if h_c > 0 else 0.0,
                flow_class_entropy_bits=float(h_c / math.log(2)), centre_coverage=float(np.mean(centre)),
                flow_magnitude_object=float(torch.cat(mag_obj).median()), flow_magnitude_background=float(torch.cat(mag_bg).median()),
                frames=num, seed=seed, size=list(size))


# %% [markdown]
# Each variant moves the statistic it was built to move. On 100 frames of each `objects` world (the table
# is printed by the cell below, from the renderer itself; chapter `03_cpfs_ambiguity` saves them on 200):

# %%
_man = {w: manipulation_statistics(w, 100, size=(128, 128)) for w in OBJECT_WORLDS}
print(f"{'world':18s} rel<1px  all<1px  FG share of H(C)  H(C) bits  centre  |flow| obj / bg px")
for w, m in _man.items():
    print(f"{w:18s} {m['relative_motion_under_1px']:7.2f}  {m['all_objects_under_1px']:7.2f}  {m['figure_ground_entropy_share']:16.3f}  "
          f"{m['flow_class_entropy_bits']:9.2f}  {m['centre_coverage']:6.2f}  {m['flow_magnitude_object']:5.2f} / {m['flow_magnitude_background']:.2f}")
assert _man["objects_static"]["relative_motion_under_1px"] > _man["objects"]["relative_motion_under_1px"] + 0.2
assert _man["objects_camera"]["figure_ground_entropy_share"] < _man["objects"]["figure_ground_entropy_share"]
assert _man["objects_camera"]["flow_magnitude_background"] > 2 * _man["objects"]["flow_magnitude_background"]
assert _man["objects_anywhere"]["centre_coverage"] < _man["objects"]["centre_coverage"] - 0.3

# %% [markdown]
# Still objects (`objects_static`) move the first statistic, the panning camera (`objects_camera`) the second, and
# `objects_ambiguous` both; `objects_k3` moves neither — three objects make the labels harder, not the motion more
# ambiguous — so chapter 3 reads it as a world of several objects, not as an ambiguous one. `objects_anywhere`
# differs from `objects` in the centre coverage only.

# %% [markdown]
# The statistics are exact on a scene whose object does not move and whose camera is still: every
# object pixel's flow is zero, like the background's.

# %%
_st = [sample_scene("objects_static", i, (32, 32), camera_motion=False) for i in range(200)]
_frac = np.mean([torch.equal(s.translations[0, 1], s.translations[1, 1]) for s in _st])
assert 0.4 < _frac < 0.6, _frac                     # p_static = 0.5 of the objects keep still
_still = next(i for i, s in enumerate(_st) if torch.equal(s.translations[0, 1], s.translations[1, 1]))
_r = render_scene("objects_static", _still, (32, 32), camera_motion=False)
test_eq(_r["flow"].abs().max(), 0.0)
test_eq(len(sample_scene("objects_k3", 0).kinds), 4); test_eq(len(sample_scene("objects_ambiguous", 0).kinds), 4)
# the variants were appended: the earlier presets draw the same scenes as before (values of the previous renderer)
test_close(sample_scene("objects", 11).translations[0, 1], torch.tensor([-0.020753389, -0.405991286, 3.201914072]), eps=1e-6)
test_close(sample_scene("shapes", 3).translations[1, 1], torch.tensor([-1.712772608, -2.467084646, 7.998635292]), eps=1e-6)
test_fail(lambda: manipulation_statistics("objects", 0), contains="num")


# %% [markdown]
# `ImageFlowSamples` is the training view both self-supervised chapters put over a data set: each item
# reduced to `{image, flow}`, optionally cached (a rendered pool is rendered once) and augmented.

# %%
#| export
def _image_flow(sample: dict) -> dict:
    return {k: sample[k] for k in ("image", "flow")}

class ImageFlowSamples(torch.utils.data.Dataset):
    "The items of a data set (or list) reduced to `{image, flow}`; `cache` keeps them after the first read, `transform` augments each read."
    def __init__(self, base,  # a data set or list of dicts with at least `image` and `flow`
                 transform=None,  # e.g. `PairedAugment`; applied on every read, after the cache
                 cache: bool = False):
        self.base, self.transform, self.cache = base, transform, {} if cache else None
    def __len__(self): return len(self.base)
    def __getitem__(self, i):
        if self.cache is not None and i in self.cache: s = self.cache[i]
        else:
            s = _image_flow(self.base[i])
            if self.cache is not None: self.cache[i] = s
        return self.transform(s) if self.transform is not None else s

    def fill(self, num_workers: int = 0,  # processes that read (render) the items; 0: this one
             progress: bool = False, desc: str = "cache",
             indices=None  # the items to read (e.g. one process's share of a validation set); None: all
            ):
        "Read items into the cache now: a pool rendered once, up front, that DataLoader workers then share."
        if self.cache is None: raise ValueError("fill() needs an ImageFlowSamples made with cache=True")
        todo = [i for i in (range(len(self.base)) if indices is None else indices) if i not in self.cache]
        loader = torch.utils.data.DataLoader(self.base, batch_size=None, sampler=todo, num_workers=num_workers, collate_fn=_image_flow)
        for i, s in zip(todo, tqdm(loader, total=len(todo), desc=desc, disable=not progress or not todo, leave=False)):
            self.cache[i] = {k: v.clone() for k, v in s.items()}  # own memory: no shared-memory handle per cached tensor
        return self


# %%
_items = [dict(image=torch.rand(3, 8, 8), flow=torch.randn(2, 8, 8), depth=torch.rand(8, 8))]
_ifs = ImageFlowSamples(_items, transform=paired_hflip, cache=True)
test_eq(sorted(_ifs[0]), ["flow", "image"]); test_eq(_ifs[0]["image"], _items[0]["image"].flip(-1))
assert 0 in _ifs.cache and torch.equal(_ifs.cache[0]["image"], _items[0]["image"])   # the cache holds unaugmented items
_pool = ImageFlowSamples(SceneDataset("shapes", 3, seed=1, size=(24, 24)), cache=True).fill(num_workers=2)
test_eq(sorted(_pool.cache), [0, 1, 2])
test_eq(_pool.cache[2]["flow"], SceneDataset("shapes", 3, seed=1, size=(24, 24))[2]["flow"])   # workers render the same items
test_eq(sorted(ImageFlowSamples(SceneDataset("shapes", 3, seed=1, size=(24, 24)), cache=True).fill(indices=range(1, 3, 2)).cache), [1])

# %% [markdown]
# **Pools on disk.** A training run reuses a pool of rendered scenes with augmentation, and runs with the
# same settings (the arms of an experiment, a rerun) use the same pool. `rendered_pool` renders it once —
# in `num_workers` processes — and keeps it under the data directory, keyed by everything that decides
# its content (preset, size, seed, length, and `RENDER_VERSION`, raised whenever the renderer's output
# changes); a later call loads it. Frames are stored as 8-bit images and flows as float16 (a fifth of the
# float32 size; at most 1/510 in intensity and about 0.01 px at 20 px of flow) and come back as float32 —
# the same values whether the pool was just rendered or loaded. The file is written atomically: a killed
# run leaves no pool behind, only a missing one.

# %%
#| export
RENDER_VERSION = 2  # raise when the renderer's output changes: cached pools are keyed by it (2: the compiled geometry, last-bit changes)

def _quantized(items: list) -> dict:
    return {"image": torch.stack([(it["image"] * 255).round().to(torch.uint8) for it in items]),
            "flow": torch.stack([it["flow"].to(torch.float16) for it in items])}

def rendered_pool(preset: str,  # one of `PRESETS`
                  length: int,  # scenes in the pool
                  seed: int = 0,  # the pool's seed (`SceneDataset`'s)
                  size=(128, 128),  # (H, W)
                  num_workers: int = 0,  # processes that render (0: this one)
                  progress: bool = False,
                  cache_dir=None  # None: `data_dir()/pools`; False: no disk cache
                 ) -> list:
    "`{image, flow}` of `SceneDataset(preset, length, seed, size)`, rendered once and cached on disk (see above)."
    h, w = _check_size(size)
    path = None if cache_dir is False else Path(cache_dir or data_dir() / "pools") / f"{preset}_{h}x{w}_seed{seed}_n{length}_v{RENDER_VERSION}.pt"
    if path is not None and path.exists():
        try: stored = torch.load(path, weights_only=True)
        except Exception as e: raise ValueError(f"{path}: not a readable pool file (delete it to render again): {type(e).__name__}: {e}") from None
    else:
        view = ImageFlowSamples(SceneDataset(preset, length, seed, (h, w)), cache=True).fill(num_workers, progress, f"render {preset} pool")
        stored = _quantized([view.cache[i] for i in range(length)])
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_save(stored, path)
    if stored["image"].shape != (length, 3, h, w): raise ValueError(f"{path}: holds {tuple(stored['image'].shape)} images, expected ({length}, 3, {h}, {w})")
    return [{"image": im.float() / 255, "flow": fl.float()} for im, fl in zip(stored["image"], stored["flow"])]


# %%
with tempfile.TemporaryDirectory() as _d:
    _p1 = rendered_pool("objects", 3, seed=2, size=(24, 32), cache_dir=_d)                # rendered, then stored
    test_eq(len(list(Path(_d).glob("objects_24x32_seed2_n3_v*.pt"))), 1)
    _p2 = rendered_pool("objects", 3, seed=2, size=(24, 32), cache_dir=_d)                # loaded: the same values
    test_eq(_p1[2]["flow"], _p2[2]["flow"]); test_eq(_p1[0]["image"], _p2[0]["image"])
    _exact = SceneDataset("objects", 3, seed=2, size=(24, 32))[2]
    test_close(_p1[2]["flow"], _exact["flow"], eps=0.02); test_close(_p1[2]["image"], _exact["image"], eps=1 / 500)
    test_eq(rendered_pool("objects", 3, seed=2, size=(24, 32), cache_dir=False)[1]["flow"], _p1[1]["flow"])   # no cache: same

# %% [markdown]
# ## Making it fast
#
# Casting rays and evaluating surfaces is most of a frame's rendering time: the tensor code above builds
# `(objects, pixels, 3)` tensors for every kind's intersection formulas and evaluates every kind's surface
# formulas on every pixel. `_geometry_compiled` does the same arithmetic per pixel in one compiled loop
# (numba), in float32 and in the same order of operations, keeping the nearest hit as it goes, so nothing
# of size `(objects, pixels)` is made; the culling by projected bounding circles is the same test. Shading
# (texture look-up, light) stays in torch. `render_frame` uses it when numba is installed
# (`_FAST_GEOMETRY`). Torch's matrix products may use fused multiply-adds where the loop does not, and its
# `atan2`/`acos` are vectorised approximations, so values can differ in the last bits; the test below
# compares both paths on every preset.
#
# **Measured** (`bench/bench_data.py`, 128×128 `multi_cube` pairs, 2 threads): 5.4 ms a pair with tensor
# operations, about 3.2 ms with the compiled geometry: 313 pairs/s through `render_scene` over 200 fresh scenes
# (4 Dec 2026; #22 asks for 300), 283 on one thread. The first few dozen renders of a process run at about half
# that speed (textures, the allocator, numba's dispatch), so the bench warms up on 20 scenes first; measured
# over 40 scenes right after one warm-up render it reported 250–290. The rest of the time is the shading and
# the labels in torch on tensors of 16k pixels, where a second thread costs about what it brings; a compiled
# shading loop was tried and was slower than torch's (0.68 against 0.51 ms a frame), so it was not kept.

# %%
#| exporti
_F32 = np.float32
_EPS32, _INF32, _ZERO32, _ONE32, _TWO32, _HALF32, _PI32 = (_F32(v) for v in (1e-12, np.inf, 0, 1, 2, 0.5, math.pi))
_ORIGIN = (_ZERO32, _ZERO32, _ZERO32)  # the reference point of directions

def _local(v, ref, R, k):
    "Rᵀ(v − ref) of object k as three float32 scalars (ref = `_ORIGIN` for directions)."
    a0, a1, a2 = v[0] - ref[0], v[1] - ref[1], v[2] - ref[2]
    return (a0 * R[k, 0, 0] + a1 * R[k, 1, 0] + a2 * R[k, 2, 0], a0 * R[k, 0, 1] + a1 * R[k, 1, 1] + a2 * R[k, 2, 1],
            a0 * R[k, 0, 2] + a1 * R[k, 1, 2] + a2 * R[k, 2, 2])

def _box_1(o, d, h):
    "`_hit_box` for one ray and one box: depth (inf = miss) and face."
    near, far, axis = -_INF32, _INF32, 0
    for j in range(3):
        inv = _ONE32 / (d[j] if abs(d[j]) >= _EPS32 else _EPS32)
        t1, t2 = (-h[j] - o[j]) * inv, (h[j] - o[j]) * inv
        lo, hi = min(t1, t2), max(t1, t2)
        if j == 0 or lo > near: near, axis = lo, j
        far = min(far, hi)
    return (near if near <= far and near > _ZERO32 else _INF32), 2 * axis + (1 if d[axis] < _ZERO32 else 0)

def _sphere_1(o, d, r):
    "`_hit_sphere` for one ray."
    a = d[0] * d[0] + d[1] * d[1] + d[2] * d[2]
    b = o[0] * d[0] + o[1] * d[1] + o[2] * d[2]
    disc = b * b - a * (o[0] * o[0] + o[1] * o[1] + o[2] * o[2] - r * r)
    t = (-b - np.sqrt(max(disc, _ZERO32))) / a
    return (t if disc >= _ZERO32 and t > _ZERO32 else _INF32), 0

def _cylinder_1(o, d, r, h):
    "`_hit_cylinder` for one ray."
    a = d[0] * d[0] + d[1] * d[1]
    b = o[0] * d[0] + o[1] * d[1]
    disc = b * b - a * (o[0] * o[0] + o[1] * o[1] - r * r)
    ts = (-b - np.sqrt(max(disc, _ZERO32))) / max(a, _EPS32)
    side = disc >= _ZERO32 and ts > _ZERO32 and abs(o[2] + ts * d[2]) <= h
    dz = d[2] if abs(d[2]) >= _EPS32 else _EPS32
    top = dz < _ZERO32
    tc = ((h if top else -h) - o[2]) / dz
    px, py = o[0] + tc * d[0], o[1] + tc * d[1]
    ts, tc = (ts if side else _INF32), (tc if tc > _ZERO32 and px * px + py * py <= r * r else _INF32)
    return min(ts, tc), (0 if ts <= tc else (1 if top else 2))

def _surface_1(kind, face, p, dims):
    "`_surface` for one pixel: u, v and the local normal (three scalars)."
    x, y, z = p
    if kind == 0: return x / dims[0], y / dims[0], _ZERO32, _ZERO32, -_ONE32
    if kind == 1:
        axis = face // 2
        q = (x / (_TWO32 * dims[0]) + _HALF32, y / (_TWO32 * dims[1]) + _HALF32, z / (_TWO32 * dims[2]) + _HALF32)
        s = _ONE32 if face % 2 == 1 else -_ONE32
        return (q[(axis + 1) % 3], q[(axis + 2) % 3], s if axis == 0 else _ZERO32, s if axis == 1 else _ZERO32,
                s if axis == 2 else _ZERO32)
    r = dims[0]
    ang = np.arctan2(y, x) / _PI32 + _ONE32
    if kind == 2: return ang, np.arccos(min(max(z / r, -_ONE32), _ONE32)) / _PI32, x / r, y / r, z / r
    if face == 0: return ang, z / (_TWO32 * dims[2]) + _HALF32, x / r, y / r, _ZERO32
    return x / (_TWO32 * r) + _HALF32, y / (_TWO32 * r) + _HALF32, _ZERO32, _ZERO32, (_ONE32 if face == 1 else -_ONE32)

def _camera_point(p, R, T, k):
    "R p + T of object k (`_transform` for one point)."
    return (p[0] * R[k, 0, 0] + p[1] * R[k, 0, 1] + p[2] * R[k, 0, 2] + T[k, 0],
            p[0] * R[k, 1, 0] + p[1] * R[k, 1, 1] + p[2] * R[k, 1, 2] + T[k, 1],
            p[0] * R[k, 2, 0] + p[1] * R[k, 2, 1] + p[2] * R[k, 2, 2] + T[k, 2])

def _geometry_loop(o, d, pix, Rs, Ts, time, kinds, dims, centres, rad2, cull, flow, idx, face, depth, uv, normal, X):
    "Per pixel: the plane, then (if its ray may pass near one) every object; outputs filled in place. Returns the misses."
    misses, R, T = 0, Rs[time], Ts[time]
    for n in range(d.shape[0]):
        on = o[0] if o.shape[0] == 1 else o[n]
        ol, dl = _local(on, T[0], R, 0), _local(d[n], _ORIGIN, R, 0)
        t = -ol[2] / (dl[2] if abs(dl[2]) >= _EPS32 else _EPS32)
        best, bo, bd, bk, bf = (t if t > _ZERO32 else _INF32), ol, dl, 0, 0
        if best == _INF32: misses += 1
        near = not cull
        for k in range(centres.shape[0]):
            dx, dy = pix[n, 0] - centres[k, 0], pix[n, 1] - centres[k, 1]
            near = near or dx * dx + dy * dy <= rad2[k]
        tmin, kmin, fmin, omin, dmin = _INF32, 0, 0, ol, dl
        for k in range(1, kinds.shape[0] if near else 1):
            ok, dk = _local(on, T[k], R, k), _local(d[n], _ORIGIN, R, k)
            if kinds[k] == 1: tk, fk = _box_1(ok, dk, dims[k])
            elif kinds[k] == 2: tk, fk = _sphere_1(ok, dk, dims[k, 0])
            else: tk, fk = _cylinder_1(ok, dk, dims[k, 0], dims[k, 2])
            if tk < tmin: tmin, kmin, fmin, omin, dmin = tk, k, fk, ok, dk
        if tmin < best: best, bo, bd, bk, bf = tmin, omin, dmin, kmin, fmin
        p = (bo[0] + best * bd[0], bo[1] + best * bd[1], bo[2] + best * bd[2])
        idx[n], face[n], depth[n] = bk, bf, best
        uv[n, 0], uv[n, 1], normal[n, 0], normal[n, 1], normal[n, 2] = _surface_1(kinds[bk], bf, p, dims[bk])
        if flow:
            for s in range(2):
                X[s, n, 0], X[s, n, 1], X[s, n, 2] = _camera_point(p, Rs[s], Ts[s], bk)
    return misses

if numba is not None:  # compiled once per machine (cache=True); serial, so worker processes of one thread stay one thread
    # the helpers are inlined into the loop (half its time), and divisions follow IEEE rules as in torch (no checks)
    _local, _box_1, _sphere_1, _cylinder_1, _surface_1, _camera_point = (
        numba.njit(cache=True, inline="always", error_model="numpy")(f)
        for f in (_local, _box_1, _sphere_1, _cylinder_1, _surface_1, _camera_point))
    _geometry_loop = numba.njit(cache=True, error_model="numpy")(_geometry_loop)

def _cull_circles(scene: Scene, time: int):
    "`_candidates`' projected bounding circles at `time`: centres `(K,2)` and squared radii `(K,)`; None: no culling."
    T, rb = scene.translations[time, 1:], _bounding_radius(scene.kinds[1:], scene.dims[1:])
    if not scene.ortho and (T[:, 2] <= rb).any(): return None
    rad = scene.focal * rb + 1 if scene.ortho else scene.focal * rb * T.norm(dim=-1) / (T[:, 2] * (T[:, 2] - rb)) + 1
    return _project(scene, T), rad ** 2

def _geometry_compiled(scene: Scene, time: int, flow: bool = False, cull: bool = True):
    "`_geometry`'s results from one compiled loop over the pixels."
    pix, o, d = _rays(scene)
    circles = _cull_circles(scene, time) if cull and len(scene.kinds) > 1 else None
    centres, rad2 = circles if circles is not None else (torch.zeros(0, 2), torch.zeros(0))
    n = len(pix)
    idx, face = torch.zeros(n, dtype=torch.long), torch.zeros(n, dtype=torch.long)
    depth, uv, normal, X = torch.empty(n), torch.empty(n, 2), torch.empty(n, 3), torch.empty(2 if flow else 0, n, 3)
    args = [t.contiguous().numpy() for t in (o, d, pix, scene.rotations, scene.translations)] + [time] + [
        t.contiguous().numpy() for t in (scene.kinds, scene.dims, centres, rad2)]
    outs = [t.numpy() for t in (idx, face, depth, uv, normal, X)]
    if _geometry_loop(*args, circles is not None, flow, *outs):
        raise ValueError("some rays miss the background plane; it must fill the view")
    return idx, face, depth, uv, normal, (X[0], X[1]) if flow else None

if numba is not None: _FAST_GEOMETRY = _geometry_compiled


# %% [markdown]
# Both paths agree on every preset and size: the same object and face at (almost) every pixel — a last-bit
# difference in a depth could flip a pixel on a silhouette — and the same depth, texture coordinates,
# normals and camera points to float32 precision elsewhere; scenes with the plane alone and the un-culled
# cast agree too. Rays that graze a cylinder or sphere lose digits to cancellation in the quadratic's root, so
# normals there differ by up to about 1e-4; hence the tolerance 1e-3.

# %%
def _compare_geometry(scene, time, cull=True):
    a = _geometry(scene, time, flow=time == 0)
    b = _geometry_compiled(scene, time, flow=time == 0, cull=cull)
    same = (a[0] == b[0]) & (a[1] == b[1])
    assert same.float().mean() >= 0.999, f"{(~same).sum()} of {len(same)} pixels differ"
    for x, y in zip(a[2:5] + (a[5] or ()), b[2:5] + (b[5] or ())): test_close(x[same], y[same], eps=1e-3)  # grazing rays: ~1e-4
    return int((~same).sum())

_flips = [_compare_geometry(sample_scene(pr, s, sz), t) for pr in PRESETS for s in range(4)
          for sz in [(32, 48), (128, 128)] for t in (0, 1)]
_flips += [_compare_geometry(sample_scene("multi_cube", 7, (40, 40)), 0, cull=False)]
print(f"{len(_flips)} frames compared: {sum(_flips)} pixels with a different object or face")

# %%
_scene = sample_scene("objects", 5, (32, 32))
_bare = Scene(**{**_scene.__dict__, **{k: getattr(_scene, k)[:1] for k in ("kinds", "dims", "textures", "tints")},
                 "rotations": _scene.rotations[:, :1], "translations": _scene.translations[:, :1]})
test_eq(_geometry_compiled(_bare, 0)[0].sum(), 0); test_eq(_compare_geometry(_bare, 0), 0)   # the plane alone

# %% [markdown]
# ## Summary
#
# - `render_scene(preset, seed, size)` ray-casts boxes, spheres and cylinders in front of a textured
#   plane (`PRESETS`: `single_cube` orthographic, `multi_cube` and `shapes` perspective with camera
#   motion) and returns both frames, the exact forward flow, `instances`, `parts`, `categories`,
#   `textures` (see `TEXTURES`), `depth` and the `visible` mask.
# - `sample_scene` + `render_pair` expose the scene, so its poses can be edited (e.g. pure translation).
# - `warp_error` checks that the flow explains the second frame; `SceneDataset` serves seeded items.
# - Real videos, flow-pair shards and paired augmentation are chapter 02d (`motion_nbs.flowdata`; the names
#   are importable from `motion_nbs.data` as before).
# - `ImageFlowSamples` reduces items to `{image, flow}`, caches them (`fill` renders a pool up front, in
#   worker processes) and augments each read; `rendered_pool` keeps rendered pools on disk for later runs.

# %%
#| hide
import nbdev; nbdev.nbdev_export()
