# %%
#| default_exp learner

# %% [markdown]
# # Learner
#
# > One training loop for every experiment: Adam with the thesis' settings, validation and early
# > stopping, atomic checkpoints with bit-exact resume, metrics files, DDP under `torchrun`, and a
# > command line.

# %% [markdown]
# Every model of the book is trained the same way (section 3.3.3): Adam with $\beta_1 = 0.9$,
# $\beta_2 = 0.999$, $\epsilon = 10^{-8}$, an initial learning rate of $10^{-4}$ and no weight decay
# ("it resulted in our model reaching a worse local minima before overfitting started"), with early
# stopping on a validation loss because the networks overfit the self-supervised task (section 3.3.2).
# `fit` does that for any model and any loss. The runs of the thesis took weeks, so a run must survive
# being killed: `fit` writes a checkpoint every few steps — weights, optimiser, step, the position in
# the data and every random number generator's state — and a restarted run continues *bit for bit* as
# if it had never stopped.

# %%
#| export
import argparse
import ast
import importlib
import importlib.util
import inspect
import json
import math
import os
import random
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler
from tqdm.auto import tqdm

from motion_nbs.core import atomic_save, atomic_write, seed_everything

# %%
#| hide
import tempfile

from fastcore.test import test_eq, test_fail, test_close


# %% [markdown]
# ## Random state
#
# Dropout, augmentation and pixel sampling draw from the global generators of Python, NumPy and torch
# (CPU and CUDA). A checkpoint stores all of them as plain Python values and tensors, so that it loads
# with `torch.load(..., weights_only=True)`.

# %%
#| exporti
def _rng_state() -> dict:
    np_state = np.random.get_state()
    return {"python": random.getstate(), "torch": torch.get_rng_state(),
            "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]],
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}

