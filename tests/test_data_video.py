"""Real-video pairs, the shard builder (kill and resume, job arrays), FlowPairDataset, paired augmentation."""
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import time

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st

from conftest import ROOT
from motion_nbs.core import sample_image, sample_video
from motion_nbs.data import (FlowPairDataset, PairedAugment, encode_flow_pair, flow_pair_stream, paired_crop,
                             paired_hflip, paired_resize, video_frame_pairs)
from motion_nbs.flow import warp

SCRIPT = ROOT / "data_scripts" / "build_flow_dataset.py"
CUTS = [29, 75, 136, 186, 241]


def build(out, *extra, videos=("bikes", "carphone", "bigbuckbunny")):
    args = [sys.executable, str(SCRIPT), *[str(sample_video(v)) for v in videos], "--out", str(out),
            "--videos-per-shard", "1", "--pairs-per-video", "2", "--preset", "ultrafast", "--workers", "1", *extra]
    return subprocess.run(args, capture_output=True, text=True, check=True)


def shard_bytes(folder):
    return {p.name: p.read_bytes() for p in sorted(folder.glob("*.tar"))}


@pytest.fixture(scope="module")
def reference_build(tmp_path_factory):
    out = tmp_path_factory.mktemp("ref")
    build(out)
    return out


# --- video pairs ------------------------------------------------------------------------------

def test_pairs_never_span_a_cut_and_are_seeded():
    for seed in range(3):
        pairs = video_frame_pairs(sample_video("bikes"), gap=5, num_pairs=8, seed=seed, cuts=CUTS)
        assert len(pairs) == 8
        for p in pairs:
            assert not any(p["t"] <= c < p["t"] + 5 for c in CUTS)
            assert p["image"].shape == (3, 272, 640) and p["next_image"].shape == (3, 272, 640)
    a = video_frame_pairs(sample_video("carphone"), num_pairs=4, seed=7)
    b = video_frame_pairs(sample_video("carphone"), num_pairs=4, seed=7)
    assert [p["t"] for p in a] == [p["t"] for p in b] and torch.equal(a[0]["image"], b[0]["image"])


def test_unreadable_and_empty_videos(tmp_path):
    (tmp_path / "junk.mp4").write_bytes(b"this is not a video" * 100)
    (tmp_path / "empty.mp4").write_bytes(b"")
    for name in ("junk.mp4", "empty.mp4"):
        with pytest.raises(ValueError, match=name):
            video_frame_pairs(tmp_path / name)


def test_video_shorter_than_gap():
    with pytest.raises(ValueError, match=r"carphone_pristine\.mp4: the video has 120 frames, too short for pairs 120"):
        video_frame_pairs(sample_video("carphone"), gap=120)


# --- the builder ------------------------------------------------------------------------------

def test_builder_output_and_dataset(reference_build):
    shards = sorted(reference_build.glob("*.tar"))
    assert [p.name for p in shards] == ["pairs-000000.tar", "pairs-000001.tar", "pairs-000002.tar"]
    assert not list(reference_build.glob(".*tmp"))
    ds = FlowPairDataset(reference_build)
    assert len(ds) == 6
    s = ds[0]
    assert s["image"].shape[0] == 3 and s["flow"].shape[0] == 2 and s["image"].shape[-2:] == s["flow"].shape[-2:]
    assert s["meta"]["gap"] == 5 and s["meta"]["method"] == "dis" and s["meta"]["source"] == "bigbuckbunny.mp4"
    streamed = list(flow_pair_stream([str(p) for p in shards]))
    assert [x["meta"]["key"] for x in streamed] == [ds[i]["meta"]["key"] for i in range(len(ds))]
    assert all(torch.equal(x["flow"], ds[i]["flow"]) for i, x in enumerate(streamed))


def test_killed_build_resumes_to_identical_shards(reference_build, tmp_path):
    out = tmp_path / "killed"
    args = [sys.executable, str(SCRIPT), *[str(sample_video(v)) for v in ("bikes", "carphone", "bigbuckbunny")],
            "--out", str(out), "--videos-per-shard", "1", "--pairs-per-video", "2", "--preset", "ultrafast", "--workers", "1"]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not (out / "pairs-000000.tar").exists() and proc.poll() is None and time.time() < deadline: time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert (out / "pairs-000000.tar").exists()
    assert len(list(out.glob("*.tar"))) < 3, "the build finished before it could be killed"
    done = build(out)
    assert '"shards_skipped": ' in done.stdout and '"shards_skipped": 0' not in done.stdout
    assert shard_bytes(out) == shard_bytes(reference_build)
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]  # no temporary left behind


