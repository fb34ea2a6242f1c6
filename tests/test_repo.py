"""The repository's own invariants: the package is what nbdev exports from the notebooks, notebooks are
clean, each notebook and its py:percent script agree, the site configuration lists every chapter, the
Makefile's targets exist, and the CI and publishing workflows run what the README says."""
import configparser
import filecmp
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from conftest import BIN, ROOT

NBS = ROOT / "nbs"
NOTEBOOKS = sorted(p.name for p in NBS.glob("*.ipynb"))


def _scratch_copy(tmp_path: Path) -> Path:
    for name in ("settings.ini", "pyproject.toml", "setup.py"):
        if (ROOT / name).exists(): shutil.copy(ROOT / name, tmp_path / name)
    ignore = shutil.ignore_patterns("__pycache__", ".ipynb_checkpoints", "_proc", "_docs")
    shutil.copytree(NBS, tmp_path / "nbs", ignore=ignore)
    shutil.copytree(ROOT / "motion_nbs", tmp_path / "motion_nbs", ignore=ignore)
    return tmp_path


def _differences(a: Path, b: Path) -> list[str]:
    cmp = filecmp.dircmp(a, b, ignore=["__pycache__", "py.typed"])   # py.typed: the package's typing marker, not exported
    out = [f"{a.name}: only in one side: {sorted(cmp.left_only + cmp.right_only)}"] if cmp.left_only or cmp.right_only else []
    out += [f"{a.name}/{f} differs" for f in cmp.diff_files]
    for sub in cmp.common_dirs: out += _differences(a / sub, b / sub)
    return out


def test_settings():
    cfg = configparser.ConfigParser(delimiters=["="])
    cfg.read(ROOT / "settings.ini")
    d = cfg["DEFAULT"]
    assert d["lib_name"] == "motion_nbs" and d["nbs_path"] == "nbs"
    assert "slow" in d["tst_flags"].split()
    assert "tags" in d["allowed_cell_metadata_keys"].split()
    assert d["custom_quarto_yml"] == "True"
    assert "nbdev==2.4.14" in d["dev_requirements"].split()


def test_package_matches_export(tmp_path):
    scratch = _scratch_copy(tmp_path)
    shutil.rmtree(scratch / "motion_nbs")
    subprocess.run([BIN / "nbdev_export"], cwd=scratch, check=True, capture_output=True)
    diffs = _differences(ROOT / "motion_nbs", scratch / "motion_nbs")
    assert not diffs, "motion_nbs/ is not what nbdev_export makes of the notebooks (edit the notebooks, then export): " + "; ".join(diffs)


def test_notebooks_clean(tmp_path):
    scratch = _scratch_copy(tmp_path)
    subprocess.run([BIN / "nbdev_clean"], cwd=scratch, check=True, capture_output=True)
    dirty = [n for n in NOTEBOOKS if (scratch / "nbs" / n).read_bytes() != (NBS / n).read_bytes()]
    assert not dirty, f"notebooks not clean (run nbdev_clean): {dirty}"


@pytest.mark.parametrize("notebook", NOTEBOOKS)
def test_jupytext_pair_in_sync(notebook):
    script = NBS / notebook.replace(".ipynb", ".py")
    assert script.exists(), f"{notebook} has no paired py:percent script {script.name} (make sync)"
    out = subprocess.run([BIN / "jupytext", "--to", "py:percent", "--output", "-", str(NBS / notebook)],
                         cwd=ROOT, check=True, capture_output=True, text=True).stdout
    assert out == script.read_text(), f"{script.name} is out of sync with {notebook} (make sync)"


def test_every_script_has_a_notebook():
    orphans = [p.name for p in NBS.glob("*.py") if not p.with_suffix(".ipynb").exists()]
    assert not orphans, f"scripts without a notebook: {orphans} (make sync)"


def _sidebar_files(entries) -> list[str]:
    out = []
    for e in entries:
        if isinstance(e, str): out.append(e)
        elif isinstance(e, dict):
            if "href" in e: out.append(e["href"])
            out += _sidebar_files(e.get("contents", []))
    return out


