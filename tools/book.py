"""Execute the book: every notebook in nbs/, in order, in place, saved with its outputs.

`make book` runs this. Each notebook runs with its default parameters (no `-p`), from `nbs/` (where
JupyterLab and `nbdev_test` start it), with papermill and the python3 kernel; the kernel draws inline
(no `MPLBACKEND`) and training progress is plain text (`MOTION_NBS_PROGRESS=text`), so the saved
notebook shows each bar's final state instead of an empty widget. Then, for each notebook:

- consecutive text outputs are merged and their carriage returns resolved (a text progress bar keeps its
  final state only);
- images in the outputs larger than `MAX_IMAGE_BYTES` are re-encoded as JPEG (Pillow), so that a figure
  costs the repository and the website at most about 200 KB;
- the measured wall time is written into the runtime line under the title (a markdown cell that starts
  with `RUNTIME_MARK`, added when absent), with the date and the machine's core count;
- this machine's paths in the outputs become portable (the checkout's root is dropped, the home folder is
  `~`, the temporary folder `<tmp>`);
- the notebook's metadata records a digest of the code it ran (`book.code_sha256`, a key settings.ini lets
  `nbdev_clean` keep, since nbdev_clean erases execution counts): tests/test_book.py compares it with the code,
  so a chapter edited since its last run, or saved from an interactive session, fails until it runs again;
- the executed notebook replaces the committed one only when every cell ran (a failing notebook is
  reported and left as it was), then `nbdev_clean` strips volatile metadata (outputs are kept:
  `clear_all = False` in settings.ini) and the paired py:percent script is rewritten from it.

    python tools/book.py                 # every notebook with code, by name (the sidebar's order; the index has none)
    python tools/book.py 03_cpfs_train   # only these
    python tools/book.py --table         # the runtimes the chapters state, as a markdown table
    python tools/book.py --runtimes      # write that table into README.md and nbs/index.ipynb (also after every run)

The runtime line under each title is the one place a runtime is typed: README.md and the index show a block between
`RUNTIMES_BEGIN` and `RUNTIMES_END` that `--runtimes` generates from those lines (tests/test_book.py checks that it
is up to date), and prose elsewhere points there instead of repeating a number.

Long training is cached in the runs folder (`core.runs_dir`), so a second `make book` reuses it.
"""
import base64
import datetime
import hashlib
import io
import logging
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import nbformat
import papermill
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
NBS = ROOT / "nbs"
BIN = Path(sys.executable).parent
MAX_IMAGE_BYTES = 200_000
RUNTIME_MARK = "*Default run:"
RUNTIME_RE = re.compile(r"^\*Default run: \*\*(?:(\d+) min )?(\d+) s\*\*")
MAX_RUNTIME_S = 600   # the book's limit for a chapter's default run (tests/test_book.py)


def has_code(notebook: Path) -> bool:
    return any(c.cell_type == "code" for c in nbformat.read(notebook, as_version=4).cells)


def order() -> list[Path]:
    "Every notebook of the book with code to run, in the sidebar's order (by name; the index has no code)."
    return [p for p in sorted(NBS.glob("*.ipynb")) if has_code(p)]


def shrink_images(nb, max_bytes: int = MAX_IMAGE_BYTES) -> int:
    "Re-encode every PNG output over `max_bytes` as a JPEG (quality 85, then lower until it fits); returns how many."
    n = 0
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            data = out.get("data", {})
            png = data.get("image/png")
            raw = base64.b64decode(png) if png is not None else b""
            if len(raw) <= max_bytes: continue
            img = Image.open(io.BytesIO(raw)).convert("RGB")
            for quality in (85, 75, 65, 50):
                buf = io.BytesIO(); img.save(buf, "JPEG", quality=quality, optimize=True)
                if buf.tell() <= max_bytes: break
            del data["image/png"]
            data["image/jpeg"] = base64.b64encode(buf.getvalue()).decode()
            n += 1
    return n


def coalesce_streams(nb) -> None:
    """Merge consecutive stream outputs of a cell and resolve carriage returns as a terminal would: each line keeps
    what follows its last `\\r`, and lines a progress bar cleared (`leave=False`) are dropped. Static renderers
    (GitHub, nbconvert, Quarto) otherwise show every intermediate state of a text progress bar, `0%` first."""
    for cell in nb.cells:
        outs = []
        for out in cell.get("outputs", []):
            if out.get("output_type") == "stream" and outs and outs[-1].get("output_type") == "stream" and outs[-1]["name"] == out["name"]:
                outs[-1]["text"] += out["text"]
            else: outs.append(out)
        for out in outs:
            if out.get("output_type") != "stream": continue
            lines = [line.rsplit("\r", 1)[-1].rstrip() for line in out["text"].split("\n")]
            kept = [line for i, line in enumerate(lines) if line or i == len(lines) - 1]
            out["text"] = "\n".join(kept)
        outs = [o for o in outs if o.get("output_type") != "stream" or o["text"].strip()]
        if "outputs" in cell: cell.outputs = outs


