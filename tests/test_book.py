"""The executed book (`make book`, tools/book.py): every chapter is saved with its outputs, a figure, its
cells run once each in order, figures of a sensible size and its measured runtime under the title.
These tests read the committed notebooks; a chapter edited since it last ran fails them until
`make book NBS=<chapter>` runs it again."""
import base64
import io
import re
import sys
from pathlib import Path

import nbformat
import numpy as np
import pytest
from PIL import Image

from conftest import ROOT

sys.path.insert(0, str(ROOT / "tools"))
import book  # noqa: E402

CHAPTERS = book.order()


def _code(nb):
    return [c for c in nb.cells if c.cell_type == "code" and c.source.strip()]


def _images(nb):
    return [(k, base64.b64decode(v)) for c in nb.cells for o in c.get("outputs", [])
            for k, v in o.get("data", {}).items() if k.startswith("image/") and k != "image/svg+xml"]


def test_every_chapter_is_in_the_book():
    names = {p.stem for p in CHAPTERS}
    assert "index" not in names                                   # the index has no code to run
    assert {"00_core", "03_cpfs_train", "07_reversed"} <= names
    assert len(CHAPTERS) == len(list((ROOT / "nbs").glob("*.ipynb"))) - 1


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.stem)
def test_chapter_outputs_come_from_its_code(path):
    "The saved outputs are `make book`'s run of exactly this code: not stale, not an interactive session's partial run."
    nb = nbformat.read(path, as_version=4)
    ran = nb.metadata.get("book", {}).get("code_sha256")
    assert ran is not None, f"{path.name} was not executed by make book; make book NBS={path.stem}"
    assert ran == book.code_digest(nb), f"{path.name}: its code changed since make book ran it (stale outputs); make book NBS={path.stem}"
    counts = [c.execution_count for c in _code(nb)]
    assert all(n is None for n in counts), f"{path.name} holds execution counts {counts}: saved from a session, not cleaned (make sync)"


def test_code_digest_sees_every_code_change():
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell("# T"), nbformat.v4.new_code_cell("x = 1"), nbformat.v4.new_code_cell("y = 2")])
    d = book.code_digest(nb)
    nb.cells[0].source = "# Title"                                  # prose may change
    assert book.code_digest(nb) == d
    nb.cells[2].source = "y = 3"
    assert book.code_digest(nb) != d
    nb.cells[2].source = "y = 2"; nb.cells[1:] = nb.cells[:0:-1]      # the same cells in another order
    assert book.code_digest(nb) != d


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.stem)
def test_chapter_shows_outputs_and_a_figure(path):
    nb = nbformat.read(path, as_version=4)
    assert any(c.outputs for c in _code(nb)), f"{path.name} has no outputs; make book NBS={path.stem}"
    images = _images(nb)
    assert images, f"{path.name} shows no figure"
    for kind, raw in images:
        assert len(raw) <= book.MAX_IMAGE_BYTES, f"{path.name}: a {kind} figure of {len(raw) / 1e3:.0f} KB (the book's limit is {book.MAX_IMAGE_BYTES / 1e3:.0f} KB)"
        assert min(Image.open(io.BytesIO(raw)).size) > 0


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.stem)
def test_chapter_states_its_runtime(path):
    nb = nbformat.read(path, as_version=4)
    seconds = book.runtime_seconds(nb)
    assert seconds is not None, f"{path.name}: no '{book.RUNTIME_MARK} ...' line under the title; make book NBS={path.stem}"
    assert seconds <= book.MAX_RUNTIME_S, f"{path.name}: its default run takes {book.format_runtime(seconds)}, over the book's 10 minutes"


def test_runtime_line_round_trip():
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("#| default_exp x"), nbformat.v4.new_markdown_cell("# Title\n\n> what"),
                                         nbformat.v4.new_markdown_cell("Text.")])
    assert book.runtime_seconds(nb) is None
    book.set_runtime(nb, 83.4)
    assert [c.cell_type for c in nb.cells] == ["code", "markdown", "markdown", "markdown"] and nb.cells[3].source == "Text."
    assert nb.cells[2].source.startswith(f"{book.RUNTIME_MARK} **1 min 23 s**") and book.runtime_seconds(nb) == 83
    book.set_runtime(nb, 7)                                     # replaced, not added again
    assert len(nb.cells) == 4 and book.runtime_seconds(nb) == 7 and nb.cells[2].source.startswith(f"{book.RUNTIME_MARK} **7 s**")


def test_large_figures_become_jpeg_under_the_limit():
    rng = np.random.default_rng(0)
    def png(shape):
        buf = io.BytesIO(); Image.fromarray(rng.integers(0, 255, shape, dtype=np.uint8)).save(buf, "PNG")
        return base64.b64encode(buf.getvalue()).decode()
    big, small = png((400, 500, 3)), png((20, 20, 3))              # noise: about 600 KB and 1 KB as PNG
    cell = nbformat.v4.new_code_cell("x", outputs=[nbformat.v4.new_output("display_data", data={"image/png": big}),
                                                   nbformat.v4.new_output("display_data", data={"image/png": small})])
    nb = nbformat.v4.new_notebook(cells=[cell])
    assert book.shrink_images(nb) == 1
    first, second = (o["data"] for o in cell.outputs)
    assert set(first) == {"image/jpeg"} and second == {"image/png": small}
    jpeg = base64.b64decode(first["image/jpeg"])
    assert len(jpeg) <= book.MAX_IMAGE_BYTES and Image.open(io.BytesIO(jpeg)).size == (500, 400)


