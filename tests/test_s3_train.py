"""Papermill smoke runs of the S3-CNN training notebook: a tiny run end to end, and bad parameters rejected."""
import json

import papermill as pm
import pytest
import torch

from conftest import ROOT

NBS = ROOT / "nbs"


def test_s3_training_notebook_smoke(tmp_path):
    "Two steps of the rigid loss on multi_cube: results with both mIoUs, weights that load with weights_only, metrics."
    from motion_nbs.s3 import load_s3
    run = tmp_path / "run"
    pm.execute_notebook(NBS / "04_s3_train.ipynb", tmp_path / "out.ipynb", cwd=NBS, progress_bar=False,
                        parameters=dict(loss="rigid", data="multi_cube", num_segments=3, num_iters=2, batch_size=2,
                                        image_size=32, out_dir=str(run)))
    res = json.loads((run / "results.json").read_text())
    assert res["steps"] == 2 and res["config"]["loss"] == "rigid" and res["valid_num_frames"] == res["test_num_frames"] == 32
    assert all(0.0 <= res[f"{s}_{k}"] <= 1.0 for s in ("valid", "test") for k in ("miou", "miou_grid"))
    assert res["valid_miou_grid"] != res["test_miou_grid"]   # different frames
    ckpt = torch.load(run / "model.pt", weights_only=True)
    assert ckpt["meta"]["num_segments"] == 3
    model = load_s3(run)
    assert model(torch.rand(2, 3, 32, 32)).shape == (2, 3, 32, 32)
    assert len((run / "metrics.jsonl").read_text().splitlines()) >= 1


@pytest.mark.parametrize("params, message", [(dict(loss="l2"), "valid: affine, rigid, entropy"),
                                             (dict(data="sintel"), "valid: single_cube, multi_cube, shapes, objects, videos")])
def test_s3_training_notebook_rejects_bad_parameters(tmp_path, params, message):
    with pytest.raises(pm.PapermillExecutionError, match=message):
        pm.execute_notebook(NBS / "04_s3_train.ipynb", tmp_path / "bad.ipynb", parameters=params, cwd=NBS, progress_bar=False)


def test_s3_seeds_experiment_tiny_and_resumed(tmp_path):
    "The seeds experiment: one record per setting and seed with validation and test mIoU; a rerun keeps the finished records."
    runs = tmp_path / "runs"
    kw = dict(cwd=NBS, progress_bar=False, parameters=dict(preset="tiny", runs_dir=str(runs), configs="single_cube+affine,multi_cube+rigid",
                                                           seeds="[0]"))   # as `-p seeds "[0]"` passes it: text
    pm.execute_notebook(NBS / "04_s3_train_seeds.ipynb", tmp_path / "a.ipynb", **kw)
    res = json.loads((runs / "results.json").read_text())
    assert [(r["setting"], r["seed"]) for r in res["runs"]] == [("single_cube+affine", 0), ("multi_cube+rigid", 0)]
    r0 = res["runs"][0]
    assert r0["steps"] == 2 and r0["test_num_frames"] == 32 and 0 <= r0["test_miou"] <= 1 and r0["valid_miou"] != r0["test_miou"]
    assert res["summary"]["single_cube+affine"]["target"] == 0.7 and (runs / "results.png").exists()
    assert len(r0["test_miou_frames"]) == 32 and r0["final_loss"] is not None and r0["final_loss"] > 0
    assert {(b["name"], b["data"]) for b in res["baselines"]} == {(n, d) for n in ("colour_kmeans", "flow_kmeans", "object_oracle", "grid")
                                                                for d in ("single_cube", "multi_cube")}
    assert all(c["paired_over"] == "test frames" and c["n"] == 32 for c in res["comparisons"]) and len(res["comparisons"]) == 8
    assert "transfer" in res and ("comparisons" in res["transfer"] or "absent" in res["transfer"])   # the S3 arm of 03_cpfs_ambiguity
    pm.execute_notebook(NBS / "04_s3_train_seeds.ipynb", tmp_path / "b.ipynb", **kw)
    assert json.loads((runs / "results.json").read_text())["runs"] == res["runs"]   # nothing retrained or lost


def test_s3_seeds_experiment_rejects_bad_settings(tmp_path):
    with pytest.raises(pm.PapermillExecutionError, match="expected 'data\\+loss'"):
        pm.execute_notebook(NBS / "04_s3_train_seeds.ipynb", tmp_path / "bad.ipynb", parameters=dict(configs="cube+affine"), cwd=NBS,
                            progress_bar=False)
    with pytest.raises(pm.PapermillExecutionError, match="expected a JSON list of seeds"):
        pm.execute_notebook(NBS / "04_s3_train_seeds.ipynb", tmp_path / "bad2.ipynb", parameters=dict(preset="tiny", seeds="[0,"), cwd=NBS,
                            progress_bar=False)


@pytest.mark.parametrize("name", ["04_s3_train_results.json", "04_s3_train_results_zero.json"])
def test_saved_s3_results_hold_baselines_on_the_runs_frames(name):
    "Each saved full run (normal and zero init): every baseline for each data and seed, the grid's per-seed mean equal to each run's test_miou_grid, comparisons for all."
    res = json.loads((NBS / name).read_text())
    names = ("colour_kmeans", "flow_kmeans", "object_oracle", "grid")
    for r in res["runs"]:
        bs = {b["name"]: b for b in res["baselines"] if b["data"] == r["data"]}
        assert set(bs) == set(names)
        for b in bs.values():
            i = b["seeds"].index(r["seed"])
            assert len(b["test_miou_frames"][i]) == r["test_num_frames"] == b["num_frames"]
            assert abs(sum(b["test_miou_frames"][i]) / len(b["test_miou_frames"][i]) - b["test_miou_seeds"][i]) < 1e-9
        assert abs(bs["grid"]["test_miou_seeds"][bs["grid"]["seeds"].index(r["seed"])] - r["test_miou_grid"]) < 1e-5
    settings = {r["setting"] for r in res["runs"]}
    assert {(c["setting"], c["baseline"]) for c in res["comparisons"]} == {(s, n) for s in settings for n in names}
    assert all(c["ci95"][0] <= c["difference"] <= c["ci95"][1] and c["p"] <= c["p_holm"] <= 1 for c in res["comparisons"])



def test_saved_s3_results_have_what_issue_37_asks_for():
    "The saved normal-init run: >= 10 seeds per setting, each with its final loss and per-frame scores; comparisons paired over test frames; transfer."
    res = json.loads((NBS / "04_s3_train_results.json").read_text())
    assert res["preset"] == "full" and res["settings"]["score_init"] == "normal"
    for setting in ("single_cube+affine", "multi_cube+rigid", "multi_cube+entropy"):
        rs = [r for r in res["runs"] if r["setting"] == setting]
        assert len({r["seed"] for r in rs}) == len(rs) >= 10, setting
        assert all(r["final_loss"] > 0 and len(r["test_miou_frames"]) == r["test_num_frames"] for r in rs), setting
        assert all(r["settings"]["score_init"] == "normal" for r in rs), setting
    assert {c["paired_over"] for c in res["comparisons"]} == {"test frames"}
    assert all(c["seed_level"]["n"] >= 10 for c in res["comparisons"])
    assert "comparisons" in res["transfer"] or "absent" in res["transfer"]