def _set_rng_state(state: dict):
    v, internal, gauss = state["python"]
    random.setstate((v, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available(): torch.cuda.set_rng_state_all(state["cuda"])


# %%
seed_everything(3)
_s = _rng_state()
_a = (random.random(), np.random.rand(), torch.rand(1).item())
with tempfile.TemporaryDirectory() as _tmp:
    atomic_save(_s, Path(_tmp) / "rng.pt")
    _set_rng_state(torch.load(Path(_tmp) / "rng.pt", weights_only=True))
test_eq((random.random(), np.random.rand(), torch.rand(1).item()), _a)


# %% [markdown]
# ## Where the data stands
#
# A resumed run must see the same batches in the same order as an uninterrupted one. The order of
# epoch $e$ is a permutation drawn from `seed` and $e$ alone (by `DistributedSampler`, which also
# splits it among processes), so the position in the data is two integers, the epoch and the number
# of batches already taken from it. Resuming re-creates the permutation and skips the batches
# already seen, without loading them. Each process reads `batch_size / world_size` samples, so with
# two processes the two shards of a step together are exactly the batch one process would read.
#
# The data is a map-style dataset (length and indexing). If it has a `set_epoch(epoch)` method, `fit`
# calls it at the start of every epoch (for augmentation keyed on the epoch). Random augmentation that
# draws from the global generators is reproduced exactly with `num_workers=0`; with worker processes,
# the workers' generators are seeded from `(seed, epoch)`, and augmentation should depend only on the
# sample index and epoch for a resumed run to match.

# %%
#| exporti
class _ListSampler(Sampler):
    "Yields a fixed list of indices."
    def __init__(self, indices): self.indices = list(indices)
    def __iter__(self): return iter(self.indices)
    def __len__(self): return len(self.indices)

def _epoch_indices(n: int, epoch: int, seed: int, rank: int, world: int, shuffle: bool = True) -> list:
    "This process's sample order for one epoch (the same on every run with the same arguments)."
    sampler = DistributedSampler(range(n), num_replicas=world, rank=rank, shuffle=shuffle, seed=seed, drop_last=True)
    sampler.set_epoch(epoch)
    return list(sampler)

def _epoch_loader(data, epoch, skip_batches, seed, rank, world, per_rank, num_workers, collate_fn):
    "A DataLoader over one epoch of `data`, starting after `skip_batches` batches."
    if hasattr(data, "set_epoch"): data.set_epoch(epoch)
    idx = _epoch_indices(len(data), epoch, seed, rank, world)
    idx = idx[: len(idx) // per_rank * per_rank][skip_batches * per_rank:]
    # an explicit generator: creating the loader's iterator must not draw from the global generator
    g = torch.Generator().manual_seed(seed * 100_003 + epoch)
    return DataLoader(data, batch_size=per_rank, sampler=_ListSampler(idx), drop_last=True, num_workers=num_workers,
                      collate_fn=collate_fn, generator=g)


# %%
_i0 = _epoch_indices(10, 0, seed=1, rank=0, world=1)
test_eq(sorted(_i0), list(range(10)))
test_eq(_epoch_indices(10, 0, seed=1, rank=0, world=1), _i0)               # same seed, epoch: same order
assert _epoch_indices(10, 1, seed=1, rank=0, world=1) != _i0               # next epoch: new order
test_eq(_epoch_indices(10, 0, 1, 0, 2) + _epoch_indices(10, 0, 1, 1, 2), _i0[0::2] + _i0[1::2])
_dl = _epoch_loader(torch.arange(10.0), 0, 2, seed=1, rank=0, world=1, per_rank=3, num_workers=0, collate_fn=None)
test_eq([b.tolist() for b in _dl], [[float(i) for i in _i0[6:9]]])          # batches 0 and 1 skipped


# %% [markdown]
# ## Checkpoints
#
# A checkpoint is a dictionary of plain values and state dicts, written with `atomic_save` (complete
# or absent, whatever kills the process). `load_checkpoint` refuses, with the file's name, a file that
# is missing, unreadable, or not one of ours.

# %%
#| exporti
def _load_model_state(model, state, path):
    try: model.load_state_dict(state)
    except (RuntimeError, TypeError, AttributeError) as e:
        raise ValueError(f"{path}: the weights do not fit {type(model).__name__}: {str(e)[:400]}") from None


# %%
#| export
CHECKPOINT_FORMAT = "motion_nbs.fit/1"
LR_SCHEDULES = {"constant": lambda t: 1.0,   # factor of the learning rate at the fraction t of `max_steps` done
                "cosine": lambda t: 0.5 * (1 + math.cos(math.pi * t))}

def load_checkpoint(path  # a checkpoint written by `fit`
                   ) -> dict:
    "Read a `fit` checkpoint (weights-only unpickling) and check its format."
    path = Path(path)
    if not path.is_file(): raise FileNotFoundError(f"no checkpoint at {path}")
    try: ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ValueError(f"{path}: not a readable checkpoint (corrupt or truncated?): {type(e).__name__}: {str(e)[:200]}") from None
    found = ckpt.get("format") if isinstance(ckpt, dict) else type(ckpt).__name__
    if found != CHECKPOINT_FORMAT:
        raise ValueError(f"{path}: not a motion_nbs training checkpoint: expected format {CHECKPOINT_FORMAT!r}, found {found!r}")
    return ckpt

def load_weights(model: nn.Module,  # the model to fill
                 path  # a `fit` checkpoint (`last.pt`, `best.pt`) or a plain state dict file
                ) -> nn.Module:
    "Load the weights stored in `path` into `model` (strict), with errors naming the file."
    path = Path(path)
    if not path.is_file(): raise FileNotFoundError(f"no weights file at {path}")
    try: state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e: raise ValueError(f"{path}: not a readable weights file: {type(e).__name__}: {str(e)[:200]}") from None
    if isinstance(state, dict) and state.get("format") == CHECKPOINT_FORMAT: state = state["model"]
    _load_model_state(model, state, path)
    return model


# %%
with tempfile.TemporaryDirectory() as _tmp:
    _tmp = Path(_tmp)
    (_tmp / "garbage.pt").write_bytes(b"not a checkpoint")
    test_fail(lambda: load_checkpoint(_tmp / "garbage.pt"), contains="garbage.pt: not a readable checkpoint")
    torch.save(nn.Linear(2, 2).state_dict(), _tmp / "plain.pt")
    test_fail(lambda: load_checkpoint(_tmp / "plain.pt"), contains="expected format 'motion_nbs.fit/1', found None")
    test_fail(lambda: load_checkpoint(_tmp / "none.pt"), contains="none.pt")
    test_fail(lambda: load_weights(nn.Linear(3, 2), _tmp / "plain.pt"), contains="plain.pt: the weights do not fit Linear")
    _lin = load_weights(nn.Linear(2, 2), _tmp / "plain.pt")


# %% [markdown]
# ## Distributed runs
#
# Under `torchrun`, every process runs the same script; `fit` wraps the model in
# `DistributedDataParallel` (gradients are averaged across processes after each backward pass),
# gives each process its shard of each batch, and lets rank 0 alone write checkpoints, metrics and the
# progress bar. The loss function receives the wrapped model and must call it (`model(x)`), so that
# DDP sees the forward pass. `init_distributed` starts the process group from torchrun's environment
# (NCCL on GPUs, gloo on CPUs); without torchrun it does nothing.

# %%
#| export
def init_distributed() -> bool:
    "Join the process group described by torchrun's environment variables; True if distributed."
    if dist.is_available() and dist.is_initialized(): return True
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1: return False
    cuda = torch.cuda.is_available()
    if cuda: torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group("nccl" if cuda else "gloo")
    return True


# %%
#| exporti
def _world() -> tuple:
    if dist.is_available() and dist.is_initialized(): return dist.get_rank(), dist.get_world_size()
    return 0, 1

def _all_mean(values: list, device) -> list:
    "Mean of each value over processes (values unchanged when not distributed)."
    if _world()[1] == 1: return values
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return (t / _world()[1]).tolist()

def _all_gather(obj) -> list:
    if _world()[1] == 1: return [obj]
    out = [None] * _world()[1]
    dist.all_gather_object(out, obj)
    return out

def _to_device(batch, device):
    if torch.is_tensor(batch): return batch.to(device, non_blocking=True)
    if isinstance(batch, dict): return {k: _to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)): return type(batch)(_to_device(v, device) for v in batch)
    return batch

def _batch_len(batch) -> int:
    if torch.is_tensor(batch): return batch.shape[0]
    if isinstance(batch, dict): return _batch_len(next(iter(batch.values())))
    if isinstance(batch, (list, tuple)): return _batch_len(batch[0])
    raise ValueError(f"cannot tell the batch size of a {type(batch).__name__}")


# %% [markdown]
# ## Losses
#
# A loss function takes the model and a batch and returns the scalar loss, or a dictionary with the
# loss under `"loss"` and other numbers to log. This form fits every experiment of the book (CPFS
# needs the flow and sampled pixels, S3 the flow and masks); `supervised` adapts an ordinary
# `loss(output, target)` criterion for `(input, target)` batches.

# %%
#| export
def supervised(criterion  # e.g. `nn.CrossEntropyLoss()`: criterion(model(x), y) -> scalar
              ):
    "A `fit` loss function for `(input, target)` batches."
    def loss_fn(model, batch):
        x, y = batch
        return criterion(model(x), y)
    return loss_fn


# %%
#| exporti
def _split_loss(out) -> tuple:
    if isinstance(out, dict):
        if "loss" not in out: raise ValueError(f"a loss function returning a dict must include 'loss'; got keys {list(out)}")
        return out["loss"], {k: float(v) for k, v in out.items() if k != "loss"}
    return out, {}


# %%
_m = nn.Linear(2, 1, bias=False); nn.init.ones_(_m.weight)
test_eq(supervised(nn.MSELoss())(_m, (torch.tensor([[1.0, 2.0]]), torch.tensor([[1.0]]))).item(), 4.0)
test_eq(_split_loss({"loss": torch.tensor(1.0), "acc": torch.tensor(0.5)})[1], {"acc": 0.5})
test_fail(lambda: _split_loss({"acc": 1}), contains="must include 'loss'")

# %% [markdown]
# ## The loop: `fit`
#
# Per step: one batch, one Adam step; every `valid_every` steps the mean validation loss (under a fixed
# seed, in a forked random state, so that validating changes nothing in the training run), early
# stopping when it has not improved for `patience` validations (the best weights are kept in
# `best.pt`, or in memory without an `out_dir`, and restored at the end), a checkpoint `last.pt` every
# `checkpoint_every` steps and at the
# end, and a line of metrics in `metrics.jsonl` every `log_every` steps and at each validation.
#
# `config` holds the experiment's parameters. It is stored in the checkpoint with `fit`'s own
# settings (batch size, learning rate, seed, number of processes, ...); resuming with different values
# is an error that names the file, the parameter and both values. `max_steps` may change, so a
# finished run can be extended. A run that finished is not repeated: calling `fit` again with the
# same `out_dir` loads the result (a rerun notebook returns at once).

# %%
#| exporti
_CHECKED = ("batch_size", "lr", "betas", "eps", "weight_decay", "seed", "world_size", "valid_every", "patience", "train_size")

def _check_config(path, saved: dict, current: dict):
    for k in sorted(set(saved) | set(current)):
        if k in ("max_steps",): continue
        a, b = saved.get(k, "<absent>"), current.get(k, "<absent>")
        if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)): a, b = list(a), list(b)
        if a != b:
            raise ValueError(f"{path}: cannot resume with a different configuration: {k} was {a!r} in the checkpoint, now {b!r} "
                             f"(use another out_dir, or resume=False to start over)")