def test_quarto_config():
    assert (NBS / "_quarto.yml").resolve() == (ROOT / "_quarto.yml").resolve(), "nbs/_quarto.yml must link to the top-level _quarto.yml"
    cfg = yaml.safe_load((ROOT / "_quarto.yml").read_text())
    assert cfg["project"]["type"] == "website"
    listed = _sidebar_files(cfg["website"]["sidebar"]["contents"])
    missing = sorted(set(NOTEBOOKS) - set(listed))
    extra = sorted(set(listed) - set(NOTEBOOKS))
    assert not missing, f"notebooks not in the _quarto.yml sidebar: {missing}"
    assert not extra, f"_quarto.yml sidebar names files that do not exist in nbs/: {extra}"
    chapters = [f for f in listed if f != "index.ipynb"]
    assert chapters == sorted(chapters), f"sidebar chapters are not in order: {chapters}"
    for f in cfg.get("metadata-files", []): assert (NBS / f).exists(), f"metadata file {f} missing in nbs/"


def test_notebook_names_say_library_chapter_or_experiment():
    """The naming convention (README, "The book"): a library chapter is `NN[a-z]_<module>.ipynb`, named after the one
    module its `default_exp` writes (the package's `__init__` is `NN[a-z]_package`); an experiment exports nothing and its
    name after the number is not a module's."""
    modules = {p.stem for p in (ROOT / "motion_nbs").glob("*.py") if not p.stem.startswith("_")}
    for name in NOTEBOOKS:
        if name == "index.ipynb": continue
        m = re.fullmatch(r"(\d\d[a-z]?)_(\w+)\.ipynb", name)
        assert m, f"{name}: notebook names are NN[a-z]_words.ipynb"
        text = (NBS / name).read_text()
        exp = re.search(r"#\|\s*default_exp\s+([\w.]+)", text)
        if exp and exp.group(1) == "__init__": assert m.group(2) == "package", f"{name} writes motion_nbs/__init__.py: name it NN[a-z]_package"
        elif exp: assert m.group(2) == exp.group(1), f"{name} exports motion_nbs.{exp.group(1)}: a library chapter is named after its module"
        else: assert m.group(2) not in modules, f"{name} exports nothing but is named like the module {m.group(2)}"


def test_saved_results_hold_no_machine_paths():
    "Saved results name files relative to the repository or the runs folder, never by this machine's absolute paths."
    def strings(v):
        if isinstance(v, str): yield v
        elif isinstance(v, dict): yield from (s for x in v.values() for s in strings(x))
        elif isinstance(v, list): yield from (s for x in v for s in strings(x))
    absolute = re.compile(r"(^|[\s'\"(])/(root|home|work|tmp|Users|private|var)/")
    for path in sorted((ROOT / "nbs").glob("*.json")):
        bad = [s for s in strings(json.loads(path.read_text())) if absolute.search(s)]
        assert not bad, f"{path.name}: absolute paths in saved results: {bad[:3]}"


def test_docs_build_never_overwrites_readme(tmp_path):
    "nbdev_docs re-renders README.md from `readme_nb` when that notebook is newer; settings.ini names none."
    shutil.copy(ROOT / "settings.ini", tmp_path / "settings.ini")
    (tmp_path / "README.md").write_text("written by hand\n")
    (tmp_path / "nbs").mkdir()
    shutil.copy(NBS / "index.ipynb", tmp_path / "nbs" / "index.ipynb")  # copied after README.md: newer
    run = subprocess.run([BIN / "nbdev_readme", "--chk_time"], cwd=tmp_path, capture_output=True, text=True)
    assert run.returncode == 0 and "Could not find" in run.stdout, f"nbdev_readme did not skip the README: {run.stdout}{run.stderr}"
    assert not (tmp_path / "_proc").exists(), "nbdev_readme processed the notebooks to render README.md; settings.ini's readme_nb must name no notebook"
    assert (tmp_path / "README.md").read_text() == "written by hand\n"


def _make_targets() -> tuple[list[str], set[str]]:
    "The Makefile's .PHONY names and the targets it has rules for."
    text = (ROOT / "Makefile").read_text()
    phony = re.search(r"^\.PHONY:(.*)$", text, re.M)[1].split()
    rules = {t for m in re.finditer(r"^([\w$(). /-]+?)\s*:(?!=)", text, re.M) for t in m[1].split()}
    return phony, rules


