"""Papermill smoke runs of the parameterised notebooks: a valid run, and invalid parameters rejected."""
import papermill as pm
import pytest

from conftest import ROOT

NBS = ROOT / "nbs"


def test_flow_chapter_runs_with_parameters(tmp_path):
    out = tmp_path / "flow.ipynb"
    pm.execute_notebook(NBS / "01_flow.ipynb", out, parameters=dict(video="carphone", frame=10, method="farneback"),
                        cwd=NBS, progress_bar=False)
    assert out.exists()


def test_flow_chapter_rejects_bad_parameters(tmp_path):
    with pytest.raises(pm.PapermillExecutionError, match="method='lucas'; valid: dis, farneback"):
        pm.execute_notebook(NBS / "01_flow.ipynb", tmp_path / "bad.ipynb", parameters=dict(method="lucas"),
                            cwd=NBS, progress_bar=False)


def test_cpfs_training_notebook_smoke(tmp_path):
    "A few steps of a CPFS loss and of the baseline end to end: results, folded weights that load with weights_only, metrics."
    import json

    import torch

    for loss in ("kta", "flow_cls"):
        run = tmp_path / loss
        pm.execute_notebook(NBS / "03_cpfs_train.ipynb", tmp_path / f"{loss}.ipynb", cwd=NBS, progress_bar=False,
                            parameters=dict(loss=loss, num_iters=3, batch_size=4, image_size=64, num_pixels=32, out_dir=str(run)))
        res = json.loads((run / "results.json").read_text())
        assert res["steps"] == 3 and res["config"]["loss"] == loss
        assert 0.0 <= res["auc_trained"] <= 1.0 and 0.0 <= res["auc_random"] <= 1.0
        ckpt = torch.load(run / "model.pt", weights_only=True)
        assert ckpt["meta"]["folded"] and ckpt["meta"]["loss"] == loss
        assert len((run / "metrics.jsonl").read_text().splitlines()) >= 1


def test_cpfs_training_notebook_rejects_bad_parameters(tmp_path):
    with pytest.raises(pm.PapermillExecutionError, match="valid: kta, ce, ce_rev, flow_cls"):
        pm.execute_notebook(NBS / "03_cpfs_train.ipynb", tmp_path / "bad.ipynb", parameters=dict(loss="l2"),
                            cwd=NBS, progress_bar=False)
    with pytest.raises(pm.PapermillExecutionError, match="preset='gpu'"):
        pm.execute_notebook(NBS / "03_cpfs_train.ipynb", tmp_path / "bad.ipynb", parameters=dict(preset="gpu"),
                            cwd=NBS, progress_bar=False)
    (tmp_path / "a_file").write_text("x")
    with pytest.raises(pm.PapermillExecutionError, match="is an existing file; expected a folder"):
        pm.execute_notebook(NBS / "03_cpfs_train.ipynb", tmp_path / "bad.ipynb", parameters=dict(out_dir=str(tmp_path / "a_file")),
                            cwd=NBS, progress_bar=False)


@pytest.mark.parametrize("notebook", ["01_flow", "03_cpfs_train", "03_cpfs_transfer", "03_cpfs_ambiguity", "04_s3_train", "04_s3_train_seeds",
                                      "05c_preimage_experiments", "06_dissect"])
def test_experiment_notebooks_reject_parameters_they_do_not_define(tmp_path, notebook):
    "`-p lr 0.1` on a notebook without `lr` stops in the cell after the parameters, naming the valid ones, before any work."
    with pytest.raises(pm.PapermillExecutionError, match=r"unknown parameter\(s\) lr for this notebook; valid: "):
        pm.execute_notebook(NBS / f"{notebook}.ipynb", tmp_path / "bad.ipynb", parameters=dict(lr=0.1), cwd=NBS, progress_bar=False)
    import json
    cells = json.loads((tmp_path / "bad.ipynb").read_text())["cells"]
    ran = [c for c in cells if c["cell_type"] == "code" and c.get("execution_count")]
    assert "reject_unknown_parameters" in "".join(ran[-1]["source"]), "the run went past the check"