def _read_metrics(path: Path, max_step: int) -> list:
    "Lines of a metrics file up to `max_step` (a killed run may have logged past its last checkpoint)."
    if not path.exists(): return []
    out = []
    for line in path.read_text().splitlines():
        try: rec = json.loads(line)
        except json.JSONDecodeError: continue  # a line cut short by a kill
        if rec.get("step", 0) <= max_step: out.append(rec)
    return out

def _jsonable(v):
    return list(v) if isinstance(v, tuple) else v


# %%
#| export
def fit(model: nn.Module,  # the model (its device is used unless `device` is given; on GPUs under torchrun, cuda:LOCAL_RANK)
        train_data: Dataset,  # a map-style dataset (len + indexing)
        loss_fn,  # loss_fn(model, batch) -> scalar loss, or {"loss": ..., other metrics}
        out_dir=None,  # where last.pt, best.pt and metrics.jsonl go (None: no files, no resume)
        valid_data: Dataset = None,  # validation set for early stopping
        max_steps: int = 1000,  # optimiser steps in total
        batch_size: int = 96,  # global batch size (split over processes); 96 frames in the thesis
        lr: float = 1e-4,  # Adam's learning rate (section 3.3.3)
        betas=(0.9, 0.999),  # Adam's β1, β2
        eps: float = 1e-8,  # Adam's ε
        weight_decay: float = 0.0,  # none in the thesis
        lr_schedule: str = "constant",  # "constant" (the thesis) or "cosine": lr·½(1 + cos(π·step/max_steps))
        valid_every: int = 100,  # validate every so many steps
        patience: int = None,  # stop after this many validations without improvement (None: never)
        restore_best: bool = True,  # end with the best validated weights; False: the last step's (e.g. after a decay to 0)
        checkpoint_every: int = 100,  # write last.pt every so many steps
        log_every: int = 10,  # write a metrics line every so many steps
        seed: int = 0,  # data order, initial random state
        resume=True,  # True: continue from out_dir/last.pt if present; False: start over; or a checkpoint path
        config: dict = None,  # the experiment's parameters, stored and checked on resume
        num_workers: int = 0,  # DataLoader workers
        collate_fn=None,  # DataLoader collate function
        device=None,  # override the device
        find_unused_parameters: bool = False,  # DDP: allow parameters the loss does not reach
        progress: bool = True  # show a tqdm progress bar
       ) -> dict:
    "Train `model` with Adam; returns a summary dict (steps, best validation loss and step, stopped early)."
    if lr_schedule not in LR_SCHEDULES: raise ValueError(f"lr_schedule={lr_schedule!r}; valid: {', '.join(LR_SCHEDULES)}")
    rank, world = _world()
    if device is None:
        device = torch.device("cuda", torch.cuda.current_device()) if world > 1 and torch.cuda.is_available() \
                 else next(model.parameters()).device
    model.to(device)
    if batch_size % world: raise ValueError(f"batch_size {batch_size} is not divisible by the number of processes {world}")
    per_rank = batch_size // world
    if not hasattr(train_data, "__len__") or not hasattr(train_data, "__getitem__"):
        raise ValueError(f"fit needs a map-style dataset (len and indexing) so that a resumed run can skip to its position; got {type(train_data).__name__}")
    batches_per_epoch = len(train_data) // world // per_rank
    if batches_per_epoch == 0:
        raise ValueError(f"the training set has {len(train_data)} samples, fewer than one batch of {batch_size}")
    settings = dict(batch_size=batch_size, lr=lr, lr_schedule=lr_schedule, betas=list(betas), eps=eps, weight_decay=weight_decay,
                    seed=seed, world_size=world, valid_every=valid_every, patience=patience, train_size=len(train_data))
    full_config = {"fit": settings, "task": {k: _jsonable(v) for k, v in (config or {}).items()}}
    opt = torch.optim.Adam(model.parameters(), lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: LR_SCHEDULES[lr_schedule](min(s, max_steps) / max_steps))
    out_dir = Path(out_dir) if out_dir is not None else None
    last = out_dir / "last.pt" if out_dir is not None else None
    ckpt_path = Path(resume) if isinstance(resume, (str, Path)) else (last if resume is True and last is not None and last.exists() else None)

    step, epoch, pos, best, best_step, bad, stopped, best_state = 0, 0, 0, math.inf, None, 0, False, None
    if ckpt_path is not None:
        ckpt = load_checkpoint(ckpt_path)
        _check_config(ckpt_path, ckpt["config"]["fit"], settings)
        _check_config(ckpt_path, ckpt["config"]["task"], full_config["task"])
        _load_model_state(model, ckpt["model"], ckpt_path)
        opt.load_state_dict(ckpt["optimizer"])
        sched.load_state_dict(ckpt["scheduler"])
        step, epoch, pos = ckpt["step"], ckpt["epoch"], ckpt["batch_in_epoch"]
        best, best_step, bad, stopped = ckpt["best_valid_loss"], ckpt["best_step"], ckpt["bad_validations"], ckpt["stopped_early"]
        _set_rng_state(ckpt["rng"][rank])
    else:
        seed_everything(seed + rank)
    if out_dir is not None and rank == 0:
        out_dir.mkdir(parents=True, exist_ok=True)
        metrics_path = out_dir / "metrics.jsonl"
        kept = _read_metrics(metrics_path, step) if ckpt_path is not None else []
        with atomic_write(metrics_path) as tmp: tmp.write_text("".join(json.dumps(r) + "\n" for r in kept))

    net = nn.parallel.DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None,
                                              find_unused_parameters=find_unused_parameters) if world > 1 else model

    def log(rec):
        if out_dir is not None and rank == 0:
            with open(out_dir / "metrics.jsonl", "a") as f: f.write(json.dumps(rec) + "\n")

    def save(path):
        rngs = _all_gather(_rng_state())
        if rank != 0: return
        atomic_save({"format": CHECKPOINT_FORMAT, "model": model.state_dict(), "optimizer": opt.state_dict(),
                     "scheduler": sched.state_dict(), "step": step, "epoch": epoch, "batch_in_epoch": pos, "rng": rngs,
                     "best_valid_loss": best, "best_step": best_step, "bad_validations": bad, "stopped_early": stopped,
                     "config": full_config}, path)

    def validate() -> float:
        state = _rng_state()
        seed_everything(seed)  # the same pixels/augmentations at every validation, on every run
        was = model.training
        model.eval()
        try:
            total, count = 0.0, 0
            with torch.no_grad():
                idx = list(range(rank, len(valid_data), world))
                for b in DataLoader(valid_data, batch_size=per_rank, sampler=_ListSampler(idx), num_workers=num_workers, collate_fn=collate_fn):
                    n = _batch_len(b)
                    total += float(_split_loss(loss_fn(model, _to_device(b, device)))[0]) * n
                    count += n
            total, count = _all_mean([total, count], device)
        finally:
            model.train(was)
            _set_rng_state(state)
        return total / max(count, 1e-12)

    model.train()
    bar = tqdm(total=max_steps, initial=min(step, max_steps), disable=not progress or rank != 0, desc="fit", dynamic_ncols=True)
    sums, n_sum, t0 = {}, 0, time.time()
    try:
        while step < max_steps and not stopped:
            for batch in _epoch_loader(train_data, epoch, pos, seed, rank, world, per_rank, num_workers, collate_fn):
                loss, extra = _split_loss(loss_fn(net, _to_device(batch, device)))
                if not torch.isfinite(loss): raise FloatingPointError(f"the loss is {loss.item()} at step {step + 1}")
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                step, pos = step + 1, pos + 1
                for k, v in {"train_loss": loss.item(), **extra}.items(): sums[k] = sums.get(k, 0.0) + v
                n_sum += 1
                bar.update(1)
                if step % log_every == 0 or step == max_steps:
                    keys = sorted(sums)
                    vals = _all_mean([sums[k] / n_sum for k in keys], device)
                    rec = {"step": step, "epoch": epoch, **dict(zip(keys, vals)), "seconds": round(time.time() - t0, 3)}
                    log(rec); bar.set_postfix(loss=f"{rec['train_loss']:.4g}")
                    sums, n_sum = {}, 0
                if valid_data is not None and (step % valid_every == 0 or step == max_steps):
                    v = validate()
                    if v < best: best, best_step, bad = v, step, 0
                    else: bad += 1
                    stopped = patience is not None and bad >= patience
                    log({"step": step, "valid_loss": v, "best_valid_loss": best})
                    if best_step == step:
                        if out_dir is not None: save(out_dir / "best.pt")
                        else: best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
                if out_dir is not None and (step % checkpoint_every == 0 or step == max_steps or stopped): save(last)
                if step >= max_steps or stopped: break
            else:
                epoch, pos = epoch + 1, 0
    finally:
        bar.close()
    if restore_best:
        if best_state is not None: model.load_state_dict(best_state)
        elif best_step is not None and out_dir is not None and (out_dir / "best.pt").exists():
            _load_model_state(model, load_checkpoint(out_dir / "best.pt")["model"], out_dir / "best.pt")
    return {"steps": step, "best_valid_loss": None if best_step is None else best, "best_step": best_step,
            "stopped_early": stopped, "out_dir": None if out_dir is None else str(out_dir)}


