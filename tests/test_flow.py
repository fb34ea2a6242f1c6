"""motion_nbs.flow: file formats against independent readers, warping against OpenCV, properties, bad input."""
import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st
from hypothesis.extra.numpy import arrays

import cv2
import png  # pypng: an independent, pure-Python PNG codec

from motion_nbs.core import read_video_frames, sample_image, sample_video
from motion_nbs.flow import (classes_to_flow, estimate_flow, flow_to_classes, log_flow_magnitude,
                             normalize_flow_log, photometric_error, read_flo, read_kitti_flow, warp,
                             write_flo, write_kitti_flow)

finite = st.floats(-500, 500, allow_nan=False, width=32)


def _flow(h=7, w=9, scale=10.0, seed=0):
    return torch.randn(2, h, w, generator=torch.Generator().manual_seed(seed)) * scale


# --- reference cross-checks -------------------------------------------------------------------

def test_flo_matches_opencv(tmp_path):
    f = _flow()
    write_flo(tmp_path / "ours.flo", f)
    theirs = cv2.readOpticalFlow(str(tmp_path / "ours.flo"))  # OpenCV's own .flo reader, (H,W,2)
    np.testing.assert_array_equal(theirs.transpose(2, 0, 1), f.numpy())
    cv2.writeOpticalFlow(str(tmp_path / "cv.flo"), f.numpy().transpose(1, 2, 0).copy())
    torch.testing.assert_close(read_flo(tmp_path / "cv.flo"), f, rtol=0, atol=0)


def test_kitti_png_layout_read_by_imageio(tmp_path):
    f, valid = _flow(), torch.rand(7, 9, generator=torch.Generator().manual_seed(1)) > 0.5
    write_kitti_flow(tmp_path / "f.png", f, valid)
    w, h, rows, info = png.Reader(filename=str(tmp_path / "f.png")).asDirect()
    assert info["bitdepth"] == 16 and info["planes"] == 3
    rgb = np.vstack([np.asarray(r, np.uint16) for r in rows]).reshape(h, w, 3)  # file order (R,G,B)
    assert rgb.dtype == np.uint16 and rgb.shape == (7, 9, 3)
    np.testing.assert_array_equal(rgb[..., 0], np.round(f[0].double().numpy() * 64 + 2**15).astype(np.uint16))
    np.testing.assert_array_equal(rgb[..., 1], np.round(f[1].double().numpy() * 64 + 2**15).astype(np.uint16))
    np.testing.assert_array_equal(rgb[..., 2], valid.numpy().astype(np.uint16))
    # and a KITTI file written by another tool reads back as flow
    other = np.stack([np.full((2, 3), 2**15 + 64), np.full((2, 3), 2**15 - 32), np.ones((2, 3))], -1).astype(np.uint16)
    png.from_array(other.reshape(2, 9), "RGB;16").save(str(tmp_path / "other.png"))
    g, v = read_kitti_flow(tmp_path / "other.png")
    torch.testing.assert_close(g, torch.stack([torch.ones(2, 3), torch.full((2, 3), -0.5)]))
    assert v.all()


