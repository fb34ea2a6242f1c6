# %%
#| default_exp cli

# %% [markdown]
# # The command line
#
# > `motion_nbs_train --task module:function --name value ...`: a chapter's training function run from a shell, a cluster job or torchrun.

# %% [markdown]
# *Default run: **1 min 41 s** on 2 CPU cores with the default parameters (measured by `make book` on 6 Dec 2026, reusing the training and caches that earlier runs left in the runs folder, `core.runs_dir`; where a first run on a new machine takes longer, the chapter says so).*

# %%
#| export
import argparse
import ast
import importlib
import importlib.util
import inspect
import json
import os
import re
import sys
from dataclasses import fields
from pathlib import Path

import torch.distributed as dist

from motion_nbs.learner import TrainConfig, init_distributed

# %%
#| hide
import os
from typing import ClassVar

import torch
import torch.nn as nn
from fastcore.test import test_eq, test_fail

from motion_nbs.learner import ExperimentConfig


# %%
class _Toy(ExperimentConfig):  # a config family for the tests below
    PRESETS: ClassVar[dict] = {"cpu": dict(loss="a", num_iters={"a": 5, "*": 7}, batch_size=4), "paper": dict(loss="a", num_iters=9)}


# %% [markdown]
# ## Running a task
#
# Training notebooks define their experiment as a function, e.g. `motion_nbs.cpfs:train(config)`,
# which the notebook calls with its parameters and which calls `fit`. The console command runs the
# same function with the same parameters, so a run can go to a cluster:
#
# ```
# motion_nbs_train --task motion_nbs.cpfs:train --preset paper --out_dir runs/cpfs
# torchrun --nproc_per_node=8 --no-python motion_nbs_train --task motion_nbs.cpfs:train --preset paper
# ```
#
# The task is found at run time (a module or a `.py` file, then the function), so this chapter does
# not import the later ones. A task is either a function whose `config` parameter is annotated with a
# `TrainConfig` class — its parameters are that class's fields, filled from a preset by `from_preset`
# — or a plain function with keyword parameters. Parameters are given as `--name value` (or
# `--name=value`) and converted to the type of the default (`int`, `float`, `bool`, `str`, tuples as
# `1,2`); parameters without a default, or with `None`, take a Python literal or else the string.
# `--help` lists the parameters with their documentation. Under torchrun the process group is started
# before the task runs. At the end, rank 0 prints one line of JSON with the run's scalar results
# (`out_dir`, `steps`, the key metric, ...) and the command exits with status 0.

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

def _config_class(fn):
    "The `TrainConfig` class a task takes as its `config` parameter, or None for a plain keyword function."
    p = inspect.signature(fn).parameters.get("config")
    a = None if p is None else p.annotation
    return a if isinstance(a, type) and issubclass(a, TrainConfig) else None

def _task_params(fn) -> dict:
    "Name -> default of a task's parameters (`inspect.Parameter.empty` where required)."
    cls = _config_class(fn)
    if cls is not None: return {f.name: f.default for f in fields(cls)}
    sig = inspect.signature(fn)
    return {n: p.default for n, p in sig.parameters.items() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}

def _parse_params(fn, args: list) -> dict:
    params, out, i = _task_params(fn), {}, 0
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
        d = params[key]
        out[key] = _convert(name, value, None if d is inspect.Parameter.empty else d)
    missing = [n for n, d in params.items() if d is inspect.Parameter.empty and n not in out]
    if missing: raise ValueError(f"missing required parameter(s) {', '.join('--' + n for n in missing)}")
    return out

def _field_docs(cls) -> dict:
    "The inline comments of a dataclass' fields (its docments), read from its source and its bases'."
    docs = {}
    for c in reversed(cls.__mro__):
        try: src = inspect.getsource(c)
        except (OSError, TypeError): continue
        docs.update(re.findall(r"^\s+(\w+):[^#\n]*#\s*(.+)$", src, re.M))
    return docs

def _task_help(spec: str, fn) -> str:
    cls = _config_class(fn)
    if cls is None: return f"{spec}{inspect.signature(fn)}\n\n{inspect.getdoc(fn) or ''}"
    docs = _field_docs(cls)
    lines = [f"  --{f.name} (default {f.default!r}): {docs.get(f.name, '')}" for f in fields(cls)]
    return f"{spec}: {inspect.getdoc(fn) or ''}\n\nParameters ({cls.__name__}; unset ones come from --preset):\n" + "\n".join(lines)

def _summary_line(result) -> str:
    "One JSON line with a result's scalar entries (never tensors or models)."
    if not isinstance(result, dict): return json.dumps({"result": repr(result)[:200]})
    return json.dumps({k: v for k, v in result.items() if v is None or isinstance(v, (str, bool, int, float))})