# %% [markdown]
# A small regression task shows the loop at work and checks it: the loss falls, the metrics file has
# a line per `log_every` steps and per validation, and the checkpoint loads with `weights_only=True`.

# %%
#| exporti
class _Noisy(Dataset):
    "y = x·w + noise, the noise drawn from the global generator at each access (like augmentation)."
    def __init__(self, n, seed=0):
        g = torch.Generator().manual_seed(seed)
        self.x = torch.randn(n, 4, generator=g)
        self.y = self.x @ torch.tensor([1.0, -2.0, 0.5, 3.0])[:, None]
    def __len__(self): return len(self.x)
    def __getitem__(self, i): return self.x[i], self.y[i] + 0.01 * torch.randn(1)


# %%
with tempfile.TemporaryDirectory() as _tmp:
    torch.manual_seed(0)
    _net = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Dropout(0.1), nn.Linear(16, 1))
    _r = fit(_net, _Noisy(64), supervised(nn.MSELoss()), out_dir=_tmp, valid_data=_Noisy(16, seed=1), max_steps=60,
             batch_size=8, lr=1e-2, valid_every=20, checkpoint_every=20, log_every=10, progress=False)
    _m = [json.loads(l) for l in (Path(_tmp) / "metrics.jsonl").read_text().splitlines()]
    test_eq([r["step"] for r in _m if "train_loss" in r], [10, 20, 30, 40, 50, 60])
    test_eq([r["step"] for r in _m if "valid_loss" in r], [20, 40, 60])
    _v = [r["valid_loss"] for r in _m if "valid_loss" in r]
    assert _v[-1] < _v[0] / 3, _v
    _ck = load_checkpoint(Path(_tmp) / "last.pt")
    test_eq((_ck["step"], _ck["epoch"], _ck["batch_in_epoch"]), (60, 7, 4))   # 8 batches per epoch
    test_eq(_ck["config"]["fit"]["betas"], [0.9, 0.999])
    test_eq(_r["best_step"], int(np.argmin(_v) + 1) * 20)
    # the run is finished: fitting again only reloads the result
    _again = fit(_net, _Noisy(64), supervised(nn.MSELoss()), out_dir=_tmp, valid_data=_Noisy(16, seed=1), max_steps=60,
                 batch_size=8, lr=1e-2, valid_every=20, checkpoint_every=20, progress=False)
    test_eq(_again["steps"], 60)
    test_fail(lambda: fit(_net, _Noisy(64), supervised(nn.MSELoss()), out_dir=_tmp, valid_data=_Noisy(16, seed=1), max_steps=80,
                          batch_size=16, lr=1e-2, valid_every=20, progress=False), contains="batch_size was 8 in the checkpoint, now 16")


