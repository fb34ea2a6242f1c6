"""The synthetic renderer: exact flow (warp, translation, affine faces, label tracking), determinism, DIS, errors."""
import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st

from motion_nbs.data import (CATEGORIES, NUM_FACES, PRESETS, TEXTURES, SceneDataset, render_frame, render_pair,
                             render_scene, sample_scene, scene_seed, warp_error)
from motion_nbs.flow import estimate_flow


@settings(max_examples=8, deadline=None)
@given(preset=st.sampled_from(PRESETS), seed=st.integers(0, 2**40))
def test_warp_reproduces_first_frame(preset, seed):
    err, mask = warp_error(render_scene(preset, seed, size=(128, 128)))
    assert mask.float().mean() > 0.4
    assert err < 0.02


@pytest.mark.parametrize("preset", PRESETS)
def test_same_seed_same_bytes(preset):
    a, b = render_scene(preset, 11, size=(40, 48)), render_scene(preset, 11, size=(40, 48))
    assert a.keys() == b.keys()
    for k in a: assert torch.equal(a[k], b[k]), k
    c = render_scene(preset, 12, size=(40, 48))
    assert not torch.equal(a["image"], c["image"])


@pytest.mark.parametrize("preset", PRESETS)
def test_static_background_flow_is_exactly_zero(preset):
    r = render_scene(preset, 5, size=(48, 48), camera_motion=False)
    bg = r["instances"] == 0
    assert bg.any() and (~bg).any()
    assert (r["flow"][:, bg] == 0).all()
    s = sample_scene(preset, 5, (48, 48), camera_motion=False)
    moved = not (torch.equal(s.rotations[0], s.rotations[1]) and torch.equal(s.translations[0], s.translations[1]))
    assert bool((r["flow"][:, ~bg].norm(dim=0) > 0).any()) == moved   # the objects move, unless all keep still (p_static)


@pytest.mark.parametrize("preset", ["multi_cube", "shapes"])
def test_camera_motion_moves_the_background(preset):
    r = render_scene(preset, 5, size=(48, 48))
    assert r["flow"][:, r["instances"] == 0].abs().max() > 0.1


def _translate_only(scene, shift):
    scene.rotations[1] = scene.rotations[0]
    scene.translations[1] = scene.translations[0]
    scene.translations[1, 1:] += torch.tensor(shift)
    scene.light[1] = scene.light[0]
    return scene


def test_translating_object_perspective_flow_is_projected_translation():
    sc = _translate_only(sample_scene("shapes", 3, size=(64, 64), camera_motion=False), (0.3, -0.2, 0.0))
    r = render_pair(sc)
    obj = r["instances"] > 0
    expected = sc.focal * torch.tensor([0.3, -0.2])[:, None] / r["depth"][obj]  # f·ΔX / Z at fixed depth
    torch.testing.assert_close(r["flow"][:, obj], expected, atol=1e-3, rtol=1e-4)
    assert (r["flow"][:, ~obj] == 0).all()


def test_translating_cube_orthographic_flow_is_constant():
    sc = _translate_only(sample_scene("single_cube", 8, size=(64, 64)), (0.1, 0.05, 0.3))
    r = render_pair(sc)
    obj = r["instances"] == 1
    torch.testing.assert_close(r["flow"][:, obj], (sc.focal * torch.tensor([0.1, 0.05]))[:, None].expand(2, int(obj.sum())),
                               atol=1e-4, rtol=0)
    # a pure translation changes no colour: the warp is exact up to bilinear resampling
    err, _ = warp_error(r)
    assert err < 0.01


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_cube_faces_move_affinely_under_orthographic_projection(seed):
    """Thesis 4.4.2: under orthographic projection each cube face undergoes an affine transformation."""
    r = render_scene("single_cube", seed, size=(96, 96))
    ys, xs = torch.meshgrid(torch.arange(96.), torch.arange(96.), indexing="ij")
    faces = [p for p in r["parts"].unique().tolist() if p > 0 and (r["parts"] == p).sum() > 30]
    assert len(faces) >= 2
    for p in faces:
        m = r["parts"] == p
        A = torch.stack([xs[m], ys[m], torch.ones(int(m.sum()))], 1).double()
        for c in range(2):
            b = r["flow"][c][m].double()
            coef = torch.linalg.lstsq(A, b[:, None]).solution
            assert (A @ coef - b[:, None]).abs().max() < 1e-3


@pytest.mark.parametrize("preset", PRESETS)
def test_flow_carries_labels_to_the_next_frame(preset):
    """Where the point stays visible, the t+1 render shows the same instance and part at p + flow."""
    sc = sample_scene(preset, 21, size=(64, 64))
    r, nxt = render_pair(sc), render_frame(sc, 1)
    ys, xs = torch.meshgrid(torch.arange(64), torch.arange(64), indexing="ij")
    x1 = (xs + r["flow"][0]).round().long().clamp(0, 63)
    y1 = (ys + r["flow"][1]).round().long().clamp(0, 63)
    v = r["visible"]
    assert v.float().mean() > 0.5
    assert (nxt["instances"][y1, x1][v] == r["instances"][v]).all()
    # faces of one object meet without a depth jump, so rounding may cross a face edge there
    assert (nxt["parts"][y1, x1][v] == r["parts"][v]).float().mean() > 0.97
    # and depth: the t+1 depth buffer agrees with the moved point (to the rounding of the pixel)
    assert ((nxt["depth"][y1, x1][v] - r["depth"][v]).abs() < 0.5).float().mean() > 0.99