def test_transfer_experiment_killed_resumes_to_the_same_records(tmp_path):
    "03_cpfs_transfer killed (SIGKILL, kernel included) after two arms: the rerun keeps them, redoes the rest, equals a clean run."
    import json, os, signal, subprocess, sys, time

    def command(runs, out):
        return [sys.executable, "-m", "papermill", str(NBS / "03_cpfs_transfer.ipynb"), str(out), "--cwd", str(NBS), "-p", "preset", "tiny",
                "-p", "arms", "random,flow_cls,kta", "-p", "runs_dir", str(runs), "-p", "num_threads", "1"]
    def records(runs):
        files = list(runs.glob("records_*.json"))
        return json.loads(files[0].read_text()) if files else []
    def metrics(recs):
        return [(r["arm"], r["seed"], r["probe"], r["fine_tune"]) for r in recs]

    clean = tmp_path / "clean"
    subprocess.run(command(clean, tmp_path / "clean.ipynb"), check=True, capture_output=True, timeout=900)
    killed = tmp_path / "killed"
    proc = subprocess.Popen(command(killed, tmp_path / "killed.ipynb"), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    deadline = time.time() + 600
    while len(records(killed)) < 2 and proc.poll() is None and time.time() < deadline: time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL); proc.wait()
    before = records(killed)
    assert 2 <= len(before) < 3, "the run was not killed between arms"
    subprocess.run(command(killed, tmp_path / "resumed.ipynb"), check=True, capture_output=True, timeout=900)
    after = records(killed)
    assert after[:len(before)] == before                       # finished arms kept as they were
    assert metrics(after) == metrics(records(clean))           # and the result equals the uninterrupted run's


def test_ambiguity_sweep_runs_every_phase_and_resumes_without_training_again(tmp_path):
    """03_cpfs_ambiguity's tiny sweep: every phase runs, the results carry the keys the book reads (manipulation statistics,
    selections, Holm-corrected comparisons, trend); run again on the same records it trains nothing and gives the same results."""
    import json
    runs = tmp_path / "runs"
    params = dict(preset="tiny", runs_dir=str(runs), num_threads=1)
    # the main and s3 phases first, by two workers at once on the same worlds: each run is done once and every run is kept
    from concurrent.futures import ThreadPoolExecutor
    import nbformat
    import re
    with ThreadPoolExecutor(2) as ex:
        list(ex.map(lambda i: pm.execute_notebook(NBS / "03_cpfs_ambiguity.ipynb", tmp_path / f"a0_{i}.ipynb", cwd=NBS, progress_bar=False,
                                                  parameters=dict(params, phases="main,s3")), range(2)))
    done = [m.group(1) for i in range(2) for c in nbformat.read(tmp_path / f"a0_{i}.ipynb", as_version=4).cells if c.cell_type == "code"
            for o in c.get("outputs", []) for m in re.finditer(r"^(objects\S* (?:main|s3) .*? steps \S+):", o.get("text", ""), re.M)]
    assert len(done) == len(set(done)) == len(json.loads((runs / "records" / "objects.json").read_text())) \
        + len(json.loads((runs / "records" / "objects_ambiguous.json").read_text())), done
    # analysed with every phase while extension and budget still wait: s3's choices are not hidden
    pm.execute_notebook(NBS / "03_cpfs_ambiguity.ipynb", tmp_path / "a1.ipynb", parameters=dict(params, max_hours=0), cwd=NBS, progress_bar=False)
    early = json.loads((runs / "results.json").read_text())
    assert {r["phase"] for r in early["runs"]} == {"main", "s3"} and any(c["family"] == "s3" for c in early["comparisons"])
    assert next(p for p in early["progress"] if p["world"] == "objects_ambiguous")["next"]["phase"] == "extension"
    # then the extension and budget phases alone (a second worker's job): they read main's choices from the records, and
    # this worker's analysis still reports every phase's choices (s3's included)
    pm.execute_notebook(NBS / "03_cpfs_ambiguity.ipynb", tmp_path / "a.ipynb", parameters=dict(params, phases="extension,budget"), cwd=NBS,
                        progress_bar=False)
    res = json.loads((runs / "results.json").read_text())
    assert {"worlds", "runs", "lr_selection", "sigma_selection", "comparisons", "trend"} <= set(res)
    assert [w["name"] for w in res["worlds"]] == ["objects", "objects_ambiguous"]
    man = {w["name"]: w["manipulation"] for w in res["worlds"]}
    assert man["objects_ambiguous"]["figure_ground_entropy_share"] < man["objects"]["figure_ground_entropy_share"]
    assert {r["phase"] for r in res["runs"]} == {"main", "extension", "budget", "s3"}
    s3 = [c for c in res["comparisons"] if c["family"] == "s3"]   # chapter 4's S3-CNN arm, in `objects` only
    assert {c["pair"] for c in s3} == {f"s3 - {a}" for a in ("flow_cls", "ce", "kta", "random")} and {c["world"] for c in s3} == {"objects"}
    assert all(c["p"] <= c["p_holm"] <= 1 for c in s3)
    assert all(c["p"] <= c["p_holm"] <= 1 for c in res["comparisons"] if c["family"] in ("floor", "extension"))   # each family its own Holm
    assert {(s["world"], s["arm"]) for s in res["sigma_selection"]} == {(w, a) for w in man for a in ("kta", "ce")}
    # the tiny grids: sigma^2 on two values (an edge is then always chosen), the rates on one (no edge to be at)
    assert all(s["at_edge"] for s in res["sigma_selection"]) and not any(s["at_edge"] for s in res["lr_selection"])
    fam = [c for c in res["comparisons"] if c["family"] == "cpfs_vs_flow_cls"]
    assert len(fam) == 2 * 2 * 3 and all(c["p"] <= c["p_holm"] <= 1 for c in fam)           # 2 worlds x 2 pairs x 3 metrics
    assert {t["statistic"] for t in res["trend"]} == {"figure_ground_entropy_share", "relative_motion_under_1px"}
    # the slope is fitted over the worlds' means: two worlds leave no degrees of freedom for a CI; the seed-pooled fit has them
    assert all(t["worlds"] == 2 and t["ci95"] is None and t["p"] is None and t["seed_level"]["n"] == 2 * len(res["settings"]["seeds"])
               for t in res["trend"])
    records = {f.name: f.read_text() for f in (runs / "records").iterdir()}
    runs_before = sorted(p.name for p in runs.iterdir())
    pm.execute_notebook(NBS / "03_cpfs_ambiguity.ipynb", tmp_path / "b.ipynb", parameters=params, cwd=NBS, progress_bar=False)
    assert {f.name: f.read_text() for f in (runs / "records").iterdir()} == records      # nothing run again
    assert sorted(p.name for p in runs.iterdir()) == runs_before
    assert json.loads((runs / "results.json").read_text())["comparisons"] == res["comparisons"]
    # one arm's selection run missing (KTA's sigma^2 = 0.04 in `objects`): the other arms' choices and comparisons are still made
    part = tmp_path / "partial"
    part.mkdir()
    for f in (runs / "records").glob("*.json"):
        recs = json.loads(f.read_text())
        (part / f.name).write_text(json.dumps([r for r in recs if (r["world"], r["arm"], r["sigma2"]) != ("objects", "kta", 0.04)]))
    assert len(json.loads((part / "objects.json").read_text())) == len(json.loads((runs / "records" / "objects.json").read_text())) - 1
    pm.execute_notebook(NBS / "03_cpfs_ambiguity.ipynb", tmp_path / "c.ipynb", cwd=NBS, progress_bar=False,
                        parameters=dict(params, max_hours=0, records_dir=str(part), results_path=str(tmp_path / "partial.json")))
    partial = json.loads((tmp_path / "partial.json").read_text())
    assert {(s["world"], s["arm"]) for s in partial["sigma_selection"]} == {(w, a) for w in man for a in ("kta", "ce")} - {("objects", "kta")}
    # an arm's choice is its rate and sigma^2 together: KTA's is reported (and used) only when both are made
    assert {(s["world"], s["arm"]) for s in partial["lr_selection"] if s["world"] == "objects"} == {("objects", a) for a in ("flow_cls", "ce", "s3")}
    pairs = {(c["world"], c["pair"]) for c in partial["comparisons"] if c["family"] == "cpfs_vs_flow_cls"}
    assert ("objects", "ce - flow_cls") in pairs and ("objects", "kta - flow_cls") not in pairs and ("objects_ambiguous", "kta - flow_cls") in pairs


