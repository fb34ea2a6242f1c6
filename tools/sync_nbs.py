"""Keep each notebook in nbs/ and its paired py:percent script in sync, then export and clean.

For every pair, the newer file is the source: a script edited after its notebook updates the notebook
(outputs are kept), a notebook edited after its script rewrites the script. New scripts get a new
notebook with the python3 kernel (papermill needs a kernelspec). Then `nbdev_export` runs,
`nbdev_clean` cleans the notebooks, and each script is rewritten from its cleaned notebook so the pair
is canonical. `python tools/sync_nbs.py 01_flow 02a_data` limits the work to those pairs (the export
always covers every notebook).
"""
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
        subprocess.run([BIN / "nbdev_clean", "--fname", str(notebook)], cwd=ROOT, check=True)
        subprocess.run([BIN / "jupytext", "--quiet", "--to", "py:percent", str(notebook)], cwd=ROOT, check=True)
        t = notebook.stat().st_mtime  # same time on both: only a later edit makes one side the source
        os.utime(notebook.with_suffix(".py"), (t, t))


if __name__ == "__main__":
    main(sys.argv[1:])
