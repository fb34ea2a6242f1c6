"""motion_nbs.features against VLFeat 0.9.21 (through cyvlfeat), plus flips, gradients and bad input.

VLFeat gets the same float32 values in [0,1] that the networks get (MATLAB's `im2single` convention);
cyvlfeat takes images as (H,W,C) and returns HOG as (h,w,31) and DSIFT as (frames (F,2) in (y,x), 0-based;
descriptors (F,128) as min(512 d, 255) even when float_descriptors=True).
"""
import numpy as np
import pytest
import torch

from conftest import require_reference

from motion_nbs.core import sample_image
from motion_nbs.features import (DenseSIFT, HOG, _hog_orientation_bins, _magnitude, _pool_cells_sparse, _uoctti_normalize,
                                 hog_cell_counts, hog_flip_permutation, hog_glyphs, image_gradients)

HOG_TOL = 1e-4    # the bound; measured max is ~2e-6 (float32 summation order)
DSIFT_TOL = 1e-5  # on unit-norm descriptors with VLFeat's fast atan2 reproduced; measured max ~3e-6
EXACT_ATAN2_TOL = 2e-2  # what the exact angle costs against VLFeat's approximation (measured up to ~1e-2)


def _rand(c, h, w, seed):
    return torch.rand(c, h, w, generator=torch.Generator().manual_seed(seed))