def code_digest(nb) -> str:
    "SHA-256 of a notebook's code cells' sources, in order: what `make book` ran, recorded as `metadata.book.code_sha256`."
    code = [c.source for c in nb.cells if c.cell_type == "code"]
    return hashlib.sha256("\0".join(code).encode()).hexdigest()


def portable_outputs(nb, root: Path = ROOT) -> None:
    "Replace this machine's paths in text outputs: `<root>/x` → `x`, the home folder → `~`, the temporary folder → `<tmp>`."
    subs = [(f"{root}/", ""), (tempfile.gettempdir().rstrip("/") + "/", "<tmp>/"), (str(Path.home()), "~")]
    def fix(text):
        for old, new in subs: text = text.replace(old, new)
        return text
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            if "text" in out: out["text"] = fix(out["text"])
            for k, v in out.get("data", {}).items():
                if k.startswith("text/"): out["data"][k] = fix(v) if isinstance(v, str) else [fix(x) for x in v]
            if "traceback" in out: out["traceback"] = [fix(x) for x in out["traceback"]]


def format_runtime(seconds: float) -> str:
    m, s = divmod(round(seconds), 60)
    return f"{m} min {s} s" if m else f"{s} s"


def runtime_seconds(nb) -> float | None:
    "The runtime a notebook's runtime line states, in seconds (None when it has none)."
    for cell in nb.cells[:4]:
        m = RUNTIME_RE.match(cell.source) if cell.cell_type == "markdown" else None
        if m: return 60 * int(m.group(1) or 0) + int(m.group(2))
    return None


def set_runtime(nb, seconds: float) -> None:
    "Write the measured runtime into the markdown cell under the title (added after the title cell when absent)."
    text = (f"{RUNTIME_MARK} **{format_runtime(seconds)}** on {os.cpu_count()} CPU cores with the default parameters "
            f"(measured by `make book` on {datetime.date.today():%-d %b %Y}, reusing the training and caches that earlier "
            f"runs left in the runs folder, `core.runs_dir`; where a first run on a new machine takes longer, the chapter "
            f"says so).*")
    for cell in nb.cells[:4]:
        if cell.cell_type == "markdown" and cell.source.startswith(RUNTIME_MARK):
            cell.source = text
            return
    title = next(i for i, c in enumerate(nb.cells) if c.cell_type == "markdown" and c.source.startswith("# "))
    nb.cells.insert(title + 1, nbformat.v4.new_markdown_cell(text))


def run(notebook: Path) -> float:
    "Execute `notebook` in place; returns its wall time in seconds. Raises (leaving the file as it was) when a cell fails."
    env_backup = dict(os.environ)
    os.environ.pop("MPLBACKEND", None)
    os.environ["MOTION_NBS_PROGRESS"] = "text"
    try:
        with tempfile.TemporaryDirectory() as d:
            out = Path(d) / notebook.name
            t0 = time.perf_counter()
            papermill.execute_notebook(str(notebook), str(out), cwd=str(NBS), kernel_name="python3",
                                       log_output=True, progress_bar=False)
            seconds = time.perf_counter() - t0
            nb = nbformat.read(out, as_version=4)
    finally:
        os.environ.clear(); os.environ.update(env_backup)
    for cell in nb.cells:   # papermill's bookkeeping is not part of the book
        cell.metadata.pop("papermill", None); cell.metadata.pop("execution", None)
        if cell.metadata.get("tags") == []: del cell.metadata["tags"]
    nb.metadata.pop("papermill", None)
    coalesce_streams(nb)
    portable_outputs(nb)
    n = shrink_images(nb)
    set_runtime(nb, seconds)
    nb.metadata["book"] = {"code_sha256": code_digest(nb)}
    nbformat.write(nb, notebook)
    subprocess.run([BIN / "nbdev_clean", "--fname", str(notebook)], cwd=ROOT, check=True)
    subprocess.run([BIN / "jupytext", "--quiet", "--to", "py:percent", str(notebook)], cwd=ROOT, check=True)
    t = notebook.stat().st_mtime   # same time on both (tools/sync_nbs.py: the pair is in sync)
    os.utime(notebook.with_suffix(".py"), (t, t))
    print(f"book: {notebook.name}: {format_runtime(seconds)}" + (f" ({n} figure(s) re-encoded as JPEG)" if n else ""), flush=True)
    return seconds


def table() -> str:
    "A markdown table of every chapter's stated runtime (`python tools/book.py --table`), for the index and README."
    rows = ["| notebook | default run (`make book`) |", "|---|---|"]
    for p in order():
        s = runtime_seconds(nbformat.read(p, as_version=4))
        rows.append(f"| {p.stem} | {format_runtime(s) if s is not None else 'not run'} |")
    return "\n".join(rows)