# %% [markdown]
# Resuming is exact: a run of 30 steps stopped at step 20 (its last checkpoint) and continued ends
# with the same bits as one that ran through — the dropout masks, the noise drawn by the dataset and
# the data order all continue where they were. (`tests/test_learner.py` kills a run with SIGKILL.)

# %%
def _run(tmp, steps, resume=True):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Dropout(0.2), nn.Linear(16, 1))
    fit(net, _Noisy(40), supervised(nn.MSELoss()), out_dir=tmp, max_steps=steps, batch_size=8, lr=1e-2,
        checkpoint_every=10, resume=resume, progress=False)
    return net

with tempfile.TemporaryDirectory() as _a, tempfile.TemporaryDirectory() as _b:
    _whole = _run(_a, 30)
    _run(_b, 20); _resumed = _run(_b, 30)          # 20 steps, then 10 more from last.pt
    for _p, _q in zip(_whole.parameters(), _resumed.parameters()): assert torch.equal(_p, _q)
    _fresh = _run(_b, 30, resume=False)            # resume=False starts over: same as the whole run
    for _p, _q in zip(_whole.parameters(), _fresh.parameters()): assert torch.equal(_p, _q)


# %% [markdown]
# A cosine learning-rate schedule, $\eta_t = \eta\,\tfrac12(1 + \cos(\pi t/T))$ over the `max_steps` $T$, is a
# function of the step alone: its state travels in the checkpoint, so a run interrupted after its
# checkpoint at step 20 of 30 resumes onto the same bits, and the last step runs at $\eta \approx 0$.