@pytest.mark.parametrize("preset", PRESETS)
def test_labels(preset):
    for seed in range(4):
        sc = sample_scene(preset, seed, size=(64, 64))
        r = render_pair(sc)
        k = len(sc.kinds) - 1
        assert set(r["instances"].unique().tolist()) <= set(range(k + 1))
        assert torch.equal(r["categories"], sc.kinds[r["instances"]])
        assert torch.equal(r["parts"] == 0, r["instances"] == 0)
        nparts = sum(NUM_FACES[int(c)] for c in sc.kinds[1:])
        assert 0 <= int(r["parts"].min()) and int(r["parts"].max()) <= nparts
        assert 0 <= int(r["textures"].min()) and int(r["textures"].max()) < len(TEXTURES)
        assert r["image"].dtype == r["flow"].dtype == r["depth"].dtype == torch.float32
        assert 0 <= float(r["image"].min()) and float(r["next_image"].max()) <= 1
        assert (r["depth"] > 0).all()
    if preset == "single_cube":
        assert set(r["parts"].unique().tolist()) <= set(range(7))
    if preset == "shapes":  # over a few scenes, every category appears
        cats = set()
        for seed in range(8): cats |= set(render_scene("shapes", seed, size=(32, 32))["categories"].unique().tolist())
        assert cats == set(range(len(CATEGORIES)))


@pytest.mark.parametrize("preset", PRESETS)
def test_flow_size_is_realistic(preset):
    m = torch.cat([render_scene(preset, s, size=(128, 128))["flow"].norm(dim=0).flatten() for s in range(4)])
    assert 0.5 < float(m.quantile(0.9)) and float(m.max()) < 25


@pytest.mark.parametrize("preset", ["single_cube", "multi_cube"])
def test_dis_recovers_the_flow(preset):
    """The scenes are textured enough for a hand-crafted estimator: where things move (exact flow > 0.5 px,
    visible in both frames), OpenCV DIS's error is well below the flow itself (the error of predicting 0)."""
    errs, zero = [], []
    for seed in range(3):
        r = render_scene(preset, seed, size=(128, 128))
        est = estimate_flow(r["image"], r["next_image"], method="dis", preset="medium")
        _, mask = warp_error(r)
        speed = r["flow"].norm(dim=0)
        moving = mask & (speed > 0.5)
        errs.append(float((est - r["flow"]).norm(dim=0)[moving].mean()))
        zero.append(float(speed[moving].mean()))
    assert np.mean(errs) < 0.4 * np.mean(zero), (errs, zero)


def test_scene_dataset_items_are_seeded_renders():
    ds = SceneDataset("multi_cube", 4, seed=9, size=(32, 32))
    assert torch.equal(ds[3]["flow"], render_scene("multi_cube", scene_seed(9, 3), (32, 32))["flow"])
    loader = torch.utils.data.DataLoader(ds, batch_size=2, num_workers=0)
    batches = list(loader)
    assert len(batches) == 2 and batches[1]["image"].shape == (2, 3, 32, 32)
    assert torch.equal(batches[1]["image"][1], ds[3]["image"])
    assert len({scene_seed(s, i) for s in range(20) for i in range(20)}) == 400


def test_unknown_preset_lists_valid_ones():
    with pytest.raises(ValueError, match="valid presets: single_cube, multi_cube, shapes"):
        render_scene("cubes", 0)


@pytest.mark.parametrize("size", [(8, 64), (64,), 64, (64.0, 64), (True, 64), (64, 5000), None])
def test_bad_size(size):
    with pytest.raises(ValueError, match="size must be"):
        render_scene("shapes", 0, size=size)


@pytest.mark.parametrize("seed", [-1, 1.5, "1", None])
def test_bad_seed(seed):
    with pytest.raises(ValueError, match="seed must be a non-negative int"):
        render_scene("shapes", seed)


def test_bad_dataset_arguments():
    with pytest.raises(ValueError, match="length=0; expected an int >= 1"): SceneDataset("shapes", 0)
    with pytest.raises(ValueError, match="valid presets"): SceneDataset("cube", 3)
    with pytest.raises(IndexError, match="out of range"): SceneDataset("shapes", 3)[3]
    with pytest.raises(ValueError, match="camera_motion must be"): render_scene("shapes", 0, camera_motion=1.0)
    with pytest.raises(ValueError, match="time must be 0 or 1"): render_frame(sample_scene("shapes", 0, (32, 32)), 2)