def test_warp_matches_cv2_remap():
    img = sample_image("astronaut")[:, :64, :80]
    f = _flow(64, 80, scale=3.0)
    ours = warp(img, f)
    ys, xs = np.mgrid[0:64, 0:80].astype(np.float32)
    ref = cv2.remap(img.numpy().transpose(1, 2, 0), xs + f[0].numpy(), ys + f[1].numpy(), cv2.INTER_LINEAR,
                    borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    inside = (xs + f[0].numpy() >= 0) & (xs + f[0].numpy() <= 79) & (ys + f[1].numpy() >= 0) & (ys + f[1].numpy() <= 63)
    # OpenCV quantises interpolation weights to 1/32 (INTER_BITS = 5)
    np.testing.assert_allclose(ours.numpy().transpose(1, 2, 0)[inside], ref[inside], atol=1.5 / 32)
    assert np.abs(ours.numpy().transpose(1, 2, 0)[inside] - ref[inside]).mean() < 2e-3


def test_dis_flow_on_real_video_explains_the_second_frame():
    pair = read_video_frames(sample_video("bikes"), [40, 45])
    f = estimate_flow(pair[0], pair[1])
    assert f.shape == (2, 272, 640) and f.dtype == torch.float32
    assert photometric_error(pair[0], pair[1], f) < 0.5 * photometric_error(pair[0], pair[1], torch.zeros_like(f))
    fb = estimate_flow(pair, pair.roll(-1, dims=0))  # batched == one by one
    torch.testing.assert_close(fb[0], f)


# --- properties ------------------------------------------------------------------------------

@settings(max_examples=30, deadline=None)
@given(arrays(np.float32, (2, 3, 4), elements=st.floats(-1e6, 1e6, allow_nan=False, width=32)))
def test_flo_round_trip_is_exact(tmp_path_factory, a):
    p = tmp_path_factory.mktemp("flo") / "f.flo"
    torch.testing.assert_close(read_flo(write_flo(p, torch.from_numpy(a))), torch.from_numpy(a), rtol=0, atol=0)


@settings(max_examples=30, deadline=None)
@given(arrays(np.float32, (2, 4, 5), elements=st.floats(-512.0, 511.875, allow_nan=False, width=32)))
def test_kitti_round_trip_within_half_a_step(tmp_path_factory, a):
    p = tmp_path_factory.mktemp("kitti") / "f.png"
    g, v = read_kitti_flow(write_kitti_flow(p, torch.from_numpy(a)))
    assert float((g - torch.from_numpy(a)).abs().max()) <= 0.5 / 64 + 1e-4 and v.all()


@settings(max_examples=50, deadline=None)
@given(arrays(np.float32, (2, 3, 3), elements=finite))
def test_normalisations_bounded_odd_monotone(a):
    f = torch.from_numpy(a)
    n = normalize_flow_log(f)
    assert n.abs().max() <= 1 and torch.equal(normalize_flow_log(-f), -n)
    order = torch.argsort(f.flatten())
    assert (n.flatten()[order].diff() >= 0).all()
    m = log_flow_magnitude(f)
    assert m.shape == (3, 3) and (m >= 0).all() and (m <= 1).all()
    c = flow_to_classes(f)
    assert c.min() >= 0 and c.max() <= 15
    assert torch.equal(flow_to_classes(classes_to_flow(c)), c)


# --- bad input: one test each ----------------------------------------------------------------

def test_missing_file_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.flo"): read_flo(tmp_path / "missing.flo")
    with pytest.raises(FileNotFoundError, match="missing.png"): read_kitti_flow(tmp_path / "missing.png")


def test_truncated_flo(tmp_path):
    p = write_flo(tmp_path / "t.flo", _flow())
    p.write_bytes(p.read_bytes()[:100])
    with pytest.raises(ValueError, match=r"t\.flo: file has 100 bytes, expected 516.*truncated"): read_flo(p)


def test_wrong_magic(tmp_path):
    p = tmp_path / "x.flo"
    p.write_bytes(np.array([1.0, 2.0, 3.0], "<f4").tobytes())
    with pytest.raises(ValueError, match=r"x\.flo: magic number 1\.0, expected 202021\.25"): read_flo(p)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_flow_refused_by_writers(tmp_path, bad):
    f = _flow()
    f[1, 2, 3] = bad
    with pytest.raises(ValueError, match="NaN or infinite"): write_flo(tmp_path / "a.flo", f)
    with pytest.raises(ValueError, match="NaN or infinite"): write_kitti_flow(tmp_path / "a.png", f)
    assert list(tmp_path.iterdir()) == []  # nothing half-written


def test_frames_of_different_sizes():
    with pytest.raises(ValueError, match=r"frames differ in shape: \(3, 32, 32\) vs \(3, 32, 40\)"):
        estimate_flow(torch.rand(3, 32, 32), torch.rand(3, 32, 40))


def test_8bit_png_refused(tmp_path):
    cv2.imwrite(str(tmp_path / "colour.png"), np.zeros((4, 4, 3), np.uint8))
    with pytest.raises(ValueError, match=r"colour\.png: a KITTI flow PNG must be 16-bit, got uint8"):
        read_kitti_flow(tmp_path / "colour.png")


def test_wrong_channel_png_refused(tmp_path):
    cv2.imwrite(str(tmp_path / "gray16.png"), np.zeros((4, 4), np.uint16))
    with pytest.raises(ValueError, match="has 3 channels"): read_kitti_flow(tmp_path / "gray16.png")


def test_out_of_range_flow_refused_by_kitti_writer(tmp_path):
    with pytest.raises(ValueError, match="outside what KITTI"): write_kitti_flow(tmp_path / "a.png", torch.full((2, 2, 2), -513.0))
