"""The house stays small (issue #40, item 4): no module of the package over `MAX_MODULE_LINES` lines, and no two
modules that import each other when they are loaded (a chapter imports earlier chapters' modules, never the
reverse; an import inside a function, such as a deprecated alias's, is not a module-level import)."""
import ast
import re
import warnings
from pathlib import Path

import pytest

from conftest import ROOT

PKG = ROOT / "motion_nbs"
MAX_MODULE_LINES = 700
GENERATED = {"_modidx.py"}   # nbdev's index of every notebook's names, not code anyone reads


def _modules() -> dict[str, Path]:
    return {p.stem: p for p in sorted(PKG.glob("*.py")) if p.name != "__init__.py" and p.name not in GENERATED}


def _statements(body):
    "Module-level statements, including those under a module-level `if`/`try`/`with` (not inside functions or classes)."
    for node in body:
        yield node
        if isinstance(node, (ast.If, ast.Try, ast.With)):
            for field in ("body", "orelse", "finalbody"):
                yield from _statements(getattr(node, field, []))
            for h in getattr(node, "handlers", []): yield from _statements(h.body)


def module_imports(source: str, package: str = "motion_nbs") -> set[str]:
    "The package's modules that `source` imports when it is loaded."
    found = set()
    for node in _statements(ast.parse(source).body):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name.startswith(package + "."): found.add(a.name.split(".")[1])
        elif isinstance(node, ast.ImportFrom):
            mod = node.module or ""
            if node.level == 0 and mod == package or node.level == 1 and not mod:   # from motion_nbs import x / from . import x
                found |= {a.name for a in node.names}
            elif node.level == 0 and mod.startswith(package + "."): found.add(mod.split(".")[1])
            elif node.level == 1: found.add(mod.split(".")[0])
    return found


def test_module_imports_parser():
    src = ("import os\nfrom motion_nbs.core import x\nimport motion_nbs.flow as f\nfrom . import data\nfrom .models import y\n"
           "try:\n    from motion_nbs import voc\nexcept ImportError: pass\n"
           "def lazy():\n    from motion_nbs.cli import train_cli\n"
           "class C:\n    import motion_nbs.s3\n")
    assert module_imports(src) == {"core", "flow", "data", "models", "voc"}


@pytest.mark.parametrize("name", sorted(_modules()))
def test_module_is_small(name):
    n = len(_modules()[name].read_text().splitlines())
    assert n <= MAX_MODULE_LINES, (f"motion_nbs/{name}.py has {n} lines, over the house limit of {MAX_MODULE_LINES}: "
                                   "split its notebook (e.g. fast paths into their own library chapter, as 05_features_fast)")


def test_no_two_modules_import_each_other():
    mods = _modules()
    imports = {m: module_imports(p.read_text()) & set(mods) for m, p in mods.items()}
    circles = sorted({tuple(sorted((a, b))) for a, deps in imports.items() for b in deps if a != b and a in imports.get(b, ())})
    assert not circles, f"modules that import each other at load time: {circles} (import one lazily, or move the shared code earlier)"


def _notebook_of_module() -> dict[str, str]:
    out = {}
    for nb in sorted((ROOT / "nbs").glob("*.ipynb")):
        m = re.search(r"#\|\s*default_exp\s+([\w.]+)", nb.read_text())
        if m: out[m.group(1)] = nb.stem
    return out


# `motion_nbs.data` re-exports chapter 02d's real-video data (README: "all importable from `motion_nbs.data` too"),
# which came out of 02a: the one standing exception, listed so that a new one fails and a removed one is noticed.
KNOWN_LATER_IMPORTS = {("data", "flowdata")}


def test_modules_import_only_earlier_chapters():
    "DESIGN.md: later chapters import earlier modules, never the other way round (the book's order is the notebooks' names)."
    order, mods = _notebook_of_module(), _modules()
    later = {(m, d) for m, p in mods.items() for d in sorted(module_imports(p.read_text()) & set(mods))
             if m in order and d in order and order[d] > order[m]}
    new = sorted(later - KNOWN_LATER_IMPORTS)
    assert not new, "modules importing a later chapter's module at load time: " + \
        ", ".join(f"{m} ({order[m]}) imports {d} ({order[d]})" for m, d in new)
    assert not KNOWN_LATER_IMPORTS - later, f"no longer imported, remove from KNOWN_LATER_IMPORTS: {KNOWN_LATER_IMPORTS - later}"


def test_deprecated_learner_aliases_still_work():
    "The command line moved from `learner` to `cli` (#26); the old names import `cli` lazily and warn."
    import motion_nbs.cli as cli
    import motion_nbs.learner as learner
    for name in ("train_cli", "run_task"):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            assert getattr(learner, name) is getattr(cli, name)
        assert any(issubclass(w.category, DeprecationWarning) and f"motion_nbs.cli.{name}" in str(w.message) for w in caught)
    with pytest.raises(AttributeError): learner.no_such_name