# (name, (C,H,W) image): random and natural, grey and RGB, odd sizes, sizes that are not multiples of 8
IMAGES = {
    "random_rgb_37x45": lambda: _rand(3, 37, 45, 0),
    "random_grey_33x50": lambda: _rand(1, 33, 50, 1),
    "random_rgb_16x16": lambda: _rand(3, 16, 16, 2),
    "astronaut_rgb_157x203": lambda: sample_image("astronaut")[:, 101:258, 150:353],
    "chelsea_rgb_300x451": lambda: sample_image("chelsea"),
    "camera_grey_101x99": lambda: sample_image("camera")[:1, 200:301, 180:279],
    "coffee_rgb_64x80": lambda: sample_image("coffee")[:, 100:164, 200:280],
}


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """cyvlfeat loads the system's libgomp beside torch's OpenMP runtime; on a 2-core machine each torch
    parallel region can then cost milliseconds (bench/bench_features.py). One thread has no parallel regions."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def vl():
    cyvlfeat = require_reference("cyvlfeat")
    import cyvlfeat.hog  # noqa: F401
    import cyvlfeat.sift  # noqa: F401
    return cyvlfeat


def _vl_hog(vl, image, cell, bilinear):
    a = np.ascontiguousarray(image.numpy().transpose(1, 2, 0), dtype=np.float32)
    return vl.hog.hog(a, cell, n_orientations=9, variant="UoCTTI", bilinear_interpolation=bilinear)


@pytest.mark.parametrize("path", ["reference", "fused"])  # forward only, or the fused layer used under autograd
@pytest.mark.parametrize("bilinear", [False, True], ids=["HOG", "HOGb"])
@pytest.mark.parametrize("cell", [8, 5])
@pytest.mark.parametrize("name", sorted(IMAGES))
def test_hog_matches_vlfeat(vl, name, cell, bilinear, path):
    image = IMAGES[name]()[None]
    if path == "fused": image.requires_grad_()
    ref = _vl_hog(vl, image[0].detach(), cell, bilinear)
    ours = HOG(cell, bilinear_orientations=bilinear)(image)[0].permute(1, 2, 0).detach().numpy()
    assert ours.shape == ref.shape  # cell counts (H + c/2) // c
    assert ref.max() > 0.1          # a real signal, not two zero arrays
    assert np.abs(ours - ref).max() <= HOG_TOL


@pytest.mark.parametrize("cell", [4, 8, 16])
@pytest.mark.parametrize("num_orientations", range(3, 10))
def test_hog_matches_vlfeat_for_every_orientation_count(vl, num_orientations, cell):
    "HOG and HOGb equal VLFeat for 3..9 orientations on 8-bit photographs, whose 45-degree gradients sit on bin centres for 4 and 8."
    for name in ("camera_grey_101x99", "chelsea_rgb_300x451"):
        image = IMAGES[name]()[None]
        for bilinear in (False, True):
            a = np.ascontiguousarray(image[0].numpy().transpose(1, 2, 0), dtype=np.float32)
            ref = vl.hog.hog(a, cell, n_orientations=num_orientations, variant="UoCTTI", bilinear_interpolation=bilinear)
            hog = HOG(cell, num_orientations=num_orientations, bilinear_orientations=bilinear)
            for x in (image, image.clone().requires_grad_()):   # the reference path and the fused layer
                ours = hog(x)[0].permute(1, 2, 0).detach().numpy()
                assert ours.shape == ref.shape and ref.max() > 0.1
                assert np.abs(ours - ref).max() <= HOG_TOL, (name, bilinear, x.requires_grad)


def test_hog_batch_and_dtype_follow_input(vl):
    images = torch.stack([IMAGES["coffee_rgb_64x80"](), _rand(3, 64, 80, 5)])
    hog = HOG(bilinear_orientations=True)
    out = hog(images)
    for i in range(2):
        ref = _vl_hog(vl, images[i], 8, True)
        assert np.abs(out[i].permute(1, 2, 0).numpy() - ref).max() <= HOG_TOL
    out64 = hog(images.double())
    assert out64.dtype == torch.float64
    # float64 is more exact than VLFeat's float32, mostly where acos is ill-conditioned (near a bin centre)
    assert (out64.float() - out).abs().max() < 5e-4


def test_hog_glyphs_match_vlfeat_render(vl):
    image = IMAGES["astronaut_rgb_157x203"]()
    feats, viz = vl.hog.hog(np.ascontiguousarray(image.numpy().transpose(1, 2, 0)), 8, variant="UoCTTI", visualize=True)
    g = hog_glyphs(torch.from_numpy(feats).permute(2, 0, 1)).numpy()
    # cyvlfeat rescales vl_hog_render's image to [0,255] and truncates to uint8
    ours = ((g - g.min()) * (255 / (g.max() - g.min() + np.finfo(np.float32).eps))).astype(np.uint8)
    assert ours.shape == viz.shape
    assert np.array_equal(ours, viz)


@pytest.mark.parametrize("geometry", [(8, 8), (4, 3), (5, 2)], ids=["b8s8", "b4s3", "b5s2"])
@pytest.mark.parametrize("name", ["random_grey_33x50", "camera_grey_101x99", "chelsea_rgb_300x451", "astronaut_rgb_157x203"])
def test_dsift_matches_vlfeat(vl, name, geometry):
    bin_size, step = geometry
    grey = IMAGES[name]()[:1]
    frames, ref = vl.sift.dsift(np.ascontiguousarray(grey[0].numpy(), dtype=np.float32), step=step, size=bin_size,
                                float_descriptors=True)
    net = DenseSIFT(bin_size, step)
    d = net(grey[None])
    assert d.shape[:2] == (1, 128)
    ours = d[0].reshape(128, -1).T.numpy()                  # (ny*nx, 128), x fastest as VLFeat
    assert ours.shape == ref.shape
    np.testing.assert_array_equal(net.frames(*grey.shape[-2:]).numpy(), frames)
    unsaturated = ref < 255                                  # cyvlfeat stores min(512 d, 255)
    assert np.abs(ours - ref / 512)[unsaturated].max() <= DSIFT_TOL
    assert (512 * ours[~unsaturated] >= 255 - 512 * DSIFT_TOL).all()


def test_dsift_exact_atan2_tolerance(vl):
    """The stated cost of an exact angle: within EXACT_ATAN2_TOL of VLFeat, and measurably not equal."""
    grey = IMAGES["astronaut_rgb_157x203"]()[:1]
    _, ref = vl.sift.dsift(np.ascontiguousarray(grey[0].numpy()), step=3, size=4, float_descriptors=True)
    ours = DenseSIFT(4, 3, fast_atan2=False)(grey[None])[0].reshape(128, -1).T.numpy()
    err = np.abs(ours - ref / 512)[ref < 255].max()
    assert 1e-4 < err <= EXACT_ATAN2_TOL


# --- properties ---------------------------------------------------------------------------------

@pytest.mark.parametrize("bilinear", [False, True], ids=["HOG", "HOGb"])
@pytest.mark.parametrize("size", [(40, 48), (37, 64), (33, 40)])
def test_hog_flip_equivariance(bilinear, size):
    x = _rand(3, *size, 7)[None]
    if bilinear:
        # Natural 8-bit images have many gradients exactly between two bins (g_x = 0 lies between 80 and 100
        # degrees); hard assignment breaks such ties towards the first bin in VLFeat as here, which a flip
        # does not preserve. The bilinear assignment is continuous there, so HOGb stays equivariant.
        x = torch.cat([x, sample_image("rocket")[None, :, :size[0], 100:100 + size[1]]])
    hog = HOG(8, bilinear_orientations=bilinear)
    perm = hog_flip_permutation(9)
    torch.testing.assert_close(hog(x.flip(-1)), hog(x).flip(-1)[:, perm], atol=1e-5, rtol=0)


def test_hog_flip_permutation_other_orientations():
    hog = HOG(6, num_orientations=6)
    x = _rand(1, 30, 36, 8)[None].double()
    torch.testing.assert_close(hog(x.flip(-1)), hog(x).flip(-1)[:, hog_flip_permutation(6)], atol=1e-9, rtol=0)


# --- gradients ----------------------------------------------------------------------------------

@pytest.mark.parametrize("net", [HOG(4), HOG(4, bilinear_orientations=True), DenseSIFT(3, 2),
                                 DenseSIFT(3, 2, fast_atan2=False)], ids=["HOG", "HOGb", "DSIFT", "DSIFT-exact"])
def test_gradcheck_float64(net):
    channels = 1 if isinstance(net, DenseSIFT) else 2
    x = (0.2 + 0.6 * _rand(channels, 13, 11, 11).double())[None].requires_grad_()
    assert torch.autograd.gradcheck(net, (x,), eps=1e-6, atol=1e-5, rtol=1e-3)


@pytest.mark.parametrize("net", [HOG(), HOG(bilinear_orientations=True), DenseSIFT(4, 4), DenseSIFT(4, 4, fast_atan2=False)],
                         ids=["HOG", "HOGb", "DSIFT", "DSIFT-exact"])
@pytest.mark.parametrize("pattern", ["flat", "ramp", "step"])
def test_gradients_finite_where_sqrt_and_atan2_are_singular(net, pattern):
    h, w = 24, 24
    yy, xx = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    if pattern == "flat": x = torch.full((h, w), 0.5)
    elif pattern == "ramp": x = xx / w                      # gradients exactly on bin 0 (acos'(1) is infinite)
    else: x = (xx >= w // 2).float()                        # zero gradient almost everywhere
    x = x[None, None].repeat(1, 1 if isinstance(net, DenseSIFT) else 3, 1, 1).requires_grad_()
    out = net(x)
    assert torch.isfinite(out).all()
    (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
    assert torch.isfinite(x.grad).all()


def test_fused_hog_gradient_equals_autograd_through_the_reference_pipeline():
    # the hand-written backward of the fused layer against autograd through the definition, on a photo crop
    image = sample_image("coffee")[None, :, 40:120, 100:196].double()
    for bilinear in (False, True):
        hog = HOG(8, bilinear_orientations=bilinear)
        a, b = image.clone().requires_grad_(), image.clone().requires_grad_()
        gx, gy = image_gradients(a, hog.derivatives)
        bins = _hog_orientation_bins(gx, gy, _magnitude(gx, gy), hog.directions, bilinear)
        ref = _uoctti_normalize(_pool_cells_sparse(bins, 18, hog.pooling, hog.pool_offset, 8, hog_cell_counts(80, 96, 8)), 9)
        out = hog(b)
        torch.testing.assert_close(out, ref, atol=1e-12, rtol=0)
        probe = torch.linspace(-1, 1, ref.numel(), dtype=ref.dtype).view_as(ref)
        (ref * probe).sum().backward(); (out * probe).sum().backward()
        assert a.grad.abs().max() > 1e-3
        torch.testing.assert_close(b.grad, a.grad, atol=1e-10, rtol=1e-8)


# --- bad input ----------------------------------------------------------------------------------

def test_hog_rejects_image_smaller_than_four_cells():
    with pytest.raises(ValueError, match=r"at least 2x2 cells.*got 11x40"):
        HOG(8)(torch.rand(1, 3, 11, 40))


def test_dsift_rejects_wrong_channel_count():
    with pytest.raises(ValueError, match=r"DenseSIFT expects images of shape \(B,1,H,W\), got \(1, 3,"):
        DenseSIFT()(torch.rand(1, 3, 64, 64))


@pytest.mark.parametrize("net", [HOG(), DenseSIFT()], ids=["HOG", "DSIFT"])
def test_rejects_non_float_image(net):
    with pytest.raises(ValueError, match=r"floating-point image.*got dtype torch.uint8"):
        net(torch.zeros(1, 1, 64, 64, dtype=torch.uint8))


def test_rejects_unbatched_and_too_small():
    with pytest.raises(ValueError, match=r"HOG expects images of shape \(B,C,H,W\), got \(3, 64, 64\)"):
        HOG()(torch.rand(3, 64, 64))
    with pytest.raises(ValueError, match=r"at least 25x25 pixels.*got 24x64"):
        DenseSIFT(8, 8)(torch.rand(1, 1, 24, 64))
