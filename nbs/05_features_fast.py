# %%
#| default_exp features_fast

# %% [markdown]
# # HOG and dense SIFT, compiled
#
# > The compiled (numba) passes behind `features.HOG` and `features.DenseSIFT` on the CPU: HOG's cell histograms and block normalisation with their gradients, DenseSIFT's pooling and normalisation.

# %% [markdown]
# *Default run: **34 s** on 2 CPU cores with the default parameters (measured by `make book` on 6 Dec 2026, reusing the training and caches that earlier runs left in the runs folder, `core.runs_dir`; where a first run on a new machine takes longer, the chapter says so).*

# %% [markdown]
# Chapter 5a defines HOG and dense SIFT plainly, as derivative filters, an orientation activation, tent
# pooling and normalisation in tensor operations: that is the method, and it runs on any device. Its closing
# "Making it fast" sections explain why the pre-image solver needs something faster on the CPU, and use the
# kernels of this notebook: each is one loop over the pixels or the cells, compiled by
# [numba](https://numba.pydata.org) (the optional `fast` extra). Read chapter 5a first; this notebook comes
# before it only because `motion_nbs.features` imports this module (a chapter imports earlier modules,
# never later ones).
#
# The kernels work on numpy arrays and know nothing of HOG's geometry: the caller (`features`) gives the
# orientation directions and, for each interior row and column, the two cells it feeds and the tent weights
# (`_cell_taps` below). Here they are checked on cases whose answer can be written down, and the
# hand-written gradients against finite differences (`gradcheck`); chapter 5a checks that every kernel equals
# the tensor pipeline, and `tests/test_features.py` checks both against VLFeat.

# %%
#| export
import contextlib
import math

import numpy as np
import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

# %%
#| hide
import matplotlib.pyplot as plt
from fastcore.test import test_close, test_eq
from matplotlib.colors import hsv_to_rgb

from motion_nbs.core import sample_image

# %% [markdown]
# ## numba, when it is installed
#
# Every loop below is compiled with parallel loops (`numba.prange`), cached on disk (the first import on a new
# machine compiles for a few seconds, later ones load the cache) and numpy's error model. Without numba the
# module still imports; `features` then uses its tensor pipeline.

# %%
#| export
try:
    import numba
except ImportError:  # `features` then computes the same numbers with its tensor pipeline
    numba = None

_FLT_EPSILON = float(np.finfo(np.float32).eps)   # VLFeat's VL_EPSILON_F, as in `features`

def _compile(fn, parallel: bool = True):
    "`fn` compiled by numba: parallel loops (`numba.prange`), cached on disk, numpy's error model (x/0 is inf, not an error)."
    return numba.njit(parallel=parallel, cache=True, error_model="numpy")(fn)


# %% [markdown]
# ## Where a pixel's weight goes, and which channel
#
# Two helpers shared by the fused layers of chapter 5a and the loops below. `_cell_taps` turns HOG's 1-D tent
# (`features.bilinear_pooling_kernel`) into the two cells each interior pixel of a row feeds and the two
# weights, as slots of a grid with one dropped cell on each side (a pixel's share beyond the last cell lands
# there). `_select_gradients` takes the unhalved central differences of the channel with the largest gradient
# norm, the first on ties, as VLFeat does.

# %%
#| export
def _cell_taps(n_pixels: int, n_cells: int, kernel, offset: int, cell_size: int):
    "The two cell slots (0..n_cells+1; the outer two are dropped) and tent weights of interior pixels 1..n_pixels: two `(2,n)`."
    x = torch.arange(n_pixels, device=kernel.device) + 1 + offset
    hi = torch.div(x, cell_size, rounding_mode="floor")
    r = x - hi * cell_size
    n = len(kernel)
    w_lo = torch.where(r + cell_size < n, kernel[(r + cell_size).clamp(max=n - 1)], kernel.new_zeros(()))
    return torch.stack([hi, hi - 1]).clamp(-1, n_cells) + 1, torch.stack([kernel[r], w_lo])

def _select_gradients(image):
    "Unhalved central differences `(B,H-2,W-2)` of the channel with the largest gradient norm, and that channel `(B,1,H-2,W-2)` (None for one channel)."
    gx = image[..., 1:-1, 2:] - image[..., 1:-1, :-2]
    gy = image[..., 2:, 1:-1] - image[..., :-2, 1:-1]
    if image.shape[1] == 1: return gx[:, 0], gy[:, 0], None
    n2 = gx * gx + gy * gy
    best, sel = n2[:, 0], torch.zeros_like(n2[:, :1], dtype=torch.long)
    for c in range(1, image.shape[1]):  # VLFeat's strict '>' scan: the first maximum (argmax over a short dim is slow)
        take = n2[:, c] > best
        best, sel = torch.where(take, n2[:, c], best), sel.masked_fill_(take[:, None], c)
    return gx.gather(1, sel)[:, 0], gy.gather(1, sel)[:, 0], sel