RUNTIMES_BEGIN, RUNTIMES_END = "<!-- runtimes:begin -->", "<!-- runtimes:end -->"
RUNTIMES_BLOCK = re.compile(re.escape(RUNTIMES_BEGIN) + r".*?" + re.escape(RUNTIMES_END), re.S)


def runtimes_block() -> str:
    "The generated block: every chapter's stated runtime (`table`) and their sum, between the two markers."
    seconds = [runtime_seconds(nbformat.read(p, as_version=4)) for p in order()]
    total = format_runtime(sum(s for s in seconds if s is not None))
    return (f"{RUNTIMES_BEGIN}\n*Generated by `python tools/book.py --runtimes` from the runtime line under each notebook's "
            f"title (`make book`'s measurement, with the runs folder of earlier runs); edit those, not this table.*\n\n"
            f"{table()}\n| **all chapters** | **{total}** |\n{RUNTIMES_END}")


def with_runtimes(text: str, where: str) -> str:
    "`text` with its runtimes block replaced by `runtimes_block()`; `where` names the file in the error."
    if len(RUNTIMES_BLOCK.findall(text)) != 1:
        raise ValueError(f"{where}: expected one block between {RUNTIMES_BEGIN} and {RUNTIMES_END}")
    block = runtimes_block()
    return RUNTIMES_BLOCK.sub(lambda m: block, text)


def runtime_files() -> list[Path]: return [ROOT / "README.md", NBS / "index.ipynb"]


def write_runtimes() -> list[Path]:
    "Rewrite the runtimes block of README.md and of the index (its markdown cell; the paired script follows); returns what changed."
    changed = []
    readme = ROOT / "README.md"
    text = readme.read_text()
    new = with_runtimes(text, readme.name)
    if new != text: readme.write_text(new); changed.append(readme)
    index = NBS / "index.ipynb"
    if index.with_suffix(".py").exists() and index.with_suffix(".py").stat().st_mtime > index.stat().st_mtime:
        if str(Path(__file__).resolve().parent) not in sys.path: sys.path.insert(0, str(Path(__file__).resolve().parent))
        from sync_nbs import to_notebook   # the script was edited since: take those edits first, as `make sync` would
        to_notebook(index.with_suffix(".py"), index)
    nb = nbformat.read(index, as_version=4)
    cells = [c for c in nb.cells if c.cell_type == "markdown" and RUNTIMES_BEGIN in c.source]
    if len(cells) != 1: raise ValueError(f"{index.name}: expected one markdown cell with {RUNTIMES_BEGIN}, found {len(cells)}")
    new = with_runtimes(cells[0].source, index.name)
    if new != cells[0].source:
        cells[0].source = new
        nbformat.write(nb, index)
        subprocess.run([BIN / "nbdev_clean", "--fname", str(index)], cwd=ROOT, check=True)
        subprocess.run([BIN / "jupytext", "--quiet", "--to", "py:percent", str(index)], cwd=ROOT, check=True)
        t = index.stat().st_mtime
        os.utime(index.with_suffix(".py"), (t, t))
        changed.append(index)
    return changed


def main(stems: list[str]) -> int:
    if stems == ["--table"]:
        print(table())
        return 0
    if stems == ["--runtimes"]:
        changed = write_runtimes()
        print("book: runtimes written into " + (", ".join(p.name for p in changed) if changed else "nothing (up to date)"))
        return 0
    logging.basicConfig(level=logging.INFO, format="%(message)s")   # papermill's log_output: the cells' output as it runs
    for noisy in ("traitlets", "asyncio", "blib2to3"): logging.getLogger(noisy).setLevel(logging.WARNING)
    notebooks = [NBS / f"{s}.ipynb" for s in stems] if stems else order()
    missing = [p.name for p in notebooks if not p.exists()]
    if missing: raise SystemExit(f"book: no such notebook in nbs/: {', '.join(missing)}")
    failed = []
    for nb in notebooks:
        print(f"book: running {nb.name}", flush=True)
        try:
            seconds = run(nb)
            if seconds > MAX_RUNTIME_S:   # a first run on this machine trained what the runs folder lacked: run it again
                print(f"book: {nb.name} took {format_runtime(seconds)}, over {format_runtime(MAX_RUNTIME_S)}: running it "
                      "again, now that its runs are cached (the saved outputs and time are the second run's)", flush=True)
                run(nb)
        except Exception as e:   # report it, keep the committed notebook, go on with the others
            failed.append(nb.name)
            print(f"book: {nb.name} FAILED, left as it was: {type(e).__name__}: {str(e)[:2000]}", flush=True)
    if failed: print(f"book: {len(failed)} notebook(s) failed: {', '.join(failed)}", flush=True)
    if len(failed) < len(notebooks):   # the runtimes the README and the index show follow the lines just written
        try:
            changed = write_runtimes()
            if changed: print(f"book: runtimes written into {', '.join(p.name for p in changed)}", flush=True)
        except ValueError as e:   # the notebooks are saved; only the tables are not
            print(f"book: runtimes not written ({e}); tests/test_book.py will say so", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
