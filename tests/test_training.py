"""The training stack of chapters 3 and 4 as a user runs it: mixed precision that leaves the sensitive numerics in
float32, no host synchronisation between log lines, fp16 resume, devices that do not exist, and two-process
torchrun runs of `motion_nbs_train` for `motion_nbs.cpfs:train` and `motion_nbs.s3:train` end to end."""
import json
import math
import os
import subprocess
import sys

import papermill as pm
import pytest
import torch
import torch.nn as nn

from conftest import BIN, ROOT

from motion_nbs import learner
from motion_nbs.cpfs import CPFS_LOSSES, CPFSConfig, cosine_kernel, cpfs_loss, flow_classification_loss, load_cpfs, rbf_kernel
from motion_nbs.learner import TrainConfig, fit, load_checkpoint, supervised
from motion_nbs.s3 import affine_fit, affine_loss, entropy_loss, load_s3, rigid_loss, soft_masks

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
NO_CUDA_NAME = "cuda" if not torch.cuda.is_available() else f"cuda:{torch.cuda.device_count()}"


def _bf16(fn, *args, **kwargs):
    with torch.autocast("cpu", torch.bfloat16): return fn(*args, **kwargs)


def _cpfs_inputs(seed=0, B=2, N=96, D=16):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(B, N, D, generator=g), torch.randn(B, N, 2, generator=g) * 8


def _s3_inputs(seed=0, L=4, h=24, w=32):
    g = torch.Generator().manual_seed(seed)
    masks = soft_masks(torch.randn(1, L, h, w, generator=g) * 3, 1.0)
    ys, xs = torch.meshgrid(torch.linspace(-1, 1, h), torch.linspace(-1, 1, w), indexing="ij")
    flow = torch.stack([3 + 2 * xs - ys, 1 + 4 * xs * ys])[None] + 0.3 * torch.randn(1, 2, h, w, generator=g)
    return masks, flow


@pytest.mark.parametrize("sigma", [0.06, 0.3])
def test_kernels_under_bf16_autocast_equal_float32(sigma):
    emb, flow = _cpfs_inputs()
    f = flow / 40
    assert (_bf16(rbf_kernel, f, sigma) - rbf_kernel(f, sigma)).abs().max() < 1e-3
    assert (_bf16(cosine_kernel, emb) - cosine_kernel(emb)).abs().max() < 1e-3
    # what autocast does to the unprotected formula at the thesis' sigma: the kernel's values lie in [0, 1]
    sq = (f * f).sum(-1)
    naive = _bf16(lambda: torch.exp(-(sq[..., :, None] + sq[..., None, :] - 2 * f @ f.transpose(-1, -2)).clamp_min(0) / (2 * sigma**2)))
    if sigma == 0.06: assert (naive.float() - rbf_kernel(f, sigma)).abs().max() > 0.1


@pytest.mark.parametrize("kind", CPFS_LOSSES)
def test_cpfs_losses_under_bf16_autocast_equal_float32(kind):
    emb, flow = _cpfs_inputs(1)
    for e in (emb, emb.bfloat16()):  # float32 inputs, and the bfloat16 embeddings a network gives under autocast
        ref = cpfs_loss(e.float(), flow, kind)
        assert abs(float(_bf16(cpfs_loss, e, flow, kind)) / float(ref) - 1) < 1e-3
    logits = torch.randn(2, 96, 2, 16, generator=torch.Generator().manual_seed(2))
    ref = flow_classification_loss(logits, flow)
    assert abs(float(_bf16(flow_classification_loss, logits.bfloat16(), flow)) / float(flow_classification_loss(logits.bfloat16().float(), flow)) - 1) < 1e-3
    assert abs(float(_bf16(flow_classification_loss, logits, flow)) / float(ref) - 1) < 1e-3


@pytest.mark.parametrize("name, fn", [("affine", affine_loss), ("rigid", rigid_loss), ("entropy", entropy_loss)])
def test_s3_losses_under_bf16_autocast_equal_float32(name, fn):
    masks, flow = _s3_inputs(3)
    ref = fn(masks, flow)
    assert abs(float(_bf16(fn, masks, flow)) / float(ref) - 1) < 1e-3
    assert abs(float(_bf16(fn, masks.bfloat16(), flow)) / float(fn(masks.bfloat16().float(), flow)) - 1) < 1e-3
    if name == "affine":  # the weighted least-squares solution itself
        theta = affine_fit(masks, flow)
        assert ((_bf16(affine_fit, masks, flow) - theta).abs().max() / theta.abs().max()) < 1e-3


class _Data(torch.utils.data.Dataset):
    def __init__(self, n=64):
        g = torch.Generator().manual_seed(0)
        self.x = torch.randn(n, 4, generator=g); self.y = self.x.sum(1, keepdim=True)
    def __len__(self): return len(self.x)
    def __getitem__(self, i): return self.x[i], self.y[i]


def test_no_host_synchronisation_between_log_lines(monkeypatch):
    "The loop reads a tensor's value (a device sync) only when it logs, validates or saves, not at every step."
    reads = []
    for name in ("item", "tolist", "__bool__", "__float__", "__int__"):
        orig = getattr(torch.Tensor, name)
        def counted(self, *a, _orig=orig, **k):
            if sys._getframe(1).f_code.co_filename == learner.__file__: reads.append(sys._getframe(1).f_code.co_name)
            return _orig(self, *a, **k)
        monkeypatch.setattr(torch.Tensor, name, counted)
    fit(nn.Linear(4, 1), _Data(), supervised(nn.MSELoss()), num_iters=40, batch_size=8, log_every=20, progress=False)
    assert 0 < len(reads) <= 2 * 6, reads          # a handful per log line (2 log lines), not one per step (40)
    assert set(reads) <= {"_check_finite", "_log_train", "<listcomp>"}, reads


