"""Run the ```python blocks of a markdown file (default: the README) in order, in one namespace, and print the
time each took: `python tools/readme_blocks.py [README.md] [--repeat]` (`--repeat` runs them all a second time,
warm). tests/test_readme.py and `make dist-check` (in a clean virtual environment) run it; it needs only the
standard library, so it runs wherever motion_nbs is installed."""
import re
import sys
import time
from pathlib import Path


def python_blocks(path) -> list[str]:
    "The source of each ```python fenced block of a markdown file, in order."
    return re.findall(r"^```python\n(.*?)^```", Path(path).read_text(encoding="utf-8"), re.S | re.M)


def main(argv):
    args = [a for a in argv if not a.startswith("--")]
    path = Path(args[0]) if args else Path(__file__).resolve().parents[1] / "README.md"
    blocks, ns = python_blocks(path), {"__name__": "__main__"}
    if not blocks: sys.exit(f"{path}: no ```python blocks")
    for run in range(2 if "--repeat" in argv else 1):
        for i, src in enumerate(blocks):
            t = time.perf_counter()
            exec(compile(src, f"{path.name}, python block {i + 1}", "exec"), ns)
            print(f"readme block {i + 1} ({'warm' if run else 'first'} run): {time.perf_counter() - t:.2f} s", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
