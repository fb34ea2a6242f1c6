# %%
#| default_exp learner

# %% [markdown]
# # Learner
#
# > One training loop for every experiment: a run's settings in one `TrainConfig`, Adam with the thesis'
# > settings, validation and early stopping, atomic checkpoints with bit-exact resume, metrics files,
# > GPUs with mixed precision, DDP under `torchrun`, and a command line.

# %% [markdown]
# *Default run: **12 s** on 2 CPU cores with the default parameters (measured by `make book` on 6 Dec 2026, reusing the training and caches that earlier runs left in the runs folder, `core.runs_dir`; where a first run on a new machine takes longer, the chapter says so).*

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
import contextlib
import hashlib
import importlib
import json
import math
import os
import random
import time
import warnings
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler

from motion_nbs.core import (atomic_save, atomic_write, check_choice, check_int, check_number, resolve_device,
                             seed_everything, tqdm)

# matplotlib is imported where it is used (`plot_metrics`): it is slow to import.

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
CHECKPOINT_FORMAT = "motion_nbs.fit/2"  # /2: the config is one flat dict of a `TrainConfig`

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
    test_fail(lambda: load_checkpoint(_tmp / "plain.pt"), contains="expected format 'motion_nbs.fit/2', found None")
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
# (NCCL on GPUs, gloo on CPUs); without torchrun it does nothing. `is_main_process` is what a
# training function asks before it writes its own files (`model.pt`, `results.json`, figures), and
# `process_share` names the validation items a process evaluates (so it need only prepare those).

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

def is_main_process() -> bool:
    "True in a single process and in rank 0 of a distributed run: the process that writes files."
    return _world()[0] == 0

def process_share(n: int  # items of a data set every process holds, e.g. a validation set
                 ) -> range:
    "The indices this process evaluates: every `world_size`-th item from its rank (all of them in a single process)."
    rank, world = _world()
    return range(rank, n, world)


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

def _any_rank(flag: bool, device) -> bool:
    "True when `flag` is true in any process (so that all processes take the same branch)."
    if _world()[1] == 1: return bool(flag)
    t = torch.tensor(float(flag), device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())

def _barrier():
    if _world()[1] > 1: dist.barrier()

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
# `loss(output, target)` criterion for `(input, target)` batches. The numbers stay tensors on the
# device until the next log line: reading them at every step would make the CPU wait for the GPU.

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
        return out["loss"], {k: v.detach() if torch.is_tensor(v) else v for k, v in out.items() if k != "loss"}
    return out, {}


# %%
_m = nn.Linear(2, 1, bias=False); nn.init.ones_(_m.weight)
test_eq(supervised(nn.MSELoss())(_m, (torch.tensor([[1.0, 2.0]]), torch.tensor([[1.0]]))).item(), 4.0)
test_eq(_split_loss({"loss": torch.tensor(1.0), "acc": torch.tensor(0.5)})[1], {"acc": torch.tensor(0.5)})
test_fail(lambda: _split_loss({"acc": 1}), contains="must include 'loss'")

# %% [markdown]
# ## A run's settings: `TrainConfig`
#
# Everything `fit` needs to know about a run is one dataclass. Its fields are documented where they are
# defined, validated once when it is made (a bad value is a `ValueError` that names the field), and
# stored in every checkpoint and in the results. A chapter's experiment family extends it with its own
# fields (`ExperimentConfig` below, then `cpfs.CPFSConfig` and `s3.S3Config`), so that the settings
# every training run shares — steps, batch, learning rate and schedule, seed, device, precision,
# workers, output folder, progress, validation cadence — are written once.
#
# **Device and precision.** `device=None` trains on `core.default_device()` (CUDA, else MPS, else the
# CPU); naming a device this machine does not have fails when the config is made. `amp` is the
# mixed precision: `"bf16"`, `"fp16"` (with a gradient scaler, whose state is checkpointed) or `"off"`;
# `"auto"` is bf16 on CUDA (fp16 on GPUs without bf16) and off elsewhere — on a CPU, bfloat16 is
# slower than float32 for the book's networks. The parts of the losses that must stay in float32 are
# marked with `core.full_precision` where they are defined (chapters 3 and 4).

# %%
#| export
LR_SCHEDULES = {"constant": lambda t: 1.0,   # factor of the learning rate at the fraction t of `num_iters` done
                "cosine": lambda t: 0.5 * (1 + math.cos(math.pi * t))}
AMP_MODES = ("auto", "off", "bf16", "fp16")

