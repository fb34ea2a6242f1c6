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
    assert res["steps"] == 2 and res["config"]["loss"] == "rigid" and res["num_frames"] > 0
    assert 0.0 <= res["miou"] <= 1.0 and 0.0 <= res["miou_grid"] <= 1.0
    ckpt = torch.load(run / "model.pt", weights_only=True)
    assert ckpt["meta"]["num_segments"] == 3
    model = load_s3(run)
    assert model(torch.rand(2, 3, 32, 32)).shape == (2, 3, 32, 32)
    assert len((run / "metrics.jsonl").read_text().splitlines()) >= 1


@pytest.mark.parametrize("params, message", [(dict(loss="l2"), "valid: affine, rigid, entropy"),
                                             (dict(data="sintel"), "valid: single_cube, multi_cube, shapes, videos")])
def test_s3_training_notebook_rejects_bad_parameters(tmp_path, params, message):
    with pytest.raises(pm.PapermillExecutionError, match=message):
        pm.execute_notebook(NBS / "04_s3_train.ipynb", tmp_path / "bad.ipynb", parameters=params, cwd=NBS, progress_bar=False)
