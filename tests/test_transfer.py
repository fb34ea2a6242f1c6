"""Transfer protocols (chapter 03b): metrics against scikit-learn, the VOC protocols on a fabricated VOC folder,
clear errors for bad input, and a papermill smoke run of the 03_cpfs_transfer experiment."""
import json

import numpy as np
import papermill as pm
import pytest
import torch
from PIL import Image
from sklearn.metrics import average_precision_score, confusion_matrix as sk_confusion_matrix

from conftest import ROOT
from motion_nbs.models import alexnet_cpfs_small, fold_batchnorm
from motion_nbs.transfer import (VOC_CLASSES, VOCClassification, VOCSegmentationData, average_precision, confusion_matrix,
                                 iou_from_confusion, linear_probe, mean_average_precision, segmentation_probe,
                                 voc07_classification, voc12_segmentation)

NBS = ROOT / "nbs"


@pytest.mark.parametrize("seed", range(5))
def test_average_precision_matches_sklearn(seed):
    g = torch.Generator().manual_seed(seed)
    scores = (torch.rand(60, 4, generator=g) * 6).round() / 6          # coarse scores: many ties
    labels = torch.randint(-1, 2, (60, 4), generator=g)                 # 1 positive, 0 negative, -1 ignored
    m, aps = mean_average_precision(scores, labels)
    ref = []
    for c in range(4):
        keep = labels[:, c] >= 0
        ref.append(average_precision_score(labels[keep, c].numpy(), scores[keep, c].numpy()))
    assert np.allclose(aps, ref, atol=1e-12) and abs(m - np.mean(ref)) < 1e-12


def test_iou_matches_sklearn():
    g = torch.Generator().manual_seed(0)
    target = torch.randint(0, 5, (4, 20, 20), generator=g)
    target[:, :3] = 255
    pred = torch.where(torch.rand(4, 20, 20, generator=g) < 0.6, target.clamp(max=4), torch.randint(0, 5, (4, 20, 20), generator=g))
    keep = target != 255
    cm_ref = sk_confusion_matrix(target[keep].numpy(), pred[keep].numpy(), labels=list(range(5)))
    cm = confusion_matrix(pred, target, 5)
    assert (cm.numpy() == cm_ref).all()
    iou_ref = np.diag(cm_ref) / (cm_ref.sum(0) + cm_ref.sum(1) - np.diag(cm_ref))
    iou, miou = iou_from_confusion(cm)
    assert np.allclose(iou, iou_ref) and abs(miou - iou_ref.mean()) < 1e-12


# ---- a fabricated VOC folder -------------------------------------------------------------------------------------

def _write_xml(path, objects):
    objs = "".join(f"<object><name>{n}</name><difficult>{int(d)}</difficult><bndbox><xmin>1</xmin><ymin>1</ymin>"
                   f"<xmax>10</xmax><ymax>10</ymax></bndbox></object>" for n, d in objects)
    path.write_text(f"<annotation><filename>{path.stem}.jpg</filename><size><width>80</width><height>72</height>"
                    f"<depth>3</depth></size>{objs}</annotation>")


@pytest.fixture(scope="module")
def voc_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("voc")
    rng = np.random.default_rng(0)
    v07 = root / "VOCdevkit" / "VOC2007"
    for d in ("JPEGImages", "Annotations", "ImageSets/Main"): (v07 / d).mkdir(parents=True)
    ids = [f"{i:06d}" for i in range(10)]
    for k, i in enumerate(ids):
        Image.fromarray(rng.integers(0, 255, (72, 80, 3), dtype=np.uint8)).save(v07 / "JPEGImages" / f"{i}.jpg")
        objs = [(VOC_CLASSES[k % 3], False), (VOC_CLASSES[3], k % 2 == 0)]  # class 3: difficult in even images
        if k == 0: objs.append((VOC_CLASSES[0], True))                     # difficult and non-difficult: positive
        _write_xml(v07 / "Annotations" / f"{i}.xml", objs)
    (v07 / "ImageSets/Main/trainval.txt").write_text("\n".join(ids[:6]) + "\n")
    (v07 / "ImageSets/Main/test.txt").write_text("\n".join(ids[6:]) + "\n")
    v12 = root / "VOCdevkit" / "VOC2012"
    for d in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"): (v12 / d).mkdir(parents=True)
    palette = list(rng.integers(0, 255, 768, dtype=np.uint8))
    for i in ids:
        Image.fromarray(rng.integers(0, 255, (60, 70, 3), dtype=np.uint8)).save(v12 / "JPEGImages" / f"{i}.jpg")
        lab = np.zeros((60, 70), np.uint8); lab[10:40, 20:50] = int(i) % 20 + 1; lab[10, 20:50] = 255  # a boundary
        im = Image.fromarray(lab, mode="P"); im.putpalette(palette); im.save(v12 / "SegmentationClass" / f"{i}.png")
    (v12 / "ImageSets/Segmentation/train.txt").write_text("\n".join(ids[:7]) + "\n")
    (v12 / "ImageSets/Segmentation/val.txt").write_text("\n".join(ids[7:]) + "\n")
    return root