def test_a_failed_video_leaves_its_shard_unwritten_and_is_retried(tmp_path):
    "An unreadable video: exit status 1, its shard not written (not marked complete), the others kept; fixed, the rerun builds it."
    videos = tmp_path / "videos"; videos.mkdir()
    shutil.copy(sample_video("carphone"), videos / "a.mp4")
    (videos / "b.mp4").write_bytes(b"not a video" * 50)
    out = tmp_path / "out"
    args = [sys.executable, str(SCRIPT), str(videos), "--out", str(out), "--videos-per-shard", "1", "--pairs-per-video", "2",
            "--preset", "ultrafast", "--workers", "1"]
    r = subprocess.run(args, capture_output=True, text=True)
    assert r.returncode == 1 and "b.mp4" in r.stderr and "pairs-000001.tar" in r.stderr
    summary = json.loads(r.stdout.strip().splitlines()[-1])
    assert summary["shards_failed"] == ["pairs-000001.tar"] and summary["pairs_per_video"] == {"a.mp4": 2, "b.mp4": 0}
    assert sorted(p.name for p in out.glob("*.tar")) == ["pairs-000000.tar"]
    shutil.copy(sample_video("carphone"), videos / "b.mp4")           # fixed
    r = subprocess.run(args, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    summary = json.loads(r.stdout.strip().splitlines()[-1])
    assert summary["shards_written"] == 1 and summary["shards_skipped"] == 1 and summary["pairs_per_video"] == {"b.mp4": 2}
    assert len(FlowPairDataset(out)) == 4


def test_job_array_split_covers_the_same_shards(reference_build, tmp_path):
    out = tmp_path / "array"
    build(out, "--shard-index", "0", "--num-shards", "2")
    assert sorted(shard_bytes(out)) == ["pairs-000000.tar", "pairs-000002.tar"]
    build(out, "--shard-index", "1", "--num-shards", "2", "--workers", "2")
    assert shard_bytes(out) == shard_bytes(reference_build)


def test_output_folder_not_creatable(tmp_path):
    (tmp_path / "file").write_text("x")
    r = subprocess.run([sys.executable, str(SCRIPT), str(sample_video("carphone")), "--out", str(tmp_path / "file" / "sub")],
                       capture_output=True, text=True)
    assert r.returncode != 0 and "cannot create the output folder" in r.stderr


def test_output_folder_not_writable(tmp_path, monkeypatch):
    sys.path.insert(0, str(SCRIPT.parent))
    import build_flow_dataset
    monkeypatch.setattr(build_flow_dataset.os, "access", lambda *a: False)  # root ignores chmod, so pretend
    with pytest.raises(SystemExit, match="is not writable"):
        build_flow_dataset.main([str(sample_video("carphone")), "--out", str(tmp_path)])


def test_corrupt_shard_member(tmp_path):
    members = encode_flow_pair(sample_image("coffee")[:, :32, :32], torch.zeros(2, 32, 32), {"t": 0})
    members["flow.png"] = members["flow.png"][:40]  # truncated PNG
    with tarfile.open(tmp_path / "bad-000000.tar", "w") as tf:
        for ext, data in members.items():
            info = tarfile.TarInfo(f"k0.{ext}"); info.size = len(data)
            import io
            tf.addfile(info, io.BytesIO(data))
    ds = FlowPairDataset(tmp_path)
    with pytest.raises(ValueError, match=r"bad-000000\.tar/k0\.flow\.png: corrupt PNG"): ds[0]
    (tmp_path / "bad-000000.tar").write_bytes(b"\0garbage" * 10)
    with pytest.raises(ValueError, match="not a readable tar shard"): FlowPairDataset(tmp_path)


def test_folder_of_files(tmp_path):
    img = sample_image("coffee")[:, :40, :48]
    for k in range(3):
        for ext, data in encode_flow_pair(img, torch.full((2, 40, 48), float(k)), {"t": k}).items():
            (tmp_path / f"key{k}.{ext}").write_bytes(data)
    (tmp_path / "orphan.jpg").write_bytes(b"")  # incomplete pair: ignored
    ds = FlowPairDataset(tmp_path)
    assert len(ds) == 3 and [ds[i]["meta"]["t"] for i in range(3)] == [0, 1, 2]
    assert float(ds[2]["flow"].mean()) == 2.0
    with pytest.raises(ValueError, match="no complete flow pairs"): FlowPairDataset(tmp_path / "..")


# --- paired augmentation ----------------------------------------------------------------------

def _sample(h=40, w=56, seed=0):
    g = torch.Generator().manual_seed(seed)
    return dict(image=torch.rand(3, h, w, generator=g), flow=torch.randn(2, h, w, generator=g) * 3,
                instances=torch.randint(0, 5, (h, w), generator=g), valid=torch.rand(h, w, generator=g) > 0.5)


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 10_000), st.integers(8, 48), st.integers(8, 48))
def test_augmentation_properties(seed, h, w):
    s = _sample(h, w, seed)
    assert all(torch.equal(paired_hflip(paired_hflip(s))[k], s[k]) for k in s)
    a = PairedAugment(crop_size=8, flip=True)(s, torch.Generator().manual_seed(seed))
    assert a["image"].shape == (3, 8, 8) and a["flow"].shape == (2, 8, 8)
    assert a["instances"].dtype == torch.long and set(a["instances"].unique().tolist()) <= set(s["instances"].unique().tolist())
    assert a["valid"].dtype == torch.bool and a["image"].min() >= 0 and a["image"].max() <= 1
    b = PairedAugment(crop_size=8, flip=True, colour=False)(s, torch.Generator().manual_seed(seed))
    assert torch.equal(a["flow"], b["flow"]) and torch.equal(a["instances"], b["instances"])


