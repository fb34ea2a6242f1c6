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
    with pytest.raises(pm.PapermillExecutionError, match="valid: 'dis', 'farneback'"):
        pm.execute_notebook(NBS / "01_flow.ipynb", tmp_path / "bad.ipynb", parameters=dict(method="lucas"),
                            cwd=NBS, progress_bar=False)