@dataclass
class TrainConfig:
    "The settings of one training run: Adam with the thesis' defaults (section 3.3.3), validation, files, device."
    num_iters: int = 1000  # optimiser steps in total
    batch_size: int = 96  # global batch size, split over processes (96 frames in the thesis)
    lr: float = 1e-4  # Adam's learning rate (section 3.3.3)
    lr_schedule: str = "constant"  # "constant" (the thesis) or "cosine": lr·½(1 + cos(π·step/num_iters))
    betas: tuple = (0.9, 0.999)  # Adam's β1, β2
    eps: float = 1e-8  # Adam's ε
    weight_decay: float = 0.0  # none in the thesis
    valid_every: int = 100  # validate every so many steps
    patience: int | None = None  # stop after this many validations without improvement (None: never)
    restore_best: bool = True  # end with the best validated weights; False: the last step's (e.g. after a decay to 0)
    checkpoint_every: int = 100  # write last.pt every so many steps
    log_every: int = 10  # write a metrics line (and check that the loss is finite) every so many steps
    seed: int = 0  # initial random state and data order
    device: str | None = None  # "cpu", "cuda", "cuda:1", "mps"; None: `core.default_device()` (cuda:LOCAL_RANK under torchrun)
    amp: str = "auto"  # mixed precision: "bf16", "fp16" (gradient scaler) or "off"; "auto": bf16 on CUDA, off elsewhere
    num_workers: int = 0  # DataLoader worker processes for the training data
    sync_batchnorm: bool = False  # under torchrun on GPUs: batch statistics over all processes (SyncBatchNorm)
    find_unused_parameters: bool = False  # DDP: allow parameters the loss does not reach
    out_dir: str | None = None  # where last.pt, best.pt and metrics.jsonl go (None: no files, no resume)
    resume: bool | str = True  # continue from out_dir/last.pt if present; False: start over; or a checkpoint path
    progress: bool = True  # show a progress bar

    # where and how a run executes, not what it computes: these may differ when a run is resumed
    RUNTIME: ClassVar[tuple] = ("num_iters", "device", "amp", "num_workers", "out_dir", "resume", "progress", "log_every",
                                "checkpoint_every", "restore_best", "find_unused_parameters", "sync_batchnorm")

    def __post_init__(self): self.validate()

    def validate(self):
        "Raise a `ValueError` naming the first field with a bad value."
        for k in ("num_iters", "batch_size", "valid_every", "checkpoint_every", "log_every"): check_int(k, getattr(self, k))
        check_int("seed", self.seed, 0); check_int("num_workers", self.num_workers, 0)
        if self.patience is not None: check_int("patience", self.patience)
        check_number("lr", self.lr); check_number("eps", self.eps); check_number("weight_decay", self.weight_decay, inclusive=True)
        if not (len(self.betas) == 2 and all(isinstance(b, (int, float)) and 0 <= b < 1 for b in self.betas)):
            raise ValueError(f"betas={self.betas!r}; expected two numbers in [0, 1)")
        check_choice("lr_schedule", self.lr_schedule, LR_SCHEDULES); check_choice("amp", self.amp, AMP_MODES)
        for k in ("restore_best", "sync_batchnorm", "find_unused_parameters", "progress"):
            if not isinstance(getattr(self, k), bool): raise ValueError(f"{k}={getattr(self, k)!r}; expected True or False")
        resolve_device(self.device)  # a device this machine does not have fails now, not at the first step
        if self.out_dir is not None and Path(self.out_dir).exists() and not Path(self.out_dir).is_dir():
            raise ValueError(f"out_dir={str(self.out_dir)!r} is an existing file; expected a folder (new or existing) for the run's files")

    def to_dict(self) -> dict:
        "The fields as plain JSON values (tuples become lists, paths strings), as stored in checkpoints and results."
        plain = lambda v: list(v) if isinstance(v, tuple) else str(v) if isinstance(v, Path) else v
        return {f.name: plain(getattr(self, f.name)) for f in fields(self)}

def _check_names(cls, names):
    valid = [f.name for f in fields(cls)]
    unknown = sorted(set(names) - set(valid))
    if unknown: raise ValueError(f"unknown setting(s) {unknown} for {cls.__name__}; valid: {', '.join(valid)}")

def configure(config: TrainConfig,  # a config to start from
              **overrides  # fields to change
             ) -> TrainConfig:
    "A copy of `config` with `overrides`, validated; an unknown name is a `ValueError` listing the valid ones."
    _check_names(type(config), overrides)
    return replace(config, **overrides)

def resolve_amp(amp: str,  # one of `AMP_MODES`
                device: torch.device) -> str:
    "The precision a run on `device` uses: `amp`, with 'auto' resolved (bf16 on CUDA, fp16 without bf16 support, else off)."
    check_choice("amp", amp, AMP_MODES)
    if amp != "auto": return amp
    if device.type != "cuda": return "off"
    return "bf16" if torch.cuda.is_bf16_supported() else "fp16"


# %%
test_eq(TrainConfig().to_dict()["betas"], [0.9, 0.999])
test_eq(configure(TrainConfig(), batch_size=8).batch_size, 8)
test_fail(lambda: configure(TrainConfig(), max_steps=8), contains="unknown setting(s) ['max_steps'] for TrainConfig; valid: num_iters")
test_fail(lambda: TrainConfig(num_iters=0), contains="num_iters=0; expected an int >= 1")
test_fail(lambda: TrainConfig(lr_schedule="step"), contains="valid: constant, cosine")
test_fail(lambda: TrainConfig(amp="fp8"), contains="amp='fp8'; valid: auto, off, bf16, fp16")
test_fail(lambda: TrainConfig(progress="yes"), contains="progress='yes'; expected True or False")
test_fail(lambda: TrainConfig(num_iters=-5), contains="num_iters=-5; expected an int >= 1")
with tempfile.NamedTemporaryFile() as _f:
    test_fail(lambda: TrainConfig(out_dir=_f.name), contains="is an existing file; expected a folder")
if not torch.cuda.is_available():
    test_fail(lambda: TrainConfig(device="cuda"), contains="device='cuda' is not available on this machine; devices here: cpu")
test_eq(resolve_amp("auto", torch.device("cpu")), "off")
test_eq(resolve_amp("bf16", torch.device("cpu")), "bf16")


