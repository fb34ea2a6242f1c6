"""Learner: bit-exact resume after SIGKILL, two-process DDP under torchrun, the command line, checkpoints
that load with weights_only=True, and clear errors for corrupt/foreign checkpoints and changed configurations."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.nn as nn
from hypothesis import given, settings, strategies as st

from conftest import BIN, ROOT

sys.path.insert(0, str(Path(__file__).parent))
import _learner_task  # noqa: E402

from motion_nbs.cli import run_task  # noqa: E402
from motion_nbs.learner import _epoch_indices, fit, load_checkpoint, supervised  # noqa: E402

TASK = f"{Path(__file__).parent / '_learner_task.py'}:train"
MAIN = str(Path(__file__).parent / "_learner_main.py")
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}  # same threads in every run


def _train(out, *args, **popen):
    cmd = [sys.executable, MAIN, "--task", TASK, "--out", str(out), *map(str, args)]
    return subprocess.Popen(cmd, env=ENV, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **popen)


def _weights(path):
    return torch.load(path, weights_only=True)


def _assert_bitwise_equal(a, b):
    assert a.keys() == b.keys()
    for k in a: assert torch.equal(a[k], b[k]), k


def _checkpoint_step(path):
    try: return load_checkpoint(path)["step"]
    except (FileNotFoundError, ValueError): return -1


def test_sigkill_and_resume_is_bitwise_identical(tmp_path):
    steps = 16
    killed = _train(tmp_path / "killed", "--steps", steps, "--sleep", 0.15)
    try:
        # the uninterrupted run, in this process (the two processes' arithmetic is the same: tiny single-threaded ops)
        _learner_task.train(str(tmp_path / "whole"), steps=steps)
        deadline = time.time() + 120
        while _checkpoint_step(tmp_path / "killed" / "last.pt") < 6:
            assert killed.poll() is None, killed.stdout.read()
            assert time.time() < deadline, "no checkpoint appeared"
            time.sleep(0.05)
        killed.send_signal(signal.SIGKILL)
        killed.wait()
    finally:
        if killed.poll() is None: killed.kill()
    assert killed.returncode == -signal.SIGKILL
    stopped_at = load_checkpoint(tmp_path / "killed" / "last.pt")["step"]
    assert 6 <= stopped_at < steps, stopped_at               # it really was interrupted mid-run
    assert not (tmp_path / "killed" / "final_rank0.pt").exists()
    resumed = _train(tmp_path / "killed", "--steps", steps)
    out, _ = resumed.communicate(timeout=120)
    assert resumed.returncode == 0, out
    _assert_bitwise_equal(_weights(tmp_path / "whole" / "final_rank0.pt"), _weights(tmp_path / "killed" / "final_rank0.pt"))
    _assert_bitwise_equal(load_checkpoint(tmp_path / "whole" / "last.pt")["optimizer"]["state"][0],
                          load_checkpoint(tmp_path / "killed" / "last.pt")["optimizer"]["state"][0])
    # the metrics file of the resumed run has no duplicate or lost steps, and the same losses
    def losses(d): return [(r["step"], r["train_loss"]) for r in map(json.loads, (d / "metrics.jsonl").read_text().splitlines()) if "train_loss" in r]
    assert losses(tmp_path / "killed") == losses(tmp_path / "whole")
    assert [s for s, _ in losses(tmp_path / "whole")] == list(range(2, steps + 1, 2))


def test_checkpoint_contents_load_weights_only(tmp_path):
    _learner_task.train(str(tmp_path), steps=4, checkpoint_every=2)
    ckpt = torch.load(tmp_path / "last.pt", weights_only=True)
    assert {"model", "optimizer", "step", "epoch", "batch_in_epoch", "rng", "config"} <= set(ckpt)
    assert (ckpt["step"], ckpt["epoch"], ckpt["batch_in_epoch"]) == (4, 0, 4)        # 48 samples = 6 batches of 8
    assert {k: ckpt["config"][k] for k in ("dropout", "hidden", "noise")} == {"dropout": 0.3, "hidden": 16, "noise": 0.05}
    assert ckpt["config"]["betas"] == [0.9, 0.999] and ckpt["config"]["eps"] == 1e-8 and ckpt["config"]["amp"] == "auto"
    assert {"python", "numpy", "torch", "cuda"} == set(ckpt["rng"][0])
    assert torch.load(tmp_path / "best.pt", weights_only=True)["step"] in (4,)


def test_adam_defaults_are_the_thesis_settings():
    "One step of fit equals one step of torch's Adam with β = (0.9, 0.999), ε = 1e-8, lr = 1e-4, no weight decay."
    torch.manual_seed(0)
    x, y = torch.randn(8, 3), torch.randn(8, 1)
    a = nn.Linear(3, 1)
    b = nn.Linear(3, 1); b.load_state_dict(a.state_dict())
    fit(a, torch.utils.data.TensorDataset(x, y), supervised(nn.MSELoss()), num_iters=1, batch_size=8, progress=False)
    opt = torch.optim.Adam(b.parameters(), lr=1e-4, betas=(0.9, 0.999), eps=1e-8, weight_decay=0)
    idx = _epoch_indices(8, 0, 0, 0, 1)
    nn.MSELoss()(b(x[idx]), y[idx]).backward(); opt.step()
    _assert_bitwise_equal(a.state_dict(), b.state_dict())


def test_validation_does_not_change_training(tmp_path):
    "Validation runs in a forked random state: the trained weights are the same with or without it."
    def run(d, valid):
        torch.manual_seed(0)
        m = nn.Sequential(nn.Linear(6, 8), nn.Dropout(0.5), nn.Linear(8, 1))
        fit(m, _learner_task.Noisy(32, 0), supervised(nn.MSELoss()), out_dir=d, valid_data=_learner_task.Noisy(8, 1) if valid else None,
            num_iters=10, batch_size=8, lr=1e-2, valid_every=3, progress=False)
        return load_checkpoint(d / "last.pt")["model"]
    _assert_bitwise_equal(run(tmp_path / "a", True), run(tmp_path / "b", False))


@settings(max_examples=30, deadline=None)
@given(st.integers(2, 40), st.integers(0, 5), st.sampled_from([1, 2, 4]))
def test_shards_of_a_step_form_the_single_process_batch(n, epoch, world):
    "With W processes and per-process batch b, step k's shards are exactly batch k of a single process (batch W·b)."
    b = 2
    single = _epoch_indices(n, epoch, 7, 0, 1)
    shards = [_epoch_indices(n, epoch, 7, r, world) for r in range(world)]
    steps = min(len(s) for s in shards) // b
    for k in range(steps):
        step = sorted(i for s in shards for i in s[k * b:(k + 1) * b])
        assert step == sorted(single[k * b * world:(k + 1) * b * world])


def test_torchrun_two_processes_agree(tmp_path):
    out = tmp_path / "ddp"
    cmd = [str(BIN / "torchrun"), "--standalone", "--nproc_per_node=2", MAIN, "--task", TASK, "--out", str(out),
           "--steps", "6", "--dropout", "0", "--noise", "0", "--valid_every", "3"]
    r = subprocess.run(cmd, env=ENV, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    w0, w1 = _weights(out / "final_rank0.pt"), _weights(out / "final_rank1.pt")
    _assert_bitwise_equal(w0, w1)
    assert load_checkpoint(out / "last.pt")["config"]["world_size"] == 2
    assert len(load_checkpoint(out / "last.pt")["rng"]) == 2
    # the same run in one process: the two shards of each step form its batch, so the weights agree
    # (without noise and dropout, which draw from each process's own generator)
    _learner_task.train(str(tmp_path / "single"), steps=6, dropout=0.0, noise=0.0, valid_every=3)
    single = _weights(tmp_path / "single" / "final_rank0.pt")
    for k in w0: torch.testing.assert_close(w0[k], single[k], rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="world_size was 2 in the checkpoint, now 1"):
        _learner_task.train(str(out), steps=8, dropout=0.0, noise=0.0, valid_every=3)


def test_cli_passes_parameters_and_rejects_bad_ones(tmp_path, capsys):
    summary = run_task(["--task", TASK, "--out", str(tmp_path), "--steps", "4", "--lr=0.001", "--dropout", "0"])
    assert summary["steps"] == 4 and load_checkpoint(tmp_path / "last.pt")["config"]["lr"] == 0.001
    with pytest.raises(ValueError, match="unknown parameter --stpes for _learner_task.train; valid: --out, --steps"):
        run_task(["--task", TASK, "--out", str(tmp_path), "--stpes", "4"])
    with pytest.raises(ValueError, match="--steps: expected a int like 12, got '4.5'"):
        run_task(["--task", TASK, "--out", str(tmp_path), "--steps", "4.5"])
    with pytest.raises(FileNotFoundError, match="task file .*nope.py does not exist"):
        run_task(["--task", str(tmp_path / "nope.py") + ":train"])
    run_task(["--task", TASK, "--help"])
    assert "sleep: float = 0.0" in capsys.readouterr().out


def test_console_command_exits_zero_with_a_summary(tmp_path):
    "The installed `motion_nbs_train` returns status 0 after a successful run and prints one JSON line, no tensors."
    r = subprocess.run([str(BIN / "motion_nbs_train"), "--task", TASK, "--out", str(tmp_path), "--steps", "4"], env=ENV, cwd=ROOT,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    summary = json.loads(r.stdout.strip().splitlines()[-1])
    assert summary["steps"] == 4 and summary["out_dir"] == str(tmp_path) and summary["device"] == "cpu"
    assert "tensor" not in r.stdout + r.stderr


def test_corrupt_checkpoint(tmp_path):
    _learner_task.train(str(tmp_path), steps=4)
    data = (tmp_path / "last.pt").read_bytes()
    (tmp_path / "last.pt").write_bytes(data[: len(data) // 2])  # e.g. a copy cut short
    with pytest.raises(ValueError, match=f"{tmp_path / 'last.pt'}: not a readable checkpoint"):
        _learner_task.train(str(tmp_path), steps=6)


def test_foreign_checkpoint(tmp_path):
    torch.save(nn.Linear(6, 1).state_dict(), tmp_path / "last.pt")  # someone else's file under our name
    with pytest.raises(ValueError, match="last.pt: not a motion_nbs training checkpoint: expected format 'motion_nbs.fit/2', found None"):
        _learner_task.train(str(tmp_path), steps=4)
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        fit(nn.Linear(6, 1), _learner_task.Noisy(16, 0), supervised(nn.MSELoss()), resume=tmp_path / "missing.pt", batch_size=8, progress=False)


def test_resume_with_a_different_configuration(tmp_path):
    _learner_task.train(str(tmp_path), steps=4, hidden=16)
    with pytest.raises(ValueError, match=r"last.pt: cannot resume with a different configuration: dropout was 0.3 in the checkpoint, now 0.1"):
        _learner_task.train(str(tmp_path), steps=6, dropout=0.1)
    with pytest.raises(ValueError, match="lr was 0.01 in the checkpoint, now 0.02"):
        _learner_task.train(str(tmp_path), steps=6, lr=0.02)
    # a different architecture under the same configuration: the weights do not fit
    saved = {k: v for k, v in load_checkpoint(tmp_path / "last.pt")["config"].items() if k not in ("world_size", "train_size")}
    with pytest.raises(ValueError, match="last.pt: the weights do not fit Sequential"):
        fit(nn.Sequential(nn.Linear(6, 3)), _learner_task.Noisy(48, 0), supervised(nn.MSELoss()), _learner_task.Noisy(16, 1),
            _learner_task.TaskConfig(**saved), num_iters=6)


def test_bad_fit_arguments():
    data = _learner_task.Noisy(4, 0)
    with pytest.raises(ValueError, match="the training set has 4 samples, fewer than one batch of 8"):
        fit(nn.Linear(6, 1), data, supervised(nn.MSELoss()), batch_size=8, progress=False)
    with pytest.raises(ValueError, match="needs a map-style dataset"):
        fit(nn.Linear(6, 1), iter([]), supervised(nn.MSELoss()), batch_size=8, progress=False)
    with pytest.raises(FloatingPointError, match="the loss is nan at step 1"):
        fit(nn.Linear(6, 1), data, lambda m, b: m(b[0]).sum() * float("nan"), batch_size=2, progress=False)
