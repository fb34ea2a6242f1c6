"""A tiny training task for the learner's command-line, kill/resume and torchrun tests.

`train` is what a chapter's training function looks like: parameters with defaults, a model, data, a
loss, and a call to `fit`. It also writes each process's final weights to `out/final_rank{r}.pt`."""
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
from torch.utils.data import Dataset

from motion_nbs.core import atomic_save
from motion_nbs.learner import TrainConfig, _world, fit


class Noisy(Dataset):
    "y = x·w plus noise drawn from the global generator on each access (stands in for augmentation)."
    def __init__(self, n: int, seed: int, noise: float = 0.05):
        g = torch.Generator().manual_seed(seed)
        self.noise = noise
        self.x = torch.randn(n, 6, generator=g)
        self.y = self.x @ torch.linspace(-1, 1, 6)[:, None]
    def __len__(self): return len(self.x)
    def __getitem__(self, i): return self.x[i], self.y[i] + self.noise * torch.randn(1)


@dataclass
class TaskConfig(TrainConfig):
    "The task's own fields on top of the learner's."
    dropout: float = 0.3  # dropout before the last layer
    hidden: int = 16  # hidden units
    noise: float = 0.05  # label noise, drawn at each access


def train(out: str, steps: int = 12, seed: int = 0, dropout: float = 0.3, lr: float = 1e-2, batch_size: int = 8,
          checkpoint_every: int = 2, valid_every: int = 4, sleep: float = 0.0, hidden: int = 16, noise: float = 0.05):
    "Regression with a two-layer MLP; `sleep` seconds per step leave time to kill the run."
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(6, hidden), nn.ReLU(), nn.Dropout(dropout), nn.Linear(hidden, 1))

    def loss_fn(m, batch):
        if sleep: time.sleep(sleep)
        x, y = batch
        return {"loss": nn.functional.mse_loss(m(x), y), "mean_pred": m(x).mean()}

    cfg = TaskConfig(num_iters=steps, batch_size=batch_size, lr=lr, valid_every=valid_every, checkpoint_every=checkpoint_every,
                     log_every=2, seed=seed, progress=False, out_dir=out, dropout=dropout, hidden=hidden, noise=noise)
    summary = fit(model, Noisy(48, seed, noise), loss_fn, Noisy(16, seed + 1, noise), cfg)
    rank = _world()[0]
    atomic_save({k: v.detach().clone() for k, v in model.state_dict().items()}, Path(out) / f"final_rank{rank}.pt")
    return summary