# %%
def _cosine_run(tmp, interrupt_after=None):
    torch.manual_seed(0)
    net, calls, mse = nn.Linear(4, 1), [0], supervised(nn.MSELoss())
    def loss(m, b):
        calls[0] += 1
        if calls[0] == interrupt_after: raise RuntimeError("interrupted")   # as if the process died mid-run
        return mse(m, b)
    fit(net, _Noisy(40), loss, out_dir=tmp, max_steps=30, batch_size=8, lr=1e-2, lr_schedule="cosine",
        checkpoint_every=10, progress=False)
    return net

with tempfile.TemporaryDirectory() as _a, tempfile.TemporaryDirectory() as _b:
    _whole = _cosine_run(_a)
    test_fail(lambda: _cosine_run(_b, interrupt_after=26), contains="interrupted")   # dies in step 26: last.pt holds step 20
    test_eq(load_checkpoint(Path(_b) / "last.pt")["step"], 20)
    _resumed = _cosine_run(_b)
    assert torch.equal(_whole.weight, _resumed.weight) and torch.equal(_whole.bias, _resumed.bias)
    _ck = load_checkpoint(Path(_a) / "last.pt")
    test_close(_ck["optimizer"]["param_groups"][0]["lr"], 0.0, eps=1e-12)
    test_close(LR_SCHEDULES["cosine"](0.5), 0.5)
    test_fail(lambda: fit(nn.Linear(4, 1), _Noisy(40), supervised(nn.MSELoss()), lr_schedule="step", progress=False),
              contains="valid: constant, cosine")

# %% [markdown]
# Early stopping: with a learning rate far too high the validation loss soon stops improving, the run
# stops `patience` validations after the best one, and the model is left at the best weights.
# (`restore_best=False` leaves it at the last step's weights instead: the natural end of a run whose
# learning rate decays to 0, when a small validation set's best is mostly noise.)

# %%
with tempfile.TemporaryDirectory() as _tmp:
    torch.manual_seed(0)
    _net = nn.Linear(4, 1)
    _r = fit(_net, _Noisy(64), supervised(nn.MSELoss()), out_dir=_tmp, valid_data=_Noisy(16, 1), max_steps=200, batch_size=8,
             lr=5.0, valid_every=5, patience=2, progress=False)
    _v = [r["valid_loss"] for r in _read_metrics(Path(_tmp) / "metrics.jsonl", math.inf) if "valid_loss" in r]
    test_eq(_r["best_step"], 5 * (int(np.argmin(_v)) + 1))
    test_eq((_r["stopped_early"], _r["steps"]), (True, _r["best_step"] + 2 * 5))
    assert _r["steps"] < 200 and min(_v[-2:]) >= _r["best_valid_loss"]
    assert torch.equal(_net.weight, load_checkpoint(Path(_tmp) / "best.pt")["model"]["weight"])
torch.manual_seed(0)
_net2 = nn.Linear(4, 1)   # the same run without files keeps the best weights in memory
_r2 = fit(_net2, _Noisy(64), supervised(nn.MSELoss()), valid_data=_Noisy(16, 1), max_steps=200, batch_size=8, lr=5.0,
          valid_every=5, patience=2, progress=False)