# %% [markdown]
# ### Experiment families and presets
#
# The training experiments of chapters 3 and 4 share more than `fit`'s settings: an objective (`loss`),
# a data source, a network, crops of `image_size`, optionally a pool of rendered scenes reused with
# augmentation, a validation set, and *presets* — `cpu` (minutes on a laptop) and `paper` (the
# thesis' hyper-parameters, for a GPU). `ExperimentConfig.from_preset(preset, **overrides)` starts from
# the family's preset and applies the overrides; `None` keeps the preset's value (so a notebook can
# pass all its parameters). A preset value that depends on the objective is a dict
# `{loss: value, "*": default}`.

# %%
#| export
@dataclass
class ExperimentConfig(TrainConfig):
    "A training experiment of the book: `TrainConfig` plus objective, data, network and crops, made from a preset."
    preset: str = "cpu"  # "cpu" (minutes on a 2-core laptop) or "paper" (the thesis' settings, for a GPU)
    loss: str = ""  # the training objective: a key of the family's registry
    data: str = ""  # where the training pairs come from
    model: str = ""  # the network, by its `motion_nbs.models` name
    image_size: int = 128  # side of the square training crops, in pixels
    pool_size: int | None = None  # rendered data: scenes rendered once and reused with augmentation (None: fresh scenes)
    num_valid: int = 32  # validation pairs (built once and cached)

    PRESETS: ClassVar[dict] = {}  # the family's presets: {name: {field: value or {loss: value, "*": default}}}

    def validate(self):
        super().validate()
        check_choice("preset", self.preset, self.PRESETS)
        check_int("image_size", self.image_size); check_int("num_valid", self.num_valid)
        if self.pool_size is not None: check_int("pool_size", self.pool_size)

    @classmethod
    def from_preset(cls, preset: str = "cpu",  # a key of `PRESETS`
                    **overrides  # fields to set; None keeps the preset's value (but `out_dir=None`: no files, as in the config)
                   ):
        "The preset's settings with `overrides`, validated."
        check_choice("preset", preset, cls.PRESETS)
        given = {k: v for k, v in overrides.items() if v is not None or k == "out_dir"}
        _check_names(cls, given)
        values = {**cls.PRESETS[preset], **given}
        loss = values.get("loss", cls.loss)
        values = {k: v.get(loss, v.get("*")) if isinstance(v, dict) else v for k, v in values.items()}
        return cls(**{**cls._derived(values, given), "preset": preset})

    @classmethod
    def _derived(cls, values: dict, given: dict) -> dict:
        "Values that follow from others unless given (a family may override this)."
        return values

    @classmethod
    def resolve(cls, config=None,  # a config of this family to start from (None: the `cpu` preset)
                **overrides  # fields to set; None keeps the value
               ):
        "What a family's `train(config, **overrides)` runs: `config` with the overrides, or the `cpu` preset with them."
        given = {k: v for k, v in overrides.items() if v is not None}
        return configure(config, **given) if config is not None else cls.from_preset(**given)


# %%
@dataclass
class _Toy(ExperimentConfig):
    PRESETS: ClassVar[dict] = {"cpu": dict(loss="a", num_iters={"a": 5, "*": 7}, batch_size=4), "paper": dict(loss="a", num_iters=9)}

test_eq(_Toy.from_preset().num_iters, 5)
test_eq(_Toy.from_preset(loss="b").num_iters, 7)                  # the per-loss value's default
test_eq(_Toy.from_preset(num_iters=None, batch_size=2).batch_size, 2)
test_eq(_Toy.from_preset("paper").to_dict()["preset"], "paper")
test_eq(_Toy.resolve(num_iters=3, batch_size=None).batch_size, 4)           # the cpu preset, None keeps its value
test_eq(_Toy.resolve(_Toy.from_preset("paper"), num_iters=None, batch_size=2).num_iters, 9)
test_fail(lambda: _Toy.from_preset("gpu"), contains="preset='gpu'; valid: cpu, paper")
test_fail(lambda: _Toy.from_preset(lr_rate=1.0), contains="unknown setting(s) ['lr_rate'] for _Toy")


# %% [markdown]
# ## The loop: `Learner` and `fit`
#
# Per step: one batch, one Adam step; every `valid_every` steps the mean validation loss (under a fixed
# seed, in a forked random state, so that validating changes nothing in the training run), early
# stopping when it has not improved for `patience` validations (the best weights are kept in
# `best.pt`, or in memory without an `out_dir`, and restored at the end), a checkpoint `last.pt` every
# `checkpoint_every` steps and at the end, and a line of metrics in `metrics.jsonl` every `log_every`
# steps and at each validation.
#
# The config is stored in the checkpoint with the number of processes and the size of the training
# set; resuming with a different value of a field that changes what is computed (batch size, learning
# rate, seed, the experiment's own fields, ...) is an error that names the file, the field and both
# values. The `RUNTIME` fields may change — more `num_iters` extends a finished run, and a run
# started on a GPU may continue on another device. A run that finished is not repeated: calling `fit`
# again with the same `out_dir` loads the result (a rerun notebook returns at once).
#
# The loop is a small class whose methods are the steps of a run: `_resume`, `_one_step`,
# `_check_finite`, `_log_train`, `_validate`, `_after_validation`, `_save` and `_finish`, grouped by concern
# into four small classes it inherits (devices and processes, checkpoints, metrics, validation). Under DDP the
# parameters agree across processes after every step, but each process updates its batch-norm
# statistics on its own shard; before validating, saving and finishing they are set to rank 0's (as
# DDP itself does at the next forward pass), and `_finish` checks that every process ends with
# bitwise-equal weights. Losses stay
# on the device: the host reads them (one synchronisation) only every `log_every` steps, and before
# anything is validated or saved — so a non-finite loss is caught before it can reach a checkpoint,
# and the error names the first step at which it appeared.

