#!/usr/bin/env bash
# `make dist-check` (CI runs it after `make test`): what a user gets from `pip install motion_nbs`.
#  1. `python -m build` makes the wheel and the sdist;
#  2. a clean virtual environment (no --system-site-packages, nothing editable) gets the wheel with the core
#     requirements only, and the README's python blocks run there (from a folder outside the checkout, so the
#     checkout's motion_nbs/ cannot be imported instead);
#  3. the sdist is built into a wheel on its own (it must carry settings.ini, README.md, LICENSE, CHANGELOG.md),
#     replaces the first, and the README runs again;
#  4. the `fast` extra (numba) is added: HOG runs in two processes, and the second must find numba's cache of the
#     compiled loops inside the installed package (or numba's user-wide cache where site-packages is read-only).
# Torch is most of the install (about 3 GB with its CUDA libraries from PyPI; 8 min to download and unpack on two busy
# cores). pip's own cache stays empty where the registry forbids caching, so the wheels the requirements resolve to
# are kept in a wheelhouse (DIST_CHECK_WHEELHOUSE, default ~/.cache/motion_nbs/wheelhouse): `pip download` resolves
# against the registry every run but fetches only what the wheelhouse lacks, and the clean environment installs
# from it. Or set DIST_CHECK_TORCH to pip arguments that install a smaller torch first, e.g. DIST_CHECK_TORCH=
# "--index-url https://download.pytorch.org/whl/cpu torch torchvision" (the GitHub workflow does).
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
PY="${PY:-$ROOT/.venv/bin/python}"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
export PIP_DISABLE_PIP_VERSION_CHECK=1 MPLBACKEND=Agg
t0=$SECONDS
step() { echo "dist-check [$((SECONDS - t0)) s]: $*"; }

pipq() {   # quiet pip in the clean environment; on failure its output (less this machine's index warnings), then stop
    "$VPY" -m pip "$@" --quiet --progress-bar off >"$WORK/pip.log" 2>&1 || { grep -v "is ignored: it is neither" "$WORK/pip.log"; return 1; }
}

step "building the wheel and the sdist"
"$PY" -m build --outdir "$WORK/dist" "$ROOT" >"$WORK/build.log" 2>&1 || { cat "$WORK/build.log"; exit 1; }
WHEEL="$(ls "$WORK"/dist/*.whl)"; SDIST="$(ls "$WORK"/dist/*.tar.gz)"
version="$(sed -n 's/^version *= *//p' "$ROOT/settings.ini")"
tar tzf "$SDIST" >"$WORK/sdist.txt"; unzip -l "$WHEEL" >"$WORK/wheel.txt"   # listed first: `grep -q` in a pipe would stop tar early
for f in settings.ini README.md LICENSE CHANGELOG.md setup.py motion_nbs/py.typed; do
    grep -qx "motion_nbs-$version/$f" "$WORK/sdist.txt" || { echo "dist-check: the sdist lacks $f"; exit 1; }
done
grep -q "dist-info/licenses/LICENSE" "$WORK/wheel.txt" || { echo "dist-check: the wheel lacks LICENSE"; exit 1; }
grep -q "motion_nbs/py.typed" "$WORK/wheel.txt" || { echo "dist-check: the wheel lacks py.typed"; exit 1; }

step "a clean virtual environment with the wheel (core requirements only)"
python3 -m venv "$WORK/venv"
VPY="$WORK/venv/bin/python"
if [ -n "${DIST_CHECK_TORCH:-}" ]; then
    # shellcheck disable=SC2086
    pipq install $DIST_CHECK_TORCH
fi
WHEELHOUSE="${DIST_CHECK_WHEELHOUSE:-$HOME/.cache/motion_nbs/wheelhouse}"
mkdir -p "$WHEELHOUSE"
pipq download --dest "$WHEELHOUSE" --find-links "$WHEELHOUSE" "motion_nbs[fast] @ file://$WHEEL"   # fast: used below
rm -f "$WHEELHOUSE"/motion_nbs-*   # the package itself is always the one just built
step "installing from the wheelhouse"
pipq install --no-index --find-links "$WHEELHOUSE" "$WHEEL"
"$VPY" -m pip show motion_nbs >/dev/null
mkdir "$WORK/run" && cd "$WORK/run"
"$VPY" - "$version" <<'PY'
import sys, importlib.metadata as md, motion_nbs
assert motion_nbs.__version__ == sys.argv[1], (motion_nbs.__version__, sys.argv[1])
assert "site-packages" in motion_nbs.__file__, f"motion_nbs imported from {motion_nbs.__file__}, not the installed wheel"
meta = md.metadata("motion_nbs")
assert "Development Status :: 3 - Alpha" in meta.get_all("Classifier"), meta.get_all("Classifier")
for extra in ("book", "video", "models", "fast", "all", "dev"): assert extra in meta.get_all("Provides-Extra"), extra
for absent in ("numba", "matplotlib", "papermill", "ipywidgets", "timm", "skvideo", "webdataset"):
    try: __import__(absent)
    except ImportError: continue
    raise SystemExit(f"the core install pulled {absent}, which belongs to an extra")
import motion_nbs.cpfs as cpfs   # help() shows the parameter comments in the installed package too
assert "Parameters\n----------\nemb\n    `(B,N,D)` pixel embeddings" in cpfs.cpfs_loss.__doc__, cpfs.cpfs_loss.__doc__
print("installed", motion_nbs.__file__, "version", motion_nbs.__version__)
PY
step "the README's python blocks, wheel install"
"$VPY" "$ROOT/tools/readme_blocks.py" "$ROOT/README.md"

step "the sdist, built into a wheel on its own, replacing it"
pipq wheel --no-deps --wheel-dir "$WORK/from_sdist" "$SDIST"
pipq install --force-reinstall --no-deps "$(ls "$WORK"/from_sdist/*.whl)"
step "the README's python blocks, sdist install"
"$VPY" "$ROOT/tools/readme_blocks.py" "$ROOT/README.md"

step "the fast extra: numba's compiled HOG and its cache in the installed package"
pipq install --no-index --find-links "$WHEELHOUSE" "motion_nbs[fast] @ file://$(ls "$WORK"/from_sdist/*.whl)"
hog='import time, torch; t = time.perf_counter(); from motion_nbs.features import HOG; from motion_nbs.core import sample_image
HOG()(sample_image("astronaut")[None]); print(f"{time.perf_counter() - t:.1f}")'
first="$("$VPY" -c "$hog")"; second="$("$VPY" -c "$hog")"
echo "dist-check: HOG's forward pass with numba, import included: ${first} s (compiling), in a new process: ${second} s (numba's cache)"
"$VPY" - <<'PY'
import pathlib, motion_nbs
caches = list(pathlib.Path(motion_nbs.__file__).parent.glob("__pycache__/*.nbi"))
if not caches:   # numba falls back to a user-wide cache where the package folder is not writable
    caches = list(pathlib.Path.home().glob(".cache/numba/**/*.nbi")) + list(pathlib.Path.home().glob(".numba/**/*.nbi"))
assert caches, "numba wrote no cache index (.nbi) for motion_nbs: every new process would compile again"
print(f"numba cache: {len(caches)} index file(s), e.g. {caches[0].name}")
PY
step "done"