# %%
tent4 = torch.tensor([1.0, 3, 5, 7, 7, 5, 3, 1]) / 8          # features.bilinear_pooling_kernel(4): offset 2
slots, weights = _cell_taps(6, 2, tent4, 2, 4)                # interior pixels 1..6 of two cells of 4
test_eq(slots, torch.tensor([[1, 2, 2, 2, 2, 3], [0, 1, 1, 1, 1, 2]]))   # slot 0 and 3: the dropped cells -1 and 2
test_close(weights.sum(0), torch.ones(6))                      # every pixel gives all of its weight to its two cells
im = torch.zeros(1, 2, 3, 3); im[0, 1, 1, 2] = 1.0            # channel 1 has the larger gradient
test_eq([t.flatten().tolist() for t in _select_gradients(im)], [[1.0], [0.0], [1]])


# %% [markdown]
# ## HOG's cell histograms
#
# Without a backward pass, HOG is one pass over the pixels: pick the channel of largest gradient, the
# orientation(s) and the weight of each pixel, and add it to its $2\times2$ cells. `_hog_cells_loop` does that
# per image and band of rows; each band adds into its own copy of the cell grid (two bands share the cells on
# their border), and the copies are summed. The orientation scan is most of the work: per pixel, $K$ products
# and comparisons that each depend on the previous one, so the loop over a row's pixels sits inside the loop
# over orientations, where the compiler runs eight pixels at once. With `save`, it keeps what the backward pass
# needs: each pixel's selected gradient, its two orientations and its channel.

# %%
#| export
def _hog_cells_loop(image, dx, dy, ty, wy, tx, wx, bilinear, nbands, out, save, sgx, sgy, sk, ssel):
    """Directed cell histograms, band by band: `out[b * nbands + band]` `(2K,h+2,w+2)` gets the band's pixels.
    Each row in three passes: the gradients, VLFeat's orientation scan over the whole row at once (the loop over
    pixels inside the loop over orientations, so the compiler vectorises it), then the weights into the cells.
    With `save`, each interior pixel's selected gradient, orientations and channel go to `sgx`, `sgy` `(B,H-2,W-2)`,
    `sk` `(B,2,H-2,W-2)` and `ssel` `(B,H-2,W-2)` (for the backward pass)."""
    B, C, H, W = image.shape
    K, n = dx.shape[0], W - 2
    rows = (H - 2 + nbands - 1) // nbands
    k_over_pi, one = image.dtype.type(K / math.pi), image.dtype.type(1)
    for t in numba.prange(B * nbands):
        b, band = t // nbands, t % nbands
        o = out[t]
        gx, gy, best = np.empty(n, image.dtype), np.empty(n, image.dtype), np.empty(n, image.dtype)
        w0, w1 = np.empty(n, image.dtype), np.empty(n, image.dtype)
        k0, k1, sel = np.empty(n, np.int64), np.empty(n, np.int64), np.zeros(n, np.int64)
        for i in range(band * rows, min(H - 2, (band + 1) * rows)):
            up, mid, dn = image[b, 0, i], image[b, 0, i + 1], image[b, 0, i + 2]
            for j in range(n):
                gx[j], gy[j] = mid[j + 2] - mid[j], dn[j + 1] - up[j + 1]
                best[j] = gx[j] * gx[j] + gy[j] * gy[j]
                sel[j] = 0
            for c in range(1, C):                       # VLFeat's strict '>': the first channel of largest norm
                up, mid, dn = image[b, c, i], image[b, c, i + 1], image[b, c, i + 2]
                for j in range(n):
                    cx, cy = mid[j + 2] - mid[j], dn[j + 1] - up[j + 1]
                    n2 = cx * cx + cy * cy
                    take = n2 > best[j]
                    gx[j], gy[j], best[j] = (cx if take else gx[j]), (cy if take else gy[j]), (n2 if take else best[j])
                    sel[j] = c if take else sel[j]
            for j in range(n): w0[j], w1[j], k0[j], k1[j] = 0, 0, 0, 0
            for k in range(K):                          # VLFeat's scan: best and second-best |<g, u_k>|
                cosk, sink = dx[k], dy[k]
                for j in range(n):
                    ak = abs(gx[j] * cosk + gy[j] * sink)
                    a0, a1 = w0[j], w1[j]
                    gt0, gt1 = ak > a0, ak > a1
                    w1[j] = a0 if gt0 else (ak if gt1 else a1)
                    k1[j] = k0[j] if gt0 else (k if gt1 else k1[j])
                    w0[j] = ak if gt0 else a0
                    k0[j] = k if gt0 else k0[j]
            ty0, ty1, wy0, wy1 = ty[0, i], ty[1, i], wy[0, i], wy[1, i]
            if save:
                for j in range(n):
                    sgx[b, i, j] = gx[j]
                    sgy[b, i, j] = gy[j]
                    ssel[b, i, j] = sel[j]
                    sk[b, 0, i, j] = k0[j]
                    sk[b, 1, i, j] = k1[j] if w1[j] > 0 else 0
            for j in range(n):
                s1 = gx[j] * dx[k0[j]] + gy[j] * dy[k0[j]]
                if s1 == 0: continue                    # VLFeat adds nothing for a zero gradient
                mag = image.dtype.type(math.sqrt(np.float64(best[j])))
                bin1 = k0[j] + (K if s1 < 0 else 0)
                v1, v2, bin2 = mag, mag * 0, bin1
                if bilinear:
                    kk = k1[j] if w1[j] > 0 else 0
                    s2 = gx[j] * dx[kk] + gy[j] * dy[kk]
                    bin2 = kk + (K if s2 < 0 else 0)
                    cos = image.dtype.type(np.float64(abs(s1)) / np.float64(mag))
                    f = math.acos(min(cos, one)) * k_over_pi
                    v1, v2 = (1 - f) * mag, f * mag
                tx0, tx1, wx0, wx1 = tx[0, j], tx[1, j], wx[0, j], wx[1, j]
                for a in range(2):
                    tya, wya = (ty0, wy0) if a == 0 else (ty1, wy1)
                    for e in range(2):
                        txe, tap = (tx0, wya * wx0) if e == 0 else (tx1, wya * wx1)
                        o[bin1, tya, txe] += v1 * tap
                        if bilinear: o[bin2, tya, txe] += v2 * tap