# %%
#| exporti
def _check_config(path, saved: dict, current: dict, runtime):
    for k in sorted(set(saved) | set(current)):
        if k in runtime: continue
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

def _check_data(data, batch_size: int, world: int):
    if batch_size % world: raise ValueError(f"batch_size {batch_size} is not divisible by the number of processes {world}")
    if not hasattr(data, "__len__") or not hasattr(data, "__getitem__"):
        raise ValueError(f"fit needs a map-style dataset (len and indexing) so that a resumed run can skip to its position; got {type(data).__name__}")
    if len(data) // batch_size == 0:
        raise ValueError(f"the training set has {len(data)} samples, fewer than one batch of {batch_size}")

def _weights_digest(model: nn.Module) -> str:
    "SHA-256 of the model's parameters and buffers (equal digests: bitwise-equal weights)."
    h = hashlib.sha256()
    for k, v in model.state_dict().items(): h.update(k.encode()); h.update(v.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


# %% [markdown]
# Each piece of the run is a small class that `Learner` inherits, so that each reads on one screen; they share
# the state `Learner.__init__` sets (`cfg`, `model`, `net`, `opt`, `device`, `rank`, `world`, ...).
#
# **Devices and processes.** The configured device, or this process's GPU under torchrun; the model wrapped in
# DDP (and SyncBatchNorm when asked); autocast for `amp`; and rank 0's batch-norm statistics given to every
# process before validating, saving and finishing.

# %%
#| exporti
class _Devices:
    "Part of `Learner`: where the run computes (device, `amp` autocast) and how the processes of a torchrun agree."
    def _device(self) -> torch.device:
        "The configured device; under torchrun on GPUs, this process's GPU."
        if self.world > 1 and torch.cuda.is_available() and self.cfg.device in (None, "auto", "cuda"):
            return torch.device("cuda", torch.cuda.current_device())
        return resolve_device(self.cfg.device)

    def _wrap(self) -> nn.Module:
        "Move the model to the device; under torchrun, SyncBatchNorm (if asked) and DDP."
        self.model.to(self.device)
        if self.world == 1: return self.model
        if self.cfg.sync_batchnorm:
            if self.device.type != "cuda": raise ValueError(f"sync_batchnorm=True needs CUDA devices; this run is on {self.device}")
            self.model = nn.SyncBatchNorm.convert_sync_batchnorm(self.model)
        ids = [self.device] if self.device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(self.model, device_ids=ids, find_unused_parameters=self.cfg.find_unused_parameters)

    def _autocast(self):
        if self.amp == "off": return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=torch.bfloat16 if self.amp == "bf16" else torch.float16)

    def _sync_buffers(self):
        "Give every process rank 0's buffers (batch-norm statistics), as DDP does at the start of each forward pass."
        if self.world == 1: return
        for b in self.model.buffers(): dist.broadcast(b, 0)


# %% [markdown]
# **Checkpoints.** Resuming reads `last.pt` (or a given path), checks that the configuration computes the same
# thing, and restores weights, optimiser, scaler, position, early stopping and every random state; saving
# writes all of that atomically from rank 0; finishing restores the best weights and checks that every process
# holds the same ones.

# %%
#| exporti
class _Checkpoints:
    "Part of `Learner`: resume from a checkpoint, write one atomically, and end with the best weights on every process."
    def _resume_path(self):
        r = self.cfg.resume
        if isinstance(r, (str, Path)): return Path(r)
        last = self.out / "last.pt" if self.out is not None else None
        return last if r is True and last is not None and last.exists() else None

    def _resume(self):
        "Continue from a checkpoint (weights, optimiser, scaler, position, early stopping, random state), or seed a new run."
        path = self._resume_path()
        if path is None: seed_everything(self.cfg.seed + self.rank); return
        ckpt = load_checkpoint(path)
        _check_config(path, ckpt["config"], self.stored_config, type(self.cfg).RUNTIME)
        _load_model_state(self.model, ckpt["model"], path)
        self.opt.load_state_dict(ckpt["optimizer"]); self.sched.load_state_dict(ckpt["scheduler"])
        if ckpt["scaler"] and self.scaler.is_enabled(): self.scaler.load_state_dict(ckpt["scaler"])
        self.step, self.epoch, self.pos = ckpt["step"], ckpt["epoch"], ckpt["batch_in_epoch"]
        self.best, self.best_step, self.bad, self.stopped = (ckpt["best_valid_loss"], ckpt["best_step"], ckpt["bad_validations"],
                                                             ckpt["stopped_early"])
        _set_rng_state(ckpt["rng"][self.rank])

    def _save(self, path: Path):
        "An atomic checkpoint of everything a bit-exact resume needs (rank 0 writes; all ranks' random states)."
        rngs = _all_gather(_rng_state())
        if self.rank != 0: return
        atomic_save({"format": CHECKPOINT_FORMAT, "model": self.model.state_dict(), "optimizer": self.opt.state_dict(),
                     "scheduler": self.sched.state_dict(), "scaler": self.scaler.state_dict(), "step": self.step,
                     "epoch": self.epoch, "batch_in_epoch": self.pos, "rng": rngs, "best_valid_loss": self.best,
                     "best_step": self.best_step, "bad_validations": self.bad, "stopped_early": self.stopped,
                     "config": self.stored_config}, path)

    def _finish(self):
        "Restore the best weights (if asked) and check that every process ends with the same weights."
        _barrier()  # rank 0 may still be writing best.pt
        self._sync_buffers()  # a run stopped early, or resumed when finished, has not synchronised them yet
        if self.cfg.restore_best:
            if self.best_state is not None: self.model.load_state_dict(self.best_state)
            elif self.best_step is not None and self.out is not None and (self.out / "best.pt").exists():
                _load_model_state(self.model, load_checkpoint(self.out / "best.pt")["model"], self.out / "best.pt")
        self.digests = _all_gather(_weights_digest(self.model))
        if len(set(self.digests)) > 1: raise RuntimeError(f"the processes ended with different weights: {self.digests}")