test_eq(_r2["best_step"], _r["best_step"])
assert torch.equal(_net2.weight, _net.weight)
with tempfile.TemporaryDirectory() as _tmp:   # restore_best=False: the run ends with its last step's weights
    torch.manual_seed(0)
    _net3 = nn.Linear(4, 1)
    fit(_net3, _Noisy(64), supervised(nn.MSELoss()), out_dir=_tmp, valid_data=_Noisy(16, 1), max_steps=200, batch_size=8,
        lr=5.0, valid_every=5, patience=2, restore_best=False, progress=False)
    assert torch.equal(_net3.weight, load_checkpoint(Path(_tmp) / "last.pt")["model"]["weight"])
    assert not torch.equal(_net3.weight, load_checkpoint(Path(_tmp) / "best.pt")["model"]["weight"])


# %% [markdown]
# ## Curves
#
# `read_metrics` reads the metrics file; `plot_metrics` draws the training and validation losses
# against the step.

# %%
#| export
def read_metrics(path  # a metrics.jsonl file or the run's out_dir
                ) -> list:
    "The records of a run's metrics file, as a list of dicts."
    path = Path(path)
    if path.is_dir(): path = path / "metrics.jsonl"
    if not path.is_file(): raise FileNotFoundError(f"no metrics file at {path}")
    return _read_metrics(path, math.inf)

def plot_metrics(path,  # a metrics.jsonl file or the run's out_dir
                 keys=("train_loss", "valid_loss"),  # which series to draw
                 ax=None, logy: bool = False):
    "Plot metric curves against the step; returns the matplotlib axes."
    import matplotlib.pyplot as plt
    recs = read_metrics(path)
    if ax is None: _, ax = plt.subplots(figsize=(6, 3))
    for k in keys:
        pts = [(r["step"], r[k]) for r in recs if k in r]
        if pts: ax.plot(*zip(*pts), "o-" if len(pts) < 30 else "-", label=k, ms=3)
    ax.set_xlabel("step"); ax.legend(); ax.grid(alpha=0.3)
    if logy: ax.set_yscale("log")
    return ax


# %%
with tempfile.TemporaryDirectory() as _tmp:
    torch.manual_seed(0)
    fit(nn.Linear(4, 1), _Noisy(64), supervised(nn.MSELoss()), out_dir=_tmp, valid_data=_Noisy(16, 1), max_steps=100,
        batch_size=8, lr=3e-2, valid_every=10, log_every=5, progress=False)
    _ax = plot_metrics(_tmp, logy=True)
    test_eq(len(_ax.lines), 2)
    test_eq(len(read_metrics(_tmp)), 30)


# %% [markdown]
# ## The command line: `motion_nbs_train`
#
# Training notebooks define their experiment as a function, e.g. `motion_nbs.cpfs:train(preset=...,
# steps=..., out=...)`, which the notebook calls with its parameters and which calls `fit`. The console
# command runs the same function with the same parameters, so a run can go to a cluster:
#
# ```
# motion_nbs_train --task motion_nbs.cpfs:train --preset paper --out runs/cpfs
# torchrun --nproc_per_node=8 --no-python motion_nbs_train --task motion_nbs.cpfs:train --preset paper
# ```
#
# The task is found at run time (a module or a `.py` file, then the function), so this chapter does
# not import the later ones. Parameters are given as `--name value` (or `--name=value`) and converted
# to the type of the function's default (`int`, `float`, `bool`, `str`, tuples as `1,2`); parameters
# without a default, or with `None`, take a Python literal or else the string. `--help` lists the
# task's parameters. Under torchrun the process group is started before the task runs.

# %%
#| exporti
def _resolve_task(spec: str):
    if ":" not in spec: raise ValueError(f"--task must be 'module:function' or 'path/to/file.py:function', got {spec!r}")
    mod_name, fn_name = spec.rsplit(":", 1)
    if mod_name.endswith(".py") or os.sep in mod_name:
        path = Path(mod_name)
        if not path.is_file(): raise FileNotFoundError(f"task file {path} does not exist")
        s = importlib.util.spec_from_file_location(path.stem, path)
        mod = importlib.util.module_from_spec(s); s.loader.exec_module(mod)
    else:
        try: mod = importlib.import_module(mod_name)
        except ImportError as e: raise ValueError(f"cannot import the task module {mod_name!r}: {e}") from None
    fn = getattr(mod, fn_name, None)
    if not callable(fn):
        valid = [n for n, f in vars(mod).items() if inspect.isfunction(f) and not n.startswith("_") and f.__module__ == mod.__name__]
        raise ValueError(f"module {mod_name!r} has no function {fn_name!r}; its functions: {', '.join(valid)}")
    return fn