def test_fp16_run_resumes_bitwise(tmp_path):
    "With fp16 autocast and its gradient scaler, a run interrupted after its step-10 checkpoint resumes onto the same bits."
    def run(out, fail_at=None):
        torch.manual_seed(0)
        net, calls, mse = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 1)), [0], supervised(nn.MSELoss())
        def loss(m, b):
            calls[0] += 1
            if calls[0] == fail_at: raise RuntimeError("killed")
            return mse(m, b)
        fit(net, _Data(), loss, num_iters=20, batch_size=8, lr=1e-2, amp="fp16", checkpoint_every=10, out_dir=str(out), progress=False)
        return net
    whole = run(tmp_path / "a")
    with pytest.raises(RuntimeError, match="killed"): run(tmp_path / "b", fail_at=14)
    assert load_checkpoint(tmp_path / "b" / "last.pt")["scaler"]["scale"] > 0
    resumed = run(tmp_path / "b")
    for p, q in zip(whole.parameters(), resumed.parameters()): assert torch.equal(p, q)


def test_a_device_this_machine_lacks_fails_at_once(tmp_path):
    with pytest.raises(ValueError, match=rf"device='{NO_CUDA_NAME}' is not available on this machine; devices here: cpu"):
        TrainConfig(device=NO_CUDA_NAME)
    with pytest.raises(ValueError, match="is not available on this machine"):
        CPFSConfig.from_preset(device=NO_CUDA_NAME)
    with pytest.raises(pm.PapermillExecutionError, match="devices here: cpu"):
        pm.execute_notebook(ROOT / "nbs" / "03_cpfs_train.ipynb", tmp_path / "bad.ipynb", parameters=dict(device=NO_CUDA_NAME),
                            cwd=ROOT / "nbs", progress_bar=False)
    nb = json.loads((tmp_path / "bad.ipynb").read_text())
    failed = [c for c in nb["cells"] if c["cell_type"] == "code" and any(o.get("output_type") == "error" for o in c.get("outputs", []))]
    assert len(failed) == 1 and "from_preset" in "".join(failed[0]["source"])


def _torchrun(task, out, *args):
    cmd = [str(BIN / "torchrun"), "--standalone", "--nproc_per_node=2", "--no-python", str(BIN / "motion_nbs_train"),
           "--task", task, "--out_dir", str(out), "--progress", "false", "--device", "cpu", *map(str, args)]
    return subprocess.run(cmd, env=ENV, cwd=ROOT, capture_output=True, text=True, timeout=600)


def _check_two_process_run(r, out):
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    summaries = [json.loads(l) for l in r.stdout.splitlines() if l.startswith("{")]
    assert len(summaries) == 1, r.stdout                                 # rank 0 alone prints
    res = json.loads((out / "results.json").read_text())
    assert res["world_size"] == 2 and len(res["weights_sha256"]) == 2 and len(set(res["weights_sha256"])) == 1
    assert sorted(p.name for p in out.iterdir() if p.suffix in (".pt", ".json")) == ["best.pt", "last.pt", "model.pt", "results.json"]
    assert load_checkpoint(out / "last.pt")["config"]["world_size"] == 2
    return summaries[0], res


def test_torchrun_two_processes_cpfs_end_to_end(tmp_path):
    out = tmp_path / "cpfs"
    r = _torchrun("motion_nbs.cpfs:train", out, "--loss", "kta", "--num_iters", 3, "--batch_size", 4, "--image_size", 64,
                  "--num_pixels", 32, "--pool_size", 8, "--num_valid", 4, "--valid_every", 3)
    summary, res = _check_two_process_run(r, out)
    assert summary["steps"] == 3 and summary["out_dir"] == str(out) and 0 <= summary["auc_trained"] <= 1
    assert 0 <= res["auc_random"] <= 1
    model = load_cpfs(out)
    assert model.meta["loss"] == "kta" and model(torch.rand(1, 3, 64, 64), torch.zeros(1, 2, 2, dtype=torch.long)).shape == (1, 2, 16)


def test_torchrun_two_processes_s3_end_to_end(tmp_path):
    out = tmp_path / "s3"
    r = _torchrun("motion_nbs.s3:train", out, "--loss", "affine", "--data", "single_cube", "--num_segments", 3, "--num_iters", 2,
                  "--batch_size", 4, "--image_size", 32, "--pool_size", 8, "--num_valid", 4, "--valid_every", 2)
    summary, res = _check_two_process_run(r, out)
    assert summary["steps"] == 2 and 0 <= summary["test_miou"] <= 1 and res["valid_num_frames"] == 32
    assert load_s3(out)(torch.rand(1, 3, 32, 32)).shape == (1, 3, 32, 32)


@pytest.mark.parametrize("loader, name", [(load_cpfs, "CPFS model"), (load_s3, "S3 model")])
def test_corrupt_model_files_name_the_file(tmp_path, loader, name):
    (tmp_path / "model.pt").write_bytes(b"PK\x03\x04 half a zip")
    with pytest.raises(ValueError, match=rf"model.pt: not a readable {name} file \(corrupt or truncated\?\)"):
        loader(tmp_path)