# %% [markdown]
# **Metrics.** A resumed run keeps the metrics lines up to its checkpoint; the losses of the steps since the
# last check are read in one synchronisation, a non-finite one stops the run with its step, and their means go
# to `metrics.jsonl`.

# %%
#| exporti
class _Metrics:
    "Part of `Learner`: the metrics file, with losses read from the device only when they are logged or checked."
    def _start_metrics(self, resumed: bool):
        "Keep the metrics lines up to the checkpoint's step (a killed run may have logged past it)."
        if self.out is None or self.rank != 0: return
        self.out.mkdir(parents=True, exist_ok=True)
        path = self.out / "metrics.jsonl"
        kept = _read_metrics(path, self.step) if resumed else []
        with atomic_write(path) as tmp: tmp.write_text("".join(json.dumps(r) + "\n" for r in kept))

    def _log(self, rec: dict):
        if self.out is not None and self.rank == 0:
            with open(self.out / "metrics.jsonl", "a") as f: f.write(json.dumps(rec) + "\n")

    def _check_finite(self):
        "Read the losses of the steps since the last check (one synchronisation) and stop at a non-finite one."
        if not self._window: return
        first, n = self.step - len(self._window) + 1, len(self._window)
        stacked = {k: torch.stack([torch.as_tensor(w[k], dtype=torch.float64, device=self.device) for w in self._window])
                   for k in self._window[0]}
        self._window = []
        bad = ~torch.isfinite(stacked["train_loss"])
        if _any_rank(bad.any().item(), self.device):
            i = int(bad.nonzero()[0]) if bad.any() else 0
            raise FloatingPointError(f"the loss is {stacked['train_loss'][i].item()} at step {first + i}"
                                     + ("" if bad.any() else " in another process"))
        for k, v in stacked.items(): self._sums[k] = self._sums.get(k, 0.0) + v.sum()
        self._count += n

    def _log_train(self, bar):
        "Write the mean of the logged numbers since the last line (averaged over processes)."
        keys = sorted(self._sums)
        vals = _all_mean([float(self._sums[k]) / self._count for k in keys], self.device)
        rec = {"step": self.step, "epoch": self.epoch, **dict(zip(keys, vals)), "seconds": round(time.time() - self._t0, 3)}
        self._log(rec); bar.set_postfix(loss=f"{rec['train_loss']:.4g}", refresh=False)   # text progress keeps its 20 s interval
        self._sums, self._count = {}, 0


# %% [markdown]
# **Validation.** The mean validation loss under a fixed seed in a forked random state, and the early-stopping
# bookkeeping that keeps the best weights.

# %%
#| exporti
class _Validation:
    "Part of `Learner`: the validation loss under a fixed seed, and early stopping on it."
    @torch.no_grad()
    def _validate(self) -> float:
        "Mean validation loss, under a fixed seed in a forked random state (so that validating changes nothing)."
        state, was = _rng_state(), self.model.training
        seed_everything(self.cfg.seed)  # the same pixels/augmentations at every validation, on every run
        self.model.eval()
        try:
            total, count = torch.zeros((), dtype=torch.float64, device=self.device), 0
            # in the main process: validation sets are small and cached, and workers would lose the cache
            idx = list(process_share(len(self.valid_data)))
            for b in DataLoader(self.valid_data, batch_size=self.per_rank, sampler=_ListSampler(idx), collate_fn=self.collate_fn):
                with self._autocast(): loss = _split_loss(self.loss_fn(self.model, _to_device(b, self.device)))[0]
                total += loss.double() * _batch_len(b); count += _batch_len(b)
            total, count = _all_mean([total.item(), count], self.device)
        finally:
            self.model.train(was)
            _set_rng_state(state)
        return total / max(count, 1e-12)

    def _after_validation(self, v: float):
        "Early-stopping bookkeeping; keep the best weights (best.pt, or in memory without an out_dir)."
        if v < self.best: self.best, self.best_step, self.bad = v, self.step, 0
        else: self.bad += 1
        self.stopped = self.cfg.patience is not None and self.bad >= self.cfg.patience
        self._log({"step": self.step, "valid_loss": v, "best_valid_loss": self.best})
        if self.best_step != self.step: return
        if self.out is not None: self._save(self.out / "best.pt")
        else: self.best_state = {k: v.detach().clone() for k, v in self.model.state_dict().items()}


# %% [markdown]
# **The loop.** `Learner` itself: the optimiser and schedule, the batches from the current position on, one
# step, what happens after it at its intervals, and `fit`, which strings them together.

