# %%
#| default_exp __init__

# %% [markdown]
# # The package
#
# > What `import motion_nbs` does: the version, and parameter docs that `help()` shows.

# %% [markdown]
# *Default run: **8 s** on 2 CPU cores with the default parameters (measured by `make book` on 6 Dec 2026, reusing the training and caches that earlier runs left in the runs folder, `core.runs_dir`; where a first run on a new machine takes longer, the chapter says so).*

# %% [markdown]
# `import motion_nbs` is cheap: it imports no chapter (and not torch). Each chapter is its own module,
# `import motion_nbs.cpfs`, `from motion_nbs.reversed import guided_backprop`; `motion_nbs.__version__`
# is the package's version (`settings.ini`). This page is `motion_nbs/__init__.py`.
#
# ## Parameter docs in `help()`
#
# Parameters are documented the nbdev way, by a comment beside each one (`show_doc` renders them as a
# table on the website). A user of the installed package calls `help(cpfs_loss)`, or presses Shift-Tab
# in JupyterLab, and sees the docstring, not the source. So the package adds every public function's
# and class's parameter comments to its docstring, as a numpy-style `Parameters` section, as each of its
# modules is imported: a finder on `sys.meta_path` that answers only for `motion_nbs.*` (every other
# import goes on as before) reads the module's own source once, `ast` for the parameters and `tokenize`
# for the comments, which costs a few milliseconds per module. The website is unchanged: `show_doc`
# shows a docstring's summary and extended text, not its numpy sections. Where a package is installed
# without its sources (a zip of byte code), docstrings stay as they are.

# %%
#| export
import ast as _ast, importlib.abc as _abc, inspect as _inspect, io as _io, sys as _sys, tokenize as _tokenize

def _param_comments(source: str) -> dict:
    "{qualname: {param: comment}} for the functions, methods and dataclass fields of a module's source."
    comments, code_lines = {}, set()
    for tok in _tokenize.generate_tokens(_io.StringIO(source).readline):
        if tok.type == _tokenize.COMMENT: comments[tok.start[0]] = tok.string.lstrip("#").strip()
        elif tok.type not in (_tokenize.NL, _tokenize.NEWLINE, _tokenize.INDENT, _tokenize.DEDENT, _tokenize.ENDMARKER):
            code_lines.update(range(tok.start[0], tok.end[0] + 1))
    def owned(items, stop):  # item -> its comment: on its line (if last there) and comment-only lines after it
        out = {}
        for i, (name, line) in enumerate(items):
            nxt = items[i + 1][1] if i + 1 < len(items) else stop
            if nxt == line or line not in comments: continue
            text, k = [comments[line]], line + 1
            while k < nxt and k in comments and k not in code_lines: text.append(comments[k]); k += 1
            out[name] = " ".join(text)
        return out
    def params(f):
        a = f.args
        items = [(x.arg, x.lineno) for x in a.posonlyargs + a.args + ([a.vararg] if a.vararg else []) + a.kwonlyargs + ([a.kwarg] if a.kwarg else [])]
        return owned([x for x in items if x[0] not in ("self", "cls")], f.body[0].lineno)
    out = {}
    for node in _ast.parse(source).body:
        if isinstance(node, (_ast.FunctionDef, _ast.AsyncFunctionDef)): out[node.name] = params(node)
        elif isinstance(node, _ast.ClassDef):
            fields = [(x.target.id, x.lineno) for x in node.body if isinstance(x, _ast.AnnAssign) and isinstance(x.target, _ast.Name)]
            out[node.name] = owned(fields, node.end_lineno + 1)
            for f in node.body:
                if isinstance(f, (_ast.FunctionDef, _ast.AsyncFunctionDef)):
                    if f.name == "__init__": out[node.name] = {**out[node.name], **params(f)}
                    else: out[f"{node.name}.{f.name}"] = params(f)
    return out

def _add_param_docs(module) -> None:
    "Append a numpy-style `Parameters` section, from the parameter comments, to the public docstrings of `module`."
    try: found = _param_comments(_inspect.getsource(module))
    except (OSError, TypeError, SyntaxError): return   # no source shipped: docstrings stay as they are
    for qualname, docs in found.items():
        owner, obj = None, module
        for part in qualname.split("."): owner, obj = obj, getattr(obj, part, None)
        if not docs or obj is None or qualname.split(".")[-1].startswith("_") or getattr(obj, "__module__", None) != module.__name__: continue
        doc = _inspect.cleandoc(obj.__doc__ or "")
        if "\nParameters\n----------" in doc: continue
        section = "\n".join(f"{k}\n    {v}" for k, v in docs.items())
        try: obj.__doc__ = f"{doc}\n\nParameters\n----------\n{section}".lstrip()
        except (AttributeError, TypeError): pass

