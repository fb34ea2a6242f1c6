"""Every ```python block of README.md runs, in order, in one namespace (the quickstart builds on its earlier
blocks), in a fresh interpreter so that the package's first-import costs and the README's imports are real.
`make dist-check` runs the same blocks in a clean virtual environment with the built wheel and sdist
(tools/readme_blocks.py)."""
import subprocess
import sys

from conftest import ROOT

sys.path.insert(0, str(ROOT / "tools"))
from readme_blocks import python_blocks  # noqa: E402


def test_readme_has_a_quickstart():
    blocks = python_blocks(ROOT / "README.md")
    assert len(blocks) >= 5, f"README.md has {len(blocks)} python blocks; the quickstart has five"
    text = "\n".join(blocks)
    for name in ("HOG", "DenseSIFT", "invert", "GuidedBackprop", "Saliency", "cpfs_loss", "affine_loss", "read_flo", "write_flo"):
        assert name in text, f"the quickstart does not show {name}"


def test_readme_python_blocks_run(tmp_path):
    r = subprocess.run([sys.executable, str(ROOT / "tools" / "readme_blocks.py"), str(ROOT / "README.md")],
                       cwd=tmp_path, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, f"a README block failed:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