# %%
#| export
def run_task(argv: list  # `--task module:function --name value ...`
            ):
    "Run a training task from command-line arguments (starting the process group under torchrun); returns its result."
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
        print(_task_help(known.task, fn))
        return None
    params, cls = _parse_params(fn, rest), _config_class(fn)
    distributed = init_distributed()
    try:
        if cls is None: return fn(**params)
        return fn(cls.from_preset(**params) if hasattr(cls, "from_preset") else cls(**params))
    finally:
        if distributed and dist.is_initialized(): dist.destroy_process_group()

def train_cli(argv=None  # arguments (default: sys.argv[1:])
             ) -> int:
    "`motion_nbs_train --task module:function --name value ...`: run a task, print its summary (rank 0), return 0."
    rank = int(os.environ.get("RANK", "0"))
    result = run_task(list(sys.argv[1:] if argv is None else argv))
    if result is not None and rank == 0: print(_summary_line(result), flush=True)
    return 0


# %%
def _task(out: str, steps: int = 3, lr: float = 1e-3, deep: bool = False, sizes=(1, 2), note=None):
    "A stand-in task."
    return dict(out=out, steps=steps, lr=lr, deep=deep, sizes=sizes, note=note)

def _toy_task(config: _Toy = None): return config

test_eq(_parse_params(_task, ["--out", "x", "--steps=5", "--deep", "true", "--sizes", "3,4", "--note", "[1, 2]"]),
        dict(out="x", steps=5, deep=True, sizes=(3, 4), note=[1, 2]))
test_fail(lambda: _parse_params(_task, ["--out", "x", "--stpes", "5"]), contains="unknown parameter --stpes")
test_fail(lambda: _parse_params(_task, ["--out", "x", "--steps", "five"]), contains="--steps: expected a int like 3, got 'five'")
test_fail(lambda: _parse_params(_task, ["--steps", "5"]), contains="missing required parameter(s) --out")
test_eq(_parse_params(_toy_task, ["--num_iters", "4", "--loss", "b", "--patience", "3"]), dict(num_iters=4, loss="b", patience=3))
test_fail(lambda: _parse_params(_toy_task, ["--max_steps", "4"]), contains="valid: --num_iters, --batch_size")
test_eq(_summary_line({"steps": 3, "out_dir": "x", "model": nn.Linear(1, 1), "w": torch.ones(2), "ok": None}),
        '{"steps": 3, "out_dir": "x", "ok": null}')

# %%
import motion_nbs.learner as _exported   # inspect reads the source of the exported class

# %%
test_eq(_field_docs(_exported.ExperimentConfig)["amp"][:15], "mixed precision")
test_eq(run_task(["--task", "motion_nbs.core:data_dir", "--create", "false"]).name, Path(os.environ.get("MOTION_NBS_DATA", "motion_nbs")).name)
test_eq(train_cli(["--task", "motion_nbs.core:data_dir", "--create", "false"]), 0)
test_fail(lambda: train_cli(["--task", "motion_nbs.core:nothing"]), contains="its functions: data_dir")
test_fail(lambda: train_cli(["--task", "motion_nbs.nowhere:train"]), contains="cannot import the task module 'motion_nbs.nowhere'")

# %% [markdown]
# ## A run from the shell
#
# The command a cluster job would run, here as a subprocess of this notebook: 100 steps of CPFS with the
# KTA loss on the `cpu` preset, validated every 25 steps. The command prints plain-text progress
# (`MOTION_NBS_PROGRESS=text`) and, at the end, its one-line JSON summary; the run folder holds the same
# `metrics.jsonl` as a notebook run, drawn below with `plot_metrics` (chapter 02c). Papermill and JupyterLab
# run this cell; the quick test (`nbdev_test`) skips it (`slow`).

# %%
#| slow
import subprocess
import tempfile

from motion_nbs.learner import plot_metrics

# %%
#| slow
_cmd = [str(Path(sys.executable).parent / "motion_nbs_train"), "--task", "motion_nbs.cpfs:train", "--preset", "cpu",
        "--loss", "kta", "--num_iters", "100", "--valid_every", "25"]
with tempfile.TemporaryDirectory() as _d:
    _out = subprocess.run(_cmd + ["--out_dir", _d], capture_output=True, text=True, env={**os.environ, "MOTION_NBS_PROGRESS": "text"})
    if _out.returncode: raise RuntimeError(f"{' '.join(_cmd)} failed:\n{_out.stderr[-3000:]}")
    _summary = json.loads(_out.stdout.strip().splitlines()[-1])
    print(" ".join(_cmd[1:]), "\n->", {k: (round(v, 3) if isinstance(v, float) else v) for k, v in _summary.items() if k not in ("out_dir", "metrics_path")})
    plot_metrics(_d).set_title("motion_nbs_train --task motion_nbs.cpfs:train --loss kta (100 steps)")
test_eq(_summary["steps"], 100)

# %% [markdown]
# ## Summary
#
# - `motion_nbs_train --task module:function --name value ...` (`train_cli`, `run_task`) runs a chapter's
#   training function, also as `torchrun --nproc_per_node=N --no-python motion_nbs_train ...`, and prints a
#   one-line summary; `--help` lists a task's parameters with their documentation.

# %%
#| hide
import nbdev; nbdev.nbdev_export()
