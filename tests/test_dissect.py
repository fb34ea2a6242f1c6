"""Network dissection: IoU against scikit-learn's Jaccard score, thresholds against numpy's percentile,
a unit equal to a concept, reproducibility, the Broden reader, bad inputs."""
import numpy as np
import pytest
import torch
import torch.nn as nn
from sklearn.metrics import jaccard_score

from motion_nbs.dissect import BrodenConcepts, SceneConcepts, network_dissection, write_tiny_broden
from motion_nbs.models import alexnet_cpfs_small


class ListData(torch.utils.data.Dataset):
    def __init__(self, items): self.items = items
    def __len__(self): return len(self.items)
    def __getitem__(self, i): return self.items[i]


def random_items(n=5, size=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [dict(image=torch.rand(3, size, size, generator=g),
                 masks={"k:a": torch.rand(size, size, generator=g) > 0.7, "k:b": torch.rand(size, size, generator=g) > 0.4})
            for _ in range(n)]


def test_iou_matches_sklearn_jaccard_and_numpy_percentile():
    items = random_items()
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1))
    torch.manual_seed(0); nn.init.normal_(net[0].weight)
    d = network_dissection(net, "0", ListData(items), quantile=0.1, batch_size=2)
    with torch.no_grad(): acts = torch.cat([net(it["image"][None]) for it in items])  # same size: no resampling
    for k in range(4):
        t = np.percentile(acts[:, k].numpy().ravel(), 90)  # linear interpolation, as torch.quantile
        assert abs(float(d.thresholds[k]) - t) < 1e-5
        on = (acts[:, k] > d.thresholds[k]).numpy().ravel()
        for j, c in enumerate(d.concepts):
            lab = torch.stack([it["masks"][c] for it in items]).numpy().ravel()
            assert abs(float(d.iou[k, j]) - jaccard_score(lab, on)) < 1e-6


def test_unit_equal_to_a_concept_gets_iou_one():
    items = random_items(n=4, size=16, seed=1)
    for it in items: it["image"] = it["masks"]["k:a"].float()[None].expand(3, -1, -1).clone()
    frac = float(torch.stack([it["masks"]["k:a"] for it in items]).float().mean())
    d = network_dissection(nn.Sequential(nn.Identity()), "0", ListData(items), quantile=min(2 * frac, 0.9))
    assert d.concepts[int(d.best[0])] == "k:a" and abs(float(d.best_iou[0]) - 1) < 1e-6
    assert d.counts()["interpretable"] == 3  # all three channels are the same mask


def test_concepts_only_count_where_annotated():
    t = torch.tensor
    items = [dict(image=t([[[9., 1], [1, 1]]]).expand(3, 2, 2), masks={"k:a": t([[1, 1], [0, 0]]).bool()}),
             dict(image=t([[[8., 2], [1, 1]]]).expand(3, 2, 2), masks={"k:a": t([[0, 0], [0, 0]]).bool(), "k:b": t([[1, 0], [0, 0]]).bool()})]
    d = network_dissection(nn.Sequential(nn.Identity()), "0", ListData(items), quantile=0.25, iou_threshold=0.5)
    assert torch.allclose(d.iou[0], torch.tensor([1 / 3, 1.0]))
    assert d.counts() == dict(units=3, interpretable=3, unique_concepts=1, k=3)


def test_random_network_dissection_is_reproducible():
    data = ListData([SceneConcepts(length=3, size=(64, 64), seed=5)[i] for i in range(3)])
    runs = []
    for _ in range(2):
        torch.manual_seed(0)
        runs.append(network_dissection(alexnet_cpfs_small().eval(), "relu2", data))
    assert torch.equal(runs[0].iou, runs[1].iou) and runs[0].units() == runs[1].units()
    torch.manual_seed(1)
    assert not torch.equal(network_dissection(alexnet_cpfs_small().eval(), "relu2", data).iou, runs[0].iou)


def test_broden_reader(tmp_path):
    b = BrodenConcepts(write_tiny_broden(tmp_path / "broden"), size=(4, 4))
    assert len(b) == 2 and b.concepts == ["color:red-c", "object:car", "part:wheel", "scene:street"]
    it = b[1]
    assert it["image"].shape == (3, 4, 4)
    assert it["masks"]["object:car"][:, :2].all() and not it["masks"]["object:car"][:, 2:].any()
    assert int(it["masks"]["part:wheel"].sum()) == 1
    assert "part:wheel" not in b[0]["masks"]
    with pytest.raises(ValueError, match="no images in split 'train'"):
        BrodenConcepts(tmp_path / "broden", split="train")


def test_bad_inputs(tmp_path):
    data = ListData(random_items(n=2))
    net = nn.Sequential(nn.Conv2d(3, 2, 1))
    with pytest.raises(ValueError, match="layer 'fc9' is not in the model; valid: 0"):
        network_dissection(net, "fc9", data)
    with pytest.raises(ValueError, match="empty"):
        network_dissection(net, "0", ListData([]))
    with pytest.raises(ValueError, match="quantile=2"):
        network_dissection(net, "0", data, quantile=2)
    with pytest.raises(ValueError, match=r"needs \(B,K,h,w\) maps"):
        network_dissection(nn.Sequential(nn.Conv2d(3, 2, 1), nn.Flatten()), "1", data)
    with pytest.raises(FileNotFoundError, match="index.csv is missing"):
        BrodenConcepts(tmp_path)


def test_preimage_presets_and_fingerprint():
    from motion_nbs.dissect import network_fingerprint, preimage_settings
    assert preimage_settings("cpu")["units"] == 25 and preimage_settings("paper")["max_iters"] == 300
    with pytest.raises(ValueError, match="valid presets: 'cpu', 'paper'"): preimage_settings("fast")
    torch.manual_seed(0); a = alexnet_cpfs_small()
    torch.manual_seed(0); b = alexnet_cpfs_small()
    assert network_fingerprint(a) == network_fingerprint(b)
    with torch.no_grad(): b.conv5.weight[0, 0, 0, 0] += 1e-3
    assert network_fingerprint(a) != network_fingerprint(b)