if numba is not None: _hog_cells_loop = _compile(_hog_cells_loop)


# %% [markdown]
# ## UoCTTI block normalisation
#
# One pass over the cells: each cell's four $2\times2$ blocks give four factors $(\beta_i + 10^{-4})^{-1/2}$
# of the blocks' summed squared norms of the undirected histograms (borders replicated); the directed and
# undirected histograms are clamped at 0.2 after each factor and summed, and the texture energies collect the
# clamped undirected values (`features._uoctti_normalize` is the tensor version).

# %%
#| export
def _cell_norms(hist, b, y, K, n):
    "Into `n` `(3,w)`: the squared norms of the undirected histograms of image b's cells in rows y-1, y, y+1 (clamped)."
    h, w = hist.shape[2], hist.shape[3]
    for r in range(3):
        yy = min(max(y + r - 1, 0), h - 1)
        for x in range(w):
            acc = hist.dtype.type(0)
            for k in range(K):
                u = hist[b, k, yy, x] + hist[b, k + K, yy, x]
                acc += u * u
            n[r, x] = acc

def _block_factors(n, x, f):
    "Into `f` `(4,)`: 1/sqrt(block sum + 1e-4) of cell x's blocks above-left, above-right, below-left, below-right."
    w = n.shape[1]
    xl, xr = max(x - 1, 0), min(x + 1, w - 1)
    one, eps = n.dtype.type(1), n.dtype.type(1e-4)
    for a in range(2):
        for e in range(2):
            c0, c1 = (xl, x) if e == 0 else (x, xr)
            f[2 * a + e] = one / math.sqrt(n[a, c0] + n[a, c1] + n[a + 1, c0] + n[a + 1, c1] + eps)

def _uoctti_loop(hist, K, out):
    "`features._uoctti_normalize` cell by cell: directed cell histograms `(B,2K,h,w)` -> `out` `(B,3K+4,h,w)`."
    B, _, h, w = hist.shape
    fifth, half = hist.dtype.type(0.2), hist.dtype.type(0.5)
    tex = hist.dtype.type(1 / math.sqrt(18.0))
    for t in numba.prange(B * h):
        b, y = t // h, t % h
        n, f = np.empty((3, w), hist.dtype), np.empty(4, hist.dtype)
        _cell_norms(hist, b, y, K, n)
        for x in range(w):
            _block_factors(n, x, f)
            for d in range(2 * K):
                acc = hist.dtype.type(0)
                for i in range(4): acc += min(f[i] * hist[b, d, y, x], fifth)
                out[b, d, y, x] = half * acc
            for i in range(4): out[b, 3 * K + i, y, x] = 0
            for k in range(K):
                u = hist[b, k, y, x] + hist[b, k + K, y, x]
                acc = hist.dtype.type(0)
                for i in range(4):
                    v = min(f[i] * u, fifth)
                    acc += v
                    out[b, 3 * K + i, y, x] += v * tex
                out[b, 2 * K + k, y, x] = half * acc

if numba is not None:
    _cell_norms = _compile(_cell_norms, parallel=False)
    _block_factors = _compile(_block_factors, parallel=False)
    _uoctti_loop = _compile(_uoctti_loop)