def _convert(name: str, text: str, default):
    "Convert a command-line string to the type of `default`."
    try:
        if isinstance(default, bool):
            t = text.lower()
            if t in ("1", "true", "yes", "on"): return True
            if t in ("0", "false", "no", "off"): return False
            raise ValueError
        if isinstance(default, int): return int(text)
        if isinstance(default, float): return float(text)
        if isinstance(default, str): return text
        if isinstance(default, (tuple, list)):
            parts = [p for p in text.strip("()[]").split(",") if p.strip()]
            return type(default)(_convert(name, p.strip(), default[0]) if default else ast.literal_eval(p.strip()) for p in parts)
    except ValueError:
        raise ValueError(f"--{name}: expected a {type(default).__name__} like {default!r}, got {text!r}") from None
    try: return ast.literal_eval(text)
    except (ValueError, SyntaxError): return text

def _parse_params(fn, args: list) -> dict:
    sig = inspect.signature(fn)
    params = {n: p for n, p in sig.parameters.items() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    out, i = {}, 0
    while i < len(args):
        a = args[i]
        if not a.startswith("--"): raise ValueError(f"expected --name value, got {a!r}")
        name, eq, value = a[2:].partition("=")
        if not eq:
            if i + 1 >= len(args): raise ValueError(f"--{name} needs a value")
            value, i = args[i + 1], i + 1
        i += 1
        key = name.replace("-", "_")
        if key not in params:
            raise ValueError(f"unknown parameter --{name} for {fn.__module__}.{fn.__name__}; valid: {', '.join('--' + n for n in params)}")
        d = params[key].default
        out[key] = _convert(name, value, None if d is inspect.Parameter.empty else d)
    missing = [n for n, p in params.items() if p.default is inspect.Parameter.empty and n not in out]
    if missing: raise ValueError(f"missing required parameter(s) {', '.join('--' + n for n in missing)}")
    return out


# %%
#| export
def train_cli(argv=None  # arguments (default: sys.argv[1:])
             ):
    "`motion_nbs_train --task module:function --name value ...`: run a training task (under torchrun too)."
    argv = list(sys.argv[1:] if argv is None else argv)
    p = argparse.ArgumentParser(prog="motion_nbs_train", add_help=False,
                                description="Run a training task of the book with --name value parameters.")
    p.add_argument("--task", help="module:function or file.py:function, e.g. motion_nbs.cpfs:train")
    p.add_argument("-h", "--help", action="store_true")
    known, rest = p.parse_known_args(argv)
    if known.task is None:
        p.print_help()
        if known.help: return None
        raise SystemExit("motion_nbs_train: --task is required")
    fn = _resolve_task(known.task)
    if known.help:
        print(f"{known.task}{inspect.signature(fn)}\n\n{inspect.getdoc(fn) or ''}")
        return None
    params = _parse_params(fn, rest)
    distributed = init_distributed()
    try: return fn(**params)
    finally:
        if distributed and dist.is_initialized(): dist.destroy_process_group()


# %%
def _task(out: str, steps: int = 3, lr: float = 1e-3, deep: bool = False, sizes=(1, 2), note=None):
    "A stand-in task."
    return dict(out=out, steps=steps, lr=lr, deep=deep, sizes=sizes, note=note)

test_eq(_parse_params(_task, ["--out", "x", "--steps=5", "--deep", "true", "--sizes", "3,4", "--note", "[1, 2]"]),
        dict(out="x", steps=5, deep=True, sizes=(3, 4), note=[1, 2]))
test_fail(lambda: _parse_params(_task, ["--out", "x", "--stpes", "5"]), contains="unknown parameter --stpes")
test_fail(lambda: _parse_params(_task, ["--out", "x", "--steps", "five"]), contains="--steps: expected a int like 3, got 'five'")
test_fail(lambda: _parse_params(_task, ["--steps", "5"]), contains="missing required parameter(s) --out")
test_eq(train_cli(["--task", "motion_nbs.core:data_dir", "--create", "false"]).name, Path(os.environ.get("MOTION_NBS_DATA", "motion_nbs")).name)
test_fail(lambda: train_cli(["--task", "motion_nbs.core:nothing"]), contains="its functions: data_dir")
test_fail(lambda: train_cli(["--task", "motion_nbs.nowhere:train"]), contains="cannot import the task module 'motion_nbs.nowhere'")

# %% [markdown]
# ## Summary
#
# - `fit(model, train_data, loss_fn, out_dir=..., valid_data=..., ...)`: Adam (β 0.9/0.999, ε 1e-8,
#   lr 1e-4, no weight decay), validation every `valid_every` steps, early stopping with `patience`
#   (best weights in `best.pt`, restored at the end), `last.pt` every `checkpoint_every` steps,
#   `metrics.jsonl`, tqdm progress; bit-exact resume; DDP under torchrun.
# - Loss functions take `(model, batch)`; `supervised(criterion)` adapts `criterion(output, target)`.
# - `load_checkpoint`, `load_weights`, `read_metrics`, `plot_metrics`.
# - `motion_nbs_train --task module:function --name value ...` runs a chapter's training function,
#   also as `torchrun --nproc_per_node=N --no-python motion_nbs_train ...`.

# %%
#| hide
import nbdev; nbdev.nbdev_export()