def test_s3_seeds_two_workers_share_the_runs(tmp_path):
    "04_s3_train_seeds run by two workers at once (the same seeds): each run is trained once and both workers' results hold every run."
    import json, re
    from concurrent.futures import ThreadPoolExecutor
    import nbformat
    params = dict(preset="tiny", seeds="[0, 1, 2]", configs="single_cube+affine", runs_dir=str(tmp_path / "runs"), num_threads=1)
    with ThreadPoolExecutor(2) as ex:
        list(ex.map(lambda i: pm.execute_notebook(NBS / "04_s3_train_seeds.ipynb", tmp_path / f"w{i}.ipynb", parameters=params, cwd=NBS,
                                                  progress_bar=False), range(2)))
    trained = [m.group(1) for i in range(2) for c in nbformat.read(tmp_path / f"w{i}.ipynb", as_version=4).cells if c.cell_type == "code"
               for o in c.get("outputs", []) for m in re.finditer(r"^(single_cube\+affine seed \d+): test mIoU", o.get("text", ""), re.M)]
    assert sorted(trained) == [f"single_cube+affine seed {s}" for s in range(3)]     # each seed once, over both workers
    runs = json.loads((tmp_path / "runs" / "results.json").read_text())["runs"]
    assert [(r["seed"], r["setting"]) for r in runs] == [(s, "single_cube+affine") for s in range(3)]
    assert not [p for p in (tmp_path / "runs" / "claims").iterdir() if p.name != ".lock"]   # every claim released