# %% [markdown]
# ## DenseSIFT's pooling and normalisation
#
# DenseSIFT at its densest (bins of 4 pixels, step 1: 128 numbers for each of 300k descriptors of a 480×640
# image) spends its time in two strided convolutions, a reordering and a normalisation of several passes over
# 150 MB each. `_sift_pool_loop` pools along $y$ into one padded row, then along $x$ straight into each
# descriptor component; `_sift_normalize_loop` normalises, clamps at 0.2 and normalises again, a chunk of
# descriptors at a time.

# %%
#| export
def _sift_normalize_loop(d, out, chunk):
    "`features._sift_normalize` of descriptors `d` `(B,D,P)` into `out`, `chunk` descriptors at a time (components strided by P)."
    B, D, P = d.shape
    eps, small, fifth = d.dtype.type(_FLT_EPSILON), d.dtype.type(1e-8), d.dtype.type(0.2)
    zero = d.dtype.type(0)
    nchunks = (P + chunk - 1) // chunk
    for t in numba.prange(B * nchunks):
        b, p0 = t // nchunks, (t % nchunks) * chunk
        p1 = min(P, p0 + chunk)
        ss, den = np.zeros(p1 - p0, d.dtype), np.empty(p1 - p0, d.dtype)
        for c in range(D):
            for p in range(p0, p1): ss[p - p0] += d[b, c, p] * d[b, c, p]
        for p in range(p1 - p0):               # VLFeat's fast sqrt is 0 below 1e-8
            den[p] = (math.sqrt(ss[p]) if ss[p] >= small else zero) + eps
            ss[p] = 0
        for c in range(D):
            for p in range(p0, p1):
                x = d[b, c, p] / den[p - p0]
                v = x - max(x - fifth, zero)   # min(x, 0.2) as the linear + ReLU layers compute it
                out[b, c, p] = v
                ss[p - p0] += v * v
        for p in range(p1 - p0): den[p] = (math.sqrt(ss[p]) if ss[p] >= small else zero) + eps
        for c in range(D):
            for p in range(p0, p1): out[b, c, p] = out[b, c, p] / den[p - p0]

def _sift_pool_loop(bins, k, p, step, ny, nx, out):
    "DenseSIFT's separable spatial pooling, borders replicated by `p` pixels: `bins` `(B,T,H,W)` -> `out` `(B,N*N*T,ny,nx)`."
    B, T, H, W = bins.shape
    N, L = k.shape                                     # the N bins' filters side by side over the window
    for task in numba.prange(B * T * N):
        b, t, j = task // (T * N), (task // N) % T, task % N   # j: the spatial bin along y
        row = np.empty(W + 2 * p, bins.dtype)
        for yo in range(ny):
            for xx in range(W + 2 * p): row[xx] = 0
            for dy in range(L):                        # along y, into one padded row
                y = min(max(yo * step + dy - p, 0), H - 1)
                w, src = k[j, dy], bins[b, t, y]
                for xx in range(p): row[xx] += w * src[0]
                for xx in range(W): row[xx + p] += w * src[xx]
                for xx in range(W + p, W + 2 * p): row[xx] += w * src[W - 1]
            for i in range(N):                         # along x, for each spatial bin i
                o = out[b, t + T * (i + N * j), yo]
                for xo in range(nx):
                    acc = bins.dtype.type(0)
                    for dx in range(L): acc += k[i, dx] * row[xo * step + dx]
                    o[xo] = acc

if numba is not None:
    _sift_normalize_loop = _compile(_sift_normalize_loop)
    _sift_pool_loop = _compile(_sift_pool_loop)


# %% [markdown]
# ## From tensors to the loops and back
#
# The wrappers take and return torch tensors (CPU, float32 or float64) and run numba's threads on as many
# threads as torch uses.

# %%
#| export
@contextlib.contextmanager
def _numba_threads():
    "Run numba's parallel loops on as many threads as torch uses (yields that count); torch's count is put back after."
    threads = torch.get_num_threads()
    numba.set_num_threads(max(1, min(threads, numba.config.NUMBA_NUM_THREADS)))
    try: yield threads
    finally:
        if torch.get_num_threads() != threads: torch.set_num_threads(threads)   # numba's setting can leak into torch's

def _sift_pool_compiled(bins, k, p: int, step: int, ny: int, nx: int):
    "`DenseSIFT`'s two strided convolutions and reordering in one compiled pass: `(B,T,H,W)` -> `(B,N*N*T,ny,nx)`."
    B, T = bins.shape[:2]
    N = k.shape[0]
    out = np.empty((B, N * N * T, ny, nx), dtype=bins.numpy().dtype)
    with _numba_threads():
        _sift_pool_loop(bins.detach().contiguous().numpy(), k.contiguous().numpy(), p, step, ny, nx, out)
    return torch.from_numpy(out)