# %%
#| export
class Learner(_Devices, _Checkpoints, _Metrics, _Validation):
    "One training run of `model` on `train_data` with `loss_fn` under a `TrainConfig`; `fit()` runs it."
    def __init__(self, model: nn.Module, train_data: Dataset, loss_fn, valid_data: Dataset = None,
                 config: TrainConfig = None, collate_fn=None):
        self.cfg, self.model, self.loss_fn, self.collate_fn = config or TrainConfig(), model, loss_fn, collate_fn
        self.train_data, self.valid_data = train_data, valid_data
        self.rank, self.world = _world()
        _check_data(train_data, self.cfg.batch_size, self.world)
        self.per_rank = self.cfg.batch_size // self.world
        self.device = self._device()
        self.amp = resolve_amp(self.cfg.amp, self.device)
        self.net = self._wrap()
        c, n = self.cfg, self.cfg.num_iters
        # a model may ask for parameter groups with their own settings (e.g. a learned bandwidth's learning rate)
        params = model.optimizer_groups() if hasattr(model, "optimizer_groups") else model.parameters()
        self.opt = torch.optim.Adam(params, lr=c.lr, betas=tuple(c.betas), eps=c.eps, weight_decay=c.weight_decay)
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, lambda s: LR_SCHEDULES[c.lr_schedule](min(s, n) / n))
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp == "fp16")
        self.out = Path(c.out_dir) if c.out_dir is not None else None
        self.stored_config = {**c.to_dict(), "world_size": self.world, "train_size": len(train_data)}
        self.step = self.epoch = self.pos = 0
        self.best, self.best_step, self.bad, self.stopped, self.best_state = math.inf, None, 0, False, None
        self._window, self._sums, self._count, self._t0 = [], {}, 0, time.time()

    def _batches(self):
        "Training batches from the current position on, epoch after epoch."
        while True:
            yield from _epoch_loader(self.train_data, self.epoch, self.pos, self.cfg.seed, self.rank, self.world, self.per_rank,
                                     self.cfg.num_workers, self.collate_fn)
            self.epoch, self.pos = self.epoch + 1, 0

    def _one_step(self, batch):
        "Forward (under autocast when `amp` is on), backward, Adam and schedule steps; the loss stays on the device."
        with self._autocast():
            loss, extra = _split_loss(self.loss_fn(self.net, _to_device(batch, self.device)))
        self.opt.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.opt)
        self.scaler.update()
        self.sched.step()
        self.step, self.pos = self.step + 1, self.pos + 1
        self._window.append({"train_loss": loss.detach(), **extra})

    def _after_step(self, bar):
        "Check, log, validate and checkpoint at their intervals."
        c, s = self.cfg, self.step
        end = s >= c.num_iters
        log = s % c.log_every == 0 or end
        validate = self.valid_data is not None and (s % c.valid_every == 0 or end)
        save = self.out is not None and (s % c.checkpoint_every == 0 or end)
        if log or validate or save: self._check_finite()
        if validate or save or end: self._sync_buffers()  # each process ran its last forward pass on its own shard
        if log: self._log_train(bar)
        if validate: self._after_validation(self._validate())
        if self.out is not None and (save or self.stopped): self._save(self.out / "last.pt")

    def fit(self) -> dict:
        "Train until `num_iters` steps or early stopping; returns a summary (steps, best validation loss and step, ...)."
        resumed = self._resume_path() is not None
        self._resume()
        self._start_metrics(resumed)
        self.model.train()
        bar = tqdm(total=self.cfg.num_iters, initial=min(self.step, self.cfg.num_iters), desc="fit", dynamic_ncols=True,
                   disable=not self.cfg.progress or self.rank != 0)
        try:
            batches = self._batches()
            while self.step < self.cfg.num_iters and not self.stopped:
                self._one_step(next(batches))
                bar.update(1)
                self._after_step(bar)
        finally:
            bar.close()
        self._finish()
        return {"steps": self.step, "best_valid_loss": None if self.best_step is None else self.best, "best_step": self.best_step,
                "stopped_early": self.stopped, "out_dir": None if self.out is None else str(self.out), "device": str(self.device),
                "amp": self.amp, "world_size": self.world, "weights_sha256": self.digests}


# %%
#| export
def fit(model: nn.Module,  # the model; it is moved to the config's device
        train_data: Dataset,  # a map-style dataset (len + indexing)
        loss_fn,  # loss_fn(model, batch) -> scalar loss, or {"loss": ..., other metrics}
        valid_data: Dataset = None,  # validation set for early stopping
        config: TrainConfig = None,  # the run's settings (default: `TrainConfig()`)
        collate_fn=None,  # DataLoader collate function
        **overrides  # any `TrainConfig` field, e.g. `num_iters=100, out_dir="runs/x"`
       ) -> dict:
    "Train `model` with Adam under `config`; returns a summary dict (steps, best validation loss and step, stopped early, ...)."
    cfg = configure(config or TrainConfig(), **overrides)
    return Learner(model, train_data, loss_fn, valid_data, cfg, collate_fn).fit()


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
    _r = fit(_net, _Noisy(64), supervised(nn.MSELoss()), out_dir=_tmp, valid_data=_Noisy(16, seed=1), num_iters=60,
             batch_size=8, lr=1e-2, valid_every=20, checkpoint_every=20, log_every=10, progress=False)
    _m = [json.loads(l) for l in (Path(_tmp) / "metrics.jsonl").read_text().splitlines()]
    test_eq([r["step"] for r in _m if "train_loss" in r], [10, 20, 30, 40, 50, 60])
    test_eq([r["step"] for r in _m if "valid_loss" in r], [20, 40, 60])
    _v = [r["valid_loss"] for r in _m if "valid_loss" in r]
    assert _v[-1] < _v[0] / 3, _v
    _ck = load_checkpoint(Path(_tmp) / "last.pt")
    test_eq((_ck["step"], _ck["epoch"], _ck["batch_in_epoch"]), (60, 7, 4))   # 8 batches per epoch
    test_eq(_ck["config"]["betas"], [0.9, 0.999])
    test_eq(_r["best_step"], int(np.argmin(_v) + 1) * 20)
    # the run is finished: fitting again only reloads the result
    _again = fit(_net, _Noisy(64), supervised(nn.MSELoss()), out_dir=_tmp, valid_data=_Noisy(16, seed=1), num_iters=60,
                 batch_size=8, lr=1e-2, valid_every=20, checkpoint_every=20, progress=False)
    test_eq(_again["steps"], 60)
    test_fail(lambda: fit(_net, _Noisy(64), supervised(nn.MSELoss()), out_dir=_tmp, valid_data=_Noisy(16, seed=1), num_iters=80,
                          batch_size=16, lr=1e-2, valid_every=20, progress=False), contains="batch_size was 8 in the checkpoint, now 16")