def test_makefile_phony_targets_have_rules():
    phony, rules = _make_targets()
    assert not set(phony) - rules, f"Makefile .PHONY names targets without a rule: {sorted(set(phony) - rules)}"
    for target in ("demo", "test", "lab", "bench", "install", "references", "browser", "docs", "sync"):
        assert target in phony, f"`make {target}` is missing from .PHONY {phony}"


def test_make_demo_and_lab_leave_the_backend_to_the_kernel():
    "Kernels started by `make demo` and `make lab` draw inline: make must not hand them MPLBACKEND=Agg."
    env = {k: v for k, v in os.environ.items() if k != "MPLBACKEND"}
    show = 'showenv: ; +@echo "MPLBACKEND=[$$MPLBACKEND]"'  # `+` runs under -n; prerequisites see their target's exports
    out = subprocess.run(["make", "-n", "-s", "--eval", show, "--eval", "demo lab: showenv", "demo", "lab"],
                         cwd=ROOT, env=env, capture_output=True, text=True, check=True).stdout
    assert re.findall(r"^MPLBACKEND=\[.*\]$", out, re.M) == ["MPLBACKEND=[]"], f"make sets MPLBACKEND for demo/lab: {out}"


def test_make_gives_openmp_a_short_spin():
    "Every make command (and the kernels it starts) gets GOMP_SPINCOUNT=1000 unless the caller set one (bench_preimage)."
    for given, want in ((None, "1000"), ("77", "77")):
        env = {k: v for k, v in os.environ.items() if k != "GOMP_SPINCOUNT"}
        if given: env["GOMP_SPINCOUNT"] = given
        show = 'showenv: ; +@echo "SPIN=[$$GOMP_SPINCOUNT]"'
        out = subprocess.run(["make", "-n", "-s", "--eval", show, "--eval", "demo: showenv", "demo"],
                             cwd=ROOT, env=env, capture_output=True, text=True, check=True).stdout
        assert re.findall(r"^SPIN=\[(.*)\]$", out, re.M) == [want], out


def _workflow(name: str) -> dict:
    path = ROOT / ".github" / "workflows" / name
    assert path.exists(), f"{path.relative_to(ROOT)} is missing"
    wf = yaml.safe_load(path.read_text())
    assert isinstance(wf, dict) and wf.get("jobs"), f"{name}: expected a workflow with jobs, got {wf!r}"
    return wf


def _steps(wf: dict) -> list[dict]: return [s for job in wf["jobs"].values() for s in job.get("steps", [])]


def _run_lines(wf: dict) -> list[str]: return [l.strip() for s in _steps(wf) for l in s.get("run", "").splitlines()]


def test_test_workflow_runs_the_readme_test_command():
    commands = [l.split("#")[0].strip() for l in (ROOT / "README.md").read_text().splitlines() if l.startswith("make test")]
    assert commands, "README.md shows no `make test` command"
    wf = _workflow("test.yaml")
    triggers = wf.get("on", wf.get(True))  # YAML 1.1 reads the key `on` as True
    assert {"push", "pull_request"} <= set(triggers), f"test.yaml runs on {triggers}; expected push and pull_request"
    assert commands[0] in _run_lines(wf), f"test.yaml runs {_run_lines(wf)}; expected the README's test command {commands[0]!r}"


def test_deploy_workflow_publishes_the_nbdev_docs_site():
    wf = _workflow("deploy.yaml")
    steps = _steps(wf)
    assert any("quarto" in s.get("uses", "") for s in steps), "deploy.yaml does not install Quarto"
    assert {"make docs", "nbdev_docs"} & set(_run_lines(wf)), f"deploy.yaml runs {_run_lines(wf)}; expected `make docs` or nbdev_docs"
    published = [s.get("with", {}).get("path") or s.get("with", {}).get("publish_dir") for s in steps]
    assert {"_docs", "./_docs"} & set(published), f"deploy.yaml publishes {published}; expected _docs"
