"""The package as a library (issue 39): a function given a model gives it back as it came — every module's
`training` flag, every parameter's `requires_grad`, values and `.grad`, no hooks left — and leaves the process as
it was (torch's thread count, default dtype, grad mode). Missing optional packages name the extra that installs them;
numba's absence falls back to the tensor paths."""
import subprocess
import sys
import textwrap

import pytest
import torch
import torch.nn as nn

from conftest import ROOT


def _model():
    "A small classifier with mixed flags: batch norm training, dropout in eval mode, one frozen parameter."
    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2), nn.Dropout(0.5),
                      nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(32, 5))
    m.train(); m[4].eval(); m[0].bias.requires_grad_(False)
    return m


def _state(model):
    return dict(training=[mod.training for mod in model.modules()],
                requires_grad=[p.requires_grad for p in model.parameters()],
                values=[p.detach().clone() for p in model.parameters()],
                buffers=[b.detach().clone() for b in model.buffers()],
                grads=[p.grad for p in model.parameters()],
                hooks=sum(len(mod._forward_hooks) + len(mod._forward_pre_hooks) + len(mod._backward_hooks) for mod in model.modules()),
                threads=torch.get_num_threads(), dtype=torch.get_default_dtype(), grad_enabled=torch.is_grad_enabled())


def _assert_same(before, after, what, forward_pass=False):
    for k in ("training", "requires_grad", "grads", "hooks", "threads", "dtype", "grad_enabled"):
        assert before[k] == after[k], f"{what} changed the caller's {k}: {before[k]} -> {after[k]}"
    # a forward pass of the model as it is (layer_outputs) updates batch norm's running statistics in training mode,
    # as model(x) does: that is the caller's choice of mode, not a change made behind their back
    for k in ("values",) if forward_pass else ("values", "buffers"):
        assert all(torch.equal(a, b) for a, b in zip(before[k], after[k])), f"{what} changed the model's {k}"


def _images(n=2, size=16): return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(1))


def _attribution(method):
    from motion_nbs import attribution
    return lambda m: getattr(attribution, method)(m).attribute(_images(), target=1)


def _reversed(name):
    from motion_nbs import reversed as rev
    return lambda m: getattr(rev, name)(m, _images(), 1)


def _layerphi(m):
    from motion_nbs.preimage import LayerPhi
    phi = LayerPhi(m, "5")
    phi(_images()).sum()
    phi.field_size((16, 16))


def _invert(m):
    from motion_nbs.preimage import LayerPhi, invert
    invert(LayerPhi(m, "6"), x0=_images(1), num_iters=2)


def _maximize(m):
    from motion_nbs.preimage import LayerPhi, maximize
    maximize(LayerPhi(m, "9"), 1, shape=(3, 16, 16), M=1.0, scaling="unit", num_iters=2)


def _caricature(m):
    from motion_nbs.preimage import LayerPhi, caricature
    caricature(LayerPhi(m, "6"), _images(1), num_iters=2)


def _layer_outputs(m):
    from motion_nbs.models import layer_outputs
    layer_outputs(m, _images(), ["2", "6"])


def _receptive_fields(m):
    from motion_nbs.models import receptive_fields
    receptive_fields(m, 16)


def _fold_batchnorm(m):
    from motion_nbs.models import fold_batchnorm
    fold_batchnorm(m)


ENTRY_POINTS = {**{f"attribution.{k}": _attribution(k) for k in ("Saliency", "GuidedBackprop", "Deconvolution")},
                **{f"reversed.{k}": _reversed(k) for k in ("saliency", "guided_backprop", "deconvnet")},
                "preimage.LayerPhi": _layerphi, "preimage.invert": _invert, "preimage.maximize": _maximize,
                "preimage.caricature": _caricature, "models.layer_outputs": _layer_outputs,
                "models.receptive_fields": _receptive_fields, "models.fold_batchnorm": _fold_batchnorm}


@pytest.mark.parametrize("name", sorted(ENTRY_POINTS))
def test_entry_point_gives_the_model_back_as_it_came(name):
    model = _model()
    before = _state(model)
    ENTRY_POINTS[name](model)
    _assert_same(before, _state(model), name, forward_pass=name == "models.layer_outputs")


def test_s3_evaluation_and_figure_give_the_model_back():
    from motion_nbs.s3 import evaluate_segments, s3_model, show_segments
    model = s3_model(num_segments=3).train()
    model.backbone.requires_grad_(True)
    frames = {"image": torch.rand(2, 3, 32, 32), "flow": torch.randn(2, 2, 32, 32), "target": torch.zeros(2, 32, 32, dtype=torch.long)}
    before = _state(model)
    evaluate_segments(model, frames)
    _assert_same(before, _state(model), "s3.evaluate_segments")
    import matplotlib.pyplot as plt
    plt.close(show_segments(model, frames, num_images=2))
    _assert_same(before, _state(model), "s3.show_segments")


def _run(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=ROOT, capture_output=True, text=True, timeout=600)