# %% [markdown]
# Resuming is exact: a run of 30 steps stopped at step 20 (its last checkpoint) and continued ends
# with the same bits as one that ran through — the dropout masks, the noise drawn by the dataset and
# the data order all continue where they were. (`tests/test_learner.py` kills a run with SIGKILL.)

# %%
def _run(tmp, steps, resume=True):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Dropout(0.2), nn.Linear(16, 1))
    fit(net, _Noisy(40), supervised(nn.MSELoss()), out_dir=tmp, num_iters=steps, batch_size=8, lr=1e-2,
        checkpoint_every=10, resume=resume, progress=False)
    return net

with tempfile.TemporaryDirectory() as _a, tempfile.TemporaryDirectory() as _b:
    _whole = _run(_a, 30)
    _run(_b, 20); _resumed = _run(_b, 30)          # 20 steps, then 10 more from last.pt
    for _p, _q in zip(_whole.parameters(), _resumed.parameters()): assert torch.equal(_p, _q)
    _fresh = _run(_b, 30, resume=False)            # resume=False starts over: same as the whole run
    for _p, _q in zip(_whole.parameters(), _fresh.parameters()): assert torch.equal(_p, _q)


# %% [markdown]
# A cosine learning-rate schedule, $\eta_t = \eta\,\tfrac12(1 + \cos(\pi t/T))$ over the `num_iters` $T$, is a
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
    fit(net, _Noisy(40), loss, out_dir=tmp, num_iters=30, batch_size=8, lr=1e-2, lr_schedule="cosine",
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
    _r = fit(_net, _Noisy(64), supervised(nn.MSELoss()), out_dir=_tmp, valid_data=_Noisy(16, 1), num_iters=200, batch_size=8,
             lr=5.0, valid_every=5, patience=2, progress=False)
    _v = [r["valid_loss"] for r in _read_metrics(Path(_tmp) / "metrics.jsonl", math.inf) if "valid_loss" in r]
    test_eq(_r["best_step"], 5 * (int(np.argmin(_v)) + 1))
    test_eq((_r["stopped_early"], _r["steps"]), (True, _r["best_step"] + 2 * 5))
    assert _r["steps"] < 200 and min(_v[-2:]) >= _r["best_valid_loss"]
    assert torch.equal(_net.weight, load_checkpoint(Path(_tmp) / "best.pt")["model"]["weight"])
torch.manual_seed(0)
_net2 = nn.Linear(4, 1)   # the same run without files keeps the best weights in memory
_r2 = fit(_net2, _Noisy(64), supervised(nn.MSELoss()), valid_data=_Noisy(16, 1), num_iters=200, batch_size=8, lr=5.0,
          valid_every=5, patience=2, progress=False)
test_eq(_r2["best_step"], _r["best_step"])
assert torch.equal(_net2.weight, _net.weight)
with tempfile.TemporaryDirectory() as _tmp:   # restore_best=False: the run ends with its last step's weights
    torch.manual_seed(0)
    _net3 = nn.Linear(4, 1)
    fit(_net3, _Noisy(64), supervised(nn.MSELoss()), out_dir=_tmp, valid_data=_Noisy(16, 1), num_iters=200, batch_size=8,
        lr=5.0, valid_every=5, patience=2, restore_best=False, progress=False)
    assert torch.equal(_net3.weight, load_checkpoint(Path(_tmp) / "last.pt")["model"]["weight"])
    assert not torch.equal(_net3.weight, load_checkpoint(Path(_tmp) / "best.pt")["model"]["weight"])


# %% [markdown]
# A non-finite loss stops the run with the step at which it first appeared, before anything is saved;
# mixed precision runs on the CPU as on a GPU: under `amp="bf16"` the regression still learns, and
# under `amp="fp16"` the gradient scaler's state goes into the checkpoint, so a resumed run continues
# with the same loss scale.

# %%
def _nan_after(k):
    calls, mse = [0], supervised(nn.MSELoss())
    def loss(m, b):
        calls[0] += 1
        return mse(m, b) * (float("nan") if calls[0] >= k else 1.0)
    return loss

with tempfile.TemporaryDirectory() as _tmp:
    test_fail(lambda: fit(nn.Linear(4, 1), _Noisy(40), _nan_after(13), out_dir=_tmp, num_iters=30, batch_size=8,
                          checkpoint_every=10, progress=False), contains="the loss is nan at step 13")
    test_eq(load_checkpoint(Path(_tmp) / "last.pt")["step"], 10)                      # the checkpoint before it
    torch.manual_seed(0)
    _r = fit(nn.Linear(4, 1), _Noisy(64), supervised(nn.MSELoss()), valid_data=_Noisy(16, 1), num_iters=60, batch_size=8,
             lr=3e-2, valid_every=20, amp="bf16", progress=False, out_dir=Path(_tmp) / "bf16")
    test_eq((_r["amp"], _r["device"]), ("bf16", "cpu"))
    _v = [r["valid_loss"] for r in _read_metrics(Path(_tmp) / "bf16" / "metrics.jsonl", math.inf) if "valid_loss" in r]
    assert _v[-1] < _v[0] / 2, _v
    fit(nn.Linear(4, 1), _Noisy(64), supervised(nn.MSELoss()), num_iters=20, batch_size=8, amp="fp16", progress=False,
        out_dir=Path(_tmp) / "fp16")
    assert load_checkpoint(Path(_tmp) / "fp16" / "last.pt")["scaler"]["scale"] > 0



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
                 ax=None, logy: bool = False,
                 ylabel: str = None):  # the y axis' label; None: "loss" when every key is a loss, else "value"
    "Plot metric curves against the step; returns the matplotlib axes."
    import matplotlib.pyplot as plt
    recs = read_metrics(path)
    if ax is None: _, ax = plt.subplots(figsize=(6, 3))
    for k in keys:
        pts = [(r["step"], r[k]) for r in recs if k in r]
        if pts: ax.plot(*zip(*pts), "o-" if len(pts) < 30 else "-", label=k, ms=3)
    ax.set_xlabel("step"); ax.set_ylabel(ylabel or ("loss" if all("loss" in k for k in keys) else "value"))
    ax.legend(); ax.grid(alpha=0.3)
    if logy: ax.set_yscale("log")
    return ax


