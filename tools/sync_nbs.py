"""Keep each notebook in nbs/ and its paired py:percent script in sync, then export and clean.

For every pair, the newer file is the source: a script edited after its notebook updates the notebook
(outputs are kept), a notebook edited after its script rewrites the script. New scripts get a new
notebook with the python3 kernel (papermill needs a kernelspec). Then `nbdev_export` runs,
`nbdev_clean` cleans the notebooks (keeping their outputs and, unlike nbdev_clean alone, their execution
counts: `make book` saves executed chapters and tests/test_book.py reads the counts to catch a partial or
stale run), and each script is rewritten from its cleaned notebook so the pair is canonical. `python tools/sync_nbs.py 01_flow 02a_data` limits the work to those pairs (the export
always covers every notebook).
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import jupytext

ROOT = Path(__file__).resolve().parents[1]
NBS = ROOT / "nbs"
BIN = Path(sys.executable).parent
KERNELSPEC = {"display_name": "Python 3", "language": "python", "name": "python3"}


def to_notebook(script: Path, notebook: Path) -> None:
    new = jupytext.read(script)
    if notebook.exists():  # keep outputs and notebook metadata, take cells from the script
        old = jupytext.read(notebook)
        new = jupytext.combine.combine_inputs_with_outputs(new, old)
        new.metadata = {**old.metadata, **{k: v for k, v in new.metadata.items() if k == "jupytext"}}
    new.metadata.setdefault("kernelspec", KERNELSPEC)
    jupytext.write(new, notebook)


def clean(notebook: Path) -> None:
    "`nbdev_clean` one notebook, then put back the execution counts it erased (cells' and `execute_result` outputs')."
    def counts(nb):
        return [(c.get("execution_count"), [o.get("execution_count") for o in c.get("outputs", [])]) for c in nb["cells"]]
    before = counts(json.loads(notebook.read_text(encoding="utf-8")))
    subprocess.run([BIN / "nbdev_clean", "--fname", str(notebook)], cwd=ROOT, check=True)
    nb = json.loads(notebook.read_text(encoding="utf-8"))
    if all(n is None and all(m is None for m in outs) for n, outs in before): return
    for cell, (n, outs) in zip(nb["cells"], before, strict=True):
        if cell["cell_type"] != "code": continue
        cell["execution_count"] = n
        for o, m in zip(cell.get("outputs", []), outs, strict=True):
            if "execution_count" in o: o["execution_count"] = m
    notebook.write_text(json.dumps(nb, sort_keys=True, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")   # nbdev's format


def main(stems: list[str]) -> None:
    """Sync the pairs named by `stems` (e.g. `01_flow`), or every pair when none is named."""
    scripts = [NBS / f"{s}.py" for s in stems] if stems else sorted(NBS.glob("*.py"))
    notebooks = [p.with_suffix(".ipynb") for p in scripts]
    for script in scripts:
        notebook = script.with_suffix(".ipynb")
        if not notebook.exists() or script.stat().st_mtime > notebook.stat().st_mtime:
            to_notebook(script, notebook)
            print(f"script -> notebook: {notebook.name}")
    subprocess.run([BIN / "nbdev_export"], cwd=ROOT, check=True)
    for notebook in notebooks:
        clean(notebook)
        subprocess.run([BIN / "jupytext", "--quiet", "--to", "py:percent", str(notebook)], cwd=ROOT, check=True)
        t = notebook.stat().st_mtime  # same time on both: only a later edit makes one side the source
        os.utime(notebook.with_suffix(".py"), (t, t))


if __name__ == "__main__":
    main(sys.argv[1:])
