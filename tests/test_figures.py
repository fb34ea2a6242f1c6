"""Figures that plot data say what their axes are and keep their legends off the data (#40 item 2). Each of the
library's plotting functions is drawn on small inputs and audited after a real draw: every axes that shows data
(lines, markers, bars, error bars; not image grids) labels each axis whose tick labels it shows, and no legend's box
contains a data point or overlaps a bar."""
import json

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch
from matplotlib.collections import LineCollection, PathCollection
from matplotlib.patches import Rectangle

from motion_nbs.compare import forest_plot
from motion_nbs.dissect import Dissection, plot_dissection
from motion_nbs.features import plot_orientation_activations
from motion_nbs.learner import plot_metrics


def data_axes(fig) -> list:
    "The axes of `fig` that plot data: visible, with lines, bars or collections (image-only axes and colour bars are not)."
    return [ax for ax in fig.axes if ax.get_visible() and ax.axison and ax.get_label() != "<colorbar>"
            and (ax.lines or [p for p in ax.patches if isinstance(p, Rectangle)] or ax.collections)]


def unlabelled(ax) -> list:
    "'x' and/or 'y' for each axis that shows tick labels but has no label."
    out = []
    for name, axis in (("x", ax.xaxis), ("y", ax.yaxis)):
        shows = any(t.get_visible() and t.get_text() for t in axis.get_ticklabels())
        if shows and not axis.get_label_text(): out.append(name)
    return out


def data_points(ax) -> np.ndarray:
    "Display coordinates of every plotted point: line vertices, scatter offsets, error-bar segment ends."
    pts = [ax.transData.transform(l.get_xydata()) for l in ax.lines if len(l.get_xydata()) and l.get_visible()
           and not (l.get_transform() != ax.transData)]          # reference lines drawn in axes coordinates are not data
    for c in ax.collections:
        if isinstance(c, LineCollection):
            pts += [c.get_transform().transform(s) for s in c.get_segments() if len(s)]
        elif isinstance(c, PathCollection) and len(c.get_offsets()):
            pts.append(c.get_offset_transform().transform(c.get_offsets()))
    return np.concatenate(pts) if pts else np.zeros((0, 2))


def legend_covers(ax, fig) -> list:
    "What the axes' legend covers: data points inside its box, bars it overlaps."
    leg = ax.get_legend()
    if leg is None or not leg.get_visible(): return []
    box = leg.get_window_extent(fig.canvas.get_renderer())
    pts = data_points(ax)
    inside = pts[(pts[:, 0] > box.x0) & (pts[:, 0] < box.x1) & (pts[:, 1] > box.y0) & (pts[:, 1] < box.y1)]
    bars = [p for p in ax.patches if isinstance(p, Rectangle) and p.get_height() and p.get_width()
            and p.get_window_extent().overlaps(box)]
    return [f"{len(inside)} data point(s)"] * bool(len(inside)) + [f"{len(bars)} bar(s)"] * bool(bars)


def audit(fig) -> list:
    fig.canvas.draw()
    problems = []
    for i, ax in enumerate(data_axes(fig)):
        problems += [f"axes {i} ({ax.get_title()!r}): no {a} label" for a in unlabelled(ax)]
        problems += [f"axes {i} ({ax.get_title()!r}): the legend covers {c}" for c in legend_covers(ax, fig)]
    return problems


# the audit itself fails where it should
def test_audit_finds_a_missing_label_and_a_covering_legend():
    fig, ax = plt.subplots(figsize=(3, 2))
    ax.plot(np.linspace(0, 1, 50), np.full(50, 0.95), label="a long legend entry")
    ax.set_xlabel("x"); ax.set_ylim(0, 1); ax.legend(loc="upper right")
    problems = audit(fig)
    assert any("no y label" in p for p in problems) and any("legend covers" in p for p in problems), problems
    ax.set_ylabel("y"); ax.get_legend().remove(); ax.legend(loc="lower left")
    assert audit(fig) == []
    plt.close(fig)


def _metrics_file(tmp_path):
    path = tmp_path / "metrics.jsonl"
    rows = [dict(step=s, train_loss=1 / (s + 1), seconds=s) for s in range(0, 200, 10)]
    rows += [dict(step=s, valid_loss=1.2 / (s + 1)) for s in range(0, 200, 50)]
    path.write_text("\n".join(json.dumps(r) for r in rows))
    return path


def _dissections():
    gen = torch.Generator().manual_seed(0)
    concepts = [f"{k}:c{i}" for k in ("category", "part", "texture", "colour") for i in range(3)]
    make = lambda layer, k: Dissection(layer, concepts, torch.rand(k, len(concepts), generator=gen) * 0.1, torch.zeros(k), 0.04)
    return {net: {l: make(l, k) for l, k in (("conv1", 16), ("conv3", 24), ("conv5", 32))} for net in ("trained", "random")}


FIGURES = {
    "forest_plot": lambda tmp: forest_plot([dict(label=f"pair {i}", mean=i - 1.0, ci95=[i - 2.0, float(i)], group=i % 2)
                                             for i in range(4)]).figure,
    "plot_metrics": lambda tmp: plot_metrics(_metrics_file(tmp)).figure,
    "plot_orientation_activations": lambda tmp: plot_orientation_activations(),
    "plot_dissection": lambda tmp: plot_dissection(_dissections()),
}


@pytest.mark.parametrize("name", FIGURES)
def test_library_figure_labels_its_axes_and_keeps_legends_off_the_data(name, tmp_path):
    fig = FIGURES[name](tmp_path)
    try:
        assert data_axes(fig), f"{name}: no axes with data to audit"
        assert audit(fig) == []
    finally:
        plt.close(fig)