def _sift_normalize_compiled(d):
    "`features._sift_normalize` of `(B,D,ny,nx)` descriptors in one compiled pass per step (CPU, float32/float64)."
    B, D = d.shape[:2]
    x = d.detach().contiguous().reshape(B, D, -1)
    out = np.empty(x.shape, dtype=x.numpy().dtype)
    with _numba_threads():
        _sift_normalize_loop(x.numpy(), out, 2048)
    return torch.from_numpy(out).view(d.shape)

def _hog_cells_compiled(image, directions, taps, cells, bilinear: bool, saved=None):
    """HOG's directed cell histograms from one compiled pass: `(B,C,H,W)` -> `(B,2K,h,w)`, for `directions` `(2,K)`
    and `taps` the interior rows' and columns' two cell slots and tent weights (ty, wy, tx, wx) in the image's dtype."""
    B, C, H, W = image.shape
    (h, w), K = cells, directions.shape[1]
    ty, wy, tx, wx = taps
    d, im = directions.to(image.dtype), image.detach().contiguous().numpy()
    save = saved is not None
    if not save: saved = (np.empty((1, 1, 1), im.dtype),) * 2 + (np.empty((1, 1, 1, 1), np.int64), np.empty((1, 1, 1), np.int64))
    with _numba_threads() as threads:
        nbands = max(1, min(H - 2, -(-threads // B)))      # enough tasks for every thread, one band per image otherwise
        out = np.zeros((B * nbands, 2 * K, h + 2, w + 2), dtype=im.dtype)
        _hog_cells_loop(im, d[0].numpy(), d[1].numpy(), ty, wy, tx, wx, bilinear, nbands, out, save, *saved)
    return torch.from_numpy(out).view(B, nbands, 2 * K, h + 2, w + 2).sum(1)[..., 1:-1, 1:-1]

def _uoctti_compiled(hist, num_orientations: int):
    "`features._uoctti_normalize` from one compiled pass (CPU, float32/float64)."
    hist = hist.contiguous()
    B, _, h, w = hist.shape
    out = np.empty((B, 3 * num_orientations + 4, h, w), dtype=hist.numpy().dtype)
    with _numba_threads():
        _uoctti_loop(hist.numpy(), num_orientations, out)
    return torch.from_numpy(out)


# %% [markdown]
# Checked on cases with a known answer. A horizontal ramp has the gradient $(0.02, 0)$ (unhalved central
# differences) at every interior pixel, so with each pixel given whole to one cell (weights 1 and 0) every cell
# holds $0.02$ times its pixels in orientation 0 and nothing elsewhere, for HOG and HOGb alike; a flat image
# gives nothing. A single bin of 1 in every cell is clamped to 0.2 in all four blocks: 0.4 directed and
# undirected, $0.2/\sqrt{18}$ in each texture energy. The SIFT vector $(3, 4, 0)$ normalises to $(0.6, 0.8, 0)$,
# clamps to $(0.2, 0.2, 0)$ and normalises to $(1, 1, 0)/\sqrt2$; a $1\times1$ pooling kernel leaves the bins
# as they are.

# %%
def _box_taps(n_pixels: int, cell_size: int, dtype=np.float64):
    "Each interior pixel (1..n_pixels) whole to the cell it lies in: the two slots `(2,n)` and weights `(2,n)` (1 and 0)."
    cell = (np.arange(n_pixels) + 1) // cell_size
    return np.stack([cell + 1, cell]).astype(np.int64), np.stack([np.ones(n_pixels), np.zeros(n_pixels)]).astype(dtype)

def _taps(H: int, W: int, cell_size: int, dtype=np.float64): return (*_box_taps(H - 2, cell_size, dtype), *_box_taps(W - 2, cell_size, dtype))

K9 = torch.tensor(np.stack([np.cos(np.arange(9) * np.pi / 9), np.sin(np.arange(9) * np.pi / 9)]))
ramp = (torch.arange(16, dtype=torch.float64) * 0.01).expand(2, 3, 16, 16).contiguous()
for bilinear in (False, True):
    hist = _hog_cells_compiled(ramp, K9, _taps(16, 16, 4), (4, 4), bilinear)
    test_eq(hist.shape, (2, 18, 4, 4))
    pixels = torch.tensor([3.0, 4, 4, 3], dtype=torch.float64)   # interior pixels 1..14 in cells of 4
    test_close(hist[:, 0], (0.02 * pixels[:, None] * pixels[None, :]).expand(2, 4, 4), eps=1e-12)
    test_eq(hist[:, 1:].abs().max().item(), 0.0)
test_eq(_hog_cells_compiled(torch.full((1, 1, 16, 16), 0.5), K9.float(), _taps(16, 16, 4, np.float32), (4, 4), True).abs().max().item(), 0.0)

one = torch.zeros(1, 18, 3, 4, dtype=torch.float64); one[:, 0] = 1
out = _uoctti_compiled(one, 9)
test_close(out[0, 0], torch.full((3, 4), 0.4, dtype=torch.float64), eps=1e-4)
test_close(out[0, 18], torch.full((3, 4), 0.4, dtype=torch.float64), eps=1e-4)
test_close(out[0, 27:], torch.full((4, 3, 4), 0.2 / math.sqrt(18), dtype=torch.float64), eps=1e-4)
test_eq(out[0, 1:18].abs().max().item(), 0.0)

test_close(_sift_normalize_compiled(torch.tensor([3.0, 4.0, 0.0]).view(1, 3, 1, 1)).flatten(), torch.tensor([1, 1, 0]) / math.sqrt(2), eps=1e-6)
bins = torch.rand(2, 8, 5, 7, generator=torch.Generator().manual_seed(0))
test_eq(_sift_pool_compiled(bins, torch.ones(1, 1), 0, 1, 5, 7), bins)

# %% [markdown]
# The cell histograms of a photograph: with the same whole-pixel cells, the strongest orientation of each
# cell (hue, half a turn for the nine undirected orientations) and its strength (brightness).

# %%
image = sample_image("astronaut")[None]
H, W = image.shape[-2:]
cells = (H // 8, W // 8)
hist = _hog_cells_compiled(image, K9.float(), _taps(H, W, 8, np.float32), cells, False)[0]
undirected = hist[:9] + hist[9:]
strength = undirected.max(0).values
hsv = torch.stack([undirected.argmax(0) / 9, torch.ones_like(strength), (strength / strength.quantile(0.99)).clamp(max=1)], -1)
fig, axs = plt.subplots(1, 2, figsize=(9, 4.5))
axs[0].imshow(image[0].permute(1, 2, 0)); axs[0].set_title("image")
axs[1].imshow(hsv_to_rgb(hsv.numpy())); axs[1].set_title("strongest orientation per 8×8 cell (hue), strength")
for ax in axs: ax.axis("off")
key = plt.cm.ScalarMappable(cmap="hsv", norm=plt.Normalize(0, 180))   # orientation k of 9 is hue k/9, i.e. 20k degrees
fig.colorbar(key, ax=axs[1], fraction=0.046, label="gradient orientation (degrees)")
plt.show()


# %% [markdown]
# ## The gradients, written out
#
# The pre-image solver needs HOG's gradient hundreds of times. The forward pass keeps each pixel's selected
# gradient, orientations and channel; `_hog_backward_loop` reads the cell gradients at each pixel's four cells,
# applies the chain rule through $m = \|\mathbf g\|$ and, for HOGb, the angle of the split between the two
# orientations, and `_hog_image_grad_loop` gathers the result back to the image through the transposed central
# differences (one task per image, so no two tasks write to the same pixel). `_HOGCellsCompiled` is that pair.

# %%
#| export
def _hog_backward_loop(g, dx, dy, ty, wy, tx, wx, bilinear, sgx, sgy, sk, ggx, ggy):
    "Per interior pixel: d loss / d(g_x, g_y) from the cell gradients `g` `(B,2K,h+2,w+2)` (zero-padded)."
    B, n_i, n_j = sgx.shape
    K = dx.shape[0]
    k_over_pi, one = sgx.dtype.type(K / math.pi), sgx.dtype.type(1)
    for t in numba.prange(B * n_i):
        b, i = t // n_i, t % n_i
        ty0, ty1, wy0, wy1 = ty[0, i], ty[1, i], wy[0, i], wy[1, i]
        for j in range(n_j):
            gx, gy, k0, k1 = sgx[b, i, j], sgy[b, i, j], sk[b, 0, i, j], sk[b, 1, i, j]
            best = gx * gx + gy * gy
            ggx[b, i, j] = 0
            ggy[b, i, j] = 0
            if best == 0: continue
            mag = sgx.dtype.type(math.sqrt(np.float64(best)))
            dx1, dy1 = dx[k0], dy[k0]
            s1 = gx * dx1 + gy * dy1
            bin1 = k0 + (K if s1 < 0 else 0)
            tx0, tx1, wx0, wx1 = tx[0, j], tx[1, j], wx[0, j], wx[1, j]
            g1 = (g[b, bin1, ty0, tx0] * (wy0 * wx0) + g[b, bin1, ty0, tx1] * (wy0 * wx1)
                  + g[b, bin1, ty1, tx0] * (wy1 * wx0) + g[b, bin1, ty1, tx1] * (wy1 * wx1))
            if not bilinear:
                ggx[b, i, j] = g1 / mag * gx
                ggy[b, i, j] = g1 / mag * gy
                continue
            s2 = gx * dx[k1] + gy * dy[k1]
            bin2 = k1 + (K if s2 < 0 else 0)
            g2 = (g[b, bin2, ty0, tx0] * (wy0 * wx0) + g[b, bin2, ty0, tx1] * (wy0 * wx1)
                  + g[b, bin2, ty1, tx0] * (wy1 * wx0) + g[b, bin2, ty1, tx1] * (wy1 * wx1))
            a1 = abs(s1)
            cos = sgx.dtype.type(np.float64(a1) / np.float64(mag))
            frac = math.acos(min(cos, one)) * k_over_pi
            cr = gx * dy1 - gy * dx1
            cross = abs(cr)
            inv = (g1 + (g2 - g1) * frac) / mag
            ga = (g2 - g1) * mag * k_over_pi / (a1 * a1 + cross * cross)
            dc = ga * a1 * (one if cr > 0 else (-one if cr < 0 else 0 * one))
            ds = -ga * cross * (one if s1 > 0 else (-one if s1 < 0 else 0 * one))
            ggx[b, i, j] = inv * gx + dc * dy1 + ds * dx1
            ggy[b, i, j] = inv * gy + ds * dy1 - dc * dx1

def _hog_image_grad_loop(ggx, ggy, ssel, C, gi):
    "The transposed central differences into `gi` `(B,C,H,W)`: one task per image, each pixel's two differences scattered."
    B, n_i, n_j = ggx.shape
    for b in numba.prange(B):
        gi[b] = 0
        for i in range(n_i):
            for j in range(n_j):
                c, vx, vy = ssel[b, i, j], ggx[b, i, j], ggy[b, i, j]
                gi[b, c, i + 1, j + 2] += vx
                gi[b, c, i + 1, j] -= vx
                gi[b, c, i + 2, j + 1] += vy
                gi[b, c, i, j + 1] -= vy

if numba is not None:
    _hog_backward_loop = _compile(_hog_backward_loop)
    _hog_image_grad_loop = _compile(_hog_image_grad_loop)

class _HOGCellsCompiled(torch.autograd.Function):
    "`features._HOGCells` from the compiled passes: image `(B,C,H,W)` (CPU, float32/64) -> directed cell histograms `(B,2K,h,w)`."
    @staticmethod
    def forward(ctx, image, directions, taps, cells, bilinear: bool):
        B, C, H, W = image.shape
        dt = image.detach().numpy().dtype
        saved = (np.empty((B, H - 2, W - 2), dt), np.empty((B, H - 2, W - 2), dt),
                 np.empty((B, 2, H - 2, W - 2), np.int64), np.empty((B, H - 2, W - 2), np.int64))
        hist = _hog_cells_compiled(image, directions, taps, cells, bilinear, saved)
        ctx.args = (directions, taps, cells, bilinear, image.shape, saved)
        return hist

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        directions, (ty, wy, tx, wx), cells, bilinear, (B, C, H, W), saved = ctx.args
        d = directions.to(grad.dtype)
        g = F.pad(grad, (1, 1, 1, 1)).contiguous().numpy()
        ggx, ggy = np.empty_like(saved[0]), np.empty_like(saved[0])
        gi = np.empty((B, C, H, W), saved[0].dtype)
        with _numba_threads():
            _hog_backward_loop(g, d[0].numpy(), d[1].numpy(), ty, wy, tx, wx, bilinear, saved[0], saved[1], saved[2], ggx, ggy)
            _hog_image_grad_loop(ggx, ggy, saved[3], C, gi)
        return torch.from_numpy(gi), None, None, None, None


# %% [markdown]
# The block normalisation's gradient, written out (chapter 5a derives it): with $u_k = h_k + h_{k+K}$,
# $n = \sum_k u_k^2$ per cell and the four block factors $f_i$, `_uoctti_backward_loop` collects the direct terms
# and each cell's $\partial/\partial\beta_i$ one row of cells per task, and `_uoctti_blocks_loop` spreads each
# block's gradient back to the cells it sums, one image per task. `_UOCTTICompiled` pairs them with
# `_uoctti_compiled`.

# %%
#| export
def _uoctti_backward_loop(hist, G, K, dh, dF):
    """The per-cell part of the UoCTTI normalisation's gradient: `dh` `(B,2K,h,w)` gets the direct terms and `dF`
    `(B,4,h,w)` d loss / d(block sum) of each cell's four blocks, from the output gradient `G` `(B,3K+4,h,w)`."""
    B, _, h, w = hist.shape
    fifth, half = hist.dtype.type(0.2), hist.dtype.type(0.5)
    tex = hist.dtype.type(1 / math.sqrt(18.0))
    for t in numba.prange(B * h):
        b, y = t // h, t % h
        n, f, df = np.empty((3, w), hist.dtype), np.empty(4, hist.dtype), np.empty(4, hist.dtype)
        _cell_norms(hist, b, y, K, n)                   # as in `_uoctti_loop`
        for x in range(w):
            _block_factors(n, x, f)
            for i in range(4): df[i] = 0
            for d in range(2 * K):                      # the directed histograms
                v, gd, acc = hist[b, d, y, x], half * G[b, d, y, x], hist.dtype.type(0)
                for i in range(4):
                    if f[i] * v <= fifth:
                        acc += f[i]
                        df[i] += gd * v
                dh[b, d, y, x] = gd * acc
            for k in range(K):                          # the undirected ones and the texture energies
                u, acc = hist[b, k, y, x] + hist[b, k + K, y, x], hist.dtype.type(0)
                for i in range(4):
                    if f[i] * u <= fifth:
                        gi = half * G[b, 2 * K + k, y, x] + tex * G[b, 3 * K + i, y, x]
                        acc += gi * f[i]
                        df[i] += gi * u
                dh[b, k, y, x] += acc
                dh[b, k + K, y, x] += acc
            for i in range(4): dF[b, i, y, x] = -half * f[i] * f[i] * f[i] * df[i]

def _uoctti_blocks_loop(hist, K, dF, dh):
    "The blocks' part, one image per task: each block's gradient `dF` back to the cell norms it sums, then to `dh`."
    B, _, h, w = hist.shape
    two = hist.dtype.type(2)
    for b in numba.prange(B):
        dn = np.zeros((h, w), hist.dtype)
        for Y in range(h + 1):
            for X in range(w + 1):
                g = hist.dtype.type(0)                  # block (Y, X) is block i of the cells around it
                if Y < h and X < w: g += dF[b, 0, Y, X]
                if Y < h and X > 0: g += dF[b, 1, Y, X - 1]
                if Y > 0 and X < w: g += dF[b, 2, Y - 1, X]
                if Y > 0 and X > 0: g += dF[b, 3, Y - 1, X - 1]
                for r in (max(Y - 1, 0), min(Y, h - 1)):   # it sums the (replicated) norms of 2x2 cells
                    for c in (max(X - 1, 0), min(X, w - 1)): dn[r, c] += g
        for k in range(K):
            for y in range(h):
                for x in range(w):
                    v = two * (hist[b, k, y, x] + hist[b, k + K, y, x]) * dn[y, x]
                    dh[b, k, y, x] += v
                    dh[b, k + K, y, x] += v

if numba is not None:
    _uoctti_backward_loop = _compile(_uoctti_backward_loop)
    _uoctti_blocks_loop = _compile(_uoctti_blocks_loop)

class _UOCTTICompiled(torch.autograd.Function):
    "`features._uoctti_normalize` with both passes compiled: directed cell histograms `(B,2K,h,w)` (CPU, float32/64) -> `(B,3K+4,h,w)`."
    @staticmethod
    def forward(ctx, hist, num_orientations: int):
        hist = hist.detach().contiguous()
        ctx.hist, ctx.K = hist, num_orientations
        return _uoctti_compiled(hist, num_orientations)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        hist = ctx.hist.numpy()
        B, _, h, w = hist.shape
        dh, dF = np.empty_like(hist), np.empty((B, 4, h, w), hist.dtype)
        with _numba_threads():
            _uoctti_backward_loop(hist, grad.contiguous().numpy(), ctx.K, dh, dF)
            _uoctti_blocks_loop(hist, ctx.K, dF, dh)
        return torch.from_numpy(dh), None


# %% [markdown]
# Both gradients agree with finite differences in float64 (`gradcheck`), for HOG and HOGb from several
# channels, and for the normalisation with values on both sides of the clamp:

# %%
for bilinear in (False, True):
    x = torch.rand(1, 2, 14, 18, dtype=torch.float64, generator=torch.Generator().manual_seed(5), requires_grad=True)
    assert torch.autograd.gradcheck(lambda z: _HOGCellsCompiled.apply(z, K9, _taps(14, 18, 4), (3, 4), bilinear), (x,))
hx = (torch.rand(1, 8, 4, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(3)) * 0.3).requires_grad_()
assert torch.autograd.gradcheck(lambda z: _UOCTTICompiled.apply(z, 4), (hx,))

# %% [markdown]
# ## Summary
#
# - `_hog_cells_compiled` and `_uoctti_compiled`: HOG's directed cell histograms and UoCTTI normalisation, one
#   compiled pass each; `_HOGCellsCompiled` and `_UOCTTICompiled` add their hand-written backward passes.
# - `_sift_pool_compiled` and `_sift_normalize_compiled`: DenseSIFT's spatial pooling and normalisation.
# - The geometry comes from the caller; `features` chooses these passes for CPU float tensors when numba is
#   installed, and chapter 5a tests them against its tensor pipeline.

# %%
#| hide
import nbdev; nbdev.nbdev_export()