def test_missing_extra_is_named():
    "Without matplotlib (as after `pip install motion_nbs`), a figure names the extra; the numerics import and run."
    r = _run("""
        import sys; sys.modules["matplotlib"] = None; sys.modules["numba"] = None; sys.modules["skvideo"] = None
        import torch
        from motion_nbs import core, flow, s3, cpfs, features, preimage, reversed, attribution   # no extra needed
        for call, extra in ((lambda: core.show_images(torch.rand(1, 3, 4, 4)), "book"), (lambda: core.sample_video(), "video")):
            try: call()
            except ModuleNotFoundError as e: assert f"pip install 'motion_nbs[{extra}]'" in str(e), e
            else: raise SystemExit("no error without the extra")
        print("ok")
    """)
    assert r.returncode == 0 and "ok" in r.stdout, r.stdout + r.stderr


def test_features_without_numba_equal_the_compiled_paths():
    "HOG and DenseSIFT without numba (the tensor paths) give what they give with it, and their gradients flow."
    pytest.importorskip("numba")
    code = """
        import sys, torch
        if sys.argv[1] == "off": sys.modules["numba"] = None
        from motion_nbs.features import HOG, DenseSIFT
        x = torch.rand(1, 3, 40, 48, generator=torch.Generator().manual_seed(0), dtype=torch.float64).requires_grad_()
        h = HOG()(x); d = DenseSIFT(step=4)(x.mean(1, keepdim=True)); (h.sum() + d.sum()).backward()
        torch.save({"hog": h.detach(), "sift": d.detach(), "grad": x.grad}, sys.argv[2])
    """
    out = {}
    for mode in ("on", "off"):
        path = ROOT / f"_runs/_numba_{mode}.pt"
        path.parent.mkdir(exist_ok=True)
        r = subprocess.run([sys.executable, "-c", textwrap.dedent(code), mode, str(path)], cwd=ROOT, capture_output=True, text=True, timeout=600)
        assert r.returncode == 0, r.stderr
        out[mode] = torch.load(path)
        path.unlink()
    for k in ("hog", "sift", "grad"): torch.testing.assert_close(out["on"][k], out["off"][k], rtol=1e-7, atol=1e-9)


def test_version_and_license_metadata():
    import configparser
    import motion_nbs
    cfg = configparser.ConfigParser(delimiters=["="]); cfg.read(ROOT / "settings.ini")
    assert motion_nbs.__version__ == cfg["DEFAULT"]["version"] == "0.1.0"
    assert "Apache License" in (ROOT / "LICENSE").read_text() and "Version 2.0" in (ROOT / "LICENSE").read_text()
    assert (ROOT / "motion_nbs" / "py.typed").exists()
    assert f"## [{motion_nbs.__version__}]" in (ROOT / "CHANGELOG.md").read_text()
    manifest = (ROOT / "MANIFEST.in").read_text()
    for f in ("settings.ini", "README.md", "LICENSE", "CHANGELOG.md"): assert f in manifest, f


def test_help_shows_every_documented_parameter():
    "Every public function and class whose parameters carry comments shows them in `help()` (a `Parameters` section)."
    import importlib, inspect, pydoc
    import motion_nbs
    text = pydoc.render_doc(importlib.import_module("motion_nbs.cpfs").cpfs_loss, renderer=pydoc.plaintext)
    assert "sigma2\n        σ² of the RBF kernel on the normalised flow" in text, text
    names = sorted(p.stem for p in (ROOT / "motion_nbs").glob("*.py") if not p.stem.startswith("_"))
    checked = 0
    for name in names:
        mod = importlib.import_module(f"motion_nbs.{name}")
        found = motion_nbs._param_comments(inspect.getsource(mod))
        for sym in getattr(mod, "__all__", []):
            obj = getattr(mod, sym)
            if sym not in found or not found[sym] or getattr(obj, "__module__", None) != mod.__name__: continue
            doc = obj.__doc__ or ""
            missing = [k for k in found[sym] if f"\n{k}\n    " not in doc]
            assert not missing, f"motion_nbs.{name}.{sym}: help() lacks {missing}"
            checked += 1
    assert checked > 150, checked


def test_renamed_parameters_still_work_with_a_warning():
    from motion_nbs.cpfs import cpfs_loss
    from motion_nbs.preimage import unit_maximum
    emb, flow = torch.randn(1, 6, 4, dtype=torch.float64), torch.randn(1, 6, 2, dtype=torch.float64)
    with pytest.warns(DeprecationWarning, match=r"cpfs_loss\(sigma=...\) is deprecated: use sigma2="):
        old = cpfs_loss(emb, flow, "kta", sigma=0.3)
    assert old == cpfs_loss(emb, flow, "kta", sigma2=0.09)
    model, images = nn.Conv2d(3, 2, 3), torch.rand(2, 3, 8, 8)
    with pytest.warns(DeprecationWarning, match="use model="):
        old = unit_maximum(phi=model, selectors=1, images=images)
    assert torch.equal(old, unit_maximum(model, 1, images))