@pytest.fixture(scope="module")
def backbone():
    torch.manual_seed(0)
    return fold_batchnorm(alexnet_cpfs_small(batchnorm=True))


def test_voc_datasets_read_the_fabricated_folder(voc_root):
    ds = VOCClassification(voc_root, "2007", "trainval")
    assert len(ds) == 6
    image, t = ds[0]
    assert image.shape == (3, 72, 80) and 0 <= image.min() and image.max() <= 1
    assert t[0] == 1 and t[3] == -1 and t.sum() == 0        # aeroplane positive (despite a difficult one), chair difficult
    assert ds[1][1][3] == 1 and ds[1][1][1] == 1
    seg = VOCSegmentationData(voc_root, "2012", "val")
    image, labels = seg[0]
    assert labels.dtype == torch.int64 and set(labels.unique().tolist()) == {0, 8, 255}


def test_voc07_classification_map_agrees_with_sklearn(voc_root, backbone):
    res = voc07_classification(backbone, voc_root, num_iters=2, batch_size=2, crop_size=64, num_test_crops=2, progress=False)
    s, t = res["scores"], res["targets"]
    assert s.shape == (4, 20) and ((0 <= s) & (s <= 1)).all()
    ref = [average_precision_score((t[t[:, c] >= 0, c] > 0).numpy(), s[t[:, c] >= 0, c].numpy())
           for c in range(20) if (t[:, c] > 0).any()]
    assert abs(res["map"] - np.mean(ref)) < 1e-12
    assert np.isnan(res["ap"]["bus"])                          # no positives in the test split: left out of the mean


def test_voc12_segmentation_runs(voc_root, backbone):
    res = voc12_segmentation(backbone, voc_root, num_iters=2, batch_size=2, num_pixels=16, crop_size=64, hidden=16, progress=False)
    assert 0 <= res["miou"] <= 1 and len(res["iou"]) == 21 and res["iou"]["background"] is not None
    assert res["iou"]["aeroplane"] is None                     # absent from the val labels: no IoU


def test_voc_missing_split_files_are_named(voc_root, backbone, tmp_path):
    with pytest.raises(FileNotFoundError, match=r"ImageSets/Main/val\.txt: missing VOC split file"):
        VOCClassification(voc_root, "2007", "val")
    with pytest.raises(FileNotFoundError, match=r"VOCdevkit/VOC2012: no VOC2012 folder"):
        voc12_segmentation(backbone, tmp_path, num_iters=1, progress=False)


def test_probe_bad_input(backbone):
    x, y = torch.rand(6, 3, 64, 64), torch.tensor([0, 1, 2, 0, 1, 2])
    with pytest.raises(ValueError, match="not in AlexNetCPFS; valid names"):
        linear_probe(backbone, "relu9", (x, y), (x, y))
    with pytest.raises(ValueError, match="train is empty"):
        linear_probe(backbone, "relu1", (x[:0], y[:0]), (x, y))
    with pytest.raises(ValueError, match="class counts do not match"):
        linear_probe(backbone, "relu1", (x, y), (x, y + 1), num_classes=3)
    with pytest.raises(ValueError, match="class counts do not match"):
        segmentation_probe(backbone, (x, torch.zeros(6, 64, 64, dtype=torch.long)), (x, torch.full((6, 64, 64), 7)), num_classes=4)


def test_transfer_experiment_smoke(tmp_path):
    "The experiment notebook end to end with tiny settings: two arms, two seeds, results JSON (records, comparisons) and figure."
    out = tmp_path / "r.json"
    pm.execute_notebook(NBS / "03_cpfs_transfer.ipynb", tmp_path / "run.ipynb", cwd=NBS, progress_bar=False,
                        parameters=dict(preset="tiny", arms=["random", "kta"], runs_dir=str(tmp_path / "runs"),
                                        results_path=str(out), num_threads=1))
    res = json.loads(out.read_text())
    assert {(r["arm"], r["seed"]) for r in res["records"]} == {(a, s) for a in ("random", "kta") for s in (0, 1)}
    for arm in ("random", "kta"):
        s = res["summary"][arm]
        assert 0 <= s["probe_relu3"][0] <= 100 and 0 <= s["seg_24"][0] <= 100 and s["cls_8"][2] == 2   # (mean, std, seeds)
    assert {(c["better"], c["worse"]) for c in res["comparisons"]} == {("kta", "random")}
    assert out.with_suffix(".png").exists() and (tmp_path / "runs" / "objects_kta_seed0" / "model.pt").exists()


def test_transfer_experiment_rejects_bad_parameters(tmp_path):
    with pytest.raises(pm.PapermillExecutionError, match="preset='paper'; valid: saved, tiny, full"):
        pm.execute_notebook(NBS / "03_cpfs_transfer.ipynb", tmp_path / "bad.ipynb", parameters=dict(preset="paper"),
                            cwd=NBS, progress_bar=False)
    with pytest.raises(pm.PapermillExecutionError, match="expected distinct names from: random, kta, ce, ce_rev, flow_cls, supervised"):
        pm.execute_notebook(NBS / "03_cpfs_transfer.ipynb", tmp_path / "bad.ipynb", parameters=dict(arms=["random", "sgd"]),
                            cwd=NBS, progress_bar=False)