# %%
#| export
def images_per_second(path,  # a metrics.jsonl file or the run's out_dir
                      batch_size: int  # images per step
                     ) -> float:
    "Training speed of a run: images per second between consecutive log lines (across a resume, each process's own clock)."
    recs = [r for r in read_metrics(path) if "train_loss" in r]
    pairs = [(b["step"] - a["step"], b["seconds"] - a["seconds"]) for a, b in zip(recs, recs[1:]) if b["seconds"] > a["seconds"]]
    if not pairs: raise ValueError(f"{path}: fewer than two timed log lines; cannot measure the speed")
    return batch_size * sum(n for n, _ in pairs) / sum(t for _, t in pairs)


# %%
with tempfile.TemporaryDirectory() as _tmp:
    (Path(_tmp) / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in [
        {"step": 10, "train_loss": 1, "seconds": 2.0}, {"step": 20, "train_loss": 1, "seconds": 4.0}, {"step": 20, "valid_loss": 1},
        {"step": 30, "train_loss": 1, "seconds": 1.0}, {"step": 40, "train_loss": 1, "seconds": 3.0}]))   # resumed after step 20
    test_eq(images_per_second(_tmp, 8), 8 * 20 / 4.0)

# %%
with tempfile.TemporaryDirectory() as _tmp:
    torch.manual_seed(0)
    fit(nn.Linear(4, 1), _Noisy(64), supervised(nn.MSELoss()), out_dir=_tmp, valid_data=_Noisy(16, 1), num_iters=100,
        batch_size=8, lr=3e-2, valid_every=10, log_every=5, progress=False)
    _ax = plot_metrics(_tmp, logy=True)
    test_eq(len(_ax.lines), 2)
    test_eq(len(read_metrics(_tmp)), 30)


# %% [markdown]
# ## The command line
#
# `motion_nbs_train --task module:function ...`, which runs a chapter's training function from a shell or
# under torchrun, is chapter 02f (`motion_nbs.cli`).

# %%
#| export
def __getattr__(name):  # the command line moved to motion_nbs.cli; these aliases stay for one release
    if name in ("train_cli", "run_task"):
        warnings.warn(f"motion_nbs.learner.{name} moved to motion_nbs.cli.{name}", DeprecationWarning, stacklevel=2)
        return getattr(importlib.import_module("motion_nbs.cli"), name)
    raise AttributeError(f"module 'motion_nbs.learner' has no attribute {name!r}")


# %% [markdown]
# ## Summary
#
# - `TrainConfig`: a run's settings in one validated dataclass, stored in checkpoints; `ExperimentConfig`
#   adds an experiment family's objective, data, network and crops, made `from_preset`.
# - `fit(model, train_data, loss_fn, valid_data, config, **overrides)` (a `Learner`): Adam (β 0.9/0.999,
#   ε 1e-8, lr 1e-4, no weight decay), validation every `valid_every` steps, early stopping with
#   `patience` (best weights in `best.pt`, restored at the end), `last.pt` every `checkpoint_every`
#   steps, `metrics.jsonl`, tqdm progress; bit-exact resume; any device, with bf16/fp16 autocast;
#   DDP under torchrun, where the processes must end with the same weights.
# - Loss functions take `(model, batch)`; `supervised(criterion)` adapts `criterion(output, target)`.
# - `load_checkpoint`, `load_weights`, `read_metrics`, `plot_metrics`, `images_per_second`.
# - The command line `motion_nbs_train` is chapter 02f (`motion_nbs.cli`).

# %%
#| hide
import nbdev; nbdev.nbdev_export()