@pytest.mark.parametrize("scale", [0.5, 1.5, 2.0])
def test_resize_scales_flow(scale):
    c = torch.ones(2, 20, 30) * torch.tensor([1.0, -3.0]).view(2, 1, 1)
    r = paired_resize(dict(image=torch.rand(3, 20, 30), flow=c), (int(20 * scale), int(30 * scale)))
    torch.testing.assert_close(r["flow"], torch.ones_like(r["flow"]) * torch.tensor([scale, -3 * scale]).view(2, 1, 1))


def test_augmented_flow_still_explains_the_next_frame():
    img = sample_image("astronaut")[:, 100:260, 120:280]
    nxt = torch.roll(img, shifts=(2, -3), dims=(1, 2))  # content moves 3 px left and 2 px down
    flow = torch.ones(2, 160, 160) * torch.tensor([-3.0, 2.0]).view(2, 1, 1)
    aug = PairedAugment(crop_size=96, colour=False)
    for seed in range(4):
        a = aug(dict(image=img, next_image=nxt, flow=flow), torch.Generator().manual_seed(seed))
        err = (warp(a["next_image"], a["flow"]) - a["image"]).abs()[:, 8:-8, 8:-8].mean()
        assert err < 0.02, f"seed {seed}: augmented flow does not match the augmented frames ({err:.3f})"


def test_crop_larger_than_image():
    with pytest.raises(ValueError, match="crop 64x64 is larger than the image 40x56"): paired_crop(_sample(), 0, 0, 64, 64)
    with pytest.raises(ValueError, match="scale must satisfy"): PairedAugment(scale=(0.5, 1.5))


# --- training on shards -----------------------------------------------------------------------

def test_cpfs_on_shards_validates_on_heldout_shards(reference_build, tmp_path):
    "CPFS training on a shard folder holds out the last shard for validation (cached centre crops) and trains on the rest."
    from motion_nbs.cpfs import CPFSConfig, train, train_data
    from motion_nbs.data import split_heldout
    ds = FlowPairDataset(reference_build)
    tr, va = split_heldout(ds, 2)
    assert {ds.items[i][0] for i in va.indices} == {str(reference_build / "pairs-000002.tar")}
    assert not {ds.items[i][0] for i in tr.indices} & {ds.items[i][0] for i in va.indices} and len(tr) == 4
    cfg = CPFSConfig.from_preset(data=str(reference_build), num_valid=2, image_size=64, num_pixels=16, num_iters=2, batch_size=2,
                                 out_dir=str(tmp_path / "run"), progress=False)
    train_ds, valid_ds = train_data(cfg)
    assert len(train_ds) == 4 and valid_ds.base.indices == va.indices and sorted(valid_ds.cache) == [0, 1]
    assert valid_ds[0]["image"].shape == (3, 64, 64) and valid_ds[1]["flow"].shape == (2, 64, 64)
    res = train(cfg)
    assert res["steps"] == 2 and res["best_valid_loss"] is not None and (tmp_path / "run" / "model.pt").exists()