class _ParamDocs(_abc.MetaPathFinder):
    "Documents `motion_nbs`' own modules as they are imported (`_add_param_docs`); every other import is left alone."
    package = __name__
    def find_spec(self, name, path, target=None):
        if not name.startswith(self.package + ".") or name.endswith("._modidx"): return None
        for finder in _sys.meta_path:   # the real finder (never another of ours: a reloaded package must not recurse)
            if type(finder).__name__ == "_ParamDocs" or not hasattr(finder, "find_spec"): continue
            spec = finder.find_spec(name, path, target)
            if spec is not None: break
        else: return None
        if spec.loader is not None and hasattr(spec.loader, "exec_module"): spec.loader = _Documenting(spec.loader)
        return spec

class _Documenting(_abc.Loader):
    def __init__(self, loader): self._loader = loader
    def __getattr__(self, name): return getattr(self._loader, name)
    def create_module(self, spec): return self._loader.create_module(spec)
    def exec_module(self, module):
        self._loader.exec_module(module)
        _add_param_docs(module)

if not any(type(f).__name__ == "_ParamDocs" and getattr(f, "package", None) == __name__ for f in _sys.meta_path):
    _sys.meta_path.insert(0, _ParamDocs())

# %%
#| hide
from pathlib import Path

from fastcore.docments import docments
from fastcore.test import test_eq

import motion_nbs

# %%
_src = '''
def f(a,  # the first
      b: int = 2,  # the second,
                   # continued
      *rest, c=None,  # c's
      **kw):
    "One line."
class C:
    "A class."
    def __init__(self, x,  # x's
                 y=1): pass
    def go(self, n: int  # how many
          ): pass
'''
test_eq(motion_nbs._param_comments(_src), {"f": {"a": "the first", "b": "the second, continued", "c": "c's"},
                                           "C": {"x": "x's"}, "C.go": {"n": "how many"}})

# %% [markdown]
# Checked against fastcore's `docments` (which nbdev uses for the website's tables) on every public
# function of `motion_nbs.core`: the same text for every parameter both find, and `help()` shows it.

# %%
import motion_nbs.core as _core
_ours = motion_nbs._param_comments(Path(_core.__file__).read_text())
_n = 0
for _name in _core.__all__:
    _obj = getattr(_core, _name)
    if not callable(_obj) or _name not in _ours: continue
    for _k, _v in docments(_obj).items():
        if _k != "return" and _v is not None: test_eq(_ours[_name].get(_k), _v); _n += 1
assert _n > 20, _n
assert "Parameters\n----------\nmodel\n    the caller's network" in _core.frozen.__doc__, _core.frozen.__doc__
print(f"{_n} parameter comments agree with docments; help(frozen) shows:\n")
print(_core.frozen.__doc__)

# %% [markdown]
# How much `help()` gains, module by module: the public functions and classes whose parameters carry comments,
# and the number of parameters documented (read from the sources, without importing the modules):

# %%
import matplotlib.pyplot as plt
_lib = Path(motion_nbs.__file__).parent
_counts = {}
for _f in sorted(_lib.glob("*.py")):
    if _f.stem.startswith("_"): continue
    _found = {k: v for k, v in motion_nbs._param_comments(_f.read_text()).items() if v and not k.split(".")[-1].startswith("_")}
    _counts[_f.stem] = (len(_found), sum(len(v) for v in _found.values()))
_fig, _ax = plt.subplots(figsize=(6, 0.28 * len(_counts) + 1))
_ax.barh(list(_counts), [c[1] for c in _counts.values()], color="C0")
for _i, (_m, (_n, _k)) in enumerate(_counts.items()): _ax.text(_k, _i, f" {_n} symbols", va="center", fontsize=7)
_ax.invert_yaxis(); _ax.set_xlabel("documented parameters that help() shows"); _ax.set_ylabel("module")
_fig.tight_layout(); plt.show()
print(f"{sum(c[0] for c in _counts.values())} public functions and classes, {sum(c[1] for c in _counts.values())} documented parameters")

# %% [markdown]
# Reloading the package (`importlib.reload`) installs no second finder, and a module imported afterwards is
# documented as before:

# %%
import importlib, sys
importlib.reload(motion_nbs)
test_eq(sum(type(f).__name__ == "_ParamDocs" and getattr(f, "package", None) == "motion_nbs" for f in sys.meta_path), 1)
sys.modules.pop("motion_nbs.compare", None)
import motion_nbs.compare
assert "\nParameters\n----------\n" in motion_nbs.compare.paired_comparison.__doc__

# %% [markdown]
# ## Summary
#
# - `motion_nbs.__version__`; each chapter is imported on its own (`import motion_nbs.cpfs`).
# - `help()` and JupyterLab's Shift-Tab show every public function's and class's parameter comments, added to the
#   docstrings as a `Parameters` section when the module is imported.

# %%
#| hide
import nbdev; nbdev.nbdev_export()