def test_progress_bars_keep_their_final_state():
    outs = [nbformat.v4.new_output("stream", name="stdout", text=t) for t in
            ("\rscenes:   0%|   | 0/8", "\r" + " " * 40, "\r", "\rfit:  50%|#  | 1/2", "\rfit: 100%|## | 2/2", "\n", "done\n")]
    outs.insert(3, nbformat.v4.new_output("display_data", data={"text/plain": "figure"}))
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("x", outputs=outs)])
    book.coalesce_streams(nb)
    got = [(o["output_type"], o.get("text")) for o in nb.cells[0].outputs]
    assert got == [("display_data", None), ("stream", "fit: 100%|## | 2/2\ndone\n")]


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.stem)
def test_saved_outputs_show_no_unfinished_progress_bar(path):
    nb = nbformat.read(path, as_version=4)
    texts = [o["text"] for c in _code(nb) for o in c.outputs if o.get("output_type") == "stream"]
    stale = [t[:80] for t in texts if "\r" in t or "  0%|" in t]
    assert not stale, f"{path.name}: text outputs with unresolved progress bars {stale}; make book NBS={path.stem}"


ABSOLUTE = re.compile(r"(^|[\s'\"(])/(root|home|work|tmp|Users|private|var)/")


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.stem)
def test_saved_outputs_hold_no_machine_paths(path):
    nb = nbformat.read(path, as_version=4)
    texts = [o.get("text", "") for c in _code(nb) for o in c.outputs] + \
            [v if isinstance(v, str) else "".join(v) for c in _code(nb) for o in c.outputs for k, v in o.get("data", {}).items() if k.startswith("text/")]
    bad = [m.group(0) for t in texts for m in [ABSOLUTE.search(t)] if m]
    assert not bad, f"{path.name}: this machine's paths in the outputs {bad[:3]}; make book NBS={path.stem}"


def test_portable_outputs(tmp_path):
    out = nbformat.v4.new_output("stream", name="stdout", text=f"{tmp_path}/runs/x.pt and {Path.home()}/.cache/m\n")
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("x", outputs=[out])])
    book.portable_outputs(nb, root=tmp_path)
    assert nb.cells[0].outputs[0]["text"] == "runs/x.pt and ~/.cache/m\n"


def test_a_chapter_over_the_limit_runs_again(monkeypatch, tmp_path):
    "A first run that trained what the runs folder lacked (over 10 min) is repeated once, warm; a short one is not."
    (tmp_path / "slow.ipynb").touch(); (tmp_path / "quick.ipynb").touch()
    times = {"slow.ipynb": [700.0, 90.0], "quick.ipynb": [80.0]}
    calls = []
    def fake_run(nb):
        calls.append(nb.name)
        return times[nb.name].pop(0)
    monkeypatch.setattr(book, "NBS", tmp_path)
    monkeypatch.setattr(book, "run", fake_run)
    monkeypatch.setattr(book, "write_runtimes", lambda: calls.append("runtimes") or [])
    assert book.main(["slow", "quick"]) == 0
    assert calls == ["slow.ipynb", "slow.ipynb", "quick.ipynb", "runtimes"]   # then the README's and index's tables


def _runtimes_text(path: Path) -> str:
    if path.suffix != ".ipynb": return path.read_text()
    return "\n".join(c.source for c in nbformat.read(path, as_version=4).cells if c.cell_type == "markdown")


@pytest.mark.parametrize("path", book.runtime_files(), ids=lambda p: p.name)
def test_runtime_tables_show_what_the_notebooks_record(path):
    "The README's and the index's runtimes are generated from the line under each notebook's title, never typed."
    blocks = book.RUNTIMES_BLOCK.findall(_runtimes_text(path))
    assert len(blocks) == 1, f"{path.name}: expected one block between {book.RUNTIMES_BEGIN} and {book.RUNTIMES_END}"
    assert blocks[0] == book.runtimes_block(), f"{path.name}'s runtimes differ from the notebooks' (python tools/book.py --runtimes)"


def test_runtimes_block_replaces_only_the_block():
    text = f"before\n{book.RUNTIMES_BEGIN}\n| old | 1 s |\n{book.RUNTIMES_END}\nafter\n"
    new = book.with_runtimes(text, "x.md")
    assert new.startswith("before\n") and new.endswith("\nafter\n") and book.runtimes_block() in new
    assert book.with_runtimes(new, "x.md") == new
    for bad in ("no block", text + text):
        with pytest.raises(ValueError, match="x.md: expected one block"): book.with_runtimes(bad, "x.md")
    seconds = [book.runtime_seconds(nbformat.read(p, as_version=4)) for p in CHAPTERS]
    assert f"**{book.format_runtime(sum(s for s in seconds if s is not None))}**" in book.runtimes_block()
